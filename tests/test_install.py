"""A plain (non-editable) install runs its own demo from a folder that is not the clone."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "data", "build", "dist", "*.egg-info", "__pycache__", "tests"
)


def pip(*args: str, cwd: Path) -> None:
    # offline: nothing is fetched, the build uses the setuptools already installed
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_quick_demo(tmp_path):
    source, wheels, target, elsewhere = (tmp_path / name for name in ("source", "wheels", "target", "elsewhere"))
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--wheel-dir",
        str(wheels),
        str(source),
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("*.whl")
    pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    shutil.rmtree(source)  # nothing may still point into the source tree
    elsewhere.mkdir()

    # the installed copy comes first on the path; the dependencies are the ones already installed
    environment = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import imagetext, vqgan_clip; print(imagetext.__file__, vqgan_clip.__file__)"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(Path(file).is_relative_to(target) for file in where.stdout.split())

    demo = subprocess.run(
        [str(target / "bin" / "vqgan-clip"), "demo", "--quick", "--out", "out"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (elsewhere / "out" / "shipped-quick" / "eval.json").is_file()
    assert (elsewhere / "out" / "shipped-quick" / "report.html").is_file()

    # the packaged configs (short names) and the small open_clip JSONs come from the installed copy
    printed = subprocess.run(
        [str(target / "bin" / "clip-rerank"), "fit", "-c", "shapes", "--print_config"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "architecture: clip-micro-32" in printed.stdout
    architecture = subprocess.run(
        [sys.executable, "-c", "import clip_rerank; print(clip_rerank.load('clip-micro-32').architecture)"],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert architecture.stdout.strip() == "clip-micro-32", architecture.stderr[-2000:]
