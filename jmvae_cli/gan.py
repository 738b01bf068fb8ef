"""Adversarial training for sharper faces, as the paper combines its models with a GAN (VAE-GAN style).

We use the authors' simpler variant, not Larsen et al.'s feature-space reconstruction: the pixel likelihood stays
the reconstruction term and an adversarial term is added for the image decoder. Keeping the likelihood keeps every
bound of evaluate.py meaningful for GAN-trained models, which the paper also reports.

Per batch (train.py): the VAE's loss plus `weight` times the generator's non-saturating loss on decoded means (of
reconstructions from q(z|x,w) and of samples from the prior), then one discriminator update on real faces against
those (detached) fakes. The discriminator uses spectral normalisation, which keeps it Lipschitz and the game
stable without batch statistics.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm


class Discriminator(nn.Module):
    """x (B, 3, 64, 64) -> a real/fake logit (B,)."""

    def __init__(self, width: int = 64, image_size: int = 64):
        super().__init__()
        layers, c = [], 3
        for i in range(4):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [spectral_norm(nn.Conv2d(c, width * 2**i, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c = width * 2**i
        self.convs = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Linear(c * (image_size // 16) ** 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(x).flatten(1)).float().squeeze(1)


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_fake).mean()  # non-saturating: -log D(fake)


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
