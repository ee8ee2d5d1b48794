"""`vqgan-clip`: the user-facing command. Each subcommand's work lives in its own module; this file is the map.

Errors a user can fix (a missing file, a bad value) end the program with one line on stderr and a
non-zero exit code; set VQGAN_CLIP_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from gpt_prior import SamplingSettings
from vqgan_clip import data_commands, demo, encode_command, evaluate, export, generate, optimize_command
from vqgan_clip.arguments import MAX_IMAGE_SIDE, MAX_SHAPES_SIDE, OneLineParser, device, number, whole
from vqgan_clip.models import add_model_options, default_device

IMAGE_SIDE_WHY = "larger sides need tens of GB"
SHAPES_SIDE_WHY = "the shapes are drawn for 32-256 px"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vqgan-clip",
        description="Text-to-image with a VQGAN, a GPT prior and CLIP (DALL·E 1 / VQGAN-CLIP lineage).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="write datasets: shapes, emoji, webdataset shards")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    shapes = datasets.add_parser("shapes", help="the procedural shapes set as an image–caption folder")
    shapes.add_argument("out", help="output folder")
    shapes.add_argument("--n", type=whole(1), default=20000, help="number of images (default 20000)")
    shapes.add_argument(
        "--size",
        type=whole(8, MAX_SHAPES_SIDE, why=SHAPES_SIDE_WHY),
        default=32,
        help="image side in pixels (default 32)",
    )
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument(
        "--split",
        choices=("train", "novel"),
        default="train",
        help="train, or novel: held-out colour+shape compositions",
    )
    shapes.set_defaults(run=data_commands.write_shapes)

    emoji = datasets.add_parser("emoji", help="64px emoji image–caption pairs from the emoji-datasource npm packages")
    emoji.add_argument("out", help="output folder")
    emoji.add_argument("--vendors", default="twitter,google", help="comma-separated: twitter, google")
    emoji.add_argument("--version", default="16.0.0", help="emoji-datasource package version")
    emoji.add_argument(
        "--tarball",
        action="append",
        default=[],
        metavar="VENDOR=PATH",
        help="use a package .tgz you already have instead of running npm pack (repeatable)",
    )
    emoji.set_defaults(run=data_commands.write_emoji)

    shard = datasets.add_parser("shard", help="write webdataset .tar shards from a dataset")
    shard.add_argument("src", help="an image–caption folder, a shard spec, or 'shapes'")
    shard.add_argument("out", help="output folder for the shards")
    shard.add_argument("--shard-size", type=whole(1), default=1000, help="pairs per shard (default 1000)")
    shard.add_argument("--n", type=whole(1), default=20000, help="with src=shapes: number of images")
    shard.add_argument(
        "--size", type=whole(8, MAX_SHAPES_SIDE, why=SHAPES_SIDE_WHY), default=32, help="with src=shapes: image side"
    )
    shard.add_argument("--seed", type=int, default=0, help="with src=shapes: seed")
    shard.set_defaults(run=data_commands.write_shards)

    tok = commands.add_parser(
        "encode", aliases=["tokenize"], help="encode a dataset once into VQGAN code shards for the GPT prior"
    )
    tok.add_argument(
        "--vqgan", required=True, help="VQGAN: .ckpt from `vqgan fit`, .safetensors bundle, or a public taming name"
    )
    tok.add_argument("--data", required=True, help="an image–caption folder, or a YAML config with a data: block")
    tok.add_argument("--out", required=True, help="output folder for the code shards")
    tok.add_argument(
        "--image-size",
        type=whole(1, MAX_IMAGE_SIDE, why=IMAGE_SIDE_WHY),
        default=None,
        help="default: the VQGAN's training resolution",
    )
    tok.add_argument("--batch-size", type=whole(1), default=64)
    tok.add_argument("--shard-size", type=whole(1), default=4096, help="code grids per shard (default 4096)")
    tok.add_argument("--num-workers", type=whole(0), default=0)
    tok.add_argument("--device", type=device, default=default_device(), help="default: cuda if any, else cpu")
    tok.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder")
    tok.set_defaults(run=encode_command.run)

    gen = commands.add_parser("generate", help="draw images for a prompt with the GPT prior, rerank them with CLIP")
    gen.add_argument("prompt", nargs="?", help="the text prompt (or give --prompts-file)")
    gen.add_argument("--prompts-file", metavar="FILE", help="a text file with one prompt per line")
    gen.add_argument(
        "--rerank", type=whole(1), metavar="N", help="draw N candidates and keep the --keep best by CLIP score"
    )
    gen.add_argument("--keep", type=whole(1), default=4, metavar="K", help="images kept per prompt (default 4)")
    gen.add_argument(
        "--out", default="runs/generate", help="output folder; one new subfolder per prompt (default runs/generate)"
    )
    add_model_options(gen)
    add_sampling_options(gen)
    gen.set_defaults(run=generate.run)

    opt = commands.add_parser(
        "optimize", help="VQGAN-CLIP: steer VQGAN latents toward a prompt with CLIP over augmented cutouts"
    )
    optimize_command.add_arguments(opt)
    opt.set_defaults(run=optimize_command.run)

    ev = commands.add_parser(
        "eval", help="attribute accuracy, rerank lift, CLIP score, FD-CLIP -> eval.json + report.html"
    )
    ev.add_argument("--data", default="shapes", help="shapes (held-out and novel captions), or an image–caption folder")
    ev.add_argument(
        "--n",
        type=whole(2, why="FD-CLIP needs two images per set"),
        default=200,
        help="captions per caption set (default 200)",
    )
    ev.add_argument(
        "--rerank",
        type=whole(1),
        default=32,
        metavar="N",
        help="candidates per caption; the CLIP-best vs the first (default 32)",
    )
    ev.add_argument("--out", default="runs/eval", help="folder for eval.json and report.html (default runs/eval)")
    add_model_options(ev)
    add_sampling_options(ev)
    ev.set_defaults(run=evaluate.run)

    exp = commands.add_parser("export", help="a trained VQGAN, GPT prior and CLIP as safetensors bundles (no pickle)")
    exp.add_argument("--vqgan", required=True, help="VQGAN: a .ckpt of `vqgan fit` (or a bundle)")
    exp.add_argument("--gpt", required=True, help="GPT prior: a .ckpt of `gpt-prior fit` (or a bundle)")
    exp.add_argument("--clip", required=True, help="CLIP: a .ckpt of `clip-rerank fit` (or a .safetensors checkpoint)")
    exp.add_argument("--name", required=True, help="the bundles' short name, e.g. shapes")
    exp.add_argument("--out", required=True, help="output folder (imagetext/shipped: the models that ship)")
    exp.set_defaults(run=export.run)

    demo_parser = commands.add_parser(
        "demo",
        help="generate, optimize and eval with the shipped shapes models "
        "(what `make demo` runs); --train: the whole pipeline from scratch",
    )
    demo_parser.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    demo_parser.add_argument(
        "--train",
        action="store_true",
        help="train the VQGAN, GPT prior and CLIP first (CPU hours; what `make demo-train` runs)",
    )
    demo_parser.add_argument("--quick", action="store_true", help="a smoke-test profile that finishes in minutes")
    demo_parser.add_argument("--fresh", action="store_true", help="rebuild every stage instead of reusing outputs")
    demo_parser.set_defaults(run=demo.run)
    return parser


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """How the GPT prior draws codes; defaults in gpt_prior.SamplingSettings."""
    defaults = SamplingSettings()
    parser.add_argument(
        "--cfg",
        type=number(at_least=0),
        metavar="S",
        help=f"classifier-free guidance scale, 1 = off (default {defaults.cfg_scale})",
    )
    parser.add_argument(
        "--top-k", type=whole(0), help=f"keep the k most likely codes, 0 = off (default {defaults.top_k or 'off'})"
    )
    parser.add_argument(
        "--top-p", type=number(above=0, at_most=1), help=f"nucleus sampling mass, 1 = off (default {defaults.top_p})"
    )
    parser.add_argument(
        "--temperature", type=number(above=0), help=f"sampling temperature (default {defaults.temperature})"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every draw; the same seed gives the same images (default 0)"
    )
    parser.add_argument(
        "--batch-size",
        type=whole(1),
        help=f"candidates drawn at once (default {defaults.batch_size}); part of the draw",
    )


def stop_as_interrupted(signum: int, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (timeout, schedulers) ends a run the way Ctrl-C does: cleaned up


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, stop_as_interrupted)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        if os.environ.get("VQGAN_CLIP_DEBUG"):
            raise
        sys.exit(f"vqgan-clip {args.command}: error: {error}")
    except KeyboardInterrupt:
        sys.exit(f"vqgan-clip {args.command}: interrupted")
