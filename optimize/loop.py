"""The VQGAN-CLIP loop: gradient descent on a VQGAN latent until CLIP sees the prompts in it.

    z [1, d, h, w] ─ straight-through VQ ─ VQGAN decode ─ cutouts ─ CLIP ─ Σ weight·distance ─ Adam on z

`z` lives in the quantizer's lookup space (where codes are compared: after `project_in` and, for a
cosine codebook, on the unit sphere), so "nearest code" means exactly what it means to the quantizer,
and each step can clamp z to the box the codebook spans. The forward pass always decodes real codes;
the straight-through estimator hands their gradient to z unchanged, so z drifts until codes flip.

    result = optimize(vqgan, scorer, parse_prompts("a red circle"), OptimizeSettings(width=64, height=64))
    save_png(result.image, "out.png")

Every random draw (the start, the cutouts, image-prompt views) comes from one generator seeded with
`settings.seed` before z is made, so a seed reproduces a run on the same device and thread count.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from clip_rerank.scorer import Scorer
from imagetext.images import open_rgb, pil_to_tensor
from imagetext.training import compile_in_place
from optimize.cutouts import Augmentations, Cutouts
from optimize.prompts import ImagePrompt, NoisePrompt, Prompt, Target, TextPrompt, describe_prompt
from vqgan.model import VQGAN
from vqgan.quantize import GumbelQuantizer, VectorQuantizer

InitKind = Literal["random", "image", "noise", "codes"]
INIT_KINDS: tuple[str, ...] = ("random", "image", "noise", "codes")


@dataclass
class OptimizeSettings:
    """Everything that decides a run besides the models and prompts (saved with every output)."""

    width: int = 64
    height: int = 64
    iterations: int = 200
    lr: float = 0.1
    cutn: int = 32
    cut_pow: float = 1.0
    init: InitKind = "random"  # random codes | an init image, encoded | pixel noise, encoded | given codes
    init_weight: float = 0.0  # weight of mean((z - z_start)²): keeps the result near its start
    seed: int = 0
    bf16: bool = False  # bf16 autocast for the VQGAN decoder and CLIP
    channels_last: bool = False  # the decoder's convolutions in channels_last layout (faster on some CPUs and GPUs)
    compile: bool = False  # torch.compile the decoder and CLIP's image tower (they stay compiled after the run)
    augment: Augmentations = field(default_factory=Augmentations)

    def __post_init__(self) -> None:
        if self.init not in INIT_KINDS:
            raise ValueError(f"init {self.init!r} is not one of {', '.join(INIT_KINDS)}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size {self.width}×{self.height} must be positive")
        if self.iterations < 1 or self.lr <= 0 or self.init_weight < 0:
            raise ValueError(
                f"need iterations >= 1, lr > 0 and init_weight >= 0; got {self.iterations}, "
                f"{self.lr}, {self.init_weight}"
            )


@dataclass
class StepInfo:
    """What a step callback sees: the step just taken (0-based), its loss, and the image it scored [3,H,W]."""

    step: int
    loss: float
    image: Tensor


StepCallback = Callable[[StepInfo], None]


@dataclass
class OptimizeResult:
    image: Tensor  # [3, H, W] in [-1, 1]: z's codes after the last step, decoded
    codes: Tensor  # [h, w]
    initial_codes: Tensor  # [h, w]: where the run started
    losses: list[float]  # one per completed step
    interrupted: bool  # stopped by KeyboardInterrupt before `iterations` steps


class CodebookSpace:
    """The quantizer's lookup space, where z lives: nearest codes, straight-through VQ, the decoder's input."""

    def __init__(self, vqgan: VQGAN) -> None:
        quantizer = vqgan.quantize
        if isinstance(quantizer, GumbelQuantizer):  # codes index `embed` directly, the decoder takes embed vectors
            self.codebook, self.normalize, self.project_out = quantizer.embed.weight.detach().float(), False, None
        else:
            self.codebook = quantizer.codebook().detach()
            self.normalize, self.project_out = quantizer.config.l2_normalize, quantizer.project_out
        self.low = rearrange(self.codebook.min(dim=0).values, "d -> 1 d 1 1")
        self.high = rearrange(self.codebook.max(dim=0).values, "d -> 1 d 1 1")

    def embed(self, codes: Tensor) -> Tensor:
        """Codes [B, h, w] -> their codebook vectors [B, d, h, w]."""
        return rearrange(F.embedding(codes, self.codebook), "b h w d -> b d h w")

    @torch.no_grad()
    def nearest(self, z: Tensor) -> Tensor:
        """z [B, d, h, w] -> codes [B, h, w], by the quantizer's own rule (unit vectors for a cosine codebook)."""
        batch, _, height, width = z.shape
        vectors = rearrange(z.float(), "b d h w -> (b h w) d")
        if self.normalize:
            vectors = F.normalize(vectors, dim=-1)
        codes = VectorQuantizer.nearest_codes(vectors, self.codebook)
        return rearrange(codes, "(b h w) -> b h w", b=batch, h=height, w=width)

    def straight_through(self, z: Tensor) -> Tensor:
        """Forward: the nearest codes' vectors. Backward: the gradient passes to z as if quantisation were identity."""
        quantized = self.embed(self.nearest(z)).to(z.dtype)
        return z + (quantized - z).detach()

    def decoder_input(self, z_q: Tensor) -> Tensor:
        """Lookup-space vectors [B, d, h, w] -> what `VQGAN.decode` takes (the quantizer's `project_out` applied)."""
        if self.project_out is None:
            return z_q
        vectors = self.project_out(rearrange(z_q, "b d h w -> b h w d"))
        return rearrange(vectors, "b h w c -> b c h w")

    def clamp_(self, z: Tensor) -> None:
        """Keep z inside the box the codebook spans, so it cannot wander where no code is near."""
        with torch.no_grad():
            z.copy_(torch.maximum(torch.minimum(z, self.high), self.low))


class _ClampKeepGradient(torch.autograd.Function):
    """clamp(x, -1, 1) forward; backward passes the gradient except where it would push a clipped pixel
    further out. A plain clamp would stop every gradient at an overshooting pixel, freezing it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(-1, 1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        outside = x - x.clamp(-1, 1)  # > 0 above the range, < 0 below
        # descent moves x by -grad: keep the gradient unless that move goes further outside
        return grad * (grad * outside >= 0)


def clamp_keep_gradient(image: Tensor) -> Tensor:
    return _ClampKeepGradient.apply(image)


def image_size(
    model: VQGAN, size: tuple[int, int] | None = None, grid: tuple[int, int] | None = None
) -> tuple[int, int, str | None]:
    """(width, height) to optimise at, and a notice when `size` had to change.

    `size` (W, H) is rounded to the nearest multiples of the VQGAN's downsample factor (at least one);
    without it, a code `grid` (h, w) sets the size (a GPT prior's layout), else the VQGAN's training
    resolution.
    """
    factor = model.downsample_factor
    if size is not None:
        width, height = (max(factor, round(side / factor) * factor) for side in size)
        if (width, height) == tuple(size):
            return width, height, None
        return (
            width,
            height,
            (
                f"--size {size[0]} {size[1]} is not a multiple of the VQGAN's downsample factor {factor}; "
                f"using {width} {height}"
            ),
        )
    if grid is not None:
        return grid[1] * factor, grid[0] * factor, None
    return model.config.ddconfig.resolution, model.config.ddconfig.resolution, None


def resize_cover(image: Tensor, height: int, width: int) -> Tensor:
    """An image [3,H,W] or [1,3,H,W] scaled to cover height×width, centre-cropped to it: [1,3,height,width]."""
    image = image if image.ndim == 4 else rearrange(image, "c h w -> 1 c h w")
    scale = max(height / image.shape[-2], width / image.shape[-1])
    size = (max(height, round(image.shape[-2] * scale)), max(width, round(image.shape[-1] * scale)))
    if size != tuple(image.shape[-2:]):
        image = F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return image[..., top : top + height, left : left + width].clamp(-1, 1)


def initial_codes(
    vqgan: VQGAN,
    settings: OptimizeSettings,
    generator: torch.Generator,
    init_image: Tensor | None = None,
    init_codes: Tensor | None = None,
) -> Tensor:
    """The code grid [1, h, w] a run starts from (see `OptimizeSettings.init`). Given codes of another
    grid size (a GPT sample, say) are scaled to this one by nearest neighbour: the layout is kept."""
    device = generator.device
    grid = vqgan.code_grid_shape(settings.height, settings.width)
    if settings.init == "random":
        return torch.randint(vqgan.codebook_size, (1, *grid), generator=generator, device=device)
    if settings.init == "codes":
        if init_codes is None:
            raise ValueError("init 'codes' needs init_codes (a LongTensor [h, w] or [1, h, w])")
        codes = init_codes.reshape(1, 1, *init_codes.shape[-2:]).to(device)
        if int(codes.min()) < 0 or int(codes.max()) >= vqgan.codebook_size:
            raise ValueError(
                f"init codes must lie in [0, {vqgan.codebook_size}) for this VQGAN; "
                f"were they drawn for another codebook?"
            )
        return rearrange(F.interpolate(codes.float(), size=grid, mode="nearest-exact").long(), "1 1 h w -> 1 h w")
    if settings.init == "image":
        if init_image is None:
            raise ValueError("init 'image' needs init_image (a tensor [3,H,W] in [-1,1])")
        pixels = resize_cover(init_image.to(device), settings.height, settings.width)
    else:  # noise: uniform pixels, encoded
        pixels = torch.rand(1, 3, settings.height, settings.width, generator=generator, device=device) * 2 - 1
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
        return vqgan.encode_codes(pixels)


def embed_prompts(
    scorer: Scorer, prompts: Sequence[Prompt], cutouts: Cutouts, generator: torch.Generator
) -> list[Target]:
    """CLIP embeddings of every prompt: a text once, an image as its `cutn` augmented views (seen the way the
    image being optimised is seen), a noise prompt as a Gaussian direction drawn from its own seed."""
    targets = []
    for prompt in prompts:
        match prompt:
            case TextPrompt():
                embeddings = scorer.encode_text([prompt.text])
            case ImagePrompt():
                if not prompt.path.is_file():
                    raise FileNotFoundError(f"image prompt {prompt.path} not found; give an existing image file")
                image = rearrange(pil_to_tensor(open_rgb(prompt.path)), "c h w -> 1 c h w").to(scorer.device)
                embeddings = scorer.encode_images(cutouts(image, generator))
            case NoisePrompt():
                noise = torch.Generator().manual_seed(prompt.seed)  # independent of the device and of the run's seed
                embeddings = F.normalize(torch.randn(1, scorer.embed_dim, generator=noise), dim=-1).to(scorer.device)
            case _:
                raise TypeError(f"not a prompt: {prompt!r}")
        targets.append(Target(describe_prompt(prompt), embeddings, prompt.weight, prompt.stop))
    return targets


@contextlib.contextmanager
def _frozen_eval(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients (only z is optimised), restored afterwards."""
    training, flags = module.training, [p.requires_grad for p in module.parameters()]
    module.eval().requires_grad_(False)
    try:
        yield
    finally:
        module.train(training)
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def _channels_last(module: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """The module's 4-d weights in channels_last layout for the block, back to the usual layout after."""
    if not enabled:
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def optimize(
    vqgan: VQGAN,
    scorer: Scorer,
    prompts: Sequence[Prompt],
    settings: OptimizeSettings,
    *,
    init_image: Tensor | None = None,
    init_codes: Tensor | None = None,
    callback: StepCallback | None = None,
) -> OptimizeResult:
    """Run `settings.iterations` steps of VQGAN-CLIP and return the image, codes and loss curve.

    `callback` runs after every step; a KeyboardInterrupt raised in a step or in the callback ends
    the run early and still returns the current image, with `interrupted=True`.
    """
    if not prompts:
        raise ValueError("no prompts: give at least one text, image or noise prompt")
    device = next(vqgan.parameters()).device
    clip = copy.copy(scorer)  # the same model, run at this run's precision; the caller's Scorer is untouched
    clip.bf16 = settings.bf16
    space = CodebookSpace(vqgan)
    cutouts = Cutouts(clip.image_size, settings.cutn, settings.cut_pow, settings.augment)
    generator = torch.Generator(device=device).manual_seed(settings.seed)

    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    if settings.compile:
        compile_in_place([vqgan.decoder, clip.model.visual])
    with _frozen_eval(vqgan), _frozen_eval(clip.model), _channels_last(vqgan, settings.channels_last):
        targets = embed_prompts(clip, prompts, cutouts, generator)
        start = initial_codes(vqgan, settings, generator, init_image, init_codes)
        z_start = space.embed(start)
        z = z_start.clone().requires_grad_(True)
        adam = torch.optim.Adam([z], lr=settings.lr)

        def decode(latent: Tensor) -> Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                image = vqgan.decode(space.decoder_input(latent).contiguous(memory_format=layout))
            return clamp_keep_gradient(image.float())

        losses: list[float] = []
        interrupted = False
        try:
            for step in range(settings.iterations):
                image = decode(space.straight_through(z))
                embeddings = clip.encode_images(cutouts(image, generator), grad=True)
                loss = sum(target.loss(embeddings) for target in targets)
                if settings.init_weight:
                    loss = loss + settings.init_weight * F.mse_loss(z, z_start)
                adam.zero_grad(set_to_none=True)
                loss.backward()
                adam.step()
                space.clamp_(z)
                losses.append(loss.item())
                if callback is not None:
                    callback(StepInfo(step, losses[-1], image.detach()[0]))
        except KeyboardInterrupt:
            interrupted = True

        codes = space.nearest(z.detach())
        with torch.no_grad():
            final = decode(space.embed(codes))[0]
    return OptimizeResult(image=final, codes=codes[0], initial_codes=start[0], losses=losses, interrupted=interrupted)
