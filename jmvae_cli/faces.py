"""Finding the face in a photo and cutting the square around it that the training images would have shown.

The model was trained on aligned CelebA cut to its centre 148x148 square (and on CelebA-HQ, framed alike), so
a face must fill the 64x64 input the way it filled those crops. A Haar cascade finds the face; frame_box maps
its box to the training frame with constants measured on the training images themselves
(benchmarks/calibrate_faces.py).
"""

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from jmvae_cli import images
from jmvae_cli.errors import JmvaeError

# Training crop side / detector box width, and the crop centre's offset from the box centre in box widths
# (+x right, +y down: the cascade's box sits low on the face, over the mouth rather than the forehead).
# Measured by benchmarks/calibrate_faces.py on all 9,000 aligned CelebA images in shared/datasets/celeba
# (89x109, which detect_faces upscales to 209x256): a face in 8,532 (94.8%); the largest box against the
# known training crop (centre square of side 148/178 of the width) gives
#   scale median 1.4130 (IQR 1.3369..1.4983; the spread is mostly the cascade's 10% size steps),
#   dx median 0.0041 (IQR -0.0046..0.0130), dy median -0.1449 (IQR -0.1577..-0.1321),
# and frame_box then overlaps the true crop with median IoU 0.889 (IQR 0.818..0.938).
# Sanity check, same script: on the 100 CelebA-HQ 256x256 samples (trained on resized whole) a face is found in
# all, and the frame covers the whole image with median IoU 0.821 (IQR 0.780..0.865): a square 91% of the
# image side, centred 4% above its centre, so HQ is framed a little looser than the aligned CelebA crop.
FRAME_SCALE = 1.4130
FRAME_DX = 0.0041
FRAME_DY = -0.1449

# Detection runs on a grey copy whose longer side is brought into this range: big photos shrink for speed
# (a face worth editing is still far above the cascade's 24 px window at 640), and small ones grow, since on
# CelebA at 89x109 the cascade both misses more faces (93.0% vs 95.6% at 2x, first 500 images) and
# draws its boxes 7% wider.
DETECT_MIN_SIDE = 256
DETECT_MAX_SIDE = 640
DEFAULT_FEATHER = 0.15  # share of the face frame's side over which a pasted edit fades out


class NoFaceError(JmvaeError):
    pass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the image it was found in; may reach outside it."""

    x: float
    y: float
    w: float
    h: float


_per_thread = threading.local()


def _cascade() -> "cv2.CascadeClassifier":
    # One per thread: a CascadeClassifier keeps scratch buffers in itself, and two threads detecting with the
    # same one crash the process (img2attr detects in a thread pool).
    cascade = getattr(_per_thread, "cascade", None)
    if cascade is None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        # OpenCV 5 moved the Haar cascades out of the main package
        if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
            raise JmvaeError(
                "face detection needs OpenCV 4's Haar cascade: pip install 'opencv-python-headless>=4.8,<5'"
            )
        cascade = _per_thread.cascade = cv2.CascadeClassifier(path)
    return cascade


# The cascade's cost is almost all in its smallest windows. When only the largest face is wanted, a first scan
# for faces at least this share of the photo's shorter side finds it (in a portrait or a face crop, nearly
# always) at a fifth of the cost: 4.5 ms instead of 23 ms per 256 px CelebA-HQ photo on one core. Only if it
# finds nothing does the full scan run. On the 100 CelebA-HQ samples, whose true frame is the whole image, the
# framed boxes come out no worse than the full scan's: IoU with the truth median 0.829 vs 0.821, 10th
# percentile 0.740 vs 0.695 (0.375: 6 ms, 0.821 / 0.721).
LARGEST_FIRST_SHARE = 0.45


def detect_faces(img: Image.Image, largest_only: bool = False) -> list[Box]:
    """Frontal faces in `img`, largest first, as the cascade's (square) boxes; with largest_only, at least the
    largest face (possibly only it), found faster."""
    w, h = img.size
    s = min(max(1.0, DETECT_MIN_SIDE / max(w, h)), DETECT_MAX_SIDE / max(w, h))
    grey = img.convert("L").resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    grey = cv2.equalizeHist(np.asarray(grey))  # (h*s, w*s) uint8; evens out dim or washed-out photos
    # scaleFactor 1.1: the usual step, a box size off by at most 10%; minNeighbors 5: 3 (the default) lets
    # through textures in busy backgrounds; minSize 32: the smallest scales are where false faces come from
    found = ()
    if largest_only:
        big = max(32, round(LARGEST_FIRST_SHARE * min(grey.shape)))
        # A coarser scale step here: the cascade's cost is mostly per scale, and on the CelebA-HQ samples 1.15
        # takes 3.4 ms instead of 4.9 with the framed boxes as good (IoU median 0.835 vs 0.829, p10 0.732 vs 0.740)
        found = _cascade().detectMultiScale(grey, scaleFactor=1.15, minNeighbors=5, minSize=(big, big))
    if len(found) == 0:
        found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(32, 32))
    boxes = [Box(x / s, y / s, bw / s, bh / s) for x, y, bw, bh in found]
    return sorted(boxes, key=lambda b: b.w * b.h, reverse=True)


def frame_box(face: Box) -> Box:
    """The square that frames a detected face as the training crops framed theirs."""
    side = FRAME_SCALE * face.w
    cx = face.x + face.w / 2 + FRAME_DX * face.w
    cy = face.y + face.h / 2 + FRAME_DY * face.w
    # not shifted or shrunk to fit inside the photo: that would move or enlarge the face within the frame,
    # and the model only knows faces at the trained place and size; crop_face pads instead
    return Box(cx - side / 2, cy - side / 2, side, side)


def crop_face(img: Image.Image, box: Box, size: int = 64) -> Image.Image:
    """Cut `box` out of `img` as a size x size RGB image; outside the photo, its edge pixels are repeated."""
    W, H = img.size
    x0, y0 = round(box.x), round(box.y)
    x1, y1 = max(x0 + 1, round(box.x + box.w)), max(y0 + 1, round(box.y + box.h))
    # Edge replication rather than reflection: a mirrored strip would copy hair, chin or a shoulder into the
    # margin as a second feature, while a smeared edge reads as plain background.
    # Take only the part inside the photo (at least one pixel of it), then repeat rows and columns by index.
    ix0, iy0 = min(max(x0, 0), W - 1), min(max(y0, 0), H - 1)
    ix1, iy1 = max(min(x1, W), ix0 + 1), max(min(y1, H), iy0 + 1)
    inside = img.crop((ix0, iy0, ix1, iy1))
    inside = inside if inside.mode == "RGB" else inside.convert("RGB")  # (iy1-iy0, ix1-ix0, 3)
    pad = (iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1)  # top, bottom, left, right
    if any(pad):
        a = np.asarray(inside)
        if min(pad) >= 0:  # the usual case, and the same pixels as below at a fraction of the cost (img2attr)
            a = cv2.copyMakeBorder(a, *pad, cv2.BORDER_REPLICATE)  # (y1-y0, x1-x0, 3)
        else:  # the frame lies wholly outside the photo
            rows = np.clip(np.arange(y0, y1), iy0, iy1 - 1) - iy0  # (y1-y0,)
            cols = np.clip(np.arange(x0, x1), ix0, ix1 - 1) - ix0  # (x1-x0,)
            a = a[np.ix_(rows, cols)]  # (y1-y0, x1-x0, 3)
        inside = Image.fromarray(np.ascontiguousarray(a), "RGB")
    return inside.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def find_faces(img: Image.Image, *, all_faces: bool = False, detect: bool = True) -> list[Box]:
    """Frame boxes ready for crop_face: the largest face's, or every face's with all_faces.

    detect=False is for inputs that already are face crops: their centre square is taken as the frame."""
    if not detect:
        w, h = img.size
        side = min(w, h)
        return [Box((w - side) / 2, (h - side) / 2, side, side)]
    faces = detect_faces(img, largest_only=not all_faces)
    if not faces:
        raise NoFaceError("no face found")
    return [frame_box(f) for f in (faces if all_faces else faces[:1])]


@dataclass
class FaceCrop:
    face: int  # index among the faces found, largest first
    box: Box  # the frame in the photo's pixels
    crop: np.ndarray  # (64, 64, 3) uint8


def load_faces(
    source: str | Path | bytes, name: str, *, all_faces: bool = False, detect: bool = True, size: int = 64
) -> tuple[Image.Image, list[FaceCrop]]:
    """Read a photo and cut out its face(s) as the model's input. Raises JmvaeError naming the file."""
    img = images.read_image(source, name)
    try:
        boxes = find_faces(img, all_faces=all_faces, detect=detect)
    except NoFaceError:
        raise NoFaceError(f"{name}: no face found (--no-detect takes the whole image as the face)") from None
    return img, [FaceCrop(i, b, np.array(crop_face(img, b, size))) for i, b in enumerate(boxes)]


def feather_mask(h: int, w: int, feather: float) -> np.ndarray:
    """(h, w) float32: 1 inside, falling smoothly to 0 at the edges over `feather` of the shorter side
    (feather 0: no fade, the whole frame takes the change)."""
    if feather <= 0:
        return np.ones((h, w), np.float32)
    r = max(1.0, feather * min(h, w))

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / r  # distance to the nearer edge, in ramps
        t = np.clip(d, 0, 1)
        return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible seam where the ramp starts

    return ramp(h)[:, None] * ramp(w)[None, :]


def paste_edit(photo: Image.Image, box: Box, delta: np.ndarray, feather: float = DEFAULT_FEATHER) -> Image.Image:
    """Add a face crop's (64, 64, 3) change in pixel units to the photo at full resolution.

    The change is smoothly (bicubically) upscaled to the frame's size in the photo and faded out towards the
    frame's edges; every pixel outside the frame is left exactly as it was."""
    import cv2

    W, H = photo.size
    # the frame's pixels exactly as faces.crop_face rounds them, so the change lands where the crop came from
    x0, y0 = round(box.x), round(box.y)
    x1, y1 = max(x0 + 1, round(box.x + box.w)), max(y0 + 1, round(box.y + box.h))
    d = cv2.resize(np.ascontiguousarray(delta, np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
    d = d.reshape(y1 - y0, x1 - x0, 3) * feather_mask(y1 - y0, x1 - x0, feather)[..., None]  # (bh, bw, 3)
    out = np.array(photo.convert("RGB"))  # (H, W, 3) uint8, a copy
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)  # the frame may reach past the photo
    if ix0 < ix1 and iy0 < iy1:
        region = out[iy0:iy1, ix0:ix1].astype(np.float32) + d[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        out[iy0:iy1, ix0:ix1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")
