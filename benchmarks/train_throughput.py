"""Training images/s of the default architecture on this machine: batches from the uint8 cache in host memory, from
the same images held on the GPU (train.batch_source; on a CPU the same as the cache) and decoded from the JPEGs
each time, in fp32 and in bf16 autocast.

    python benchmarks/train_throughput.py --data ../shared/datasets/celeba [--steps 20] [--device cpu]
        [--train-only image-decoder]    # the step of a decoder fine-tune (train --train-only)
        [--compile none,reduce-overhead] [--precisions fp32] [--sources resident]   # torch.compile's modes

Each setting runs a few warm-up steps (where torch.compile compiles: their seconds are reported), then times --steps
optimizer steps of the real training step (train.py's batch_tensors and the model's loss), and prints one JSON line
per setting and a markdown table. A setting that fails (a compiler missing, say) prints its error and the rest go on.
"""

import argparse
import itertools
import json
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from jmvae_cli.data import Preprocess, decode_face, load_data, read_source
from jmvae_cli.model import JMVAE, JMVAEConfig, pixels_to_input
from jmvae_cli.runtime import Precision, pick_device
from jmvae_cli.train import batch_source, batch_tensors
from jmvae_cli.train_options import TRAINED_PARTS

SOURCES = ("cache", "resident", "jpeg")


def decode_job(args) -> np.ndarray:
    path, layout = args
    return decode_face(path, layout, Preprocess())


def jpeg_batches(root: Path, batch_size: int, pool: Pool):
    """What training would cost without the cache: every batch decoded from its JPEGs (by all cores)."""
    src = read_source(root)
    rng = np.random.default_rng(0)
    while True:
        idx = rng.choice(len(src.paths), batch_size, replace=False)
        faces = pool.map(decode_job, [(src.paths[i], src.layout) for i in idx])
        yield np.stack(faces), src.attrs[idx]


def run(step_batches, model, optimizer, prec: Precision, device, warmup: int, steps: int, batch_size: int):
    """(images/s over the timed steps, seconds of the warm-up steps)"""
    start = time.perf_counter()
    for i, (x, w) in enumerate(step_batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        with prec.autocast():
            loss = model(x, w)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0), t0 - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/celeba")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--train-only", choices=list(TRAINED_PARTS))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--compile", default="none", help="torch.compile modes, comma-separated; none: not compiled")
    args = ap.parse_args()
    precisions, sources, modes = (getattr(args, k).split(",") for k in ("precisions", "sources", "compile"))

    device = pick_device(args.device)
    data = load_data([args.data], progress=True)
    train_idx = data.indices("train")
    rows = []
    with Pool() as pool:
        for precision, mode, source in itertools.product(precisions, modes, sources):
            prec = Precision.choose(device, precision)
            torch.manual_seed(0)
            model = JMVAE(JMVAEConfig(n_attrs=len(data.attr_names))).to(device, memory_format=prec.memory_format)
            params = model.train_only(TRAINED_PARTS[args.train_only]) if args.train_only else model.parameters()
            optimizer = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999))
            step = model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)
            if source != "jpeg":
                get = batch_source(data, device)
                if source == "cache":
                    get = partial(batch_tensors, data, device=device)
                rng = np.random.default_rng(0)
                batches = (get(rng.choice(train_idx, args.batch_size, replace=False)) for _ in itertools.count())
            else:
                batches = (
                    (pixels_to_input(torch.from_numpy(u8).to(device)), torch.from_numpy(w).to(device).float())
                    for u8, w in jpeg_batches(args.data, args.batch_size, pool)
                )
            try:
                ips, warmup_s = run(batches, step, optimizer, prec, device, args.warmup, args.steps, args.batch_size)
            except Exception as e:  # noqa: BLE001 - one failing setting must not lose the others' numbers
                print(json.dumps({"precision": precision, "compile": mode, "source": source, "error": repr(e)[:300]}))
                continue
            row = {
                "device": device.type,
                "precision": precision,
                "compile": mode,
                "warmup_s": round(warmup_s, 1),
                "source": source,
                "train_only": args.train_only or "all",
                "images_per_s": round(ips, 1),
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| precision | compile | " + " | ".join(sources) + " |\n|---|---|" + "---|" * len(sources))
    for precision, mode in itertools.product(precisions, modes):
        cells = {r["source"]: r["images_per_s"] for r in rows if (r["precision"], r["compile"]) == (precision, mode)}
        print(f"| {precision} | {mode} | " + " | ".join(f"{cells.get(s, '-')} img/s" for s in sources) + " |")


if __name__ == "__main__":
    main()
