"""Where the time of a VQGAN-CLIP step and of a VQGAN training step goes, part by part, against this
machine's own matmul and convolution rates.

    python bench/profile_steps.py                  # taming f16 architecture, ViT-B-32, 256², cutn 32
    python bench/profile_steps.py --threads 1 --size 128 --cutn 16

Each part runs alone on the inputs the step gives it, forward and backward timed apart (median of
`--repeats`), and its FLOPs are counted by torch.utils.flop_counter (matmuls and convolutions, the
work that dominates). Achieved GFLOP/s is set against two peaks measured first: a 2048² fp32 matmul
and a 3×3 convolution of 256 channels at 32², the shapes the big parts run at. Random weights: speed
does not depend on them.

VQGAN-CLIP step parts: the decoder (`post_quant_conv` + decoder: latents -> image), the cutouts
(crops + augmentations, `optimize.cutouts.Cutouts`), CLIP's image tower on the cutouts (frozen
weights: its backward is the input gradient only), the quantiser's nearest-code search and Adam on z.
VQGAN training step parts (batch `--train-batch` at `--train-size`²): encoder, quantiser, decoder,
discriminator, the adaptive weight (two autograd.grad calls on the last layer) and the two Adams.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

# bench/optimize.py shares its name with the `optimize` package: with this folder first on sys.path,
# `import optimize` would find that script.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from optimize.cutouts import Cutouts  # noqa: E402
from optimize.loop import CodebookSpace  # noqa: E402
from vqgan.discriminator import NLayerDiscriminator, adaptive_disc_weight, generator_loss  # noqa: E402
from vqgan.model import VQGAN, VQGANConfig  # noqa: E402

# taming-transformers' vqgan_imagenet_f16_1024 first stage, with 1024 codes
TAMING_F16 = {
    "ddconfig": {
        "double_z": False,
        "z_channels": 256,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [16],
        "dropout": 0.0,
    },
    "embed_dim": 256,
    "n_embed": 1024,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="VQGAN-CLIP image side")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--clip", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--ch", type=int, default=128, help="VQGAN base width (taming f16: 128)")
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(run: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


class Table:
    def __init__(self, title: str, peak: float):
        self.title, self.peak, self.rows = title, peak, []

    def add(self, part: str, run: Callable[[], object], repeats: int) -> None:
        seconds, count = median_seconds(run, repeats), flops(run)
        self.rows.append((part, seconds, count))

    def print(self) -> None:
        total = sum(seconds for _, seconds, _ in self.rows)
        print(f"\n{self.title}: {total * 1000:.0f} ms in all")
        print(f"  {'part':<34} {'ms':>8} {'share':>6} {'GFLOP':>8} {'GFLOP/s':>8} {'of peak':>8}")
        for part, seconds, count in self.rows:
            rate = count / seconds / 1e9 if count else 0.0
            print(
                f"  {part:<34} {seconds * 1000:8.1f} {seconds / total:6.1%} {count / 1e9:8.2f} "
                f"{rate:8.1f} {rate / self.peak:8.0%}"
                if count
                else f"  {part:<34} {seconds * 1000:8.1f} {seconds / total:6.1%} {'-':>8} {'-':>8} {'-':>8}"
            )


def peaks(repeats: int) -> tuple[float, float]:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = 2 * 2048**3 / median_seconds(lambda: a @ b, repeats) / 1e9
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(4, 256, 32, 32)
    with torch.no_grad():
        conv_rate = flops(lambda: conv(x)) / median_seconds(lambda: conv(x), repeats) / 1e9
    return matmul, conv_rate


def forward_backward(module_call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """(forward run, backward run) of `module_call(x).sum()` with x a leaf that wants its gradient."""
    x = x.detach().requires_grad_(True)
    state = {}

    def forward():
        state["out"] = module_call(x)
        return state["out"]

    def backward():
        if "out" not in state or state["out"].grad_fn is None:
            forward()
        state["out"].sum().backward(retain_graph=True)
        x.grad = None

    return forward, backward


def vqgan_clip_step(args: argparse.Namespace, peak: float) -> None:
    config = VQGANConfig.from_dict({**TAMING_F16, "ddconfig": {**TAMING_F16["ddconfig"], "ch": args.ch}})
    model = VQGAN(config).eval().requires_grad_(False)
    clip = open_clip.create_model(args.clip).eval().requires_grad_(False)
    space = CodebookSpace(model)
    side = args.size // 16
    z = torch.randn(1, config.embed_dim, side, side)
    table = Table(f"VQGAN-CLIP step, {args.size}², cutn {args.cutn}, {args.clip}, decoder ch {args.ch}", peak)
    decode = lambda latents: model.decode(space.decoder_input(latents))  # noqa: E731
    forward, backward = forward_backward(decode, z)
    table.add("decoder forward", forward, args.repeats)
    table.add("decoder backward", backward, args.repeats)
    image = decode(z).clamp(-1, 1)
    size = clip.visual.image_size
    cutouts = Cutouts(tuple(size) if isinstance(size, (tuple, list)) else (size, size), args.cutn)
    generator = torch.Generator().manual_seed(0)
    cut = lambda picture: cutouts(picture, generator)  # noqa: E731
    forward, backward = forward_backward(cut, image)
    table.add("cutouts + augmentations forward", forward, args.repeats)
    table.add("cutouts + augmentations backward", backward, args.repeats)
    crops = cut(image).detach()
    forward, backward = forward_backward(lambda batch: clip.encode_image(batch, normalize=True), crops)
    table.add("CLIP image tower forward", forward, args.repeats)
    table.add("CLIP image tower backward (input)", backward, args.repeats)
    table.add("nearest codes (straight-through)", lambda: space.straight_through(z), args.repeats)
    z_leaf = z.clone().requires_grad_(True)
    z_leaf.grad = torch.randn_like(z)
    adam = torch.optim.Adam([z_leaf], lr=0.1)
    table.add("Adam on z", adam.step, args.repeats)
    table.print()


def vqgan_training_step(args: argparse.Namespace, peak: float) -> None:
    config = VQGANConfig.from_dict({**TAMING_F16, "ddconfig": {**TAMING_F16["ddconfig"], "ch": args.ch}})
    model = VQGAN(config).train()
    discriminator = NLayerDiscriminator(3, 64, 3)
    images = torch.rand(args.train_batch, 3, args.train_size, args.train_size) * 2 - 1
    table = Table(f"VQGAN training step, batch {args.train_batch} x {args.train_size}², decoder ch {args.ch}", peak)
    forward, backward = forward_backward(model.encoder, images)
    table.add("encoder forward", forward, args.repeats)
    table.add("encoder backward", backward, args.repeats)
    h = model.quant_conv(model.encoder(images)).detach()
    table.add("quantiser forward", lambda: model.quantize(h.requires_grad_(True)), args.repeats)
    z_q = model.quantize(h).z_q.detach()
    forward, backward = forward_backward(model.decode, z_q)
    table.add("decoder forward", forward, args.repeats)
    table.add("decoder backward", backward, args.repeats)
    reconstructions = model.decode(z_q).detach()
    forward, backward = forward_backward(discriminator, reconstructions)
    table.add("discriminator forward (one batch)", forward, args.repeats)
    table.add("discriminator backward (one batch)", backward, args.repeats)

    def adaptive_weight():
        out = model.decode(z_q)
        rec = (out - images).abs().mean()
        return adaptive_disc_weight(rec, generator_loss(discriminator(out)), model.last_layer, 1e4)

    table.add("adaptive weight (decoder fwd + 2 grads)", adaptive_weight, args.repeats)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    adam = torch.optim.Adam(model.parameters(), lr=1e-4)
    table.add("Adam on the autoencoder", adam.step, args.repeats)
    table.print()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    matmul, conv = peaks(args.repeats)
    print(
        f"{torch.get_num_threads()} threads; measured peaks: fp32 matmul 2048² {matmul:.0f} GFLOP/s, "
        f"3x3 conv 256ch@32² {conv:.0f} GFLOP/s ('of peak' below is against the matmul)"
    )
    vqgan_clip_step(args, matmul)
    vqgan_training_step(args, matmul)


if __name__ == "__main__":
    main()
