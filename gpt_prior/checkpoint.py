"""Loading a GPT prior for generation from one file, without unpickling anything.

Two formats load with `gpt_prior.load(path)`, and a short name ("shapes") loads a shipped bundle:
- a `gpt-prior fit` checkpoint (.ckpt, read with torch.load(weights_only=True)): the weights and,
  under checkpoint["gpt_prior"], the GPTConfig, the caption tokenizer, the path + sha256 of the VQGAN
  whose codes the prior learned, and the sampling defaults;
- an inference bundle (.safetensors, written by `export_bundle`): the weights, with the same four
  things as JSON strings in the file's metadata. Its VQGAN may be a short name too.
Either file is all generation needs besides the VQGAN it names.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpt_prior.model import GPT, GPTConfig
from gpt_prior.tokenizer import TextTokenizer
from imagetext.checkpoints import open_safetensors, read_torch
from imagetext.files import atomic_path, file_sha256
from imagetext.shipped import resolve

CHECKPOINT_KEY = "gpt_prior"  # checkpoint["gpt_prior"] = {config, tokenizer, vqgan, vqgan_sha256, sampling}
BUNDLE_FORMAT = "gpt_prior/1"


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
    """The GPT prior of a `gpt-prior fit` checkpoint (.ckpt), an inference bundle (.safetensors), or a
    shipped bundle's short name."""
    path = resolve("gpt_prior", path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GPT prior checkpoint {path} not found; give a .ckpt from `gpt-prior fit`, "
            f"a .safetensors bundle, or a shipped model's name"
        )
    if path.suffix == ".safetensors":
        with open_safetensors(path) as bundle:
            metadata = bundle.metadata() or {}
            if metadata.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"{path} is not a GPT prior bundle (no {BUNDLE_FORMAT!r} format in its metadata)")
            state = {key: bundle.get_tensor(key) for key in bundle.keys()}
        saved = {key: metadata[key] for key in ("tokenizer", "vqgan", "vqgan_sha256")}
        saved |= {key: json.loads(metadata[key]) for key in ("config", "sampling")}
    else:
        checkpoint = read_torch(path)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise ValueError(
                f"{path} is not a `gpt-prior fit` checkpoint (no {CHECKPOINT_KEY!r} entry with config and tokenizer)"
            )
        state = {
            key.removeprefix("model."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("model.")
        }
    config = GPTConfig(**saved["config"])
    model = GPT(config)
    model.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    model.to(map_location)
    return PriorBundle(
        model.eval(),
        TextTokenizer.from_json(saved["tokenizer"]),
        config,
        saved["vqgan"],
        saved["vqgan_sha256"],
        saved.get("sampling", {}),
    )


def export_bundle(
    prior: PriorBundle, path: str | Path, vqgan: str | Path | None = None, vqgan_file: str | Path | None = None
) -> Path:
    """Write the prior as one .safetensors bundle (atomically): weights, config, tokenizer, sampling defaults
    and its VQGAN. `vqgan` (a path or a shipped name) names another VQGAN than the one it was trained
    with, e.g. that VQGAN's own exported bundle; its sha256 is that of `vqgan_file` (default: the file
    `vqgan` names)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a GPT prior bundle is a .safetensors file; got {path}")
    vqgan_reference = prior.vqgan_path if vqgan is None else str(vqgan)
    vqgan_sha256 = prior.vqgan_sha256 if vqgan is None else file_sha256(vqgan_file or resolve("vqgan", vqgan))
    config = asdict(prior.config)
    config["image_grid"] = list(config["image_grid"])
    metadata = {
        "format": BUNDLE_FORMAT,
        "config": json.dumps(config),
        "tokenizer": prior.tokenizer.to_json(),
        "vqgan": vqgan_reference,
        "vqgan_sha256": vqgan_sha256,
        "sampling": json.dumps(prior.sampling),
    }
    state = {key: value.detach().contiguous().cpu() for key, value in prior.model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return path


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
