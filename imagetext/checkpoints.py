"""Reading model files without trusting them: every failure is one line that names the file and the cause.

    checkpoint = read_torch(path)                     # torch.load(weights_only=True): never runs pickled code
    with open_safetensors(path) as bundle: ...        # safetensors.safe_open

An empty file, a text file, a truncated archive, a safetensors header that is too small or too large,
a pickle that holds more than tensors and plain containers, or a CUDA device on a machine without one:
each raises `CheckpointError` (a ValueError) saying what the file is not, rather than the reader's
traceback. A refused pickle is refused: the message does not suggest unpickling it anyway.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A model file that cannot be read as what it should be."""


def check_device(device: str | torch.device) -> None:
    """Refuse a CUDA device where torch has none, naming the real cause."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device}: this torch sees no CUDA GPU (torch.cuda.is_available() is False)")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
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
        raise CheckpointError(
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
