"""The translation commands end to end through Typer's CliRunner, on a tiny 64x64 model.

stdout carries data only; every message goes to stderr; an expected error is one line and exit 1, a usage
error exit 2, and never a traceback."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from safetensors.torch import save_file

from jmvae_cli import attributes, editing, faces, formats, images, runtime, translate
from jmvae_cli.commands import common
from jmvae_cli.console import console
from tests.conftest import fails, run
from tests.model_fixtures import (  # noqa: F401 (fixtures)
    ATTRS,
    face_album,
    photo_array,
    png_bytes,
    sample_face,
    save_tiny,
    tiny_weights,
    weights_env,
    write_photo,
)

# a change the model cannot read (an unknown name, a bad strength): a usage error, one "error:" line
USAGE = {"code": 2, "one_line": True}


def ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def photo(tmp_path):
    return write_photo(tmp_path / "photo.png", 200, 120, seed=3)


# ----------------------------------------------------------------------------- attributes


def test_attributes(weights_env):
    assert ok(run("attributes")).stdout.split() == ATTRS
    assert json.loads(ok(run("attributes", "--format", "json")).stdout) == ATTRS


def test_verbose_names_weights_and_device(tiny_weights, monkeypatch):
    monkeypatch.delenv("JMVAE_WEIGHTS", raising=False)
    r = ok(run("attributes", "--weights", tiny_weights, "-v"))
    assert str(tiny_weights) in r.stderr and "device cpu" in r.stderr
    assert r.stdout.split() == ATTRS


def test_attributes_in_every_format(weights_env):
    lines = ok(run("attributes", "-f", "jsonl")).stdout.splitlines()
    assert [json.loads(line) for line in lines] == ATTRS
    for fmt in ("table", "csv", "tsv"):
        assert ok(run("attributes", "-f", fmt)).stdout.split() == ATTRS


def test_choices_are_the_librarys():
    assert [d.value for d in common.Device] == list(runtime.DEVICES)
    assert [f.value for f in common.Format] == list(formats.FORMATS)


# ----------------------------------------------------------------------------- stdout


def jmvae(*args, stdout) -> subprocess.CompletedProcess:
    """`jmvae ARGS...` in a process of its own: how a command ends on a bad stdout shows only up to the interpreter's
    exit, where Python flushes what is left."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "jmvae_cli", *map(str, args)]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=120)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_on_stdout_is_one_line(weights_env, tmp_path):
    a = write_photo(tmp_path / "a.png", 64, 64, seed=1)
    for args in (["attributes"], ["img2attr", a, "--no-detect"]):
        with open("/dev/full", "w") as full:
            r = jmvae(*args, stdout=full)
        assert (r.returncode, r.stderr) == (1, "error: cannot write to stdout (No space left on device)\n")


def test_closed_pipe_ends_quietly(weights_env):
    # `jmvae ... | head -1`: the reader is gone before the data comes
    for args in (["attributes"], ["attr2img", "--set", "Smiling", "-o", "-"]):
        read, write = os.pipe()
        os.close(read)
        try:
            r = jmvae(*args, stdout=write)
        finally:
            os.close(write)
        assert (r.returncode, r.stderr) == (1, "")


# ----------------------------------------------------------------------------- img2attr


def test_img2attr_formats(weights_env, tmp_path):
    a = write_photo(tmp_path / "a.png", 64, 64, seed=1)
    b = write_photo(tmp_path / "b.jpg", 80, 64, seed=2)
    recs = json.loads(ok(run("img2attr", a, b, "--no-detect", "--format", "json")).stdout)
    assert [r["file"] for r in recs] == [str(a), str(b)]
    assert list(recs[0]["attributes"]) == ATTRS and "face" not in recs[0]
    assert all(0 <= p <= 1 for p in recs[0]["attributes"].values())

    lines = ok(run("img2attr", a, b, "--no-detect", "-f", "jsonl")).stdout.splitlines()
    assert [json.loads(line) for line in lines] == recs

    r = ok(run("img2attr", a, b, "--no-detect", "-f", "csv"))
    rows = [line.split(",") for line in r.stdout.splitlines()]
    assert rows[0] == ["file", *ATTRS] and rows[1][0] == str(a) and len(rows) == 3
    assert float(rows[2][2]) == pytest.approx(recs[1]["attributes"]["Male"], abs=1e-4)
    # piped without --format: tsv
    assert ok(run("img2attr", a, "--no-detect")).stdout.splitlines()[0].split("\t") == ["file", *ATTRS]

    table = ok(run("img2attr", a, "--no-detect", "-f", "table")).stdout
    assert "probability" in table and "Smiling" in table and str(a.name) in table


def test_img2attr_threshold_and_only_positive(weights_env, tmp_path):
    a = write_photo(tmp_path / "a.png", 64, 64, seed=1)
    probs = json.loads(ok(run("img2attr", a, "--no-detect", "-f", "json")).stdout)[0]["attributes"]
    v = sorted(probs.values())
    cut = (v[1] + v[2]) / 2  # between two of them: the printed values are rounded
    rec = json.loads(ok(run("img2attr", a, "--no-detect", "-f", "json", "--only-positive", "--threshold", cut)).stdout)
    assert set(rec[0]["attributes"]) == {n for n, p in probs.items() if p >= cut}
    table = ok(run("img2attr", a, "--no-detect", "-f", "table", "--only-positive", "--threshold", 1.0)).stdout
    assert "Smiling" not in table
    fails(run("img2attr", a, "--only-positive", "-f", "csv"), code=2)
    fails(run("img2attr", a, "--threshold", "1.5"), code=2)


def test_img2attr_table_is_the_default_on_a_terminal(weights_env, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "stdout_is_tty", lambda: True)
    assert "probability" in ok(run("img2attr", write_photo(tmp_path / "a.png", 64, 64), "--no-detect")).stdout


def test_img2attr_folders_globs_and_stdin(weights_env, tmp_path):
    d = tmp_path / "faces"
    (d / "more").mkdir(parents=True)
    for i, name in enumerate(["x.png", "y.jpg", "more/z.png"]):
        write_photo(d / name, 64, 64, seed=i)
    (d / "notes.txt").write_text("not an image, not picked up from a folder")
    recs = json.loads(ok(run("img2attr", d, "--no-detect", "-f", "json")).stdout)
    assert [r["file"] for r in recs] == [str(d / "more/z.png"), str(d / "x.png"), str(d / "y.jpg")]
    recs = json.loads(ok(run("img2attr", str(d / "*.png"), "--no-detect", "-f", "json")).stdout)
    assert [r["file"] for r in recs] == [str(d / "x.png")]

    data = (d / "x.png").read_bytes()
    rec = json.loads(ok(run("img2attr", "-", "--no-detect", "-f", "jsonl", input=data)).stdout)
    assert rec["file"] == "-" and rec["attributes"] == recs[0]["attributes"]
    fails(run("img2attr", "-", "-", input=data), code=2)
    fails(run("img2attr", tmp_path / "empty*.png"), "no such file")


def test_img2attr_batch_goes_on_past_bad_files(weights_env, tmp_path):
    good = [write_photo(tmp_path / f"{i}.png", 64, 64, seed=i) for i in range(3)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    r = run("img2attr", good[0], bad, good[1], tmp_path / "missing.png", good[2], "--no-detect", "-f", "jsonl")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [json.loads(line)["file"] for line in r.stdout.splitlines()] == [str(g) for g in good]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(bad) in errors[0] and "missing.png" in errors[1]
    assert "2 of 5 files failed" in r.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the search ahead forks on Linux only")
@pytest.mark.parametrize("command", ["img2attr", "edit"])
def test_photos_searched_while_the_model_loads_give_what_alone_they_give(weights_env, tmp_path, monkeypatch, command):
    files = face_album(tmp_path / "a", faces.SEARCH_AHEAD_MIN + translate.PHOTOS_PER_CHUNK)  # forked workers too

    def results(*photos) -> str:
        if command == "img2attr":
            return run("img2attr", *photos, "-f", "jsonl").stdout
        out = tmp_path / f"out-{len(photos)}-{Path(photos[0]).stem}"
        run("edit", *photos, "--set", "Smiling", "--out-dir", out)
        return "".join(f"{p.name} {p.read_bytes().hex()}\n" for p in sorted(out.iterdir()))

    alone = "".join(results(f) for f in files[:-1])
    monkeypatch.setattr("jmvae_cli.cpus.available_cpus", lambda: 2)
    monkeypatch.setattr(translate, "available_cpus", lambda: 2)
    ahead, stop = [], faces.SearchAhead.stop

    def stop_when_done(self, wait=0.0):
        ahead.append(stop(self, wait=60))  # every photo searched while the model loads, as on a slow load
        # and none searched again: the forked workers fork with this
        monkeypatch.setattr(faces, "_search", lambda img, all_faces: pytest.fail("searched again"))
        return ahead[-1]

    monkeypatch.setattr(faces.SearchAhead, "stop", stop_when_done)
    batch = results(*files)
    assert sorted(ahead[0]) == sorted(files[:-1])  # all but the file that is no image, whose reader reports it
    assert sorted(batch.splitlines()) == sorted(alone.splitlines()) and batch


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_img2attr_worker_process_killed_is_one_error_line(weights_env, tmp_path, monkeypatch):
    files = [write_photo(tmp_path / f"{i}.png", 64, 64, seed=i) for i in range(translate.PHOTOS_PER_CHUNK + 1)]
    monkeypatch.setattr(translate, "available_cpus", lambda: 2)
    monkeypatch.setattr(translate, "_img2attr", lambda *args: os._exit(9))  # runs in the forked workers only
    r = run("img2attr", *files, "--no-detect", "-f", "jsonl")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.exit_code == 1 and "Traceback" not in r.output and r.stdout == ""
    assert len(errors) == 1 and "worker process reading the photos was killed" in errors[0]


def test_img2attr_progress_bar_on_a_terminal(weights_env, tmp_path, monkeypatch):
    monkeypatch.setattr(type(console), "is_terminal", property(lambda self: True))
    files = [write_photo(tmp_path / f"{i}.png", 64, 64, seed=i) for i in range(21)]
    assert len(ok(run("img2attr", *files, "--no-detect", "-f", "jsonl")).stdout.splitlines()) == 21


def test_img2attr_finds_the_face_in_a_photo(weights_env, tiny_weights, tmp_path):
    src = sample_face()
    # a real face, placed off-centre in a bigger photo, must give the same crop and so the same attributes
    photo = Image.new("RGB", (600, 400), (90, 120, 60))
    photo.paste(Image.open(src).convert("RGB"), (300, 100))
    photo.save(tmp_path / "group.jpg", quality=98)
    shutil.copy(src, tmp_path / "face.jpg")
    recs = json.loads(ok(run("img2attr", tmp_path / "face.jpg", tmp_path / "group.jpg", "-f", "json")).stdout)
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    for rec in recs:  # the probabilities of the detected face's crop
        _, crops = faces.load_faces(rec["file"], rec["file"])
        assert len(crops) == 1 and 300 < crops[0].box.x + crops[0].box.w / 2 < 600 or rec["file"].endswith("face.jpg")
        expected = translate.infer_attributes(tr, crops[0].crop[None])[0]
        assert np.allclose(list(rec["attributes"].values()), expected, atol=2e-4)
    rec = json.loads(ok(run("img2attr", tmp_path / "face.jpg", "--all-faces", "-f", "json")).stdout)
    assert [r["face"] for r in rec] == list(range(len(rec)))
    assert ok(run("img2attr", tmp_path / "face.jpg", "--all-faces", "-f", "csv")).stdout.startswith("file,face,")


def test_refine_reads_the_face_cut_again_and_needs_detection(weights_env, tiny_weights, tmp_path):
    photo = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    rec = json.loads(ok(run("img2attr", photo, "--refine", "-f", "json")).stdout)[0]
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    img, crops = faces.load_faces(photo, str(photo))
    (crop,) = translate.refine_frames(tr, img, crops)
    assert np.allclose(list(rec["attributes"].values()), translate.infer_attributes(tr, crop.crop[None])[0], atol=2e-4)
    ok(run("edit", photo, "--set", "Smiling", "--refine", "-o", tmp_path / "edited.png"))
    assert (tmp_path / "edited.png").exists()
    for args in (("img2attr", photo), ("edit", photo, "--set", "Smiling", "-o", tmp_path / "x.png")):
        fails(run(*args, "--refine", "--no-detect"), code=2)
    assert not (tmp_path / "x.png").exists()


def test_no_face_names_the_file(weights_env, tmp_path):
    p = write_photo(tmp_path / "landscape.jpg", 300, 200)
    fails(run("img2attr", p), str(p), "no face found", "--no-detect")
    fails(run("edit", p, "--set", "Smiling"), str(p), "no face found")
    ok(run("img2attr", p, "--no-detect"))


def test_file_names_with_brackets_are_printed_as_they_are(weights_env, tmp_path):
    d = tmp_path / "old [draft]" / "a[/b]"  # Rich would read "[draft]" as a style, "[/b]" as an unmatched close
    d.mkdir(parents=True)
    p = write_photo(d / "x [v2].png", 64, 64, seed=1)
    table = ok(run("img2attr", p, "--no-detect", "-f", "table"))
    bare = lambda text: "".join(text.split())  # noqa: E731 (a title wraps at the table's width)
    assert bare(str(p)) in bare(table.stdout)
    fails(run("img2attr", d / "nope [1].jpg"), f"{d / 'nope [1].jpg'}: no such file")
    r = ok(run("edit", p, "--no-detect", "--set", "Smiling", "--print-attrs"))
    assert f"wrote {d / 'x [v2]-edited.png'}" in r.stderr and bare(str(p)) in bare(r.stderr)


# ----------------------------------------------------------------------------- image files that should work or fail


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_unusual_image_modes_simply_work(weights_env, tmp_path, mode):
    rgb = Image.fromarray(photo_array(64, 64, seed=4), "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)  # 16-bit grey
        assert img.mode.startswith("I;16")
    else:
        img = rgb.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    recs = json.loads(ok(run("img2attr", path, "--no-detect", "-f", "json")).stdout)
    assert len(recs) == 1
    ok(run("edit", path, "--no-detect", "--set", "Smiling", "-o", tmp_path / "out.png"))


def test_bad_image_files(weights_env, tmp_path, monkeypatch):
    good = io.BytesIO()
    Image.fromarray(photo_array(64, 64), "RGB").save(good, format="JPEG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (good.getvalue()[:400], "truncated or corrupt"),
        "text.png": (b"this is not an image at all", "not an image"),
        "folder.jpg": (None, "cannot read"),
    }
    for name, (data, words) in cases.items():
        p = tmp_path / name
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
        words = "no image files found" if data is None else words  # a folder is an input: its images
        fails(run("img2attr", p, "--no-detect"), str(p), words)
        fails(run("edit", p, "--no-detect", "--set", "Smiling", "-o", tmp_path / "o.png"), str(p), words)
    fails(run("img2attr", tmp_path / "nope.jpg"), "no such file")

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 4096 px image below is a bomb at this limit
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (64, 64)).save(bomb)
    fails(run("img2attr", bomb, "--no-detect"), str(bomb), "too large")


# ----------------------------------------------------------------------------- weights and devices


def test_weights_errors(tmp_path, monkeypatch, photo):
    monkeypatch.delenv("JMVAE_WEIGHTS", raising=False)
    fails(run("img2attr", photo, "--weights", tmp_path / "none.safetensors"), "not found")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    fails(run("attributes", "--weights", junk), "not a readable safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(other))
    fails(run("edit", photo, "--set", "Smiling", "--weights", other), "not a jmvae model")
    # a model without the asked attribute
    names = save_tiny(tmp_path / "names.safetensors", ["Bald", "Bangs", "Big_Lips", "Chubby", "Goatee"])
    fails(
        run("edit", photo, "--no-detect", "--set", "Smiling", "--weights", names),
        "unknown attribute 'Smiling'",
        **USAGE,
    )
    monkeypatch.setenv("JMVAE_WEIGHTS", str(tmp_path / "gone.safetensors"))
    fails(run("attributes"), "gone.safetensors", "not found")


def test_device_cuda_without_cuda_is_an_error(weights_env, photo):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(run("img2attr", photo, "--device", "cuda"), "cuda")
    fails(run("img2attr", photo, "--device", "tpu"), code=2)


# ----------------------------------------------------------------------------- attr2img


def test_attr2img_average_face_and_samples(weights_env, tmp_path):
    out = tmp_path / "face.png"
    ok(run("attr2img", "--set", "smiling", "--unset", "MALE", "-o", out, "--seed", 3))
    assert Image.open(out).size == (64, 64)
    first = np.asarray(Image.open(out)).copy()
    ok(run("attr2img", "--set", "smiling", "--unset", "MALE", "-o", out, "--seed", 3))
    assert np.array_equal(np.asarray(Image.open(out)), first)  # seeded
    ok(run("attr2img", "--set", "Smiling", "--samples", 5, "--zeta", 0.5, "--size", 32, "-o", out))
    assert Image.open(out).size == (3 * 32 + 4, 2 * 32 + 2)
    ok(run("attr2img", "--base", "zeros", "--set", "Young", "--strength", 1, "-o", out))


def test_attr2img_to_stdout_never_to_a_terminal(weights_env, monkeypatch):
    r = ok(run("attr2img", "--set", "Smiling", "-o", "-"))
    assert Image.open(io.BytesIO(r.stdout_bytes)).size == (64, 64)
    monkeypatch.setattr(common, "stdout_is_tty", lambda: True)
    fails(run("attr2img", "--set", "Smiling", "-o", "-"), "terminal", code=2)


def test_attr2img_errors(weights_env, tmp_path):
    fails(run("attr2img", "--set", "Smiling"), code=2)  # no -o
    fails(run("attr2img", "--set", "Smilin", "-o", tmp_path / "a.png"), "did you mean Smiling", **USAGE)
    fails(
        run("attr2img", "--set", "Young", "--unset", "young", "-o", tmp_path / "a.png"),
        "both --set and --unset",
        **USAGE,
    )
    fails(run("attr2img", "-o", tmp_path / "no" / "dir" / "a.png"), "does not exist")
    fails(run("attr2img", "-o", tmp_path / "a.png", "--base", "zeros", "--attrs", "-"), code=2)
    fails(run("attr2img", "-o", tmp_path / "a.png", "--attrs", tmp_path / "none.json"), "none.json")
    fails(run("attr2img", "-o", tmp_path / "a.png", "--attrs", "-", input="{broken"), "not valid JSON")
    # an image piped in by mistake, or a field past csv's size limit: one line each, from stdin as from a file
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    fails(run("attr2img", "-o", tmp_path / "a.png", "--attrs", "-", input=png.read_bytes()), "<stdin>: cannot read")
    fails(run("attr2img", "-o", tmp_path / "a.png", "--attrs", png), "p.png: cannot read")
    (tmp_path / "long.txt").write_text("x" * 200_000 + "\n" + "y\n")
    fails(run("attr2img", "-o", tmp_path / "a.png", "--attrs", tmp_path / "long.txt"), "not img2attr's output")
    fails(run("attr2img", "-o", tmp_path / "a.png", "--samples", -1), code=2)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "tsv"])
def test_img2attr_into_attr2img(weights_env, tiny_weights, tmp_path, fmt):
    """`jmvae img2attr a.jpg --format F | jmvae attr2img --attrs - --set Smiling -o out.png`"""
    a = write_photo(tmp_path / "a.png", 64, 64, seed=8)
    attrs = ok(run("img2attr", a, "--no-detect", "--format", fmt)).stdout
    out = tmp_path / "out.png"
    ok(run("attr2img", "--attrs", "-", "--set", "Smiling", "-o", out, input=attrs))

    # the same as: the image's thresholded attributes with Smiling at the paper's +2
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    probs = translate.infer_attributes(tr, np.asarray(Image.open(a).convert("RGB"))[None])[0]
    w = attributes.binarize(probs)
    w[0] = 1.5
    expected = translate.average_face(tr, w)[0]
    assert np.abs(np.asarray(Image.open(out)).astype(int) - expected).max() <= 1

    saved = tmp_path / f"attrs.{fmt}"
    saved.write_text(attrs)
    ok(run("attr2img", "--attrs", saved, "--soft", "-o", out))


# ----------------------------------------------------------------------------- edit


def test_edit_changes_only_the_face(weights_env, photo):
    out = photo.with_name("photo-edited.png")
    ok(run("edit", photo, "--no-detect", "--set", "Smiling", "--unset", "Young"))
    before, after = np.asarray(Image.open(photo)).astype(int), np.asarray(Image.open(out)).astype(int)
    assert after.shape == before.shape  # the photo's own resolution
    # --no-detect on a 200x120 photo: the face frame is the centre 120x120 square, x in 40..160
    assert np.array_equal(after[:, :40], before[:, :40]) and np.array_equal(after[:, 160:], before[:, 160:])
    assert np.abs(after[:, 40:160] - before[:, 40:160]).max() > 0


def test_edit_real_photo_leaves_pixels_outside_the_face_alone(weights_env, tmp_path):
    photo = Image.new("RGB", (500, 400), (30, 60, 90))
    photo.paste(Image.open(sample_face()).convert("RGB"), (200, 80))
    src = tmp_path / "group.png"
    photo.save(src)
    tr = translate.Translator.from_weights(weights_env, "cpu")
    lacking = tr.attr_names[int(np.argmin(next(translate.img2attr(tr, [str(src)])).probs))]  # a change to make
    ok(run("edit", src, "--set", lacking, "-o", tmp_path / "out.png"))
    box = faces.find_faces(images.read_image(src))[0].box
    x0, y0, x1, y1 = round(box.x), round(box.y), round(box.x + box.w), round(box.y + box.h)
    before, after = np.asarray(photo).astype(int), np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    outside = np.ones(before.shape[:2], bool)
    outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
    assert np.array_equal(after[outside], before[outside])
    assert (after != before).any()


def test_edit_keeps_a_cutouts_transparency(weights_env, tmp_path):
    # a cut-out portrait (as background removers write them): the face opaque, the rest transparent, with
    # whatever colour the file stores under alpha 0
    rgba = np.zeros((120, 200, 4), np.uint8)
    rgba[..., :3] = np.asarray(Image.open(write_photo(tmp_path / "p.png", 200, 120, seed=3)).convert("RGB"))
    rgba[:, 50:150, 3] = 255
    rgba[:, 45:50, 3] = rgba[:, 150:155, 3] = 100  # soft edges
    src = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(src)
    ok(run("edit", src, "--no-detect", "--set", "Smiling", "--unset", "Young", "-o", tmp_path / "out.png"))
    after = np.asarray(Image.open(tmp_path / "out.png"))
    assert after.shape == rgba.shape and np.array_equal(after[..., 3], rgba[..., 3])
    assert np.array_equal(after[:, :40], rgba[:, :40]) and np.array_equal(after[:, 160:], rgba[:, 160:])
    # the change is the one made to the photo as it shows (on white), added to the colours as stored
    flat = tmp_path / "flat.png"
    images.flatten(Image.fromarray(rgba, "RGBA")).save(flat)
    ok(run("edit", flat, "--no-detect", "--set", "Smiling", "--unset", "Young", "-o", tmp_path / "flat-out.png"))
    flat_after = np.asarray(Image.open(tmp_path / "flat-out.png")).astype(int)
    opaque = rgba[..., 3] == 255
    assert np.array_equal(after[..., :3][opaque], flat_after[opaque])
    assert (after[..., :3] != rgba[..., :3]).any()
    ok(run("edit", src, "--no-detect", "--set", "Smiling", "--unset", "Young", "-o", tmp_path / "out.jpg"))
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"  # JPEG has no alpha: as it shows


def test_edit_keeps_the_photos_colour_profile_and_metadata(weights_env, tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    src = tmp_path / "camera.jpg"
    Image.open(write_photo(tmp_path / "p.png", 200, 120, seed=3)).save(src, exif=exif, icc_profile=icc)
    ok(run("edit", src, "--no-detect", "--set", "Smiling", "-o", tmp_path / "out.jpg"))
    out = Image.open(tmp_path / "out.jpg")
    assert out.info.get("icc_profile") == icc and out.getexif()[0x010F] == "Camera maker"


def test_edit_never_clobbers(weights_env, photo):
    out = photo.with_name("photo-edited.png")
    ok(run("edit", photo, "--no-detect", "--set", "Smiling"))
    fails(run("edit", photo, "--no-detect", "--set", "Smiling"), "photo-edited.png exists", "--force")
    ok(run("edit", photo, "--no-detect", "--set", "Male", "--force"))
    original = photo.read_bytes()
    fails(run("edit", photo, "--no-detect", "--set", "Smiling", "-o", photo), "is the input image")
    assert photo.read_bytes() == original
    assert out.exists()


def test_edit_crop_only_show_and_print_attrs(weights_env, tiny_weights, photo, tmp_path):
    out = tmp_path / "crop.png"
    # on the CPU, as the library below: CUDA's float rounding may move a pixel by one grey level
    crop_only = ("--no-detect", "--set", "Smiling", "--crop-only", "-o", out, "--print-attrs", "--device", "cpu")
    r = ok(run("edit", photo, *crop_only))
    assert Image.open(out).size == (64, 64)
    assert "Smiling" in r.stderr and "probability" in r.stderr and r.stdout == ""

    # the written crop is the paper's x' = x + x'_mean - x_mean
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    crop = np.asarray(
        faces.crop_face(images.read_image(photo), faces.find_faces(images.read_image(photo), detect=False)[0])
    )
    expected = editing.edit(tr.model, editing.to_input([crop]), {0: 1.5}).pixels("result")[0]
    assert np.array_equal(np.asarray(Image.open(out)), expected)

    ok(run("edit", photo, "--no-detect", "--set", "Smiling", "--show", "--size", 32, "-o", out, "--force"))
    assert Image.open(out).size == (4 * 32 + 6, 32)
    ok(run("edit", photo, "--no-detect", "--set", "Smiling", "--strength", 1, "--crop-only", "-o", out, "--force"))


def test_edit_stdin_and_stdout(weights_env, photo, monkeypatch):
    r = ok(run("edit", "-", "--no-detect", "--set", "Smiling", "-o", "-", input=photo.read_bytes()))
    assert Image.open(io.BytesIO(r.stdout_bytes)).size == (200, 120)
    assert Image.open(io.BytesIO(r.stdout_bytes)).text == dict([images.EDIT_MARK])  # redirected, still an edit
    fails(run("edit", "-", "--no-detect", "--set", "Smiling", input=photo.read_bytes()), code=2)
    monkeypatch.setattr(common, "stdout_is_tty", lambda: True)
    fails(run("edit", photo, "--set", "Smiling", "-o", "-"), "terminal", code=2)


def test_edit_usage_and_attribute_errors(weights_env, photo, tmp_path):
    fails(run("edit", photo), code=2)  # nothing to change
    fails(run("edit", photo, "--set", "Smiling", "--crop-only", "--show"), code=2)
    fails(run("edit", photo, "--no-detect", "--set", "Eyeglases"), "did you mean Eyeglasses", **USAGE)
    fails(
        run("edit", photo, "--no-detect", "--set", "Smiling", "--unset", "smiling"), "both --set and --unset", **USAGE
    )
    # strength 0 says neither on nor off: read as off, --set Smiling=0 took a smile away
    fails(run("edit", photo, "--no-detect", "--set", "Smiling=0"), "Smiling at strength 0", **USAGE)
    fails(run("edit", photo, "--no-detect", "--set", "Smiling", "--strength", "0"), code=2)
    fails(
        run("figure", "edit", photo, "--no-detect", "--strength", "0", "--attr", "Young", "-o", tmp_path / "f.png"),
        "Young at strength 0",
        **USAGE,
    )
    # --size is for --show and --crop-only: an edited photo keeps its size
    fails(run("edit", photo, "--no-detect", "--set", "Smiling", "--size", "128"), code=2)
    fails(run("edit", photo, "--no-detect", "--set", "Smiling", "-o", tmp_path / "nodir" / "x.png"), "does not exist")
    fails(
        run("edit", photo, "--no-detect", "--set", "Smiling", "-o", tmp_path / "x.xyz"), "unknown image file extension"
    )
    assert not photo.with_name("photo-edited.png").exists()


def test_all_faces_in_one_photo(weights_env, tmp_path):
    face = Image.open(sample_face()).convert("RGB")
    photo = Image.new("RGB", (720, 360), (200, 200, 210))
    photo.paste(face, (40, 50))
    photo.paste(face.resize((200, 200)), (460, 80))
    src = tmp_path / "two.png"
    photo.save(src)
    recs = json.loads(ok(run("img2attr", src, "--all-faces", "-f", "json")).stdout)
    assert [r["face"] for r in recs] == [0, 1]
    one = ok(run("img2attr", src, "-f", "json"))
    assert len(json.loads(one.stdout)) == 1  # the best only, and stderr says which
    assert "2 faces found, used the one at x " in one.stderr and "--all-faces" in one.stderr
    piped = ok(run("img2attr", "-", "-f", "json", input=src.read_bytes()))
    assert piped.stderr.startswith("<stdin>: 2 faces found")  # named as its errors name it

    ok(run("edit", src, "--all-faces", "--set", "Smiling", "-o", tmp_path / "out.png"))
    boxes = [f.box for f in faces.find_faces(images.read_image(src), all_faces=True)]
    before, after = np.asarray(photo).astype(int), np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    outside = np.ones(before.shape[:2], bool)
    for b in boxes:
        x0, y0, x1, y1 = round(b.x), round(b.y), round(b.x + b.w), round(b.y + b.h)
        outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
        assert (after[max(y0, 0) : y1, max(x0, 0) : x1] != before[max(y0, 0) : y1, max(x0, 0) : x1]).any()
    assert np.array_equal(after[outside], before[outside])
    ok(run("edit", src, "--all-faces", "--set", "Smiling", "--show", "-o", tmp_path / "strip.png"))
    assert Image.open(tmp_path / "strip.png").size == (4 * 64 + 6, 2 * 64 + 2)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_refuses_the_same_folder_twice(weights_env, tmp_path, make_celeba):
    d = make_celeba(tmp_path, 4, size=(89, 109))
    fails(run("evaluate", "--data", d, "--data", d, "-f", "json"), f"{d.resolve()} is given twice")
