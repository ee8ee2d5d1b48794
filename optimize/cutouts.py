"""Augmented cutouts: many random views of one image, each at CLIP's input size.

CLIP scores an image from one 224-pixel (or 32/64-pixel) view; optimising against a single view
finds adversarial pixel patterns instead of objects. VQGAN-CLIP therefore scores `cutn` crops of
random size and position, each randomly transformed, so only features that survive every view pay.

All cutouts of one call come from ONE `grid_sample`: a crop is an affine map from the cutout's
coordinates into the image, and so are rotation, shear, zoom, translation and flip, so each cutout's
whole geometry folds into a single 2×3 matrix. The anchor tool instead slices and resizes every crop
in a Python loop and then resamples the batch a second time for its augmentations. Colour jitter,
noise and erasing are then batched tensor maths with per-cutout parameters (a torchvision transform
draws one parameter set per call, so it would treat the whole batch alike).

Every draw comes from the generator passed in, so a seed repeats the views exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

# RGB -> YIQ: Y is the luma torchvision's grayscale uses; saturation scales (I, Q), hue rotates them.
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)


@dataclass
class Augmentations:
    """The random transforms of each cutout; every cutout draws its own parameters.

    `probability` is the chance that each of the affine transform, the colour jitter and the erasing
    is applied to a cutout (0.7 as in the anchor tool); `flip` is the chance of a horizontal flip.
    Ranges are symmetric around "no change": rotation ±`degrees`, shear ±`shear` degrees, zoom
    1±`scale`, shift ±`translate` of the cutout's side, brightness/contrast/saturation 1±value,
    hue ±`hue` of a full turn. Noise adds N(0, σ²) with σ ~ U(0, `noise`) per cutout. Erasing blanks a
    rectangle of `erase_area` of the cutout with aspect ratio in `erase_ratio`.
    """

    probability: float = 0.7
    degrees: float = 15.0
    shear: float = 5.0
    scale: float = 0.05
    translate: float = 0.1
    flip: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.05
    noise: float = 0.1
    erase_area: tuple[float, float] = (0.1, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 1 / 0.3)

    @classmethod
    def none(cls) -> Augmentations:
        """Plain crops: no transform, jitter, noise or erasing."""
        return cls(probability=0.0, flip=0.0, noise=0.0)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device) < p


class Cutouts:
    """`cutn` augmented crops of an image [1,3,H,W] in [-1,1] -> [cutn,3,h,w] in [-1,1], (h, w) = `size`.

    Crop sides are drawn as `rand ** cut_pow` between CLIP's size and the largest crop the image
    holds (cut_pow > 1 favours small crops, i.e. detail; < 1 favours whole-image views). Crops have
    the output's aspect ratio. A crop larger than the output is sampled at up to `max_supersample`
    times the output size and box-filtered down: with 2, each output pixel averages 4 bilinear taps
    whose footprint covers a 4×4-pixel block, enough against aliasing up to a 4× reduction. (4 would
    cover 8× but makes the cutouts the slowest part of a 256² step on a CPU.)
    """

    def __init__(
        self,
        size: tuple[int, int],
        cutn: int,
        cut_pow: float = 1.0,
        augment: Augmentations | None = None,
        max_supersample: int = 2,
    ) -> None:
        if cutn < 1:
            raise ValueError(f"cutn must be at least 1, got {cutn}")
        if cut_pow <= 0:
            raise ValueError(f"cut_pow must be positive (1 draws crop sizes uniformly), got {cut_pow}")
        self.size = size
        self.cutn = cutn
        self.cut_pow = cut_pow
        self.augment = augment if augment is not None else Augmentations()
        self.max_supersample = max_supersample

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"cutouts are made from one image [1,3,H,W], got shape {list(image.shape)}")
        pixels = (image + 1) / 2  # [0, 1]: padding with 0 is black and the colour maths is torchvision's
        theta, crop_height = self._geometry(*image.shape[-2:], generator, image.device)
        out_height, out_width = self.size
        supersample = max(1, min(self.max_supersample, math.ceil(float(crop_height.max()) / out_height)))
        grid = F.affine_grid(
            theta.to(pixels.dtype),
            [self.cutn, 3, out_height * supersample, out_width * supersample],
            align_corners=False,
        )
        cutouts = F.grid_sample(
            pixels.expand(self.cutn, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        if supersample > 1:
            cutouts = F.avg_pool2d(cutouts, supersample)
        cutouts = self._jitter_colour(cutouts, generator)
        cutouts = self._add_noise(cutouts, generator)
        cutouts = self._erase(cutouts, generator)
        return cutouts * 2 - 1

    def _geometry(
        self, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Per cutout, the affine_grid matrix [cutn,2,3] mapping cutout coordinates into the image, and the crop height."""
        n, aug = self.cutn, self.augment
        out_height, out_width = self.size
        aspect = out_width / out_height
        max_side = min(height, width / aspect)
        min_side = min(max_side, out_height)
        crop_height = _uniform(n, 0, 1, generator, device) ** self.cut_pow * (max_side - min_side) + min_side
        crop_width = crop_height * aspect
        top = _uniform(n, 0, 1, generator, device) * (height - crop_height)
        left = _uniform(n, 0, 1, generator, device) * (width - crop_width)

        # The augmentation, in pixels around the crop's centre: rotate · shear · zoom · flip, then shift.
        apply = _coin(n, aug.probability, generator, device)
        angle = torch.where(apply, _uniform(n, -aug.degrees, aug.degrees, generator, device), 0).deg2rad()
        shear = torch.where(apply, _uniform(n, -aug.shear, aug.shear, generator, device), 0).deg2rad().tan()
        zoom = torch.where(apply, _uniform(n, 1 - aug.scale, 1 + aug.scale, generator, device), 1)
        shift_x = torch.where(apply, _uniform(n, -aug.translate, aug.translate, generator, device), 0) * crop_width
        shift_y = torch.where(apply, _uniform(n, -aug.translate, aug.translate, generator, device), 0) * crop_height
        mirror = torch.where(_coin(n, aug.flip, generator, device), -1.0, 1.0)
        cos, sin, zeros, ones = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
        rotation = rearrange(torch.stack([cos, -sin, sin, cos]), "(i j) n -> n i j", i=2)
        shearing = rearrange(torch.stack([ones, shear, zeros, ones]), "(i j) n -> n i j", i=2)
        zoom_flip = torch.diag_embed(torch.stack([mirror / zoom, 1 / zoom], dim=-1))
        linear = rotation @ shearing @ zoom_flip

        # affine_grid works in [-1, 1] coordinates: cutout -> crop pixels -> (augmented) -> image pixels -> image [-1, 1]
        to_crop_pixels = torch.diag_embed(torch.stack([crop_width / 2, crop_height / 2], dim=-1))
        to_image_units = torch.diag(torch.tensor([2 / width, 2 / height], device=device))
        centre = torch.stack(
            [left + crop_width / 2 - width / 2 + shift_x, top + crop_height / 2 - height / 2 + shift_y], dim=-1
        )
        theta = torch.cat(
            [to_image_units @ linear @ to_crop_pixels, rearrange(centre @ to_image_units, "n i -> n i 1")], dim=-1
        )
        return theta, crop_height

    def _jitter_colour(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """Brightness, contrast, then saturation and hue (one 3×3 matrix in YIQ space), per cutout."""
        n, aug, device = self.cutn, self.augment, pixels.device
        apply = _coin(n, aug.probability, generator, device)

        def factor(spread: float) -> Tensor:
            return torch.where(apply, _uniform(n, 1 - spread, 1 + spread, generator, device), 1)

        brightness, contrast, saturation = factor(aug.brightness), factor(aug.contrast), factor(aug.saturation)
        hue = torch.where(apply, _uniform(n, -aug.hue, aug.hue, generator, device), 0) * 2 * math.pi
        per_cutout = "n -> n 1 1 1"
        pixels = pixels * rearrange(brightness, per_cutout)
        gray = torch.einsum("c, n c h w -> n", RGB_TO_YIQ[0].to(device, pixels.dtype), pixels) / pixels[0, 0].numel()
        pixels = torch.lerp(rearrange(gray, per_cutout), pixels, rearrange(contrast, per_cutout).to(pixels.dtype))

        cos, sin, zeros, ones = (
            hue.cos() * saturation,
            hue.sin() * saturation,
            torch.zeros_like(hue),
            torch.ones_like(hue),
        )
        chroma = rearrange(
            torch.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos]), "(i j) n -> n i j", i=3
        )
        colour = YIQ_TO_RGB.to(device) @ chroma @ RGB_TO_YIQ.to(device)
        return torch.einsum("n i j, n j h w -> n i h w", colour.to(pixels.dtype), pixels)

    def _add_noise(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        if self.augment.noise <= 0:
            return pixels
        sigma = _uniform(self.cutn, 0, self.augment.noise, generator, pixels.device)
        noise = torch.randn(pixels.shape, generator=generator, device=generator.device).to(pixels.device, pixels.dtype)
        return pixels + rearrange(sigma, "n -> n 1 1 1").to(pixels.dtype) * noise

    def _erase(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """Black out one random rectangle in each cutout that draws it (a mask, so the batch stays one tensor)."""
        n, aug, device = self.cutn, self.augment, pixels.device
        height, width = pixels.shape[-2:]
        apply = _coin(n, aug.probability, generator, device)
        area = _uniform(n, *aug.erase_area, generator, device) * height * width
        ratio = _uniform(n, *(math.log(r) for r in aug.erase_ratio), generator, device).exp()
        box_height = (area * ratio).sqrt().clamp(max=height)
        box_width = (area / ratio).sqrt().clamp(max=width)
        top = _uniform(n, 0, 1, generator, device) * (height - box_height)
        left = _uniform(n, 0, 1, generator, device) * (width - box_width)
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        inside_rows = (rows >= rearrange(top, "n -> n 1")) & (rows < rearrange(top + box_height, "n -> n 1"))
        inside_cols = (cols >= rearrange(left, "n -> n 1")) & (cols < rearrange(left + box_width, "n -> n 1"))
        erased = rearrange(inside_rows, "n h -> n 1 h 1") & rearrange(inside_cols, "n w -> n 1 1 w")
        erased &= rearrange(apply, "n -> n 1 1 1")
        return pixels.masked_fill(erased, 0.0)
