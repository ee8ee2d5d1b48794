"""Model files of every stage, read without trusting them: every failure is one line naming the file and the cause.

    save_model_file(path, model.state_dict(), metadata)   # one .safetensors file: weights + str → str metadata
    found = read_model_file(path, "vqgan")                # that file, or the stage's Lightning .ckpt
    load_weights(model, found)                            # a mismatch is a CheckpointError, not torch's traceback

One format for the three stages: a safetensors file whose metadata holds `"format": "STAGE/1"` and what
the stage needs to rebuild its model (its config as JSON, and for the prior its tokenizer and VQGAN).
A `fit` checkpoint (`.ckpt`) holds the same metadata under `checkpoint[STAGE]` and the plain model's
weights under the LightningModule's `model.` prefix, so one reader serves both.

    checkpoint = read_torch(path)                     # torch.load(weights_only=True): never runs pickled code
    with open_safetensors(path) as bundle: ...        # safetensors.safe_open

An empty file, a text file, a truncated archive, a safetensors header that is too small or too large,
a pickle that holds more than tensors and plain containers, or a CUDA device on a machine without one:
each raises `CheckpointError` (a ValueError) saying what the file is not, rather than the reader's
traceback. A refused pickle is refused: the message does not suggest unpickling it anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from imagetext.files import atomic_path

MODEL_PREFIX = "model."  # each stage's LightningModule holds its plain model as `self.model`


class CheckpointError(ValueError):
    """A model file that cannot be read as what it should be."""


class ModelFileNotFound(CheckpointError, FileNotFoundError):
    """No file where a model file was named."""


class RefusedPickle(CheckpointError):
    """A torch file that holds more than tensors and plain containers: it is not unpickled."""


def model_format(stage: str) -> str:
    """The value of a stage's `format` metadata key: the stage and the format's version."""
    return f"{stage}/1"


@dataclass
class ModelFile:
    """A stage's model file as read: the plain model's weights and the stage's metadata (str → str)."""

    path: Path
    state: dict[str, torch.Tensor]
    metadata: dict[str, str]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)  # a .ckpt's, for files older than the format

    def json(self, key: str) -> Any:
        """A metadata entry that holds JSON, decoded; a missing or broken one is a CheckpointError."""
        try:
            return json.loads(self.metadata[key])
        except (KeyError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{self.path}: its metadata lacks a readable {error}") from None


def save_model_file(path: str | os.PathLike, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write weights and metadata as one .safetensors file; it appears complete or not at all."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"a model file is a .safetensors file; name it {path.with_suffix('.safetensors')}")
    # safetensors refuses tensors that share memory (tied weights): each entry gets its own copy.
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=dict(metadata))
    return path


def read_model_file(
    path: str | os.PathLike,
    stage: str,
    map_location: str | torch.device = "cpu",
    *,
    upgrade: Callable[[ModelFile], dict[str, str]] | None = None,
    hint: str = "",
    what: str = "model file",
    give: str = "",
) -> ModelFile:
    """A stage's .safetensors model file or Lightning .ckpt, checked to be that stage's.

    `upgrade` maps the metadata of files written before the format existed (it sees the whole file);
    `hint` ends the message when the file is not the stage's, saying what to do instead. A missing
    file is "`what` PATH not found; give `give`".
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileNotFound(f"{what} {path} not found" + (f"; give {give}" if give else ""))
    hyper_parameters: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        with open_safetensors(path, map_location) as file:
            metadata = dict(file.metadata() or {})
            state = {name: file.get_tensor(name) for name in file.keys()}
    else:
        try:
            checkpoint = read_torch(path, map_location)
        except RefusedPickle as error:
            raise RefusedPickle(f"{error}{hint}") from None
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict){hint}")
        saved = checkpoint.get(stage) or {}
        metadata = {key: value if isinstance(value, str) else json.dumps(value) for key, value in saved.items()}
        state = {
            name.removeprefix(MODEL_PREFIX): tensor
            for name, tensor in checkpoint["state_dict"].items()
            if name.startswith(MODEL_PREFIX)
        }
        hyper_parameters = dict(checkpoint.get("hyper_parameters") or {})
    found = ModelFile(path, state, metadata, hyper_parameters)
    if upgrade is not None and "format" not in metadata:
        found.metadata = upgrade(found)
    if found.metadata.get("format") != model_format(stage):
        said = found.metadata.get("format")
        what = f"its format is {said!r}" if said else f"no {model_format(stage)!r} format in its metadata"
        raise CheckpointError(f"{path} is not a {stage} model file ({what}){hint}")
    return found


def load_weights(model: torch.nn.Module, found: ModelFile, what: str) -> None:
    """`model.load_state_dict(found.state)`, strict; a mismatch names the file and the first tensors that differ."""
    try:
        model.load_state_dict(found.state, strict=True)
    except RuntimeError as error:
        # torch lists every mismatched tensor on a line of its own, after a heading: keep the first two.
        lines = str(error).splitlines()
        mismatches = " ".join(line.strip() for line in lines[1:3] or lines)
        raise CheckpointError(
            f"{found.path} does not fit {what} ({mismatches[:300]}); load it with the config it was trained with"
        ) from None


def check_device(device: str | torch.device) -> None:
    """Refuse a CUDA device where torch has none, naming the real cause."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device}: this torch sees no CUDA GPU (torch.cuda.is_available() is False)")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ModelFileNotFound(f"{path} not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy?")


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle of protocol 2 or later (the legacy format) by its first bytes."""
    with path.open("rb") as file:
        start = file.read(4)
    return start.startswith((b"PK\x03\x04", b"\x80"))


def read_torch(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", allowed: Sequence[tuple[type, str]] = ()
) -> Any:
    """`torch.load(path, weights_only=True)`; `allowed` names stand-in classes for globals that may appear."""
    path = Path(path)
    _check_file(path)
    check_device(map_location)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not _looks_like_torch_file(path):
            raise CheckpointError(
                f"{path} is not a readable PyTorch checkpoint (not a zip archive or a pickle)"
            ) from None
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = found.group(1) if found else "Python objects beyond tensors and plain containers"
        raise RefusedPickle(
            f"{path} holds {what}, so it was refused: unpickling it could run code from the file; "
            f"use a checkpoint of weights only (a .safetensors bundle, or a .ckpt of this project)"
        ) from None
    except (RuntimeError, EOFError, KeyError, IndexError, UnicodeDecodeError, ValueError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or not one?): {first_line}"
        ) from None


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Iterator[Any]:
    """`safe_open(path)`, with a broken file (header too small or too large, truncated data) as one line."""
    path = Path(path)
    _check_file(path)
    check_device(device)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as file:
            yield file
    except SafetensorError as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
