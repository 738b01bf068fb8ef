"""The paper's comparison models, built from the same networks as the JMVAE where they coincide, and the plain
attribute classifier that scores generated faces.

    vae         Kingma & Welling: q(z|x), p(z) = N(0, I), p(x|z)                         models p(x)
    cvae        Sohn et al. 2015: q(z|x,w), prior p(z|w), p(x|z,w)                        models p(x|w)
    cmma        Pandey & Dukkipati 2016: q(z|x), prior p(z|w), p(x|z)                     models p(x|w)
    classifier  a CNN from x to attribute logits, trained on real faces only

Loss terms are in nats per example, as in model.py; 'elbo' is the bound on log p(x) (vae) or log p(x|w).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from jmvae_cli.model import (
    JMVAE,
    Gaussian,
    ImageDecoder,
    ImageFeatures,
    JMVAEConfig,
    discretized_logistic_log_prob,
    kl_gaussians,
    kl_standard_normal,
    mlp,
)


def gaussian_head(n_in: int, hidden: int, latent: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * latent)
    )


def as_gaussian(h: torch.Tensor) -> Gaussian:
    mu, logvar = h.float().chunk(2, dim=-1)  # (B, Z) each
    return Gaussian(mu, logvar.clamp(-12.0, 8.0))


class ImageVAE(nn.Module):
    """What VAE and CMMA share: q(z|x) on the JMVAE's image trunk and p(x|z)."""

    infers_attributes = False

    def __init__(self, cfg: JMVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.image_features = ImageFeatures(cfg)
        self.enc_x = gaussian_head(cfg.image_features, cfg.joint_hidden, cfg.latent_dim)
        self.dec_x = ImageDecoder(cfg)

    def q_x(self, x: torch.Tensor) -> Gaussian:
        return as_gaussian(self.enc_x(self.image_features(x)))

    def log_px(self, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        mean, log_scale = self.dec_x(z)
        return discretized_logistic_log_prob(x.float(), mean, log_scale)  # (B,)

    @torch.no_grad()
    def images_from_z(self, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.dec_x(z)[0]

    def _terms(self, x: torch.Tensor, q: Gaussian, kl: torch.Tensor, beta: float, w=None) -> dict[str, torch.Tensor]:
        rec_x = -self.log_px(x, q.sample(), w).mean()
        kl = kl.mean()
        return {"loss": rec_x + beta * kl, "rec_x": rec_x, "kl": kl, "elbo": -(rec_x + kl)}


class VAE(ImageVAE):
    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        q = self.q_x(x)
        return self._terms(x, q, kl_standard_normal(q), beta)

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return [self.images_from_z(self.q_x(x).mu)]


class CMMA(ImageVAE):
    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        self.prior_w = mlp(cfg.n_attrs, cfg.attr_hidden, 2 * cfg.latent_dim)  # p(z|w)

    def p_z_given_w(self, w: torch.Tensor) -> Gaussian:
        return as_gaussian(self.prior_w(w))

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        q = self.q_x(x)
        return self._terms(x, q, kl_gaussians(q, self.p_z_given_w(w)), beta)

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return [self.images_from_z(self.q_x(x).mu), self.images_from_z(self.p_z_given_w(w).mu)]


class CVAE(ImageVAE):
    """The decoder sees w beside z, so the image decoder's input is Z + A wide."""

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        A, H = cfg.n_attrs, cfg.attr_hidden
        self.joint_attr = mlp(A, H)
        self.enc_x = gaussian_head(cfg.image_features + H, cfg.joint_hidden, cfg.latent_dim)  # q(z|x,w)
        self.prior_w = mlp(A, H, 2 * cfg.latent_dim)  # p(z|w)
        self.dec_x = ImageDecoder(JMVAEConfig(**{**cfg.to_dict(), "latent_dim": cfg.latent_dim + A}))  # p(x|z,w)

    def q_xw(self, x: torch.Tensor, w: torch.Tensor) -> Gaussian:
        return as_gaussian(self.enc_x(torch.cat([self.image_features(x), self.joint_attr(w)], dim=1)))

    def p_z_given_w(self, w: torch.Tensor) -> Gaussian:
        return as_gaussian(self.prior_w(w))

    def log_px(self, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        mean, log_scale = self.dec_x(torch.cat([z, w.to(z.dtype)], dim=1))
        return discretized_logistic_log_prob(x.float(), mean, log_scale)  # (B,)

    @torch.no_grad()
    def images_from_z(self, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.dec_x(torch.cat([z, w.to(z.dtype)], dim=1))[0]

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        q = self.q_xw(x, w)
        return self._terms(x, q, kl_gaussians(q, self.p_z_given_w(w)), beta, w)

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return [self.images_from_z(self.q_xw(x, w).mu, w), self.images_from_z(self.p_z_given_w(w).mu, w)]


class AttributeClassifier(nn.Module):
    """x -> attribute logits. Trained on real faces alone, it judges whether generated faces show what was asked
    for (attr->img coherence), and its features give the Fréchet distance between generated and real faces."""

    infers_attributes = True

    def __init__(self, cfg: JMVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.image_features = ImageFeatures(cfg)
        self.head = nn.Linear(cfg.image_features, cfg.n_attrs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_features(x).float()  # (B, F)

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        rec_w = F.binary_cross_entropy_with_logits(self.head(self.image_features(x)).float(), w, reduction="none")
        rec_w = rec_w.sum(-1).mean()
        return {"loss": rec_w, "rec_w": rec_w}

    @torch.no_grad()
    def attrs_from_images(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.image_features(x)).float())

    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return []


def build(cfg: JMVAEConfig) -> nn.Module:
    """Any model of this package, from its config."""
    kinds = {"jmvae": JMVAE, "vae": VAE, "cvae": CVAE, "cmma": CMMA, "classifier": AttributeClassifier}
    return kinds[cfg.model](cfg)
