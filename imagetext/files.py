"""Writing files so that a crash or Ctrl-C never leaves half of one behind."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step.

    On an exception the temporary file is removed and `path` keeps whatever it had before.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def unique_dir(parent: str | Path, name: str) -> Path:
    """Create and return `parent/name`, or `parent/name-2`, `-3`, … if taken: never reuse a folder."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 100_000):
        candidate = parent / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free folder name for {name!r} under {parent}")


def safe_name(text: str, max_length: int = 60) -> str:
    """A folder name made from free text (a prompt): lower case letters, digits and single dashes.

    "A red circle: 1|a blue square" -> "a-red-circle-1-a-blue-square". Text with nothing usable gives
    "untitled"; long text is cut at a dash where possible.
    """
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(name) > max_length:
        cut = name[:max_length]
        name = cut.rsplit("-", 1)[0] if "-" in cut else cut
    return name or "untitled"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (checkpoints can be large).

    Remembered per (path, size, modification time), so the several places that record which checkpoint
    a command used read a multi-GB file once; any rewrite of the file changes the key.
    """
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
