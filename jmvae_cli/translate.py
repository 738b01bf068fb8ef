"""Translating between faces and attributes with a trained JMVAE: the library behind img2attr, attr2img and edit.

Attribute coding. The paper codes attributes as +-1; our model takes {0, 1} floats, so the paper's value v is our
(v + 1) / 2. A chosen attribute at strength s is set to the paper's +-s, i.e. to 0.5 +- s/2 here: s = 1 gives
plain 1 / 0, and the paper's edits (set to +-2) are s = 2, the default, which pushes q(z|w) past the values it
was trained on to make the change clearly visible.

Inferred attributes. img2attr reports p(w|z) at the mean of q(z|x) as probabilities. Where they are fed back
into q(z|w) (edit, attr2img --attrs) they are thresholded at 0.5 by default: q(z|w) only ever saw binary
vectors in training, and an uncertain 0.5 is a point it has never been asked about, so its answer there is
not "halfway between"; the binary w is also what the paper's p(w|z) would have to give for x_mean to be the
face of a definite attribute set. `soft=True` keeps the probabilities instead.
"""

import concurrent.futures
import glob
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jmvae_cli import faces
from jmvae_cli.attributes import AttributeNameError, attr_index, binarize
from jmvae_cli.checkpoint import WeightsError, default_weights, load_model
from jmvae_cli.errors import JmvaeError
from jmvae_cli.model import JMVAE, output_to_pixels, pixels_to_input
from jmvae_cli.runtime import Precision, pick_device

DEFAULT_STRENGTH = 2.0  # the paper's +-2
BATCH_SIZE = 128
# Image files taken from a folder; anything else in it (sidecar .json, .txt) is skipped.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}


class AttrsFileError(JmvaeError):
    pass


# ----------------------------------------------------------------------------- the model


@dataclass
class Translator:
    """A loaded model and what is needed to use it: its attribute names, device and batch precision."""

    model: JMVAE
    attr_names: list[str]
    device: torch.device
    precision: Precision  # for batches in img2attr; single-image generation and edits always run in fp32
    weights: Path

    @classmethod
    def from_weights(cls, path: str | Path | None = None, device: str = "auto", precision: str = "auto"):
        dev = pick_device(device)
        if path is None:
            path = default_weights()
            if not path.exists() and not os.environ.get("JMVAE_WEIGHTS"):
                raise WeightsError(
                    f"no bundled model at {path}: pass --weights FILE or set JMVAE_WEIGHTS (or `jmvae train` one)"
                )
        path = Path(path)
        loaded = load_model(path, dev)
        names, cfg = loaded.meta.get("attr_names"), loaded.model.cfg
        if getattr(cfg, "model", "jmvae") != "jmvae":
            raise WeightsError(f"{path} holds a {cfg.model} baseline; translation needs a JMVAE model")
        if not isinstance(names, list) or len(names) != cfg.n_attrs or not all(isinstance(n, str) for n in names):
            raise WeightsError(f"{path}: its attribute names do not match its model ({cfg.n_attrs} attributes)")
        size = (loaded.meta.get("preprocess") or {}).get("size", cfg.image_size)
        if size != cfg.image_size or cfg.image_size != 64:
            raise WeightsError(f"{path}: a model for {cfg.image_size}x{cfg.image_size} images; jmvae needs 64x64")
        prec = Precision.choose(dev, precision)
        model = loaded.model.to(memory_format=prec.memory_format)
        return cls(model, list(names), dev, prec, path)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    def index(self, name: str) -> int:
        return attr_index(name, self.attr_names)

    def changes(self, set_names: Iterable[str], unset_names: Iterable[str], strength: float) -> dict[int, float]:
        return attr_changes(set_names, unset_names, self.attr_names, strength)


# ----------------------------------------------------------------------------- attribute names and values


def attr_changes(
    set_names: Iterable[str], unset_names: Iterable[str], attr_names: list[str], strength: float = DEFAULT_STRENGTH
) -> dict[int, float]:
    """{attribute index: value to set}, 0.5 + s/2 for --set and 0.5 - s/2 for --unset (see the module doc)."""
    on = {attr_index(n, attr_names) for n in set_names}
    off = {attr_index(n, attr_names) for n in unset_names}
    both = sorted(on & off)
    if both:
        raise AttributeNameError(f"{', '.join(attr_names[i] for i in both)}: both --set and --unset")
    return {i: 0.5 + strength / 2 for i in on} | {i: 0.5 - strength / 2 for i in off}


def base_attributes(kind: str, n_attrs: int, seed: int) -> np.ndarray:
    """The starting w of attr2img: the paper's random +-1 base (random {0, 1} here), or every attribute off."""
    if kind == "random":
        return np.random.default_rng(seed).integers(0, 2, n_attrs).astype(np.float32)  # (A,)
    if kind == "zeros":
        return np.zeros(n_attrs, np.float32)
    raise ValueError(kind)


def read_attrs_record(text: str, attr_names: list[str], name: str = "<stdin>") -> tuple[np.ndarray, str | None]:
    """The first record of img2attr's json, jsonl, csv or tsv output -> (probabilities (A,), its file name).

    Attributes the record lacks (img2attr --only-positive drops those below its threshold) are taken as 0."""
    import csv
    import io
    import json

    text = text.lstrip("\ufeff")
    if not text.strip():
        raise AttrsFileError(f"{name}: empty attributes file")
    record = None
    if text.lstrip()[:1] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            try:  # jsonl: the first line alone
                data = json.loads(text.lstrip().splitlines()[0])
            except json.JSONDecodeError as e:
                raise AttrsFileError(f"{name}: not valid JSON ({e})") from None
        if isinstance(data, list):
            if not data:
                raise AttrsFileError(f"{name}: no records")
            data = data[0]
        if not isinstance(data, dict):
            raise AttrsFileError(f"{name}: expected img2attr records ({{\"file\": ..., \"attributes\": {{...}}}})")
        attrs = data.get("attributes", data)
        file = data.get("file") if isinstance(data.get("file"), str) else None
        if not isinstance(attrs, dict):
            raise AttrsFileError(f"{name}: 'attributes' is not a name -> probability mapping")
        record = {k: v for k, v in attrs.items() if k not in ("file", "face")}
    else:
        lines = text.splitlines()
        delim = "\t" if "\t" in lines[0] else ","
        rows = list(csv.reader(io.StringIO(text), delimiter=delim))
        if len(rows) < 2:
            raise AttrsFileError(f"{name}: a header and at least one row are needed")
        header, row = rows[0], rows[1]
        if len(row) != len(header):
            raise AttrsFileError(f"{name}: the first row has {len(row)} fields, the header {len(header)}")
        file = row[header.index("file")] if "file" in header else None
        record = {h: v for h, v in zip(header, row) if h not in ("file", "face")}

    w = np.zeros(len(attr_names), np.float32)  # (A,)
    for key, value in record.items():
        try:
            i = attr_index(key, attr_names)
        except AttributeNameError as e:
            raise AttrsFileError(f"{name}: {e}") from None
        try:
            w[i] = float(value)
        except (TypeError, ValueError):
            raise AttrsFileError(f"{name}: {key} = {value!r} is not a number") from None
    return w, file


# ----------------------------------------------------------------------------- faces -> attributes


def infer_attributes(tr: Translator, faces_u8: np.ndarray) -> np.ndarray:
    """(B, 64, 64, 3) uint8 face crops -> (B, A) probabilities p(w|z) at the mean of q(z|x), in batches."""
    out = []
    with torch.inference_mode(), tr.precision.autocast():
        for i in range(0, len(faces_u8), BATCH_SIZE):
            u8 = torch.from_numpy(np.require(faces_u8[i : i + BATCH_SIZE], np.uint8, "CW")).to(tr.device)  # (b, 64, 64, 3)
            x = pixels_to_input(u8)  # (b, 3, 64, 64), channels_last in memory already
            out.append(tr.model.attrs_from_images(x).float().cpu().numpy())  # (b, A)
    return np.concatenate(out) if out else np.zeros((0, len(tr.attr_names)), np.float32)


@dataclass
class AttrResult:
    file: str
    face: int | None = None
    probs: np.ndarray | None = None  # (A,)
    error: str | None = None


def expand_inputs(args: Iterable[str]) -> list[str]:
    """Files, folders (their images, recursively, sorted) and globs (for shells that did not expand them).
    Names that match nothing are kept, so that reading them reports the problem in its place."""
    out: list[str] = []
    for a in args:
        p = Path(a)
        if a == "-" or p.is_file():
            out.append(a)
        elif p.is_dir():
            found = sorted(
                str(f)
                for f in p.rglob("*")
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
            )
            out.extend(found)
        elif glob.has_magic(a):
            out.extend(sorted(f for f in glob.glob(a, recursive=True) if Path(f).is_file()) or [a])
        else:
            out.append(a)
    return out


def _ordered_map(fn: Callable, items: list, workers: int, window: int) -> Iterator[tuple[object, object]]:
    """(item, fn(item) or the JmvaeError it raised), in input order, with at most `window` items in flight.
    Threads suffice: JPEG decoding, resizing and the cascade all release the GIL."""

    def call(item):
        try:
            return fn(item)
        except JmvaeError as e:
            return e

    if workers <= 1:
        for item in items:
            yield item, call(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(call, item)))
            if len(pending) >= window:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(call, nxt)))
            yield item, fut.result()


def cpu_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def img2attr(
    tr: Translator,
    sources: list[str],
    *,
    all_faces: bool = False,
    detect: bool = True,
    stdin: bytes | None = None,
    on_file: Callable[[], None] | None = None,
) -> Iterator[AttrResult]:
    """Attribute probabilities for every face of every source, in order; a failed file gives an AttrResult with
    its error and the rest go on. Decoding and detection run in a thread pool while the model takes batches."""
    workers = cpu_workers() if len(sources) > 1 else 1
    if workers > 1:
        import cv2

        # Parallel over images already: the cascade's own threads, and torch's (whose OpenMP threads spin while
        # they wait), would only take cores from the decoding and detection that dominate (1 thread: +10%/s).
        threads = cv2.getNumThreads(), torch.get_num_threads()
        cv2.setNumThreads(1)
        if tr.device.type == "cpu":
            torch.set_num_threads(1)
    try:
        yield from _img2attr(tr, sources, workers, all_faces, detect, stdin, on_file)
    finally:
        if workers > 1:
            cv2.setNumThreads(threads[0])
            torch.set_num_threads(threads[1])


def _img2attr(tr, sources, workers, all_faces, detect, stdin, on_file) -> Iterator[AttrResult]:
    def prepare(src: str):
        data = stdin if src == "-" else src
        return faces.load_faces(data, "<stdin>" if src == "-" else src, all_faces=all_faces, detect=detect)[1]

    waiting: list[tuple[str, object]] = []  # (file, list[faces.FaceCrop] | JmvaeError), in input order

    def flush() -> Iterator[AttrResult]:
        crops = [c.crop for _, r in waiting if isinstance(r, list) for c in r]
        probs = iter(infer_attributes(tr, np.stack(crops)) if crops else [])
        for src, r in waiting:
            if isinstance(r, JmvaeError):
                yield AttrResult(src, error=str(r))
                continue
            for c in r:
                yield AttrResult(src, c.face if all_faces else None, next(probs))
        waiting.clear()

    n_crops = 0
    for src, r in _ordered_map(prepare, sources, workers, window=max(4 * workers, 2 * BATCH_SIZE)):
        waiting.append((src, r))
        n_crops += len(r) if isinstance(r, list) else 0
        if on_file:
            on_file()
        if n_crops >= BATCH_SIZE:
            yield from flush()
            n_crops = 0
    yield from flush()


# ----------------------------------------------------------------------------- attributes -> faces


@torch.inference_mode()
def average_face(tr: Translator, w: np.ndarray, samples: int = 0, zeta: float = 1.0, seed: int = 0) -> np.ndarray:
    """The decoded mean of q(z|w), then `samples` faces from z = mu + sigma * eps, eps ~ N(0, zeta I) (the paper's
    Figure 1: zeta < 1 keeps samples nearer the average face). -> (1 + samples, 64, 64, 3) uint8."""
    wt = torch.as_tensor(np.asarray(w, np.float32), device=tr.device)[None]  # (1, A)
    q = tr.model.q_w(wt)  # mu, logvar (1, Z)
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same faces on every device
    eps = torch.randn(samples, q.mu.shape[1], generator=g).to(tr.device) * math.sqrt(zeta)  # (N, Z)
    z = torch.cat([q.mu, q.mu + torch.exp(0.5 * q.logvar) * eps])  # (1 + N, Z)
    return output_to_pixels(tr.model.images_from_z(z)).cpu().numpy()  # (1 + N, 64, 64, 3)


def grid(tiles: np.ndarray, size: int | None = None, cols: int | None = None, gap: int = 2) -> Image.Image:
    """(N, h, w, 3) uint8 -> one image, tiles upscaled to size x size, near-square layout unless cols is given."""
    n = len(tiles)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ims = [upscale(Image.fromarray(t, "RGB"), size) for t in tiles]
    tw, th = ims[0].size
    if n == 1:
        return ims[0]
    canvas = Image.new("RGB", (cols * tw + (cols - 1) * gap, rows * th + (rows - 1) * gap), (255, 255, 255))
    for i, im in enumerate(ims):
        canvas.paste(im, ((i % cols) * (tw + gap), (i // cols) * (th + gap)))
    return canvas


def upscale(img: Image.Image, size: int | None) -> Image.Image:
    if not size or size == img.width:
        return img
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------- editing


@dataclass
class EditResult:
    """The paper's edit of one face crop; images in the model's [-1, 1] range, (3, 64, 64)."""

    probs: torch.Tensor  # (A,) p(w|z) at the mean of q(z|x)
    w: torch.Tensor  # (A,) the face's attributes as fed to q(z|w)
    w_new: torch.Tensor  # (A,) with the requested changes
    x: torch.Tensor  # the face crop
    x_mean: torch.Tensor  # decoded mean of q(z|w)
    x_mean_new: torch.Tensor  # decoded mean of q(z|w')
    result: torch.Tensor  # x + x_mean_new - x_mean, clipped to the pixel range

    @property
    def delta_pixels(self) -> np.ndarray:
        """x'_mean - x_mean in 8-bit pixel units: (64, 64, 3) float32, in [-255, 255]."""
        return ((self.x_mean_new - self.x_mean) * 127.5).permute(1, 2, 0).float().cpu().numpy()

    def pixels(self, which: str) -> np.ndarray:
        """(64, 64, 3) uint8 of 'x', 'x_mean', 'x_mean_new' or 'result'."""
        return output_to_pixels(getattr(self, which)[None])[0].cpu().numpy()

    def strip(self) -> np.ndarray:
        """original | x_mean | x'_mean | result, as the paper's Figure 2: (4, 64, 64, 3) uint8."""
        return np.stack([self.pixels(k) for k in ("x", "x_mean", "x_mean_new", "result")])


@torch.inference_mode()
def edit_face(tr: Translator, face_u8: np.ndarray, changes: dict[int, float], soft: bool = False) -> EditResult:
    """Suzuki et al.'s attribute edit of a (64, 64, 3) uint8 face crop, in fp32:
    w = p(w|z) at the mean of q(z|x); x_mean = decoded mean of q(z|w); w' = w with `changes`;
    x'_mean likewise from w'; x' = x + x'_mean - x_mean."""
    x = pixels_to_input(torch.from_numpy(np.array(face_u8, np.uint8))[None].to(tr.device))  # (1, 3, 64, 64)
    probs = tr.model.attrs_from_images(x)  # (1, A)
    w = binarize(probs, soft)  # (1, A)
    w_new = w.clone()
    for i, v in changes.items():
        w_new[0, i] = v
    z = tr.model.q_w(torch.cat([w, w_new])).mu  # (2, Z); eval-mode BatchNorm: each row as if alone
    means = tr.model.images_from_z(z)  # (2, 3, 64, 64)
    result = (x + means[1:] - means[:1]).clamp(-1, 1)  # (1, 3, 64, 64)
    return EditResult(probs[0], w[0], w_new[0], x[0], means[0], means[1], result[0])


def default_edit_output(image: str) -> Path:
    """photo.jpg -> photo-edited.png beside it: PNG, since re-encoding a JPEG would change every pixel."""
    p = Path(image)
    return p.with_name(f"{p.stem}-edited.png")
