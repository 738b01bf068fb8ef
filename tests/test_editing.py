"""The one batched edit (editing.edit): the paper's formula, batches, per-face changes, and the rule registry."""

import numpy as np
import pytest
import torch

from jmvae_cli import attributes, editing, translate
from tests.model_fixtures import photo_array, tiny_weights  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tr(tiny_weights):
    return translate.Translator.from_weights(tiny_weights, "cpu", "fp32")


def faces(n: int) -> np.ndarray:
    return np.stack([photo_array(64, 64, seed=s) for s in range(n)])  # (n, 64, 64, 3)


def test_edit_is_the_papers_formula(tr):
    face = photo_array(64, 64, seed=5)
    values = attributes.values(attributes.parse_set_unset(["Smiling"], ["Young"], tr.attr_names), 2.0)
    r = editing.edit(tr.model, editing.to_input([face]), values)

    # Recompute every step straight from the model's parts.
    m = tr.model
    with torch.no_grad():
        x = torch.from_numpy(face).float().permute(2, 0, 1)[None] / 127.5 - 1  # (1, 3, 64, 64)
        probs = torch.sigmoid(m.decode_w(m.q_x(x).mu))  # (1, A): p(w|z) at the mean of q(z|x)
        w = (probs >= 0.5).float()
        w_new = w.clone()
        w_new[0, 0], w_new[0, 4] = 1.5, -0.5
        x_mean = m.decode_x(m.q_w(w).mu)[0]  # (1, 3, 64, 64): the mean of p(x|z) at the mean of q(z|w)
        x_mean_new = m.decode_x(m.q_w(w_new).mu)[0]
        expected = (x + x_mean_new - x_mean).clamp(-1, 1)
    assert torch.allclose(r.probs, probs, atol=1e-6)
    assert torch.equal(r.w, w) and torch.equal(r.w_new, w_new)
    assert torch.allclose(r.before, x_mean, atol=1e-5)
    assert torch.allclose(r.after, x_mean_new, atol=1e-5)
    assert torch.allclose(r.result, expected, atol=1e-5)
    assert (r.after - r.before).abs().max() > 0.01  # the edit does something
    assert r.strip().shape == (4, 64, 64, 3)
    assert np.array_equal(r.pixels("x")[0], face)
    assert np.allclose(r.delta_pixels, (x_mean_new - x_mean).permute(0, 2, 3, 1).numpy() * 127.5, atol=1e-3)


def _colour(r, g, b):
    return torch.tensor([r, g, b]).view(1, 3, 1, 1).expand(1, 3, 4, 4) * 2 - 1  # (1, 3, 4, 4) in [-1, 1]


def test_a_colour_that_changes_much_is_taken_and_lightness_added():
    from jmvae_cli.colour import srgb_to_lab

    def lab(t):
        return srgb_to_lab((t + 1) / 2)

    def onto(x, before, after, method=editing.REGRESS):
        return x + editing.change(x, before, after, method)

    olive, brown, blond = _colour(0.45, 0.40, 0.20), _colour(0.45, 0.33, 0.25), _colour(0.85, 0.70, 0.45)
    # the model's face as drawn, edited, is the model's other face: whatever the rule, pasting is exact there
    for method in (editing.REGRESS, editing.PAPER):
        assert torch.allclose(onto(brown, brown, blond, method), blond, atol=1e-5)
        assert not editing.change(olive, brown, brown, method).any()  # no change, not one bit
    # olive hair the model reads as brown, made blond: the model's blond, at the photo's own lightness change
    out = lab(onto(olive, brown, blond))
    want = lab(blond)[:, 1:]
    assert torch.allclose(out[:, 1:], want, atol=0.05)
    assert torch.allclose(out[:, 0], (lab(olive) + lab(blond) - lab(brown))[:, 0], atol=0.05)
    # added, as the paper's rule adds it, the same change leaves the olive's own cast: further from the blond drawn
    assert (lab(onto(olive, brown, blond, editing.PAPER))[:, 1:] - want).norm(dim=1).min() > 3
    # a small change of colour is added as a change (in CIELAB), pulled to the colour drawn by its share of
    # COLOUR_TAKEN
    slightly = _colour(0.46, 0.33, 0.24)
    out = lab(onto(olive, brown, slightly))
    d = lab(slightly) - lab(brown)
    share = d[:, 1:].norm(dim=1, keepdim=True) / editing.COLOUR_TAKEN
    assert (share < 0.3).all()
    assert torch.allclose(out[:, 0], (lab(olive) + d)[:, 0], atol=0.05)
    assert torch.allclose(out[:, 1:], (lab(olive) + d + share * (lab(brown) - lab(olive)))[:, 1:], atol=0.05)


def test_soft_keeps_probabilities(tr):
    r = editing.edit(tr.model, editing.to_input(faces(1)), {0: 1.0}, soft=True)
    assert torch.allclose(r.w[0, 1:], r.probs[0, 1:]) and r.w_new[0, 0] == 1.0


def test_a_batch_edits_each_face_as_if_alone(tr):
    crops = faces(3)
    batch = editing.edit(tr.model, editing.to_input(crops), {1: 1.5})
    for k in range(3):
        one = editing.edit(tr.model, editing.to_input(crops[k : k + 1]), {1: 1.5})
        assert torch.allclose(batch.result[k], one.result[0], atol=1e-5)
        assert torch.equal(batch.w[k], one.w[0])
    strip = batch.strip()  # face | before | after | result, face by face
    assert strip.shape == (12, 64, 64, 3)
    assert np.array_equal(strip[4], crops[1]) and np.array_equal(strip[11], batch.pixels("result")[2])


def test_changes_per_face_and_given_probabilities(tr):
    x = editing.to_input(np.repeat(faces(1), 2, 0))
    probs, w = editing.infer(tr.model, x)
    lacks, has = (w[0] == 0).nonzero()[:, 0].tolist(), (w[0] == 1).nonzero()[:, 0].tolist()
    a, b, c = lacks[0], lacks[1], has[0]
    r = editing.edit(tr.model, x, [{a: 1.5}, {b: 1.5, c: -0.5}], probs=probs)
    assert r.w_new[0, a] == 1.5 and r.w_new[1, b] == 1.5 and r.w_new[1, c] == -0.5
    assert torch.equal(r.w_new[0, torch.arange(len(w[0])) != a], r.w[0, torch.arange(len(w[0])) != a])
    with pytest.raises(ValueError, match="2 sets of changes for 1 faces"):
        editing.edit(tr.model, x[:1], [{0: 1.5}, {0: 1.5}])
    with pytest.raises(ValueError, match="unknown edit method 'nope'"):
        editing.edit(tr.model, x, {0: 1.5}, method="nope")


def test_a_change_the_face_surely_shows_already_is_not_made(tr):
    x = editing.to_input(faces(2))
    probs, w = editing.infer(tr.model, x)
    has = int((probs >= editing.ALREADY_SURE).all(0).nonzero()[0, 0])  # an attribute the model is sure both faces show
    lacks = int((probs <= 1 - editing.ALREADY_SURE).all(0).nonzero()[0, 0])  # and one it is sure neither does
    for method in ("paper", "latent"):
        # asked for what is there, at any strength: the faces stay exactly as they were
        same = editing.edit(tr.model, x, {has: 3.0, lacks: -1.0}, method=method)
        assert torch.equal(same.w_new, w) and torch.equal(same.result, x) and not same.delta_pixels.any()
        # with a change the faces lack beside it, that one alone is made
        one = editing.edit(tr.model, x, {has: 3.0, lacks: 2.0}, method=method)
        assert torch.equal(one.w_new[:, has], w[:, has]) and (one.w_new[:, lacks] == 2.0).all()
        assert one.delta_pixels.any()
    # soft: the same, by the probabilities fed as they are
    soft = editing.edit(tr.model, x, {has: 3.0}, soft=True)
    assert torch.equal(soft.w_new, probs) and torch.equal(soft.result, x)
    # read as there but not surely: the request counts, and the change is made
    p = probs.clone()
    p[:, has] = (0.5 + editing.ALREADY_SURE) / 2
    made = editing.edit(tr.model, x, {has: 3.0}, probs=p)
    assert (made.w_new[:, has] == 3.0).all() and made.delta_pixels.any()
    assert editing.already(same, {has: 3.0, lacks: -1.0}) == [
        editing.Reading(f, i, on, float(probs[f, i])) for f in range(2) for i, on in ((has, True), (lacks, False))
    ]
    assert editing.already(made, {has: 3.0}) == [] and editing.already(one, {has: 3.0, lacks: 2.0})[0].index == has
    # at strength 1, plain on, a face read as showing it at all is left as it is: said so too
    plain = editing.edit(tr.model, x, {has: attributes.coded(True, 1.0)}, probs=p)
    assert torch.equal(plain.result, x) and [r.index for r in editing.already(plain, {has: 1.0})] == [has, has]


def test_a_change_at_strength_0_is_refused_not_read_as_off(tr):
    i = tr.attr_names.index("Smiling")
    with pytest.raises(attributes.AttributeSpecError, match="strength 0 is neither on nor off"):
        editing.edit(tr.model, editing.to_input(faces(2)), {i: attributes.coded(True, 0.0)})
    with pytest.raises(attributes.AttributeSpecError, match="Smiling at strength 0"):
        attributes.check_directions({i: 0.5}, tr.attr_names)
    attributes.check_directions({i: attributes.coded(True, 0.5)}, tr.attr_names)  # any strength above 0 has one


def test_a_new_rule_is_a_function_and_a_name(tr, monkeypatch):
    def nothing(model, x, z, w, w_new):  # draws the faces as they are: the edit changes nothing
        return x, x, None

    monkeypatch.setitem(editing.RULES, "nothing", nothing)
    x = editing.to_input(faces(2))
    r = editing.edit(tr.model, x, {0: 1.5}, method="nothing")
    assert torch.equal(r.result, x) and not r.delta_pixels.any()
    assert r.strip().shape == (8, 64, 64, 3) and r.fade is None

    def drawn(model, x, z, w, w_new):  # draws grey, taken outright on the top half and added below
        fade = torch.zeros_like(x[:, :1])
        fade[..., :32, :] = 1.0
        return x, torch.zeros_like(x), fade

    monkeypatch.setitem(editing.RULES, "drawn", drawn)
    r = editing.edit(tr.model, x, {0: 1.5}, method="drawn")
    assert torch.allclose(r.result[..., :32, :], torch.zeros_like(x[..., :32, :]), atol=1e-6)
    below = (x + editing.change(x, x, torch.zeros_like(x), "drawn")).clamp(-1, 1)[..., 32:, :]
    assert torch.allclose(r.result[..., 32:, :], below, atol=1e-6) and not torch.equal(below, x[..., 32:, :])
    assert r.fade_map.shape == (2, 64, 64) and r.fade_map[:, :32].min() == 1 and r.fade_map[:, 32:].max() == 0


def test_latent_rule_moves_the_faces_own_latent(tr):
    face = photo_array(64, 64, seed=6)
    values = attributes.values(attributes.parse_set_unset(["Smiling"], [], tr.attr_names), 2.0)
    r = editing.edit(tr.model, editing.to_input([face]), values, method="latent")
    m = tr.model
    with torch.no_grad():
        x = editing.to_input([face])
        mu_x = m.q_x(x).mu  # (1, Z)
        step = m.q_w(r.w_new).mu - m.q_w(r.w).mu  # (1, Z): what the change moves q(z|w)'s mean by
        before = m.decode_x(mu_x)[0]  # (1, 3, 64, 64): the face's own reconstruction, not x_mean
        after = m.decode_x(mu_x + step)[0]
    assert torch.allclose(r.before, before, atol=1e-5) and torch.allclose(r.after, after, atol=1e-5)
    assert torch.allclose(r.result, (x + editing.change(x, before, after, "latent")).clamp(-1, 1), atol=1e-5)
    # asking for what the face already has moves nothing
    same = editing.edit(tr.model, x, {i: float(v) for i, v in enumerate(r.w[0])}, method="latent")
    assert torch.equal(same.before, same.after) and torch.allclose(same.result, x, atol=1e-6)
