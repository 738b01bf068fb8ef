"""Bidirectional quality: the scores on hand-made predictions with known answers, the edits scored, and
`jmvae evaluate` end to end on a tiny model and a tiny data folder."""

import json

import numpy as np
import pytest
import torch

from jmvae_cli import attributes, editing, quality, translate
from jmvae_cli.baselines import AttributeClassifier
from jmvae_cli.checkpoint import save_model
from jmvae_cli.data import VAL_FRACTION, DataError, load_data, val_fraction_of
from jmvae_cli.model import JMVAEConfig, pixels_to_input
from tests.conftest import run
from tests.model_fixtures import ATTRS, PREPROCESS, photo_array, save_tiny, tiny_weights  # noqa: F401 (fixture)


def save_classifier(path, attr_names=ATTRS, seed=1):
    torch.manual_seed(seed)
    cfg = JMVAEConfig(model="classifier", n_attrs=len(attr_names), latent_dim=4, channels=(8, 8, 8, 8),
                      image_features=16, attr_hidden=16, joint_hidden=16)  # fmt: skip
    save_model(path, AttributeClassifier(cfg).eval(), {"attr_names": list(attr_names), "preprocess": PREPROCESS})
    return path


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory):
    return save_classifier(tmp_path_factory.mktemp("classifier") / "classifier.safetensors")


@pytest.fixture(scope="module")
def tr(tiny_weights):
    return translate.Translator.from_weights(tiny_weights, "cpu", "fp32")


# ----------------------------------------------------------------------------- scores with known answers


def test_binary_scores_by_hand():
    pred = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    target = np.array([[1, 0], [0, 1], [0, 1], [1, 1]])
    s = quality.binary_scores(pred, target)
    # column 0: tp 1, fp 1, tn 1, fn 1; column 1: tp 2, fp 0, tn 1, fn 1
    assert s["accuracy"] == pytest.approx([0.5, 0.75])
    assert s["balanced_accuracy"] == pytest.approx([0.5, (2 / 3 + 1) / 2])
    assert s["f1"] == pytest.approx([0.5, 4 / 5])


def test_binary_scores_when_a_class_is_absent():
    target = np.zeros((4, 2), int)  # no positives at all
    pred = np.array([[0, 0], [0, 0], [1, 0], [0, 0]])
    s = quality.binary_scores(pred, target)
    assert s["accuracy"] == pytest.approx([0.75, 1.0])
    assert s["balanced_accuracy"] == pytest.approx([0.75, 1.0])  # the negatives' rate alone
    assert s["f1"] == pytest.approx([0.0, 0.0])  # no positive predicted and present: 0, not a free 1
    s = quality.binary_scores(np.ones((3, 1)), np.ones((3, 1)))
    assert s["balanced_accuracy"] == pytest.approx([1.0]) and s["f1"] == pytest.approx([1.0])


def test_majority_baseline():
    train = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [1, 0, 0]])  # majorities 1, 0 and a tie (-> 1)
    assert quality.majority_classes(train).tolist() == [1, 0, 1]
    target = np.array([[1, 1, 0], [0, 0, 0]])
    s = quality.majority_scores(train, target)
    assert s["accuracy"] == pytest.approx([0.5, 0.5, 0.0])
    assert s["balanced_accuracy"] == pytest.approx([0.5, 0.5, 0.0])  # a constant guess is at chance
    assert s["f1"] == pytest.approx([2 / 3, 0.0, 0.0])


def test_coherence_scores_requested_against_recognised():
    requested = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    recognised = np.array([[1, 0], [0, 0], [0, 1], [0, 1]])
    s = quality.coherence_scores(requested, recognised)
    assert s["accuracy"] == pytest.approx([0.75, 0.75])
    # column 0: one of two requested positives recognised, both requested negatives kept
    assert s["balanced_accuracy"][0] == pytest.approx((0.5 + 1) / 2)
    assert s["f1"][1] == pytest.approx(2 / 3)  # tp 1, fp 1


def test_summary_is_plain_json():
    s = quality.summary(quality.binary_scores(np.eye(3), np.eye(3)), ["a", "b", "c"])
    assert s["mean"] == {"accuracy": 1.0, "balanced_accuracy": 1.0, "f1": 1.0}
    assert list(s["per_attribute"]) == ["a", "b", "c"]
    json.dumps(s)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)  # a correlated Gaussian sample
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    # the same covariance: only the means differ
    assert quality.frechet_distance(a, a + shift) == pytest.approx((shift**2).sum(), rel=1e-6)
    # b = c a: mean c mu, covariance c^2 S, and (S c^2 S)^1/2 = c S -> (1 - c)^2 (|mu|^2 + tr S)
    c = 1.7
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    expected = (1 - c) ** 2 * ((mu**2).sum() + np.trace(cov))
    assert quality.frechet_distance(a, c * a) == pytest.approx(expected, rel=1e-6)
    assert quality.frechet_distance(c * a, a) == pytest.approx(expected, rel=1e-6)


def test_load_classifier_reorders_and_refuses(tmp_path, tr):
    shuffled = ATTRS[::-1]
    c = quality.load_classifier(save_classifier(tmp_path / "c.safetensors", shuffled), ATTRS, torch.device("cpu"))
    assert [shuffled[i] for i in c.index] == ATTRS
    x = pixels_to_input(torch.from_numpy(photo_array(64, 64)[None]))
    assert torch.equal(c.probs(x), c.model.attrs_from_images(x).flip(1))
    with pytest.raises(quality.ClassifierError, match="Young"):
        quality.load_classifier(save_classifier(tmp_path / "d.safetensors", ATTRS[:4]), ATTRS, torch.device("cpu"))
    with pytest.raises(quality.ClassifierError, match="not an attribute classifier"):
        quality.load_classifier(tr.weights, ATTRS, torch.device("cpu"))


def test_default_edits():
    # the default list, restricted to the attributes the model has, in the default order
    got = [(c.index, c.on) for c in quality.default_edits(ATTRS)]
    assert got == [(3, True), (3, False), (2, True), (2, False), (1, True), (1, False), (4, True), (4, False)]


def test_align_attributes(tmp_path, make_generic):
    data = load_data([make_generic(tmp_path, 6, ATTRS[::-1])], progress=False)
    aligned = quality.align_attributes(data, ATTRS)
    assert aligned.attr_names == ATTRS
    assert np.array_equal(aligned.attrs, data.attrs[:, ::-1])
    with pytest.raises(DataError, match="Bald"):
        quality.align_attributes(data, ATTRS + ["Bald"])


def test_evaluate_quality_counts(tr, classifier_weights):
    clf = quality.load_classifier(classifier_weights, ATTRS, torch.device("cpu"))
    faces = np.stack([photo_array(64, 64, seed=s) for s in range(7)])  # (7, 64, 64, 3)
    attrs = np.random.default_rng(0).integers(0, 2, (7, len(ATTRS))).astype(np.uint8)
    train = np.random.default_rng(1).integers(0, 2, (20, len(ATTRS))).astype(np.uint8)
    edits = [attributes.parse_change(e, ATTRS) for e in ("+Smiling", "-Eyeglasses")]
    r = quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, classifier=clf, edits=edits, batch_size=3)
    # img2attr through q(z|x) is exactly img2attr's thresholded output against the labels
    pred = translate.infer_attributes(tr, faces) >= 0.5
    assert r["img2attr"]["q_x"] == quality.summary(quality.binary_scores(pred, attrs), ATTRS)
    assert r["img2attr"]["majority"] == quality.summary(quality.majority_scores(train, attrs), ATTRS)
    with torch.no_grad():
        seen = (clf.probs(pixels_to_input(torch.from_numpy(faces))) >= 0.5).numpy()
    assert r["attr2img"]["classifier_on_real"] == quality.summary(quality.binary_scores(seen, attrs), ATTRS)
    rows = r["edit"]["edits"]
    assert [(e["attribute"], e["target"]) for e in rows] == [("Smiling", 1), ("Eyeglasses", 0)]
    for e, (i, target) in zip(rows, [(0, 1), (2, 0)]):
        todo = attrs[:, i] != target  # only faces not yet at the target are edited
        assert e["faces"] == todo.sum()
        assert e["target_before"] == pytest.approx((seen[todo, i] == target).mean())
        assert 0 <= e["flipped"] <= 1 and 0 <= e["others_unchanged"] <= 1 and e["abs_delta"] > 0
        strict = todo & (seen[:, i] != target)
        assert (e["flipped_strict"] is None) == (not strict.any())
    assert r["edit"]["mean"]["flipped"] == pytest.approx(np.mean([e["flipped"] for e in rows]))
    per = r["edit"]["attributes"]
    assert set(per) == {"Smiling", "Eyeglasses"} and per["Smiling"]["flipped"] == rows[0]["flipped"]
    assert r["edit"]["lowest"] == min(per, key=lambda a: per[a]["flipped"])
    # the other way round the tiny model is sure of the target on some faces already: those are left as they were
    back = [attributes.parse_change(e, ATTRS) for e in ("-Smiling", "+Eyeglasses")]
    rb = quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, classifier=clf, edits=back, parts=["edit"])
    probs = translate.infer_attributes(tr, faces)
    for e, (i, target) in zip(rb["edit"]["edits"], [(0, 0), (2, 1)]):
        read = probs[attrs[:, i] != target, i]
        assert e["unmade"] == pytest.approx(np.mean([editing.shows_already(v, bool(target)) for v in read]))
    assert max(e["unmade"] for e in rb["edit"]["edits"]) > 0

    only = quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, parts=["img2attr"])
    assert list(only) == ["img2attr"] and only["img2attr"] == r["img2attr"]
    with pytest.raises(quality.ClassifierError):
        quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, parts=["edit"])
    # an edit with its own strength says so in its row
    own = [attributes.parse_change("Smiling=3", ATTRS)]
    r = quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, classifier=clf, parts=["edit"], edits=own)
    assert r["edit"]["edits"][0]["strength"] == 3.0 and rows[0]["strength"] == 2.0  # the tiny model's auto: 2
    with pytest.raises(attributes.AttributeSpecError, match="flipping"):
        flip = [attributes.Change(0, "Smiling", None)]
        quality.evaluate_quality(tr.model, ATTRS, faces, attrs, train, classifier=clf, edits=flip)


# ----------------------------------------------------------------------------- jmvae evaluate


@pytest.fixture
def data_dir(tmp_path, make_generic):
    return make_generic(tmp_path, 40, ATTRS)


def test_evaluate_json(tiny_weights, classifier_weights, data_dir):
    r = run("evaluate", "--data", data_dir, "--weights", tiny_weights, "--classifier", classifier_weights,
            "--format", "json", "--skip", "likelihood", "--val-fraction", "0.3")  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {"img2attr", "attr2img", "edit", "weights", "classifier", "images", "attributes"} <= set(report)
    assert "likelihood" not in report
    assert set(report["img2attr"]) == {"q_x", "q_xw_zero", "majority"}
    assert set(report["attr2img"]) == {"coherence", "classifier_on_real"}
    assert set(report["img2attr"]["q_x"]["mean"]) == {"accuracy", "balanced_accuracy", "f1"}
    assert list(report["attr2img"]["coherence"]["per_attribute"]) == ATTRS
    assert {e["attribute"] for e in report["edit"]["edits"]} == {"Eyeglasses", "Male", "Blond_Hair", "Young"}
    split = load_data([data_dir], val_fraction=0.3, progress=False).indices("val")
    assert report["images"] == len(split) > 0

    r = run("evaluate", "--data", data_dir, "--weights", tiny_weights, "--classifier", classifier_weights,
            "-f", "json", "--val-fraction", "0.3", "--max-images", "3", "--k", "2", "--nw", "2",
            "--skip", "edit", "--skip", "attr2img")  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["images"] == 3 and "edit" not in report and "classifier" not in report
    assert {"log_px_iw_qxw", "log_px_given_w_iw"} <= set(report["likelihood"])
    assert set(report["likelihood"]["log_px_iw_qxw"]) >= {"nats", "nats_se", "bits_per_dim", "bits_per_dim_se"}


def test_evaluate_splits_the_data_as_the_models_training_did(tmp_path, data_dir):
    # a model trained with 30% of these folders held out is scored on those 30%, none of its training faces
    weights = save_tiny(tmp_path / "m.safetensors", train={"val_fraction": 0.3})
    r = run("evaluate", "--data", data_dir, "--weights", weights, "-f", "json", "--skip", "attr2img",
            "--skip", "edit", "--skip", "likelihood")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["images"] == len(load_data([data_dir], val_fraction=0.3, progress=False).indices("val"))
    assert val_fraction_of({"train": {"val_fraction": 0.3}}) == 0.3
    assert val_fraction_of({}) == val_fraction_of({"train": {"val_fraction": "x"}}) == VAL_FRACTION


def test_evaluate_table(tiny_weights, classifier_weights, data_dir):
    r = run("evaluate", "--data", data_dir, "--weights", tiny_weights, "--classifier", classifier_weights,
            "-f", "table", "--skip", "likelihood", "--edit", "+Male", "--edit=-Smiling")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "coherence" in r.stdout and "+Male" in r.stdout and "-Smiling" in r.stdout and "mean" in r.stdout
    assert "seen least: " in r.stdout


def test_the_table_keeps_whole_attribute_names_on_a_narrow_terminal():
    import io

    from rich.console import Console

    from jmvae_cli import reports

    names = ["Wearing_Necklace", "Wearing_Necktie", "Mouth_Slightly_Open"]
    scores = {k: 0.5 for k in ("accuracy", "balanced_accuracy", "f1")}
    summary = {"per_attribute": {n: scores for n in names}, "mean": scores}
    report = {"weights": "w", "images": 2, "split": "val", "attributes": names,
              "img2attr": {"q_x": summary, "q_xw_zero": summary, "majority": summary}}  # fmt: skip
    out = io.StringIO()
    reports.print_evaluation(report, Console(file=out, width=60))
    assert all(n in out.getvalue() for n in names)


def test_an_attribute_is_the_mean_of_its_directions():
    counts = np.zeros((3, 3, len(quality.COUNTS)))
    at = quality.COUNTS.index
    for e, (faces, after) in enumerate([(10, 2), (4, 3), (5, 5)]):  # Smiling on 20%, off 75%; Male on 100%
        counts[e, 0, [at("faces"), at("after"), at("kept")]] = faces, after, faces * (len(ATTRS) - 1)
    edits = [attributes.parse_change(e, ATTRS) for e in ("+Smiling", "-Smiling", "+Male")]
    r = quality.edit_report(counts, edits, ATTRS, attributes.Strengths(), None, "regress")
    assert r["attributes"]["Smiling"]["flipped"] == pytest.approx(0.475) and r["lowest"] == "Smiling"
    assert r["mean"]["flipped"] == pytest.approx((0.475 + 1.0) / 2) and r["mean"]["others_unchanged"] == 1.0


def one_line_error(r, *words, code=1):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    for w in words:
        assert w in r.stderr, r.stderr


def test_evaluate_errors(tiny_weights, classifier_weights, data_dir, tmp_path):
    base = ["evaluate", "--data", data_dir, "--weights", tiny_weights, "-f", "json", "--skip", "likelihood"]
    other = save_classifier(tmp_path / "other.safetensors", ["Smiling", "Male", "Bald", "Blond_Hair", "Young"])
    one_line_error(run(*base, "--classifier", other), "Eyeglasses")
    one_line_error(run(*base, "--classifier", classifier_weights, "--split", "test"), "no test images")
    one_line_error(run(*base, "--classifier", classifier_weights, "--edit", "+Bald"), "Bald", code=2)
    said = "Smiling at strength 0 is neither on nor off"
    one_line_error(run(*base, "--classifier", classifier_weights, "--edit", "+Smiling=0"), said, code=2)
    twice = ["--edit", "+Smiling", "--edit", "-Smiling", "--edit", "+smiling=3"]
    one_line_error(run(*base, "--classifier", classifier_weights, *twice), "+Smiling is given twice", code=2)
    one_line_error(run(*base, "--classifier", tmp_path / "missing.safetensors"), "not found")
    assert run(*base, "--skip", "img2attr", "--skip", "attr2img", "--skip", "edit").exit_code == 2
    assert run(*base, "-f", "csv").exit_code == 2
