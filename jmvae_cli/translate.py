"""Translating between faces and attributes with a trained JMVAE: the library behind img2attr, attr2img and edit
(the edit itself is editing.py; here, editing many photos at once). How attributes are coded and read back:
attributes.py.

Faces are the model's size (its config's image_size), framed as its training faces were (faces.load_faces).
"""

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jmvae_cli import editing, faces, images
from jmvae_cli.checkpoint import WeightsError, default_weights, load_model
from jmvae_cli.cpus import available_cpus, can_fork, start_worker
from jmvae_cli.data import Preprocess
from jmvae_cli.errors import JmvaeError
from jmvae_cli.model import JMVAE, output_to_pixels, pixels_to_input
from jmvae_cli.runtime import Precision, pick_device

BATCH_SIZE = 128
# Photos whose faces are found in one task of the thread pools (faces.load_many), so that the aligner's refiner
# takes a block of faces at once
PHOTOS_PER_CHUNK = 8
# Faces decoded at once by average_face: the decoder's activations (most of the memory) stay bounded however many
# samples are asked for; the 8-bit faces themselves are small.
DECODE_BATCH = 256
# The largest grid drawn: Pillow's decompression-bomb limit (about 89 Mpx). images.read_image refuses larger images,
# and other Pillow-based programs warn or refuse too: a larger grid could not even be read back.
MAX_GRID_PIXELS = Image.MAX_IMAGE_PIXELS
# The scales of a found face's frame that refine_frames tries: the aligner's size is off by about 3% (median), and
# the model reads a face best at the framing it was trained on (docs/results.md, "Framing by the model itself").
REFINE_SCALES = (0.94, 0.97, 1.0, 1.03, 1.06)


class GridTooLargeError(JmvaeError):
    exit_code = 2  # a usage error: fewer samples or a smaller --size


# ----------------------------------------------------------------------------- the model


@dataclass
class Translator:
    """A loaded model and what is needed to use it: its attribute names, device and batch precision; faces are
    image_size pixels square, the size the model was trained at (any size its config allows)."""

    model: JMVAE
    attr_names: list[str]
    device: torch.device
    precision: Precision  # for batches in img2attr and edits read back; generation and the edits themselves run in fp32
    weights: Path
    preprocess: Preprocess  # how its training images were prepared: evaluation data is prepared the same way

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
        if not isinstance(loaded.model, JMVAE):
            raise WeightsError(f"{path} holds a {cfg.model} baseline; translation needs a JMVAE model")
        if not isinstance(names, list) or len(names) != cfg.n_attrs or not all(isinstance(n, str) for n in names):
            raise WeightsError(f"{path}: its attribute names do not match its model ({cfg.n_attrs} attributes)")
        pre = Preprocess.from_dict(loaded.meta.get("preprocess") or {"size": cfg.image_size})
        if pre.size != cfg.image_size:
            raise WeightsError(
                f"{path}: its preprocessing ({pre.size} px) does not match its model ({cfg.image_size} px)"
            )
        prec = Precision.choose(dev, precision)
        model = loaded.model.to(memory_format=prec.memory_format)
        return cls(model, list(names), dev, prec, path, pre)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size


# ----------------------------------------------------------------------------- faces -> attributes


def infer_attributes(tr: Translator, faces_u8: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) uint8 face crops -> (B, A) probabilities p(w|z) at the mean of q(z|x), in batches."""
    out = []
    with torch.inference_mode(), tr.precision.autocast():
        for i in range(0, len(faces_u8), BATCH_SIZE):
            batch = np.require(faces_u8[i : i + BATCH_SIZE], np.uint8, "CW")  # (b, S, S, 3)
            u8 = torch.from_numpy(batch).to(tr.device)
            x = pixels_to_input(u8)  # (b, 3, S, S), channels_last in memory already
            out.append(tr.model.attrs_from_images(x).float().cpu().numpy())  # (b, A)
    return np.concatenate(out) if out else np.zeros((0, len(tr.attr_names)), np.float32)


@dataclass
class AttrResult:
    file: str
    face: int | None = None
    probs: np.ndarray | None = None  # (A,)
    error: str | None = None
    crop: faces.FaceCrop | None = None  # where the face was found, and how many the search saw


def refine_frames(tr: Translator, photo: Image.Image, crops: list[faces.FaceCrop]) -> list[faces.FaceCrop]:
    """Each face cut again at the scale of its frame (REFINE_SCALES) whose crop the model reconstructs best (mean
    squared error of the decoded mean of q(z|x)): the framing the model reads as its training faces'. Costs an
    encoder and a decoder pass per scale and face."""
    out = []
    for c in crops:
        frames = [dataclasses.replace(c.frame, side=c.frame.side * s) for s in REFINE_SCALES]
        # (K, S, S, 3); the aligner's own frame is cut already
        cuts = np.stack(
            [
                c.crop if s == 1 else np.asarray(faces.crop_face(photo, f, tr.image_size))
                for s, f in zip(REFINE_SCALES, frames)
            ]
        )
        with torch.inference_mode():
            x = pixels_to_input(torch.from_numpy(cuts).to(tr.device))  # (K, 3, S, S)
            err = (tr.model.images_from_z(tr.model.q_x(x).mu) - x).square().mean((1, 2, 3))  # (K,)
        best = int(err.argmin())
        out.append(dataclasses.replace(c, frame=frames[best], crop=cuts[best]))
    return out


def load_many(
    tr: Translator,
    sources: list[str],
    stdin: bytes | None,
    *,
    all_faces: bool,
    detect: bool,
    refine: bool,
    searched: Mapping | None = None,
):
    """faces.load_many of files ("-": `stdin`) at the model's size, files in `searched` (faces.SearchAhead.stop) not
    searched again, and with `refine` (found faces only) refine_frames."""
    named = [(stdin, "<stdin>") if src == "-" else (src, src) for src in sources]
    loaded = faces.load_many(named, all_faces=all_faces, detect=detect, size=tr.image_size, searched=searched)
    if not (refine and detect):
        return loaded
    return [r if isinstance(r, JmvaeError) else (r[0], refine_frames(tr, *r)) for r in loaded]


def _split(items: list, size: int) -> list[list]:
    """items in consecutive runs of `size` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _load_in_chunks(load: Callable, items: list, workers: int, window: int) -> Iterator[tuple[object, object]]:
    """(item, its result), in input order, where load(chunk) gives the results of a chunk of PHOTOS_PER_CHUNK
    items at once (their faces refined together: faces.load_many), the chunks in `workers` threads, at most
    `window` of them in flight. A JmvaeError that load raises is the result of each item of its chunk."""
    for chunk, results in _ordered_map(load, _split(items, PHOTOS_PER_CHUNK), workers, window):
        yield from zip(chunk, [results] * len(chunk) if isinstance(results, JmvaeError) else results)


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator[tuple[object, object]]:
    """(item, fn(item) or the JmvaeError it raised), in input order, with at most `window` items in flight, in
    `workers` threads (JPEG decoding, resizing and the cascade release the GIL; where processes can be forked,
    whole tasks go to them instead: _in_processes)."""

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
        yield from _in_order(lambda item: pool.submit(call, item), items, window)


def _in_order(submit: Callable, items: Iterable, window: int) -> Iterator[tuple[object, object]]:
    """(item, the result of the future submit(item) gave), in input order, with at most `window` items in flight."""
    pending: deque = deque()
    it = iter(items)
    for item in it:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            break
    while pending:
        item, fut = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, submit(nxt)))
        yield item, fut.result()


@contextmanager
def _one_thread_each(tr: Translator, parallel: bool) -> Iterator[None]:
    """With `parallel`, OpenCV and torch (on the CPU) run single-threaded until the block ends."""
    if not parallel:
        yield
        return
    import cv2

    # Parallel over images already: the cascade's own threads, and torch's (whose OpenMP threads spin while
    # they wait), would only take cores from the decoding and detection that dominate.
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)
    if tr.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])


def img2attr(
    tr: Translator,
    sources: list[str],
    *,
    all_faces: bool = False,
    detect: bool = True,
    refine: bool = False,
    stdin: bytes | None = None,
    on_file: Callable[[], None] | None = None,
    searched: Mapping | None = None,
) -> Iterator[AttrResult]:
    """Attribute probabilities for every face of every source, in order; a failed file gives an AttrResult with
    its error and the rest go on. More photos than one task's on several CPUs are shared out to processes forked
    from this one (_in_processes); elsewhere decoding and detection run in a thread pool while the model takes
    batches. Files in `searched` (faces.SearchAhead.stop, with the same all_faces) are not searched again."""
    workers = available_cpus() if len(sources) > 1 else 1
    args = (all_faces, detect, refine, stdin, searched)
    with _one_thread_each(tr, workers > 1):
        if workers > 1 and _forks(tr) and len(sources) > PHOTOS_PER_CHUNK:
            # tasks of fewer photos where there are not four per worker: else the last task of a few big photos
            # keeps one worker busy long after the others are done
            size = min(IMG2ATTR_TASK, max(PHOTOS_PER_CHUNK, math.ceil(len(sources) / (4 * workers))))
            tasks = _split(sources, size)
            for task, done in zip(tasks, _in_processes(tr, _img2attr_task, tasks, workers, args, "reading")):
                for _ in task if on_file else ():
                    on_file()
                yield from done
        else:
            yield from _img2attr(tr, sources, workers, *args, on_file)


def _img2attr_task(sources: list[str]) -> list[AttrResult]:
    """A forked worker's img2attr of some photos."""
    return list(_img2attr(_forked["tr"], sources, 1, *_forked["args"], None))


def _img2attr(tr, sources, workers, all_faces, detect, refine, stdin, searched, on_file) -> Iterator[AttrResult]:
    def prepare(chunk: list[str]) -> list:
        loaded = load_many(tr, chunk, stdin, all_faces=all_faces, detect=detect, refine=refine, searched=searched)
        return [r if isinstance(r, JmvaeError) else r[1] for r in loaded]

    waiting: list[tuple[str, object]] = []  # (file, list[faces.FaceCrop] | JmvaeError), in input order

    def flush() -> Iterator[AttrResult]:
        crops = [c.crop for _, r in waiting if isinstance(r, list) for c in r]
        probs = iter(infer_attributes(tr, np.stack(crops)) if crops else [])
        for src, r in waiting:
            if isinstance(r, JmvaeError):
                yield AttrResult(src, error=str(r))
                continue
            for c in r:
                yield AttrResult(src, c.face if all_faces else None, next(probs), crop=c)
        waiting.clear()

    n_crops = 0
    for src, r in _load_in_chunks(
        prepare, sources, workers, window=max(4 * workers, 2 * BATCH_SIZE // PHOTOS_PER_CHUNK)
    ):
        waiting.append((src, r))
        n_crops += len(r) if isinstance(r, list) else 0
        if on_file:
            on_file()
        if n_crops >= BATCH_SIZE:
            yield from flush()
            n_crops = 0
    yield from flush()


# ----------------------------------------------------------------------------- attributes -> faces


def base_attributes(kind: str, n_attrs: int, seed: int) -> np.ndarray:
    """The starting w of attr2img: the paper's random +-1 base (random {0, 1} here), or every attribute off."""
    if kind == "random":
        return np.random.default_rng(seed).integers(0, 2, n_attrs).astype(np.float32)  # (A,)
    if kind == "zeros":
        return np.zeros(n_attrs, np.float32)
    raise ValueError(kind)


@torch.inference_mode()
def average_face(tr: Translator, w: np.ndarray, samples: int = 0, zeta: float = 1.0, seed: int = 0) -> np.ndarray:
    """The decoded mean of q(z|w), then `samples` faces from z = mu + sigma * eps, eps ~ N(0, zeta I) (the paper's
    Figure 1: zeta < 1 keeps samples nearer the average face), decoded DECODE_BATCH at a time.
    -> (1 + samples, S, S, 3) uint8."""
    if not 0 <= zeta < math.inf:
        raise ValueError(f"zeta {zeta} is not a finite variance")
    wt = torch.as_tensor(np.asarray(w, np.float32), device=tr.device)[None]  # (1, A)
    q = tr.model.q_w(wt)  # mu, logvar (1, Z)
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same faces on every device
    eps = torch.randn(samples, q.mu.shape[1], generator=g).to(tr.device) * math.sqrt(zeta)  # (N, Z)
    z = torch.cat([q.mu, q.mu + torch.exp(0.5 * q.logvar) * eps])  # (1 + N, Z)
    out = np.empty((len(z), tr.image_size, tr.image_size, 3), np.uint8)
    for i in range(0, len(z), DECODE_BATCH):
        out[i : i + DECODE_BATCH] = output_to_pixels(tr.model.images_from_z(z[i : i + DECODE_BATCH])).cpu().numpy()
    return out  # (1 + N, S, S, 3)


def grid_size(n: int, tile: int, cols: int | None = None, gap: int = 2) -> tuple[int, int]:
    """(width, height) of `grid` for n tiles of tile x tile pixels."""
    if n == 1:
        return tile, tile
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return cols * tile + (cols - 1) * gap, rows * tile + (rows - 1) * gap


def check_samples(samples: int, image_size: Callable[[int], tuple[int, int]]) -> None:
    """GridTooLargeError, a usage error, where `samples` random faces would make an image (image_size(samples) ->
    (width, height)) above MAX_GRID_PIXELS; checked before any face is drawn."""
    width, height = image_size(samples)
    if width * height <= MAX_GRID_PIXELS:
        return
    lo, hi = 0, samples  # the most samples that fit: an image only grows with them
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if math.prod(image_size(mid)) <= MAX_GRID_PIXELS else (lo, mid - 1)
    raise GridTooLargeError(
        f"--samples {samples:,} makes a {width:,}x{height:,} image, past the {MAX_GRID_PIXELS / 1e6:.0f} Mpx above "
        f"which Pillow (and jmvae) will not open one: at most {lo:,} samples at this size"
    )


def grid(tiles: np.ndarray, size: int | None = None, cols: int | None = None, gap: int = 2) -> Image.Image:
    """(N, s, s, 3) uint8 -> one image, tiles upscaled to size x size, near-square layout unless cols is given."""
    n = len(tiles)
    tile = size or tiles.shape[2]
    cols = cols or math.ceil(math.sqrt(n))
    width, height = grid_size(n, tile, cols, gap)
    if width * height > MAX_GRID_PIXELS:  # edit --show of many faces at a large --size
        raise GridTooLargeError(
            f"{n} tiles of {tile} px make a {width:,}x{height:,} image, past the {MAX_GRID_PIXELS / 1e6:.0f} Mpx above "
            "which Pillow (and jmvae) will not open one: use a smaller --size"
        )
    if n == 1:
        return upscale(Image.fromarray(tiles[0], "RGB"), size)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for i, t in enumerate(tiles):
        canvas.paste(upscale(Image.fromarray(t, "RGB"), size), ((i % cols) * (tile + gap), (i // cols) * (tile + gap)))
    return canvas


def upscale(img: Image.Image, size: int | None) -> Image.Image:
    if not size or size == img.width:
        return img
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------- edits of photos

# Faces go through the model in blocks of exactly this many, the last one padded: the kernels that compute a batch,
# and so how their sums round, depend on its size (a batch of one differs from all others), but within blocks of
# one size a face's edit does not depend on the faces beside it. A photo then gets the same bytes whether it is
# edited alone or among a thousand (tests/test_batch_edit.py checks it).
EDIT_BLOCK = 8


@dataclass(frozen=True)
class EditView:
    """What the edit of a photo is written as: 'photo' (the photo with its faces changed, at its own resolution),
    'crops' (the edited faces at the model's size, side by side) or 'strip' (face | before | after | result for
    each face, the paper's Figure 2). Crops and strips are upscaled to `size`; `feather` is paste_edit's."""

    kind: str = "photo"
    size: int | None = None
    feather: float = faces.DEFAULT_FEATHER


@dataclass
class EditResult:
    """One photo's edit: written to `output`, or kept as `image` where it had none; or the error that stopped it."""

    file: str
    output: Path | None = None
    image: Image.Image | None = None
    crops: list[faces.FaceCrop] = field(default_factory=list)
    edit: editing.Edit | None = None  # this photo's faces, in the order of crops
    error: str | None = None


def render_edit(photo: Image.Image, crops: list[faces.FaceCrop], edited: editing.Edit, view: EditView) -> Image.Image:
    """The image `view` asks for, from a photo, its faces and their edit."""
    if view.kind == "strip":
        return grid(edited.strip(), view.size, cols=4)
    if view.kind == "crops":
        return grid(edited.pixels("result"), view.size, cols=len(crops))
    fades = edited.fade_map if edited.fade is not None else [None] * len(crops)
    base = np.asarray(photo.convert("RGB")) if len(crops) > 1 and edited.fade is not None else None
    for c, delta, fade in zip(crops, edited.delta_pixels, fades):
        photo = faces.paste_edit(photo, c, delta, view.feather, fade, base)
    return photo


def _edit_rows(edited: editing.Edit, rows: slice) -> editing.Edit:
    return _map_edit(edited, lambda t: t[rows])


def _map_edit(edited: editing.Edit, fn: Callable) -> editing.Edit:
    """The Edit with fn applied to each of its tensors (a field not filled in stays None)."""
    fields = (getattr(edited, f.name) for f in dataclasses.fields(editing.Edit))
    return editing.Edit(*(None if t is None else fn(t) for t in fields))


def edit_faces(
    tr: Translator,
    crops: list[np.ndarray],
    changes: Mapping[int, float],
    *,
    soft: bool = False,
    method: str | None = None,
) -> editing.Edit:
    """editing.edit of (S, S, 3) uint8 face crops, in blocks of EDIT_BLOCK, each result read back by the model
    (Edit.read) at the precision img2attr reads with (the edit itself runs in fp32)."""
    x = editing.to_input(crops, tr.device)  # (N, 3, S, S)
    x = torch.cat([x, x.new_zeros(-len(crops) % EDIT_BLOCK, *x.shape[1:])])  # (N + pad, 3, S, S)
    blocks = []
    for i in range(0, len(x), EDIT_BLOCK):
        block = editing.edit(tr.model, x[i : i + EDIT_BLOCK], changes, soft=soft, method=method)
        with tr.precision.autocast():
            block.read = editing.read_result(tr.model, block.result).float()  # (EDIT_BLOCK, A)
        blocks.append(block)
    # a block whose faces all show a drawn change already draws nothing (fade None) where another block does
    if any(b.fade is not None for b in blocks):
        for b in blocks:
            b.fade = b.x.new_zeros(len(b.x), 1, *b.x.shape[2:]) if b.fade is None else b.fade  # (EDIT_BLOCK, 1, S, S)
    fields = ([getattr(b, f.name) for b in blocks] for f in dataclasses.fields(editing.Edit))
    whole = editing.Edit(*(None if ts[0] is None else torch.cat(ts) for ts in fields))
    return _edit_rows(whole, slice(len(crops)))


def edit_photos(
    tr: Translator,
    sources: list[str],
    outputs: list[Path | JmvaeError | None],
    changes: Mapping[int, float],
    *,
    view: EditView = EditView(),
    soft: bool = False,
    method: str | None = None,
    all_faces: bool = False,
    detect: bool = True,
    refine: bool = False,
    stdin: bytes | None = None,
    searched: Mapping | None = None,
) -> Iterator[EditResult]:
    """Edit the face(s) of every source and write each result to its output (see photo_files.check_edit_outputs);
    an output of None keeps the image in the result instead, an error is that photo's result. In order; a failed
    photo gives its error and the rest go on. More photos than one task's on several CPUs are shared out to processes forked
    from this one (_edit_in_processes); elsewhere photos are read, detected, pasted and written in a thread pool
    while the model edits the faces found so far. Files in `searched` (faces.SearchAhead.stop, with the same
    all_faces) are not searched again."""
    workers = available_cpus() if len(sources) > 1 else 1
    args = (changes, view, soft, method, all_faces, detect, refine, searched)
    with _one_thread_each(tr, workers > 1):
        if workers > 1 and _forks(tr) and len(sources) > EDIT_TASK:
            yield from _edit_in_processes(tr, sources, outputs, workers, args)
        else:
            yield from _edit_photos(tr, sources, outputs, workers, *args, stdin)


def _edit_in_processes(tr: Translator, sources, outputs, workers: int, args: tuple) -> Iterator[EditResult]:
    """edit_photos in forked processes (_in_processes), a task of EDIT_TASK photos at a time. A face's edit does
    not depend on the others of its block, so the results are those of one process, to the byte."""
    # an output's error goes as its message alone: a JmvaeError subclass need not rebuild from its pickle
    jobs = [(s, JmvaeError(str(o)) if isinstance(o, JmvaeError) else o) for s, o in zip(sources, outputs)]
    for done in _in_processes(tr, _edit_task, _split(jobs, EDIT_TASK), workers, args, "editing"):
        yield from (_arrays(r, torch.from_numpy) for r in done)


# Photos per task of the process pools: for edit a block of the model's, so that a task's faces go through it
# together; for img2attr a few chunks (PHOTOS_PER_CHUNK), so that the model takes a batch of faces at once
EDIT_TASK = EDIT_BLOCK
IMG2ATTR_TASK = 4 * PHOTOS_PER_CHUNK
_forked: dict = {}  # what a forked worker works with (_start_worker)


def _forks(tr: Translator) -> bool:
    """Whether work can go to processes forked from this one: on the CPU (a forked process cannot use the parent's
    CUDA) where forking is safe (cpus.can_fork)."""
    return tr.device.type == "cpu" and can_fork()


def _in_processes(tr: Translator, task: Callable, tasks: list, workers: int, args: tuple, doing: str) -> Iterator:
    """task(t) for each of `tasks`, in order, in `workers` processes forked from this one, which share its loaded
    model rather than load their own (task finds it, and `args`, in _forked), each running whole tasks in one
    thread. Threads of one process were slower: the model's thread, the photos' search and the writing contend for
    Python's lock, and kept 1.7 of 2 cores busy (docs/results.md, "Batch edits", "img2attr in processes")."""
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), fork, _start_worker, (tr, args)) as pool:
        try:
            for _, done in _in_order(lambda t: pool.submit(task, t), tasks, 2 * workers):
                yield done
        except concurrent.futures.BrokenExecutor:
            raise JmvaeError(
                f"a worker process {doing} the photos was killed (out of memory?): the photos reported before this "
                "line are complete, the rest may not have been done"
            ) from None


def _start_worker(tr: Translator, args: tuple) -> None:
    import cv2

    start_worker()
    # the parent's streams may have been held by one of its threads (a progress bar's) at the fork: fresh ones
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _forked.update(tr=tr, args=args)


def _edit_task(jobs: list[tuple]) -> list[EditResult]:
    """A forked worker's edits of some photos, their tensors as numpy arrays: a tensor sent as it is would go
    through shared memory (torch's way between processes), and an array sends only its own rows of the block."""
    sources, outputs = zip(*jobs)
    results = _edit_photos(_forked["tr"], list(sources), list(outputs), 1, *_forked["args"], None)
    return [_arrays(r, torch.Tensor.numpy) for r in results]


def _arrays(r: EditResult, convert: Callable) -> EditResult:
    """r with each tensor of its edit converted (to numpy arrays in a worker, back to tensors here)."""
    return r if r.edit is None else dataclasses.replace(r, edit=_map_edit(r.edit, convert))


def _edit_photos(
    tr, sources, outputs, workers, changes, view, soft, method, all_faces, detect, refine, searched, stdin
):
    # The model's blocks are small, so that it edits often and the pools' short windows (a chunk of photos per
    # thread while finding faces, a few photos each while pasting and writing: held at full resolution, whatever
    # their size) keep the other cores busy meanwhile.
    window = 4 * workers

    def prepare(jobs: list[tuple]) -> list:
        """(photo, crops) or the error of each (source, output) job; an output's error is the job's."""
        todo = [src for src, out in jobs if not isinstance(out, JmvaeError)]
        loaded = iter(load_many(tr, todo, stdin, all_faces=all_faces, detect=detect, refine=refine, searched=searched))
        return [out if isinstance(out, JmvaeError) else next(loaded) for _, out in jobs]

    def edited() -> Iterator[tuple]:
        """(source, output, (photo, crops) or JmvaeError, that photo's Edit or None), in input order."""
        waiting: list = []
        n_crops = 0
        for (src, out), r in _load_in_chunks(prepare, list(zip(sources, outputs)), workers, max(2, workers)):
            waiting.append((src, out, r))
            n_crops += len(r[1]) if isinstance(r, tuple) else 0
            if n_crops >= EDIT_BLOCK:
                yield from flush(waiting)
                n_crops = 0
        yield from flush(waiting)

    def flush(waiting: list) -> Iterator[tuple]:
        crops = [c.crop for _, _, r in waiting if isinstance(r, tuple) for c in r[1]]
        whole = edit_faces(tr, crops, changes, soft=soft, method=method) if crops else None
        start = 0
        for src, out, r in waiting:
            if isinstance(r, JmvaeError):
                yield src, out, r, None
                continue
            yield src, out, r, _edit_rows(whole, slice(start, start + len(r[1])))
            start += len(r[1])
        waiting.clear()

    def finish(item) -> EditResult:
        src, out, r, e = item
        if isinstance(r, JmvaeError):
            raise r
        photo, crops = r
        img = render_edit(photo, crops, e, view)
        if out is None:
            return EditResult(src, image=img, crops=crops, edit=e)
        # fast: writing PNGs at the default level was most of a batch's time
        images.write_image(img, out, fast=True, text=dict([images.EDIT_MARK]))
        return EditResult(src, out, crops=crops, edit=e)

    for item, r in _ordered_map(finish, edited(), workers, window):
        yield r if isinstance(r, EditResult) else EditResult(item[0], error=str(r))
