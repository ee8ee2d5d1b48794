"""`Scorer`: a CLIP model with its tokenizer and its own image preprocessing, done on tensors.

Everything that asks "how well does this image match this text" goes through a Scorer: reranking GPT
samples, the CLIP score and FD-CLIP metrics, and the VQGAN-CLIP optimiser (which needs gradients
through `encode_images`, so preprocessing is differentiable tensor maths, not PIL).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import cached_property

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange

Tokenizer = Callable[[list[str]], torch.Tensor]  # open_clip's tokenizers: texts -> LongTensor [N, context]

RESIZE_MODES = ("shortest", "longest", "squash")  # open_clip's preprocess_cfg["resize_mode"]


class Scorer:
    """Embeds prompts and images into one space and compares them by cosine similarity.

    `model` is an open_clip model (CLIP, CustomTextCLIP, ...) carrying its preprocessing config as open_clip
    sets it; `bf16` runs the encoders under bf16 autocast; `batch_size` caps how many items go through at once.
    The Scorer neither freezes nor switches the model's mode: `clip_rerank.load` hands it a frozen
    eval-mode model, a training loop may wrap its own.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        architecture: str = "",
        bf16: bool = False,
        batch_size: int = 256,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.architecture = model, tokenizer, architecture
        self.bf16, self.batch_size = bf16, batch_size
        preprocess = open_clip.get_model_preprocess_cfg(model)
        size = preprocess["size"]
        # (height, width) of the model's image input; `encode_images` resizes to it
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode = preprocess.get("resize_mode", "shortest")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; open_clip uses one of {RESIZE_MODES}")
        self.interpolation = "bilinear" if preprocess.get("interpolation") == "bilinear" else "bicubic"
        self.fill = preprocess.get("fill_color", 0) / 255
        self.mean = torch.tensor(_per_channel(preprocess["mean"]))
        self.std = torch.tensor(_per_channel(preprocess["std"]))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def embed_dim(self) -> int:
        return self.encode_text([""]).shape[-1]

    def tokenize(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> LongTensor [N, context_length] on the model's device (too long ones are truncated)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
            raise ValueError("prompts must be a non-empty list of strings")
        return self.tokenizer(prompts).to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1], any size -> the model's input, as open_clip's own PIL preprocessing makes
        it (up to PIL's rounding to uint8): resized (by default: shortest side to fit, then centre-cropped) with
        antialiasing, then mean/std normalised. Differentiable; bicubic overshoot past [0, 1] at sharp edges is
        not clipped, so no pixel loses its gradient."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] in [-1, 1], got shape {list(images.shape)}")
        pixels = (images.to(self.device, torch.float32) + 1) / 2  # [0, 1], what ToTensor gives open_clip
        pixels = self._resize(pixels)
        mean, std = (rearrange(v.to(self.device), "c -> 1 c 1 1") for v in (self.mean, self.std))
        return (pixels - mean) / std

    def encode_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> unit-length embeddings [N, D] (float32, no gradients)."""
        tokens = self.tokenize(prompts)
        with torch.no_grad(), self._autocast():
            features = [self.model.encode_text(batch) for batch in tokens.split(self.batch_size)]
        return F.normalize(torch.cat(features).float(), dim=-1)

    def encode_images(self, images: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1], any size -> unit-length embeddings [B, D] (float32).

        With `grad=True` the result is differentiable with respect to `images` (the optimiser's path);
        by default no graph is built.
        """
        if len(images) == 0:
            raise ValueError("no images to encode: images has batch size 0")
        with contextlib.nullcontext() if grad else torch.no_grad(), self._autocast():
            features = [self.model.encode_image(self.preprocess(batch)) for batch in images.split(self.batch_size)]
        return F.normalize(torch.cat(features).float(), dim=-1)

    def score(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B] between `prompt` and each image."""
        return self.encode_images(images) @ self.encode_text([prompt])[0]

    def rerank(self, prompt: str, images: torch.Tensor, keep: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The `keep` images (all by default) that match `prompt` best: (indices LongTensor [keep], scores [keep]),
        best first; equal scores keep their input order."""
        scores = self.score(prompt, images)
        keep = len(scores) if keep is None else keep
        if not 1 <= keep <= len(scores):
            raise ValueError(f"keep must be between 1 and the number of images ({len(scores)}), got {keep}")
        best_first = torch.sort(scores, descending=True, stable=True)
        return best_first.indices[:keep], best_first.values[:keep]

    def _resize(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        target_height, target_width = self.image_size
        if self.resize_mode == "squash":
            return self._interpolate(pixels, (target_height, target_width))
        # shortest: scale until the image covers the target, then crop; longest: until it fits, then pad.
        pick = max if self.resize_mode == "shortest" else min
        scale = pick(target_height / height, target_width / width)
        pixels = self._interpolate(pixels, (round(height * scale), round(width * scale)))
        return _center_crop_or_pad(pixels, (target_height, target_width), self.fill)

    def _interpolate(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) == size:
            return pixels
        return F.interpolate(pixels, size=size, mode=self.interpolation, align_corners=False, antialias=True)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def _per_channel(value: float | Sequence[float]) -> list[float]:
    return [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]


def _center_crop_or_pad(pixels: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Centre `pixels` in a `size` frame: negative padding crops, positive padding adds `fill`."""
    (height, width), (target_height, target_width) = pixels.shape[-2:], size
    top, left = (target_height - height) // 2, (target_width - width) // 2
    bottom, right = target_height - height - top, target_width - width - left
    if top == bottom == left == right == 0:
        return pixels
    return F.pad(pixels, (left, right, top, bottom), value=fill)
