"""A plain (non-editable) install runs its own demo from a folder that is not the clone."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OFFLINE = ("--no-deps", "--no-index")  # nothing is fetched: the dependencies are those already installed
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
    pip("wheel", *OFFLINE, "--no-build-isolation", "--wheel-dir", str(wheels), str(source), cwd=tmp_path)
    (wheel,) = wheels.glob("*.whl")
    pip("install", *OFFLINE, "--target", str(target), str(wheel), cwd=tmp_path)
    shutil.rmtree(source)  # nothing may still point into the source tree
    elsewhere.mkdir()

    def installed(program: str, *args: str) -> subprocess.CompletedProcess:
        """`program` of the installed copy, run from another folder; the installed copy comes first on the
        path, the dependencies are the ones already installed."""
        command = [sys.executable, *args] if program == "python" else [str(target / "bin" / program), *args]
        environment = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
        return subprocess.run(command, cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=600)

    where = installed("python", "-c", "import imagetext, vqgan_clip; print(imagetext.__file__, vqgan_clip.__file__)")
    assert where.returncode == 0 and all(Path(file).is_relative_to(target) for file in where.stdout.split())

    demo = installed("vqgan-clip", "demo", "--quick", "--out", "out")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (elsewhere / "out" / "shipped-quick" / "eval.json").is_file()
    assert (elsewhere / "out" / "shipped-quick" / "report.html").is_file()

    # the packaged configs (short names) and the small open_clip JSONs come from the installed copy
    printed = installed("clip-rerank", "fit", "-c", "shapes", "--print_config")
    assert printed.returncode == 0 and "architecture: clip-micro-32" in printed.stdout, printed.stderr[-2000:]
    architecture = installed(
        "python", "-c", "import clip_rerank; print(clip_rerank.load('clip-micro-32').architecture)"
    )
    assert architecture.stdout.strip() == "clip-micro-32", architecture.stderr[-2000:]
