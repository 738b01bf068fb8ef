"""Face datasets: read a data folder, split it, and decode its images once into a uint8 cache.

A folder's layout is detected by its files (a new layout is one entry in LAYOUTS):
  celeba     img_align_celeba/*.jpg + list_attr_celeba.txt (+ list_eval_partition.txt when present)
  celeba-hq  CelebA-HQ-img/*.jpg + CelebAMask-HQ-attribute-anno.txt
  generic    images + attributes.csv (header file,<attr>,...; values -1/1 or 0/1; paths relative to the folder)

Decoding ~200k JPEGs every epoch would dominate CPU training, so load_data decodes each image once into a raw
(N, size, size, 3) uint8 file under the cache folder, memory-maps it, and reuses it while the file list, every
image's size and modification time, the attribute files and the preprocessing stay the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress

from jmvae_cli.console import console
from jmvae_cli.cpus import available_cpus, start_worker
from jmvae_cli.errors import JmvaeError
from jmvae_cli.files import remove_stale_temporaries, replacing

CACHE_VERSION = 1  # bump when decoding changes in a way the Preprocess settings do not capture
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Layout:
    """A kind of data folder: where its images and attributes are, and how its photos are framed."""

    title: str  # for messages
    image_dir: str  # relative to the folder; "." when the images sit beside the attribute file
    attr_file: str
    attr_format: str  # a key of _READERS: "txt" (CelebA's) or "csv" (header file,<attr>,...)
    centre_crop: bool  # cut to the centre square Preprocess.celeba_crop of the width wide, else resized whole
    partition: bool = False  # a list_eval_partition.txt beside the attribute file, when present, gives the split


LAYOUTS = {
    "celeba": Layout("CelebA", "img_align_celeba", "list_attr_celeba.txt", "txt", centre_crop=True, partition=True),
    "celeba-hq": Layout("CelebAMask-HQ", "CelebA-HQ-img", "CelebAMask-HQ-attribute-anno.txt", "txt", centre_crop=False),
    "generic": Layout("generic", ".", "attributes.csv", "csv", centre_crop=False),
}
PARTITION_FILE = "list_eval_partition.txt"
VAL_FRACTION = 0.1  # share of a folder without a partition file that goes to validation, chosen by file name


def val_fraction_of(model_meta: dict) -> float:
    """The validation share a model was trained with (its file's training options), else VAL_FRACTION: evaluating
    or calibrating on the same folders must split them as its training did, or count faces it was trained on."""
    share = (model_meta.get("train") or {}).get("val_fraction")
    return float(share) if isinstance(share, (int, float)) and 0 <= share < 1 else VAL_FRACTION


class DataError(JmvaeError):
    """A data folder or attribute file that cannot be used as it is."""


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes a training image. Part of the cache key, so changing it rebuilds the cache."""

    size: int = 64
    # Aligned CelebA is cut to its centre square 148 px wide (of 178) before resizing: the standard CelebA 64x64
    # framing of DCGAN/VAE-GAN work, keeping face and hair and dropping most background. It is stored relative
    # to the width so that half-size copies (89x109) get the same framing. HQ and generic images are already
    # face-centred, so they are resized whole (centre square first if not square).
    celeba_crop: float = 148 / 178

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """The settings saved beside a model (its metadata's "preprocess"): its images are prepared the same way."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Source:
    """One data folder, parsed but not decoded."""

    root: Path  # resolved folder
    layout: str  # "celeba" | "celeba-hq" | "generic"
    attr_file: Path
    paths: list[Path]  # absolute image paths
    names: list[str]  # file names as written in the attribute file
    attrs: np.ndarray  # (N, A) uint8 in {0, 1}
    attr_names: list[str]
    split: np.ndarray  # (N,) uint8: 0 train, 1 val, 2 test


@dataclass
class FaceData:
    """What training and evaluation consume: rows whose image could be decoded, in attribute-file order."""

    images: np.ndarray  # (N, size, size, 3) uint8, memory-mapped read-only
    attrs: np.ndarray  # (N, A) uint8 in {0, 1}
    split: np.ndarray  # (N,) uint8: 0 train, 1 val, 2 test
    names: list[str]
    attr_names: list[str]
    skipped: int  # rows dropped because their image was missing or unreadable

    def indices(self, split: str) -> np.ndarray:
        """Row indices of "train", "val" or "test" (test is empty unless a partition file gave one)."""
        return np.flatnonzero(self.split == SPLITS[split])

    def sample(self, split: str, max_images: int | None = None, seed: int = 0) -> np.ndarray:
        """Row indices of a split, or a seeded random max_images of them in row order; a DataError if it is empty."""
        idx = self.indices(split)
        if len(idx) == 0:
            hint = " (only official CelebA with list_eval_partition.txt has one)" if split == "test" else ""
            raise DataError(f"the data has no {split} images{hint}")
        if max_images is not None and max_images < len(idx):
            idx = np.sort(np.random.default_rng(seed).choice(idx, max_images, replace=False))
        return idx


# -----------------------------------------------------------------------------
# reading a folder


def read_source(root: str | Path, val_fraction: float = VAL_FRACTION) -> Source:
    """Parse one data folder. Rows are split by list_eval_partition.txt when an official CelebA folder has one,
    otherwise by a hash of the file name: a val_fraction share goes to val, the rest to train."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'no such folder'} (--data takes data folders)")
    layout = detect_layout(root)
    spec = LAYOUTS[layout]
    attr_file = root / spec.attr_file
    names, attr_names, attrs = _READERS[spec.attr_format](attr_file)
    partition = root / PARTITION_FILE
    if spec.partition and partition.is_file():
        split = _read_partition(partition, names)
    else:
        split = _hash_split(names, val_fraction)
    _check_unique(attr_file, names)
    paths = [root / spec.image_dir / name for name in names]
    return Source(root, layout, attr_file, paths, names, attrs, attr_names, split)


def detect_layout(root: Path) -> str:
    """Which of LAYOUTS the folder holds, by its files."""
    for name, layout in LAYOUTS.items():
        if (root / layout.image_dir).is_dir() and (root / layout.attr_file).is_file():
            return name
    looked = [
        f"{'' if layout.image_dir == '.' else layout.image_dir + '/ with '}{layout.attr_file} ({layout.title})"
        for layout in LAYOUTS.values()
    ]
    raise DataError(f"{root}: not a data folder; looked for {', '.join(looked[:-1])}, or {looked[-1]}")


def _check_unique(attr_file: Path, names: list[str]) -> None:
    # Refused rather than warned about: a file listed twice is trained on and scored twice, and when its rows
    # disagree no guess of which one holds is safe; one line of the attribute file to fix is the cheaper outcome.
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if not repeated:
        return
    files = "file" if len(repeated) == 1 else "files"
    raise DataError(f"{attr_file}: {len(repeated)} {files} listed on more than one row, e.g. {repeated[0]}")


def _read_text(path: Path) -> str:
    try:
        # UTF-8 whatever the locale, and the byte-order mark of a spreadsheet's "CSV UTF-8" dropped
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def _read_attr_txt(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """The CelebA attribute format: row count, attribute names, then `file v1 ... vA` with values -1/1."""
    lines = _read_text(path).rstrip().splitlines()
    if not lines:
        raise DataError(f"{path}: file is empty")
    try:
        count = int(lines[0])
    except ValueError:
        raise DataError(f"{path} line 1: expected the number of rows, found {lines[0][:40]!r}") from None
    attr_names = lines[1].split() if len(lines) > 1 else []
    if not attr_names:
        raise DataError(f"{path} line 2: expected the attribute names")
    if count != len(lines) - 2:
        raise DataError(f"{path} line 1: says {count} rows, but the file has {len(lines) - 2}")
    # keep only strings per row, never the split lists: 200k live lists would make the garbage collector
    # rescan them over and over and triple the parse time of the full CelebA file
    names, values, seen = [], [], set()
    for k, line in enumerate(lines[2:], start=3):
        row = line.split()
        if len(row) != len(attr_names) + 1:
            found = len(row) - 1 if row else "an empty line"
            raise DataError(f"{path} line {k}: expected {len(attr_names)} values, found {found}")
        names.append(row[0])
        values.append("".join(row[1:]))
        seen.update(row[1:])
    if not seen <= {"1", "-1"}:
        k, bad = next(
            (k, v) for k, line in enumerate(lines[2:], start=3) for v in line.split()[1:] if v not in ("1", "-1")
        )
        raise DataError(f"{path} line {k}: expected -1 or 1, found {bad!r}")
    # every value is "1" or "-1", so with "-1" -> "0" the joined rows hold exactly one character per value,
    # which numpy reads far faster than it converts millions of small strings
    flat = "".join(values).replace("-1", "0")
    attrs = np.frombuffer(flat.encode(), np.uint8).reshape(len(names), len(attr_names)) - ord("0")  # (N, A)
    return names, attr_names, attrs


def _read_attr_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """The generic format: header `file,<attr>,...`, then one row per image with values -1/1 or 0/1."""
    rows = [(k, row) for k, row in enumerate(csv.reader(_read_text(path).splitlines()), start=1) if row]
    if not rows:
        raise DataError(f"{path}: file is empty")
    (k, header), rows = rows[0], rows[1:]
    header = [h.strip() for h in header]
    if len(header) < 2 or header[0].lower() != "file":
        raise DataError(f"{path} line {k}: expected a header 'file,<attribute>,...', found {','.join(header)[:60]!r}")
    values = {"1": 1, "-1": 0, "0": 0}
    attrs = np.zeros((len(rows), len(header) - 1), np.uint8)  # (N, A)
    for i, (k, row) in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"{path} line {k}: expected {len(header) - 1} values, found {len(row) - 1}")
        try:
            attrs[i] = [values[v.strip()] for v in row[1:]]
        except KeyError as e:
            raise DataError(f"{path} line {k}: expected -1/1 or 0/1, found {e.args[0]!r}") from None
    return [row[0].strip() for _, row in rows], header[1:], attrs


_READERS = {"txt": _read_attr_txt, "csv": _read_attr_csv}  # Layout.attr_format -> (names, attr_names, attrs)


def _read_partition(path: Path, names: list[str]) -> np.ndarray:
    """list_eval_partition.txt: `000001.jpg 0` lines, 0/1/2 = train/val/test."""
    part = {}
    for k, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path} line {k}: expected '<file> 0|1|2', found {line.strip()[:60]!r}")
        part[fields[0]] = int(fields[1])
    missing = [name for name in names if name not in part]
    if missing:
        raise DataError(f"{path}: no entry for {len(missing)} file(s) of the attribute file, e.g. {missing[0]}")
    return np.array([part[name] for name in names], np.uint8)  # (N,)


def _digest(name: str) -> bytes:
    return hashlib.sha1(name.encode()).digest()


def _hash_split(names: list[str], val_fraction: float) -> np.ndarray:
    # hashing the name, not the row position, keeps a file in its split when rows are added, removed or merged
    unit = np.array([int.from_bytes(_digest(name)[:6], "big") / 2**48 for name in names])  # (N,) in [0, 1)
    return (unit < val_fraction).astype(np.uint8)  # (N,)


# -----------------------------------------------------------------------------
# decoding


def decode_face(path: str | Path, layout: str, preprocess: Preprocess = Preprocess()) -> np.ndarray | None:
    """One image in the training framing: (size, size, 3) uint8, or None if it is missing or unreadable."""
    crop = LAYOUTS[layout].centre_crop
    try:
        with Image.open(path) as im:
            # let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while the crop keeps at least `size` pixels:
            # full-size CelebA decodes several times faster, and DCT scaling is itself an area average
            scale = preprocess.size / (preprocess.celeba_crop * im.width if crop else min(im.size))
            im.draft("RGB", (math.ceil(im.width * scale), math.ceil(im.height * scale)))
            im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        side = preprocess.celeba_crop * w if crop else min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)  # float box: exact relative crop
        # Pillow's bicubic widens its kernel when shrinking, so every source pixel is averaged in (no aliasing);
        # reducing_gap lets big inputs (1024 px HQ) be box-reduced first, cheaply and without visible loss
        im = im.resize((preprocess.size, preprocess.size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return np.asarray(im)  # (size, size, 3) uint8


def _decode_job(job: tuple[Path, str, Preprocess]) -> np.ndarray | None:
    return decode_face(*job)


# -----------------------------------------------------------------------------
# the cache


def default_cache_dir() -> Path:
    """$JMVAE_CACHE_DIR, else $XDG_CACHE_HOME/jmvae, else ~/.cache/jmvae (never the data folders, which may be
    read-only)."""
    if os.environ.get("JMVAE_CACHE_DIR"):
        return Path(os.environ["JMVAE_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jmvae"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(size, modification time in ns, mode) of a file, None if there is none: what tells that an image was
    overwritten, deleted or repaired without reading it (the quick check of make and rsync), and that one unreadable
    for its permissions was made readable (chmod changes neither size nor time)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_mode


def _cache_key(
    sources: list[Source], folders: list[int], names: list[str], paths: list[Path], preprocess: Preprocess
) -> str:
    """sha256 of everything the decoded images depend on: the attribute files, and every image's size and
    modification time, so that a changed, deleted or repaired image rebuilds the cache."""
    spec = {
        "version": CACHE_VERSION,
        "preprocess": preprocess.to_dict(),
        "folders": [[str(s.root), s.layout, _stamp(s.attr_file)] for s in sources],
        "files": [(folder, name, _stamp(path)) for folder, name, path in zip(folders, names, paths)],  # per row
    }
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


def _read_meta(meta_file: Path, images_file: Path, key: str, image_bytes: int) -> dict | None:
    """The cache's JSON if it belongs to this key and its image file is complete, else None."""
    try:
        meta = json.loads(meta_file.read_text())
        complete = images_file.stat().st_size == meta["count"] * image_bytes
        return meta if meta["key"] == key and complete else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build_images(jobs: list[tuple[Path, str, Preprocess]], images_file: Path, progress: bool) -> list[int]:
    """Decode every job into images_file, in order; returns the rows that could not be decoded."""
    skipped = []
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with (
        replacing(images_file) as tmp,
        open(tmp, "wb") as out,
        Progress(*columns, console=console, transient=True, disable=not progress) as bar,
    ):
        task = bar.add_task("decoding faces", total=len(jobs))
        for i, face in enumerate(_decode_all(jobs)):
            if face is None:
                skipped.append(i)
            else:
                out.write(face.tobytes())
            bar.advance(task)
    return skipped


POOL_AFTER_SECONDS = 5.0  # decode in worker processes when the rest would take longer than this in this one


def _decode_all(jobs: list[tuple[Path, str, Preprocess]]) -> Iterator[np.ndarray | None]:
    """decode_face of every job, in order. JPEG decoding is CPU-bound, so big folders go to one worker process per
    core; small ones are decoded here, as starting the workers costs about a second. The workers are spawned, not
    forked: a fork copies this process's locks but not the threads holding them, and under torchrun (gloo's threads)
    forked workers deadlocked about one run in twenty."""
    head, rest = jobs[:64], jobs[64:]
    t = time.perf_counter()
    yield from map(_decode_job, head)
    rest_seconds = (time.perf_counter() - t) / max(len(head), 1) * len(rest)
    workers = available_cpus()
    if rest_seconds < POOL_AFTER_SECONDS or workers == 1:
        yield from map(_decode_job, rest)
        return
    done = 0
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=start_worker)
    try:
        for face in pool.map(_decode_job, rest, chunksize=64):
            yield face
            done += 1
    except BrokenProcessPool:
        # a spawned worker re-imports the main script: without `if __name__ == "__main__":` it fails to start
        console.print(
            "[yellow]warning:[/] the decoding worker processes failed, decoding in this process instead (a script "
            'that loads data must keep its work under `if __name__ == "__main__":`, as with any multiprocessing)'
        )
        yield from map(_decode_job, rest[done:])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C, do not decode the rest first


# -----------------------------------------------------------------------------
# putting it together


def load_data(
    roots: list[str | Path],
    *,
    preprocess: Preprocess = Preprocess(),
    val_fraction: float = VAL_FRACTION,
    cache_dir: str | Path | None = None,
    max_images: int | None = None,
    progress: bool = True,
) -> FaceData:
    """Read one or more data folders (their attribute names must agree) and return their decoded faces.

    Images are decoded once into cache_dir (default: default_cache_dir()) and reused by later calls while the
    files (names, sizes, modification times) and the preprocessing stay the same. max_images keeps a deterministic
    subset, chosen before decoding. Missing or unreadable images are dropped and reported in one warning line on
    the console, by every call. A folder given twice, or a file listed twice in its attribute file, is a DataError.
    """
    sources = [read_source(root, val_fraction) for root in roots]
    if not sources:
        raise DataError("no data folder given")
    _check_distinct(sources)
    attr_names = _common_attr_names(sources)
    folders = [i for i, s in enumerate(sources) for _ in s.names]  # which folder each row comes from
    names = [name for s in sources for name in s.names]
    jobs = [(path, s.layout, preprocess) for s in sources for path in s.paths]
    attrs = np.concatenate([s.attrs for s in sources])  # (N, A)
    split = np.concatenate([s.split for s in sources])  # (N,)
    if max_images is not None and max_images < len(names):
        # rank by digest bytes the split does not use: ranking by the split's own bytes would keep only val rows
        ranked = sorted(range(len(names)), key=lambda i: _digest(names[i])[8:])
        rows = sorted(ranked[:max_images])
        folders, names, jobs = [folders[i] for i in rows], [names[i] for i in rows], [jobs[i] for i in rows]
        attrs, split = attrs[rows], split[rows]

    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create cache folder {cache_dir} ({e.strerror}); set JMVAE_CACHE_DIR") from None
    remove_stale_temporaries(cache_dir)  # image files of builds that were killed: as big as a whole cache
    key = _cache_key(sources, folders, names, [job[0] for job in jobs], preprocess)
    images_file, meta_file = cache_dir / f"{key[:32]}.u8", cache_dir / f"{key[:32]}.json"
    image_bytes = preprocess.size * preprocess.size * 3
    meta = _read_meta(meta_file, images_file, key, image_bytes)
    if meta is None:
        try:
            skipped = _build_images(jobs, images_file, progress)
            # the rows, not just their count, so that reuse drops exactly the rows this build dropped
            meta = {"key": key, "count": len(names) - len(skipped), "skipped": skipped}
            with replacing(meta_file) as tmp:  # written last: its presence vouches for the image file
                tmp.write_text(json.dumps(meta))
        except OSError as e:  # a full disk, a file-size limit, a read-only folder
            raise DataError(f"cannot write the image cache in {cache_dir} ({e.strerror})") from None
    if meta["skipped"]:  # on every run, not just the one that built the cache: each trains without them
        examples = ", ".join(str(jobs[i][0]) for i in meta["skipped"][:3])
        console.print(
            f"[yellow]warning:[/] skipped {len(meta['skipped'])} of {len(names)} images, missing or unreadable "
            f"(e.g. {escape(examples)})",
            soft_wrap=True,  # one line, however long the paths
        )

    kept = np.ones(len(names), bool)  # (N,)
    kept[meta["skipped"]] = False
    if meta["count"] == 0:
        raise DataError(f"no readable images in {', '.join(str(s.root) for s in sources)}")
    shape = (meta["count"], preprocess.size, preprocess.size, 3)
    return FaceData(
        images=np.memmap(images_file, np.uint8, "r", shape=shape),
        attrs=attrs[kept],
        split=split[kept],
        names=[name for name, k in zip(names, kept) if k],
        attr_names=attr_names,
        skipped=len(meta["skipped"]),
    )


def _check_distinct(sources: list[Source]) -> None:
    # Refused for the reason duplicate rows are (see _check_unique): every image would count twice.
    seen = set()
    for s in sources:
        if s.root in seen:
            raise DataError(f"{s.root} is given twice")
        seen.add(s.root)


def _common_attr_names(sources: list[Source]) -> list[str]:
    """One model has one attribute vector, so every folder must name the same attributes in the same order."""
    first = sources[0]
    for s in sources[1:]:
        if s.attr_names == first.attr_names:
            continue
        missing = [a for a in first.attr_names if a not in s.attr_names]
        extra = [a for a in s.attr_names if a not in first.attr_names]
        diff = []
        if missing:
            diff.append(f"it lacks {', '.join(missing)}")
        if extra:
            diff.append(f"it has extra {', '.join(extra)}")
        raise DataError(
            f"attribute names of {s.attr_file} differ from {first.attr_file}: "
            + ("; ".join(diff) or "same names in a different order")
        )
    return first.attr_names
