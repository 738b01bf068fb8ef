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

FINAL_SIZE = 4  # the convolutions halve the image down to 4x4, as the models' encoders do (model.py)
MAX_WIDENING = 8  # channels double per layer up to 8x the first layer's, DCGAN's widest


class Discriminator(nn.Module):
    """x (B, 3, S, S) -> a real/fake logit (B,), for any image size S = 4 * 2^k (64 px: 4 layers)."""

    def __init__(self, width: int = 64, image_size: int = 64):
        super().__init__()
        n_layers = (image_size // FINAL_SIZE).bit_length() - 1
        if FINAL_SIZE * 2**n_layers != image_size:
            raise ValueError(f"the discriminator needs an image size of 4 times a power of 2, not {image_size}")
        layers, c = [], 3
        for i in range(n_layers):  # S -> S/2 -> ... -> 4
            c_out = width * min(2**i, MAX_WIDENING)
            layers += [spectral_norm(nn.Conv2d(c, c_out, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c = c_out
        self.convs = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Linear(c * FINAL_SIZE**2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(x).flatten(1)).float().squeeze(1)  # (B,)


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_fake).mean()  # non-saturating: -log D(fake)


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
