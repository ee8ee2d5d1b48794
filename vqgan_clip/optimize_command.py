"""`vqgan-clip optimize "prompt"`: VQGAN-CLIP from the command line (the loop itself is `optimize.loop`).

Each run gets its own folder under --out, named after the prompt and never reused:

    runs/optimize/a-large-red-circle/
        final.png     the result, with prompt, seed and settings in its PNG text chunks
        run.json      prompt, seed, settings, model paths, loss curve, timing
        frames/       every --save-every steps (and the end), when asked
        video.mp4     with --video: mp4 through ffmpeg when it is on PATH, else video.gif through Pillow

Models default to the shipped shapes models (`--demo-models`: those of the latest `vqgan-clip demo --train`).
Ctrl-C ends the optimisation early; the current image and run.json are still written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from gpt_prior import SamplingSettings
from imagetext.files import atomic_path, partial_dir, publish_dir, safe_name
from imagetext.images import open_rgb, pil_to_tensor, save_png
from imagetext.progress import ProgressBar
from optimize.loop import OptimizeResult, OptimizeSettings, StepInfo, image_size, optimize
from optimize.prompts import Prompt, TextPrompt, describe_prompt, parse_image_prompt, parse_noise_prompt, parse_prompts
from vqgan_clip.arguments import MAX_IMAGE_SIDE, number, whole
from vqgan_clip.models import ModelChoice, Models, add_model_options, load_models

VIDEO_FPS = 10
FRAMES_IN_A_DEFAULT_VIDEO = 100
PLAIN_DRAW = SamplingSettings(top_p=None, cfg_scale=1.0)  # --init gpt: the prior's own distribution


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt",
        help="TEXT[:WEIGHT[:STOP]], several joined by '|'; a negative weight repels, "
        "e.g. 'a red circle:1|a blue square:-0.5'",
    )
    prompts = parser.add_argument_group("more prompts")
    prompts.add_argument(
        "--image-prompt",
        action="append",
        default=[],
        metavar="PATH[:WEIGHT[:STOP]]",
        help="steer toward (or, with a negative weight, away from) an image; repeatable",
    )
    prompts.add_argument(
        "--noise-prompt",
        action="append",
        default=[],
        metavar="SEED[:WEIGHT[:STOP]]",
        help="a random direction in CLIP space, drawn from SEED; repeatable",
    )

    start = parser.add_argument_group("start")
    start.add_argument(
        "--init",
        choices=("random", "image", "noise", "gpt"),
        default=None,
        help="random codes (default), --init-image encoded, pixel noise encoded, or a GPT prior sample",
    )
    start.add_argument("--init-image", metavar="PATH", help="image to start from (implies --init image)")
    start.add_argument(
        "--init-weight", type=number(at_least=0), default=0.0, help="pull z toward its start (default 0: off)"
    )

    run_settings = parser.add_argument_group("optimisation")
    run_settings.add_argument(
        "--size",
        type=whole(1, MAX_IMAGE_SIDE, why="larger sides need tens of GB"),
        nargs=2,
        metavar=("W", "H"),
        default=None,
        help="image size, rounded to the VQGAN's downsample factor "
        "(default: the VQGAN's training size, or the GPT prior's grid with --init gpt)",
    )
    run_settings.add_argument("--iterations", type=whole(1), default=200, help="optimisation steps (default 200)")
    run_settings.add_argument("--lr", type=number(above=0), default=0.1, help="Adam step size on z (default 0.1)")
    run_settings.add_argument(
        "--cutn", type=whole(1), default=32, help="augmented cutouts CLIP scores per step (default 32)"
    )
    run_settings.add_argument(
        "--cut-pow", type=number(above=0), default=1.0, help=">1 favours small cutouts, <1 large (default 1)"
    )
    run_settings.add_argument("--seed", type=int, default=0, help="the same seed repeats the run (default 0)")
    run_settings.add_argument(
        "--channels-last",
        action="store_true",
        help="run the VQGAN decoder in channels_last layout: the same image, faster on some CPUs and GPUs "
        "(bench/optimize.py measures it)",
    )
    run_settings.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decoder and CLIP's image tower: the first step takes the compile (~1 min on a "
        "CPU; seconds once inductor's cache holds it), later steps are faster; for long runs",
    )
    add_model_options(parser, gpt_use=" for --init gpt")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", default="runs/optimize", help="parent folder of the run folders (default runs/optimize)"
    )
    output.add_argument(
        "--save-every", type=whole(0), default=0, metavar="N", help="save a frame every N steps (default: none)"
    )
    output.add_argument("--video", action="store_true", help="join the frames into video.mp4 (ffmpeg) or video.gif")


def gpt_layout(models: Models, prompts: list[Prompt], seed: int) -> torch.Tensor:
    """One code grid [1, h, w] drawn by the GPT prior (plainly: no guidance, no filter) for the first
    positive text prompt."""
    texts = [p.text for p in prompts if isinstance(p, TextPrompt) and p.weight > 0]
    if not texts:
        raise ValueError("--init gpt needs a text prompt with a positive weight for the GPT to draw")
    generator = torch.Generator(device=models.device).manual_seed(seed)
    return models.prior.sample(texts[:1], 1, PLAIN_DRAW, generator, bf16=models.bf16)


def write_video(frames: list[Path], folder: Path) -> Path:
    """mp4 through ffmpeg when it is on PATH (and works), else an animated GIF through Pillow."""
    if shutil.which("ffmpeg"):
        path = folder / "video.mp4"
        command = [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-framerate",
            str(VIDEO_FPS),
            "-i",
            str(folder / "frames" / "%05d.png"),
            "-vf",
            "scale=trunc(iw/2)*2:trunc(ih/2)*2",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mp4",
        ]
        try:
            with atomic_path(path) as temporary:  # a failed encode leaves no video.mp4 behind
                subprocess.run([*command, str(temporary)], capture_output=True, check=True)
            print(f"video: {path.name} (ffmpeg)")
            return path
        except subprocess.CalledProcessError:
            print("ffmpeg failed; writing an animated GIF with Pillow instead")
    else:
        print("ffmpeg is not on PATH; writing an animated GIF with Pillow")
    path = folder / "video.gif"
    images = [Image.open(frame).convert("RGB") for frame in frames]
    with atomic_path(path) as temporary:
        images[0].save(
            temporary, format="GIF", save_all=True, append_images=images[1:], duration=1000 // VIDEO_FPS, loop=0
        )
    print(f"video: {path.name} (Pillow GIF)")
    return path


def run(args: argparse.Namespace) -> None:
    prompts: list[Prompt] = [
        *parse_prompts(args.prompt),
        *map(parse_image_prompt, args.image_prompt),
        *map(parse_noise_prompt, args.noise_prompt),
    ]
    init = args.init or ("image" if args.init_image else "random")
    if init == "image" and not args.init_image:
        raise ValueError("--init image needs --init-image PATH")
    if args.init_image and init != "image":
        raise ValueError(f"--init-image is only used with --init image, not --init {init}")
    if args.save_every < 0:
        raise ValueError(f"--save-every {args.save_every}: give 0 (no frames) or a positive number of steps")

    if args.init_image and not Path(args.init_image).is_file():
        raise FileNotFoundError(f"--init-image {args.init_image} not found")
    models = load_models(ModelChoice.from_args(args), prior=init == "gpt", clip=True)
    grid = None if models.prior is None else models.prior.config.image_grid
    width, height, notice = image_size(models.vqgan, args.size, grid)
    if notice:
        print(notice)
    init_codes = None if models.prior is None else gpt_layout(models, prompts, args.seed)
    init_image = pil_to_tensor(open_rgb(args.init_image)) if args.init_image else None
    settings = OptimizeSettings(
        width=width,
        height=height,
        iterations=args.iterations,
        lr=args.lr,
        cutn=args.cutn,
        cut_pow=args.cut_pow,
        init="codes" if init == "gpt" else init,
        init_weight=args.init_weight,
        seed=args.seed,
        bf16=models.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
    )

    save_every = args.save_every
    if args.video and not save_every:
        save_every = max(1, args.iterations // FRAMES_IN_A_DEFAULT_VIDEO)
        print(f"--video without --save-every: saving a frame every {save_every} steps")
    name = safe_name(args.prompt)
    metadata = {
        "prompt": args.prompt,
        "prompts": [describe_prompt(p) for p in prompts],
        "seed": args.seed,
        "init": init,
        "settings": asdict(settings),
        "checkpoints": models.checkpoints,
    }
    frames: list[Path] = []
    with partial_dir(args.out, name) as work:  # the run's folder appears complete or not at all

        def save_frame(image: torch.Tensor, step: int) -> None:
            frames.append(save_png(image, work / "frames" / f"{len(frames):05d}.png", metadata | {"step": step}))

        started = time.perf_counter()
        with ProgressBar(total=settings.iterations, desc="optimize", unit="step") as bar:

            def on_step(info: StepInfo) -> None:
                bar.update(1)
                bar.set_postfix(loss=info.loss, refresh=False)
                if save_every and info.step % save_every == 0:
                    save_frame(info.image, info.step)

            result = optimize(
                models.vqgan,
                models.scorer,
                prompts,
                settings,
                init_image=init_image,
                init_codes=init_codes,
                callback=on_step,
            )
        seconds = time.perf_counter() - started
        write_outputs(work, result, metadata, seconds, save_frame if save_every else None)
        if args.video and frames:
            write_video(frames, work)
        folder = publish_dir(work, args.out, name)
    if result.interrupted:
        print(f"interrupted after {len(result.losses)} of {settings.iterations} steps; saved the current image")
    final_loss = f" (final loss {result.losses[-1]:.4f})" if result.losses else ""
    print(f"wrote {folder / 'final.png'} and {folder / 'run.json'}{final_loss}")


def write_outputs(
    folder: Path,
    result: OptimizeResult,
    metadata: dict,
    seconds: float,
    save_frame: Callable[[torch.Tensor, int], None] | None,
) -> None:
    """final.png (and a last frame), then run.json (which says whether the run was interrupted)."""
    steps = len(result.losses)
    if save_frame is not None:
        save_frame(result.image, steps)
    image = save_png(result.image, folder / "final.png", metadata | {"steps": steps, "interrupted": result.interrupted})
    record = metadata | {
        "image": image.name,
        "steps": steps,
        "interrupted": result.interrupted,
        "seconds": round(seconds, 3),
        "iterations_per_second": round(steps / seconds, 4) if seconds > 0 else None,
        "losses": result.losses,
        "codes": result.codes.tolist(),
    }
    with atomic_path(folder / "run.json") as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
