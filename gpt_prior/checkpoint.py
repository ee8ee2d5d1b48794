"""Saving and loading a GPT prior for generation as one file, without unpickling anything.

    gpt_prior.save(prior, "gpt.safetensors")     # weights + config, tokenizer, VQGAN, sampling defaults
    prior = gpt_prior.load("gpt.safetensors")    # or a `gpt-prior fit` .ckpt, or a shipped name ("shapes")

The file format is every stage's (imagetext.checkpoints): metadata `format` = "gpt_prior/1", `config`
(the GPTConfig, JSON), `tokenizer` (the caption BPE, JSON), `vqgan` and `vqgan_sha256` (the VQGAN whose
codes the prior learned: a path or a shipped name, and its file's digest) and `sampling` (generation
defaults, JSON). A `gpt-prior fit` checkpoint holds the same under `checkpoint["gpt_prior"]`. Either
file is all generation needs besides the VQGAN it names.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gpt_prior.model import GPT, GPTConfig
from gpt_prior.sample import SamplingSettings, sample
from gpt_prior.tokenizer import TextTokenizer
from imagetext.checkpoints import ModelFile, load_weights, model_format, read_model_file, save_model_file
from imagetext.files import file_sha256
from imagetext.shipped import resolve

STAGE = "gpt_prior"


def metadata(
    config: GPTConfig, tokenizer: TextTokenizer, vqgan: str, vqgan_sha256: str, sampling: dict
) -> dict[str, str]:
    """What a prior's file carries besides the weights (a `fit` checkpoint too: GPTPriorModule.on_save_checkpoint)."""
    return {
        "format": model_format(STAGE),
        "config": json.dumps(asdict(config)),
        "tokenizer": tokenizer.to_json(),
        "vqgan": vqgan,
        "vqgan_sha256": vqgan_sha256,
        "sampling": json.dumps(sampling),
    }


@dataclass
class PriorBundle:
    """A trained prior ready to sample: the model (eval mode), its tokenizer and config, and its VQGAN."""

    model: GPT
    tokenizer: TextTokenizer
    config: GPTConfig
    vqgan_path: str
    vqgan_sha256: str
    sampling: dict = field(default_factory=dict)  # generation defaults saved by training (temperature, cfg_scale, …)

    def text_tokens(self, captions: list[str]) -> torch.Tensor:
        """Captions as the model's LongTensor [B, text_len] (on the CPU); [""] is the unconditional prompt."""
        return self.tokenizer.encode_batch(captions, self.config.text_len)

    def sample(
        self,
        captions: list[str],
        n: int,
        settings: SamplingSettings,
        generator: torch.Generator,
        *,
        bf16: bool = False,
        progress: bool = False,
    ) -> torch.Tensor:
        """`n` code grids per caption, LongTensor [len(captions)·n, h, w], caption-major, drawn
        `settings.batch_size` rows at a time with one `generator` (on the model's device)."""
        return sample(
            self.model,
            self.text_tokens(captions),
            n,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            cfg_scale=settings.cfg_scale,
            empty_text_tokens=self.text_tokens([""]) if settings.cfg_scale != 1.0 else None,
            generator=generator,
            batch_size=settings.batch_size,
            bf16=bf16,
            progress=progress,
        )


def load(path: str | Path, map_location: str | torch.device = "cpu") -> PriorBundle:
    """The GPT prior of a `gpt-prior fit` checkpoint (.ckpt), a .safetensors file, or a shipped model's short name."""
    path = resolve(STAGE, path)
    give = "a .ckpt from `gpt-prior fit`, a .safetensors file, or a shipped model's name"
    found = read_model_file(path, STAGE, upgrade=_older_metadata, what="GPT prior checkpoint", give=give)
    config = GPTConfig(**found.json("config"))
    model = GPT(config)
    # The prior computes in fp32 (bf16 is autocast), whatever dtype the file holds.
    found.state = {key: value.float() for key, value in found.state.items()}
    load_weights(model, found, "its GPT config")
    return PriorBundle(
        model.to(map_location).eval(),
        TextTokenizer.from_json(found.metadata["tokenizer"]),
        config,
        found.metadata["vqgan"],
        found.metadata["vqgan_sha256"],
        found.json("sampling"),
    )


def _older_metadata(found: ModelFile) -> dict[str, str]:
    """A `gpt-prior fit` checkpoint written before the format kept the same entries, without `format`."""
    if {"config", "tokenizer", "vqgan", "vqgan_sha256"} <= set(found.metadata):
        return {"format": model_format(STAGE), "sampling": "{}"} | found.metadata
    return found.metadata


def save(
    prior: PriorBundle, path: str | Path, vqgan: str | Path | None = None, vqgan_file: str | Path | None = None
) -> Path:
    """Write the prior as one .safetensors file (atomically): weights, config, tokenizer, sampling defaults
    and its VQGAN. `vqgan` (a path or a shipped name) names another VQGAN than the one it was trained
    with, e.g. that VQGAN's own saved file; its sha256 is that of `vqgan_file` (default: the file
    `vqgan` names)."""
    vqgan_reference = prior.vqgan_path if vqgan is None else str(vqgan)
    vqgan_sha256 = prior.vqgan_sha256 if vqgan is None else file_sha256(vqgan_file or resolve("vqgan", vqgan))
    info = metadata(prior.config, prior.tokenizer, vqgan_reference, vqgan_sha256, prior.sampling)
    return save_model_file(path, prior.model.state_dict(), info)


def resolve_vqgan(bundle: PriorBundle, override: str | Path | None = None) -> Path:
    """The VQGAN file to decode the prior's codes with: `override` if given, else the one it was trained on.

    A missing file is a FileNotFoundError naming it; a file whose sha256 differs from the training
    VQGAN's gets one warning (its codes may mean other images).
    """
    reference = override if override is not None else bundle.vqgan_path
    path = resolve("vqgan", reference)
    if not path.is_file():
        raise FileNotFoundError(f"the GPT prior's VQGAN {path} not found; point to its checkpoint with --vqgan PATH")
    digest = file_sha256(path)
    if digest != bundle.vqgan_sha256:
        warnings.warn(
            f"VQGAN {path} has sha256 {digest[:12]}…, the prior was trained on codes of "
            f"{bundle.vqgan_path} ({bundle.vqgan_sha256[:12]}…): decoded images may not match",
            stacklevel=2,
        )
    return path
