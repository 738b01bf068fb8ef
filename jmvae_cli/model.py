"""The joint multimodal VAE (Suzuki, Nakayama & Matsuo 2016), for 64x64 faces x and binary attributes w.

    p(z) = N(0, I)          p(x|z): conv decoder, discretised logistic over 8-bit pixels
    q(z|x,w): joint encoder p(w|z): MLP, Bernoulli per attribute
    q(z|x), q(z|w): unimodal encoders, pulled towards q(z|x,w) by JMVAE-kl's extra KL terms

Images enter as floats in [-1, 1] (uint8 / 127.5 - 1), attributes as {0, 1} floats. Every loss below is in nats
per example, summed over the dimensions of a modality and averaged over the batch.

Beside the JMVAE, what every model of the package builds on: its config, the distributions, the networks, and
Model, the interface its callers use. baselines.py holds the paper's other models; registry.py lists them all.
"""

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from jmvae_cli import registry
from jmvae_cli.attributes import binarize


@dataclass
class JMVAEConfig:
    """Rebuilds any model of this package: `model` names which (registry.py), the rest sizes and trains it.

    One flat config for every model, saved as a model file's "config". The widths size the networks that the JMVAE
    and its baselines share (ImageFeatures, ImageDecoder, the attribute MLPs, the Gaussian heads), so that they are
    compared at equal size; objective, alpha and cross_weight are the JMVAE's alone, and other models ignore them.
    A new model size is new values here, not new code.
    """

    model: str = "jmvae"
    n_attrs: int = 40
    latent_dim: int = 128
    image_size: int = 64
    channels: tuple[int, ...] = (64, 128, 256, 256)  # the authors' conv widths, 4x4 kernels, stride 2
    image_features: int = 512  # dense layer on the flattened conv features, shared by q(z|x,w) and q(z|x)
    attr_hidden: int = 512  # the authors' 512-512 attribute MLPs
    joint_hidden: int = 1024  # the authors' dense joint layer
    decoder_width: float = 1.0  # p(x|z)'s conv widths are the encoder's times this: a decoder can grow alone
    objective: str = "jmvae-kl"
    alpha: float = 0.1  # weight of JMVAE-kl's unimodal KL terms (the paper's value)
    # Weight of a cross-modal term -E_q(z|x)[log p(w|z)] added to JMVAE-kl (as in MMVAE, Shi et al. 2019). Eq. 2's
    # KL only asks q(z|x) to cover q(z|x,w); the mean of such a broad q need not decode to the likeliest w, and
    # img2attr reads w from exactly that mean. 0 is the paper's objective.
    cross_weight: float = 0.0
    min_log_scale: float = -7.0  # floor on the pixel logistic's log-scale: keeps the bin mass finite

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.model not in registry.names():
            raise ValueError(f"model must be one of {', '.join(registry.names())}, not {self.model!r}")
        if self.objective not in registry.OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(registry.OBJECTIVES)}, not {self.objective!r}")
        if self.image_size != 2 ** len(self.channels) * 4:
            raise ValueError(f"image_size {self.image_size} needs {len(self.channels)} stride-2 layers to reach 4x4")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JMVAEConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------- distributions


@dataclass
class Gaussian:
    """A diagonal Gaussian, the form of every q(z|.) here."""

    mu: torch.Tensor  # (B, Z)
    logvar: torch.Tensor  # (B, Z)

    @classmethod
    def from_head(cls, h: torch.Tensor) -> "Gaussian":
        """The Gaussian that an encoder's (B, 2Z) output stands for: mean, then log-variance, clamped so that its
        exp() neither underflows to a zero variance nor overflows."""
        mu, logvar = h.float().chunk(2, dim=-1)  # (B, Z) each
        return cls(mu, logvar.clamp(-12.0, 8.0))

    def sample(self) -> torch.Tensor:
        return self.mu + torch.randn_like(self.mu) * torch.exp(0.5 * self.logvar)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) summed over latent dims; z may carry extra leading sample dims: (K, B, Z) -> (K, B)."""
        return -0.5 * (math.log(2 * math.pi) + self.logvar + (z - self.mu) ** 2 * torch.exp(-self.logvar)).sum(-1)


def kl_gaussians(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) in closed form, summed over latent dims: (B,)."""
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mu - p.mu) ** 2) / p.logvar.exp() - 1).sum(-1)


def kl_standard_normal(q: Gaussian) -> torch.Tensor:
    """KL(q || N(0, I)), summed over latent dims: (B,)."""
    return 0.5 * (q.logvar.exp() + q.mu**2 - 1 - q.logvar).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + z**2).sum(-1)


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of 8-bit pixels under a logistic discretised into 256 bins on [-1, 1], summed per image: (...,).

    A proper probability mass over pixel values, so -log p(x|z) is an honest number of nats (PixelCNN++'s
    likelihood with one mixture component). The outermost bins take the tails, so the 256 masses sum to one.
    """
    centered = x - mean  # (..., 3, H, W)
    inv_s = torch.exp(-log_scale)
    cdf_plus = torch.sigmoid(inv_s * (centered + 1 / 255))
    cdf_min = torch.sigmoid(inv_s * (centered - 1 / 255))
    log_cdf_plus = F.logsigmoid(inv_s * (centered + 1 / 255))  # log mass of the bottom bin, x = -1
    log_one_minus_cdf_min = -F.softplus(inv_s * (centered - 1 / 255))  # log mass of the top bin, x = 1
    mid = inv_s * centered
    # Where the bin is so narrow against the scale that cdf_plus - cdf_min underflows, use the density times width.
    log_pdf_mid = mid - log_scale - 2 * F.softplus(mid) + math.log(2 / 255)
    cdf_delta = cdf_plus - cdf_min
    log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp_min(1e-12)), log_pdf_mid)
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_mid))
    return log_probs.flatten(-3).sum(-1)


# ----------------------------------------------------------------------------- networks


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def deconv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def mlp(n_in: int, hidden: int, n_out: int | None = None) -> nn.Sequential:
    layers = [nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    layers += [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    if n_out is not None:
        layers.append(nn.Linear(hidden, n_out))
    return nn.Sequential(*layers)


def gaussian_head(n_in: int, hidden: int, latent: int) -> nn.Sequential:
    """A hidden layer to the 2 * latent numbers that Gaussian.from_head reads."""
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * latent)
    )


class ImageFeatures(nn.Module):
    """x (B, 3, 64, 64) -> (B, image_features). One trunk feeds both q(z|x,w) and q(z|x): JMVAE-kl pulls the two
    posteriors together anyway, and sharing halves the encoder's cost per step and its size on disk."""

    def __init__(self, cfg: JMVAEConfig):
        super().__init__()
        chans = (3, *cfg.channels)
        self.convs = nn.Sequential(*[conv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.fc = nn.Sequential(
            nn.Linear(cfg.channels[-1] * 4 * 4, cfg.image_features), nn.BatchNorm1d(cfg.image_features), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x)  # (B, C, 4, 4)
        return self.fc(h.flatten(1))  # (B, F)


class ImageDecoder(nn.Module):
    """z (B, Z) -> per-pixel logistic mean and log-scale, each (B, 3, 64, 64). A decoder that sees more than z (CVAE's
    z and w) takes in_dim inputs instead of latent_dim."""

    def __init__(self, cfg: JMVAEConfig, in_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        chans = tuple(round(c * cfg.decoder_width) for c in reversed(cfg.channels))  # 256, 256, 128, 64 at width 1
        in_dim = cfg.latent_dim if in_dim is None else in_dim
        self.fc = nn.Sequential(nn.Linear(in_dim, chans[0] * 4 * 4, bias=False), nn.BatchNorm1d(chans[0] * 16))
        self.deconvs = nn.Sequential(*[deconv_block(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.out = nn.ConvTranspose2d(chans[-1], 6, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc(z)).view(z.shape[0], -1, 4, 4)  # (B, C, 4, 4)
        h = self.out(self.deconvs(h))  # (B, 6, 64, 64)
        mean, log_scale = h.float().chunk(2, dim=1)  # the likelihood is always computed in fp32
        return torch.tanh(mean), log_scale.clamp_min(self.cfg.min_log_scale)


# ----------------------------------------------------------------------------- what every model offers


class Model(nn.Module):
    """What callers may ask of any model in the registry (registry.py), instead of checking its name.

    Every model:
        cfg                     its JMVAEConfig; cfg.model is its name in the registry
        forward(x, w, beta)     training's loss terms, nats per example: "loss" is minimised; "elbo", where the model
                                has a bound, gives validation its bits per dimension
        grid_rows(x, w)         training's sample picture: image rows (B, 3, H, W) shown under the faces, maybe none
    If infers_attributes:
        attrs_from_images(x)    attribute probabilities for images: (B, A)
    The pieces of the likelihood bounds (likelihood.py); a model without posteriors has no likelihood:
        posteriors(x, w)        the proposals q(z|.) it has, by name: "qxw" for q(z|x,w), "qx" for q(z|x)
        prior(w)                p(z|w) where the prior depends on w, so that the bounds are on log p(x|w);
                                None where it is N(0, I) and the bounds are on log p(x)
        log_px(x, z, w)         log p(x|z), or log p(x|z,w) where the decoder sees w: (B,)
        train_only(part)        freeze every module but `part` (a name such as "dec_x"), for fine-tuning it alone
    If models_attributes (p(w|z) and q(z|w): the bounds add log p(x,w) and log p(w)):
        log_pw(w, z)            log p(w|z): (B,)
        q_w(w)                  q(z|w)
    """

    infers_attributes: ClassVar[bool] = False
    models_attributes: ClassVar[bool] = False

    def __init__(self, cfg: JMVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.trained_part: str | None = None  # set by train_only

    def train_only(self, part: str) -> list[nn.Parameter]:
        """Freeze every module but the child `part`; its parameters, for the optimizer. The frozen modules stay in
        eval mode whatever train() is asked: their batch-norm statistics are weights too, and a fine-tune of the
        image decoder must leave img2attr's route exactly as it was."""
        trained = getattr(self, part, None)
        if not isinstance(trained, nn.Module):
            raise ValueError(f"a {self.cfg.model} model has no part named {part!r}")
        self.requires_grad_(False)
        trained.requires_grad_(True)
        self.trained_part = part
        self.train(self.training)
        return list(trained.parameters())

    def train(self, mode: bool = True) -> "Model":
        super().train(mode)
        if self.trained_part is not None:
            for name, child in self.named_children():
                if name != self.trained_part:
                    child.eval()
        return self

    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        return []

    def posteriors(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, Gaussian]:
        return {}

    def prior(self, w: torch.Tensor) -> Gaussian | None:
        return None


class JMVAE(Model):
    infers_attributes = True
    models_attributes = True

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        Z, A, H = cfg.latent_dim, cfg.n_attrs, cfg.attr_hidden
        self.image_features = ImageFeatures(cfg)
        self.joint_attr = mlp(A, H)  # w's features inside q(z|x,w)
        self.joint = gaussian_head(cfg.image_features + H, cfg.joint_hidden, Z)
        if cfg.objective == "jmvae-kl":  # JMVAE-zero has no unimodal encoders
            # q(z|x): its own hidden layer on the shared trunk, as deep as the joint path it must imitate
            self.enc_x = gaussian_head(cfg.image_features, cfg.joint_hidden, Z)
            self.enc_w = mlp(A, H, 2 * Z)  # q(z|w)
        self.dec_x = ImageDecoder(cfg)  # p(x|z)
        self.dec_w = mlp(Z, H, A)  # p(w|z), logits

    # --- encoders

    def _joint(self, feats: torch.Tensor, w: torch.Tensor) -> Gaussian:
        return Gaussian.from_head(self.joint(torch.cat([feats, self.joint_attr(w)], dim=1)))

    def q_xw(self, x: torch.Tensor, w: torch.Tensor) -> Gaussian:
        return self._joint(self.image_features(x), w)

    def q_xw_blank(self, x: torch.Tensor) -> Gaussian:
        """q(z|x, w=0): the joint encoder with the attributes blanked, JMVAE-zero's way to encode an image alone."""
        w = torch.zeros(x.shape[0], self.cfg.n_attrs, device=x.device, dtype=x.dtype)  # (B, A)
        return self._joint(self.image_features(x), w)

    def q_x(self, x: torch.Tensor) -> Gaussian:
        """q(z|x); JMVAE-zero has no unimodal encoder and uses q_xw_blank instead."""
        if self.cfg.objective == "jmvae-zero":
            return self.q_xw_blank(x)
        return Gaussian.from_head(self.enc_x(self.image_features(x)))

    def q_w(self, w: torch.Tensor) -> Gaussian:
        """q(z|w); for JMVAE-zero the joint encoder with a blank (mid-grey, 0 in [-1, 1]) image."""
        if self.cfg.objective == "jmvae-zero":
            s = self.cfg.image_size
            return self.q_xw(torch.zeros(w.shape[0], 3, s, s, device=w.device, dtype=w.dtype), w)
        return Gaussian.from_head(self.enc_w(w))

    def posteriors(self, x: torch.Tensor, w: torch.Tensor) -> dict[str, Gaussian]:
        return {"qxw": self.q_xw(x, w), "qx": self.q_x(x)}

    # --- decoders

    def decode_x(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dec_x(z)

    def decode_w(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_w(z).float()  # (B, A) logits

    def log_px(self, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z); the decoder does not see w."""
        mean, log_scale = self.decode_x(z)
        return discretized_logistic_log_prob(x.float(), mean, log_scale)  # (B,)

    def log_pw(self, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.decode_w(z), w.float(), reduction="none").sum(-1)  # (B,)

    # --- training objective

    def forward(self, x: torch.Tensor, w: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
        """Loss terms for a batch; 'loss' is the negative of Eq. 1 (jmvae-zero) or Eq. 2 (jmvae-kl), with the
        prior KL scaled by the warm-up factor beta, plus cfg.cross_weight times the cross-modal term rec_w_x."""
        feats = self.image_features(x)  # (B, F)
        q = self._joint(feats, w)
        z = q.sample()  # (B, Z)
        rec_x = -self.log_px(x, z).mean()
        rec_w = -self.log_pw(w, z).mean()
        kl = kl_standard_normal(q).mean()
        terms = {"rec_x": rec_x, "rec_w": rec_w, "kl": kl}
        loss = rec_x + rec_w + beta * kl
        if self.cfg.objective == "jmvae-kl":
            q_x = Gaussian.from_head(self.enc_x(feats))
            terms["kl_x"] = kl_gaussians(q, q_x).mean()
            terms["kl_w"] = kl_gaussians(q, Gaussian.from_head(self.enc_w(w))).mean()
            loss = loss + self.cfg.alpha * (terms["kl_x"] + terms["kl_w"])
            terms["rec_w_x"] = -self.log_pw(w, q_x.sample()).mean()  # img->attr through a sample of q(z|x)
            loss = loss + self.cfg.cross_weight * terms["rec_w_x"]
        terms["loss"] = loss
        terms["elbo"] = -(rec_x + rec_w + kl)
        return terms

    # --- inference helpers used by translation and evaluation

    @torch.no_grad()
    def attrs_from_images(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute probabilities p(w|z) at the mean of q(z|x): (B, A)."""
        return self.attrs_from_z(self.q_x(x).mu)

    @torch.no_grad()
    def attrs_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """Attribute probabilities p(w|z): (B, A)."""
        return torch.sigmoid(self.decode_w(z))

    @torch.no_grad()
    def images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image for each z, in [-1, 1]: (B, 3, 64, 64)."""
        return self.decode_x(z)[0]

    @torch.no_grad()
    def grid_rows(self, x: torch.Tensor, w: torch.Tensor) -> list[torch.Tensor]:
        """Training's picture: reconstructions via q(z|x,w), image->attributes->image, attributes->image."""
        w_hat = binarize(self.attrs_from_images(x))  # (B, A)
        return [
            self.images_from_z(self.q_xw(x, w).mu),
            self.images_from_z(self.q_w(w_hat).mu),
            self.images_from_z(self.q_w(w).mu),
        ]


# ----------------------------------------------------------------------------- pixels in and out


def pixels_to_input(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]. The permute of an NHWC tensor is already channels_last
    in memory, which is the layout the convolutions prefer."""
    return u8.permute(0, 3, 1, 2).float() / 127.5 - 1


def output_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
