"""Any CLIP model as a `Scorer`: an open_clip architecture, pretrained or not, or a checkpoint trained here.

    load("ViT-B-32", pretrained="openai")          open_clip architecture + pretrained tag (open_clip downloads it)
    load("ViT-B-32", pretrained="weights.pt")      architecture + a local weights file open_clip can read
    load("clip-tiny-32", pretrained="last.ckpt")   architecture + a Lightning checkpoint of this project
    load("clip-tiny-32")                           bare architecture, random weights (tests, training)
    load("configs/my-clip.json")                   a model config file in open_clip's format, random weights
    load("runs/clip/clip.safetensors")             a checkpoint of this project, which names its own architecture
    load("shapes")                                 a shipped checkpoint of this project, by its short name

The small architectures in `imagetext/configs/clip_rerank/*.json` (package data) are registered with open_clip when this module
is imported, so every name above goes through open_clip's one factory.

File format of this project (every stage's, imagetext.checkpoints; written by `save`):
    a safetensors file holding the model's state_dict under open_clip's own key names, whose metadata
    (str -> str) holds
        "format"       = "clip_rerank/1"
        "architecture" = the open_clip architecture name, e.g. "clip-tiny-32"
        "model_config" = JSON of the architecture's open_clip config (embed_dim, vision_cfg, text_cfg)
        "preprocess"   = JSON of the model's preprocessing (size, mean, std, interpolation, resize_mode, ...)
    so it loads without `configs/clip_rerank/` and even where that name means something else. Since the
    tensors are a plain open_clip state_dict, `load(architecture, pretrained=file)` and open_clip's own
    `create_model(architecture, pretrained=file)` read it too.
A Lightning checkpoint (.ckpt) of the CLIP LightningModule holds the model's state_dict under the
prefix "model." and the same metadata dict under `checkpoint["clip_rerank"]` (put there by
`metadata` in `on_save_checkpoint`). It is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch

from clip_rerank.scorer import Scorer
from imagetext.checkpoints import (
    CheckpointError,
    ModelFile,
    load_weights,
    model_format,
    read_model_file,
    save_model_file,
)
from imagetext.configs import config_dir
from imagetext.shipped import resolve_if_shipped, shipped_names

STAGE = "clip_rerank"
CONFIG_DIR = config_dir(STAGE)
MODEL_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip needs to build a CLIP
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")  # open_clip's own ways to name a model by where it lives

open_clip.add_model_config(CONFIG_DIR)


def known_architectures() -> list[str]:
    """Every architecture name open_clip can build, this project's small ones included."""
    return open_clip.list_models()


def load(
    spec: str | Path, *, pretrained: str | Path | None = None, device: str | torch.device = "cpu", bf16: bool = False
) -> Scorer:
    """Build a frozen, eval-mode CLIP model from `spec` (see the module docstring) and wrap it in a Scorer.

    `bf16` runs the encoders under bf16 autocast; weights stay float32. Errors name what to change.
    """
    spec = resolve_if_shipped("clip_rerank", str(spec))
    if Path(spec).suffix in CHECKPOINT_SUFFIXES:
        if pretrained is not None:
            raise ValueError(f"{spec} is a checkpoint with its own weights; drop pretrained={str(pretrained)!r}")
        model, tokenizer, architecture = _from_project_checkpoint(Path(spec))
    else:
        architecture = _architecture_name(spec)
        model = _create_with_weights(architecture, pretrained)
        tokenizer = open_clip.get_tokenizer(architecture)
    model.to(device).eval().requires_grad_(False)
    return Scorer(model, tokenizer, architecture=architecture, bf16=bf16)


def metadata(model: torch.nn.Module, architecture: str, model_config: dict | None = None) -> dict[str, str]:
    """The metadata that makes a checkpoint self-describing (see the module docstring).

    `model_config` defaults to the config open_clip has registered under `architecture`.
    """
    if model_config is None:
        model_config = open_clip.get_model_config(architecture)
        if model_config is None:
            raise ValueError(f"architecture {architecture!r} is not registered with open_clip; pass its model_config")
    return {
        "format": model_format(STAGE),
        "architecture": architecture,
        "model_config": json.dumps(model_config),
        "preprocess": json.dumps(open_clip.get_model_preprocess_cfg(model)),
    }


def save(model: torch.nn.Module, architecture: str, path: str | Path, model_config: dict | None = None) -> Path:
    """Write `model` as this project's safetensors file; it appears complete or not at all."""
    return save_model_file(path, model.state_dict(), metadata(model, architecture, model_config))


def _architecture_name(spec: str) -> str:
    """Resolve `spec` to an architecture name open_clip knows; a .json config file is registered first."""
    if spec.startswith(OPEN_CLIP_SCHEMAS):
        return spec
    if spec.endswith(".json"):
        config_file = Path(spec)
        if not config_file.is_file():
            raise FileNotFoundError(f"no CLIP model config at {spec}; give an existing open_clip-style .json file")
        open_clip.add_model_config(config_file)
        if open_clip.get_model_config(config_file.stem) is None:
            raise ValueError(f"{spec} is not an open_clip model config: it needs embed_dim, vision_cfg and text_cfg")
        return config_file.stem
    name = spec.replace("/", "-")  # open_clip spells ViT-B/32 as ViT-B-32
    if name not in known_architectures():
        ours = sorted(path.stem for path in CONFIG_DIR.glob("*.json"))
        shipped = ", ".join(shipped_names("clip_rerank")) or "none"
        raise ValueError(
            f"unknown CLIP architecture {spec!r}; use one of {', '.join(ours + ['ViT-B-32', 'ViT-B-16', 'RN50'])} "
            f"(all: open_clip.list_models()), a model config .json, a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint, "
            f"or a shipped CLIP ({shipped})"
        )
    return name


def _create_with_weights(architecture: str, pretrained: str | Path | None) -> torch.nn.Module:
    if pretrained is None:
        return open_clip.create_model(architecture)
    pretrained_path = Path(pretrained)
    if pretrained_path.is_file() and pretrained_path.suffix == ".ckpt":
        # The architecture is named, so a checkpoint that does not describe itself will do.
        found = read_model_file(pretrained_path, STAGE, upgrade=_architecture_given)
        with _quiet_open_clip_log():
            model = open_clip.create_model(architecture)
        load_weights(model, found, f"architecture {architecture}")
        return model
    if pretrained_path.is_file():  # open_clip reads it, converting other CLIP layouts (OpenAI, timm) on the way
        try:
            return open_clip.create_model(architecture, pretrained=str(pretrained_path))
        except (RuntimeError, AssertionError) as error:  # open_clip reports some mismatches by assert
            raise CheckpointError(
                f"{pretrained_path} does not fit architecture {architecture} ({str(error).splitlines()[0][:300]})"
            ) from None
    tags = open_clip.list_pretrained_tags_by_model(architecture)
    if str(pretrained) in tags:  # open_clip downloads the weights on first use, into its own cache
        try:
            with _quiet_open_clip_log(logging.CRITICAL):
                return open_clip.create_model(architecture, pretrained=str(pretrained))
        except RuntimeError as error:
            if "download" not in str(error).lower():
                raise
            raise ValueError(
                f"could not download open_clip's {architecture} weights {str(pretrained)!r} (offline?); open_clip keeps "
                f"them in its cache (the Hugging Face hub cache, ~/.cache/huggingface) once fetched with a connection, "
                f"or pass a weights file you have as pretrained (--clip-pretrained PATH)"
            ) from None
    if pretrained_path.suffix or len(pretrained_path.parts) > 1:
        raise FileNotFoundError(f"no CLIP weights file at {pretrained}; check the path")
    raise ValueError(
        f"unknown pretrained tag {str(pretrained)!r} for {architecture}; "
        f"use one of {', '.join(tags) if tags else '(none exist for it)'} or a path to a weights file"
    )


def _from_project_checkpoint(path: Path) -> tuple[torch.nn.Module, open_clip.SimpleTokenizer, str]:
    hint = f"; a CLIP weights file without it: load it as load(ARCHITECTURE, pretrained={str(path)!r})"
    give = "an existing .safetensors/.ckpt file or an architecture name such as clip-tiny-32 or ViT-B-32"
    found = read_model_file(path, STAGE, hint=hint, what="CLIP checkpoint", give=give)
    model_config, preprocess = found.json("model_config"), found.json("preprocess")
    missing = [key for key in MODEL_CONFIG_KEYS if not isinstance(model_config, dict) or key not in model_config]
    if missing:
        raise CheckpointError(f"{path}: its model_config lacks {', '.join(missing)}; it cannot say which CLIP to build")
    model, tokenizer = _create_from_config(model_config, preprocess)
    load_weights(model, found, f"architecture {found.metadata['architecture']}")
    return model, tokenizer, found.metadata["architecture"]


def _architecture_given(found: ModelFile) -> dict[str, str]:
    return found.metadata | {"format": model_format(STAGE)}


def _create_from_config(model_config: dict, preprocess: dict) -> tuple[torch.nn.Module, open_clip.SimpleTokenizer]:
    """Build an architecture from its config alone, without touching open_clip's registry of names.

    open_clip builds any model from a folder holding `open_clip_config.json` (its `local-dir:` schema),
    so the checkpoint's config is laid out as such a folder for the moment of building.
    """
    with tempfile.TemporaryDirectory() as folder:
        config = {"model_cfg": model_config, "preprocess_cfg": preprocess}
        (Path(folder) / "open_clip_config.json").write_text(json.dumps(config))
        with _quiet_open_clip_log():
            model = open_clip.create_model(f"local-dir:{folder}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model, tokenizer


@contextlib.contextmanager
def _quiet_open_clip_log(level: int = logging.ERROR) -> Iterator[None]:
    """Hide open_clip's messages below `level` (it logs to the root logger): its 'initialized randomly'
    warning when weights follow at once, its download error where ours replaces it."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)
