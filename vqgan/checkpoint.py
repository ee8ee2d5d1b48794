"""Saving and loading this project's VQGANs, without unpickling anything.

    vqgan.save(model, "vqgan.safetensors")      # weights + config (JSON) in one file
    model = vqgan.load("vqgan.safetensors")     # or a `vqgan fit` .ckpt, a shipped name, a public taming name

The file format is every stage's (imagetext.checkpoints): metadata `format` = "vqgan/1" and `config` =
the VQGANConfig as JSON; a `vqgan fit` checkpoint holds the same under `checkpoint["vqgan"]`. A short
name loads a shipped bundle ("shapes") or a public taming VQGAN ("vqgan_imagenet_f16_16384", downloaded
once: vqgan.pretrained). Files written before the format (bundles with `vqgan_config` metadata, `fit`
checkpoints with only their hyperparameters) still load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from imagetext.checkpoints import ModelFile, load_weights, model_format, read_model_file, save_model_file
from imagetext.shipped import ShippedModelError, resolve
from vqgan.model import VQGAN, VQGANConfig
from vqgan.pretrained import PUBLIC_VQGANS, load_public

STAGE = "vqgan"
GIVE = "a .ckpt from `vqgan fit`, a .safetensors file, or a shipped model's name"
TAMING_HINT = (
    "; for a taming-transformers checkpoint use vqgan.from_taming(model.yaml, ckpt), or a public taming VQGAN's name"
)


def metadata(model: VQGAN) -> dict[str, str]:
    """What a VQGAN file carries besides the weights (a `fit` checkpoint too: VQGANModule.on_save_checkpoint)."""
    return {"format": model_format(STAGE), "config": json.dumps(model.config.to_dict())}


def save(model: VQGAN, path: str | Path) -> Path:
    """Write the model's weights and config to one .safetensors file (atomically)."""
    return save_model_file(path, model.state_dict(), metadata(model))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> VQGAN:
    """A VQGAN in eval mode from a `vqgan fit` checkpoint (.ckpt), a .safetensors file, a shipped
    model's short name, or the name of a public taming VQGAN."""
    if str(path) in PUBLIC_VQGANS:
        return load_public(str(path)).to(map_location)
    try:
        path = resolve(STAGE, path)
    except ShippedModelError as error:
        raise ShippedModelError(f"{error}; public taming VQGANs: {', '.join(PUBLIC_VQGANS)}") from None
    found = read_model_file(
        path, STAGE, map_location, upgrade=_older_metadata, hint=TAMING_HINT, what="VQGAN checkpoint", give=GIVE
    )
    model = VQGAN(VQGANConfig.from_dict(found.json("config")))
    load_weights(model, found, "its VQGAN config")
    return model.eval()


def _older_metadata(found: ModelFile) -> dict[str, str]:
    """The metadata of a file written before the format: a bundle kept its config under `vqgan_config`,
    a `vqgan fit` checkpoint only in its hyperparameters."""
    if "vqgan_config" in found.metadata:
        config = json.loads(found.metadata["vqgan_config"])
    elif "ddconfig" in found.hyper_parameters:
        config = _config_from_hparams(found.hyper_parameters).to_dict()
    else:
        return found.metadata
    return {"format": model_format(STAGE), "config": json.dumps(config)}


def _config_from_hparams(hparams: Mapping[str, Any]) -> VQGANConfig:
    return VQGANConfig.from_dict(
        {key: hparams[key] for key in ("ddconfig", "embed_dim", "n_embed")}
        | {"quantizer": hparams.get("quantizer") or {}}
    )
