import os
import subprocess
import sys
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jmvae_cli import data
from jmvae_cli.data import DataError, Preprocess, decode_face, load_data, read_source
from jmvae_cli.errors import JmvaeError
from tests.conftest import (
    CELEBA_ATTRS,
    expected_attrs,
    face_colour,
    face_number,
    face_numbers,
)

SHARED = Path(__file__).parents[2] / "shared" / "datasets"


def assert_rows_line_up(d):
    """Every row's image is the solid colour of its file number, and its attributes are that number's."""
    colours = np.array([face_colour(face_number(name)) for name in d.names])  # (N, 3)
    assert np.abs(d.images.mean(axis=(1, 2)) - colours).max() < 4
    np.testing.assert_array_equal(d.attrs, expected_attrs(d.names, len(d.attr_names)))


def cache_files(cache):
    return sorted(p.name for p in Path(cache).iterdir())


# -----------------------------------------------------------------------------
# layouts and splits


def test_celeba_layout_without_partition_splits_by_name_hash(tmp_path, make_celeba):
    root = make_celeba(tmp_path, 60)
    s = read_source(root, val_fraction=0.3)
    assert s.layout == "celeba" and s.attr_names == CELEBA_ATTRS
    assert s.names == [f"{k:06d}.jpg" for k in face_numbers(60)] and "000003.jpg" not in s.names
    assert s.paths[0] == root.resolve() / "img_align_celeba" / "000001.jpg"
    np.testing.assert_array_equal(s.attrs, expected_attrs(s.names, 40))
    assert set(s.split) == {0, 1} and 5 <= (s.split == 1).sum() <= 30
    # the split follows the file name, not the row: a folder holding a subset of the rows agrees on them
    smaller = read_source(make_celeba(tmp_path, 20, name="smaller"), val_fraction=0.3)
    np.testing.assert_array_equal(smaller.split, s.split[:20])
    assert (read_source(root, val_fraction=0.0).split == 0).all()


def test_celeba_partition_file_gives_train_val_test(tmp_path, make_celeba):
    root = make_celeba(tmp_path, 9, partition=True, size=(89, 109))
    s = read_source(root)
    np.testing.assert_array_equal(s.split, [i % 3 for i in range(9)])
    d = load_data([root], progress=False)
    assert_rows_line_up(d)
    for name, code in data.SPLITS.items():
        np.testing.assert_array_equal(d.indices(name), [i for i in range(9) if i % 3 == code])


def test_partition_file_problems(tmp_path, make_celeba):
    root = make_celeba(tmp_path, 4, partition=True, size=(89, 109))
    part = root / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt line 2: .*'000002.jpg 3'"):
        read_source(root)
    part.write_text("000001.jpg 0\n000002.jpg 1\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt: no entry for 2 file.*000004.jpg"):
        read_source(root)


def test_celeba_hq_layout(tmp_path, make_celeba_hq):
    root = make_celeba_hq(tmp_path, 8)
    s = read_source(root)
    assert s.layout == "celeba-hq"
    assert s.names == ["0.jpg", "1.jpg", "3.jpg", "4.jpg", "6.jpg", "7.jpg", "9.jpg", "10.jpg"]  # 0-based, gaps
    d = load_data([root], progress=False)
    assert d.images.shape == (8, 64, 64, 3) and d.images.dtype == np.uint8
    assert d.attr_names == CELEBA_ATTRS and d.skipped == 0
    assert_rows_line_up(d)


@pytest.mark.parametrize("zero_one", [False, True])
def test_generic_layout_with_any_attributes(tmp_path, make_generic, zero_one):
    root = make_generic(tmp_path, 6, ["Smiling", "Wearing_Hat", "Cat_Ears"], zero_one=zero_one)
    s = read_source(root)
    assert s.layout == "generic" and s.attr_names == ["Smiling", "Wearing_Hat", "Cat_Ears"]
    assert s.paths[0] == root.resolve() / "img" / "001.jpg"  # relative to the folder
    d = load_data([root], progress=False)
    assert d.images.shape == (6, 64, 64, 3)
    assert_rows_line_up(d)


def test_folder_in_no_known_layout(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match="list_attr_celeba.txt.*CelebAMask-HQ-attribute-anno.txt.*attributes.csv"):
        read_source(tmp_path / "photos")
    with pytest.raises(DataError, match="no such folder"):
        read_source(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: not a folder"):
        read_source(tmp_path / "afile")
    assert issubclass(DataError, JmvaeError)


# -----------------------------------------------------------------------------
# several folders


def test_folders_merge_in_order(tmp_path, make_celeba, make_celeba_hq):
    celeba, hq = make_celeba(tmp_path, 5, size=(89, 109)), make_celeba_hq(tmp_path, 4)
    d = load_data([celeba, hq], progress=False)
    assert d.names == [f"{k:06d}.jpg" for k in face_numbers(5)] + ["0.jpg", "1.jpg", "3.jpg", "4.jpg"]
    assert d.images.shape == (9, 64, 64, 3) and d.attr_names == CELEBA_ATTRS
    assert_rows_line_up(d)


def test_folders_with_different_attributes_are_refused(tmp_path, make_generic):
    a = make_generic(tmp_path, 3, ["Smiling", "Male", "Young"], name="a")
    b = make_generic(tmp_path, 3, ["Smiling", "Young", "Bald"], name="b")
    differ = r"b/attributes.csv differ from .*a/attributes.csv: it lacks Male; it has extra Bald"
    with pytest.raises(DataError, match=differ):
        load_data([a, b], progress=False)
    c = make_generic(tmp_path, 3, ["Young", "Male", "Smiling"], name="c")
    with pytest.raises(DataError, match="same names in a different order"):
        load_data([a, c], progress=False)


# -----------------------------------------------------------------------------
# malformed attribute files


def edit_line(path, k, edit):
    lines = path.read_text().splitlines()
    lines[k - 1] = edit(lines[k - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: edit_line(p, 7, lambda s: s[:-3]), r"list_attr_celeba.txt line 7: expected 40 values, found 39$"),
        (
            lambda p: edit_line(p, 5, lambda s: s[:-2] + " 2"),
            r"list_attr_celeba.txt line 5: expected -1 or 1, found '2'",
        ),
        (lambda p: edit_line(p, 6, lambda s: s + " 1"), r"list_attr_celeba.txt line 6: expected 40 values, found 41"),
        (lambda p: edit_line(p, 4, lambda s: ""), r"list_attr_celeba.txt line 4: expected 40 values, found an empty"),
        (lambda p: edit_line(p, 1, lambda s: "9"), r"list_attr_celeba.txt line 1: says 9 rows, but the file has 8"),
        (lambda p: edit_line(p, 1, lambda s: "Bald Male"), r"list_attr_celeba.txt line 1: expected the number of rows"),
        (lambda p: edit_line(p, 2, lambda s: " "), r"list_attr_celeba.txt line 2: expected the attribute names"),
        (lambda p: p.write_text(""), r"list_attr_celeba.txt: file is empty"),
    ],
)
def test_malformed_attribute_txt_names_file_and_line(tmp_path, make_celeba, edit, message):
    root = make_celeba(tmp_path, 8, size=(89, 109))
    edit(root / "list_attr_celeba.txt")
    with pytest.raises(DataError, match=message):
        read_source(root)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: edit_line(p, 3, lambda s: s + ",1"), r"attributes.csv line 3: expected 2 values, found 3"),
        (lambda p: edit_line(p, 4, lambda s: s[:-1] + "yes"), r"attributes.csv line 4: expected -1/1 or 0/1, found 'y"),
        (lambda p: edit_line(p, 1, lambda s: "image,A,B"), r"attributes.csv line 1: expected a header 'file,"),
        (lambda p: p.write_text("\n"), r"attributes.csv: file is empty"),
    ],
)
def test_malformed_attribute_csv_names_file_and_line(tmp_path, make_generic, edit, message):
    root = make_generic(tmp_path, 4, ["A", "B"])
    edit(root / "attributes.csv")
    with pytest.raises(DataError, match=message):
        read_source(root)


def test_attribute_txt_of_full_celeba_size(tmp_path):
    # the full CelebA file has 202,599 rows (benchmarks/data_loading.py times the parse)
    rng = np.random.default_rng(0)
    values = rng.choice(np.array(["-1", " 1"]), size=(202_599, 40))
    rows = [f"{i:06d}.jpg {'  '.join(v)}" for i, v in enumerate(values, start=1)]
    (tmp_path / "a.txt").write_text("\n".join(["202599", " ".join(CELEBA_ATTRS), *rows]) + "\n")
    names, _, attrs = data._read_attr_txt(tmp_path / "a.txt")
    assert len(names) == 202_599 and names[-1] == "202599.jpg"
    np.testing.assert_array_equal(attrs, values == " 1")


# -----------------------------------------------------------------------------
# unreadable images


def test_missing_and_corrupt_images_are_skipped_counted_and_reported(tmp_path, make_celeba, capsys):
    root = make_celeba(tmp_path, 10, size=(89, 109))
    images = root / "img_align_celeba"
    (images / "000002.jpg").unlink()
    (images / "000004.jpg").write_bytes(b"not a jpeg at all")
    truncated = (images / "000007.jpg").read_bytes()
    (images / "000007.jpg").write_bytes(truncated[: len(truncated) // 2])
    d = load_data([root], progress=False)
    assert d.skipped == 3 and len(d.names) == 7 and d.images.shape[0] == 7
    assert not {"000002.jpg", "000004.jpg", "000007.jpg"} & set(d.names)
    assert_rows_line_up(d)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 3 of 10 images" in err and "000002.jpg" in err
    # a reused cache drops the same rows, and says so again: every run trains without them
    again = load_data([root], progress=False)
    assert again.names == d.names and again.skipped == 3
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "skipped 3 of 10 images" in err and "000002.jpg" in err


def test_big_folders_decode_in_spawned_workers_in_order(tmp_path, make_celeba, monkeypatch):
    root = make_celeba(tmp_path, 80, size=(89, 109))
    names = sorted(p.name for p in (root / "img_align_celeba").iterdir())
    for bad in (names[3], names[70]):  # one decoded here, one by the workers
        (root / "img_align_celeba" / bad).write_bytes(b"not a jpeg")
    serial = load_data([root], cache_dir=tmp_path / "serial", progress=False)
    contexts = []

    def recording(method):
        contexts.append(method)
        return get_context(method)

    monkeypatch.setattr(data, "get_context", recording)
    monkeypatch.setattr(data, "POOL_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(data, "available_cpus", lambda: 2)
    pooled = load_data([root], cache_dir=tmp_path / "pooled", progress=False)
    assert contexts == ["spawn"]  # forked workers inherit locks held by other threads, and can deadlock
    assert pooled.names == serial.names and pooled.skipped == serial.skipped == 2
    np.testing.assert_array_equal(pooled.images, serial.images)
    assert_rows_line_up(pooled)


def test_a_script_without_main_guard_still_loads_big_folders(tmp_path, make_celeba):
    # spawned workers re-import the main script; unguarded, they fail to start, and this process decodes instead
    root = make_celeba(tmp_path, 80, size=(89, 109))
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from jmvae_cli import data\n"
        "data.POOL_AFTER_SECONDS = 0.0\n"
        f"faces = data.load_data([{str(root)!r}], cache_dir={str(tmp_path / 'cache')!r}, progress=False)\n"
        "print(len(faces.names), int(faces.images.sum()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    serial = load_data([root], cache_dir=tmp_path / "serial", progress=False)
    assert result.stdout.split() == [str(len(serial.names)), str(int(serial.images.sum()))]
    assert "decoding in this process instead" in result.stderr and "__main__" in result.stderr


def test_no_readable_image_at_all(tmp_path, make_generic):
    root = make_generic(tmp_path, 3, ["A"])
    for image in (root / "img").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="no readable images"):
        load_data([root], progress=False)


# -----------------------------------------------------------------------------
# the cache


def test_cache_is_reused_without_decoding(tmp_path, make_celeba, monkeypatch):
    root, cache = make_celeba(tmp_path, 6, size=(89, 109)), tmp_path / "cache"
    first = load_data([root], cache_dir=cache, progress=False)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".u8"]
    (images_file,) = cache.glob("*.u8")
    before = images_file.stat()

    def no_decoding(*args):
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(data, "decode_face", no_decoding)  # six images are decoded in this process
    second = load_data([root], cache_dir=cache, progress=False)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, first.images)
    assert (images_file.stat().st_ino, images_file.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_default_cache_dir_comes_from_the_environment(tmp_path, make_generic, monkeypatch):
    monkeypatch.setenv("JMVAE_CACHE_DIR", str(tmp_path / "env-cache"))
    load_data([make_generic(tmp_path, 2, ["A"])], progress=False)
    assert len(cache_files(tmp_path / "env-cache")) == 2
    monkeypatch.delenv("JMVAE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "jmvae"


@pytest.mark.parametrize("change", ["size", "crop", "max_images", "attr_file"])
def test_cache_is_rebuilt_when_files_or_preprocessing_change(tmp_path, make_celeba, change):
    root, cache = make_celeba(tmp_path, 6, size=(89, 109)), tmp_path / "cache"
    load_data([root], cache_dir=cache, progress=False)
    kwargs = {
        "size": {"preprocess": Preprocess(size=32)},
        "crop": {"preprocess": Preprocess(celeba_crop=0.5)},
        "max_images": {"max_images": 5},
    }.get(change, {})
    if change == "attr_file":  # same file list, but the attribute file was rewritten (re-downloaded, say)
        attr_file = root / "list_attr_celeba.txt"
        attr_file.write_text(attr_file.read_text() + "\n")
    d = load_data([root], cache_dir=cache, progress=False, **kwargs)
    assert len(cache_files(cache)) == 4  # a second cache beside the first
    size = kwargs.get("preprocess", Preprocess()).size
    assert d.images.shape == (kwargs.get("max_images", 6), size, size, 3)


def test_adding_an_image_rebuilds_the_cache(tmp_path, make_celeba):
    cache = tmp_path / "cache"
    assert load_data([make_celeba(tmp_path, 6, size=(89, 109))], cache_dir=cache, progress=False).images.shape[0] == 6
    d = load_data([make_celeba(tmp_path, 7, size=(89, 109))], cache_dir=cache, progress=False)
    assert d.images.shape[0] == 7
    assert_rows_line_up(d)


@pytest.mark.parametrize("change", ["overwrite", "delete", "repair"])
def test_changed_images_rebuild_the_cache(tmp_path, make_celeba, change):
    root, cache = make_celeba(tmp_path, 6, size=(89, 109)), tmp_path / "cache"
    image = root / "img_align_celeba" / "000004.jpg"
    if change == "repair":
        good = image.read_bytes()
        image.write_bytes(b"not a jpeg")
    first = load_data([root], cache_dir=cache, progress=False)
    if change == "overwrite":  # the same size of file, other pixels: only the modification time tells
        Image.new("RGB", (89, 109), face_colour(1)).save(image, quality=95)
    elif change == "delete":
        image.unlink()
    else:
        image.write_bytes(good)
    d = load_data([root], cache_dir=cache, progress=False)
    if change == "overwrite":
        assert d.names == first.names
        row = d.names.index("000004.jpg")
        np.testing.assert_allclose(d.images[row].mean(axis=(0, 1)), face_colour(1), atol=4)
        np.testing.assert_array_equal(np.delete(d.images, row, 0), np.delete(first.images, row, 0))
    else:
        assert ("000004.jpg" in d.names) == (change == "repair") and d.skipped == (change == "delete")
        assert_rows_line_up(d)


def test_an_image_made_readable_again_rebuilds_the_cache(tmp_path, make_celeba):
    # chmod 000 and back changes neither the size nor the time: the stamp holds the mode too (root reads any file,
    # so the skip itself is not reproduced here)
    image = make_celeba(tmp_path, 2, size=(89, 109)) / "img_align_celeba" / "000001.jpg"
    before = data._stamp(image)
    image.chmod(0)
    assert data._stamp(image)[:2] == before[:2] and data._stamp(image) != before
    image.chmod(0o644)


def test_an_attribute_csv_with_a_byte_order_mark_reads(tmp_path, make_generic):
    root = make_generic(tmp_path, 5, ["Smiling", "Male"])
    plain = load_data([root], cache_dir=tmp_path / "cache", progress=False)
    csv = root / "attributes.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # a spreadsheet's "CSV UTF-8"
    d = load_data([root], cache_dir=tmp_path / "cache", progress=False)
    assert d.attr_names == plain.attr_names and d.names == plain.names
    np.testing.assert_array_equal(d.attrs, plain.attrs)


def test_incomplete_cache_is_not_trusted(tmp_path, make_celeba):
    root, cache = make_celeba(tmp_path, 6, size=(89, 109)), tmp_path / "cache"
    first = np.array(load_data([root], cache_dir=cache, progress=False).images)
    (images_file,) = cache.glob("*.u8")
    images_file.write_bytes(images_file.read_bytes()[:1000])  # as if a copy was cut short
    np.testing.assert_array_equal(load_data([root], cache_dir=cache, progress=False).images, first)
    (meta_file,) = cache.glob("*.json")
    meta_file.unlink()  # as if the build was killed before its JSON was written
    np.testing.assert_array_equal(load_data([root], cache_dir=cache, progress=False).images, first)


def test_failed_build_leaves_no_files(tmp_path, make_celeba, monkeypatch):
    root, cache = make_celeba(tmp_path, 6, size=(89, 109)), tmp_path / "cache"

    def broken(*args):
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(data, "decode_face", broken)
    with pytest.raises(RuntimeError, match="decoder crashed"):
        load_data([root], cache_dir=cache, progress=False)
    assert cache_files(cache) == []  # no temp file, and nothing a later run could trust
    monkeypatch.undo()
    load_data([root], cache_dir=cache, progress=False)
    assert not [name for name in cache_files(cache) if name.startswith(".") or "tmp" in name]


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_temporaries_of_dead_builds_are_removed(tmp_path, make_celeba):
    # a build killed with -9 leaves its temporary image file (88 MB for CelebA) under a name no later key takes
    root, cache = make_celeba(tmp_path, 3, size=(89, 109)), tmp_path / "cache"
    cache.mkdir()
    dead = cache / f".{'0' * 32}.u8.{dead_pid()}.0123abcd.tmp"
    live = cache / f".{'1' * 32}.u8.{os.getppid()}.0123abcd.tmp"  # a build under way in another process
    dead.write_bytes(b"\0" * 1000)
    live.write_bytes(b"\0" * 1000)
    load_data([root], cache_dir=cache, progress=False)
    assert not dead.exists() and live.exists()


FILE_SIZE_LIMIT = """
import resource, sys
from jmvae_cli import data
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    data.load_data([sys.argv[1]], cache_dir=sys.argv[2], progress=False)
except data.DataError as e:
    print(e)
"""


def test_cache_write_beyond_the_file_size_limit_is_a_data_error(tmp_path, make_celeba):
    root, cache = make_celeba(tmp_path, 3, size=(89, 109)), tmp_path / "cache"  # 3 x 12,288 bytes of images
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    args = [sys.executable, "-c", FILE_SIZE_LIMIT, str(root), str(cache)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"cannot write the image cache in {cache} (File too large)"
    assert cache_files(cache) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_is_a_data_error(tmp_path, make_celeba):
    root, cache = make_celeba(tmp_path, 3, size=(89, 109)), tmp_path / "cache"
    cache.mkdir(mode=0o555)
    with pytest.raises(DataError, match=rf"^cannot write the image cache in {cache} \(Permission denied\)$"):
        load_data([root], cache_dir=cache, progress=False)


# -----------------------------------------------------------------------------
# the same images twice


def test_the_same_folder_twice_is_refused(tmp_path, make_celeba):
    root = make_celeba(tmp_path, 3, size=(89, 109))
    (tmp_path / "link").symlink_to(root)
    for twice in ([root, root], [root, tmp_path / "link"]):
        with pytest.raises(DataError, match=rf"^{root.resolve()} is given twice$"):
            load_data(twice, progress=False)


def test_duplicate_rows_are_refused(tmp_path, make_celeba, make_generic):
    root = make_celeba(tmp_path, 5, size=(89, 109))
    edit_line(root / "list_attr_celeba.txt", 6, lambda s: "000001.jpg" + s[len("000001.jpg") :])
    with pytest.raises(DataError, match=r"list_attr_celeba.txt: 1 file listed on more than one row, e.g. 000001.jpg"):
        read_source(root)
    generic = make_generic(tmp_path, 4, ["A"])
    csv = generic / "attributes.csv"
    csv.write_text(csv.read_text() + "img/001.jpg,1\nimg/002.jpg,-1\n")
    with pytest.raises(DataError, match=r"attributes.csv: 2 files listed on more than one row, e.g. img/001.jpg"):
        read_source(generic)


def test_max_images_is_a_deterministic_subset_from_both_splits(tmp_path, make_celeba):
    root = make_celeba(tmp_path, 40, size=(89, 109))
    d = load_data([root], max_images=12, val_fraction=0.5, progress=False)
    assert len(d.names) == 12 and set(d.split) == {0, 1}
    names = read_source(root).names
    assert d.names == sorted(d.names, key=names.index)  # still in file order
    assert load_data([root], max_images=12, val_fraction=0.5, progress=False).names == d.names
    assert_rows_line_up(d)


# -----------------------------------------------------------------------------
# framing


def pattern(w, h):
    """A smooth pattern defined relative to the image width, so two sizes show the same picture."""
    y, x = np.mgrid[0:h, 0:w] / w  # (h, w) each
    rgb = np.stack([np.sin(6 * x), np.cos(5 * y), np.sin(4 * (x + y))], axis=-1)  # (h, w, 3)
    return Image.fromarray((127.5 + 127 * rgb).astype(np.uint8))


def test_celeba_crop_is_relative_to_the_width(tmp_path):
    pattern(178, 218).save(tmp_path / "full.jpg", quality=95)
    pattern(89, 109).save(tmp_path / "half.jpg", quality=95)
    full = decode_face(tmp_path / "full.jpg", "celeba").astype(float)
    half = decode_face(tmp_path / "half.jpg", "celeba").astype(float)
    assert full.shape == half.shape == (64, 64, 3)
    assert np.abs(full - half).mean() < 3


def test_celeba_framing_is_the_centre_148_square(tmp_path):
    # red outside the centre 148 px square of a 178x218 image, green inside, and a blue band along its left edge
    im = np.zeros((218, 178, 3), np.uint8)  # (h, w, 3)
    im[...] = (255, 0, 0)
    im[35:183, 15:163] = (0, 255, 0)
    im[35:183, 15:25] = (0, 0, 255)
    Image.fromarray(im).save(tmp_path / "face.png")
    face = decode_face(tmp_path / "face.png", "celeba").astype(int)  # (64, 64, 3)
    assert (face[2:-2, 2:-2, 0] < 30).all()  # no background inside
    assert (face[:, 1:3, 2] > 200).all()  # the band is at the left edge: the crop starts where the square does
    assert (face[:, 7:-2, 1] > 225).all()


def test_hq_and_generic_images_are_resized_whole_or_centre_squared(tmp_path):
    square = np.zeros((256, 256, 3), np.uint8)  # (h, w, 3)
    square[:16, :16] = (0, 0, 255)  # a corner mark that must survive: nothing is cropped
    Image.fromarray(square).save(tmp_path / "hq.png")
    face = decode_face(tmp_path / "hq.png", "celeba-hq")
    assert (face[:3, :3, 2] > 200).all() and (face[6:, 6:, 2] < 30).all()
    wide = np.zeros((60, 100, 3), np.uint8)  # (h, w, 3)
    wide[...] = (255, 0, 0)
    wide[:, 20:80] = (0, 255, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    face = decode_face(tmp_path / "wide.png", "generic").astype(int)
    assert (face[..., 1] > 225).all() and (face[..., 0] < 30).all()


def test_phone_photos_are_turned_upright(tmp_path):
    im = np.zeros((80, 80, 3), np.uint8)  # (h, w, 3)
    im[:, :40] = (255, 0, 0)
    im[:, 40:] = (0, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise, so the stored left half shows on top
    Image.fromarray(im).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    face = decode_face(tmp_path / "phone.jpg", "generic").astype(int)
    assert face[5, 32, 0] > 200 and face[58, 32, 1] > 200


def test_unreadable_images_decode_to_none(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
    assert decode_face(tmp_path / "bad.jpg", "celeba") is None
    assert decode_face(tmp_path / "missing.jpg", "generic") is None
    assert decode_face(tmp_path, "generic") is None  # a folder


# -----------------------------------------------------------------------------
# real data


@pytest.mark.skipif(not (SHARED / "celeba").is_dir(), reason="needs ../shared/datasets/celeba")
def test_real_celeba_subset():
    d = load_data([SHARED / "celeba"], max_images=50, progress=False)
    assert d.images.shape == (50, 64, 64, 3) and d.images.dtype == np.uint8
    assert d.attrs.shape == (50, 40) and d.attr_names == CELEBA_ATTRS and d.skipped == 0
    assert set(np.unique(d.attrs)) == {0, 1} and 20 < d.images.mean() < 235
