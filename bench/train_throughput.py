"""Training throughput with the speed levers off and on, in one run: GPT prior tokens/s and CLIP pairs/s.

    python bench/train_throughput.py                                       # both, the shapes recipes' models
    OMP_NUM_THREADS=1 python bench/train_throughput.py --threads 1         # on cores shared with other jobs
    python bench/train_throughput.py --models clip --clip-config configs/clip_rerank/shapes-rerank.yaml
    python bench/train_throughput.py --device cuda --gpt-batch 256         # on a GPU

Four variants of each model's training step, each on its own copy of the same initial weights, fed
the same batches:

  fp32 eager      the step as a default fit runs it;
  compiled        model.compile: true — torch.compile of the GPT's transformer blocks, of CLIP's image
                  and text towers (`compile_in_place`, as the modules' `configure_model` does); the
                  compile happens in the warm-up steps, whose time is printed apart;
  bf16            trainer.precision: bf16-mixed — the forward under torch.autocast(bfloat16), backward
                  and the optimiser outside it, as Lightning's precision plugin runs them;
  compiled + bf16 both.

GPT: by default the shapes prior (configs/gpt_prior/shapes.yaml: 4 layers × 128, 24 caption ids, the
8×8 grid of the shapes VQGAN's 1024 codes, batch 64, a BPE of at most 256 ids), a `GPT(GPTConfig)` on
random caption ids and codes. A step is what `GPTPriorModule.training_step` and the trainer do with a
batch: forward (caption and image cross-entropy, weighted 1 : 7), backward, clip_grad_norm_ 1.0
(trainer.gradient_clip_val), AdamW on the prior's parameter groups, betas (0.9, 0.95). Left out: the
module's caption dropout and BPE encoding (string work on 64 captions). Tokens/s counts caption ids +
codes per sample.

CLIP: `CLIPModule.training_step` itself, built from a clip_rerank fit config's model section (default
the shapes recipe: clip-micro-32, hard negatives), on batches of data.batch_size shapes images and
captions of data.image_size; the trainer's part is done here: backward, the module's AdamW (fused),
the warmup-cosine LR step and the logit-scale clamp of `on_train_batch_end`. Pairs/s counts
image–caption pairs (each image's hard-negative caption rides along).

The variants are interleaved over several rounds, the order rotating, and each reports its median
round, in wall-clock time and (on a CPU) in process CPU time, which with --threads 1 leaves out the
time other jobs hold the cores. No variant pays Lightning's loop overhead.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from clip_rerank.lightning import CLIPModule
from gpt_prior.model import ADAMW_BETAS, GPT, GPTConfig
from imagetext.configs import packaged_config
from imagetext.datamodule import collate_image_text
from imagetext.shapes import ShapesDataset
from imagetext.training import compile_in_place

# name -> (torch.compile, bf16 autocast)
LEVERS = {
    "fp32 eager": (False, False),
    "compiled": (True, False),
    "bf16": (False, True),
    "compiled + bf16": (True, True),
}

Step = Callable[[int], None]  # one training step on batch number i


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=["gpt", "clip"], default=["gpt", "clip"])
    parser.add_argument("--gpt-layers", type=int, default=4)
    parser.add_argument("--gpt-heads", type=int, default=4)
    parser.add_argument("--gpt-width", type=int, default=128)
    parser.add_argument("--gpt-text-len", type=int, default=24)
    parser.add_argument("--gpt-text-vocab", type=int, default=256)
    parser.add_argument("--gpt-grid", type=int, default=8, help="the code grid is grid×grid")
    parser.add_argument("--gpt-codebook", type=int, default=1024)
    parser.add_argument("--gpt-batch", type=int, default=64)
    parser.add_argument(
        "--clip-config",
        type=Path,
        default=packaged_config("clip_rerank", "shapes"),
        help="a clip-rerank fit YAML: its model section builds the module, data.batch_size and image_size the batch",
    )
    parser.add_argument("--clip-batch", type=int, default=None, help="override the config's data.batch_size")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each variant reports its median round")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per variant (they take the compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.rounds, args.steps_per_round, args.warmup_steps) < 1:
        parser.error("--rounds, --steps-per-round and --warmup-steps must be at least 1")
    return args


# --- the GPT prior --------------------------------------------------------------------------------------


def gpt_variants(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Step], int, str]:
    """(name -> step, tokens per step, a description of the model)."""
    config = GPTConfig(
        text_len=args.gpt_text_len,
        n_layer=args.gpt_layers,
        n_head=args.gpt_heads,
        n_embd=args.gpt_width,
        text_vocab_size=args.gpt_text_vocab,
        image_vocab_size=args.gpt_codebook,
        image_grid=(args.gpt_grid, args.gpt_grid),
    )
    generator = torch.Generator().manual_seed(args.seed)
    batch, grid = args.gpt_batch, (args.gpt_grid, args.gpt_grid)
    batches = [
        (
            torch.randint(1, config.text_vocab_size, (batch, config.text_len), generator=generator).to(device),
            torch.randint(config.image_vocab_size, (batch, *grid), generator=generator).to(device),
        )
        for _ in range(4)
    ]
    variants = {}
    for name, (compiled, bf16) in LEVERS.items():
        torch.manual_seed(args.seed)
        model = GPT(config).to(device).train()
        if compiled:
            compile_in_place(model.blocks)
        optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=1e-3, betas=ADAMW_BETAS)
        variants[name] = gpt_step(model, optimizer, batches, bf16)
    parameters = sum(p.numel() for p in model.parameters())
    described = (
        f"GPT {config.n_layer}×{config.n_embd}, {parameters / 1e6:.2f}M parameters, batch {batch} × "
        f"({config.text_len} caption ids + {grid[0]}×{grid[1]} of {config.image_vocab_size} codes)"
    )
    return variants, batch * (config.text_len + grid[0] * grid[1]), described


def gpt_step(
    model: GPT, optimizer: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]], bf16: bool
) -> Step:
    device_type = next(model.parameters()).device.type

    def step(i: int) -> None:
        text, codes = batches[i % len(batches)]
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(text, codes).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# --- CLIP -------------------------------------------------------------------------------------------------


class TrainerFreeCLIP(CLIPModule):
    """A CLIPModule whose `training_step` runs without a Trainer: `optimizers()` is its own AdamW; logging is
    dropped; the cosine's length is the recipe's, not the trainer's."""

    def __init__(self, total_steps: int, **settings: Any) -> None:
        super().__init__(**settings)
        configured = self.configure_optimizers()
        self.bench_optimizer = configured["optimizer"]
        self.bench_schedule = configured["lr_scheduler"]["scheduler"]
        self.bench_schedule.lr_lambdas[0].total_steps = total_steps

    def optimizers(self, use_pl_optimizer: bool = True) -> torch.optim.Optimizer:
        return self.bench_optimizer

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        pass


def clip_variants(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, Step], int, str]:
    """(name -> step, pairs per step, a description of the model)."""
    if not args.clip_config.is_file():
        raise SystemExit(f"config {args.clip_config} not found; pass --clip-config with a clip-rerank fit YAML")
    config = OmegaConf.load(args.clip_config)
    settings = OmegaConf.to_container(config.model, resolve=True)
    total_steps = int(config.trainer.get("max_steps", 1000) or 1000)
    batch_size, image_size = args.clip_batch or config.data.batch_size, config.data.image_size
    if config.data.get("source", "shapes") != "shapes":
        raise SystemExit("the CLIP bench draws its batches from the shapes set: give a config with data.source shapes")
    items = ShapesDataset(2 * batch_size, image_size=image_size, seed=args.seed)
    batches = [collate_image_text([items[i] for i in range(k * batch_size, (k + 1) * batch_size)]) for k in range(2)]
    for batch in batches:
        batch["image"] = batch["image"].to(device)
    variants = {}
    for name, (compiled, bf16) in LEVERS.items():
        torch.manual_seed(args.seed)
        module = TrainerFreeCLIP(total_steps, **{**settings, "compile": compiled}).to(device)
        module.configure_model()
        variants[name] = clip_step(module, batches, bf16)
    parameters = sum(p.numel() for p in module.model.parameters())
    described = (
        f"CLIP {settings.get('architecture')}, {parameters / 1e6:.2f}M parameters, batch {batch_size} × "
        f"{image_size}² images + captions, hard_negatives {settings.get('hard_negatives', False)} ({args.clip_config})"
    )
    return variants, batch_size, described


def clip_step(module: TrainerFreeCLIP, batches: list[dict], bf16: bool) -> Step:
    def step(i: int) -> None:
        batch = batches[i % len(batches)]
        with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, i)
        loss.backward()
        module.bench_optimizer.step()
        module.bench_optimizer.zero_grad(set_to_none=True)
        module.bench_schedule.step()
        module.on_train_batch_end(None, batch, i)

    return step


# --- timing -----------------------------------------------------------------------------------------------


def timed(step: Step, first: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds per step over `steps` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(first, first + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def compare(variants: dict[str, Step], items_per_step: int, unit: str, args: argparse.Namespace, device) -> None:
    names = list(variants)
    warmup = {name: timed(variants[name], 0, args.warmup_steps, device)[0] * args.warmup_steps for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall_s, cpu_s = timed(
                variants[name], args.warmup_steps + r * args.steps_per_round, args.steps_per_round, device
            )
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
    median_wall = {name: statistics.median(times) for name, times in wall.items()}
    median_cpu = {name: statistics.median(times) for name, times in cpu.items()}
    base = names[0]
    print(
        f"{'variant':<16} {unit + '/s':>10} {'ms/step':>8} {'rounds min–max':>15} {'CPU ms/step':>12} "
        f"{'vs fp32 eager':>14} {'warm-up s':>10}"
    )
    for name in names:
        spread = f"{min(wall[name]) * 1e3:.0f}–{max(wall[name]) * 1e3:.0f}"
        print(
            f"{name:<16} {items_per_step / median_wall[name]:>10,.0f} {median_wall[name] * 1e3:>8.0f} {spread:>15} "
            f"{median_cpu[name] * 1e3:>12.0f} {median_wall[base] / median_wall[name]:>13.2f}× {warmup[name]:>10.1f}"
        )
    print(
        f"({unit}/s and ms/step: median wall-clock round; warm-up: the first {args.warmup_steps} steps, "
        f"the compile included)\n"
    )


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_name()}"
    print(
        f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{args.warmup_steps} warm-up steps, then {args.rounds} rounds × {args.steps_per_round} steps per variant\n"
    )
    builders = {"gpt": (gpt_variants, "tokens"), "clip": (clip_variants, "pairs")}
    for model in args.models:
        build, unit = builders[model]
        variants, items_per_step, described = build(args, device)
        print(described)
        compare(variants, items_per_step, unit, args, device)


if __name__ == "__main__":
    main()
