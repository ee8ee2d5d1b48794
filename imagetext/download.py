"""Downloading a model file once into the cache: progress bar, complete or not at all, checked before use.

    path = download(["https://…/last.ckpt", "http://mirror/…"], cache_dir() / "taming" / "x.ckpt",
                    check=lambda temporary: ...)

The file is written under a temporary name beside its place and renamed there only when every byte the
server announced has arrived and `check` (a strict load, say) accepts it: a failure or Ctrl-C leaves
nothing behind, and a file found in its place is reused without a network call. Where no URL works,
the error is one line naming the URLs and the path to put the file at by hand.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from imagetext.files import atomic_path
from imagetext.progress import ProgressBar

CACHE_ENV = "VQGAN_CLIP_CACHE"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60


class DownloadError(OSError):
    """No URL gave a complete file that passed its check."""


def cache_dir() -> Path:
    """$VQGAN_CLIP_CACHE, else $XDG_CACHE_HOME/vqgan-clip, else ~/.cache/vqgan-clip."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vqgan-clip"


def download(
    urls: Sequence[str], path: Path, what: str, check: Callable[[Path], None] | None = None, quiet: bool = False
) -> Path:
    """`path`, downloaded from the first of `urls` that works unless it is already there."""
    if path.is_file():
        return path
    failures = []
    for url in urls:
        try:
            with atomic_path(path) as temporary:
                _fetch(url, temporary, what, quiet)
                if check is not None:
                    check(temporary)
            return path
        except (OSError, ValueError) as error:  # URLError and HTTPError are OSErrors; a failed check a ValueError
            failures.append(f"{url} ({_reason(error)})")
    raise DownloadError(
        f"could not download {what}: {'; '.join(failures)}. Download it by hand to {path} "
        f"(or set {CACHE_ENV} to a folder that holds it)"
    )


def _fetch(url: str, destination: Path, what: str, quiet: bool) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        announced = response.headers.get("Content-Length")
        expected = int(announced) if announced and announced.isdigit() else None
        received = 0
        with (
            open(destination, "wb") as out,
            ProgressBar(
                total=expected, desc=what, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet, leave=False
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise ValueError(f"got {received} of {expected} bytes")
    if received == 0:
        raise ValueError("the server sent an empty file")


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error).splitlines()[0] if str(error) else type(error).__name__
