"""PatchGAN discriminator and the adversarial losses of VQGAN training.

`NLayerDiscriminator` has taming's layout (`main.{N}` keys, as `loss.discriminator.main.{N}` in a
taming checkpoint), so a taming discriminator can be taken over for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix): 4×4 convs, stride 2 for `n_layers` steps then stride 1, BatchNorm and
    LeakyReLU(0.2) between them; one logit per overlapping patch, [B,1,h,w]. Only the first and last
    convs have a bias (BatchNorm's shift makes the others' redundant)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def weights_init(module: nn.Module) -> None:
    """taming's (DCGAN's) init: conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


DISCRIMINATOR_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
}


def discriminator_loss(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The d-loss function named `kind` ("hinge" or "vanilla")."""
    if kind not in DISCRIMINATOR_LOSSES:
        raise ValueError(f"disc_loss is {kind!r}; use one of {', '.join(DISCRIMINATOR_LOSSES)}")
    return DISCRIMINATOR_LOSSES[kind]


def generator_loss(logits_fake: Tensor) -> Tensor:
    """The generator's adversarial loss, -mean(D(fake)), as taming uses with both d-losses."""
    return -logits_fake.mean()


def adaptive_disc_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, clamp: float = 1e4) -> Tensor:
    """‖∇rec‖ / (‖∇gan‖ + 1e-4) at `last_layer`, clamped to [0, clamp] and detached.

    Balances the GAN term against the reconstruction term (VQGAN paper, eq. 7); multiply it by the
    configured disc_weight. Both losses must still have their graphs (it keeps them for backward).
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (gan_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    return weight.clamp(0.0, clamp).detach()
