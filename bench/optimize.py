"""VQGAN-CLIP steps per second and peak memory: this project's loop (fp32, bf16) vs an anchor-style step.

    python bench/optimize.py                                  # emoji VQGAN, random clip-tiny-64, 128² and 256², cutn 32
    python bench/optimize.py --threads 1 --iterations 3       # on cores shared with other jobs
    python bench/optimize.py --clip runs/clip/emoji/clip.safetensors --sizes 256

Five variants per image size, all with the same models, prompt, cutn and cut_pow:
- `ours fp32` / `ours fp32 channels_last` / `ours fp32 compiled` / `ours bf16`: `optimize.optimize`
  itself (the decoder in channels_last layout; the decoder and CLIP's image tower through
  torch.compile, whose compile falls in the warm-up step; bf16 autocast for the VQGAN and CLIP),
  timed between its step callbacks;
- `baseline`: the step of nerdyrodent/VQGAN-CLIP's generate.py (`AnchorRun`), restated on the same
  models: fp32, no autocast; synth() quantises z by a one-hot matmul with the straight-through
  ReplaceGrad and decodes it in generate.py's layout (z_q moved back from [1,h,w,d], so channels-last
  strides); ClampWithGrad to [0, 1]; cutouts made one at a time in a Python loop (`--anchor-cuts
  nrupdated`, the default: a random crop of rand**cut_pow size, Lanczos-filtered and bicubic-resized on
  its own, as `optimize` crops; `latest`, generate.py's default cut method: the whole image pooled by
  average + max to CLIP's size, cutn times), concatenated, then kornia 0.5's RandomAffine,
  RandomPerspective, ColorJitter (saturation and hue through HSV) and RandomErasing (same_on_batch,
  its mask built per sample) as plain torch ops, each on the samples its p = 0.7 picks, then noise;
  CLIP on the OpenAI-normalised cutouts, the spherical-distance Prompt loss, Adam, z clamped to the
  codebook's box. kornia is not a dependency here, hence the restatement.
  tests/test_bench_baselines.py checks that its loss and z's gradient equal `optimize`'s on the same
  plain cutouts.

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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

# This script shares its name with the `optimize` package it measures; run as a script, its own folder
# would come first on sys.path and `import optimize` would find this file.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import clip_rerank  # noqa: E402
import vqgan  # noqa: E402
from optimize.loop import CodebookSpace, OptimizeSettings, optimize  # noqa: E402
from optimize.prompts import TextPrompt  # noqa: E402

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
    parser.add_argument(
        "--anchor-cuts",
        choices=["nrupdated", "latest"],
        default="nrupdated",
        help="the baseline's generate.py cut method: random crops as ours (default) or its default pooled views",
    )
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


# --- the anchor's step: nerdyrodent/VQGAN-CLIP generate.py, restated -----------------------------------

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation generate.py applies before CLIP
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class AnchorAugments:
    """generate.py's default kornia 0.5 augment list ('Af', 'Pe', 'Ji', 'Er', each with p 0.7) as one cut
    method builds it, then its noise (σ ~ U(0, noise) per cutout)."""

    degrees: float  # RandomAffine(degrees, translate=0.1, shear=5, padding_mode='zeros')
    distortion: float  # RandomPerspective(distortion_scale)
    probability: float = 0.7
    translate: float = 0.1
    shear: float = 5.0
    jitter: float = 0.1  # ColorJitter(brightness, contrast, saturation, hue all 0.1)
    erase_area: tuple[float, float] = (0.1, 0.4)  # RandomErasing(scale, ratio, same_on_batch=True)
    erase_ratio: tuple[float, float] = (0.3, 1 / 0.3)
    noise: float = 0.1


# 'nrupdated' (MakeCutoutsNRUpdate): random crops of rand**cut_pow size, each resized on its own, as `optimize`
# crops; 'latest' (MakeCutouts, generate.py's default): every cutout is the whole image pooled to CLIP's size.
CUT_METHODS = {
    "nrupdated": AnchorAugments(degrees=30, distortion=0.5),
    "latest": AnchorAugments(degrees=15, distortion=0.7),
}


class ReplaceGrad(torch.autograd.Function):
    """Forward: the first input. Backward: the gradient goes to the second (summed to its shape)."""

    @staticmethod
    def forward(ctx, forward_value: Tensor, backward_target: Tensor) -> Tensor:
        ctx.shape = backward_target.shape
        return forward_value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad.sum_to_size(ctx.shape)


class ClampWithGrad(torch.autograd.Function):
    """clamp(x, low, high); backward drops only the gradient that would push a clipped value further out."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def anchor_quantize(vectors: Tensor, codebook: Tensor) -> Tensor:
    """vector_quantize: each row of vectors [..., d] -> its nearest code (picked by a one-hot matmul),
    with the gradient handed straight to the input."""
    distances = vectors.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * vectors @ codebook.T
    one_hot = F.one_hot(distances.argmin(dim=-1), codebook.shape[0]).to(distances.dtype)
    return ReplaceGrad.apply(one_hot @ codebook, vectors)


def anchor_prompt_loss(features: Tensor, target: Tensor, weight: float = 1.0, stop: float = -math.inf) -> Tensor:
    """Prompt.forward: weight · mean over cutouts of 2·arcsin(‖a − b‖/2)² between unit vectors; a distance
    below `stop` passes no gradient."""
    a = F.normalize(features.unsqueeze(1), dim=2)
    b = F.normalize(target.unsqueeze(0), dim=2)
    distances = a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2) * math.copysign(1.0, weight)
    return abs(weight) * ReplaceGrad.apply(distances, torch.maximum(distances, distances.new_tensor(stop))).mean()


def _sinc(x: Tensor) -> Tensor:
    return torch.where(x != 0, torch.sin(math.pi * x) / (math.pi * x), torch.ones_like(x))


def lanczos_taps(ratio: float, lobes: int = 2) -> Tensor:
    """resample's low-pass filter for shrinking by `ratio` < 1: Lanczos-`lobes` taps `ratio` apart, summing to 1."""
    half = math.ceil(lobes / ratio + 1) - 2
    x = torch.arange(-half, half + 1) * ratio
    taps = torch.where(x.abs() < lobes, _sinc(x) * _sinc(x / lobes), torch.zeros(()))
    return taps / taps.sum()


def anchor_resample(pixels: Tensor, size: int) -> Tensor:
    """resample: a separable Lanczos low-pass (reflect-padded) along each shrinking side, then bicubic."""
    n, c, height, width = pixels.shape
    flat = pixels.reshape(n * c, 1, height, width)
    if size < height:
        taps = lanczos_taps(size / height).to(flat)
        pad = (len(taps) - 1) // 2
        flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), "reflect"), taps.view(1, 1, -1, 1))
    if size < width:
        taps = lanczos_taps(size / width).to(flat)
        pad = (len(taps) - 1) // 2
        flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), "reflect"), taps.view(1, 1, 1, -1))
    return F.interpolate(flat.reshape(n, c, height, width), (size, size), mode="bicubic", align_corners=True)


def _uniform(shape: int | tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else shape
    return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low


def _on_some(batch: Tensor, probability: float, generator: torch.Generator, transform) -> Tensor:
    """kornia 0.5's p: each sample is transformed with that probability; the others pass through unchanged."""
    chosen = torch.rand(len(batch), generator=generator, device=generator.device) < probability
    if not chosen.any():
        return batch
    if chosen.all():
        return transform(batch)
    out = batch.clone()
    out[chosen] = transform(batch[chosen])
    return out


def _to_unit_square(height: int, width: int, like: Tensor) -> Tensor:
    """kornia's pixel -> [-1, 1] map (its normalize_homography), as a 3×3 matrix."""
    return torch.tensor([[2 / (width - 1), 0, -1], [0, 2 / (height - 1), -1], [0, 0, 1]]).to(like)


def _warp(batch: Tensor, pixel_matrix: Tensor, perspective: bool) -> Tensor:
    """kornia's warp_affine / warp_perspective: the pixel-space map [n,3,3] normalised and inverted, then a
    sampling grid (affine_grid, or a meshgrid through the homography) and one bilinear grid_sample."""
    height, width = batch.shape[-2:]
    unit = _to_unit_square(height, width, batch)
    dst_to_src = torch.linalg.inv(unit @ pixel_matrix @ torch.linalg.inv(unit))
    if perspective:
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, height).to(batch), torch.linspace(-1, 1, width).to(batch), indexing="ij"
        )
        points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).repeat(len(batch), 1, 1, 1)
        mapped = torch.einsum("n i j, n h w j -> n h w i", dst_to_src, points)
        grid = mapped[..., :2] / mapped[..., 2:].where(mapped[..., 2:].abs() > 1e-8, torch.ones(()).to(batch))
    else:
        grid = F.affine_grid(dst_to_src[:, :2], list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _random_affine(batch: Tensor, aug: AnchorAugments, generator: torch.Generator) -> Tensor:
    n, _, height, width = batch.shape
    angle = _uniform(n, -aug.degrees, aug.degrees, generator).deg2rad()
    shift_x = _uniform(n, -aug.translate * width, aug.translate * width, generator)
    shift_y = _uniform(n, -aug.translate * height, aug.translate * height, generator)
    shear = _uniform(n, -aug.shear, aug.shear, generator).deg2rad().tan()
    cx, cy = width / 2 - 0.5, height / 2 - 0.5
    cos, sin, zeros, ones = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    # rotation about the centre, then the shift; times a shear along x about the centre
    rotate = torch.stack(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy + shift_x,
            sin,
            cos,
            cy - sin * cx - cos * cy + shift_y,
            zeros,
            zeros,
            ones,
        ],
        dim=-1,
    ).view(n, 3, 3)
    shearing = torch.stack([ones, shear, -shear * cy, zeros, ones, zeros, zeros, zeros, ones], dim=-1).view(n, 3, 3)
    return _warp(batch, (rotate @ shearing).to(batch), perspective=False)


def _homography(source: Tensor, target: Tensor) -> Tensor:
    """The 3×3 maps [n,3,3] taking 4 points [n,4,2] to 4 points, from the 8×8 linear system (kornia's
    get_perspective_transform)."""
    rows, values = [], []
    for point, image in zip(source.unbind(1), target.unbind(1)):
        (x, y), (u, v) = point.unbind(-1), image.unbind(-1)
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1))
        values += [u, v]
    solution = torch.linalg.solve(torch.stack(rows, 1), torch.stack(values, 1))
    return torch.cat([solution, torch.ones_like(solution[:, :1])], dim=1).view(-1, 3, 3)


def _random_perspective(batch: Tensor, aug: AnchorAugments, generator: torch.Generator) -> Tensor:
    n, _, height, width = batch.shape
    device = generator.device
    corners = torch.tensor([[0.0, 0.0], [width - 1, 0.0], [width - 1, height - 1], [0.0, height - 1]], device=device)
    corners = corners.expand(n, 4, 2)
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], device=device)
    reach = torch.tensor([aug.distortion * width / 2, aug.distortion * height / 2], device=device)
    moved = corners + reach * _uniform((n, 4, 2), 0, 1, generator) * inward
    return _warp(batch, _homography(corners, moved).to(batch), perspective=True)


def _rgb_to_hsv(rgb: Tensor, eps: float = 1e-6) -> Tensor:
    """kornia's rgb_to_hsv: hue in [0, 2π), saturation and value in [0, 1]."""
    value, brightest = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    saturation = chroma / (value + eps)
    chroma = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    r, g, b = (value.unsqueeze(1) - rgb).unbind(1)
    hue = torch.stack([b - g, 2 * chroma + r - b, 4 * chroma + g - r], dim=1).gather(1, brightest.unsqueeze(1))
    hue = (hue.squeeze(1) / chroma / 6) % 1 * (2 * math.pi)
    return torch.stack([hue, saturation, value], dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """kornia's hsv_to_rgb: the six hue sectors as a table of (v, p, q, t) picks, gathered per pixel."""
    hue, saturation, value = hsv.unbind(1)
    sector_position = hue / (2 * math.pi) * 6
    sector = torch.floor(sector_position) % 6
    f = sector_position % 6 - sector
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    table = torch.stack([value, q, p, p, t, value, t, value, value, q, p, p, p, p, t, value, value, q], dim=1)
    sector = sector.long()
    return table.gather(1, torch.stack([sector, sector + 6, sector + 12], dim=1))


def _colour_jitter(batch: Tensor, aug: AnchorAugments, generator: torch.Generator) -> Tensor:
    """kornia 0.5's ColorJitter: brightness (added), contrast (multiplied), saturation and hue (each through
    HSV and back), in a random order, clamping to [0, 1]."""
    n, per_sample = len(batch), (-1, 1, 1, 1)
    brightness, contrast, saturation = (_uniform(n, 1 - aug.jitter, 1 + aug.jitter, generator) for _ in range(3))
    hue = _uniform(n, -aug.jitter, aug.jitter, generator) * 2 * math.pi

    def adjust_saturation(x: Tensor) -> Tensor:
        h, s, v = _rgb_to_hsv(x).unbind(1)
        return _hsv_to_rgb(torch.stack([h, (s * saturation.view(-1, 1, 1)).clamp(0, 1), v], dim=1))

    def adjust_hue(x: Tensor) -> Tensor:
        h, s, v = _rgb_to_hsv(x).unbind(1)
        return _hsv_to_rgb(torch.stack([torch.fmod(h + hue.view(-1, 1, 1), 2 * math.pi), s, v], dim=1))

    steps = [
        lambda x: (x + (brightness - 1).view(per_sample)).clamp(0, 1),
        lambda x: (x * contrast.view(per_sample)).clamp(0, 1),
        adjust_saturation,
        adjust_hue,
    ]
    for index in torch.randperm(4, generator=generator, device=generator.device).tolist():
        batch = steps[index](batch)
    return batch


def _erase(batch: Tensor, aug: AnchorAugments, generator: torch.Generator) -> Tensor:
    """kornia 0.5's RandomErasing(same_on_batch=True): one rectangle for the whole batch, its mask built per
    sample in a Python loop as kornia's bbox_to_mask does, then blanked to 0."""
    height, width = batch.shape[-2:]
    area = float(_uniform(1, *aug.erase_area, generator)) * height * width
    low, high = aug.erase_ratio
    ratio = float(
        _uniform(1, low, 1, generator) if torch.rand((), generator=generator) < 0.5 else _uniform(1, 1, high, generator)
    )
    box_h = min(max(round(math.sqrt(area * ratio)), 1), height)
    box_w = min(max(round(math.sqrt(area / ratio)), 1), width)
    top = int(float(_uniform(1, 0, 1, generator)) * (height - box_h + 1))
    left = int(float(_uniform(1, 0, 1, generator)) * (width - box_w + 1))
    masks = []
    for _ in range(len(batch)):
        mask = torch.zeros(height, width, device=batch.device)
        mask[top : top + box_h, left : left + box_w] = 1
        masks.append(mask)
    mask = torch.stack(masks).unsqueeze(1).repeat(1, batch.shape[1], 1, 1).to(batch)
    return torch.where(mask == 1, torch.zeros_like(batch), batch)


def anchor_augment(batch: Tensor, aug: AnchorAugments, generator: torch.Generator) -> Tensor:
    """The cutouts [n,3,h,w] in [0, 1] through the augment list, then the noise."""
    p = aug.probability
    batch = _on_some(batch, p, generator, lambda x: _random_affine(x, aug, generator))
    batch = _on_some(batch, p, generator, lambda x: _random_perspective(x, aug, generator))
    batch = _on_some(batch, p, generator, lambda x: _colour_jitter(x, aug, generator))
    if torch.rand((), generator=generator, device=generator.device) < p:  # same_on_batch: one draw for all
        batch = _erase(batch, aug, generator)
    sigma = _uniform((len(batch), 1, 1, 1), 0, aug.noise, generator).to(batch)
    return batch + sigma * torch.randn(batch.shape, generator=generator, device=generator.device).to(batch)


def anchor_cutouts(
    pixels: Tensor, size: int, cutn: int, cut_pow: float, generator: torch.Generator, method: str, augment: bool = True
) -> Tensor:
    """The image [1,3,H,W] in [0, 1] -> cutn cutouts [cutn,3,size,size], made one at a time and concatenated,
    then augmented (`augment=False` leaves out the augmentations and the noise)."""
    side_y, side_x = pixels.shape[-2:]
    max_size, min_size = min(side_x, side_y), min(side_x, side_y, size)
    pieces = []
    for _ in range(cutn):
        if method == "latest":
            pieces.append((F.adaptive_avg_pool2d(pixels, size) + F.adaptive_max_pool2d(pixels, size)) / 2)
            continue
        side = int(
            torch.rand((), generator=generator, device=generator.device) ** cut_pow * (max_size - min_size) + min_size
        )
        x = int(torch.randint(0, side_x - side + 1, (), generator=generator, device=generator.device))
        y = int(torch.randint(0, side_y - side + 1, (), generator=generator, device=generator.device))
        pieces.append(anchor_resample(pixels[:, :, y : y + side, x : x + side], size))
    batch = torch.cat(pieces, dim=0)
    return anchor_augment(batch, CUT_METHODS[method], generator) if augment else batch


class AnchorRun:
    """generate.py's loop with its defaults (random codes to start, Adam, one text prompt), restated on this
    project's models: `step()` is one `train(i)` — synth (straight-through quantise, decode, to [0, 1] with
    ClampWithGrad), cutouts, CLIP, the prompt loss, backward, Adam, clamp z into the codebook's box — and
    returns the loss.

    z lives in the quantiser's lookup space, as in `optimize`: for taming's quantiser (generate.py's case)
    that is the codebook itself; a factorised codebook's `project_out` is applied before decoding.
    """

    def __init__(
        self,
        model: vqgan.VQGAN,
        scorer: clip_rerank.Scorer,
        prompt: str,
        settings: OptimizeSettings,
        cut_method: str = "nrupdated",
        augment: bool = True,
    ) -> None:
        if cut_method not in CUT_METHODS:
            raise ValueError(f"cut method {cut_method!r}: use one of {', '.join(CUT_METHODS)}")
        model.eval().requires_grad_(False)
        scorer.model.eval().requires_grad_(False)
        self.model, self.scorer, self.settings = model, scorer, settings
        self.cut_method, self.augment = cut_method, augment
        device = next(model.parameters()).device
        space = CodebookSpace(model)
        self.codebook, self.decoder_input = space.codebook, space.decoder_input
        self.generator = torch.Generator(device=device).manual_seed(settings.seed)
        rows, cols = model.code_grid_shape(settings.height, settings.width)
        codes = torch.randint(len(self.codebook), (rows * cols,), generator=self.generator, device=device)
        z = F.one_hot(codes, len(self.codebook)).float() @ self.codebook
        self.z = z.view(1, rows, cols, -1).permute(0, 3, 1, 2).requires_grad_(True)  # generate.py's layout
        self.z_min = self.codebook.min(dim=0).values.view(1, -1, 1, 1)
        self.z_max = self.codebook.max(dim=0).values.view(1, -1, 1, 1)
        self.adam = torch.optim.Adam([self.z], lr=settings.lr)
        self.target = scorer.model.encode_text(scorer.tokenize([prompt])).float()
        self.mean, self.std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (OPENAI_MEAN, OPENAI_STD))

    def synth(self) -> Tensor:
        z_q = anchor_quantize(self.z.movedim(1, 3), self.codebook).movedim(3, 1)
        return ClampWithGrad.apply(self.model.decode(self.decoder_input(z_q)).add(1).div(2), 0, 1)

    def step(self) -> Tensor:
        self.adam.zero_grad(set_to_none=True)
        s = self.settings
        cutouts = anchor_cutouts(
            self.synth(), self.scorer.image_size[0], s.cutn, s.cut_pow, self.generator, self.cut_method, self.augment
        )
        features = self.scorer.model.encode_image((cutouts - self.mean) / self.std).float()
        loss = sum([anchor_prompt_loss(features, self.target)])
        loss.backward()
        self.adam.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return loss.detach()


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
        run = AnchorRun(model, scorer, PROMPT, settings, job["anchor_cuts"])
        for _ in range(settings.iterations):
            on_step(run.step().item())
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
                        "anchor_cuts": args.anchor_cuts,
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
