"""Prompts for VQGAN-CLIP: what the image should look like, how strongly, and when to stop pulling.

Three kinds of prompt, each with a weight (negative: the image is pushed away from it) and an
optional stop threshold:

    "a red circle:1|a blue square:-0.5"   text prompts, `|`-separated, each TEXT[:WEIGHT[:STOP]]
    "photos/cat.png:0.5"                  an image prompt, PATH[:WEIGHT[:STOP]]
    "7:0.3"                               a noise prompt, SEED[:WEIGHT[:STOP]]: a random direction in CLIP space

Once embedded (by the loop, which owns the CLIP model) a prompt becomes a `Target`: its embeddings
and the loss `weight · mean spherical distance` to the image's cutout embeddings.

The stop threshold switches a prompt's gradient off while its goal is met: a positive prompt stops
pulling once its distance is below `stop`, a negative one stops pushing once its distance is above
`stop`. The loss value still counts the prompt, so the curve stays comparable between runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

SYNTAX = (
    "TEXT[:WEIGHT[:STOP]], several separated by '|', e.g. 'a red circle:1|a blue square:-0.5' "
    "(the text itself cannot hold ':' or '|')"
)


@dataclass(frozen=True)
class TextPrompt:
    text: str
    weight: float = 1.0
    stop: float | None = None


@dataclass(frozen=True)
class ImagePrompt:
    path: Path
    weight: float = 1.0
    stop: float | None = None


@dataclass(frozen=True)
class NoisePrompt:
    seed: int
    weight: float = 1.0
    stop: float | None = None


Prompt = TextPrompt | ImagePrompt | NoisePrompt


def _number(field: str, what: str, spec: str, syntax: str) -> float:
    try:
        value = float(field)
    except ValueError:
        raise ValueError(f"{what} {field!r} in {spec!r} is not a number; write {syntax}") from None
    if math.isnan(value):
        raise ValueError(f"{what} in {spec!r} is NaN; give a number")
    return value


def _split_weight_stop(spec: str, syntax: str) -> tuple[str, float, float | None]:
    """'head:weight:stop' -> (head, weight, stop); the weight and stop are optional, the head is not."""
    head, *numbers = spec.rsplit(":", 2)
    head = head.strip()
    if not head:
        raise ValueError(f"prompt {spec!r} has nothing before its weight; write {syntax}")
    weight = _number(numbers[0], "weight", spec, syntax) if numbers else 1.0
    stop = _number(numbers[1], "stop", spec, syntax) if len(numbers) > 1 else None
    if weight == 0 or math.isinf(weight):
        raise ValueError(
            f"weight {numbers[0]!r} in {spec!r} must be a finite non-zero number "
            f"(negative pushes the image away); drop the prompt instead of weighing it 0"
        )
    return head, weight, stop


def parse_prompts(text: str) -> list[TextPrompt]:
    """'a red circle:1|a blue square:-0.5:0.9' -> text prompts. A prompt's text cannot contain ':' or '|'."""
    if not text.strip():
        raise ValueError(f"the prompt is empty; write {SYNTAX}")
    prompts = []
    for part in text.split("|"):
        if not part.strip():
            raise ValueError(f"empty prompt between '|' in {text!r}; write {SYNTAX}")
        head, weight, stop = _split_weight_stop(part, SYNTAX)
        prompts.append(TextPrompt(head, weight, stop))
    return prompts


def parse_image_prompt(spec: str) -> ImagePrompt:
    """'path/to/image.png:0.5' -> an image prompt. A path that exists as given is taken whole (it may hold ':')."""
    if Path(spec).is_file():
        return ImagePrompt(Path(spec))
    path, weight, stop = _split_weight_stop(spec, "PATH[:WEIGHT[:STOP]], e.g. 'cat.png:0.5'")
    return ImagePrompt(Path(path), weight, stop)


def parse_noise_prompt(spec: str) -> NoisePrompt:
    """'7:0.3' -> a noise prompt: seed 7, weight 0.3."""
    syntax = "SEED[:WEIGHT[:STOP]] with an integer seed, e.g. '7:0.3'"
    seed, weight, stop = _split_weight_stop(spec, syntax)
    try:
        return NoisePrompt(int(seed), weight, stop)
    except ValueError:
        raise ValueError(f"noise prompt seed {seed!r} in {spec!r} is not an integer; write {syntax}") from None


def describe_prompt(prompt: Prompt) -> str:
    """A short label for progress output and run.json."""
    match prompt:
        case TextPrompt():
            what = prompt.text
        case ImagePrompt():
            what = f"image {prompt.path}"
        case NoisePrompt():
            what = f"noise {prompt.seed}"
    stop = "" if prompt.stop is None else f":{prompt.stop:g}"
    return f"{what}:{prompt.weight:g}{stop}"


def spherical_distance(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise 2·arcsin(‖a−b‖/2)² between rows of a [N, D] and b [M, D], after normalising both: [N, M].

    For unit vectors ‖a−b‖/2 = sin(θ/2), so this is θ²/2 with θ the angle between them: like
    1 − cos θ near the target, but its gradient does not vanish as the angle grows toward π.
    """
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    chord = (rearrange(a, "n d -> n 1 d") - rearrange(b, "m d -> 1 m d")).norm(dim=-1)
    return 2 * torch.arcsin((chord / 2).clamp(max=1.0)).pow(2)


@dataclass
class Target:
    """An embedded prompt: its CLIP embeddings [K, D] (several for an image prompt's cutouts) and its terms."""

    label: str
    embeddings: Tensor
    weight: float
    stop: float | None = None

    def loss(self, image_embeddings: Tensor) -> Tensor:
        """weight · mean distance between the image's embeddings [N, D] and the prompt's, with the stop applied."""
        distance = spherical_distance(image_embeddings, self.embeddings)
        if self.stop is not None:
            met = distance <= self.stop if self.weight > 0 else distance >= self.stop
            # Where the goal is met the term keeps its value but passes no gradient.
            distance = torch.where(met, distance.detach(), distance)
        return self.weight * distance.mean()
