"""Which files a command reads and writes: inputs expanded to photos, earlier edits left out."""

import os
from pathlib import Path

from PIL import Image

from jmvae_cli import photo_files
from jmvae_cli.images import EDIT_MARK, png_text, write_image


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.jpg", "d/a.png", "d/sub/c.JPG", "d/e.avif", "d/notes.txt", "d/.hidden.jpg", "x1.png", "x2.png"]:
        (tmp_path / name).write_bytes(b"x")
    got = photo_files.expand_inputs([str(tmp_path / "d"), str(tmp_path / "x*.png"), "-", str(tmp_path / "nope.jpg")])
    rel = [g if g == "-" else str(Path(g).relative_to(tmp_path)) for g in got]
    assert rel == ["d/a.png", "d/b.jpg", "d/e.avif", "d/sub/c.JPG", "x1.png", "x2.png", "-", "nope.jpg"]


def test_expand_inputs_takes_a_file_found_twice_once(tmp_path):
    (tmp_path / "d" / ".thumbnails").mkdir(parents=True)
    for name in ["d/a.jpg", "d/b.jpg", "d/.thumbnails/a.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    a, d = str(tmp_path / "d" / "a.jpg"), str(tmp_path / "d")
    # a file named and inside a folder given, a folder given twice: each file once; hidden folders left out
    assert photo_files.expand_inputs([a, d, d + "/*.jpg"]) == [a, str(tmp_path / "d" / "b.jpg")]
    assert photo_files.expand_inputs([a, a]) == [a, a]  # named twice by the user: as asked
    os.link(a, tmp_path / "d" / "c.jpg")  # another name of the same file: another photo
    assert len(photo_files.expand_inputs([d])) == 3


def test_earlier_edits_are_only_jmvaes_found_not_named(tmp_path):
    (tmp_path / "out").mkdir()
    for name in ["a.jpg", "b.png", "d.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    for name in ["a-edited.png", "out/a.png", "c-edited.png"]:  # edits this command wrote (c's photo is gone)
        write_image(Image.new("RGB", (4, 4)), tmp_path / name, fast=True, text=dict([EDIT_MARK]))
    write_image(Image.new("RGB", (4, 4)), tmp_path / "d-edited.png")  # a photo of the user's, named like an edit
    sources = photo_files.expand_inputs([str(tmp_path)])

    def rel(paths: list[str]) -> list[str]:
        return sorted(str(Path(p).relative_to(tmp_path)) for p in paths)

    assert rel(photo_files.earlier_edits([str(tmp_path)], sources, None)) == ["a-edited.png"]
    assert rel(photo_files.earlier_edits([str(tmp_path)], sources, tmp_path / "out")) == ["out/a.png"]
    named = [str(tmp_path), str(tmp_path / "a-edited.png")]
    assert photo_files.earlier_edits(named, photo_files.expand_inputs(named), None) == []
    # the mark, as Pillow writes it too (the edit of an image Pillow writes itself)
    write_image(Image.new("I;16", (4, 4)), tmp_path / "16bit.png", text=dict([EDIT_MARK]))
    assert png_text(tmp_path / "16bit.png") == dict([EDIT_MARK]) and png_text(tmp_path / "a.jpg") == {}
    # a chunk length of whatever size a file says is never read into memory
    odd = tmp_path / "odd-edited.png"
    odd.write_bytes(b"\x89PNG\r\n\x1a\n" + (0xFFFFFFF0).to_bytes(4, "big") + b"tEXtx")
    assert png_text(odd) == {}
    odd.write_bytes(b"\x89PNG\r\n\x1a\n" + (0xFFFFFFF0).to_bytes(4, "big") + b"zTXtx")
    assert png_text(odd) == {}
