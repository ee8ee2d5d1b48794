"""`make demo` / `vqgan-clip demo`: the shipped shapes models, then with `--train` the whole pipeline from scratch.

    vqgan-clip demo            generate (5 prompts, 2 novel) → optimize → eval, with the shipped models
    vqgan-clip demo --train    shapes → vqgan fit → encode → gpt-prior fit ─┐
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
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from imagetext import STAGES
from imagetext.configs import packaged_config
from imagetext.files import atomic_path
from imagetext.images import save_grid
from imagetext.shapes import ShapesDataset
from vqgan_clip.board import Board, RunningCommand
from vqgan_clip.models import SHIPPED_DEFAULT, write_demo_models

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
    "full": Profile(
        vqgan_steps=500, gpt_steps=800, clip_steps=1000, rerank=32, eval_captions=50, optimize_iterations=100
    ),
    "quick": Profile(vqgan_steps=40, gpt_steps=40, clip_steps=40, rerank=8, eval_captions=8, optimize_iterations=5),
}


class Stage:
    """One command of the pipeline: its log file and the checkpoint it leaves in `OUT/models/`."""

    def __init__(
        self, name: str, out: Path, result: str | None = None, owns_folder: bool = True, board: Board | None = None
    ):
        self.name, self.out, self.owns_folder = name, out, owns_folder
        self.folder = out / name
        self.log = out / "logs" / f"{name}.log"
        # a checkpoint copied to OUT/models/, or a marker written when the command succeeded
        self.result = out / "models" / result if result else self.log.with_suffix(".complete")
        self.board = board or Board()
        self.command: RunningCommand | None = None  # while the stage's command runs

    @property
    def done(self) -> bool:
        return self.result.exists()

    def start(self, command: list[str], share_cores: bool = False) -> None:
        """Start `command` in the background, with its output in the stage's log and in a clean stage folder
        when it owns one; or, when the stage's result is already there, say that it is reused. With
        `share_cores` it shares the CPU cores evenly with the other stages started so."""
        if self.done:
            self.board.say(f"[demo] {self.name}: reusing {self.result}")
            return
        if self.owns_folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.board.say(f"[demo] {self.name}: {' '.join(command)}\n[demo]   log: {self.log}")
        self.command = self.board.start(self.name, command, self.log, share_cores)

    def finish(self) -> None:
        """Wait for a started stage, showing progress; on success keep its last checkpoint as the stage's result."""
        if self.command is None:
            return
        command, self.command = self.command, None
        if self.board.wait(command) != 0:
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
        self.board.say(f"[demo] {self.name}: done in {time.perf_counter() - command.started:.0f} s")

    def stop(self) -> None:
        """End the stage's command if it still runs (the demo stopped early)."""
        if self.command is not None and self.command.running:
            self.command.process.terminate()

    def run(self, command: list[str], share_cores: bool = False) -> None:
        """Start the stage and wait for it."""
        self.start(command, share_cores)
        self.finish()


def flags(**values: object) -> list[str]:
    """`--name value` for each keyword (underscores become dashes), in the order given."""
    return [item for name, value in values.items() for item in (f"--{name.replace('_', '-')}", str(value))]


def fit_command(program: str, config: Path, stage: Stage, steps: int, *overrides: str) -> list[str]:
    """`python -m PROGRAM fit -c CONFIG` training for `steps` steps into the stage's folder (no bar:
    the output goes to the stage's log, and the board shows the progress)."""
    trainer = {
        "max_steps": steps,
        "max_epochs": -1,
        "default_root_dir": stage.folder,
        "logger.init_args.save_dir": stage.folder,
        "enable_progress_bar": "false",
    }
    trainer_flags = [item for name, value in trainer.items() for item in (f"--trainer.{name}", str(value))]
    return [sys.executable, "-m", program, "fit", "-c", str(config), *trainer_flags, *overrides]


def command(name: str, *positional: str, **options: object) -> list[str]:
    """`python -m vqgan_clip NAME POSITIONAL… --option value…` (an option's underscores become dashes)."""
    flags = [item for option, value in options.items() for item in (f"--{option.replace('_', '-')}", str(value))]
    return [sys.executable, "-m", "vqgan_clip", name, *positional, *flags]


def train_models(out: Path, profile: Profile, board: Board) -> dict[str, str]:
    """Train the VQGAN → codes → GPT chain with CLIP beside it, sharing the cores; the three checkpoints,
    also in OUT/models.json."""
    vqgan, codes = Stage("vqgan", out, "vqgan.ckpt", board=board), Stage("codes", out, board=board)
    gpt, clip = Stage("gpt", out, "gpt.ckpt", board=board), Stage("clip", out, "clip.ckpt", board=board)
    configs = {stage: packaged_config(stage, "shapes") for stage in STAGES}
    clip.start(fit_command("clip_rerank", configs["clip_rerank"], clip, profile.clip_steps), share_cores=True)
    try:
        vqgan.run(fit_command("vqgan", configs["vqgan"], vqgan, profile.vqgan_steps), share_cores=True)
        encode = command("encode", vqgan=vqgan.result, data=configs["vqgan"], out=codes.folder)
        codes.run(encode, share_cores=True)
        codes_flag = ("--data.codes", str(codes.folder))
        gpt.run(fit_command("gpt_prior", configs["gpt_prior"], gpt, profile.gpt_steps, *codes_flag), share_cores=True)
        clip.finish()
    finally:
        clip.stop()
    write_demo_models(out, vqgan=vqgan.result, gpt=gpt.result, clip=clip.result)
    return {"vqgan": str(vqgan.result), "gpt": str(gpt.result), "clip": str(clip.result)}


def show_models(out: Path, models: dict[str, str], profile: Profile, board: Board) -> Path:
    """generate (the demo prompts) → optimize → eval into `out`; the eval.json written."""
    prompts = out / "prompts.txt"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(PROMPTS) + "\n")
    shown = {"gpt": models["gpt"], "clip": models["clip"], "rerank": profile.rerank}
    generate = command("generate", prompts_file=prompts, **shown, keep=4, seed=0, out=out / "generate")
    Stage("generate", out, board=board).run(generate)
    steps, folder = profile.optimize_iterations, out / "optimize"
    optimize = command(
        "optimize", OPTIMIZE_PROMPT, vqgan=models["vqgan"], clip=models["clip"], iterations=steps, seed=0, out=folder
    )
    Stage("optimize", out, board=board).run(optimize)
    evaluate = command("eval", **shown, data="shapes", n=profile.eval_captions, out=out)
    Stage("eval", out, owns_folder=False, board=board).run(evaluate)
    return out / "eval.json"


HEADLINE = (("single_sample", "one sample"), ("reranked_top1", "top-1 after rerank"), ("oracle_any_of_n", "any of N"))


def headline(results: dict[str, Path]) -> str:
    """The accuracy figures of one or more eval.json files, side by side, as lines for the terminal."""
    figures = {name: json.loads(path.read_text(encoding="utf-8"))["sets"] for name, path in results.items()}
    rows = [(f"{set_name}: {label}", key, set_name) for set_name in ("held_out", "novel") for key, label in HEADLINE]
    width = max(len(row[0]) for row in rows) + 2
    lines = ["[demo] attribute accuracy".ljust(width + 9) + "".join(f"{name:>18}" for name in figures)]
    for label, key, set_name in rows:
        values = [f"{100 * sets[set_name]['attribute_accuracy'][key]:.0f}%" for sets in figures.values()]
        lines.append(f"[demo]   {label:<{width}}" + "".join(f"{value:>18}" for value in values))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    profile = PROFILES["quick" if args.quick else "full"]
    started = time.perf_counter()

    samples = ShapesDataset(64, image_size=32, seed=0)
    batch = [samples[i] for i in range(len(samples))]
    grid = save_grid(
        torch.stack([item["image"] for item in batch]),
        out / "shapes_grid.png",
        nrow=8,
        metadata={"captions": [item["caption"] for item in batch]},
    )
    print(f"[demo] shapes training data, a sample: {grid}")

    shipped_out = out / ("shipped-quick" if args.quick else "shipped")
    results, board = {}, Board()
    if args.train:
        results["trained here"] = show_models(out, train_models(out, profile, board), profile, board)
    shipped = dict.fromkeys(("vqgan", "gpt", "clip"), SHIPPED_DEFAULT)
    results["shipped models"] = show_models(shipped_out, shipped, profile, board)
    print(headline(results))
    print(f"[demo] finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"[demo] report: {(out if args.train else shipped_out) / 'report.html'}")
