"""How long a training run's data start-up takes: parsing a full-size CelebA attribute file, and decoding folders
into the uint8 cache in worker processes versus in this process alone.

    python benchmarks/data_loading.py [--data DIR ...] [--rows 202599]

The attribute file is synthetic (--rows rows of 40 attributes, laid out like list_attr_celeba.txt); decoding
reads the real folders (default: both shared CelebA folders) into a fresh temporary cache each time. One JSON line
per measurement on stdout.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT))

from jmvae_cli import data  # noqa: E402


def time_attr_parse(rows: int, folder: Path) -> dict:
    names = [f"Attribute_{i}" for i in range(40)]
    values = np.random.default_rng(0).choice(np.array(["-1", " 1"]), size=(rows, len(names)))
    lines = [str(rows), " ".join(names), *(f"{i:06d}.jpg {'  '.join(v)}" for i, v in enumerate(values, start=1))]
    path = folder / "list_attr_celeba.txt"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    data._read_attr_txt(path)
    return {"what": "parse attribute file", "rows": rows, "seconds": round(time.perf_counter() - start, 3)}


def time_decode(roots: list[Path], folder: Path, pool: bool) -> dict:
    data.POOL_AFTER_SECONDS = 0.0 if pool else float("inf")  # force one way or the other
    start = time.perf_counter()
    faces = data.load_data(roots, cache_dir=folder / ("pool" if pool else "serial"), progress=False)
    seconds = time.perf_counter() - start
    return {
        "what": "decode into the cache",
        "workers": "spawned pool" if pool else "this process",
        "images": len(faces.names),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(faces.names) / seconds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, action="append", help="default: both shared CelebA folders")
    p.add_argument("--rows", type=int, default=202_599, help="rows of the synthetic attribute file")
    args = p.parse_args()
    roots = args.data or [SHARED / "celeba", SHARED / "celeba-hq-64"]
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(time_attr_parse(args.rows, Path(tmp))), flush=True)
        for pool in (True, False):
            print(json.dumps(time_decode(roots, Path(tmp), pool)), flush=True)


if __name__ == "__main__":  # the decoding workers are spawned and re-import this module
    main()
