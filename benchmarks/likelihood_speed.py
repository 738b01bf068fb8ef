"""How long `jmvae evaluate`'s likelihoods take: images per second of every bound at K importance samples.

    python benchmarks/likelihood_speed.py [--weights FILE] [--device cuda] [--k 100 1000] [--images 3628]
                                          [--decode-batch 1000] [--data DIR ...]

Times evaluate_likelihoods (the code behind `jmvae evaluate`, all of a JMVAE's bounds: Eqs. 3 and 5 with q(z|x,w)
and q(z|x), Eq. 4 and the three estimates of log p(w)) on the first --images faces of the validation split, after
one warm-up batch, for each K, and extrapolates to the whole split. One JSON line per K on stdout.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT))

from jmvae_cli.bundled import bundled_weights  # noqa: E402
from jmvae_cli.checkpoint import load_model  # noqa: E402
from jmvae_cli.data import load_data  # noqa: E402
from jmvae_cli.likelihood import evaluate_likelihoods  # noqa: E402
from jmvae_cli.runtime import pick_device  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--data", type=Path, action="append", help="default: both shared CelebA folders")
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--images", type=int, default=200, help="faces timed per K (the split has 3,628)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--decode-batch", type=int, default=1000, help="images per decoder pass")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    model = load_model(args.weights or bundled_weights("default.safetensors")).model
    data = load_data(args.data or [SHARED / "celeba-hq-64", SHARED / "celeba"], progress=False)
    val = data.indices("val")
    idx = val[: args.images]
    opts = dict(batch_size=args.batch_size, decode_batch=args.decode_batch, device=device)
    for k in args.k:
        evaluate_likelihoods(model, data, val[: args.batch_size], k=k, **opts)  # warm-up: kernels, allocator
        sync(device)
        t = time.perf_counter()
        result = evaluate_likelihoods(model, data, idx, k=k, **opts)
        sync(device)
        seconds = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
                    "k": k,
                    "images": len(idx),
                    "seconds": round(seconds, 2),
                    "images_per_s": round(len(idx) / seconds, 2),
                    "split_images": len(val),
                    "split_minutes": round(len(val) / (len(idx) / seconds) / 60, 2),
                    "log_px_iw_qxw_nats": round(result["log_px_iw_qxw"]["nats"], 1),
                    "torch_threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
