import pytest
import torch

from jmvae_cli.model import (
    JMVAE,
    Gaussian,
    JMVAEConfig,
    discretized_logistic_log_prob,
    kl_gaussians,
    kl_standard_normal,
    output_to_pixels,
    pixels_to_input,
)


def tiny_config(**kw) -> JMVAEConfig:
    return JMVAEConfig(
        n_attrs=5,
        latent_dim=4,
        image_size=16,
        channels=(8, 8),
        image_features=16,
        attr_hidden=16,
        joint_hidden=16,
        **kw,
    )


def random_gaussian(b=3, z=4, seed=0) -> Gaussian:
    g = torch.Generator().manual_seed(seed)
    return Gaussian(
        torch.randn(b, z, generator=g, dtype=torch.float64), torch.randn(b, z, generator=g, dtype=torch.float64)
    )


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    q, p = random_gaussian(seed=1), random_gaussian(seed=2)
    z = q.mu + torch.randn(200_000, *q.mu.shape, dtype=torch.float64) * torch.exp(0.5 * q.logvar)  # (K, B, Z)
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(kl_gaussians(q, p), mc, rtol=0.02, atol=0.02)
    prior = Gaussian(torch.zeros_like(q.mu), torch.zeros_like(q.logvar))
    assert torch.allclose(kl_standard_normal(q), kl_gaussians(q, prior), atol=1e-10)
    assert torch.allclose(kl_gaussians(q, q), torch.zeros(3, dtype=torch.float64), atol=1e-10)


def test_gaussian_log_prob_is_normalised():
    q = Gaussian(torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.5]], dtype=torch.float64))
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)[:, None, None]  # (K, 1, 1)
    assert q.log_prob(z).exp().sum().item() * (20 / 20000) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("mean,log_scale", [(0.1, -2.0), (-0.95, -4.0), (0.99, -6.5), (0.0, 1.0)])
def test_discretized_logistic_sums_to_one_over_256_values(mean, log_scale):
    values = torch.arange(256, dtype=torch.float32) / 127.5 - 1  # every 8-bit level
    x = values.view(256, 1, 1, 1)  # one-pixel "images"
    logp = discretized_logistic_log_prob(x, torch.full_like(x, mean), torch.full_like(x, log_scale))  # (256,)
    assert torch.logsumexp(logp, 0).item() == pytest.approx(0.0, abs=2e-3)
    if log_scale < 0:  # a wide logistic puts most mass in the tail bins at -1 and 1 instead
        assert values[logp.argmax()].item() == pytest.approx(mean, abs=2 / 255 + 1e-6)


def test_pixel_round_trip():
    u8 = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    x = pixels_to_input(u8)
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(output_to_pixels(x), u8)


@pytest.mark.parametrize("objective,cross_weight", [("jmvae-kl", 0.0), ("jmvae-kl", 3.0), ("jmvae-zero", 0.0)])
def test_forward_terms_and_shapes(objective, cross_weight):
    torch.manual_seed(0)
    model = JMVAE(tiny_config(objective=objective, cross_weight=cross_weight))
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    w = (torch.rand(6, 5) > 0.5).float()
    terms = model(x, w, beta=0.5)
    assert set(terms) >= {"loss", "rec_x", "rec_w", "kl", "elbo"}
    assert ("kl_x" in terms) == (objective == "jmvae-kl")
    expected = terms["rec_x"] + terms["rec_w"] + 0.5 * terms["kl"]
    if objective == "jmvae-kl":
        expected = expected + 0.1 * (terms["kl_x"] + terms["kl_w"]) + cross_weight * terms["rec_w_x"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["rec_x"].item() > 0 and terms["rec_w"].item() > 0 and terms["kl"].item() >= 0
    model.eval()
    assert model.q_x(x).mu.shape == (6, 4) and model.q_w(w).mu.shape == (6, 4)
    assert model.attrs_from_images(x).shape == (6, 5)
    assert model.images_from_z(torch.zeros(2, 4)).shape == (2, 3, 16, 16)


def test_cross_term_trains_the_image_to_attribute_route():
    """With the cross-modal term, q(z|x)'s mean learns to decode to w; Eq. 2 alone barely moves that route here."""
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    w = (x[:, :, :8].mean((1, 2, 3)) > x[:, :, 8:].mean((1, 2, 3))).float()[:, None].repeat(1, 5)  # (64, 5)
    w[:, 1::2] = 1 - w[:, 1::2]

    def route_loss(cross_weight: float) -> float:
        torch.manual_seed(0)
        model = JMVAE(tiny_config(cross_weight=cross_weight))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            opt.zero_grad()
            model(x, w)["loss"].backward()
            opt.step()
        model.eval()
        return -model.log_pw(w, model.q_x(x).mu).mean().item()

    assert route_loss(10.0) < 0.5 * route_loss(0.0)


def test_zero_objective_has_no_unimodal_encoders():
    assert not hasattr(JMVAE(tiny_config(objective="jmvae-zero")), "enc_x")


def test_config_round_trip_and_validation():
    cfg = tiny_config(alpha=0.3)
    assert JMVAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="objective"):
        tiny_config(objective="vae-gan")
    with pytest.raises(ValueError, match="image_size"):
        JMVAEConfig(image_size=48)


@pytest.mark.parametrize("decoder_width", [1.0, 1.5])  # 1.5: the widest decoder the README offers
def test_default_architecture_fits_the_weights_budget(decoder_width):
    from jmvae_cli.edit_directions import BANK_FACES

    cfg = JMVAEConfig(decoder_width=decoder_width)
    n = sum(p.numel() for p in JMVAE(cfg).parameters())
    edit_constants = 0.75e6  # fp32, beside the weights
    assert n * 2 + edit_constants < 25e6  # stored in fp16
    if decoder_width == 1.0:  # the bundled default also carries the bank of local directions
        assert n * 2 + edit_constants + BANK_FACES * (cfg.latent_dim * 2 + cfg.n_attrs) < 25e6


@pytest.mark.parametrize("objective", ["jmvae-kl", "jmvae-zero"])
def test_q_xw_blank_is_the_joint_encoder_without_attributes(objective):
    torch.manual_seed(0)
    model = JMVAE(tiny_config(objective=objective)).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    blank = model.q_xw_blank(x)
    assert torch.equal(blank.mu, model.q_xw(x, torch.zeros(3, 5)).mu)
    # JMVAE-zero's q(z|x) is this; JMVAE-kl's is its own encoder
    assert torch.equal(blank.mu, model.q_x(x).mu) == (objective == "jmvae-zero")


def test_grid_counts_an_attribute_at_the_threshold_as_present(monkeypatch):
    """image->attributes->image encodes the attributes the model finds present, from THRESHOLD on."""
    model = JMVAE(tiny_config()).eval()
    monkeypatch.setattr(model, "attrs_from_images", lambda x: torch.full((len(x), 5), 0.5))
    asked = []
    q_w = model.q_w
    monkeypatch.setattr(model, "q_w", lambda w: asked.append(w) or q_w(w))
    model.grid_rows(torch.zeros(2, 3, 16, 16), torch.zeros(2, 5))
    assert torch.equal(asked[0], torch.ones(2, 5))
