"""Progress reports of long commands, and the demo's board that shows them and shares the cores."""

import io
import json
import sys

import pytest
import torch

from imagetext.progress import PROGRESS_ENV, THREADS_SUFFIX, ProgressBar, ProgressFile, read_progress
from vqgan_clip.board import Board, status_line


def test_a_progress_file_holds_step_total_eta_and_is_rewritten_at_most_once_an_interval(tmp_path):
    path = tmp_path / "p.json"
    status = ProgressFile(path, interval=3600)
    status.update("fit", 10, 110, {"loss": 2.5})  # the first report starts the clock: no pace yet
    first = read_progress(path)
    assert first["step"] == 10 and first["total"] == 110 and first["eta"] is None and first["metrics"] == {"loss": 2.5}
    status.update("fit", 20, 110, {"loss": 2.0})
    assert read_progress(path) == first  # within the interval: not rewritten
    status.update("fit", 60, 110, {"loss": 1.0}, force=True)
    last = read_progress(path)
    # 50 steps since the first report took `elapsed`: the 50 left take as long again
    assert last["step"] == 60 and last["eta"] == pytest.approx(last["elapsed"])
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_a_thread_hint_beside_the_file_sets_the_threads(tmp_path):
    path = tmp_path / "p.json"
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    try:
        (tmp_path / f"p.json{THREADS_SUFFIX}").write_text(f"{wanted}\n")
        ProgressFile(path).update("fit", 1, 2, force=True)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_a_progress_bar_reports_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    with ProgressBar(total=5, desc="optimize", file=io.StringIO()) as bar:
        bar.update(5)
    assert not path.exists()
    monkeypatch.setenv(PROGRESS_ENV, str(path))
    shown = io.StringIO()
    with ProgressBar(total=5, desc="optimize", file=shown) as bar:
        for loss in (0.5, 0.25):
            bar.update(1)
            bar.set_postfix(loss=loss)
    status = read_progress(path)
    assert status["task"] == "optimize" and status["step"] == 2 and status["total"] == 5
    assert status["metrics"] == {"loss": 0.25} and "loss=0.25" in shown.getvalue()


def test_status_lines_name_step_total_elapsed_eta_and_metrics():
    status = {"task": "fit", "step": 120, "total": 500, "elapsed": 31.0, "eta": 98.2, "metrics": {"rec": 0.012345}}
    assert status_line("vqgan", status, 40) == "[demo] vqgan     fit 120/500 (24%)  0:31, ETA 1:38  rec 0.01235"
    assert (
        status_line("eval", {**status, "total": None, "eta": None, "metrics": {}}, 5)
        == "[demo] eval      fit 120  0:31"
    )
    assert status_line("clip", None, 3725) == "[demo] clip      starting (1:02:05)"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def reporter(seconds: float) -> list[str]:
    """A stand-in stage: reports three steps, one every `seconds`/3, with its thread count as the metric."""
    code = (
        "import time, torch; from imagetext.progress import ProgressFile; p = ProgressFile.from_environment(); "
        f"[(p.update('work', i, 3, {{'threads': torch.get_num_threads()}}, force=True), time.sleep({seconds} / 3)) "
        "for i in range(1, 4)]"
    )
    return [sys.executable, "-c", code]


def test_the_board_shares_the_cores_and_hands_a_finished_stages_core_over(tmp_path):
    board = Board(stream=io.StringIO(), cores=2, plain_every=0)
    short = board.start("short", reporter(0.3), tmp_path / "short.log", share_cores=True)
    long = board.start("long", reporter(6), tmp_path / "long.log", share_cores=True)
    assert (short.threads, long.threads) == (1, 1)  # side by side: a core each
    assert board.wait(short) == 0
    assert board.wait(long) == 0
    assert long.threads == 2 and (tmp_path / f"long.progress.json{THREADS_SUFFIX}").read_text() == "2\n"
    last = json.loads((tmp_path / "long.progress.json").read_text())
    assert last["step"] == 3 and last["metrics"]["threads"] == 2  # the long one took the freed core
    printed = board.stream.getvalue()
    assert "[demo] long      work" in printed and "\x1b[" not in printed  # plain lines off a terminal


def test_on_a_terminal_the_board_redraws_its_lines_in_place(tmp_path):
    board = Board(stream=Terminal(), cores=2)
    board.wait(board.start("one", reporter(0.6), tmp_path / "one.log"))
    board.say("[demo] one: done")
    drawn = board.stream.getvalue()
    assert "[demo] one       work" in drawn and "\x1b[1F\x1b[J" in drawn
    assert drawn.endswith("[demo] one: done\n")
