"""The demo's stage runner: a stage's checkpoint is kept, a finished stage is reused, a failed one is named."""
import sys

import pytest

from vqgan_clip.demo import Stage


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def write_checkpoint(folder, runs_file):
    """A stand-in `fit` that leaves logs/version_0/checkpoints/last.ckpt and counts its runs."""
    return python(
        "import pathlib; "
        f"p = pathlib.Path({str(folder)!r}) / 'logs/version_0/checkpoints'; p.mkdir(parents=True); "
        "(p / 'last.ckpt').write_text('weights'); "
        f"r = pathlib.Path({str(runs_file)!r}); r.write_text(r.read_text() + 'x' if r.exists() else 'x')"
    )


def test_a_stage_keeps_its_checkpoint_and_is_reused(tmp_path):
    runs = tmp_path / "runs.txt"
    stage = Stage("vqgan", tmp_path / "demo", "vqgan.ckpt")
    stage.run(write_checkpoint(stage.folder, runs))
    assert stage.done and stage.result == tmp_path / "demo" / "models" / "vqgan.ckpt"
    assert stage.result.read_text() == "weights"
    Stage("vqgan", tmp_path / "demo", "vqgan.ckpt").run(write_checkpoint(stage.folder, runs))
    assert runs.read_text() == "x"  # the second run reused the result instead of training again


def test_a_stage_without_a_checkpoint_is_complete_only_after_success(tmp_path):
    stage = Stage("eval", tmp_path / "demo", owns_folder=False)
    with pytest.raises(RuntimeError, match=r"demo stage eval failed \(boom\); see .*eval.log"):
        stage.run(python("import sys; print('boom'); sys.exit(3)"))
    assert not stage.done
    stage.run(python("print('fine')"))
    assert stage.done and (tmp_path / "demo" / "logs" / "eval.log").read_text() == "fine\n"


def test_a_fit_that_leaves_no_checkpoint_is_an_error(tmp_path):
    stage = Stage("gpt", tmp_path / "demo", "gpt.ckpt")
    with pytest.raises(RuntimeError, match="wrote no last.ckpt"):
        stage.run(python("pass"))
    assert not stage.done
