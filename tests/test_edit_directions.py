"""The regress edit rule, its constants in the weights file, `jmvae calibrate`, `--strength auto` and the read-back
warning of `jmvae edit`."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from jmvae_cli import attributes, checkpoint, edit_directions, editing, translate
from jmvae_cli.edit_directions import EditConstants
from tests.conftest import fails, run
from tests.model_fixtures import ATTRS, photo_array, save_tiny, tiny_model, write_photo
from tests.test_quality import save_classifier

Z, S = 4, 64  # the tiny model's latent size and image size


def constants(seed: int = 0, off: float = 0.0, on: float = 1.0, footprints=None, strengths=None) -> EditConstants:
    g = torch.Generator().manual_seed(seed)
    a = len(ATTRS)
    return EditConstants(
        directions=torch.randn(a, Z, generator=g),
        readout=torch.randn(a, Z + 1, generator=g),
        means=torch.tensor([[off, on]] * a),
        footprints=torch.ones(a, S, S) if footprints is None else footprints,
        strengths=strengths or {},
    )


def model_with(c: EditConstants | None):
    model = tiny_model()
    model.edit_constants = c
    return model


def faces(n: int) -> torch.Tensor:
    return editing.to_input(np.stack([photo_array(64, 64, seed=s) for s in range(n)]))  # (n, 3, 64, 64)


def readout(c: EditConstants, z: torch.Tensor) -> torch.Tensor:
    return z @ c.readout[:, :-1].T + c.readout[:, -1]  # (B, A)


def test_the_move_reaches_the_goal_and_leaves_faces_there_alone():
    c = constants()
    z = torch.randn(6, Z, generator=torch.Generator().manual_seed(1)) * 3
    changed = torch.zeros(6, len(ATTRS), dtype=torch.bool)
    changed[:, 1] = True
    target = torch.ones(6, len(ATTRS), dtype=torch.bool)
    s = torch.full((6, len(ATTRS)), 1.5)
    moved = c.move(z, changed, target, s)
    before, after = readout(c, z)[:, 1], readout(c, moved)[:, 1]
    goal = 1.5  # off + s (on - off)
    below = before < goal
    assert below.any() and (~below).any()  # both kinds of face in the batch
    # within the cap (2 s spreads) a face below the goal lands on it; one already past it does not move
    near = below & (goal - before <= 2 * 1.5)
    assert torch.allclose(after[near], torch.full_like(after[near], goal), atol=1e-4)
    assert torch.equal(moved[~below], z[~below])
    far = below & ~near
    assert torch.allclose(after[far] - before[far], torch.full_like(after[far], 3.0), atol=1e-4)
    # unset mirrors it: the goal is on - s (on - off) = -0.5, and faces already below it stay
    down = c.move(z, changed, ~target, s)
    r = readout(c, down)[:, 1]
    above = before > -0.5
    assert torch.equal(down[~above], z[~above]) and (r[above] < before[above]).all()


def test_regress_rule_is_the_decoded_move_inside_the_footprint():
    c = constants()
    model = model_with(c)
    x = faces(3)
    r = editing.edit(model, x, {1: attributes.coded(True, 1.5)}, method="regress")
    with torch.no_grad():
        z = model.q_x(x).mu
        changed = r.w_new != r.w
        z_new = c.move(z, changed, r.w_new > 0.5, (2 * r.w_new - 1).abs())
        before, drawn = model.images_from_z(z), model.images_from_z(z_new)
    assert torch.allclose(r.before, before, atol=1e-5) and torch.allclose(r.after, drawn, atol=1e-5)
    assert torch.allclose(r.result, (x + editing.change(x, before, drawn, "regress")).clamp(-1, 1), atol=1e-5)


def test_several_changes_take_the_way_the_model_reads_more_of_them_on():
    foot = torch.zeros(len(ATTRS), S, S)
    foot[0, :32] = 1.0
    foot[2, 16:] = 0.5
    c = constants(off=50.0, on=51.0, footprints=foot)  # every face has far to go
    model = model_with(c)
    x = faces(4)
    changes = {0: attributes.coded(True, 1.0), 2: attributes.coded(False, 2.0)}
    both = editing.edit(model, x, changes, method="regress")
    # apart: each change drawn alone inside its own footprint, added up
    first = editing.edit(model, x, {0: changes[0]}, method="regress")
    second = editing.edit(model, x, {2: changes[2]}, method="regress")
    apart = (first.after - first.before) + (second.after - second.before)
    # together: one move for both, inside the union of the footprints
    with torch.no_grad():
        z = model.q_x(x).mu
        target = both.w_new > 0.5
        moved = c.move(z, both.w_new != both.w, target, (2 * both.w_new - 1).abs())
        union = 1 - (1 - foot[0]) * (1 - foot[2])
        together = union * (model.images_from_z(moved) - both.before)
    assert apart.abs().amax() > 0.01 and (apart - together).abs().amax() > 0.01

    def done(delta):
        with torch.no_grad():
            read = model.attrs_from_images((x + delta).clamp(-1, 1)) > 0.5
        return ((read == target) & (both.w_new != both.w)).sum(1)

    got = both.after - both.before
    for face in range(len(x)):
        is_apart = torch.allclose(got[face], apart[face], atol=1e-5)
        is_together = torch.allclose(got[face], together[face], atol=1e-5)
        assert is_apart or is_together
        assert is_together == bool(done(together)[face] > done(apart)[face])


def test_faces_already_past_the_goal_are_returned_unchanged():
    model = model_with(constants(off=-100.0, on=-99.0))  # every face reads far above the goal of "on"
    x = faces(3)
    r = editing.edit(model, x, {1: attributes.coded(True, 2.0)}, method="regress")
    assert torch.equal(r.before, r.after) and torch.equal(r.result, x)


def test_pixels_outside_the_footprint_do_not_change():
    foot = torch.zeros(len(ATTRS), S, S)
    foot[0, 20:40, 10:30] = 1.0
    model = model_with(constants(off=50.0, on=51.0, footprints=foot))  # every face has far to go
    x = faces(2)
    assert not attributes.present(model.attrs_from_images(x)[:, [0, 3]]).any()  # changes to make, on both faces
    r = editing.edit(model, x, {0: attributes.coded(True, 1.5)}, method="regress")
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[20:40, 10:30] = False
    assert torch.equal(r.result[:, :, outside], x[:, :, outside])
    assert (r.result[:, :, ~outside] - x[:, :, ~outside]).abs().max() > 0.01
    # what the photo gets pasted (after - before) carries the mask too
    assert not r.delta_pixels[:, outside.numpy()].any()
    # two attributes changed: only inside one footprint or the other
    foot[3, 0:5, 0:5] = 1.0
    two = editing.edit(model, x, {0: attributes.coded(True, 1.5), 3: attributes.coded(True, 1.5)}, method="regress")
    outside[0:5, 0:5] = False
    assert torch.equal(two.result[:, :, outside], x[:, :, outside])
    assert (two.result[:, :, 0:5, 0:5] - x[:, :, 0:5, 0:5]).abs().max() > 0.01


def test_the_constants_travel_in_the_weights_file(tmp_path):
    old = save_tiny(tmp_path / "old.safetensors")
    assert checkpoint.load_model(old).model.edit_constants is None  # a file without them still loads
    c = constants(strengths={"Smiling": {"on": 3.0, "off": 1.5}})
    c.powers[2] = torch.tensor([1.0, 3.0])
    c.local[1, 1] = True
    c.drawn[0, 1] = True
    c.bank, c.bank_labels = torch.randn(30, Z).half().float(), torch.rand(30, len(ATTRS)) > 0.5
    new = tmp_path / "new.safetensors"
    checkpoint.save_edit_constants(old, new, c.tensors(), {"method": "regress", "strengths": c.strengths})
    loaded = checkpoint.load_model(new)
    got = loaded.model.edit_constants
    for k in (*EditConstants.TENSORS, *EditConstants.OPTIONAL):
        assert torch.equal(getattr(got, k), getattr(c, k)), k
    assert got.strengths == c.strengths and loaded.meta["edit"]["method"] == "regress"
    assert checkpoint.read_meta(new)["edit"]["strengths"]["Smiling"] == {"on": 3.0, "off": 1.5}
    for k, v in checkpoint.load_model(old).model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)  # the model itself is copied as it was
    # a file calibrated before the footprint powers and the local directions edits with every footprint as fitted,
    # every face moved along B_i
    earlier = tmp_path / "earlier.safetensors"
    tensors = {k: v for k, v in c.tensors().items() if k.removeprefix("edit.") not in EditConstants.OPTIONAL}
    checkpoint.save_edit_constants(old, earlier, tensors, {"method": "regress"})
    got = checkpoint.load_model(earlier).model.edit_constants
    assert torch.equal(got.powers, torch.ones(len(ATTRS), 2))
    assert got.bank is None and not got.local.any() and not got.drawn.any()
    # written again: the old constants are replaced, not added to
    checkpoint.save_edit_constants(new, new, constants(seed=5).tensors(), {"method": "regress"})
    assert torch.equal(checkpoint.load_model(new).model.edit_constants.directions, constants(seed=5).directions)


def test_default_method_and_auto_strengths():
    plain = model_with(None)
    assert editing.default_method(plain) == "paper"
    assert editing.strengths(plain, None, None) == attributes.Strengths()  # the paper's 2 for everything
    with pytest.raises(edit_directions.NoEditConstantsError, match="jmvae calibrate"):
        editing.edit(plain, faces(1), {0: 1.5}, method="regress")
    cal = model_with(constants(strengths={"Smiling": {"on": 3.0, "off": 1.5}}))
    assert editing.default_method(cal) == "regress"
    auto = editing.strengths(cal, None, None)
    changes = attributes.parse_set_unset(["Smiling", "Male=4"], [], ATTRS)
    assert attributes.values(changes, auto) == {0: attributes.coded(True, 3.0), 1: attributes.coded(True, 4.0)}
    unset = attributes.parse_set_unset([], ["Smiling", "Young"], ATTRS)
    # calibrated per direction; an attribute without a calibrated strength gets the default
    assert attributes.values(unset, auto) == {0: attributes.coded(False, 1.5), 4: attributes.coded(False, 2.0)}
    # --strength X overrides every calibrated one, Name=S overrides it
    fixed = editing.strengths(cal, None, 5.0)
    assert attributes.values(changes, fixed) == {0: attributes.coded(True, 5.0), 1: attributes.coded(True, 4.0)}
    # other rules have no calibrated strengths: auto is the paper's 2
    assert attributes.values(changes, editing.strengths(cal, "latent", None))[0] == attributes.coded(True, 2.0)


@pytest.fixture
def photo(tmp_path):
    return write_photo(tmp_path / "photo.png", 120, 100, seed=3)


def test_regress_without_constants_is_one_error_line(tmp_path, photo):
    old = save_tiny(tmp_path / "old.safetensors")
    fails(run("edit", photo, "--no-detect", "--set", "Smiling", "--method", "regress", "--weights", old),
          "jmvae calibrate")  # fmt: skip
    r = run("edit", photo, "--no-detect", "--set", "Smiling", "--weights", old, "-o", tmp_path / "a.png")
    assert r.exit_code == 0, r.output  # the default rule of such weights is the paper's
    fails(run("edit", photo, "--set", "Smiling", "--strength", "lots", "--weights", old), code=2)


def test_calibrate_writes_refuses_to_overwrite_and_edits_with_auto(tmp_path, make_generic, photo):
    weights = save_tiny(tmp_path / "tiny.safetensors")
    clf = save_classifier(tmp_path / "classifier.safetensors")
    data = make_generic(tmp_path, 60, ATTRS, size=(64, 64))
    out = tmp_path / "calibrated.safetensors"
    args = ["calibrate", "--weights", weights, "--data", data, "--out", out, "--classifier", clf, "--faces", 10]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and f"wrote {out}" in r.stderr and "+Smiling: strength" in r.stderr
    meta = checkpoint.read_meta(out)
    assert set(meta["edit"]["strengths"]) == set(ATTRS)
    for s in meta["edit"]["strengths"].values():
        assert set(s) == {"on", "off"} and all(v in (0.5, 1, 1.5, 2, 3, 4) for v in s.values())
    assert checkpoint.load_model(out).model.edit_constants is not None
    fails(run(*args), "exists", "--force")
    assert run(*args, "--force").exit_code == 0
    # where the result could not be written, before any of the work: one line
    for bad in (tmp_path / "nodir" / "c.safetensors", tmp_path / "c.json", tmp_path):
        fails(run(*[bad if a == out else a for a in args], "--force"), str(bad))
    # a file of the user's where the metadata would go beside a new one
    (tmp_path / "d.json").write_text("notes")
    fails(run(*[tmp_path / "d.safetensors" if a == out else a for a in args]), "d.json exists", "--force")
    assert (tmp_path / "d.json").read_text() == "notes"
    # the calibrated model edits with its rule and strengths by default
    crop = tmp_path / "crop.png"
    r = run("edit", photo, "--no-detect", "--set", "Smiling", "--crop-only", "-o", crop, "--weights", out)
    assert r.exit_code == 0, r.output
    tr = translate.Translator.from_weights(out, "cpu", "fp32")
    face = np.asarray(Image.open(crop))
    s = meta["edit"]["strengths"]["Smiling"]["on"]
    src = translate.edit_faces(tr, [_crop_of(photo, tr)], {0: attributes.coded(True, s)}, method="regress")
    assert np.array_equal(face, src.pixels("result")[0])


def _crop_of(photo, tr) -> np.ndarray:
    from jmvae_cli import faces

    return faces.load_faces(str(photo), str(photo), detect=False, size=tr.image_size)[1][0].crop


@pytest.mark.parametrize("changes", [{0: 1.5}, {0: 1.5, 1: -0.5}])
def test_a_face_is_edited_alike_whichever_neighbours_show_the_change_already(tmp_path, monkeypatch, changes):
    """Faces the model is sure show a change already are left alone; their neighbours' edits must not notice (on
    the CPU a batch's size changes how its sums round, and a face edited alone is padded to a block of faces)."""
    tr = translate.Translator.from_weights(save_tiny(tmp_path / "tiny.safetensors"), "cpu", "fp32")
    tr.model.edit_constants = constants()
    assert editing.default_method(tr.model) == editing.REGRESS
    crops = list(np.random.default_rng(1).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8))
    probs, _ = editing.infer(tr.model, editing.to_input(crops))
    monkeypatch.setattr(editing, "ALREADY_SURE", float(probs[:, 0].median()))  # half the faces have it already
    together = translate.edit_faces(tr, crops, changes)
    assert 0 < (together.w_new[:, 0] == together.w[:, 0]).sum() < len(crops)
    for i in range(len(crops)):
        alone = translate.edit_faces(tr, [crops[i]], changes)
        assert np.array_equal(alone.pixels("result")[0], together.pixels("result")[i]), i
        assert np.array_equal(alone.delta_pixels[0], together.delta_pixels[i]), i


def test_read_back_warns_on_stderr_for_each_change_the_model_does_not_see(tmp_path, photo, monkeypatch):
    weights = save_tiny(tmp_path / "tiny.safetensors")
    # a rule that changes nothing: the model reads back the face as it was, so every change against its reading
    # of the face is weak
    monkeypatch.setitem(editing.RULES, "paper", lambda model, x, z, w, w_new: (x, x, None))
    sets = [a for name in ATTRS for a in ("--set", name)]
    r = run("edit", photo, "--no-detect", *sets, "--crop-only", "-o", "-", "--weights", weights)
    assert r.exit_code == 0, r.output
    crop = np.asarray(Image.open(io.BytesIO(r.stdout_bytes)))  # stdout holds the image and nothing else
    tr = translate.Translator.from_weights(weights, "cpu")  # the edit reads back at img2attr's precision
    probs = translate.infer_attributes(tr, crop[None])[0]
    weak = [n for n, p in zip(ATTRS, probs) if p < 0.5]
    assert weak and len(weak) < len(ATTRS)  # both kinds, so the test can tell them apart
    lines = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == len(weak)
    for name, line in zip(weak, lines):
        assert "<stdin>" not in line and "photo.png" in line and f"{name} looks weak" in line
        assert f"try --set {name}=4" in line


def test_read_back_library():
    model = model_with(None)
    x = faces(2)
    e = editing.edit(model, x, {0: 1.5, 1: -0.5})
    with torch.no_grad():
        probs = model.attrs_from_images(editing.to_input(e.pixels("result")))
    weak = editing.read_back(model, e, {0: 1.5, 1: -0.5})
    expected = [(f, i) for f in range(2) for i, on in ((0, True), (1, False)) if (probs[f, i] >= 0.5) != on]
    assert [(w.face, w.index) for w in weak] == expected


def test_a_change_already_there_is_noted_on_stderr(tmp_path, photo):
    weights = save_tiny(tmp_path / "tiny.safetensors")
    tr = translate.Translator.from_weights(weights, "cpu", "fp32")
    probs = translate.infer_attributes(tr, _crop_of(photo, tr)[None])[0]
    on = [n for n, p in zip(ATTRS, probs) if editing.shows_already(p, True)]
    off = [n for n, p in zip(ATTRS, probs) if editing.shows_already(p, False)]
    unsure = [n for n, p in zip(ATTRS, probs) if 0.5 <= p < editing.ALREADY_SURE]
    assert on and off
    # the last: lacking it, or read as there but not surely, the face gets it (no note)
    asked = ["--set", on[0], "--unset", off[0], "--set", (unsure or off)[-1]]
    r = run("edit", photo, "--no-detect", *asked, "-o", tmp_path / "e.png", "--weights", weights)
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, r.stderr
    assert f"{on[0]} is already on" in notes[0] and f"{off[0]} is already off" in notes[1]
    assert all("photo.png" in line and line.endswith("left as it is") for line in notes)
    # asked only for what the face shows already, the photo comes back as it was, pixel for pixel
    r = run(
        "edit",
        photo,
        "--no-detect",
        "--set",
        on[0],
        "--unset",
        off[0],
        "-o",
        tmp_path / "same.png",
        "--weights",
        weights,
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), np.asarray(Image.open(photo).convert("RGB")))


def test_already_library():
    model = model_with(None)
    e = editing.edit(model, faces(2), {0: 1.5, 1: -0.5})
    seen = editing.already(e, {0: 1.5, 1: -0.5})
    expected = [
        (f, i) for f in range(2) for i, on in ((0, True), (1, False)) if editing.shows_already(e.probs[f, i], on)
    ]
    assert [(s.face, s.index) for s in seen] == expected
    assert all(s.p == pytest.approx(float(e.probs[s.face, s.index])) for s in seen)


def test_fit_takes_every_training_face_unless_told_to_sample():
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, S, S, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (40, len(ATTRS))).astype(np.float32)
    train = np.arange(5, 35)
    z = edit_directions.encode(model, images[train])
    every = edit_directions.regression_directions(z, torch.from_numpy(labels[train]))
    fitted = edit_directions.fit(model, images, labels, train[::-1].copy())
    assert torch.allclose(fitted.directions, every, atol=1e-5)
    sampled = edit_directions.fit(model, images, labels, train, edit_directions.CalibrateConfig(latent_faces=10))
    assert not torch.allclose(sampled.directions, every, atol=1e-3)


def test_an_attribute_on_a_small_part_keeps_only_that_part_at_full_strength():
    # attribute 0 darkens a 6 x 6 patch (1% of the crop) by 80 and the band below it, a tenth of the crop, by 20
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (300, len(ATTRS))).astype(np.float32)
    images = np.full((300, S, S, 3), 150.0) + rng.normal(0, 2, (300, S, S, 3))
    on = labels[:, 0] == 1
    images[on, 40:46, 29:35] -= 80
    images[on, 46:53, :] -= 20
    images = images.clip(0, 255).astype(np.uint8)
    rows = np.arange(300)
    plain = edit_directions.footprints(images, labels, rows)
    assert plain[0, 48:51, 4:60].mean() > 0.9  # the band is among the strongest tenth: as strong as the patch
    cfg = edit_directions.CalibrateConfig(parts=((ATTRS[0], 18 / S**2),))  # half the patch
    small = edit_directions.fit(tiny_model(), images, labels, rows, cfg, attr_names=ATTRS).footprints
    assert small[0, 41:45, 30:34].min() > 0.9  # the patch is 1
    assert small[0, 48:51, 4:60].max() < 0.4  # the band is a quarter of it, as its change is
    assert torch.equal(small[1:], plain[1:])  # the other attributes as before


def calibration(tmp_path):
    """A tiny model with constants fitted on 60 random faces, and cells(**config), which calibrates it on them (30
    faces a cell, CalibrateConfig otherwise as given) against a tiny classifier."""
    from jmvae_cli import quality

    judge = quality.load_classifier(save_classifier(tmp_path / "clf.safetensors"), ATTRS, torch.device("cpu"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, S, S, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (60, len(ATTRS))).astype(np.float32)
    train = np.arange(60)
    model = model_with(constants(off=0.0, on=1.0))
    model.edit_constants = edit_directions.fit(model, images, labels, train)

    def cells(**cfg):
        config = edit_directions.CalibrateConfig(faces=30, min_faces=1, **cfg)
        return edit_directions.calibrate_strengths(model, judge, images, labels, train, ATTRS, config)

    return model, cells


def test_a_trade_off_keeps_the_strength_and_power_with_the_best_score(tmp_path):
    model, cells = calibration(tmp_path)
    grid, powers = (0.5, 1.0, 2.0, 4.0), (1.0, 3.0)
    # every strength, power and direction scored on its own, the same faces
    alone = {(s, p, d): cells(grid=(s,), powers=(p,), local=(d,)) for s in grid for p in powers for d in (False, True)}
    tried = 0
    for trade, goal in ((0.0, 0.0), (2.0, 0.0), (1e6, 0.0), (2.0, 0.5), (None, 0.5)):
        chosen = cells(grid=grid, powers=powers, trade=trade, goal=goal)
        for name in ATTRS:
            for way in ("on", "off"):
                c = chosen[name][way]
                first = alone[grid[0], 1.0, False][name][way]
                if first.seen is None:  # no face the classifier reads as lacking the target
                    assert c.seen is None and c.strength == edit_directions.CalibrateConfig().fallback_strength
                    continue
                got = alone[c.strength, c.power, c.local][name][way]
                assert (c.seen, c.kept) == (got.seen, got.kept)
                assert model.edit_constants.powers[ATTRS.index(name), int(way == "on")] == c.power
                assert model.edit_constants.local[ATTRS.index(name), int(way == "on")] == c.local
                reach = [k for k in alone if alone[k][name][way].seen >= goal]
                if trade is None:  # the goal alone: the smallest strength that reaches it, the better kept
                    if reach:
                        assert c.strength == min(k[0] for k in reach)
                        assert c.kept == max(alone[k][name][way].kept for k in reach if k[0] == c.strength)
                    continue
                # of the cells that reach the goal (none: the largest strength's), the best score
                reach = reach or [k for k in alone if k[0] == grid[-1]]
                assert c.score(trade) == max(alone[k][name][way].score(trade) for k in reach)
                tried += 1
    assert tried >= 6


def test_a_local_cell_moves_each_face_along_its_neighbours_difference():
    c = constants()
    g = torch.Generator().manual_seed(3)
    # the bank: faces with attribute 1 sit one step along +e0 from those without it, the rest far away
    near = torch.randn(40, Z, generator=g) * 0.1
    has = torch.arange(40) % 2 == 0
    c.bank = near + has[:, None] * torch.tensor([1.0, 0, 0, 0])  # (40, Z)
    c.bank_labels = torch.zeros(40, len(ATTRS), dtype=torch.bool)
    c.bank_labels[:, 1] = has
    c.readout[1] = torch.tensor([1.0, 0.5, 0, 0, 0])  # reads attribute 1 mostly from z[0], no intercept
    z = torch.randn(5, Z, generator=g) * 0.1
    changed = torch.zeros(5, len(ATTRS), dtype=torch.bool)
    changed[:, 1] = True
    target = torch.ones(5, len(ATTRS), dtype=torch.bool)
    s = torch.full((5, len(ATTRS)), 1.0)
    assert torch.equal(c.directions_for(z, changed, target)[:, 1], c.directions[1].expand(5, Z))  # not local yet
    c.local[1, 1] = True
    dirs = c.directions_for(z, changed, target)  # (5, A, Z)
    want = c.bank[has].mean(0) - c.bank[~has].mean(0)  # every bank face is among the 50 nearest of each kind here
    assert torch.allclose(dirs[:, 1], want.expand(5, Z), atol=1e-6)
    assert torch.equal(dirs[:, 0], c.directions[0].expand(5, Z))  # another attribute keeps B_i
    assert torch.equal(c.directions_for(z, changed, ~target)[:, 1], c.directions[1].expand(5, Z))  # the off cell too
    moved = c.move(z, changed, target, s)
    assert torch.allclose(readout(c, moved)[:, 1], torch.ones(5), atol=1e-4)  # the same goal, off + s (on - off)
    step = moved - z  # (5, Z): along the neighbours' difference alone
    assert torch.allclose(step / step.norm(dim=1, keepdim=True), (want / want.norm()).expand(5, Z), atol=1e-5)


def test_a_floor_keeps_a_cells_strength_up(tmp_path):
    _, calibrate = calibration(tmp_path)

    def cells(floors=(), ceilings=(), goal=0.0):
        return calibrate(trade=None, goal=goal, floors=floors, ceilings=ceilings)

    free = cells()
    floored = cells(floors=((ATTRS[1], True, 3.0),))
    assert free[ATTRS[1]]["on"].strength == 0.5  # the goal 0 is reached by the smallest strength
    assert floored[ATTRS[1]]["on"].strength == 3.0
    assert floored[ATTRS[1]]["off"] == free[ATTRS[1]]["off"] and floored[ATTRS[0]] == free[ATTRS[0]]
    # a goal no strength reaches falls back to the largest strength, or to the cell's ceiling where it has one
    unreached = cells(goal=2.0)
    assert unreached[ATTRS[1]]["on"].strength == 4.0
    capped = cells(ceilings=((ATTRS[1], True, 2.0),), goal=2.0)
    assert capped[ATTRS[1]]["on"].strength == 2.0
    assert capped[ATTRS[1]]["off"] == unreached[ATTRS[1]]["off"] and capped[ATTRS[0]] == unreached[ATTRS[0]]


def test_a_fixed_power_and_direction_are_the_only_ones_a_cell_tries(tmp_path):
    model, calibrate = calibration(tmp_path)

    def cells(fixed):
        return calibrate(trade=None, goal=0.0, fixed=fixed)

    free = cells(())
    assert (free[ATTRS[1]]["on"].power, free[ATTRS[1]]["on"].local) == (1.0, False)  # the first setting tried
    for power, local in ((8.0, False), (3.0, True)):
        fixed = cells(((ATTRS[1], True, power, local),))
        assert (fixed[ATTRS[1]]["on"].power, fixed[ATTRS[1]]["on"].local) == (power, local)
        assert model.edit_constants.powers[1, 1] == power and model.edit_constants.local[1, 1] == local
        assert fixed[ATTRS[1]]["off"] == free[ATTRS[1]]["off"] and fixed[ATTRS[0]] == free[ATTRS[0]]


def test_a_drawn_cell_takes_the_models_picture_where_it_changes_the_face():
    foot = torch.zeros(len(ATTRS), S, S)
    foot[0, :32] = 1.0
    c = constants(off=50.0, on=51.0, footprints=foot)  # every face has far to go
    model = model_with(c)
    x = faces(3)
    on = {0: attributes.coded(True, 1.5)}
    added = editing.edit(model, x, on, method="regress")
    assert added.fade is None
    c.drawn[0, 1] = True
    drawn = editing.edit(model, x, on, method="regress")
    far = ((drawn.after - drawn.before).abs().amax(1, keepdim=True) / edit_directions.FADE_FULL).clamp(max=1)
    assert torch.allclose(drawn.fade, foot[0] * far)  # inside the footprint, by how far the picture moved
    full = drawn.fade[:, 0] == 1  # (3, S, S)
    assert full.any() and torch.allclose(
        drawn.result.permute(0, 2, 3, 1)[full], drawn.after.clamp(-1, 1).permute(0, 2, 3, 1)[full], atol=1e-6
    )
    assert torch.equal(drawn.result[..., 32:, :], x[..., 32:, :])  # outside the footprint nothing moves
    # with another change, whichever way the face takes: the drawn one's footprint alone fades
    foot[3, 40:] = 1.0
    two = editing.edit(model, x, {**on, 3: attributes.coded(True, 1.5)}, method="regress")
    assert two.fade[..., :32, :].max() == 1 and not two.fade[..., 32:, :].any()
    full = two.fade[:, 0] == 1
    assert torch.allclose(
        two.result.permute(0, 2, 3, 1)[full], two.after.clamp(-1, 1).permute(0, 2, 3, 1)[full], atol=1e-6
    )
    assert not torch.equal(two.result[..., 40:, :], x[..., 40:, :])  # the other change is added below
    # only the direction that is drawn: turning attribute 0 off would be added as before
    region = foot[0].expand(3, 1, S, S)
    assert not c.fade(0, torch.zeros(3, dtype=torch.bool), region, drawn.before, drawn.after).any()


def test_a_drawn_change_keeps_its_fade_when_a_block_of_faces_shows_it_already(tmp_path, monkeypatch):
    """edit_faces edits in blocks: a block whose faces all show a drawn change already draws nothing (no fade), and
    the other blocks' faces must still take the model's picture where theirs fade."""
    tr = translate.Translator.from_weights(save_tiny(tmp_path / "tiny.safetensors"), "cpu", "fp32")
    tr.model.edit_constants = constants()
    tr.model.edit_constants.drawn[0, 1] = True
    crops = list(np.random.default_rng(1).integers(0, 256, (2 * translate.EDIT_BLOCK, 64, 64, 3), dtype=np.uint8))
    probs, _ = editing.infer(tr.model, editing.to_input(crops))
    order = probs[:, 0].argsort(descending=True).tolist()
    crops = [crops[i] for i in order]  # the first block: the faces the model reads surest to show attribute 0
    monkeypatch.setattr(editing, "ALREADY_SURE", float(probs[order[translate.EDIT_BLOCK - 1], 0]))
    on = {0: attributes.coded(True, 1.5)}
    together = translate.edit_faces(tr, crops, on)
    assert not together.fade[: translate.EDIT_BLOCK].any() and together.fade[translate.EDIT_BLOCK :].any()
    for i in range(translate.EDIT_BLOCK, len(crops)):
        alone = translate.edit_faces(tr, [crops[i]], on)
        assert torch.equal(alone.fade[0], together.fade[i]), i


def test_a_drawn_cell_is_calibrated_drawn(tmp_path):
    model, calibrate = calibration(tmp_path)
    cells = calibrate(trade=None, goal=0.0, drawn=((ATTRS[1], True),))
    assert cells[ATTRS[1]]["on"].drawn and not cells[ATTRS[1]]["off"].drawn and not cells[ATTRS[0]]["on"].drawn
    assert model.edit_constants.drawn[1, 1] and model.edit_constants.drawn.sum() == 1
    meta = edit_directions.edit_metadata(cells, edit_directions.CalibrateConfig(), "test")
    assert meta["drawn"][ATTRS[1]] == {"on": True, "off": False}


def test_a_footprint_power_keeps_the_change_nearer_its_middle():
    foot = torch.zeros(len(ATTRS), S, S)
    foot[1, 10:50, 10:50] = 0.5
    foot[1, 25:35, 25:35] = 1.0
    cubed = constants(off=50.0, on=51.0, footprints=foot)  # every face has far to go
    cubed.powers[1, 1] = 3.0  # turning attribute 1 on
    x = faces(2)
    plain = editing.edit(model_with(constants(off=50.0, on=51.0, footprints=foot)), x, {1: attributes.coded(True, 1.5)})
    model = model_with(cubed)
    sharp = editing.edit(model, x, {1: attributes.coded(True, 1.5)})
    ring = (plain.after - plain.before)[:, :, 10:20, 10:20]
    assert torch.allclose((sharp.after - sharp.before)[:, :, 10:20, 10:20], ring / 4, atol=1e-6)
    middle = slice(25, 35)
    assert torch.allclose(sharp.after[:, :, middle, middle], plain.after[:, :, middle, middle], atol=1e-6)
    # turning it off keeps power 1 (faces far above the goal of "off" this time)
    down = constants(off=-50.0, on=-49.0, footprints=foot)
    down_cubed = constants(off=-50.0, on=-49.0, footprints=foot)
    down_cubed.powers[1, 1] = 3.0
    change = {1: attributes.coded(False, 1.5)}
    a, b = (editing.edit(model_with(c), x, change) for c in (down, down_cubed))
    assert (a.after - a.before)[:, :, 10:20, 10:20].abs().amax() > 0.01
    assert torch.equal(a.after, b.after)


def hair_and_background(n: int = 2) -> torch.Tensor:
    """(n, 3, S, S) faces with brown hair over the top and down the middle, blue background down both sides."""
    x = faces(n).clone()
    x[:, :, :, 12:52] = torch.tensor([-0.2, -0.45, -0.6])[:, None, None]  # brown
    x[:, :, :, :8] = x[:, :, :, 56:] = torch.tensor([-0.7, -0.1, 0.5])[:, None, None]  # blue
    return x


def test_same_colour_is_one_on_the_crowns_colour_and_zero_on_another():
    x = hair_and_background()
    near = edit_directions.same_colour(x, torch.ones(S, S))  # (n, 1, S, S)
    assert near.shape == (2, 1, S, S)
    assert torch.equal(near[:, :, :, 14:50], torch.ones_like(near[:, :, :, 14:50]))
    assert torch.equal(near[:, :, :, :7], torch.zeros_like(near[:, :, :, :7]))
    # the crown's colour is the footprint's: weighted to the blue, the blue is what is near
    foot = torch.zeros(S, S)
    foot[:, 19:24] = 1.0
    x[:, :, :, 19:24] = torch.tensor([-0.7, -0.1, 0.5])[:, None, None]  # blue inside the crown's columns too
    assert torch.equal(edit_directions.same_colour(x, foot)[:, :, :, :7], torch.ones(2, 1, S, 7))
    # a footprint of nothing there: the crown's pixels count alike, and the brown is the most of them
    assert torch.equal(edit_directions.same_colour(x, torch.zeros(S, S))[:, :, :, 30:40], torch.ones(2, 1, S, 10))


def test_a_hair_colour_changes_the_hair_and_not_the_background_beside_it():
    names = ATTRS
    hair = names.index("Blond_Hair")
    x = hair_and_background()
    edits = {}
    for recolours in (frozenset(), edit_directions.recolouring(names)):
        c = constants(off=50.0, on=51.0)  # every face has far to go; the footprint is the whole crop
        c.recolours = recolours
        edits[recolours] = editing.edit(model_with(c), x, {hair: attributes.coded(True, 2.0)}, method="regress")
    plain, kept = edits.values()
    assert edit_directions.recolouring(names) == frozenset({hair})
    side = (slice(None), slice(None), slice(None), slice(0, 7))
    assert (plain.result[side] - x[side]).abs().amax() > 0.01  # the footprint alone lets the background change
    assert torch.equal(kept.result[side], x[side])
    middle = (slice(None), slice(None), slice(None), slice(14, 50))
    assert torch.allclose(kept.result[middle], plain.result[middle])


def test_which_attributes_recolour_is_read_from_the_names_in_the_weights(tmp_path):
    new = tmp_path / "new.safetensors"
    checkpoint.save_edit_constants(save_tiny(tmp_path / "old.safetensors"), new, constants().tensors(), {})
    assert checkpoint.load_model(new).model.edit_constants.recolours == frozenset({ATTRS.index("Blond_Hair")})
