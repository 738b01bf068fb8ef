"""Test log-likelihoods of the JMVAE and its baselines: the paper's Eqs. 3-5 and Table 1.

Every quantity is a Monte Carlo estimate of log p(data) = log E_q[p(data, z) / q(z)] under some proposal q(z):

    elbo  E_q[log p(data, z) - log q(z)]                 the bound of Eq. 3, estimated with K samples
    iw    log (1/K) sum_k p(data, z_k) / q(z_k)          the importance-weighted bound of Eq. 5

Both are lower bounds on log p(data) in expectation; iw >= elbo for the same samples, and iw rises to log p(data)
as K grows. The estimators here take log densities as callables, so they are tested on models whose likelihood is
known in closed form (tests/test_likelihood.py); `evaluate_likelihoods` applies them to a trained model.

Which bounds a model gets follows from the pieces it has (model.Model), not from its name: one bound per posterior
(q(z|x,w) gives the keys ending _qxw, q(z|x) those ending _qx), on log p(x) under p(z) = N(0, I) or on log p(x|w)
under a learnt prior p(z|w); a model that models attributes too (p(w|z), q(z|w)) adds log p(x,w) and log p(w).

Keys of the result (each is per image, then averaged over the images; see DESCRIPTIONS):
    log_px_elbo_qxw, log_px_iw_qxw        log p(x), proposal q(z|x,w)                           JMVAE
    log_px_elbo_qx, log_px_iw_qx          log p(x), proposal q(z|x) (no attributes needed)      JMVAE, VAE
    log_pxw_elbo, log_pxw_iw              log p(x,w), proposal q(z|x,w) (Eq. 4's first term)    JMVAE
    log_pw_prior_nw                       log mean_i p(w|z_i), z_i ~ p(z), N_w samples          JMVAE
    log_pw_iw_qw                          log p(w), proposal q(z|w), K_w samples                JMVAE
    log_pw_iw_mix                         log p(w), proposal (q(z|w) + p(z)) / 2, K_w samples   JMVAE
    log_px_given_w_paper                  log_pxw_iw - log_pw_prior_nw (Eq. 4 as in the paper)  JMVAE
    log_px_given_w_iw                     log_pxw_iw - log_pw_iw_qw                             JMVAE
    log_px_given_w_mix                    log_pxw_iw - log_pw_iw_mix                            JMVAE
    log_px_given_w_elbo_qxw, ..._iw_qxw   log p(x|w): q(z|x,w), prior p(z|w), p(x|z,w)          CVAE
    log_px_given_w_elbo_qx, ..._iw_qx     log p(x|w): q(z|x), prior p(z|w), p(x|z)              CMMA

The JMVAE's log p(x|w) values are differences of estimates, not bounds: every log p(w) estimate here is low on
average (Jensen: the log of an unbiased estimate of p(w)), by more the larger its variance, and a low log p(w)
pushes log p(x|w) up. The paper's N_w = 10 prior samples are the noisiest. q(z|w) should do better, but it is
only as good a proposal as it is wide: a q(z|w) narrower than the true p(z|w) makes the weights heavy-tailed, and
JMVAE-zero's stand-in (the joint encoder on a blank image) can miss p(z|w) altogether. The mixture with the prior
(defensive importance sampling) is never much worse than either part, so log_px_given_w_mix is the one to set
beside CVAE's and CMMA's bounds. p(w|z) is a small MLP, so the log p(w) estimates take K_w = 1000 samples by
default, against the K samples of the bounds that decode images.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from jmvae_cli.data import FaceData
from jmvae_cli.errors import JmvaeError
from jmvae_cli.model import Gaussian, pixels_to_input, standard_normal_log_prob
from jmvae_cli.runtime import Precision

LogTargets = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # z (n, B, Z) -> {name: log p(data, z) (n, B)}

DESCRIPTIONS = {
    "log_px_elbo_qxw": "log p(x): ELBO (Eq. 3) with proposal q(z|x,w)",
    "log_px_iw_qxw": "log p(x): K-sample importance-weighted bound (Eq. 5) with proposal q(z|x,w)",
    "log_px_elbo_qx": "log p(x): ELBO with proposal q(z|x)",
    "log_px_iw_qx": "log p(x): K-sample importance-weighted bound with proposal q(z|x)",
    "log_pxw_elbo": "log p(x,w): ELBO with proposal q(z|x,w)",
    "log_pxw_iw": "log p(x,w): K-sample importance-weighted bound with proposal q(z|x,w)",
    "log_pw_prior_nw": "log p(w): log mean of p(w|z_i) over N_w prior samples z_i ~ p(z) (the paper's estimate)",
    "log_pw_iw_qw": "log p(w): importance sampling with K_w samples of q(z|w)",
    "log_pw_iw_mix": "log p(w): importance sampling with K_w samples of the mixture (q(z|w) + p(z)) / 2",
    "log_px_given_w_paper": "log p(x|w) (Eq. 4): log_pxw_iw - log_pw_prior_nw",
    "log_px_given_w_iw": "log p(x|w): log_pxw_iw - log_pw_iw_qw",
    "log_px_given_w_mix": "log p(x|w): log_pxw_iw - log_pw_iw_mix",
    "log_px_given_w_elbo_qxw": "log p(x|w): ELBO with proposal q(z|x,w), prior p(z|w)",
    "log_px_given_w_iw_qxw": "log p(x|w): K-sample importance-weighted bound with proposal q(z|x,w), prior p(z|w)",
    "log_px_given_w_elbo_qx": "log p(x|w): ELBO with proposal q(z|x), prior p(z|w)",
    "log_px_given_w_iw_qx": "log p(x|w): K-sample importance-weighted bound with proposal q(z|x), prior p(z|w)",
}
# quantities over w alone; all others are over the image
ATTRIBUTE_KEYS = ("log_pw_prior_nw", "log_pw_iw_qw", "log_pw_iw_mix")


class Bounds(NamedTuple):
    elbo: torch.Tensor  # (B,)
    iw: torch.Tensor  # (B,)


# ----------------------------------------------------------------------------- generic estimators


def standard_normal(batch: int, latent_dim: int, device=None, dtype=torch.float32) -> Gaussian:
    """p(z) = N(0, I) as a proposal: importance sampling from the prior is the paper's estimate of log p(w), and the
    defensive half of the mixture proposal."""
    zeros = torch.zeros(batch, latent_dim, device=device, dtype=dtype)  # (B, Z)
    return Gaussian(zeros, zeros)


@dataclass
class Mixture:
    """An equal-weight mixture of Gaussians over the same batch: defensive importance sampling (Hesterberg 1995)
    mixes the prior into a learnt proposal, which bounds every weight p(w|z)p(z)/proposal(z) by C p(w|z) <= C."""

    components: list[Gaussian]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        logs = torch.stack([c.log_prob(z) for c in self.components])  # (C, n, B)
        return torch.logsumexp(logs, 0) - math.log(len(self.components))  # (n, B)


def draw(proposal: Gaussian | Mixture, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n samples of a proposal for each of its B rows: z (n, B, Z). A mixture picks a component per sample."""
    if isinstance(proposal, Mixture):
        zs = torch.stack([draw(c, n, generator) for c in proposal.components])  # (C, n, B, Z)
        pick = torch.randint(len(zs), zs.shape[1:3], generator=generator, device=zs.device)  # (n, B)
        return zs.gather(0, pick[None, :, :, None].expand(1, *zs.shape[1:]))[0]  # (n, B, Z)
    mu = proposal.mu  # (B, Z)
    eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)  # (n, B, Z)
    return mu + eps * torch.exp(0.5 * proposal.logvar)  # (n, B, Z)


def importance_weighted(
    proposal: Gaussian | Mixture,
    log_targets: LogTargets,
    k: int,
    *,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Bounds]:
    """The ELBO and the K-sample importance-weighted bound of every target, from the same K samples of `proposal`.

    log_targets maps z (n, B, Z) to {name: log p(data_b, z) (n, B)}, so one decoder pass can serve several targets
    (log p(x,z) and log p(x,w,z) share z ~ q(z|x,w)). The K samples are drawn `chunk` at a time (default all) to
    bound memory; the log-mean-exp over them is accumulated with logaddexp, so no chunk's weights overflow.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    chunk = k if chunk is None else max(1, chunk)
    sums: dict[str, torch.Tensor] = {}
    lse: dict[str, torch.Tensor] = {}
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        z = draw(proposal, n, generator)  # (n, B, Z)
        log_q = proposal.log_prob(z)  # (n, B)
        for name, log_p in log_targets(z).items():
            log_w = log_p - log_q  # (n, B)
            sums[name] = sums.get(name, 0.0) + log_w.sum(0)  # (B,)
            chunk_lse = torch.logsumexp(log_w, dim=0)  # (B,)
            lse[name] = torch.logaddexp(lse[name], chunk_lse) if name in lse else chunk_lse
    return {name: Bounds(sums[name] / k, lse[name] - math.log(k)) for name in sums}


# ----------------------------------------------------------------------------- the models' densities


def _flat(fn: Callable[..., torch.Tensor], z: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    """Apply a per-example network density fn(*data, z) -> (N,) to z (n, B, Z), repeating each data tensor (B, ...)
    n times: the networks (and their batch norm) take one flat batch."""
    n, b = z.shape[:2]
    flat = [d.expand(n, *d.shape).reshape(n * b, *d.shape[1:]) for d in data]  # each (n*B, ...)
    return fn(*flat, z.reshape(n * b, -1)).view(n, b)  # (n, B)


@torch.inference_mode()
def attribute_log_likelihoods(
    model,
    w: torch.Tensor,
    *,
    nw: int = 10,
    kw: int = 1000,
    decode_batch: int = 1000,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Three estimates of log p(w) for attribute vectors w (B, A) by a model with models_attributes (the JMVAE):
    {key: (B,) nats}, keys log_pw_prior_nw (nw prior samples), log_pw_iw_qw and log_pw_iw_mix (kw samples each).
    No image is decoded."""
    w = w.float()
    prior = standard_normal(len(w), model.cfg.latent_dim, w.device)
    q_w = model.q_w(w)
    # p(w|z) is an MLP whose activations per row are about 1/50 of an image decoder's: as much memory per pass
    chunk = max(1, 50 * decode_batch // len(w))

    def attributes(z):
        return {"w": _flat(model.log_pw, z, w) + standard_normal_log_prob(z)}  # (n, B)

    proposals = {
        "log_pw_prior_nw": (prior, nw),
        "log_pw_iw_qw": (q_w, kw),
        "log_pw_iw_mix": (Mixture([q_w, prior]), kw),
    }
    return {
        key: importance_weighted(proposal, attributes, n, chunk=chunk, generator=generator)["w"].iw
        for key, (proposal, n) in proposals.items()
    }


def _image_log_likelihoods(
    model, x: torch.Tensor, w: torch.Tensor, k: int, nw: int, kw: int, decode_batch: int, gen: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """Per-image estimates for one batch, from the pieces the model has (model.Model): {key: (B,)}."""
    posteriors = model.posteriors(x, w)  # {"qxw": q(z|x,w), "qx": q(z|x)}, those it has
    if not posteriors:
        raise JmvaeError(f"a {model.cfg.model} model has no likelihood to evaluate: it has no posterior q(z|.)")
    prior = model.prior(w)  # p(z|w), or None for N(0, I)
    log_pz = standard_normal_log_prob if prior is None else prior.log_prob
    image_key = "log_px" if prior is None else "log_px_given_w"  # a prior given w bounds log p(x|w)
    chunk = max(1, decode_batch // len(x))  # z samples per image-decoder pass
    out: dict[str, torch.Tensor] = {}

    def image(z):  # log p(x, z), or log p(x, z | w): (n, B)
        return {"x": _flat(lambda x_, w_, z_: model.log_px(x_, z_, w_), z, x, w) + log_pz(z)}

    def image_and_attributes(z):  # one decoder pass for log p(x, z) and log p(x, w, z)
        log_pxz = image(z)["x"]  # (n, B)
        return {"x": log_pxz, "xw": log_pxz + _flat(model.log_pw, z, w)}

    for name, proposal in posteriors.items():
        joint = model.models_attributes and name == "qxw"  # log p(x, w) takes the proposal that sees both
        bounds = importance_weighted(proposal, image_and_attributes if joint else image, k, chunk=chunk, generator=gen)
        out[f"{image_key}_elbo_{name}"], out[f"{image_key}_iw_{name}"] = bounds["x"]
        if joint:
            out["log_pxw_elbo"], out["log_pxw_iw"] = bounds["xw"]
    if model.models_attributes:
        out.update(attribute_log_likelihoods(model, w, nw=nw, kw=kw, decode_batch=decode_batch, generator=gen))
        out["log_px_given_w_paper"] = out["log_pxw_iw"] - out["log_pw_prior_nw"]
        out["log_px_given_w_iw"] = out["log_pxw_iw"] - out["log_pw_iw_qw"]
        out["log_px_given_w_mix"] = out["log_pxw_iw"] - out["log_pw_iw_mix"]
    return out


@torch.inference_mode()
def batch_log_likelihoods(
    model,
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    k: int = 100,
    nw: int = 10,
    kw: int = 1000,
    decode_batch: int = 1000,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image estimates {key: (B,) nats} for images x (B, 3, H, W) in [-1, 1] and attributes w (B, A) in {0, 1}.

    The model must be in eval mode. Each image-decoder pass decodes at most about `decode_batch` images: the K
    samples are taken in chunks of decode_batch // B.
    """
    return _image_log_likelihoods(model, x, w.float(), k, nw, kw, decode_batch, generator)


# ----------------------------------------------------------------------------- over a data split


def summarize(values: np.ndarray, dims: int) -> dict:
    """Mean and standard error of per-example log-likelihoods (nats), and the same as bits per dimension of the
    modelled variable (dims of them), sign flipped as usual: bits_per_dim = -nats / (dims ln 2), lower is better."""
    n = len(values)
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    per_bit = dims * math.log(2)
    return {"nats": mean, "nats_se": se, "bits_per_dim": -mean / per_bit, "bits_per_dim_se": se / per_bit, "dims": dims}


def per_image_log_likelihoods(
    model,
    data: FaceData,
    idx: np.ndarray,
    *,
    k: int = 100,
    nw: int = 10,
    kw: int = 1000,
    batch_size: int = 50,
    decode_batch: int = 1000,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """{key: (N,) float64 nats} for the images data[idx], in the order of idx; arguments as evaluate_likelihoods.
    Per-image values let models evaluated on the same images be compared pairwise."""
    if len(idx) == 0:
        raise JmvaeError("no images to evaluate: the split is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device, memory_format=Precision(device, None).memory_format).eval()  # fp32, in the convs' best layout
    gen = torch.Generator(device).manual_seed(seed)
    idx = np.asarray(idx)
    per_batch: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            x = pixels_to_input(torch.from_numpy(data.images[rows]).to(device))  # (B, 3, H, W)
            w = torch.from_numpy(data.attrs[rows]).to(device).float()  # (B, A)
            values = batch_log_likelihoods(model, x, w, k=k, nw=nw, kw=kw, decode_batch=decode_batch, generator=gen)
            for key, v in values.items():
                per_batch.setdefault(key, []).append(v.double().cpu().numpy())
            if progress is not None:
                progress(len(rows))
    finally:
        model.train(was_training)
    return {key: np.concatenate(chunks) for key, chunks in per_batch.items()}


def evaluate_likelihoods(model, data: FaceData, idx: np.ndarray, **options) -> dict[str, dict]:
    """Every likelihood that applies to `model` (see the module docstring), over the images data[idx].

    Returns {key: {"nats", "nats_se", "bits_per_dim", "bits_per_dim_se", "dims"}}: nats per example (mean and
    standard error over the images) and bits per dimension, where the dimensions are 3*H*W for quantities over the
    image and the number of attributes for log p(w). K = k samples per image for every bound, N_w = nw for
    log_pw_prior_nw, K_w = kw for the other log p(w) estimates. The model is moved to `device` (default: where it
    is; channels_last on CPU and CUDA, which doubles the CPU's convolution speed) and evaluated in fp32 and eval
    mode, batch_size images at a time, each image-decoder pass decoding at most about decode_batch images.
    `progress`, if given, is called with the number of images in each finished batch. The same seed gives the same
    samples. `options` are per_image_log_likelihoods' keywords (k, nw, kw, batch_size, decode_batch, device, seed,
    progress).
    """
    values = per_image_log_likelihoods(model, data, idx, **options)
    image_dims = 3 * model.cfg.image_size**2
    return {key: summarize(v, model.cfg.n_attrs if key in ATTRIBUTE_KEYS else image_dims) for key, v in values.items()}
