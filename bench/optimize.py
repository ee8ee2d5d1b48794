"""VQGAN-CLIP steps per second and peak memory: this project's loop (fp32, bf16) vs an anchor-style step.

    python bench/optimize.py                                  # emoji VQGAN, random clip-tiny-64, 128² and 256², cutn 32
    python bench/optimize.py --threads 1 --iterations 3       # on cores shared with other jobs
    python bench/optimize.py --clip runs/clip/emoji/clip.safetensors --sizes 256

Three variants per image size, all with the same models, prompt, cutn and cut_pow:
- `ours fp32` / `ours fp32 channels_last` / `ours fp32 compiled` / `ours bf16`: `optimize.optimize`
  itself (the decoder in channels_last layout; the decoder and CLIP's image tower through
  torch.compile, whose compile falls in the warm-up step; bf16 autocast for the VQGAN and CLIP),
  timed between its step callbacks;
- `baseline`: a step written the way the VQGAN-CLIP anchor tool writes it: fp32, no autocast, the
  VQGAN in its default memory layout, each cutout sliced and resized on its own in a Python loop and
  concatenated, then the batch resampled a second time by a per-sample random affine and flipped,
  colour-jittered, erased (one rectangle for the batch, kornia's same_on_batch) and noised, the
  kornia augmentations written as the equivalent torch ops. Quantisation, the loss and Adam are the
  same code as ours, so the ratio measures the step's structure, not different maths.

Each variant runs in a subprocess of its own, so its peak memory is its own: the peak resident set
(ru_maxrss) and its growth over the loaded models on CPU, torch.cuda.max_memory_allocated on a GPU.
Random CLIP weights are fine: speed does not depend on what a model learned.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

# This script shares its name with the `optimize` package it measures; run as a script, its own folder
# would come first on sys.path and `import optimize` would find this file.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import clip_rerank  # noqa: E402
import vqgan  # noqa: E402
from optimize.cutouts import RGB_TO_YIQ, YIQ_TO_RGB, Augmentations  # noqa: E402
from optimize.loop import CodebookSpace, OptimizeSettings, clamp_keep_gradient, optimize  # noqa: E402
from optimize.prompts import Target, TextPrompt  # noqa: E402

PROMPT = "a smiling yellow face"
VARIANTS = ("baseline", "ours fp32", "ours fp32 channels_last", "ours fp32 compiled", "ours bf16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqgan", default="runs/vqgan/emoji/logs/version_0/checkpoints/last.ckpt")
    parser.add_argument(
        "--clip", default="clip-tiny-64", help="CLIP checkpoint or open_clip architecture (random weights)"
    )
    parser.add_argument("--clip-pretrained", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="square image sides")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--cut-pow", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs per variant, in rotating order; the fastest counts (on shared cores load comes and goes)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON of one (size, variant): run it, print JSON
    return parser.parse_args()


# --- the anchor-style step ---------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def anchor_augment(batch: torch.Tensor, aug: Augmentations, generator: torch.Generator) -> torch.Tensor:
    """The anchor's kornia augmentation stack on a batch of cutouts in [0, 1], as plain torch ops."""
    n = len(batch)
    apply = torch.rand(n, generator=generator) < aug.probability
    angle = torch.where(apply, _uniform(n, -aug.degrees, aug.degrees, generator), 0).deg2rad()
    shear = torch.where(apply, _uniform(n, -aug.shear, aug.shear, generator), 0).deg2rad().tan()
    zoom = torch.where(apply, _uniform(n, 1 - aug.scale, 1 + aug.scale, generator), 1)
    shift = torch.where(
        rearrange(apply, "n -> n 1"), _uniform(2 * n, -aug.translate, aug.translate, generator).view(n, 2), 0
    )
    cos, sin = angle.cos(), angle.sin()
    linear = torch.stack([torch.stack([cos, cos * shear - sin], -1), torch.stack([sin, sin * shear + cos], -1)], 1)
    theta = torch.cat([linear / rearrange(zoom, "n -> n 1 1"), rearrange(shift * 2, "n i -> n i 1")], dim=-1)
    batch = F.grid_sample(batch, F.affine_grid(theta, list(batch.shape), align_corners=False), align_corners=False)

    flip = rearrange(torch.rand(n, generator=generator) < aug.flip, "n -> n 1 1 1")
    batch = torch.where(flip, batch.flip(-1), batch)

    jitter = torch.rand(n, generator=generator) < aug.probability
    per_sample = "n -> n 1 1 1"
    brightness, contrast, saturation = (
        rearrange(torch.where(jitter, _uniform(n, 1 - s, 1 + s, generator), 1), per_sample)
        for s in (aug.brightness, aug.contrast, aug.saturation)
    )
    hue = torch.where(jitter, _uniform(n, -aug.hue, aug.hue, generator), 0) * 2 * math.pi
    batch = batch * brightness
    gray = torch.einsum("c, n c h w -> n h w", RGB_TO_YIQ[0], batch)
    batch = torch.lerp(rearrange(gray.mean((1, 2)), per_sample), batch, contrast)
    batch = torch.lerp(
        rearrange(torch.einsum("c, n c h w -> n h w", RGB_TO_YIQ[0], batch), "n h w -> n 1 h w"), batch, saturation
    )
    y, i, q = torch.einsum("i c, n c h w -> i n h w", RGB_TO_YIQ, batch)
    cos, sin = rearrange(hue.cos(), "n -> n 1 1"), rearrange(hue.sin(), "n -> n 1 1")
    batch = torch.einsum("c i, i n h w -> n c h w", YIQ_TO_RGB, torch.stack([y, i * cos - q * sin, i * sin + q * cos]))

    if torch.rand((), generator=generator) < aug.probability:  # kornia RandomErasing(same_on_batch=True)
        height, width = batch.shape[-2:]
        area = float(_uniform(1, *aug.erase_area, generator)) * height * width
        ratio = math.exp(float(_uniform(1, *(math.log(r) for r in aug.erase_ratio), generator)))
        box_h, box_w = min(height, round(math.sqrt(area * ratio))), min(width, round(math.sqrt(area / ratio)))
        top = int(torch.randint(height - box_h + 1, (), generator=generator))
        left = int(torch.randint(width - box_w + 1, (), generator=generator))
        mask = torch.ones_like(batch[:1, :1])
        mask[..., top : top + box_h, left : left + box_w] = 0
        batch = batch * mask

    sigma = rearrange(_uniform(n, 0, aug.noise, generator), per_sample)
    return batch + sigma * torch.randn(batch.shape, generator=generator)


def anchor_cutouts(
    image: torch.Tensor, size: int, cutn: int, cut_pow: float, generator: torch.Generator
) -> torch.Tensor:
    """One crop at a time, each sliced and resized on its own, then concatenated and augmented: [cutn,3,size,size]."""
    pixels = (image + 1) / 2
    side_y, side_x = pixels.shape[-2:]
    max_size, min_size = min(side_x, side_y), min(side_x, side_y, size)
    pieces = []
    for _ in range(cutn):
        side = int(torch.rand((), generator=generator) ** cut_pow * (max_size - min_size) + min_size)
        x = int(torch.randint(side_x - side + 1, (), generator=generator))
        y = int(torch.randint(side_y - side + 1, (), generator=generator))
        piece = pixels[:, :, y : y + side, x : x + side]
        pieces.append(F.interpolate(piece, size=(size, size), mode="bicubic", align_corners=False, antialias=True))
    return anchor_augment(torch.cat(pieces), Augmentations(), generator) * 2 - 1


def anchor_steps(model: vqgan.VQGAN, scorer: clip_rerank.Scorer, settings: OptimizeSettings, on_step) -> None:
    """The anchor tool's loop: random codes -> z; per step quantise, decode, cutouts, CLIP, loss, Adam, clamp."""
    model.eval().requires_grad_(False)
    space = CodebookSpace(model)
    generator = torch.Generator().manual_seed(settings.seed)
    target = Target(PROMPT, scorer.encode_text([PROMPT]), 1.0)
    grid = model.code_grid_shape(settings.height, settings.width)
    z = space.embed(torch.randint(model.codebook_size, (1, *grid), generator=generator)).requires_grad_(True)
    adam = torch.optim.Adam([z], lr=settings.lr)
    for _ in range(settings.iterations):
        image = clamp_keep_gradient(model.decode(space.decoder_input(space.straight_through(z))))
        cutouts = anchor_cutouts(image, scorer.image_size[0], settings.cutn, settings.cut_pow, generator)
        loss = target.loss(scorer.encode_images(cutouts, grad=True))
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        space.clamp_(z)
        on_step(loss.item())


# --- one variant per process -------------------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_worker(job: dict) -> dict:
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    torch.manual_seed(0)  # open_clip initialises random weights from the global generator
    model = vqgan.load(job["vqgan"]).to(device)
    scorer = clip_rerank.load(job["clip"], pretrained=job["clip_pretrained"], device=device)
    settings = OptimizeSettings(
        width=job["size"],
        height=job["size"],
        iterations=job["warmup"] + job["iterations"],
        cutn=job["cutn"],
        cut_pow=job["cut_pow"],
        bf16=job["variant"] == "ours bf16",
        channels_last=job["variant"] == "ours fp32 channels_last",
        compile=job["variant"] == "ours fp32 compiled",
    )
    loaded_mb = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stamps: list[float] = []

    def on_step(*_) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    if job["variant"] == "baseline":
        anchor_steps(model, scorer, settings, on_step)
    else:
        optimize(model, scorer, [TextPrompt(PROMPT)], settings, callback=on_step)
    timed = stamps[job["warmup"] - 1 :]  # from the end of the last warmup step
    intervals = sorted(later - earlier for earlier, later in zip(timed, timed[1:]))
    result = {
        "seconds_per_step": intervals[len(intervals) // 2],  # the median: robust to a step another job slowed
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - loaded_mb,
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_in_subprocess(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{job['variant']} at {job['size']}² failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.warmup < 1 or args.iterations < 1 or args.repeats < 1:
        raise SystemExit("--warmup, --iterations and --repeats must be at least 1 (the first step is not timed)")
    print(
        f"device {args.device}, threads {args.threads or torch.get_num_threads()}, cutn {args.cutn}, "
        f"median of {args.iterations} timed steps after {args.warmup} warmup, best of {args.repeats} runs; "
        f"VQGAN {args.vqgan}; CLIP {args.clip}"
    )
    memory_key = "cuda_peak_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    for size in args.sizes:
        results: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for variant in VARIANTS[repeat % len(VARIANTS) :] + VARIANTS[: repeat % len(VARIANTS)]:
                result = run_in_subprocess(
                    {
                        "variant": variant,
                        "size": size,
                        "vqgan": args.vqgan,
                        "clip": args.clip,
                        "clip_pretrained": args.clip_pretrained,
                        "cutn": args.cutn,
                        "cut_pow": args.cut_pow,
                        "iterations": args.iterations,
                        "warmup": args.warmup,
                        "threads": args.threads,
                        "device": args.device,
                    }
                )
                if variant not in results or result["seconds_per_step"] < results[variant]["seconds_per_step"]:
                    results[variant] = result
        results = {variant: results[variant] for variant in VARIANTS}
        base = results["baseline"]
        print(
            f"\n{size}×{size}  {'variant':<10} {'it/s':>7} {'s/it':>7} {'peak MB':>9} {'growth MB':>10} {'speed vs baseline':>18}"
        )
        for variant, result in results.items():
            growth = f"{result['rss_growth_mb']:10.0f}" if memory_key == "peak_rss_mb" else f"{'':>10}"
            print(
                f"{'':9}{variant:<10} {1 / result['seconds_per_step']:7.2f} {result['seconds_per_step']:7.3f} "
                f"{result[memory_key]:9.0f} {growth} {base['seconds_per_step'] / result['seconds_per_step']:17.2f}×"
            )


if __name__ == "__main__":
    main()
