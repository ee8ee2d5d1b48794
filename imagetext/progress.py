"""Progress of a long command, for the program that started it (the demo draws its lines from it).

A command started with VQGAN_CLIP_PROGRESS=FILE rewrites FILE, atomically and at most once a second, as

    {"task": "fit", "step": 120, "total": 500, "elapsed": 31.2, "eta": 98.0, "metrics": {"rec": 0.0123}}

and, when FILE.threads exists, takes the number in it as the CPU threads to use from then on: the demo
writes one there when a stage running beside this one ends and frees its core. Without the variable
nothing is written and nothing changes. Fits report through `ProgressFileCallback` (in imagetext.training),
every other loop through `ProgressBar`, a tqdm bar that reports as it updates.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from imagetext.files import atomic_path

PROGRESS_ENV = "VQGAN_CLIP_PROGRESS"
THREADS_SUFFIX = ".threads"


class ProgressFile:
    """The status file of one command: `update` rewrites it, and applies a thread hint left beside it."""

    def __init__(self, path: str | os.PathLike, interval: float = 1.0):
        self.path, self.interval = Path(path), interval
        self.started = time.perf_counter()
        self.first_step: int | None = None  # a resumed fit starts past 0: the ETA counts this run's pace only
        self.last_write = -float("inf")

    @classmethod
    def from_environment(cls) -> ProgressFile | None:
        path = os.environ.get(PROGRESS_ENV)
        return cls(path) if path else None

    @property
    def threads_file(self) -> Path:
        return self.path.with_name(self.path.name + THREADS_SUFFIX)

    def update(
        self, task: str, step: int, total: int | None, metrics: dict[str, float] | None = None, force: bool = False
    ) -> None:
        """Rewrite the file (unless it was written less than `interval` ago and not `force`) and take up
        a thread hint left beside it."""
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.started = step, now
        if not force and now - self.last_write < self.interval:
            return
        self.last_write = now
        elapsed, done = now - self.started, step - self.first_step
        eta = elapsed / done * (total - step) if total and done > 0 else None
        status = {"task": task, "step": step, "total": total, "elapsed": elapsed, "eta": eta, "metrics": metrics or {}}
        with atomic_path(self.path) as temporary:
            Path(temporary).write_text(json.dumps(status), encoding="utf-8")
        self._apply_thread_hint()

    def _apply_thread_hint(self) -> None:
        try:
            threads = int(self.threads_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        if threads > 0 and threads != torch.get_num_threads():
            torch.set_num_threads(threads)


def read_progress(path: Path) -> dict | None:
    """The status a command last wrote to `path`, or None before its first write."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class ProgressBar(tqdm):
    """A tqdm bar (same arguments) that also reports to VQGAN_CLIP_PROGRESS when that is set; the numbers
    given to `set_postfix` are its metrics."""

    def __init__(self, *args, **kwargs):
        self.status = ProgressFile.from_environment()
        self.metrics: dict[str, float] = {}
        super().__init__(*args, **kwargs)

    def update(self, n: float = 1) -> bool | None:
        shown = super().update(n)
        self._report(force=False)
        return shown

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.metrics = {key: float(value) for key, value in {**(ordered_dict or {}), **kwargs}.items()}
        super().set_postfix({key: f"{value:.4g}" for key, value in self.metrics.items()}, refresh=refresh)

    def close(self) -> None:
        self._report(force=True)
        super().close()

    def _report(self, force: bool) -> None:
        if self.status is not None and not self.disable:
            self.status.update(self.desc or "working", int(self.n), self.total, self.metrics, force=force)
