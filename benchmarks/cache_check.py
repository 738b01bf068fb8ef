"""What keying the image cache on the images costs: one stat() per image file on every load_data call.

    python benchmarks/cache_check.py [--files 202599] [--repeats 5]

Writes a CelebA-layout folder of --files empty images and a matching attribute file into a temporary folder (a
stat costs the same for an empty file as for a JPEG), then times, on that folder: the stat of every image, the
whole cache key (the stats, JSON and sha256), and parsing the attribute file for scale. The files were just
written, so their metadata is in the kernel's cache: a first run after a reboot, or on a network file system, pays
more. One JSON line per measurement on stdout, with the median and the fastest of --repeats runs.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jmvae_cli import data  # noqa: E402


def write_folder(root: Path, files: int) -> Path:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, files + 1)]
    for name in names:
        (images / name).touch()
    attr_names = [f"Attribute_{j}" for j in range(40)]
    rows = [f"{name} {' '.join(['-1'] * len(attr_names))}" for name in names]
    (root / "list_attr_celeba.txt").write_text("\n".join([str(files), " ".join(attr_names), *rows]) + "\n")
    return root


def timed(what: str, files: int, repeats: int, call) -> dict:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return {"what": what, "files": files, "median_s": round(statistics.median(seconds), 3),
            "min_s": round(min(seconds), 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=202_599, help="image files (the full CelebA has 202,599)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp), args.files)
        source = data.read_source(root)
        folders = [0] * len(source.names)
        preprocess = data.Preprocess()
        checks = {
            "stat every image": lambda: [data._stamp(path) for path in source.paths],
            "cache key (stats, JSON, sha256)": lambda: data._cache_key(
                [source], folders, source.names, source.paths, preprocess
            ),
            "parse the attribute file (for scale)": lambda: data.read_source(root),
        }
        for what, call in checks.items():
            print(json.dumps(timed(what, args.files, args.repeats, call)), flush=True)


if __name__ == "__main__":
    main()
