"""Image files in, image tensors out, and back: the one place that decides how pixels are read.

Inside the project an image is a float tensor [3, H, W] (or [B, 3, H, W]) in [-1, 1].
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from imagetext.files import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# What PIL raises on a broken file: truncation is OSError, a bad PNG chunk is SyntaxError.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode an image file (path or bytes) fully and return it as RGB.

    Transparent images (RGBA, LA, P with transparency) are composited on white, which is what
    a viewer shows and what emoji and icon sets expect. Raises OSError or ValueError on an
    unreadable or truncated file: `load()` forces the whole decode so that truncation is found here,
    not later in a worker.
    """
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 array [H, W, 3] -> float tensor [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1]."""
    return array_to_tensor(np.asarray(image))


def tensor_to_array(image: torch.Tensor) -> np.ndarray:
    """Float tensor [3, H, W] in [-1, 1] -> uint8 array [H, W, 3] (values outside are clipped)."""
    array = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float tensor [3, H, W] in [-1, 1] -> RGB PIL image (values outside are clipped)."""
    return Image.fromarray(tensor_to_array(image))


class ResizeCrop:
    """Resize the short side to `size`, then crop a `size`×`size` square (centre, or random for training).

    The random crop draws from `generator` when given (a keyed one makes it reproducible in any
    worker), else from torch's global generator.
    """

    def __init__(self, size: int, random_crop: bool = False):
        self.size = size
        self.random_crop = random_crop

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = TF.resize(image, self.size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        width, height = image.size
        if self.random_crop:
            top = int(torch.randint(height - self.size + 1, (), generator=generator))
            left = int(torch.randint(width - self.size + 1, (), generator=generator))
            image = TF.crop(image, top, left, self.size, self.size)
        else:
            image = TF.center_crop(image, [self.size, self.size])
        return pil_to_tensor(image)


def png_text_chunks(metadata: dict[str, object]) -> PngImagePlugin.PngInfo:
    """PNG text chunks, one per key: strings as they are, anything else as JSON (what a viewer's
    "image properties" and `read_png_text` show)."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    return info


def read_png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG file as {key: text}."""
    with Image.open(path) as image:
        image.load()
        return dict(image.text)


def save_png(image: torch.Tensor, path: str | Path, metadata: dict[str, object] | None = None) -> Path:
    """Save one image [3, H, W] in [-1, 1] as a PNG, atomically, with `metadata` in its text chunks."""
    with atomic_path(path) as temporary:
        tensor_to_pil(image).save(temporary, format="PNG", pnginfo=png_text_chunks(metadata or {}))
    return Path(path)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, metadata: dict[str, object] | None = None) -> Path:
    """Save a batch [B, 3, H, W] in [-1, 1] as one PNG grid with a 2-pixel gutter, atomically."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=2, pad_value=-1.0)
    return save_png(grid, path, metadata)
