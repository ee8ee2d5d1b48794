"""Loading and exporting this project's VQGANs, without unpickling anything.

Two formats load with `vqgan.load(path)`; a short name loads a shipped bundle ("shapes") or a public
taming VQGAN ("vqgan_imagenet_f16_16384", downloaded once: vqgan.pretrained):
- a Lightning checkpoint of `vqgan fit` (`.ckpt`): read with `torch.load(weights_only=True)`; the
  architecture comes from its saved hyperparameters, the weights from its `model.*` entries;
- an inference bundle (`.safetensors`): the VQGAN's weights, with its config as JSON in the file's
  metadata, so the one file is enough. `export_bundle` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from imagetext.checkpoints import open_safetensors, read_torch
from imagetext.files import atomic_path
from imagetext.shipped import ShippedModelError, resolve
from vqgan.model import VQGAN, VQGANConfig
from vqgan.pretrained import PUBLIC_VQGANS, load_public

BUNDLE_CONFIG_KEY = "vqgan_config"


def config_from_hparams(hparams: Mapping[str, Any]) -> VQGANConfig:
    """The VQGAN's config from `VQGANModule`'s hyperparameters (live, or saved in a checkpoint)."""
    return VQGANConfig.from_dict(
        {key: hparams[key] for key in ("ddconfig", "embed_dim", "n_embed")}
        | {"quantizer": hparams.get("quantizer") or {}}
    )


def load(path: str | Path, map_location: str | torch.device = "cpu") -> VQGAN:
    """A VQGAN in eval mode from a `vqgan fit` checkpoint (.ckpt), an inference bundle (.safetensors), a
    shipped bundle's short name, or the name of a public taming VQGAN."""
    if str(path) in PUBLIC_VQGANS:
        return load_public(str(path)).to(map_location)
    try:
        path = resolve("vqgan", path)
    except ShippedModelError as error:
        raise ShippedModelError(f"{error}; public taming VQGANs: {', '.join(PUBLIC_VQGANS)}") from None
    if not path.is_file():
        raise FileNotFoundError(
            f"VQGAN checkpoint {path} not found; give a .ckpt from `vqgan fit`, a .safetensors "
            f"bundle, or a shipped model's name"
        )
    if path.suffix == ".safetensors":
        with open_safetensors(path, map_location) as bundle:
            metadata = bundle.metadata() or {}
            if BUNDLE_CONFIG_KEY not in metadata:
                raise ValueError(
                    f"{path} has no {BUNDLE_CONFIG_KEY} metadata: it is not a VQGAN bundle from export_bundle"
                )
            state = {key: bundle.get_tensor(key) for key in bundle.keys()}
        config = VQGANConfig.from_dict(json.loads(metadata[BUNDLE_CONFIG_KEY]))
    else:
        checkpoint = read_torch(path, map_location)
        try:
            config = config_from_hparams(checkpoint["hyper_parameters"])
        except KeyError:
            raise ValueError(
                f"{path} is not a `vqgan fit` checkpoint (no VQGAN hyperparameters); "
                f"for a taming-transformers checkpoint use vqgan.from_taming(model.yaml, ckpt)"
            ) from None
        state = {
            key.removeprefix("model."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("model.")
        }
    model = VQGAN(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_bundle(model: VQGAN, path: str | Path) -> Path:
    """Write the model's weights and config to one .safetensors file (atomically)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a VQGAN bundle is a .safetensors file; got {path}")
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata={BUNDLE_CONFIG_KEY: json.dumps(model.config.to_dict())})
    return path
