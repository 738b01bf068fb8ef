"""Where the training frame lies relative to a view of a face, and whether the view shows a face at all.

The model only reads faces framed exactly as its training images were (a shift of 5% of the frame costs it several
points of img->attr accuracy), and a face detector's box is far coarser than that. So a view cut around a detected
face is moved onto the training framing in a few steps of supervised descent (Xiong & De la Torre, 2013): each step
is a linear map from the view's HOG features to its pose in the frame, fitted (benchmarks/calibrate_faces.py) on
the training faces themselves, each shown through random views around its known frame, then on the views the
steps before it leave. It learns the training framing directly, rather than through landmarks and constants. A
last linear map of the same features scores face against clutter (hair, clothes, wallpaper).

Coordinates: a view and the frame are squares; in each, normalised coordinates run from -1 to 1 over the square
(torch's affine_grid with align_corners=False). A view's pose (tx, ty, log s, a) says that its point n is the
frame's point t + s R(a) n, R(a) = [[cos a, -sin a], [sin a, cos a]] in image coordinates (y down).
"""

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from jmvae_cli.errors import JmvaeError

VIEW = 64  # side of the views, in pixels
WEIGHTS_NAME = "face_aligner.safetensors"
# HOG of the view, and of the view at half size for the coarse layout: 8 px cells, 2x2-cell blocks, 9 bins
_HOG = ((64, 64), (16, 16), (8, 8), (8, 8), 9)
_HOG_HALF = ((32, 32), (16, 16), (8, 8), (8, 8), 9)
N_FEATURES = 1764 + 324 + 1  # the two HOGs and a constant
# the pose's units in the fitted maps: about a pixel of the 64 px frame for shift and size, and a degree
POSE_UNITS = np.array([1 / 32, 1 / 32, 1 / 64, np.pi / 180])

_per_thread = threading.local()


def features(views: np.ndarray) -> np.ndarray:
    """(B, 64, 64, 3) or (B, 64, 64) uint8 views -> (B, N_FEATURES) float32."""
    hog = getattr(_per_thread, "hog", None)
    if hog is None:  # HOGDescriptor keeps state: one per thread, like the cascade
        hog = _per_thread.hog = (cv2.HOGDescriptor(*_HOG), cv2.HOGDescriptor(*_HOG_HALF))
    out = np.ones((len(views), N_FEATURES), np.float32)
    for i, v in enumerate(views):
        grey = cv2.cvtColor(v, cv2.COLOR_RGB2GRAY) if v.ndim == 3 else v
        half = cv2.resize(grey, (VIEW // 2, VIEW // 2), interpolation=cv2.INTER_AREA)
        out[i, :1764] = hog[0].compute(grey).ravel()
        out[i, 1764:-1] = hog[1].compute(half).ravel()
    return out


@dataclass
class Aligner:
    steps: np.ndarray  # (S, N_FEATURES, 4): features -> pose / POSE_UNITS, one map per step
    face: np.ndarray  # (N_FEATURES,): features -> face score, > 0 for a face

    def pose(self, step: int, feats: np.ndarray) -> np.ndarray:
        """(B, N_FEATURES) -> (B, 4) poses (tx, ty, log s, a in radians) of the views in the training frame."""
        return (feats @ self.steps[step]).astype(np.float64) * POSE_UNITS

    def face_probability(self, feats: np.ndarray) -> np.ndarray:
        """(B, N_FEATURES) -> (B,) in 0..1; 0.5 is the fitted boundary between faces and clutter."""
        return 1 / (1 + np.exp(-4 * (feats @ self.face).astype(np.float64)))

    @staticmethod
    @functools.cache  # read-only arrays: one copy serves every thread
    def bundled() -> "Aligner":
        return load(_bundled_path())


def _bundled_path() -> Path:
    from jmvae_cli.checkpoint import bundled_weights

    # weights/ beside the package in a source checkout (even where another checkout is installed), else installed
    local = Path(__file__).resolve().parents[1] / "weights" / WEIGHTS_NAME
    return local if local.exists() else bundled_weights(WEIGHTS_NAME)


def save(path, aligner: Aligner, meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    from jmvae_cli.files import replacing

    with replacing(path) as tmp:
        save_file(
            {"steps": aligner.steps.astype(np.float32), "face": aligner.face.astype(np.float32)},
            str(tmp),
            metadata=meta,
        )


def load(path) -> Aligner:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        t = load_file(str(path))
        aligner = Aligner(t["steps"], t["face"])
    except (OSError, KeyError, SafetensorError) as e:
        raise JmvaeError(f"{path}: not a usable face aligner ({e})") from None
    if aligner.steps.shape[1:] != (N_FEATURES, 4) or aligner.face.shape != (N_FEATURES,):
        raise JmvaeError(f"{path}: not a face aligner for these features")
    return aligner
