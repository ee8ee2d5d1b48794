"""VQGAN-CLIP: steer a VQGAN latent by gradient descent until CLIP sees the prompts in augmented cutouts of it.

from optimize import OptimizeSettings, optimize, parse_prompts
result = optimize(vqgan, scorer, parse_prompts("a red circle:1|a blue square:-0.5"), OptimizeSettings())
"""

from optimize.cutouts import Augmentations, Cutouts
from optimize.loop import CodebookSpace, OptimizeResult, OptimizeSettings, StepInfo, optimize
from optimize.prompts import (
    ImagePrompt,
    NoisePrompt,
    Prompt,
    Target,
    TextPrompt,
    parse_image_prompt,
    parse_noise_prompt,
    parse_prompts,
    spherical_distance,
)

__all__ = [
    "Augmentations",
    "CodebookSpace",
    "Cutouts",
    "ImagePrompt",
    "NoisePrompt",
    "OptimizeResult",
    "OptimizeSettings",
    "Prompt",
    "StepInfo",
    "Target",
    "TextPrompt",
    "optimize",
    "parse_image_prompt",
    "parse_noise_prompt",
    "parse_prompts",
    "spherical_distance",
]
