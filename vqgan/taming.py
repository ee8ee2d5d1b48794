"""Load taming-transformers VQGAN checkpoints (their `model.yaml` + `last.ckpt`) into this project's VQGAN.

Public taming checkpoints are PyTorch Lightning 1.x files: `state_dict` plus optimizer states, step
counters and callback states. Lightning 1.x keyed the callback states by the callback *class*
(`{ModelCheckpoint: {...}}`), so the pickle names `pytorch_lightning.callbacks...ModelCheckpoint`
as a global and `torch.load(weights_only=True)` refuses it. That class is only a dict key: a
stand-in class is allowed under exactly those names, so the file loads without importing Lightning
and without unpickling anything else. Any other object still fails, with a conversion hint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from torch import Tensor, nn

from imagetext.checkpoints import read_torch
from vqgan.discriminator import NLayerDiscriminator
from vqgan.model import VQGAN, AutoencoderConfig, VQGANConfig
from vqgan.quantize import QuantizerConfig

TAMING_MODELS = {"VQModel": "vq", "GumbelVQ": "gumbel"}  # model.target class name -> quantizer kind
# taming's transformers (COCO, FacesHQ, S-FLCKR) hold their VQGAN as the first stage: params.first_stage_config,
# weights under first_stage_model.*
TAMING_TRANSFORMER = "Net2NetTransformer"
FIRST_STAGE_PREFIX = "first_stage_model."


class _LightningCallbackKey:
    """Stands in for a Lightning callback class that a checkpoint uses as a dict key."""


_CALLBACK_CLASSES = [
    f"{package}.callbacks.{module}.{name}"
    for package in ("pytorch_lightning", "lightning.pytorch")
    for module, name in (
        ("model_checkpoint", "ModelCheckpoint"),
        ("early_stopping", "EarlyStopping"),
        ("lr_monitor", "LearningRateMonitor"),
    )
]


@dataclass
class TamingConfig:
    """What a taming model.yaml says: the VQGAN and its training loss settings."""

    vqgan: VQGANConfig
    loss_target: str | None = None
    loss_params: dict[str, Any] = field(default_factory=dict)
    state_prefix: str = ""  # where the VQGAN's weights sit in the checkpoint's state_dict


def taming_config(config_yaml: str | Path) -> TamingConfig:
    """Read taming's model.yaml (`model.target`, `model.params.{embed_dim, n_embed, ddconfig, lossconfig}`); of a
    taming transformer's config, its first stage (`model.params.first_stage_config`)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(config_yaml), resolve=True)
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or "target" not in model or not isinstance(model.get("params"), dict):
        raise ValueError(f"{config_yaml} is not a taming model.yaml: expected model.target and model.params")
    target, params, prefix = model["target"], model["params"], ""
    if target.rsplit(".", 1)[-1] == TAMING_TRANSFORMER:
        first_stage = params.get("first_stage_config")
        if not isinstance(first_stage, dict) or not isinstance(first_stage.get("params"), dict):
            raise ValueError(f"{config_yaml}: a {TAMING_TRANSFORMER} config without model.params.first_stage_config")
        target, params, prefix = first_stage.get("target", ""), first_stage["params"], FIRST_STAGE_PREFIX
    kind = TAMING_MODELS.get(target.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(
            f"{config_yaml}: model.target {target} is not supported; "
            f"use a config for taming.models.vqgan.{' or '.join(TAMING_MODELS)}"
        )
    missing = [key for key in ("ddconfig", "embed_dim", "n_embed") if key not in params]
    if missing:
        raise ValueError(
            f"{config_yaml}: model.params lacks {', '.join(missing)}; a taming VQGAN config names all of them"
        )
    if params.get("remap"):
        raise ValueError(f"{config_yaml}: model.params.remap (a code remapping file) is not supported; remove it")
    if kind == "vq":
        quantizer = QuantizerConfig(kind="vq", beta=0.25, legacy=True)  # what taming's VQModel hard-codes
    else:
        quantizer = QuantizerConfig(kind="gumbel", kl_weight=params.get("kl_weight", 1e-8))
    vqgan = VQGANConfig(
        ddconfig=AutoencoderConfig.from_dict(params["ddconfig"]),
        embed_dim=params["embed_dim"],
        n_embed=params["n_embed"],
        quantizer=quantizer,
    )
    loss = params.get("lossconfig") or {}
    return TamingConfig(
        vqgan=vqgan, loss_target=loss.get("target"), loss_params=dict(loss.get("params") or {}), state_prefix=prefix
    )


def load_taming_state_dict(ckpt: str | Path) -> dict[str, Tensor]:
    """The `state_dict` of a taming checkpoint, read with `weights_only=True` (also accepts a bare state_dict)."""
    checkpoint = read_torch(ckpt, allowed=[(_LightningCallbackKey, name) for name in _CALLBACK_CLASSES])
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{ckpt} has no state_dict of tensors; is it a taming-transformers checkpoint?")
    return dict(state)


def load_exact(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """load_state_dict(strict=True), but naming every missing, unexpected or mis-shaped key (one line per kind)."""
    expected = module.state_dict()
    problems = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mis_shaped = [
        f"{key} {tuple(state[key].shape)} (model has {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches: {', '.join(mis_shaped)}")
    if problems:
        raise ValueError(
            f"{source} does not match the model its config describes "
            f"(wrong config for this checkpoint?)\n" + "\n".join(problems)
        )
    module.load_state_dict(state, strict=True)


@overload
def from_taming(config_yaml: str | Path, ckpt: str | Path, keep_discriminator: Literal[False] = False) -> VQGAN: ...
@overload
def from_taming(
    config_yaml: str | Path, ckpt: str | Path, keep_discriminator: Literal[True]
) -> tuple[VQGAN, NLayerDiscriminator]: ...
def from_taming(
    config_yaml: str | Path, ckpt: str | Path, keep_discriminator: bool = False
) -> VQGAN | tuple[VQGAN, NLayerDiscriminator]:
    """A VQGAN (in eval mode) from taming's model.yaml and checkpoint, loaded strictly.

    The checkpoint's `loss.*` weights (LPIPS, discriminator) are dropped, unless `keep_discriminator`,
    which also returns taming's PatchGAN (`loss.discriminator.*`) for fine-tuning.
    """
    config = taming_config(config_yaml)
    state = load_taming_state_dict(ckpt)
    if config.state_prefix:
        state = {k.removeprefix(config.state_prefix): v for k, v in state.items() if k.startswith(config.state_prefix)}
    model = VQGAN(config.vqgan)
    load_exact(model, {k: v for k, v in state.items() if not k.startswith("loss.")}, f"{ckpt} (with {config_yaml})")
    model.eval()
    if not keep_discriminator:
        return model

    prefix = "loss.discriminator."
    disc_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    if not disc_state:
        raise ValueError(
            f"{ckpt} has no {prefix}* weights (its loss is {config.loss_target}); "
            "load it without keep_discriminator and train a new discriminator"
        )
    if config.loss_params.get("use_actnorm"):
        raise ValueError(
            f"{config_yaml}: lossconfig uses an ActNorm discriminator, which is not supported; "
            "load without keep_discriminator"
        )
    discriminator = NLayerDiscriminator(
        in_channels=config.loss_params.get("disc_in_channels", 3),
        ndf=config.loss_params.get("disc_ndf", 64),
        n_layers=config.loss_params.get("disc_num_layers", 3),
    )
    load_exact(discriminator, disc_state, f"{ckpt} discriminator")
    return model, discriminator
