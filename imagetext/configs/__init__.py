"""The YAML configs of each stage's `fit` and the small open_clip model JSONs, as package data.

    imagetext/configs/vqgan/shapes.yaml          vqgan fit -c shapes
    imagetext/configs/gpt_prior/shapes.yaml      gpt-prior fit -c shapes
    imagetext/configs/clip_rerank/shapes.yaml    clip-rerank fit -c shapes
    imagetext/configs/clip_rerank/clip-*.json    open_clip architectures (clip_rerank.load("clip-tiny-32"))
    imagetext/configs/data/shapes-64k.yaml       vqgan-clip encode --data shapes-64k (a bare data: block)

They travel with the package, so a plain `pip install` finds them from any folder; in a clone the
top-level `configs/` links here, so `-c configs/vqgan/shapes.yaml` names the same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from imagetext import STAGES

KINDS = (*STAGES, "data")  # a folder of configs each
CONFIG_SUFFIX = ".yaml"


def config_dir(kind: str) -> Path:
    """The folder of a stage's packaged configs, or of the data blocks ("data"); a real folder, since
    open_clip and omegaconf read paths."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of config {kind!r}; use one of {', '.join(KINDS)}")
    return Path(str(resources.files(__package__))) / kind


def config_names(stage: str) -> list[str]:
    """The short names of `stage`'s packaged YAML configs ("shapes", "emoji", …)."""
    return sorted(path.stem for path in config_dir(stage).glob(f"*{CONFIG_SUFFIX}"))


def packaged_config(stage: str, name: str) -> Path:
    """`stage`'s packaged config called `name` (with or without .yaml); an unknown name lists the known."""
    stem = name[: -len(CONFIG_SUFFIX)] if name.endswith(CONFIG_SUFFIX) else name
    if stem not in config_names(stage):
        raise FileNotFoundError(
            f"no config file {name!r} and no packaged {stage} config of that name "
            f"(packaged: {', '.join(config_names(stage))}); give a path to a YAML file"
        )
    return config_dir(stage) / f"{stem}{CONFIG_SUFFIX}"


def resolve_config(stage: str, spec: str | Path) -> Path:
    """A config path as given when such a file exists or it names a folder; otherwise `stage`'s packaged
    config of that short name (`shapes`, `shapes.yaml`)."""
    path = Path(spec)
    if path.exists() or len(path.parts) > 1:
        return path
    return packaged_config(stage, str(spec))


ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], values: Mapping[str, Any] | ConfigT, where: str) -> ConfigT:
    """Build dataclass `cls` from a mapping, naming any key it does not know."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping of settings, got {type(values).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; known keys are {', '.join(known)}")
    return cls(**values)
