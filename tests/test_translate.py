"""The translation library: attribute names and values, the paper's edit formula, pasting, batches."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jmvae_cli import attributes, translate
from jmvae_cli.runtime import bf16_supported
from tests.model_fixtures import ATTRS, photo_array, tiny_weights, write_photo  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tr(tiny_weights):
    return translate.Translator.from_weights(tiny_weights, "cpu", "fp32")


# ----------------------------------------------------------------------------- names and values


def test_attr_index_is_case_insensitive_and_suggests():
    assert attributes.attr_index("smiling", ATTRS) == 0
    assert attributes.attr_index("blond-hair", ATTRS) == 3
    assert attributes.attr_index("BLOND HAIR", ATTRS) == 3
    with pytest.raises(attributes.AttributeNameError, match="did you mean Smiling"):
        attributes.attr_index("Smilng", ATTRS)
    with pytest.raises(attributes.AttributeNameError) as e:
        attributes.attr_index("Wearing_Hat", ATTRS)
    assert "did you mean" not in str(e.value)


def test_attr_changes_strength_and_conflicts():
    ch = translate.attr_changes(["Smiling"], ["male"], ATTRS, strength=2.0)
    assert ch == {0: 1.5, 1: -0.5}  # the paper's +-2 in +-1 coding
    assert translate.attr_changes(["Smiling"], [], ATTRS, strength=1.0) == {0: 1.0}
    with pytest.raises(attributes.AttributeNameError, match="both --set and --unset"):
        translate.attr_changes(["Smiling"], ["SMILING"], ATTRS)


def test_base_attributes():
    r = translate.base_attributes("random", 40, seed=3)
    assert set(np.unique(r)) <= {0.0, 1.0} and 5 < r.sum() < 35
    assert np.array_equal(r, translate.base_attributes("random", 40, seed=3))
    assert not translate.base_attributes("zeros", 5, 0).any()


RECORD = {"file": "a.jpg", "attributes": {"Smiling": 0.9, "Male": 0.2, "Eyeglasses": 0.0, "Blond_Hair": 0.7, "Young": 1}}


@pytest.mark.parametrize("kind", ["json", "json-dict", "jsonl", "csv", "tsv"])
def test_read_attrs_record_formats(kind):
    header, row = ["file", *ATTRS], ["a.jpg", *map(str, RECORD["attributes"].values())]
    text = {
        "json": json.dumps([RECORD, {"file": "b.jpg", "attributes": {}}], indent=2),
        "json-dict": json.dumps(RECORD),
        "jsonl": json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n",
        "csv": ",".join(header) + "\n" + ",".join(row) + "\n",
        "tsv": "\t".join(header) + "\n" + "\t".join(row) + "\n",
    }[kind]
    w, file = translate.read_attrs_record(text, ATTRS)
    assert file == "a.jpg"
    assert np.allclose(w, [0.9, 0.2, 0.0, 0.7, 1.0])


def test_read_attrs_record_subset_and_errors():
    w, _ = translate.read_attrs_record(json.dumps({"file": "a", "face": 1, "attributes": {"smiling": 0.8}}), ATTRS)
    assert np.allclose(w, [0.8, 0, 0, 0, 0])  # --only-positive output: the rest are absent
    for text, msg in [
        ("", "empty"),
        ("[]", "no records"),
        ('{"attributes": {"Smilling": 1}}', "did you mean Smiling"),
        ('{"attributes": {"Smiling": "yes"}}', "not a number"),
        ("file,Smiling\n", "header and at least one row"),
        ("{not json", "not valid JSON"),
    ]:
        with pytest.raises(translate.AttrsFileError, match=msg):
            translate.read_attrs_record(text, ATTRS, "x.json")


# ----------------------------------------------------------------------------- the model's translations


def test_edit_face_is_the_papers_formula(tr):
    face = photo_array(64, 64, seed=5)
    changes = translate.attr_changes(["Smiling"], ["Young"], tr.attr_names, strength=2.0)
    r = translate.edit_face(tr, face, changes)

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
        expected = (x + x_mean_new - x_mean).clamp(-1, 1)[0]
    assert torch.allclose(r.probs, probs[0], atol=1e-6)
    assert torch.equal(r.w, w[0]) and torch.equal(r.w_new, w_new[0])
    assert torch.allclose(r.x_mean, x_mean[0], atol=1e-5)
    assert torch.allclose(r.x_mean_new, x_mean_new[0], atol=1e-5)
    assert torch.allclose(r.result, expected, atol=1e-5)
    assert (r.x_mean_new - r.x_mean).abs().max() > 0.01  # the edit does something
    assert r.strip().shape == (4, 64, 64, 3)
    assert np.array_equal(r.pixels("x"), face)
    assert np.allclose(r.delta_pixels, (x_mean_new - x_mean)[0].permute(1, 2, 0).numpy() * 127.5, atol=1e-3)


def test_edit_face_soft_keeps_probabilities(tr):
    r = translate.edit_face(tr, photo_array(64, 64, seed=5), {0: 1.0}, soft=True)
    assert torch.allclose(r.w[1:], r.probs[1:]) and r.w_new[0] == 1.0


def test_average_face_and_samples(tr):
    w = np.array([1, 0, 0, 1, 1], np.float32)
    one = translate.average_face(tr, w)
    assert one.shape == (1, 64, 64, 3) and one.dtype == np.uint8
    many = translate.average_face(tr, w, samples=3, zeta=1.0, seed=1)
    assert many.shape == (4, 64, 64, 3)
    # the average face first (up to rounding: a batch of 4 may take other convolution kernels than a batch of 1)
    assert np.abs(many[0].astype(int) - one[0]).max() <= 1
    assert np.array_equal(many, translate.average_face(tr, w, samples=3, zeta=1.0, seed=1))
    assert not np.array_equal(many[1], many[2])
    still = translate.average_face(tr, w, samples=2, zeta=0.0, seed=1)  # zeta 0: no noise
    assert np.array_equal(still[1], still[0])


def test_grid_layout():
    tiles = np.zeros((5, 64, 64, 3), np.uint8)
    assert translate.grid(tiles).size == (3 * 64 + 4, 2 * 64 + 2)
    assert translate.grid(tiles[:1], size=128).size == (128, 128)
    assert translate.grid(tiles[:4], cols=4, size=32).size == (4 * 32 + 6, 32)


def test_bf16_batches_match_fp32(tiny_weights):
    dev = torch.device("cpu")
    if not bf16_supported(dev):
        pytest.skip("no native bf16 on this CPU")
    fp32 = translate.Translator.from_weights(tiny_weights, "cpu", "fp32")
    bf16 = translate.Translator.from_weights(tiny_weights, "cpu", "bf16")
    assert bf16.precision.name == "bf16"
    crops = np.stack([photo_array(64, 64, seed=s) for s in range(16)])
    a, b = translate.infer_attributes(fp32, crops), translate.infer_attributes(bf16, crops)
    assert np.abs(a - b).max() < 0.03


# ----------------------------------------------------------------------------- many files


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.jpg", "d/a.png", "d/sub/c.JPG", "d/notes.txt", "d/.hidden.jpg", "x1.png", "x2.png"]:
        (tmp_path / name).write_bytes(b"x")
    got = translate.expand_inputs([str(tmp_path / "d"), str(tmp_path / "x*.png"), "-", str(tmp_path / "nope.jpg")])
    rel = [g if g == "-" else str(__import__("pathlib").Path(g).relative_to(tmp_path)) for g in got]
    assert rel == ["d/a.png", "d/b.jpg", "d/sub/c.JPG", "x1.png", "x2.png", "-", "nope.jpg"]


def test_img2attr_batches_keep_order_past_bad_files(tr, tmp_path, monkeypatch):
    monkeypatch.setattr(translate, "BATCH_SIZE", 3)  # several batches, a failure inside one
    files = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        if i == 4:
            p.write_bytes(b"not an image")
        else:
            write_photo(p, 64, 64, seed=i)
        files.append(str(p))
    ticks = []
    results = list(translate.img2attr(tr, files, detect=False, on_file=lambda: ticks.append(1)))
    assert [r.file for r in results] == files and len(ticks) == 8
    assert results[4].error and "not an image" in results[4].error and results[4].probs is None
    ok = [r for r in results if r.error is None]
    crops = np.stack([np.asarray(Image.open(r.file).convert("RGB")) for r in ok])
    assert np.allclose(np.stack([r.probs for r in ok]), translate.infer_attributes(tr, crops), atol=1e-6)
    assert len({round(float(r.probs[1]), 4) for r in ok}) > 1  # different images, different answers
