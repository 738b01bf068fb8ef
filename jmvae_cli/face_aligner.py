"""Where the training frame lies relative to a view of a face, and whether the view shows a face at all.

The model only reads faces framed exactly as its training images were (a shift of 5% of the frame costs it several
points of img->attr accuracy), and a face detector's box is far coarser than that. So a view cut around a detected
face is moved onto the training framing in a few steps of supervised descent (Xiong & De la Torre, 2013): each step
is a linear map from the view's HOG features to its pose in the frame, fitted (benchmarks/calibrate_faces.py) on
the training faces themselves, each shown through random views around its known frame, then on the views the
steps before it leave. It learns the training framing directly, rather than through landmarks and constants. A
last linear map of the same features scores face against clutter (hair, clothes, wallpaper).

Linear maps of HOG leave a view about 3% off in size and half a pixel off in place, and the model reads the faces
it was trained on a point or two worse for that (docs/results.md, "How exactly the training faces must be
framed"). So a small convolutional network, the refiner, trained on the same views near their frame, takes the
last REFINE_STEPS steps from the pixels themselves.

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

from jmvae_cli.errors import JmvaeError, OpenCV4Needed

VIEW = 64  # side of the views, in pixels
WEIGHTS_NAME = "face_aligner.safetensors"
# HOG of the view, and of the view at half size for the coarse layout: 8 px cells, 2x2-cell blocks, 9 bins
_HOG = ((64, 64), (16, 16), (8, 8), (8, 8), 9)
_HOG_HALF = ((32, 32), (16, 16), (8, 8), (8, 8), 9)
N_FEATURES = 1764 + 324 + 1  # the two HOGs and a constant
# the pose's units in the fitted maps: about a pixel of the 64 px frame for shift and size, and a degree
POSE_UNITS = np.array([1 / 32, 1 / 32, 1 / 64, np.pi / 180])
REFINE_STEPS = 1
# The refiner takes views in blocks of this many, the last padded: on the CPU a view alone costs it 2.5 times as
# long as one of a block (docs/results.md, "The refiner in blocks"), and a batch's size changes how the CPU's sums
# round, so a view's pose would otherwise depend on how many others came with it (a photo edited alone and in a
# folder would differ)
REFINE_BLOCK = 8
REFINER_PREFIX = "refiner."  # the refiner's tensors in the aligner's file

_per_thread = threading.local()


def features(views: np.ndarray) -> np.ndarray:
    """(B, 64, 64, 3) or (B, 64, 64) uint8 views -> (B, N_FEATURES) float32."""
    hog = getattr(_per_thread, "hog", None)
    if hog is None:  # HOGDescriptor keeps state: one per thread, like the cascade
        if not hasattr(cv2, "HOGDescriptor"):
            raise OpenCV4Needed()
        hog = _per_thread.hog = (cv2.HOGDescriptor(*_HOG), cv2.HOGDescriptor(*_HOG_HALF))
    out = np.ones((len(views), N_FEATURES), np.float32)
    for i, v in enumerate(views):
        grey = cv2.cvtColor(v, cv2.COLOR_RGB2GRAY) if v.ndim == 3 else v
        half = cv2.resize(grey, (VIEW // 2, VIEW // 2), interpolation=cv2.INTER_AREA)
        out[i, :1764] = hog[0].compute(grey).ravel()
        out[i, 1764:-1] = hog[1].compute(half).ravel()
    return out


def refiner_network(width: int = 32):
    """The refiner: a (B, 3, 64, 64) view in [-1, 1] -> (B, 4) its pose / POSE_UNITS. A convolution at full
    resolution, four of stride 2 (64 -> 4 px) and two dense layers: 1.0M weights, 32M multiply-adds a view."""
    from torch import nn

    def down(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    return nn.Sequential(
        nn.Conv2d(3, width // 2, 3, 1, 1, bias=False),  # (B, w/2, 64, 64): the last pixel needs full resolution
        nn.BatchNorm2d(width // 2),
        nn.ReLU(inplace=True),
        down(width // 2, width),  # (B, w, 32, 32)
        down(width, 2 * width),  # (B, 2w, 16, 16)
        down(2 * width, 4 * width),  # (B, 4w, 8, 8)
        down(4 * width, 4 * width),  # (B, 4w, 4, 4)
        nn.Flatten(),
        nn.Linear(4 * width * 16, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 4),
    )


def view_input(views: np.ndarray):
    """(B, 64, 64, 3) uint8 -> the refiner's input, (B, 3, 64, 64) float32 in [-1, 1], channels_last: the views'
    own layout, so no pixel is moved (a copy to the channels-first layout and back cost more than the refiner's
    first layer)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(views)).float().div_(127.5).sub_(1).permute(0, 3, 1, 2)


@dataclass
class Aligner:
    steps: np.ndarray  # (S, N_FEATURES, 4): features -> pose / POSE_UNITS, one map per step
    face: np.ndarray  # (N_FEATURES,): features -> face score, > 0 for a face
    refiner_state: dict[str, np.ndarray] | None = None  # the refiner's tensors as its file holds them, or None
    path: str = ""  # the file it was read from, for errors

    @functools.cached_property
    def refiner(self):
        """refiner_network() in eval mode, built from refiner_state on first use, or None (the HOG steps alone).
        Not when the file is read: the search itself needs no torch, and runs before torch is imported
        (faces.SearchAhead). A network set here (benchmarks/calibrate_faces.py) is used as it is."""
        return None if self.refiner_state is None else _refiner(self.refiner_state, self.path)

    def pose(self, step: int, feats: np.ndarray) -> np.ndarray:
        """(B, N_FEATURES) -> (B, 4) poses (tx, ty, log s, a in radians) of the views in the training frame."""
        return (feats @ self.steps[step]).astype(np.float64) * POSE_UNITS

    def refine(self, views: np.ndarray) -> np.ndarray:
        """(B, 64, 64, 3) uint8 views -> (B, 4) their poses, as pose() gives them, from the refiner."""
        import torch

        net, dtype = self._inference
        pad = np.zeros((-len(views) % REFINE_BLOCK, *views.shape[1:]), np.uint8)
        x = view_input(np.concatenate([views, pad])).to(
            dtype, memory_format=torch.channels_last
        )  # (B + pad, 3, 64, 64)
        with torch.inference_mode():
            out = torch.cat([net(block) for block in x.split(REFINE_BLOCK)])  # (B + pad, 4)
        return out[: len(views)].double().numpy() * POSE_UNITS

    @functools.cached_property
    def _inference(self):
        """The refiner as it runs on photos: batch norm folded into the convolutions, in bf16 where the CPU has it
        natively (the same poses to a hundredth of a pixel on validation views, and faster: every photo pays
        for it), channels_last (oneDNN's fast layout, the faster for one view too). The refiner itself stays as
        trained, for saving and further training."""
        import copy

        import torch

        from jmvae_cli.runtime import bf16_supported

        nn = torch.nn
        net = copy.deepcopy(self.refiner)
        with torch.no_grad():
            for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
                for i in range(len(seq) - 1):
                    conv, bn = seq[i], seq[i + 1]
                    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
                        conv.weight.mul_(scale[:, None, None, None])
                        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
                        seq[i + 1] = nn.Identity()
        dtype = torch.bfloat16 if bf16_supported(torch.device("cpu")) else torch.float32
        return net.to(dtype, memory_format=torch.channels_last).eval(), dtype

    def face_probability(self, feats: np.ndarray) -> np.ndarray:
        """(B, N_FEATURES) -> (B,) in 0..1; 0.5 is the fitted boundary between faces and clutter."""
        return 1 / (1 + np.exp(-4 * (feats @ self.face).astype(np.float64)))

    @staticmethod
    @functools.cache  # read-only arrays: one copy serves every thread
    def bundled() -> "Aligner":
        return load(_bundled_path())


def _bundled_path() -> Path:
    from jmvae_cli.bundled import bundled_weights

    # weights/ beside the package in a source checkout (even where another checkout is installed), else installed
    local = Path(__file__).resolve().parents[1] / "weights" / WEIGHTS_NAME
    return local if local.exists() else bundled_weights(WEIGHTS_NAME)


def save(path, aligner: Aligner, meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    from jmvae_cli.files import replacing

    tensors = {"steps": aligner.steps.astype(np.float32), "face": aligner.face.astype(np.float32)}
    if aligner.refiner is not None:
        state = aligner.refiner.state_dict()
        tensors |= {REFINER_PREFIX + k: v.detach().float().numpy() for k, v in state.items() if v.is_floating_point()}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _refiner(state: dict[str, np.ndarray], path: str):
    """The refiner of a file's `state` (its tensors, their names without REFINER_PREFIX), in eval mode."""
    import torch

    try:
        net = refiner_network(width=2 * state["0.weight"].shape[0])
        missing = net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False).missing_keys
    except (KeyError, RuntimeError) as e:
        raise JmvaeError(f"{path}: not a usable face aligner ({e})") from None
    if any(not k.endswith("num_batches_tracked") for k in missing):  # batch norm's step counters are not stored
        raise JmvaeError(f"{path}: not a usable face aligner (the refiner lacks {', '.join(missing)})")
    return net.eval()


def load(path) -> Aligner:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        t = load_file(str(path))
        state = {k[len(REFINER_PREFIX) :]: v for k, v in t.items() if k.startswith(REFINER_PREFIX)}
        aligner = Aligner(t["steps"], t["face"], state or None, str(path))
    except (OSError, KeyError, SafetensorError) as e:
        raise JmvaeError(f"{path}: not a usable face aligner ({e})") from None
    if aligner.steps.shape[1:] != (N_FEATURES, 4) or aligner.face.shape != (N_FEATURES,):
        raise JmvaeError(f"{path}: not a face aligner for these features")
    return aligner
