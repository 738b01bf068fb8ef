"""The likelihood estimators against models whose likelihood is known exactly, and evaluate_likelihoods on tiny
untrained models of every kind."""

import math

import numpy as np
import pytest
import torch

from jmvae_cli.data import FaceData
from jmvae_cli.errors import JmvaeError
from jmvae_cli.likelihood import (
    DESCRIPTIONS,
    Mixture,
    batch_log_likelihoods,
    evaluate_likelihoods,
    importance_weighted,
    standard_normal,
)
from jmvae_cli.model import (
    Gaussian,
    JMVAEConfig,
    kl_gaussians,
    standard_normal_log_prob,
)
from jmvae_cli.registry import build

# ----------------------------------------------------------------------------- linear-Gaussian: p(x) in closed form


class LinearGaussian:
    """p(z) = N(0, I_2), p(x|z) = N(Wz + b, s^2 I_4). W has orthogonal columns, so the exact posterior p(z|x) is a
    diagonal Gaussian, the form of the proposals; and p(x) = N(b, W W^T + s^2 I)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64))  # orthonormal columns
        self.W = q * torch.tensor([2.0, 1.0], dtype=torch.float64)  # (4, 2)
        self.b = torch.randn(4, generator=g, dtype=torch.float64)  # (4,)
        self.s = 0.5

    def sample_x(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, 2, generator=g, dtype=torch.float64)  # (N, 2)
        return z @ self.W.T + self.b + self.s * torch.randn(n, 4, generator=g, dtype=torch.float64)  # (N, 4)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(4, dtype=torch.float64)  # (4, 4)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)  # (N,)

    def log_joint(self, x: torch.Tensor):
        """z (n, N, 2) -> {"x": log p(x, z) (n, N)}."""

        def f(z):
            mean = z @ self.W.T + self.b  # (n, N, 4)
            log_lik = (-0.5 * math.log(2 * math.pi) - math.log(self.s) - 0.5 * ((x - mean) / self.s) ** 2).sum(-1)
            return {"x": log_lik + standard_normal_log_prob(z)}

        return f

    def posterior(self, x: torch.Tensor) -> Gaussian:
        precision = 1 + (self.W**2).sum(0) / self.s**2  # (2,): W^T W is diagonal
        mu = (x - self.b) @ self.W / self.s**2 / precision  # (N, 2)
        return Gaussian(mu, (-precision.log()).expand_as(mu))


def test_iw_bound_is_exact_with_the_true_posterior():
    toy = LinearGaussian()
    x = toy.sample_x(50)
    truth = toy.log_px(x)
    for k, chunk in [(1, None), (7, 3)]:  # 7 in chunks of 3: the last chunk is short
        b = importance_weighted(toy.posterior(x), toy.log_joint(x), k, chunk=chunk)["x"]
        torch.testing.assert_close(b.iw, truth, atol=1e-9, rtol=0)
        torch.testing.assert_close(b.elbo, truth, atol=1e-9, rtol=0)


def test_iw_bound_tightens_towards_the_truth_as_k_grows():
    toy = LinearGaussian()
    x = toy.sample_x(400)
    truth = toy.log_px(x).mean().item()
    exact = toy.posterior(x)
    poor = Gaussian(exact.mu + 0.7, exact.logvar + 1.0)  # off-centre and too wide
    g = torch.Generator().manual_seed(0)
    est = {k: importance_weighted(poor, toy.log_joint(x), k, chunk=64, generator=g)["x"] for k in (1, 10, 1000)}
    elbo, iw1, iw10, iw1000 = (est[1].elbo.mean().item(), *(est[k].iw.mean().item() for k in (1, 10, 1000)))
    assert elbo == pytest.approx(iw1)  # one sample: the two bounds coincide
    assert iw1 < iw10 - 0.2 < iw1000 - 0.2
    assert iw1000 < truth + 0.005  # still a bound (up to Monte Carlo noise)
    assert iw1000 == pytest.approx(truth, abs=0.05)
    # the ELBO does not tighten with K: it stays KL(q || p(z|x)) below the truth
    gap = kl_gaussians(poor, exact).mean().item()
    assert est[1000].elbo.mean().item() == pytest.approx(truth - gap, abs=0.05)


# ----------------------------------------------------------------------------- log p(w) for 3 binary attributes


SLOPES = torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64)
OFFSETS = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
ALL_W = torch.tensor([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=torch.float64)  # (8, 3)


def log_pw_given_z(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """p(w_a = 1 | z) = sigmoid(slope_a z + offset_a) for a 1-D z: w (B, 3), z (n, B, 1) -> (n, B)."""
    logits, target = torch.broadcast_tensors(z * SLOPES + OFFSETS, w)  # (n, B, 3) each; z may be (n, 1, 1)
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)


def quadrature(w: torch.Tensor) -> tuple[torch.Tensor, Gaussian]:
    """log p(w) for each row of w by the trapezoid rule on a fine grid, and the moment-matched Gaussian of p(z|w)."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)[:, None, None]  # (G, 1, 1)
    log_joint = log_pw_given_z(w, z) + standard_normal_log_prob(z)  # (G, B)
    log_pw = torch.logsumexp(log_joint, 0) + math.log(z[1, 0, 0] - z[0, 0, 0])  # (B,); the ends are ~0
    post = torch.exp(log_joint - log_pw)  # (G, B), integrates to one
    dz = z[1, 0, 0] - z[0, 0, 0]
    mean = (post * z[:, :, 0]).sum(0) * dz  # (B,)
    var = (post * (z[:, :, 0] - mean) ** 2).sum(0) * dz  # (B,)
    return log_pw, Gaussian(mean[:, None], var.log()[:, None])


def attributes(w):
    return lambda z: {"w": log_pw_given_z(w, z) + standard_normal_log_prob(z)}


def test_quadrature_ground_truth_is_a_distribution():
    log_pw, _ = quadrature(ALL_W)
    assert log_pw.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_log_pw_estimators_agree_with_the_exhaustive_truth():
    truth, posterior = quadrature(ALL_W)
    g = torch.Generator().manual_seed(0)
    prior = importance_weighted(standard_normal(8, 1, dtype=torch.float64), attributes(ALL_W), 100_000, generator=g)
    torch.testing.assert_close(prior["w"].iw, truth, atol=0.01, rtol=0)
    q_w = importance_weighted(posterior, attributes(ALL_W), 1000, generator=g)
    torch.testing.assert_close(q_w["w"].iw, truth, atol=0.02, rtol=0)  # its tails are lighter than p(z|w)'s
    mix = Mixture([posterior, standard_normal(8, 1, dtype=torch.float64)])
    torch.testing.assert_close(
        importance_weighted(mix, attributes(ALL_W), 4000, generator=g)["w"].iw, truth, atol=0.03, rtol=0
    )


def test_the_prior_in_the_mixture_rescues_a_proposal_that_misses_the_posterior():
    """Like JMVAE-zero's q(z|w) (the joint encoder on a blank image): narrow and in the wrong place."""
    truth, posterior = quadrature(ALL_W)
    bad = Gaussian(posterior.mu + 3, posterior.logvar - 3)
    g = torch.Generator().manual_seed(2)
    alone = importance_weighted(bad, attributes(ALL_W), 1000, generator=g)["w"].iw
    mixed = importance_weighted(
        Mixture([bad, standard_normal(8, 1, dtype=torch.float64)]), attributes(ALL_W), 10_000, generator=g
    )["w"].iw
    assert (alone < truth - 1).all()
    torch.testing.assert_close(mixed, truth, atol=0.05, rtol=0)


def test_prior_sampling_with_few_samples_is_biased_low_and_q_w_has_lower_variance():
    truth, posterior = quadrature(ALL_W)
    reps = 2000
    w = ALL_W.repeat(reps, 1)  # (8 * reps, 3): independent estimates of each of the 8 values
    g = torch.Generator().manual_seed(1)
    prior = importance_weighted(standard_normal(len(w), 1, dtype=torch.float64), attributes(w), 10, generator=g)
    q_w = importance_weighted(
        Gaussian(posterior.mu.repeat(reps, 1), posterior.logvar.repeat(reps, 1)), attributes(w), 10, generator=g
    )
    prior_est, q_est = prior["w"].iw.view(reps, 8), q_w["w"].iw.view(reps, 8)
    # exp of the estimate is unbiased for p(w); its log is biased low (Jensen)
    torch.testing.assert_close(prior_est.exp().mean(0), truth.exp(), atol=0.01, rtol=0.05)
    assert (prior_est.mean(0) < truth).all()
    assert (q_est.var(0) < prior_est.var(0) / 10).all()
    assert (prior_est.mean(0) < q_est.mean(0)).all()


# ----------------------------------------------------------------------------- tiny models of every kind


BOUND_KEYS = {
    "jmvae": {
        "log_px_elbo_qxw",
        "log_px_iw_qxw",
        "log_px_elbo_qx",
        "log_px_iw_qx",
        "log_pxw_elbo",
        "log_pxw_iw",
        "log_pw_prior_nw",
        "log_pw_iw_qw",
        "log_pw_iw_mix",
        "log_px_given_w_paper",
        "log_px_given_w_iw",
        "log_px_given_w_mix",
    },
    "vae": {"log_px_elbo_qx", "log_px_iw_qx"},
    "cvae": {"log_px_given_w_elbo_qxw", "log_px_given_w_iw_qxw"},
    "cmma": {"log_px_given_w_elbo_qx", "log_px_given_w_iw_qx"},
}
N_ATTRS, SIZE = 5, 16


def tiny(model: str, objective: str = "jmvae-kl"):
    torch.manual_seed(0)
    cfg = JMVAEConfig(
        model=model,
        n_attrs=N_ATTRS,
        latent_dim=4,
        image_size=SIZE,
        channels=(8, 8),
        image_features=16,
        attr_hidden=16,
        joint_hidden=16,
        objective=objective,
    )
    return build(cfg).eval()


def tiny_data(n: int = 12) -> FaceData:
    rng = np.random.default_rng(0)
    return FaceData(
        images=rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        attrs=rng.integers(0, 2, (n, N_ATTRS), dtype=np.uint8),
        split=np.zeros(n, np.uint8),
        names=[f"{i}.jpg" for i in range(n)],
        attr_names=[f"a{j}" for j in range(N_ATTRS)],
        skipped=0,
    )


@pytest.mark.parametrize(
    "kind,objective",
    [("jmvae", "jmvae-kl"), ("jmvae", "jmvae-zero"), ("vae", "jmvae-kl"), ("cvae", "jmvae-kl"), ("cmma", "jmvae-kl")],
)
def test_evaluate_gives_finite_bounds_for_every_model(kind, objective):
    model, data = tiny(kind, objective), tiny_data()
    done = []
    # 5 images a batch (the last holds 2), 7 decodes a pass (one z sample per chunk): every path of the batching
    res = evaluate_likelihoods(
        model, data, np.arange(12), k=6, nw=4, kw=9, batch_size=5, decode_batch=7, progress=done.append
    )
    assert set(res) == BOUND_KEYS[kind] and set(res) <= set(DESCRIPTIONS)
    assert done == [5, 5, 2]
    for key, r in res.items():
        assert all(math.isfinite(r[f]) for f in ("nats", "nats_se", "bits_per_dim", "bits_per_dim_se")), key
        assert r["dims"] == (N_ATTRS if key.startswith("log_pw_") else 3 * SIZE * SIZE)
        assert r["bits_per_dim"] == pytest.approx(-r["nats"] / (r["dims"] * math.log(2)))
    for key in res:
        if "_iw" in key and key.replace("_iw", "_elbo") in res:
            assert res[key]["nats"] >= res[key.replace("_iw", "_elbo")]["nats"], key
    if kind == "jmvae":
        nats = {key: r["nats"] for key, r in res.items()}
        assert nats["log_px_given_w_iw"] == pytest.approx(nats["log_pxw_iw"] - nats["log_pw_iw_qw"])
        assert nats["log_px_given_w_paper"] == pytest.approx(nats["log_pxw_iw"] - nats["log_pw_prior_nw"])
        assert nats["log_px_given_w_mix"] == pytest.approx(nats["log_pxw_iw"] - nats["log_pw_iw_mix"])
    assert not model.training
    again = evaluate_likelihoods(model, data, np.arange(12), k=6, nw=4, kw=9, batch_size=5, decode_batch=7)
    assert again == res  # the seed fixes the samples


def test_per_image_iw_bound_is_above_the_elbo_and_equals_it_for_one_sample():
    model, data = tiny("jmvae"), tiny_data(4)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (4, 3, 16, 16)
    w = torch.from_numpy(data.attrs).float()  # (4, 5)
    many = batch_log_likelihoods(model, x, w, k=20, nw=3, kw=20, decode_batch=16)
    for key in ("log_px", "log_pxw"):
        suffix = "_qxw" if key == "log_px" else ""
        assert (many[f"{key}_iw{suffix}"] >= many[f"{key}_elbo{suffix}"]).all()
    one = batch_log_likelihoods(model, x, w, k=1, nw=3, kw=3)
    torch.testing.assert_close(one["log_px_iw_qx"], one["log_px_elbo_qx"])


def test_a_model_without_likelihood_is_refused():
    with pytest.raises(JmvaeError, match="no likelihood"):
        evaluate_likelihoods(tiny("classifier"), tiny_data(), np.arange(3), k=2)
    with pytest.raises(JmvaeError, match="no images"):
        evaluate_likelihoods(tiny("vae"), tiny_data(), np.arange(0), k=2)
