"""`make demo` / `vqgan-clip demo`: the shipped shapes models, then with `--train` the whole pipeline from scratch.

    vqgan-clip demo            generate (5 prompts, 2 novel) → optimize → eval, with the shipped models
    vqgan-clip demo --train    shapes → vqgan fit → tokenize → gpt-prior fit ─┐
                               shapes → clip-rerank fit ──────────────────────┴→ generate → optimize → eval
                               and the same with the shipped models, the two sets of figures side by side

Every stage is the command a user would type (run as a subprocess, its output in `OUT/logs/`), so
the demo exercises exactly what the README documents. CLIP does not depend on the VQGAN→GPT chain:
it trains beside it, one CPU thread each, which on two cores finishes both in about the time of the
chain alone. The shipped models' outputs go to `OUT/shipped/` (`OUT/shipped-quick/` with --quick).

A stage's result is copied to `OUT/models/` when the stage succeeds, and a stage whose result is
there is skipped, so an interrupted demo resumes at the stage it stopped in (`--fresh` redoes
everything). `OUT/models.json` names the three trained checkpoints; `generate`, `optimize` and
`eval` use them with `--demo-models`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from imagetext.configs import packaged_config
from imagetext.files import atomic_path
from imagetext.images import save_grid
from imagetext.shapes import ShapesDataset
from vqgan_clip.generate import SHIPPED_DEFAULT, write_demo_models

PROMPTS = (  # the last two are novel compositions: yellow circles and purple squares never occur in training
    "a large red circle",
    "a small blue square above a large green triangle",
    "a large orange circle to the left of a small red square",
    "a large yellow circle",
    "a small purple square below a large blue circle",
)
OPTIMIZE_PROMPT = "a large red circle"


@dataclass(frozen=True)
class Profile:
    """How long each stage trains, and how much the demo generates and evaluates."""

    vqgan_steps: int
    gpt_steps: int
    clip_steps: int
    rerank: int
    eval_captions: int  # per caption set (held-out and novel)
    optimize_iterations: int


PROFILES = {
    # The full profile fits ~20 minutes on 2 CPU cores. Its VQGAN stops at the config's disc_start (500
    # batches), before the discriminator: at this length the GAN's early texture costs more than it adds.
    "full": Profile(vqgan_steps=500, gpt_steps=800, clip_steps=1000, rerank=32, eval_captions=50, optimize_iterations=100),
    "quick": Profile(vqgan_steps=40, gpt_steps=40, clip_steps=40, rerank=8, eval_captions=8, optimize_iterations=5),
}


class Stage:
    """One command of the pipeline: its log file and the checkpoint it leaves in `OUT/models/`."""

    def __init__(self, name: str, out: Path, result: str | None = None, owns_folder: bool = True):
        self.name, self.out, self.owns_folder = name, out, owns_folder
        self.folder = out / name
        self.log = out / "logs" / f"{name}.log"
        # a checkpoint copied to OUT/models/, or a marker written when the command succeeded
        self.result = out / "models" / result if result else self.log.with_suffix(".complete")
        self.process: subprocess.Popen | None = None  # while the stage's command runs
        self.started = 0.0

    @property
    def done(self) -> bool:
        return self.result.exists()

    def start(self, command: list[str], threads: int | None = None) -> None:
        """Start `command` in the background, with its output in the stage's log and in a clean stage folder
        when it owns one; or, when the stage's result is already there, say that it is reused."""
        if self.done:
            print(f"[demo] {self.name}: reusing {self.result}", flush=True)
            return
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ)
        if threads:
            environment["OMP_NUM_THREADS"] = str(threads)
        print(f"[demo] {self.name}: {' '.join(command)}\n[demo]   log: {self.log}", flush=True)
        self.started = time.perf_counter()
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)

    def finish(self) -> None:
        """Wait for a started stage; on success keep its last checkpoint as the stage's result."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.wait() != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["(empty log)"]
            raise RuntimeError(f"demo stage {self.name} failed ({tail[0]}); see {self.log}")
        if self.result.suffix == ".complete":
            self.result.touch()
        else:
            checkpoints = sorted(self.folder.glob("logs/version_*/checkpoints/last.ckpt"))
            if not checkpoints:
                raise RuntimeError(f"demo stage {self.name} wrote no last.ckpt under {self.folder}; see {self.log}")
            with atomic_path(self.result) as temporary:
                shutil.copyfile(checkpoints[-1], temporary)
        print(f"[demo] {self.name}: done in {time.perf_counter() - self.started:.0f} s", flush=True)

    def stop(self) -> None:
        """End the stage's command if it still runs (the demo stopped early)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def run(self, command: list[str], threads: int | None = None) -> None:
        """Start the stage and wait for it."""
        self.start(command, threads)
        self.finish()


def fit_command(program: str, config: Path, stage: Stage, steps: int, *overrides: str) -> list[str]:
    """`python -m PROGRAM fit -c CONFIG` training for `steps` steps into the stage's folder."""
    return [sys.executable, "-m", program, "fit", "-c", str(config),
            "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
            "--trainer.default_root_dir", str(stage.folder),
            "--trainer.logger.init_args.save_dir", str(stage.folder),
            "--trainer.enable_progress_bar", "false", *overrides]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vqgan_clip", *args]


def train_models(out: Path, profile: Profile) -> dict[str, str]:
    """Train the VQGAN → codes → GPT chain with CLIP beside it; the three checkpoints, also in OUT/models.json."""
    vqgan, codes, gpt = Stage("vqgan", out, "vqgan.ckpt"), Stage("codes", out), Stage("gpt", out, "gpt.ckpt")
    clip = Stage("clip", out, "clip.ckpt")
    # CLIP trains beside the VQGAN → codes → GPT chain: one thread each.
    clip.start(fit_command("clip_rerank", packaged_config("clip_rerank", "shapes"), clip, profile.clip_steps), threads=1)
    try:
        vqgan.run(fit_command("vqgan", packaged_config("vqgan", "shapes"), vqgan, profile.vqgan_steps), threads=1)
        codes.run(command("tokenize", "--vqgan", str(vqgan.result), "--data", str(packaged_config("vqgan", "shapes")),
                          "--out", str(codes.folder)), threads=1)
        gpt.run(fit_command("gpt_prior", packaged_config("gpt_prior", "shapes"), gpt, profile.gpt_steps,
                            "--data.codes", str(codes.folder)), threads=1)
        clip.finish()
    finally:
        clip.stop()
    write_demo_models(out, vqgan=vqgan.result, gpt=gpt.result, clip=clip.result)
    return {"vqgan": str(vqgan.result), "gpt": str(gpt.result), "clip": str(clip.result)}


def show_models(out: Path, models: dict[str, str], profile: Profile) -> Path:
    """generate (the demo prompts) → optimize → eval into `out`; the eval.json written."""
    prompts = out / "prompts.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(PROMPTS) + "\n")
    Stage("generate", out).run(command("generate", "--prompts-file", str(prompts), "--gpt", models["gpt"],
                                       "--clip", models["clip"], "--rerank", str(profile.rerank), "--keep", "4",
                                       "--seed", "0", "--out", str(out / "generate")))
    Stage("optimize", out).run(command("optimize", OPTIMIZE_PROMPT, "--vqgan", models["vqgan"], "--clip", models["clip"],
                                       "--iterations", str(profile.optimize_iterations), "--seed", "0",
                                       "--out", str(out / "optimize")))
    Stage("eval", out, owns_folder=False).run(command(
        "eval", "--gpt", models["gpt"], "--clip", models["clip"], "--data", "shapes", "--n", str(profile.eval_captions),
        "--rerank", str(profile.rerank), "--out", str(out)))
    return out / "eval.json"


HEADLINE = (("single_sample", "one sample"), ("reranked_top1", "top-1 after rerank"), ("oracle_any_of_n", "any of N"))


def headline(results: dict[str, Path]) -> str:
    """The accuracy figures of one or more eval.json files, side by side, as lines for the terminal."""
    figures = {name: json.loads(path.read_text(encoding="utf-8"))["sets"] for name, path in results.items()}
    lines = ["[demo] attribute accuracy   " + "".join(f"{name:>24}" for name in figures)]
    for set_name in ("held_out", "novel"):
        for key, label in HEADLINE:
            values = [f"{100 * sets[set_name]['attribute_accuracy'][key]:.0f}%" for sets in figures.values()]
            lines.append(f"[demo]   {set_name + ': ' + label:<24}" + "".join(f"{value:>24}" for value in values))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    profile = PROFILES["quick" if args.quick else "full"]
    started = time.perf_counter()

    samples = ShapesDataset(64, image_size=32, seed=0)
    batch = [samples[i] for i in range(len(samples))]
    grid = save_grid(torch.stack([item["image"] for item in batch]), out / "shapes_grid.png", nrow=8,
                     metadata={"captions": [item["caption"] for item in batch]})
    print(f"[demo] shapes training data, a sample: {grid}")

    shipped_out = out / ("shipped-quick" if args.quick else "shipped")
    results = {}
    if args.train:
        results["trained here"] = show_models(out, train_models(out, profile), profile)
    results["shipped models"] = show_models(shipped_out, dict.fromkeys(("vqgan", "gpt", "clip"), SHIPPED_DEFAULT), profile)
    print(headline(results))
    print(f"[demo] finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"[demo] report: {(out if args.train else shipped_out) / 'report.html'}")
