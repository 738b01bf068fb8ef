"""The registry: models are found by name, and a model added to it is trained, saved, loaded and bounded like the
built-in ones without any other module knowing its name."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from jmvae_cli import registry
from jmvae_cli.checkpoint import load_model, save_model
from jmvae_cli.likelihood import evaluate_likelihoods
from jmvae_cli.model import (
    JMVAE,
    Gaussian,
    JMVAEConfig,
    Model,
    discretized_logistic_log_prob,
    kl_gaussians,
)
from jmvae_cli.train import TrainOptions, train
from tests.test_likelihood import tiny_data
from tests.test_train import TINY


class LinearCMMA(Model):
    """The smallest model with a likelihood: linear q(z|x), a learnt prior p(z|w), a linear p(x|z)."""

    def __init__(self, cfg: JMVAEConfig):
        super().__init__(cfg)
        pixels = 3 * cfg.image_size**2
        self.enc = nn.Linear(pixels, 2 * cfg.latent_dim)
        self.prior_w = nn.Linear(cfg.n_attrs, 2 * cfg.latent_dim)
        self.dec = nn.Linear(cfg.latent_dim, 2 * pixels)

    def posteriors(self, x, w):
        return {"qx": Gaussian.from_head(self.enc(x.flatten(1)))}

    def prior(self, w):
        return Gaussian.from_head(self.prior_w(w))

    def log_px(self, x, z, w=None):
        mean, log_scale = self.dec(z).view(len(z), 6, *x.shape[2:]).chunk(2, dim=1)  # (B, 3, H, W) each
        return discretized_logistic_log_prob(x, torch.tanh(mean), log_scale.clamp_min(self.cfg.min_log_scale))

    def forward(self, x, w, beta=1.0):
        q = self.posteriors(x, w)["qx"]
        rec_x = -self.log_px(x, q.sample()).mean()
        kl = kl_gaussians(q, self.prior(w)).mean()
        return {"loss": rec_x + beta * kl, "rec_x": rec_x, "kl": kl, "elbo": -(rec_x + kl)}


@pytest.fixture
def linear_cmma(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "linear-cmma", LinearCMMA)
    return "linear-cmma"


def test_builds_every_built_in_model_by_name():
    assert registry.names() == ("jmvae", "vae", "cvae", "cmma", "classifier")
    for name in registry.names():
        model = registry.build(JMVAEConfig(model=name, n_attrs=5, latent_dim=4, image_size=16, channels=(8, 8)))
        assert isinstance(model, Model) and model.cfg.model == name
    assert registry.model_class("jmvae") is JMVAE


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="must be one of jmvae, vae, cvae, cmma, classifier, not 'gan'"):
        JMVAEConfig(model="gan")
    with pytest.raises(ValueError, match="must be one of"):
        registry.model_class("gan")


def test_listing_the_models_loads_no_torch():
    """The CLI takes its choices from the registry; `jmvae --help` must not wait for torch."""
    code = "import sys, jmvae_cli.registry as r; r.names(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_a_registered_model_is_saved_loaded_and_bounded_by_name(linear_cmma, tmp_path):
    torch.manual_seed(0)
    cfg = JMVAEConfig(model=linear_cmma, n_attrs=5, latent_dim=4, image_size=16, channels=(8, 8))
    model = registry.build(cfg).eval()
    save_model(tmp_path / "m.safetensors", model, {"attr_names": list("ABCDE"), "preprocess": {"size": 16}})
    loaded = load_model(tmp_path / "m.safetensors").model
    assert type(loaded) is LinearCMMA and loaded.cfg == cfg
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(
        loaded.posteriors(x, None)["qx"].mu, model.posteriors(x, None)["qx"].mu, atol=1e-2, rtol=0
    )  # fp16 storage
    res = evaluate_likelihoods(loaded, tiny_data(), np.arange(4), k=3)
    assert set(res) == {"log_px_given_w_elbo_qx", "log_px_given_w_iw_qx"}  # a learnt prior: bounds on log p(x|w)


def test_a_registered_model_trains_by_name(linear_cmma, make_celeba_hq, tmp_path):
    out = tmp_path / "run"
    train(
        TrainOptions(
            data=[make_celeba_hq(tmp_path, 24)],
            out=out,
            epochs=1,
            batch_size=8,
            latent_dim=4,
            val_fraction=0.25,
            progress=False,
            arch=TINY,
            device="cpu",
            model=linear_cmma,
        )
    )
    assert type(load_model(out / "model.safetensors").model) is LinearCMMA
