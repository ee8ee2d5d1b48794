"""LPIPS perceptual loss (VGG16 backbone) for VQGAN training.

The `lpips` package ships the linear heads; the VGG16 ImageNet weights are torchvision's file
`vgg16-397923af.pth`. This module never downloads: it builds lpips' network with an uninitialised
backbone and loads the VGG16 weights itself, from torchvision's cache folder
(`$TORCH_HOME/hub/checkpoints/`) or from a path you give. Without the file it says where to put it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

RANDOM_BACKBONE = "random"  # tests only: exercises the code path with an untrained VGG16


def vgg16_weights_path() -> Path:
    """Where torchvision keeps the VGG16 ImageNet weights (respects $TORCH_HOME)."""
    from torchvision.models import VGG16_Weights

    filename = VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


class LPIPSLoss(nn.Module):
    """LPIPS distance between images in [-1, 1]; `forward(x, y)` returns the batch mean.

    backbone_weights: None reads torchvision's cached VGG16 file, a path reads that file, and
    "random" (tests only) keeps a randomly initialised backbone. The network is frozen and always
    in eval mode (lpips' dropout stays off even while the training module is in train mode).
    """

    def __init__(self, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        import lpips

        weights_file = None
        if backbone_weights != RANDOM_BACKBONE:
            weights_file = Path(backbone_weights) if backbone_weights is not None else vgg16_weights_path()
            if not weights_file.is_file():
                raise FileNotFoundError(
                    f"LPIPS needs the VGG16 ImageNet weights {weights_file.name}, not found at {weights_file}: "
                    f"put the file in {weights_file.parent}/ (or set TORCH_HOME, or pass its path), "
                    f"or set perceptual_weight: 0 to train without the perceptual loss"
                )
        # pnet_rand=True: lpips builds VGG16 without asking torchvision for (downloadable) weights;
        # it does so through torchvision's deprecated `pretrained=` argument, hence the filter.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*", category=UserWarning)
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if weights_file is not None:
            _load_vgg16_features(self.net.net, weights_file)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x, y).mean()


def _load_vgg16_features(backbone: nn.Module, weights_file: Path) -> None:
    """Load torchvision's VGG16 `features.{i}.*` weights into lpips' slices, which keep the index i as
    their child names (slice1 holds features 0-3, slice2 4-8, ...)."""
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    layers = nn.ModuleDict({name: layer for piece in backbone.children() for name, layer in piece.named_children()})
    wanted = {f"features.{key}" for key in layers.state_dict()}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(
            f"{weights_file} is not torchvision's VGG16 weights (missing {', '.join(missing[:3])}); "
            f"use vgg16-397923af.pth"
        )
    layers.load_state_dict({key.removeprefix("features."): state[key] for key in wanted}, strict=True)
