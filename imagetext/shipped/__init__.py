"""Trained models that ship inside the package, found by a short name such as "shapes".

Each stage keeps its shipped models in a folder of its own here — `vqgan/`, `gpt_prior/`,
`clip_rerank/` — as `NAME.safetensors` beside its model card `NAME.md`. The card says how the file was
made (command, data, steps, wall time, eval figures) and holds its sha256 on a line `sha256: HEX`;
`shipped_file` refuses a file whose digest differs from its card, so what loads is what the card
describes. The files are package data: `pip install .` carries them.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from imagetext import STAGES
from imagetext.files import file_sha256

SHA256_LINE = re.compile(r"^\W*sha256\W+([0-9a-f]{64})\b", re.MULTILINE)


class ShippedModelError(ValueError):
    """A short name that names no shipped model, or a shipped file that is not what its card says."""


def shipped_dir(stage: str) -> Path:
    """The folder that holds `stage`'s shipped models (inside the installed package)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return Path(str(resources.files(__package__))) / stage


def shipped_names(stage: str) -> list[str]:
    """The short names of `stage`'s shipped models (those with a file and a card)."""
    folder = shipped_dir(stage)
    return sorted(path.stem for path in folder.glob("*.safetensors") if path.with_suffix(".md").is_file())


def is_bare_name(spec: str | Path) -> bool:
    """A word like "shapes": no folder, no file suffix, and no such file here."""
    text = str(spec)
    return bool(text) and "/" not in text and "\\" not in text and not Path(text).suffix and not Path(text).exists()


def resolve(stage: str, spec: str | Path) -> Path:
    """A model file from a path or a short name: a bare name is a shipped model (an unknown one is an
    error that lists the shipped names); anything else is returned as the path it is."""
    return shipped_file(stage, str(spec)) if is_bare_name(spec) else Path(spec)


def resolve_if_shipped(stage: str, spec: str) -> str:
    """`spec` itself, unless it is the name of a shipped model: then that model's checked file. For specs
    that may also be other names (a CLIP architecture), where `resolve` would refuse an unknown word."""
    if spec in shipped_names(stage) and not Path(spec).exists():
        return str(shipped_file(stage, spec))
    return spec


def card_sha256(card: Path) -> str:
    found = SHA256_LINE.search(card.read_text(encoding="utf-8"))
    if found is None:
        raise ShippedModelError(f"model card {card} has no 'sha256: HEX' line")
    return found.group(1)


def shipped_file(stage: str, name: str) -> Path:
    """The shipped `stage` model called `name`, checked against its card's sha256."""
    names = shipped_names(stage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        raise ShippedModelError(f"no shipped {stage} model named {name!r} (shipped: {known}); or give a file path")
    path = shipped_dir(stage) / f"{name}.safetensors"
    expected, actual = card_sha256(path.with_suffix(".md")), file_sha256(path)
    if actual != expected:
        raise ShippedModelError(
            f"shipped {stage} model {path} has sha256 {actual[:12]}…, its card says "
            f"{expected[:12]}…: the file was changed; reinstall the package"
        )
    return path
