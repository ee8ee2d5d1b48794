"""The demo's stage runner: a stage's checkpoint is kept, a finished stage is reused, a failed one is named."""

import json
import subprocess
import sys

import pytest

from imagetext.files import safe_name
from vqgan_clip.demo import PROMPTS, Stage
from vqgan_clip.models import demo_models


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


@pytest.mark.slow
def test_the_quick_train_demo_runs_the_whole_pipeline(tmp_path):
    """`vqgan-clip demo --train --quick`: every stage as a user runs it, on a fresh folder (about 3 minutes),
    then the same with the shipped models, side by side."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "vqgan_clip", "demo", "--train", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"report: {out / 'report.html'}" in result.stdout
    models = demo_models(out)
    assert all(path.is_file() for path in models.values())
    folders = sorted((out / "generate").iterdir())
    assert [folder.name for folder in folders] == sorted(safe_name(prompt) for prompt in PROMPTS)
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        assert len(results["candidates"]) == 8 and (folder / "04.png").is_file()
    (run,) = (out / "optimize").iterdir()
    assert (run / "final.png").is_file()
    figures = json.loads((out / "eval.json").read_text())["sets"]
    assert set(figures) == {"held_out", "novel"}
    assert 0 <= figures["held_out"]["attribute_accuracy"]["reranked_top1"] <= 1
    assert (out / "report.html").read_text().count("data:image/png;base64,") > 10
    shipped = json.loads((out / "shipped-quick" / "eval.json").read_text())
    assert shipped["checkpoints"]["gpt"]["path"].endswith("gpt_prior/shapes.safetensors")
    assert "trained here" in result.stdout and "shipped models" in result.stdout
    # A second run reuses every stage: 4 trained, 3 showing them, 3 showing the shipped models.
    again = subprocess.run(
        [sys.executable, "-m", "vqgan_clip", "demo", "--train", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and again.stdout.count("reusing") == 10
