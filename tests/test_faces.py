from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jmvae_cli.errors import JmvaeError
from jmvae_cli.faces import (
    FRAME_DX,
    FRAME_DY,
    FRAME_SCALE,
    Box,
    NoFaceError,
    crop_face,
    find_faces,
    frame_box,
)

HQ = Path(__file__).parents[2] / "shared" / "datasets" / "celeba-hq-256-sample"


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    ih = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return iw * ih / (a.w * a.h + b.w * b.h - iw * ih)


@pytest.mark.skipif(not HQ.is_dir(), reason="needs shared/datasets/celeba-hq-256-sample")
def test_celeba_hq_faces_are_framed_as_the_whole_image():
    # CelebA-HQ trains resized whole, so a correct framing of one of its faces is about the whole image
    files = sorted(HQ.glob("*.jpg"))
    ious = []
    for f in files:
        img = Image.open(f).convert("RGB")
        try:
            boxes = find_faces(img)
        except NoFaceError:
            continue
        assert len(boxes) == 1
        ious.append(iou(boxes[0], Box(0, 0, *img.size)))
        assert crop_face(img, boxes[0]).size == (64, 64)
    assert len(ious) >= 0.9 * len(files)
    assert min(ious) > 0.5 and np.median(ious) > 0.7


@pytest.mark.skipif(not HQ.is_dir(), reason="needs shared/datasets/celeba-hq-256-sample")
def test_a_face_inside_a_bigger_photo_is_framed_where_it_lies():
    face = Image.open(sorted(HQ.glob("*.jpg"))[0]).convert("RGB").resize((400, 400), Image.Resampling.BICUBIC)
    photo = Image.new("RGB", (1600, 1000), (90, 110, 70))
    photo.paste(face, (900, 350))
    (box,) = find_faces(photo, all_faces=True)
    assert iou(box, Box(900, 350, 400, 400)) > 0.6


def test_frame_box_applies_the_calibration():
    f = frame_box(Box(100, 200, 50, 50))
    assert f.w == f.h == pytest.approx(50 * FRAME_SCALE)
    assert f.x + f.w / 2 == pytest.approx(125 + 50 * FRAME_DX)
    assert f.y + f.h / 2 == pytest.approx(225 + 50 * FRAME_DY)


def test_frame_box_is_not_moved_into_the_photo():
    f = frame_box(Box(0, 0, 20, 20))  # a face in the corner: its frame pokes out, and stays put
    assert f.x < 0 and f.y < 0


def quadrants(side: int = 10) -> Image.Image:
    a = np.zeros((side, side, 3), np.uint8)  # (H, W, 3)
    h = side // 2
    a[:h, :h], a[:h, h:], a[h:, :h], a[h:, h:] = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
    return Image.fromarray(a)


def test_crop_pads_by_repeating_the_edge():
    img = quadrants()
    out = np.asarray(crop_face(img, Box(-5, -5, 20, 20), size=20))  # (20, 20, 3), no resampling
    assert (out[5:15, 5:15] == np.asarray(img)).all()
    assert (out[:5, :5] == (255, 0, 0)).all() and (out[:5, 15:] == (0, 255, 0)).all()
    assert (out[15:, :5] == (0, 0, 255)).all() and (out[15:, 15:] == (255, 255, 255)).all()


def test_crop_at_a_corner_and_fully_outside():
    img = quadrants()
    out = np.asarray(crop_face(img, Box(7, 7, 6, 6), size=6))  # (6, 6, 3): inside 3x3, rest padding
    assert (out == 255).all()
    out = np.asarray(crop_face(img, Box(-50, 30, 8, 8), size=4))  # nearest pixel is the blue corner
    assert (out == (0, 0, 255)).all()


def test_crop_size_and_mode():
    img = Image.new("L", (300, 200), 90)
    out = crop_face(img, Box(250.4, 150.6, 100.2, 100.2))
    assert out.size == (64, 64) and out.mode == "RGB" and out.getpixel((63, 63)) == (90, 90, 90)
    assert crop_face(img, Box(0, 0, 10, 10), size=128).size == (128, 128)


def test_no_detect_takes_the_centre_square():
    assert find_faces(Image.new("RGB", (100, 60)), detect=False) == [Box(20, 0, 60, 60)]
    assert find_faces(Image.new("RGB", (64, 64)), detect=False) == [Box(0, 0, 64, 64)]


def test_no_face():
    with pytest.raises(NoFaceError, match="no face found"):
        find_faces(Image.new("RGB", (320, 240), (128, 128, 128)))
    assert issubclass(NoFaceError, JmvaeError)
