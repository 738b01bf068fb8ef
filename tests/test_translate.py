"""The translation library: average faces and grids, pasting an edit back into the photo, batches of files."""

import multiprocessing
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from jmvae_cli import faces, translate
from jmvae_cli.model import pixels_to_input
from jmvae_cli.runtime import bf16_supported
from tests.model_fixtures import ATTRS, photo_array, tiny_weights, write_photo  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def tr(tiny_weights):
    return translate.Translator.from_weights(tiny_weights, "cpu", "fp32")


# ----------------------------------------------------------------------------- attributes -> faces


def test_base_attributes():
    r = translate.base_attributes("random", 40, seed=3)
    assert set(np.unique(r)) <= {0.0, 1.0} and 5 < r.sum() < 35
    assert np.array_equal(r, translate.base_attributes("random", 40, seed=3))
    assert not translate.base_attributes("zeros", 5, 0).any()


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


def test_average_face_decodes_in_batches(tr, monkeypatch):
    w = np.array([1, 0, 0, 1, 1], np.float32)
    whole = translate.average_face(tr, w, samples=6, seed=2)
    monkeypatch.setattr(translate, "DECODE_BATCH", 3)  # 7 faces: batches of 3, 3 and 1
    batched = translate.average_face(tr, w, samples=6, seed=2)
    assert batched.shape == whole.shape
    assert np.abs(batched.astype(int) - whole).max() <= 1  # the same faces, up to a batch size's float rounding
    with pytest.raises(ValueError, match="zeta"):
        translate.average_face(tr, w, samples=1, zeta=float("inf"))


def test_check_samples_names_the_most_that_fit(monkeypatch):
    monkeypatch.setattr(translate, "MAX_GRID_PIXELS", 100 * 100)
    size = lambda n: translate.grid_size(1 + n, 10)  # noqa: E731
    translate.check_samples(71, size)  # 72 tiles of 10 px: 9 x 8 with their gaps, 98 x 94 pixels
    with pytest.raises(translate.GridTooLargeError, match="--samples 72 makes a 106x106 image.*at most 71 samples"):
        translate.check_samples(72, size)
    assert translate.GridTooLargeError.exit_code == 2  # a usage error


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


def test_a_grid_too_large_to_open_again_is_refused():
    with pytest.raises(translate.GridTooLargeError, match="smaller --size"):
        translate.grid(np.zeros((24, 8, 8, 3), np.uint8), size=2048, cols=4)  # edit --show of 6 faces at 2048 px
    assert translate.grid(np.zeros((24, 8, 8, 3), np.uint8), size=16, cols=4).size == (4 * 16 + 6, 6 * 16 + 10)


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


@pytest.mark.parametrize("fork", [True, False])
def test_img2attr_in_worker_processes_or_threads_reads_as_one_thread_does(tr, tmp_path, monkeypatch, fork):
    # forked processes where the platform has fork (Linux), threads where it has not
    monkeypatch.setattr(translate, "IMG2ATTR_TASK", 3)  # several tasks, a failure inside one
    files = [str(write_photo(tmp_path / f"{i}.png", 50 + 3 * i, 60, seed=i)) for i in range(10)]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    files.insert(4, str(tmp_path / "broken.png"))
    methods = multiprocessing.get_all_start_methods()
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: [m for m in methods if fork or m != "fork"])
    forked, in_processes = [], translate._in_processes
    monkeypatch.setattr(translate, "_in_processes", lambda *a: forked.append(a) or in_processes(*a))

    def read(cpus: int) -> tuple[list, int]:
        monkeypatch.setattr(translate, "available_cpus", lambda: cpus)
        ticks = []
        return list(translate.img2attr(tr, files, detect=False, on_file=lambda: ticks.append(1))), len(ticks)

    (many, ticks), (one, _) = read(2), read(1)
    assert bool(forked) == (fork and sys.platform == "linux") and ticks == len(files)
    assert [r.file for r in many] == files and [r.error is None for r in many] == [i != 4 for i in range(11)]
    assert "broken.png" in many[4].error and many[4].error == one[4].error
    for a, b in zip(many, one):
        if a.error is None:  # a batch's size can move a matrix product's last bit
            assert np.allclose(a.probs, b.probs, atol=1e-6) and np.array_equal(a.crop.crop, b.crop.crop)


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_img2attr_tasks_shrink_where_there_are_few_photos_per_worker(tr, monkeypatch):
    sizes = []
    monkeypatch.setattr(translate, "available_cpus", lambda: 2)
    monkeypatch.setattr(
        translate, "_in_processes", lambda tr, fn, tasks, *a: sizes.append([len(t) for t in tasks]) or []
    )
    for n in (8, 20, 100, 1000):
        list(translate.img2attr(tr, [f"{i}.jpg" for i in range(n)]))
    # 8: one chunk, in threads (not a file of them exists: each is an error there)
    assert sizes == [[8, 8, 4], [13] * 7 + [9], [32] * 31 + [8]]


# ----------------------------------------------------------------------------- framing by the model


def test_refine_frames_cuts_each_face_at_the_scale_the_model_reconstructs_best(tr):
    photo = Image.fromarray(photo_array(200, 160, seed=3))

    def error(frame: faces.Frame) -> float:
        cut = np.array(faces.crop_face(photo, frame, tr.image_size))  # writable, for torch
        x = pixels_to_input(torch.from_numpy(cut[None]))
        with torch.inference_mode():
            return float((tr.model.images_from_z(tr.model.q_x(x).mu) - x).square().mean())

    frames = [faces.Frame(100, 80, 90, 10.0), faces.Frame(60, 60, 50)]
    crops = [faces.FaceCrop(i, f, np.asarray(faces.crop_face(photo, f, tr.image_size))) for i, f in enumerate(frames)]
    got = translate.refine_frames(tr, photo, crops)
    assert [c.face for c in got] == [0, 1]
    for c, f in zip(got, frames):
        # the same place and turn, at one of the scales tried, cut as crop_face cuts it
        assert (c.frame.cx, c.frame.cy, c.frame.angle) == (f.cx, f.cy, f.angle)
        assert any(np.isclose(c.frame.side, f.side * s) for s in translate.REFINE_SCALES)
        assert np.array_equal(c.crop, np.asarray(faces.crop_face(photo, c.frame, tr.image_size)))
        tried = [error(faces.Frame(f.cx, f.cy, f.side * s, f.angle)) for s in translate.REFINE_SCALES]
        assert error(c.frame) <= min(tried) + 1e-6
