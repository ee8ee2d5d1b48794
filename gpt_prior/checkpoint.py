"""Loading a GPT prior for generation from one `gpt-prior fit` checkpoint, without unpickling anything.

The checkpoint holds the weights and, under checkpoint["gpt_prior"], the GPTConfig, the caption
tokenizer and the path + sha256 of the VQGAN whose codes the prior learned: that one file is enough.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imagetext.files import file_sha256
from gpt_prior.model import GPT, GPTConfig
from gpt_prior.tokenizer import TextTokenizer


CHECKPOINT_KEY = "gpt_prior"  # checkpoint["gpt_prior"] = {config, tokenizer, vqgan, vqgan_sha256}

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


def load(path: str | Path, map_location: str | torch.device = "cpu") -> PriorBundle:
    """The GPT prior of a `gpt-prior fit` checkpoint (.ckpt), read with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT prior checkpoint {path} not found; give a .ckpt from `gpt-prior fit`")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        raise ValueError(f"{path} is not a `gpt-prior fit` checkpoint (no {CHECKPOINT_KEY!r} entry with config and tokenizer)")
    config = GPTConfig(**saved["config"])
    model = GPT(config)
    model.load_state_dict({key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()
                           if key.startswith("model.")}, strict=True)
    model.to(map_location)
    return PriorBundle(model.eval(), TextTokenizer.from_json(saved["tokenizer"]), config, saved["vqgan"], saved["vqgan_sha256"],
                       saved.get("sampling", {}))


def resolve_vqgan(bundle: PriorBundle, override: str | Path | None = None) -> Path:
    """The VQGAN file to decode the prior's codes with: `override` if given, else the one it was trained on.

    A missing file is a FileNotFoundError naming it; a file whose sha256 differs from the training
    VQGAN's gets one warning (its codes may mean other images).
    """
    path = Path(override if override is not None else bundle.vqgan_path)
    if not path.is_file():
        raise FileNotFoundError(f"the GPT prior's VQGAN {path} not found; point to its checkpoint with --vqgan PATH")
    digest = file_sha256(path)
    if digest != bundle.vqgan_sha256:
        warnings.warn(f"VQGAN {path} has sha256 {digest[:12]}…, the prior was trained on codes of "
                      f"{bundle.vqgan_path} ({bundle.vqgan_sha256[:12]}…): decoded images may not match", stacklevel=2)
    return path

