"""The demo's progress lines: one per running stage, with step / total, elapsed, ETA and its metrics.

Each stage's command reports to a status file (imagetext.progress); the board reads them about once a
second. On a terminal it redraws its lines in place; otherwise (a log, CI) it prints them, plainly,
every `plain_every` seconds. Stages started with `share_cores` split the machine's cores between them,
and when one ends the others are told (through their status file's `.threads`) to use what it freed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from imagetext.progress import PROGRESS_ENV, THREADS_SUFFIX, read_progress

POLL_SECONDS = 0.5


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def status_line(name: str, status: dict | None, running_for: float) -> str:
    """`[demo] vqgan  fit 120/500 (24%)  0:31, ETA 1:38  rec 0.0123` from a stage's last status."""
    if status is None:
        return f"[demo] {name:<9} starting ({clock(running_for)})"
    step, total = status["step"], status["total"]
    done = f"{step}/{total} ({100 * step // total}%)" if total else f"{step}"
    eta = f", ETA {clock(status['eta'])}" if status.get("eta") is not None else ""
    metrics = "  ".join(f"{key} {value:.4g}" for key, value in status["metrics"].items())
    return f"[demo] {name:<9} {status['task']} {done}  {clock(status['elapsed'])}{eta}  {metrics}".rstrip()


@dataclass
class RunningCommand:
    """A stage's command in the background, its output in `log`, reporting to `progress`."""

    name: str
    process: subprocess.Popen
    progress: Path
    threads: int | None  # the CPU threads it was told to use; None when it uses the default
    started: float = field(default_factory=time.perf_counter)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def use_threads(self, threads: int) -> None:
        Path(str(self.progress) + THREADS_SUFFIX).write_text(f"{threads}\n")
        self.threads = threads

    def line(self) -> str:
        return status_line(self.name, read_progress(self.progress), time.perf_counter() - self.started)


class Board:
    """Starts stage commands, shows their progress while the demo waits for them, and shares the cores."""

    def __init__(self, stream: TextIO | None = None, cores: int | None = None, plain_every: float = 15.0):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.cores = cores or os.cpu_count() or 1
        self.plain_every, self.last_plain = plain_every, time.perf_counter()
        self.commands: list[RunningCommand] = []
        self.drawn = 0  # lines of the board on the terminal right now

    def start(self, name: str, command: list[str], log: Path, share_cores: bool = False) -> RunningCommand:
        """Run `command` in the background with its output in `log`; with `share_cores`, on an even share
        of the cores among the commands that share them (the others are told to make room)."""
        progress = log.with_suffix(".progress.json")
        for stale in (progress, Path(str(progress) + THREADS_SUFFIX)):
            stale.unlink(missing_ok=True)
        environment = {**os.environ, PROGRESS_ENV: str(progress)}
        threads = max(1, self.cores // (len(self._sharing()) + 1)) if share_cores else None
        if threads:
            environment["OMP_NUM_THREADS"] = str(threads)
        with open(log, "w") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
        running = RunningCommand(name, process, progress, threads)
        self.commands.append(running)
        self._share_cores()  # those already running give up their share of the new one's cores
        return running

    def wait(self, running: RunningCommand) -> int:
        """Show progress until `running` ends; its exit status."""
        while running.running:
            self.tick()
            time.sleep(POLL_SECONDS)
        self.tick()
        return running.process.returncode

    def say(self, text: str) -> None:
        """A message above the live lines (which the next tick redraws)."""
        self._erase()
        print(text, file=self.stream, flush=True)

    def tick(self) -> None:
        self.commands = [command for command in self.commands if command.running]
        self._share_cores()
        lines = [command.line() for command in self.commands]
        if self.live:
            width = shutil.get_terminal_size().columns - 1
            self._erase()
            self.stream.write("".join(line[:width] + "\n" for line in lines))
            self.stream.flush()
            self.drawn = len(lines)
        elif lines and time.perf_counter() - self.last_plain >= self.plain_every:
            self.last_plain = time.perf_counter()
            print("\n".join(lines), file=self.stream, flush=True)

    def _sharing(self) -> list[RunningCommand]:
        return [command for command in self.commands if command.running and command.threads]

    def _share_cores(self) -> None:
        sharing = self._sharing()
        if sharing:
            share = max(1, self.cores // len(sharing))
            for command in sharing:
                if command.threads != share:
                    command.use_threads(share)

    def _erase(self) -> None:
        if self.live and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the board's first line, clear to the end
            self.drawn = 0
