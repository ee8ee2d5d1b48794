"""Numbers that say how good generated images are, measured with a CLIP `Scorer`.

CLIP score: how well images match their prompts, the mean cosine similarity × 100 (plain cosine, not
clipped at 0 as torchmetrics' CLIPScore does, so a score below 0 stays visible).

FD-CLIP: the Fréchet distance between Gaussians fitted to the CLIP image embeddings of two image
sets, FID's formula on the project's own feature network instead of ImageNet Inception (no pretrained
Inception is available offline). Its numbers are not comparable with published FID values, nor between
different CLIP models. The embeddings are unit-length, so the distance lies in a small range (the mean
term is at most 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from einops import rearrange

from clip_rerank.scorer import Scorer


class ClipScore(NamedTuple):
    mean: float  # mean over images of 100 × cosine(image, its prompt)
    per_image: torch.Tensor  # [B] 100 × cosine of each image with its prompt


def clip_score(scorer: Scorer, prompts: str | Sequence[str], images: torch.Tensor) -> ClipScore:
    """CLIP score of `images` [B,3,H,W] in [-1,1] against one prompt for all or one prompt per image."""
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; give one prompt, or one per image")
    row_of = {prompt: row for row, prompt in enumerate(dict.fromkeys(prompts))}  # embed each distinct prompt once
    text_features = scorer.encode_text(list(row_of))
    prompt_rows = torch.tensor([row_of[prompt] for prompt in prompts], device=text_features.device)
    image_features = scorer.encode_images(images)
    per_image = 100 * (image_features * text_features[prompt_rows]).sum(dim=-1)
    return ClipScore(per_image.mean().item(), per_image)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors [N, D] and [M, D]:

        |mu_a - mu_b|² + Tr(C_a) + Tr(C_b) - 2 Tr((C_a C_b)^½)

    computed in float64. Tr((C_a C_b)^½) is taken as the sum of square roots of the eigenvalues of the
    symmetric matrix C_a^½ C_b C_a^½, which has the same eigenvalues as C_a C_b. That needs no general
    (possibly complex) matrix square root and stays exact when the covariances are singular, which they
    always are with fewer samples than dimensions (rank ≤ N-1): a small-sample FD is finite and ≥ 0 but
    biased upwards, so compare values measured with the same numbers of images.
    """
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"{name} must be [N, D] with N >= 2 samples, got shape {list(features.shape)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(
            f"feature sizes differ: {features_a.shape[1]} vs {features_b.shape[1]}; use one feature network"
        )
    a, b = features_a.detach().double().cpu(), features_b.detach().double().cpu()
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    covariance_a, covariance_b = torch.cov(rearrange(a, "n d -> d n")), torch.cov(rearrange(b, "n d -> d n"))
    root_a = _psd_sqrt(covariance_a)
    cross_eigenvalues = torch.linalg.eigvalsh(root_a @ covariance_b @ root_a).clamp(min=0)
    distance = (
        (mean_a - mean_b).square().sum()
        + covariance_a.trace()
        + covariance_b.trace()
        - 2 * cross_eigenvalues.sqrt().sum()
    )
    return max(distance.item(), 0.0)  # rounding can leave -1e-15 for identical sets


def fd_clip(scorer: Scorer, images_a: torch.Tensor, images_b: torch.Tensor) -> float:
    """FD-CLIP: `frechet_distance` between the CLIP image embeddings of two image sets [N,3,H,W] in [-1,1]."""
    return frechet_distance(scorer.encode_images(images_a), scorer.encode_images(images_b))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues from rounding are zeroed."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
