"""`jmvae edit` over many photos: files, folders and globs in one call, --out-dir, and each photo's result the same
bytes as editing it alone; a failed photo is reported and the others still edited."""

import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jmvae_cli import editing, faces, translate
from jmvae_cli.console import console
from tests.conftest import run
from tests.model_fixtures import sample_face, tiny_weights, weights_env, write_photo  # noqa: F401 (fixtures)

EDIT = ("--no-detect", "--set", "Smiling", "--unset", "Young")


def ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def errors(result) -> list[str]:
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def album(tmp_path):
    """11 photos of several sizes and formats (more than one of the model's blocks), one in a subfolder."""
    d = tmp_path / "album"
    (d / "sub").mkdir(parents=True)
    files = [
        write_photo(d / f"p{i:02d}.{'jpg' if i % 3 else 'png'}", 60 + 13 * i, 90 - 3 * i, seed=i) for i in range(10)
    ]
    files.append(write_photo(d / "sub" / "deep.png", 70, 70, seed=99))
    (d / "notes.txt").write_text("not a photo")
    return d, sorted(files, key=str)


def test_a_folder_to_out_dir_gives_the_bytes_of_single_edits(weights_env, album, tmp_path):
    d, files = album
    r = ok(run("edit", d, *EDIT, "--out-dir", tmp_path / "out"))
    assert "wrote 11 edited photos" in r.stderr and r.stdout == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{f.stem}.png" for f in files)
    for f in files:
        single = tmp_path / "single.png"
        ok(run("edit", f, *EDIT, "-o", single, "--force"))
        assert (tmp_path / "out" / f"{f.stem}.png").read_bytes() == single.read_bytes(), f
        assert Image.open(single).size == Image.open(f).size


def test_crops_and_strips_of_many_photos_match_single_edits(weights_env, album, tmp_path):
    _, files = album
    for flag in ("--crop-only", "--show"):
        out = tmp_path / flag.strip("-")
        ok(run("edit", *files[:3], *EDIT, flag, "--out-dir", out))
        for f in files[:3]:
            ok(run("edit", f, *EDIT, flag, "-o", tmp_path / "single.png", "--force"))
            assert (out / f"{f.stem}.png").read_bytes() == (tmp_path / "single.png").read_bytes()


def test_globs_and_default_outputs_beside_each_photo(weights_env, album):
    d, files = album
    r = ok(run("edit", str(d / "*.png"), *EDIT))  # a glob the shell did not expand
    pngs = [f for f in files if f.suffix == ".png" and f.parent == d]
    assert "wrote 4 edited photos" in r.stderr
    assert sorted(d.glob("*-edited.png")) == sorted(f.with_name(f"{f.stem}-edited.png") for f in pngs)
    assert not (d / "sub" / "deep-edited.png").exists()


def test_a_second_run_over_a_folder_leaves_its_earlier_edits_out(weights_env, album, tmp_path):
    d, files = album
    ok(run("edit", d, *EDIT))
    edits = sorted(d.rglob("*-edited.png"))
    assert len(edits) == len(files)
    first = {f: f.read_bytes() for f in edits}
    r = ok(run("edit", d, "--no-detect", "--set", "Smiling", "--force"))  # again, another change: edits made anew
    assert f"left out {len(files)} earlier edits" in r.stderr and f"wrote {len(files)} edited photos" in r.stderr
    assert sorted(d.rglob("*-edited.png")) == edits and not list(d.rglob("*-edited-edited.png"))
    assert any(f.read_bytes() != data for f, data in first.items())
    # named on the command line, an earlier edit is a photo like any other
    r = ok(run("edit", edits[0], *EDIT))
    assert edits[0].with_name(f"{edits[0].stem}-edited.png").exists() and "left out" not in r.stderr
    for f in d.rglob("*-edited*.png"):
        f.unlink()
    # an --out-dir inside the folder: its files are this command's outputs, not photos to edit
    out = d / "edited"
    ok(run("edit", d, *EDIT, "--out-dir", out))
    r = ok(run("edit", d, *EDIT, "--out-dir", out, "--force"))
    assert f"wrote {len(files)} edited photos" in r.stderr and len(list(out.iterdir())) == len(files)


def test_a_photo_named_like_an_edit_is_never_taken_for_one(weights_env, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_photo(d / "a.jpg", 64, 64, seed=1)
    write_photo(d / "b.jpg", 64, 64, seed=2)
    photo = write_photo(d / "a.png", 64, 64, seed=3)  # another photo, where a.jpg's edit would go
    before = photo.read_bytes()
    r = run("edit", d, *EDIT, "--out-dir", d, "--force")
    assert r.exit_code == 1 and "left out" not in r.stderr
    assert photo.read_bytes() == before  # an input, never overwritten, even with --force
    assert any("a.jpg: its output" in line and "is the input image" in line for line in errors(r))


def test_a_bad_photo_is_reported_and_the_others_edited(weights_env, album, tmp_path):
    d, files = album
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    r = run("edit", d, tmp_path / "missing.png", *EDIT, "--out-dir", tmp_path / "out")
    assert r.exit_code == 1
    errs = errors(r)
    assert len(errs) == 2 and "broken.jpg" in errs[0] and "missing.png" in errs[1]
    assert "2 of 13 photos failed" in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{f.stem}.png" for f in files)


def test_existing_outputs_need_force_and_inputs_are_never_overwritten(weights_env, album, tmp_path):
    d, files = album
    out = tmp_path / "out"
    out.mkdir()
    (out / "p01.png").write_bytes(b"keep me")
    r = run("edit", d, *EDIT, "--out-dir", out)
    assert r.exit_code == 1 and len(errors(r)) == 1 and "--force" in r.stderr
    assert f"p01.jpg: its output {out / 'p01.png'} exists" in errors(r)[0]  # which photo it would have been
    assert (out / "p01.png").read_bytes() == b"keep me" and len(list(out.iterdir())) == len(files)
    ok(run("edit", d, *EDIT, "--out-dir", out, "--force"))
    assert Image.open(out / "p01.png").size == Image.open(d / "p01.jpg").size

    # --out-dir the photos' own folder: p00.png, p03.png ... would be their own inputs, --force or not
    before = {f: f.read_bytes() for f in files}
    r = run("edit", d, *EDIT, "--out-dir", d, "--force")
    assert r.exit_code == 1
    assert len(errors(r)) == 4 and all("is the input image" in e for e in errors(r))
    assert all(f.read_bytes() == data for f, data in before.items())
    assert (d / "p01.png").exists()  # from p01.jpg: no input of that name


def test_outputs_that_would_collide_are_refused(weights_env, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    first, second = write_photo(a / "face.jpg", 80, 80, seed=1), write_photo(b / "face.png", 80, 80, seed=2)
    r = run("edit", first, second, *EDIT, "--out-dir", tmp_path / "out")
    assert r.exit_code == 1 and "1 of 2 photos failed" in r.stderr
    [err] = errors(r)
    assert str(second) in err and "face.png" in err and str(first) in err
    ok(run("edit", first, *EDIT, "-o", tmp_path / "single.png"))
    assert (tmp_path / "out" / "face.png").read_bytes() == (tmp_path / "single.png").read_bytes()

    # beside their inputs too: x.jpg and x.png both make x-edited.png; and a photo given twice is edited once
    write_photo(a / "face.png", 80, 80, seed=3)
    r = run("edit", a, first, *EDIT)
    assert r.exit_code == 1 and len(errors(r)) == 2 and "2 of 3 photos failed" in r.stderr
    assert (a / "face-edited.png").exists()


def test_usage_errors_with_many_photos(weights_env, album, tmp_path):
    d, files = album
    for args in (
        (d, "-o", tmp_path / "x.png"),  # -o names one file
        (files[0], "-o", tmp_path / "x.png", "--out-dir", tmp_path / "out"),
        ("-", files[0], "--out-dir", tmp_path / "out"),  # stdin only alone
    ):
        r = run("edit", *args, *EDIT)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "out").exists()
    r = run("edit", tmp_path / "empty-folder-that-is-not-there", *EDIT)
    assert r.exit_code == 1 and "no such file" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("edit", tmp_path / "empty", *EDIT)
    assert r.exit_code == 1 and "no image files found" in r.stderr


def test_progress_bar_on_a_terminal(weights_env, tmp_path, monkeypatch):
    monkeypatch.setattr(type(console), "is_terminal", property(lambda self: True))
    files = [write_photo(tmp_path / f"{i}.png", 64, 64, seed=i) for i in range(21)]
    ok(run("edit", *files, *EDIT, "--out-dir", tmp_path / "out"))
    assert len(list((tmp_path / "out").iterdir())) == 21


def test_a_face_is_edited_alike_alone_and_among_others(tiny_weights):
    """The model's blocks make a face's edit independent of the faces edited with it (and of their number)."""
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    rng = np.random.default_rng(0)
    crops = list(rng.integers(0, 256, (19, 64, 64, 3), dtype=np.uint8))
    together = translate.edit_faces(tr, crops, {0: 1.5})
    assert together.result.shape == (19, 3, 64, 64)
    for i in (0, 7, 8, 18):
        alone = translate.edit_faces(tr, [crops[i]], {0: 1.5})
        assert np.array_equal(alone.delta_pixels[0], together.delta_pixels[i])
        assert np.array_equal(alone.pixels("result")[0], together.pixels("result")[i])
    direct = editing.edit(tr.model, editing.to_input(crops), {0: 1.5})
    assert np.allclose(direct.delta_pixels, together.delta_pixels, atol=1e-2)  # the same edit, up to rounding


def test_edit_photos_keeps_the_images_it_is_not_told_to_write(tiny_weights, tmp_path):
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    files = [str(write_photo(tmp_path / f"{i}.png", 50 + i, 40, seed=i)) for i in range(3)]
    shutil.copy(files[0], tmp_path / "copy.png")
    outputs = [None, tmp_path / "one-edited.png", translate.JmvaeError("stopped")]
    results = list(translate.edit_photos(tr, files, outputs, {0: 1.5}, detect=False))
    assert [r.file for r in results] == files
    assert results[0].image.size == (50, 40) and results[0].output is None and len(results[0].crops) == 1
    assert results[1].output == outputs[1] and Image.open(outputs[1]).size == (51, 40)
    assert results[2].error == "stopped"


@pytest.mark.parametrize("cpus, fork", [(2, True), (2, False)])
def test_worker_processes_and_threads_edit_as_one_thread_does(tiny_weights, tmp_path, monkeypatch, cpus, fork):
    # forked processes where the platform has fork (Linux), threads where it has not: both as one thread edits
    tr = translate.Translator.from_weights(tiny_weights, "cpu")
    files = [str(write_photo(tmp_path / f"{i}.png", 50 + 3 * i, 60, seed=i)) for i in range(19)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files.insert(9, str(tmp_path / "broken.png"))

    def edit(n: int, folder: str) -> list:
        (tmp_path / folder).mkdir()
        outputs = [tmp_path / folder / Path(f).name for f in files]
        outputs[3] = None  # kept in the result
        outputs[5] = faces.FaceTooSmallError("refused before the edit", 3.0)  # an error that does not unpickle
        monkeypatch.setattr(translate, "available_cpus", lambda: n)
        return list(translate.edit_photos(tr, files, outputs, {0: 1.5, 3: 0.0}, detect=False))

    methods = multiprocessing.get_all_start_methods()
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: [m for m in methods if fork or m != "fork"])
    forked, in_processes = [], translate._edit_in_processes
    monkeypatch.setattr(translate, "_edit_in_processes", lambda *a: forked.append(a) or in_processes(*a))
    many, one = edit(cpus, "many"), edit(1, "one")
    assert bool(forked) == (fork and sys.platform == "linux")
    assert [r.file for r in many] == files and [r.error is None for r in many] == [i not in (5, 9) for i in range(20)]
    assert many[5].error == one[5].error == "refused before the edit"
    assert "broken.png" in many[9].error and many[9].error == one[9].error
    assert np.array_equal(np.asarray(many[3].image), np.asarray(one[3].image))
    for a, b in zip(many, one):
        if a.output is not None:
            assert a.output.read_bytes() == b.output.read_bytes(), a.file
        if a.edit is not None:
            assert len(a.edit.x) == len(a.crops) == 1
            assert torch.equal(a.edit.result, b.edit.result)
            # where a face sits in its block of 8 can move a matrix product's last bit
            assert torch.allclose(a.edit.probs, b.edit.probs, atol=1e-6) and torch.allclose(a.edit.read, b.edit.read)


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_a_worker_process_killed_is_one_error_line(weights_env, album, tmp_path, monkeypatch):
    monkeypatch.setattr(translate, "available_cpus", lambda: 2)
    monkeypatch.setattr(translate, "_edit_photos", lambda *args: os._exit(9))  # runs in the forked workers only
    r = run("edit", album[0], *EDIT, "--out-dir", tmp_path / "out")
    assert r.exit_code == 1 and len(errors(r)) == 1 and "worker process" in errors(r)[0]


def test_edit_and_evaluate_offer_every_rule(weights_env, tmp_path):
    photo = write_photo(tmp_path / "p.png", 96, 96, seed=3)
    out = tmp_path / "latent.png"
    assert run("edit", photo, "--no-detect", "--set", "Smiling", "--method", "latent", "-o", out).exit_code == 0
    paper = tmp_path / "paper.png"
    assert run("edit", photo, "--no-detect", "--set", "Smiling", "-o", paper).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(paper)))
    assert (
        run("edit", photo, "--no-detect", "--set", "Smiling", "--method", "nope", "-o", tmp_path / "x.png").exit_code
        == 2
    )
