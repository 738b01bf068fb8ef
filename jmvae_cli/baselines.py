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
    Gaussian,
    ImageDecoder,
    ImageFeatures,
    JMVAEConfig,
    Model,
    discretized_logistic_log_prob,
    gaussian_head,
    kl_gaussians,
    kl_standard_normal,
    mlp,
)


class ImageVAE(Model):
    """What VAE and CMMA share: q(z|x) on the JMVAE's image trunk and p(x|z)."""

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        self.image_features = ImageFeatures(cfg)
        self.enc_x = gaussian_head(cfg.image_features, cfg.joint_hidden, cfg.latent_dim)
        self.dec_x = ImageDecoder(cfg)

    def q_x(self, x: torch.Tensor) -> Gaussian:
        return Gaussian.from_head(self.enc_x(self.image_features(x)))

    def posteriors(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, Gaussian]:
        return {"qx": self.q_x(x)}

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

    def prior(self, w: torch.Tensor) -> Gaussian:
        return Gaussian.from_head(self.prior_w(w))

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        q = self.q_x(x)
        return self._terms(x, q, kl_gaussians(q, self.prior(w)), beta)

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return [self.images_from_z(self.q_x(x).mu), self.images_from_z(self.prior(w).mu)]


class CVAE(ImageVAE):
    """The decoder sees w beside z, so the image decoder's input is Z + A wide."""

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        A, H = cfg.n_attrs, cfg.attr_hidden
        self.joint_attr = mlp(A, H)
        self.enc_x = gaussian_head(cfg.image_features + H, cfg.joint_hidden, cfg.latent_dim)  # q(z|x,w)
        self.prior_w = mlp(A, H, 2 * cfg.latent_dim)  # p(z|w)
        self.dec_x = ImageDecoder(cfg, in_dim=cfg.latent_dim + A)  # p(x|z,w)

    def q_xw(self, x: torch.Tensor, w: torch.Tensor) -> Gaussian:
        return Gaussian.from_head(self.enc_x(torch.cat([self.image_features(x), self.joint_attr(w)], dim=1)))

    def posteriors(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, Gaussian]:
        return {"qxw": self.q_xw(x, w)}

    def prior(self, w: torch.Tensor) -> Gaussian:
        return Gaussian.from_head(self.prior_w(w))

    def log_px(self, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        mean, log_scale = self.dec_x(torch.cat([z, w.to(z.dtype)], dim=1))
        return discretized_logistic_log_prob(x.float(), mean, log_scale)  # (B,)

    @torch.no_grad()
    def images_from_z(self, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        return self.dec_x(torch.cat([z, w.to(z.dtype)], dim=1))[0]

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        q = self.q_xw(x, w)
        return self._terms(x, q, kl_gaussians(q, self.prior(w)), beta, w)

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return [self.images_from_z(self.q_xw(x, w).mu, w), self.images_from_z(self.prior(w).mu, w)]


class AttributeClassifier(Model):
    """x -> attribute logits. Trained on real faces alone, it judges whether generated faces show what was asked
    for (attr->img coherence), and its features give the Fréchet distance between generated and real faces. It has
    no latent variable, so no posteriors and no likelihood."""

    infers_attributes = True

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
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
