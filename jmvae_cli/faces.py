"""Finding the faces in a photo, framing each as the training images framed theirs, and pasting edits back.

The model was trained on faces framed exactly alike (CelebA-HQ resized whole, aligned CelebA cut to its centre
148x148 square), and it reads a face framed otherwise badly: a shift of a few pixels of its 64 already costs
img->attr accuracy (docs/results.md). So finding a face takes three steps:

1. OpenCV's frontal Haar cascades propose boxes (SCANS). They find only nearly upright faces, so when the
   upright scan leaves doubt, turned copies of the photo are scanned too (ROTATIONS). A photo that is itself a
   face crop needs no scan: the aligner frames it from its centre square (FACE_CROP_SHARE).
2. Each box gives a rough frame (FRAME_SCALE / FRAME_DX / FRAME_DY, measured by benchmarks/calibrate_faces.py),
   which the aligner (face_aligner.py) moves, scales and turns onto the training framing in a few steps (HOG
   maps, then a small network for the last pixel). The aligner also says whether the frame holds a face at all:
   boxes on wallpaper, leaves or hair are dropped.
3. Of the faces left, the largest of those in focus is "the" face: a big blurred face in the background (a poster,
   a screen) is not picked over the sharp face in front of it. Where several sure faces in focus compete, those
   in which OpenCV's eye cascade finds an eye come first: a box of clutter that the aligner takes for a face
   shows none (docs/results.md).

A Frame is a square in the photo, turned by the face's roll; FaceCrop carries it, so that edit pastes its change
back through the inverse of the same transform (paste_edit), through a soft face-shaped mask.
"""

import functools
import math
import multiprocessing
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from jmvae_cli import images
from jmvae_cli.cpus import can_fork, start_worker
from jmvae_cli.errors import JmvaeError, OpenCV4Needed

# The training frame relative to the cascade's box: side / box width, and the frame centre's offset from the box
# centre in box widths (+x right, +y down: the box sits low on the face), medians over 1,500 CelebA-HQ training
# faces (`python -m benchmarks.calibrate_faces constants`, which gives their spread). Only the aligner's start.
FRAME_SCALE = 1.5352
FRAME_DX = -0.0042
FRAME_DY = -0.0852

# Detection runs on a grey copy whose longer side is brought into this range: big photos shrink for speed, and
# small ones grow, since on 89x109 CelebA images the cascade misses more faces and draws its boxes wider. A long
# strip (a panorama) shrinks only to as many pixels as a 4:3 photo of that longer side holds.
DETECT_MIN_SIDE = 256
DETECT_MAX_SIDE = 640
# A big photo in which the search finds no face is searched again at this many times the detection copy's size (at
# most the photo's own): the cascade sees no face under 24 pixels, which is a face of 140 px in a 4000 px photo.
DETECT_RETRY = 2.0
# When only the best face is wanted, a first scan looks for faces at least this share of the photo's shorter side
# (a portrait or a face crop) at a fifth of the cost of the full scan, which runs only if that one settles nothing.
LARGEST_FIRST_SHARE = 0.45
# ... with the "alt" cascade: a face that fills the photo passes most of the default cascade's 2,900 features in
# hundreds of windows, and alt's stages hold fewer; the aligner frames the faces either finds alike (docs/results.md,
# "Cheaper face finding")
QUICK_CASCADE = "haarcascade_frontalface_alt.xml"
# Then faces of at least this share (a person in a holiday photo, a face in a scene): the full scan's time goes to
# the many windows of small faces, so this one costs a fraction of it. It settles the search only with a face in
# which the eye cascade finds an eye and over whose middle no smaller face lies (_Photo.covered), since the full
# scan's smaller faces, which it never sees, are what would have shown a box of clutter there for what it is
# (rank), or a big face for a poster behind a person (_behind).
MEDIUM_SHARE = 0.2
# Before any scan, a photo that is itself a face crop (CelebA's aligned images, CelebA-HQ, a thumbnail), which
# holds its face about where the training framing does, is framed by the aligner alone from its centre square
# (_Photo.as_face_crop). Taken where that frame is at least this share of the photo's longer side, which leaves no
# room for a bigger face beside it, and the cascade sees a face in the frame's upright view of this side: the
# aligner's face score alone passes an upside-down face, or a close-up of a chin, for one. It saves such a photo
# the quick scan, the largest part of its search (docs/results.md, "Face crops without a scan").
FACE_CROP_SHARE = 0.6
FACE_CROP_CHECK = 48
# Turned copies scanned when the upright scan leaves doubt (no face, or only a blurred one), in degrees: each
# brings faces near its angle within the cascade's reach, and the aligner turns the rest of the way.
ROTATIONS = (15, -15, 30, -30)
FACE_MIN = 0.75  # the aligner's face probability below which a box is not a face
FACE_SURE = 0.9  # ... and from which a face in focus ends the search for the best face


@dataclass(frozen=True)
class Scan:
    """One way of proposing boxes: an OpenCV Haar cascade (a file of cv2.data.haarcascades), how many of its
    overlapping hits a box needs (few, since the aligner's face score rejects what the cascade lets through),
    whether it reads the copy of evened-out contrast (_Photo.local_contrast), and the aligner's face probability
    a box needs to count: a box that the cascade barely supports needs the aligner to be sure."""

    cascade: str = "haarcascade_frontalface_default.xml"
    neighbors: int = 3
    enhanced: bool = False
    face_min: float = FACE_MIN


# The scans tried in turn, each upright and then turned, while no face sure and in focus has been found: the
# default cascade, then on evened-out contrast, then the default and the two "alt" cascades taking boxes of two
# hits. Each later scan finds faces the ones before miss (a laughing face under a cap, a dark face in noise), and
# costs only photos in which the earlier ones found no sure face (a photo with no face pays them all).
SCANS = (
    Scan(),
    Scan(enhanced=True),
    Scan(neighbors=1, face_min=FACE_SURE),
    Scan("haarcascade_frontalface_alt.xml", 1, face_min=FACE_SURE),
    Scan("haarcascade_frontalface_alt2.xml", 1, face_min=FACE_SURE),
)
MAX_CANDIDATES = 12  # boxes aligned per scan, largest first: a cluttered photo can give dozens of false ones
MAX_CANDIDATES_ALL = 64  # ... where every face is asked for (a group photo holds more than 12)
SAME_FACE = 0.3  # two aligned frames whose centres are closer than this share of their side are one face
OVER_SIZE = 1.5  # ... and a frame over another, this many times larger or smaller, is not another face beside it
# Sharpness (see _sharpness: about 1 for a sharp face, 0 for a blurred one) from which a face counts as in focus:
# ranked before the faces out of focus, and, found upright, settling the search (no turned copies are scanned).
IN_FOCUS = 0.03
BLURRED = 0.005  # below this a face shows no fine detail at all (a blurred background): not used
# The eye check between competing faces: the upright crop's side, and the band of it (top to bottom, shares of the
# side) where the training framing puts the eyes
EYE_VIEW = 128
EYE_BAND = (0.25, 0.6)
# load_many refines the faces of photos together until they hold this many pixels (a few phone photos, dozens of
# small ones): each is kept at full resolution until its faces are cut
GROUP_PIXELS = 16_000_000
MIN_FACE_SIDE = 32  # frame side in photo pixels below which a face is too small to read (the model reads 64)
# OpenCV's warps refuse images of 32,767 px a side or more: the search cannot look at a photo that wide
MAX_SEARCH_SIDE = 32766
# Photos from which a batch command searches ahead while its model loads: fewer are not worth forking for
SEARCH_AHEAD_MIN = 8
DEFAULT_FEATHER = 0.15  # share of the face frame's side over which a pasted edit fades out

# The paste mask: an ellipse in the frame's normalised coordinates (-1..1 over the frame, y down) around the face
# and hair of the training framing, as wide as the frame, leaving the corners and the shoulders' background alone.
# Narrower (half-axis 0.82 across), it cut a hair colour off half-way down the sides of the head; the regress rule
# keeps every other change to where its attribute shows, while the paper's and the latent rule, which change the
# whole crop, now reach that much further into its sides (docs/results.md, "Hair colour")
MASK_CENTRE_Y = -0.05
MASK_AXES = (1.0, 0.95)


class NoFaceError(JmvaeError):
    pass


class FaceTooSmallError(NoFaceError):
    """Faces were found, but too small for the model to read; `side` is the largest one's frame side in pixels."""

    def __init__(self, message: str, side: float):
        super().__init__(message)
        self.side = side


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the image it was found in; may reach outside it."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Frame:
    """A square in a photo's pixels, turned by `angle` degrees (clockwise on screen: the head's roll), where a
    face's training frame lies; the crop shows it upright. May reach outside the photo."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    @classmethod
    def from_box(cls, b: Box) -> "Frame":
        return cls(b.x + b.w / 2, b.y + b.h / 2, b.w)

    @property
    def box(self) -> Box:
        """The axis-aligned box around the frame."""
        a = math.radians(self.angle)
        half = self.side / 2 * (abs(math.cos(a)) + abs(math.sin(a)))
        return Box(self.cx - half, self.cy - half, 2 * half, 2 * half)

    def to_photo(self, size: int) -> np.ndarray:
        """(2, 3) affine map from a size x size crop's pixel coordinates to the photo's (cv2's convention:
        pixel centres at integers)."""
        a = math.radians(self.angle)
        r = self.side / size * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        # crop pixel u has normalised coordinate (2u + 1) / size - 1, which lies at centre + side/2 R n (+ 0.5 shift
        # between the continuous and the pixel-centre conventions on both sides)
        t = np.array([self.cx - 0.5, self.cy - 0.5]) + r @ np.full(2, (1 - size) / 2)
        return np.hstack([r, t[:, None]])

    def from_photo(self, size: int) -> np.ndarray:
        """(2, 3) affine map from the photo's pixel coordinates to a size x size crop's."""
        return cv2.invertAffineTransform(self.to_photo(size))

    def moved(self, pose: np.ndarray) -> "Frame":
        """The frame that an aligner's answer (tx, ty, log s, a) for a view cut at this frame points to."""
        s, a = math.exp(pose[2]), math.radians(self.angle) - pose[3]
        side = self.side / s
        r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        cx, cy = np.array([self.cx, self.cy]) - side / 2 * r @ pose[:2]
        return Frame(float(cx), float(cy), side, math.degrees(a))


@dataclass(frozen=True)
class Face:
    frame: Frame
    score: float  # the aligner's probability that the frame holds a face
    sharpness: float  # see _sharpness
    # some block of the face's middle shows no fine detail at all: a sharp face does not have one, a blurred face
    # behind a sharp one (which would lend it its detail elsewhere) does
    blurred_patch: bool = False
    upright: bool = False  # checked so already (_Photo.upright)


_per_thread = threading.local()


def _cascade(name: str) -> "cv2.CascadeClassifier":
    # One per thread: a CascadeClassifier keeps scratch buffers in itself, and two threads detecting with the
    # same one crash the process (img2attr detects in a thread pool).
    cascades = _per_thread.__dict__.setdefault("cascades", {})
    if name not in cascades:
        path = os.path.join(cv2.data.haarcascades, name)
        # OpenCV 5 moved the Haar cascades out of the main package
        if not hasattr(cv2, "CascadeClassifier") or not os.path.exists(path):
            raise OpenCV4Needed()
        cascades[name] = cv2.CascadeClassifier(path)
    return cascades[name]


class _Photo:
    """A photo as the search needs it: a grey detection copy and an RGB pyramid for the aligner's views."""

    def __init__(self, img: Image.Image, zoom: float = 1.0):
        self.rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # (H, W, 3) uint8
        h, w = self.rgb.shape[:2]
        # the longer side to DETECT_MAX_SIDE, or a strip to the pixels of a 4:3 photo of that side
        shrunk = max(DETECT_MAX_SIDE / max(w, h), math.sqrt(DETECT_MAX_SIDE**2 * 3 / 4 / (w * h)))
        self.scale = min(max(1.0, DETECT_MIN_SIDE / max(w, h)), shrunk * zoom)  # zoom: DETECT_RETRY, or 1
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        grey = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
        # not histogram-equalised: the cascade scales each window to unit contrast itself, and equalising a photo
        # mostly of one colour (a wall, the sky) squeezes the face into a few grey levels
        self.grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR)
        self.levels = [self.rgb]

    def level(self, k: int) -> np.ndarray:
        while len(self.levels) <= k:
            self.levels.append(cv2.pyrDown(self.levels[-1]))
        return self.levels[k]

    def view(self, frame: Frame, size: int) -> np.ndarray:
        """The frame as a size x size RGB crop, quickly: from the pyramid level where it is 2..4x that size, warped
        to twice the size and halved by area averaging; edges repeat beyond the photo."""
        k = max(0, math.floor(math.log2(max(frame.side / (2 * size), 1.0))))
        f = 2.0**-k
        level = Frame(frame.cx * f, frame.cy * f, frame.side * f, frame.angle)
        big = cv2.warpAffine(
            self.level(k),
            level.from_photo(2 * size),
            (2 * size, 2 * size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )  # (2 size, 2 size, 3)
        return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, 3)

    @functools.cached_property
    def local_contrast(self) -> np.ndarray:
        """The detection copy with its contrast evened out locally (CLAHE): dark faces in dim light, and faces
        of low contrast in bright surroundings, come out where the plain copy hides them."""
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(self.grey)

    def scan(
        self,
        angle: float,
        min_share: float = 0.0,
        how: Scan = Scan(),
        within: Frame | None = None,
        most: int = MAX_CANDIDATES,
    ) -> list[Frame]:
        """The cascade's `most` largest boxes for a copy turned by -angle degrees (faces turned by +angle come out
        upright), as frames turned by +angle in the photo's pixels, largest first. `within` (upright only): only the
        boxes inside that frame's square, and smaller than a face behind (_behind) could be."""
        grey, back = (self.local_contrast if how.enhanced else self.grey), None
        x0 = y0 = 0
        biggest = (0, 0)  # OpenCV's "no limit"
        if within is not None:
            b = Frame(within.cx * self.scale, within.cy * self.scale, within.side * self.scale).box
            x0, y0 = max(0, math.floor(b.x)), max(0, math.floor(b.y))
            grey = grey[y0 : math.ceil(b.y + b.h), x0 : math.ceil(b.x + b.w)]  # a view, not a copy
            side = round(1.2 * b.w / OVER_SIZE / FRAME_SCALE)  # a cascade box is 10-20% off the frame it gives
            biggest = (side, side)
        if angle:
            h, w = grey.shape
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)  # (2, 3); cv2: + is counter-clockwise
            c, s = abs(m[0, 0]), abs(m[0, 1])
            bw, bh = int(w * c + h * s), int(w * s + h * c)  # the whole turned photo fits
            m[:, 2] += (bw - w) / 2, (bh - h) / 2
            grey = cv2.warpAffine(grey, m, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            back = cv2.invertAffineTransform(m)
        smallest = max(24, round(min_share * min(grey.shape)))
        # scaleFactor 1.1, or 1.2 in the quick scan of big faces (fewer scales: faster), a box off by at most 10 or
        # 20% in size, which the aligner corrects
        cascade = _cascade(how.cascade)
        if min_share >= LARGEST_FIRST_SHARE:
            # the quick scan looks only for faces nearly the photo's size, which no bigger box can hold: OpenCV's
            # own grouping (see _group) loses nothing there, and costs less
            found = cascade.detectMultiScale(grey, 1.2, how.neighbors, minSize=(smallest, smallest))
            boxes = [(x, y, w) for x, y, w, _ in found]
        elif min(grey.shape) < smallest:  # a `within` square cut at the photo's edge: OpenCV refuses an empty one
            return []
        else:
            hits = cascade.detectMultiScale(grey, 1.1, 0, minSize=(smallest, smallest), maxSize=biggest)
            boxes = _group(hits, how.neighbors)
        frames = []
        for x, y, bw in sorted(boxes, key=lambda b: -b[2])[:most]:
            centre = np.array([x0 + x + bw / 2, y0 + y + bw / 2])  # in the scanned copy
            if back is not None:  # cv2's matrices map pixel centres, which lie half a pixel off the corners
                centre = back[:, :2] @ (centre - 0.5) + back[:, 2] + 0.5
            cx, cy = centre / self.scale
            frames.append(Frame(float(cx), float(cy), bw / self.scale, float(angle)))
        return frames

    def align(self, frames: list[Frame], boxes: bool = True) -> list[Face]:
        """Each of the cascade's boxes (or, without `boxes`, each rough frame) moved onto the training framing, with
        the aligner's face probability."""
        from jmvae_cli.face_aligner import VIEW, Aligner, features

        if not frames:
            return []
        aligner = Aligner.bundled()
        frames = [rough_frame(f) for f in frames] if boxes else frames
        for step in range(len(aligner.steps)):
            feats = features(np.stack([self.view(f, VIEW) for f in frames]))  # (K, F)
            frames = [f.moved(p) for f, p in zip(frames, aligner.pose(step, feats))]
        # scored on the view before the last step, which moves it by a pixel or so: one view and HOG less a face
        scores = aligner.face_probability(feats)
        out = []
        for f, s in zip(frames, scores):
            blocks = self.block_sharpness(f)
            out.append(Face(f, float(s), _sharpness(blocks), blocks is not None and bool(blocks.min() < BLURRED)))
        return out

    def block_sharpness(self, frame: Frame) -> np.ndarray | None:
        """_block_sharpness of a face at most at the photo's own resolution: the detection copy of a small photo
        is scaled up, which blurs it, and that is no blur of the photo's."""
        if self.scale > 1:
            return _block_sharpness(self.native_grey, frame)
        f = self.scale
        return _block_sharpness(self.grey, Frame(frame.cx * f, frame.cy * f, frame.side * f))

    def shows_eyes(self, frame: Frame) -> bool:
        """Whether the eye cascade finds an eye where the training framing puts them, in the frame's upright crop.
        Found in nine real faces of ten (a squint, dark glasses or a tilt past the cascade's reach hide the rest),
        so it only orders faces, never drops one."""
        grey = cv2.cvtColor(self.view(frame, EYE_VIEW), cv2.COLOR_RGB2GRAY)
        boxes = _cascade("haarcascade_eye.xml").detectMultiScale(grey, 1.1, 3, minSize=(10, 10), maxSize=(48, 48))
        top, bottom = EYE_BAND[0] * EYE_VIEW, EYE_BAND[1] * EYE_VIEW
        return any(top < y + h / 2 < bottom for _, y, _, h in boxes)

    def as_face_crop(self) -> list[Face]:
        """The face of a photo that is itself a face crop, framed by the aligner from the photo's centre square,
        where the frame it reaches covers most of the photo (FACE_CROP_SHARE) and the quick cascade finds a face of
        the size that frame implies in its upright view (FACE_CROP_CHECK); else none."""
        h, w = self.rgb.shape[:2]
        face = self.align([Frame(w / 2, h / 2, min(w, h))], boxes=False)[0]
        if face.frame.side < FACE_CROP_SHARE * max(w, h) or face.score < FACE_SURE:
            return []
        return [replace(face, upright=True)] if self.upright(face) else []

    def upright_turn(self, face: Face) -> Face:
        """The face, or where it is upside down (upright() fails on it and holds for it turned half round) the face
        turned and aligned again: the aligner frames an upside-down face as an upright one. Only turned, never
        dropped: upright() misses some real faces (small, blurred ones), which turned are no faces either."""
        if face.upright or self.upright(face):
            return face
        turned = self.align([replace(face.frame, angle=face.frame.angle + 180)], boxes=False)[0]
        return turned if self.upright(turned) else face

    def upright(self, face: Face) -> bool:
        """Whether the quick cascade finds a face of the size the frame implies in the frame's upright view
        (FACE_CROP_CHECK px): the aligner's face score alone passes an upside-down face for an upright one."""
        grey = cv2.cvtColor(self.view(face.frame, FACE_CROP_CHECK), cv2.COLOR_RGB2GRAY)
        box = FACE_CROP_CHECK / FRAME_SCALE
        smallest, biggest = round(0.8 * box), round(1.25 * box)
        found = _cascade(QUICK_CASCADE).detectMultiScale(grey, 1.1, 2, minSize=(smallest,) * 2, maxSize=(biggest,) * 2)
        return len(found) > 0

    def covered(self, face: Face) -> bool:
        """Whether a smaller face lies over the middle of this one (_behind: a poster behind a person), by a scan of
        the face's own square for faces small enough: the medium scan sees none that small."""
        small = [g for g in self.align(self.scan(0, within=face.frame)) if g.score >= FACE_SURE]
        return _behind(face, small)

    @functools.cached_property
    def native_grey(self) -> np.ndarray:
        return cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)


def _group(hits: np.ndarray, neighbors: int) -> list[tuple[float, float, float]]:
    """(x, y, side) boxes from a cascade's (N, 4) raw hits (x, y, w, h): hits grouped as OpenCV groups them
    (chains of hits whose edges lie within a fifth of the smaller one's side of each other's), groups of more than
    `neighbors` hits kept, each as its mean box. OpenCV's own grouping then drops every box inside a bigger one,
    and a face in front of a big face in the background (a poster, a screen) is such a box."""
    if len(hits) == 0:
        return []
    r = np.asarray(hits, np.float64).reshape(-1, 4)
    edges = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], 1)  # (N, 4) x0, y0, x1, y1
    size = r[:, 2]  # (N,) the cascade's boxes are square
    delta = 0.2 * np.minimum(size[:, None], size[None, :])  # (N, N): OpenCV's eps 0.2 of the mean of w and h
    near = (np.abs(edges[:, None, :] - edges[None, :, :]) <= delta[..., None]).all(-1)  # (N, N)
    label = np.arange(len(r))
    while True:  # connected components: every hit takes the smallest label among its neighbours until none changes
        new = np.where(near, label[None, :], len(r)).min(1)
        if (new == label).all():
            break
        label = new
    boxes = []
    for k in np.unique(label):
        group = r[label == k]
        if len(group) > neighbors:
            x, y, w, _ = group.mean(0)
            boxes.append((float(x), float(y), float(w)))
    return boxes


def rough_frame(box: Frame) -> Frame:
    """The training frame as the cascade's box (a Frame, turned with the scanned copy) suggests it."""
    a = math.radians(box.angle)
    dx, dy = FRAME_DX * box.side, FRAME_DY * box.side  # in the box's own axes
    return Frame(
        box.cx + dx * math.cos(a) - dy * math.sin(a),
        box.cy + dx * math.sin(a) + dy * math.cos(a),
        FRAME_SCALE * box.side,
        box.angle,
    )


def _sharpness(blocks: np.ndarray | None) -> float:
    """How sharp a face is, about 1 for a sharp face and towards 0 the more it is blurred: the lower quartile of
    its _block_sharpness, so that something sharp in front of part of a blurred face (another face, a pasted
    photo) does not make the whole face look sharp. A face too small to tell is not judged blurred (1; it is too
    small to read anyway)."""
    return 1.0 if blocks is None else float(np.percentile(blocks, 25))


def _block_sharpness(grey: np.ndarray, frame: Frame) -> np.ndarray | None:
    """(16,) how sharp each of a 4x4 grid of blocks over the middle of the face is at the photo's own scale
    (`grey`: the photo in grey at detection size, `frame` in its pixels, angle ignored); None where the face
    covers too few pixels to tell.

    In each block: the fine detail (Laplacian energy, less what 8-bit rounding alone gives) over the detail one
    octave coarser. Natural images hold about as much of one as of the other whatever they show, while a blur
    takes the fine first; so this says how blurred a face is rather than how much texture it has. At the photo's
    scale, not the crop's: a lens blurs a face out of focus by as many pixels whatever its size, so a big face in
    the background shows it as plainly as a small one."""
    h, w = grey.shape
    r = frame.side / 4  # the middle half of the frame: eyes, nose and mouth
    x0, x1 = max(0, round(frame.cx - r)), min(w, round(frame.cx + r))
    y0, y1 = max(0, round(frame.cy - r)), min(h, round(frame.cy + r))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    mid = grey[y0:y1, x0:x1].astype(np.float32)
    fine, coarse = _block_detail(mid), _block_detail(cv2.pyrDown(mid))  # (16,) each
    # rounding to 8 bits puts about 20/12 grey levels squared into the Laplacian of even a flat patch; the
    # variance term keeps a patch with hardly any detail at either scale from passing for sharp
    return np.maximum(fine - 2.0, 0.0) / (coarse + 0.01 * float(mid.var()) + 1.0)


def _block_detail(a: np.ndarray) -> np.ndarray:
    """(16,) mean squared Laplacian in each block of a 4x4 grid."""
    lap = cv2.Laplacian(a, cv2.CV_32F)[1:-1, 1:-1] ** 2
    h, w = (lap.shape[0] // 4) * 4, (lap.shape[1] // 4) * 4
    return lap[:h, :w].reshape(4, h // 4, 4, w // 4).mean(axis=(1, 3)).ravel()


def _merge(faces: list[Face]) -> list[Face]:
    """One Face per face: frames aligned onto each other (found in several scans) keep the likelier."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if not any(_same(f.frame, k.frame) for k in kept):
            kept.append(f)
    return kept


def _same(a: Frame, b: Frame) -> bool:
    near = math.hypot(a.cx - b.cx, a.cy - b.cy) < SAME_FACE * max(a.side, b.side)
    return near and abs(math.log(a.side / b.side)) < math.log(OVER_SIZE)  # a small face on a big one is another face


def _behind(face: Face, faces: list[Face]) -> bool:
    """Whether a smaller face, surely one (FACE_SURE), lies over the middle of this one: then this one is behind
    it (a poster, a screen), since nothing sits on a face in front. Surely: a box on a face's own mouth and nose
    can pass for a small face, less surely; where such a box passes FACE_SURE all the same (seen: one from the eyes
    to the chin), it is still less sure and less sharp than the face it lies on, while a face in front of a poster
    is as sure a face as the poster's, or as sharp."""
    f = face.frame
    return any(
        max(abs(g.frame.cx - f.cx), abs(g.frame.cy - f.cy)) < f.side / 4
        and g.frame.side * OVER_SIZE < f.side
        and g.score >= FACE_SURE
        and (g.score >= face.score or g.sharpness >= face.sharpness)
        for g in faces
    )


def search_faces(img: Image.Image, *, all_faces: bool = False) -> list[Face]:
    """The faces in a photo, best first (rank), the faces that will be used refined (see _search, refine)."""
    return refine([_search(img, all_faces)], every=all_faces)[0]


def _search(img: Image.Image, all_faces: bool) -> tuple["_Photo", list[Face]]:
    """The photo as the search saw it, and its faces, best first (rank). Frames are aligned; boxes that are not
    faces, and faces blurred past reading (BLURRED), are dropped; faces too small to read are kept (the caller
    decides).

    Without all_faces, a photo that is a face crop is settled before any scan (FACE_CROP_SHARE). Scans go from the
    cheap to the thorough: big upright faces, then upright faces of MEDIUM_SHARE of the photo or
    more, then each of SCANS upright and then on all the turned copies. Without all_faces the search stops after
    the first of these that finds a face sure and in focus (and, in the medium scan, showing an eye with no smaller
    face over its middle: MEDIUM_SHARE), so faces elsewhere may be missing from the list. The turned copies are
    scanned all or none: a face found on one copy may be a box of clutter around a smaller face at another angle,
    which ranking then puts first (rank). With all_faces, each face comes once and boxes that are not faces go
    (every_face). The frames are the aligner's before its last steps (refine). A photo shrunk for detection in
    which none is found is searched again at DETECT_RETRY times that size, for upright faces (_search_in)."""
    photo = _Photo(img)
    found = _search_in(photo, all_faces)
    if not found and photo.scale < 1:  # faces too small for the cascade in the detection copy of a big photo
        photo = _Photo(img, DETECT_RETRY)
        found = _search_in(photo, all_faces, retry=True)
    return photo, found


def _search_in(photo: "_Photo", all_faces: bool, retry: bool = False) -> list[Face]:
    """_search in one detection copy of the photo; `retry`: in the larger copy, by SCANS' first scan upright only,
    since at four times the pixels the whole search of a photo without a face would take seconds more."""
    faces: list[Face] = []

    def settles(f: Face) -> bool:
        return f.score >= FACE_SURE and f.sharpness >= IN_FOCUS and not f.blurred_patch

    def settled() -> bool:
        return not all_faces and any(settles(f) for f in faces)

    if not (all_faces or retry):
        faces += [f for f in photo.as_face_crop() if settles(f)]
        if not settled():
            faces += photo.align(photo.scan(0, LARGEST_FIRST_SHARE, Scan(QUICK_CASCADE)))
        if not settled():
            medium = photo.align(photo.scan(0, MEDIUM_SHARE, Scan(QUICK_CASCADE)))
            if any(settles(f) and photo.shows_eyes(f.frame) and not photo.covered(f) for f in medium):
                faces = _merge(faces + medium)
    for how in SCANS[:1] if retry else SCANS:
        for angles in ((0,),) if retry else ((0,), ROTATIONS):
            if settled():
                break
            for angle in angles:
                boxes = photo.scan(angle, how=how, most=MAX_CANDIDATES_ALL if all_faces else MAX_CANDIDATES)
                found = [f for f in photo.align(boxes) if f.score >= how.face_min]
                faces = _merge(faces + found)
    ranked = rank([f for f in faces if f.score >= FACE_MIN and f.sharpness >= BLURRED], photo.shows_eyes)
    if all_faces:
        return [photo.upright_turn(f) for f in every_face(ranked, photo.shows_eyes)]
    # only the face that will be read (refine's: the first large enough) is checked: the check costs a cascade
    used = next((i for i, f in enumerate(ranked) if f.frame.side >= MIN_FACE_SIDE), None)
    if used is not None:
        ranked[used] = photo.upright_turn(ranked[used])
    return ranked


def refine(searches: list[tuple[_Photo, list[Face]]], every: bool) -> list[list[Face]]:
    """The aligner's last steps (its refiner, where it has one) for the faces of several photos' searches that will
    be used: every face, or each photo's first one large enough to read. Only those: the refiner costs ten times a
    HOG step, and the search needs frames only to a few pixels. All the photos' faces go through the refiner
    together, which on the CPU costs a view less than half of what it costs alone (face_aligner.REFINE_BLOCK)."""
    from jmvae_cli.face_aligner import REFINE_STEPS, VIEW, Aligner

    aligner = Aligner.bundled()
    todo = [  # (search, face) of each face to refine
        (k, i)
        for k, (_, found) in enumerate(searches)
        for i in [i for i, f in enumerate(found) if f.frame.side >= MIN_FACE_SIDE][: None if every else 1]
    ]
    out = [list(found) for _, found in searches]
    if aligner.refiner is None or not todo:
        return out
    frames = [out[k][i].frame for k, i in todo]
    for _ in range(REFINE_STEPS):
        poses = aligner.refine(np.stack([searches[k][0].view(f, VIEW) for (k, _), f in zip(todo, frames)]))  # (K, 4)
        frames = [f.moved(p) for f, p in zip(frames, poses)]
    for (k, i), f in zip(todo, frames):
        out[k][i] = replace(out[k][i], frame=f)
    return out


def rank(faces: list[Face], shows_eyes: Callable[[Frame], bool] = lambda frame: True) -> list[Face]:
    """Best first: the faces in focus and not behind another, then the others; within each, the sure faces
    (FACE_SURE) before the less sure (a box half on clutter beside a face), then the largest first. Where two or
    more sure faces in focus lead, those that `shows_eyes` (_Photo.shows_eyes) come before those that do not: it
    is asked only then, so a photo of one face pays nothing for it. A smaller box lying over a bigger face takes
    that face's answer: the check orders faces apart, not a face and a box on its brow or hair, where the eye
    cascade finds an "eye" as readily as in a face (and it misses a real face's eyes one time in ten); a face in
    front of a bigger one puts that one behind it already (_behind)."""

    def tier(f: Face) -> tuple[bool, bool]:
        return f.sharpness < IN_FOCUS or _behind(f, faces), f.score < FACE_SURE

    leading = [f for f in faces if tier(f) == (False, False)]
    eyeless: set[int] = set()
    if len(leading) > 1:
        for f in sorted(leading, key=lambda f: -f.frame.side):  # a face's own answer before the boxes over it
            host = next((g for g in leading if g.frame.side > f.frame.side and _over(f.frame, g.frame)), None)
            if (id(host) in eyeless) if host is not None else not shows_eyes(f.frame):
                eyeless.add(id(f))
    return sorted(faces, key=lambda f: (*tier(f), id(f) in eyeless, -f.frame.side))


def every_face(ranked: list[Face], shows_eyes: Callable[[Frame], bool] = lambda frame: True) -> list[Face]:
    """The faces of a ranked list that `--all-faces` edits, best first, each once. Dropped: a less sure box
    (under FACE_SURE) in which `shows_eyes` finds no eye, unless nothing better was found; and a box lying over a
    better face at another size (its centre within half the larger side, the sides OVER_SIZE or more apart),
    which is a box on part of that face or around it, or a face behind it: an edit there would paste a second
    change over the first face. Faces side by side, of about one size, are all kept."""
    kept: list[Face] = []
    for f in ranked:
        if kept and f.score < FACE_SURE and not shows_eyes(f.frame):
            continue
        if not any(_over(f.frame, k.frame) for k in kept):
            kept.append(f)
    return kept


def _over(a: Frame, b: Frame) -> bool:
    big, small = max(a.side, b.side), min(a.side, b.side)
    return math.hypot(a.cx - b.cx, a.cy - b.cy) < big / 2 and big >= OVER_SIZE * small


def find_faces(img: Image.Image, *, all_faces: bool = False, detect: bool = True) -> list[Frame]:
    """Frames ready for crop_face: the best face's, or every face's with all_faces (best first).

    detect=False is for inputs that already are face crops: their centre square is taken as the frame.
    Raises NoFaceError, or its subclass FaceTooSmallError when every face found is smaller than MIN_FACE_SIDE."""
    if not detect:
        w, h = img.size
        return [Frame(w / 2, h / 2, min(w, h))]
    return _usable(search_faces(img, all_faces=all_faces), all_faces)


def _usable(found: list[Face], all_faces: bool) -> list[Frame]:
    if not found:
        raise NoFaceError("no face found")
    usable = [f.frame for f in found if f.frame.side >= MIN_FACE_SIDE]
    if not usable:
        side = max(f.frame.side for f in found)
        raise FaceTooSmallError(
            f"the face is only {side:.0f} px across, too small to read (at least {MIN_FACE_SIDE} px); "
            "use a larger photo, or one taken closer",
            side,
        )
    return usable if all_faces else usable[:1]


def crop_face(img: Image.Image, frame: Frame, size: int = 64) -> Image.Image:
    """Cut `frame` out of `img` as a size x size RGB image, upright; outside the photo, its edge pixels repeat.
    An RGBA image is cut as it shows on the page (images.flatten).

    An upright frame is cut and resized as the training images were (bicubic, antialiased); a turned one is
    first shrunk to twice the size by area averaging, then turned (bicubic) and halved the same way."""
    img = images.flatten(img)
    if frame.angle == 0:
        return _cut(img, frame.box).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    box = frame.box
    q = min(1.0, 2 * size / frame.side)  # shrink (never grow) to twice the crop's size before turning
    x0, y0 = math.floor(box.x) - 2, math.floor(box.y) - 2
    region = _cut(img, Box(x0, y0, math.ceil(box.x + box.w) + 2 - x0, math.ceil(box.y + box.h) + 2 - y0))
    a = np.asarray(region)  # (h, w, 3)
    if q < 1:
        a = cv2.resize(a, (max(1, round(a.shape[1] * q)), max(1, round(a.shape[0] * q))), interpolation=cv2.INTER_AREA)
    qx, qy = a.shape[1] / region.width, a.shape[0] / region.height  # the rounded scale
    f = Frame((frame.cx - x0) * qx, (frame.cy - y0) * qy, frame.side * qx, frame.angle)
    big = cv2.warpAffine(
        a, f.from_photo(2 * size), (2 * size, 2 * size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )  # (2 size, 2 size, 3)
    return Image.fromarray(cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA), "RGB")


def _cut(img: Image.Image, box: Box) -> Image.Image:
    """The pixels of `box` (rounded) as RGB; outside the photo, its edge pixels are repeated."""
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
    if not any(pad):
        return inside
    a = np.asarray(inside)
    if min(pad) >= 0:  # the usual case, and the same pixels as below at a fraction of the cost (img2attr)
        a = cv2.copyMakeBorder(a, *pad, cv2.BORDER_REPLICATE)  # (y1-y0, x1-x0, 3)
    else:  # the frame lies wholly outside the photo
        rows = np.clip(np.arange(y0, y1), iy0, iy1 - 1) - iy0  # (y1-y0,)
        cols = np.clip(np.arange(x0, x1), ix0, ix1 - 1) - ix0  # (x1-x0,)
        a = a[np.ix_(rows, cols)]  # (y1-y0, x1-x0, 3)
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


@dataclass
class FaceCrop:
    face: int  # index among the faces used, best first
    frame: Frame  # where the crop lies in the photo
    crop: np.ndarray  # (size, size, 3) uint8, the model's input
    found: int = 1  # how many faces the search saw in the photo (see search_faces: without all_faces, a lower bound)

    @property
    def box(self) -> Box:
        """The axis-aligned box around the frame, in the photo's pixels (for messages)."""
        return self.frame.box


def load_faces(
    source: str | Path | bytes, name: str, *, all_faces: bool = False, detect: bool = True, size: int = 64
) -> tuple[Image.Image, list[FaceCrop]]:
    """Read a photo and cut out its face(s) as the model's input, size x size. Raises JmvaeError naming the file:
    NoFaceError, or its subclass FaceTooSmallError. The photo comes back with its transparency (RGBA), if it has
    any, for an edit to keep; faces are found and cut in it as it shows on the page (images.flatten)."""
    (loaded,) = load_many([(source, name)], all_faces=all_faces, detect=detect, size=size)
    if isinstance(loaded, JmvaeError):
        raise loaded
    return loaded


def load_many(
    sources: list[tuple[str | Path | bytes, str]],
    *,
    all_faces: bool = False,
    detect: bool = True,
    size: int = 64,
    searched: Mapping[str, tuple[tuple, list[Face]]] | None = None,
) -> list[tuple[Image.Image, list[FaceCrop]] | JmvaeError]:
    """load_faces of several (source, name) photos, in order, with the error in place of each photo that failed.
    The photos' faces are refined together (refine), a group of photos at a time: the photos of a group are all
    held at full resolution until then, so a group ends once it holds GROUP_PIXELS. A file whose search is in
    `searched` (SearchAhead.stop, with the same all_faces) is not searched again."""
    searched = searched or {}
    out: list = []
    group: list[tuple[int, str, Image.Image, Image.Image, tuple[_Photo, list[Face]]]] = []

    def finish_group() -> None:
        refined = refine([search for *_, search in group], every=all_faces)
        for (k, name, photo, img, _), faces in zip(group, refined):
            try:
                frames = _usable(faces, all_faces)
            except FaceTooSmallError as e:
                out[k] = FaceTooSmallError(f"{name}: {e}", e.side)
                continue
            except NoFaceError:
                out[k] = NoFaceError(f"{name}: no face found (--no-detect takes the whole image as the face)")
                continue
            found = len(every_face(faces))  # a box over part of the face is not a second face to tell of
            out[k] = photo, [FaceCrop(i, f, np.asarray(crop_face(img, f, size)), found) for i, f in enumerate(frames)]
        group.clear()

    for source, name in sources:
        try:
            photo = images.read_image(source, name, keep_alpha=True)
        except JmvaeError as e:
            out.append(e)
            continue
        img = images.flatten(photo)
        if detect and max(img.size) > MAX_SEARCH_SIDE:
            out.append(
                images.ImageError(
                    f"{name}: {img.width}x{img.height} px, wider than the face search's limit of {MAX_SEARCH_SIDE} px "
                    "a side (OpenCV's): crop or shrink it, or give the face alone with --no-detect"
                )
            )
            continue
        if not detect:
            out.append(
                (photo, [FaceCrop(0, f, np.asarray(crop_face(img, f, size))) for f in find_faces(img, detect=False)])
            )
            continue
        out.append(None)
        ahead = searched.get(source) if isinstance(source, str) else None
        if ahead is not None and ahead[0] == _stamp(source):  # a file replaced since is searched anew
            search = _Photo(img), ahead[1]
        else:
            search = _search(img, all_faces)
        group.append((len(out) - 1, name, photo, img, search))
        if sum(img.width * img.height for _, _, _, img, _ in group) >= GROUP_PIXELS:
            finish_group()
    finish_group()
    return out


class SearchAhead:
    """Photo files searched for faces (_search) in processes forked now, while the caller goes on with other work:
    a batch command loads its model meanwhile, and on the cores the load leaves idle the first photos are searched
    by the time it is loaded (docs/results.md, "Searching while the model loads"). The search needs no torch, so
    forked before torch is imported a searcher starts at once and small. Give regular files, named as load_many
    will read them. Where forking is unsafe (cpus.can_fork), or with `workers` 0, nothing is searched. Use as a
    context manager: leaving it ends the searchers."""

    def __init__(self, files: list[str], *, all_faces: bool, workers: int):
        self.workers = min(workers, len(files)) if can_fork() else 0  # searchers started
        self._pool = self._results = None
        if self.workers < 1:
            return
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # OpenCV's thread pool stopped while forking: a forked copy of a running one hangs
        try:
            self._pool = multiprocessing.get_context("fork").Pool(self.workers, _start_searcher)
            # one file a task, in the order finished: a search done is never held back by one under way; the
            # pool's feeder thread hands the files out only as fast as the searchers take them
            self._results = self._pool.imap_unordered(functools.partial(_search_file, all_faces=all_faces), files)
        except BaseException:
            self.close()
            raise
        finally:
            cv2.setNumThreads(threads)

    def stop(self, wait: float = 0.0) -> dict[str, tuple[tuple, list[Face]]]:
        """The searches done by now (or, with `wait`, within that many seconds), by file, each with the file's _stamp
        as it was read; the rest are dropped and the searchers ended (a search under way too: a big photo without a
        face can take seconds)."""
        done = {}
        deadline = time.monotonic() + wait
        while self._results is not None:
            try:
                found = self._results.next(timeout=max(0.0, deadline - time.monotonic()))
            except (multiprocessing.TimeoutError, StopIteration):
                break
            except Exception:  # a search that failed: its reader will fail too, and say why
                continue
            if found is not None:
                done[found[0]] = found[1:]
        self.close()
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = self._results = None

    def __enter__(self) -> "SearchAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _start_searcher() -> None:
    start_worker()
    cv2.setNumThreads(1)  # one searcher a core (the parent restores its own setting once forked)


def _search_file(file: str, all_faces: bool) -> tuple[str, tuple, list[Face]] | None:
    """A searcher's task: the file, its _stamp and its faces as load_many searches them; None where it is no
    regular file (a pipe read here would be empty for its reader) or cannot be read (its reader will say why)."""
    stamp = _stamp(file)
    if stamp is None or not stat.S_ISREG(stamp[0]):
        return None
    try:
        img = images.flatten(images.read_image(file, file, keep_alpha=True))
    except JmvaeError:
        return None
    return file, stamp, _search(img, all_faces)[1]


def _stamp(path: str) -> tuple | None:
    """What tells a file from the one a search ahead read under its name (its type, device, inode, size and times of
    change), or None where it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


# ----------------------------------------------------------------------------- pasting an edit back


def _mask(n: np.ndarray, feather: float) -> np.ndarray:
    """(..., 2) points in a frame's normalised coordinates -> (...) float32 paste weights: 1 inside the face
    ellipse (MASK_*), falling smoothly to 0 at its edge over `feather` of the frame's side (0: a hard edge)."""
    ax, ay = MASK_AXES
    r = np.hypot(n[..., 0] / ax, (n[..., 1] - MASK_CENTRE_Y) / ay)  # 1 on the ellipse
    if feather <= 0:
        return (r < 1).astype(np.float32)
    t = np.clip((1 - r) * min(ax, ay) / (2 * feather), 0, 1)  # the frame's side is 2 normalised units
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible seam where the ramp starts


def face_mask(size: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """(size, size) float32: how much of an edit a crop's pixel takes when pasted (1 on the face, 0 outside)."""
    n = (2 * np.arange(size) + 1) / size - 1  # (size,) pixel centres, normalised
    return _mask(np.stack(np.meshgrid(n, n), -1), feather)


def paste_edit(
    photo: Image.Image,
    face: FaceCrop,
    delta: np.ndarray,
    feather: float = DEFAULT_FEATHER,
    fade: np.ndarray | None = None,
    base: np.ndarray | None = None,
) -> Image.Image:
    """Add a face crop's (n, n, 3) change in pixel units to the photo at full resolution.

    The change goes back through the inverse of the crop's transform (smoothly, bicubically upscaled, and turned
    back with the face) and through a soft face-shaped mask (face_mask); every pixel outside that mask is left
    exactly as it was. An RGBA photo keeps its alpha, and the change goes into its colours as stored. Where `fade`
    (n, n) in [0, 1] (editing.Drawing) is 1, the photo takes the edited crop itself, upscaled: its own detail, finer
    than the crop holds, goes with the part the edit draws anew (hair, for a bald head). `base` (H, W, 3) uint8: the
    photo's RGB pixels before any of its faces was pasted, where faces are pasted one after another (render_edit):
    the detail a fade takes out is the photo's own, not a neighbouring face's change pasted before, so that
    overlapping faces come out the same in any order."""
    frame, n = face.frame, len(delta)
    W, H = photo.size
    b = frame.box
    x0, y0 = max(math.floor(b.x), 0), max(math.floor(b.y), 0)
    x1, y1 = min(math.ceil(b.x + b.w), W), min(math.ceil(b.y + b.h), H)
    out = np.array(photo.convert("RGB"))  # (H, W, 3) uint8, a copy
    if x0 >= x1 or y0 >= y1:  # the frame lies wholly outside the photo
        return _like(photo, out)
    m = frame.from_photo(n)  # photo pixel -> crop pixel
    m[:, 2] += m[:, :2] @ (x0, y0)  # from the region's pixels instead
    size = (x1 - x0, y1 - y0)
    faded = fade is not None and fade.any()
    if faded:  # photo + fade (crop - photo) + delta, the faded crop warped with the delta
        delta = delta + fade[..., None] * face.crop
    d = _warp_change(np.ascontiguousarray(delta, np.float32), m, frame.side, size)  # (h, w, 3)
    # each region pixel's normalised crop coordinates: affine in x and y, so summed from a row and a column
    a = (2 * m / n).astype(np.float32)  # (2, 3)
    a[:, 2] += 1 / n - 1
    xs, ys = np.arange(x1 - x0, dtype=np.float32), np.arange(y1 - y0, dtype=np.float32)
    nx = (a[0, 0] * xs)[None, :] + (a[0, 1] * ys + a[0, 2])[:, None]  # (h, w)
    ny = (a[1, 0] * xs)[None, :] + (a[1, 1] * ys + a[1, 2])[:, None]  # (h, w)
    w = _mask(np.stack([nx, ny], -1), feather)  # (h, w)
    region = out[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
    if faded:
        f = _warp_change(np.ascontiguousarray(fade, np.float32), m, frame.side, size)  # (h, w)
        own = region if base is None else base[y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
        region -= (w * np.clip(f, 0, 1))[..., None] * own
    region += d.reshape(y1 - y0, x1 - x0, 3) * w[..., None]
    out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return _like(photo, out)


def _warp_change(delta: np.ndarray, m: np.ndarray, side: float, size: tuple[int, int]) -> np.ndarray:
    """A crop's (n, n, 3) float32 change as the photo region of `size` (w, h) sees it through `m` (region pixel ->
    crop pixel), bicubically. A face larger than the crop is first upscaled to its own size by a bicubic resize,
    then turned and shifted into place bilinearly: OpenCV's bicubic warp of float images takes several times as
    long as both, for pasted pixels that differ by a grey level or two at most (docs/results.md, "Batch edits")."""
    n, k = len(delta), round(side)
    flags = cv2.INTER_CUBIC
    if k > n:
        delta = cv2.resize(delta, (k, k), interpolation=cv2.INTER_CUBIC)  # (k, k, 3)
        m = m * (k / n)  # crop pixel u is upscaled pixel (u + 0.5) k / n - 0.5
        m[:, 2] += 0.5 * k / n - 0.5
        flags = cv2.INTER_LINEAR
    return cv2.warpAffine(delta, m, size, flags=flags | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _like(photo: Image.Image, rgb: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 colours as an image of the photo's kind: RGB, or RGBA with the photo's alpha; with its
    colour profile and metadata (images.METADATA)."""
    out = Image.fromarray(rgb, "RGB")
    if photo.mode == "RGBA":
        out.putalpha(photo.getchannel("A"))
    return images.keep_metadata(photo, out)
