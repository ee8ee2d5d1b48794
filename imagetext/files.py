"""Writing files so that a crash or Ctrl-C never leaves half of one behind."""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step, with the
    usual permissions (umask), whatever the writer set.

    On an exception the temporary file is removed and `path` keeps whatever it had before. Temporary
    files a killed run left for the same `path` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, f".{path.name}.", r"(\d+)\.\w+\.tmp")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp (and the safetensors writer) make 0600
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def partial_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A new hidden folder `parent/.NAME.partial-PID-…` to build an output folder in; removed if the block
    fails (Ctrl-C and SIGTERM included). `publish_dir` gives it its name. Partial folders of `name` that a
    killed run left behind are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, f".{name}.partial-", r"(\d+)-\w+")
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=parent))
    os.chmod(folder, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_dir(partial: Path, parent: str | Path, name: str) -> Path:
    """Rename a completed `partial_dir` to `parent/name`, or `name-2`, `-3`, … where taken (never onto an
    existing folder that holds anything); the folder's final path."""
    for attempt in range(1, 100_000):
        candidate = Path(parent) / (name if attempt == 1 else f"{name}-{attempt}")
        if candidate.exists():
            continue
        try:
            os.rename(partial, candidate)  # fails on a folder another run published a moment ago
            return candidate
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise RuntimeError(f"no free folder name for {name!r} under {parent}")


def remove_stale(parent: Path, prefix: str, rest: str) -> None:
    """Remove the temporary files and folders in `parent` named PREFIX + `rest` (a pattern whose first
    group is the writer's pid) whose writer has ended."""
    for leftover in parent.glob(f"{glob.escape(prefix)}*"):
        pid = re.fullmatch(rest, leftover.name[len(prefix) :])
        if pid is None or _alive(int(pid.group(1))):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
