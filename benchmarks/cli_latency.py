"""How fast `jmvae img2attr` is for a person (one photo, cold start) and for a script (a folder of photos).

    python benchmarks/cli_latency.py [--weights FILE] [--cores 2] [--reps 5] [--copies 10]

1. Cold latency: wall time of a fresh `jmvae img2attr one.jpg` process, median of --reps runs after one warm-up
   (so the OS file cache is warm, as it is for anyone running the command twice), beside a fresh
   `python -c "import torch"` on the same machine. Target: within 1.5x of it.
2. Throughput: `jmvae img2attr FOLDER` over --copies copies of the 100 CelebA-HQ samples (1,000 photos at 256 px),
   pinned to --cores CPUs, decoding and face detection included. Target: >= 200 images/s on 2 cores. Reported
   both as photos / whole wall time and with the process's start-up (the cold latency above) taken out.
3. bf16 check: where runtime.Precision picks bf16 for batches, the probabilities it gives on the sample faces
   against fp32's (largest difference, and how many yes/no answers at 0.5 change).

Without --weights it uses the bundled model, or, while there is none, an untrained model of the default
architecture saved to a temporary file: the speed is the same, the bf16 check then says little.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "celeba-hq-256-sample"
sys.path.insert(0, str(ROOT))

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def untrained_default_model(folder: Path) -> Path:
    from jmvae_cli.checkpoint import save_model
    from jmvae_cli.model import JMVAE, JMVAEConfig

    path = folder / "untrained-default.safetensors"
    meta = {"attr_names": CELEBA_ATTRS, "preprocess": {"size": 64, "celeba_crop": 148 / 178}}
    save_model(path, JMVAE(JMVAEConfig(n_attrs=len(CELEBA_ATTRS))).eval(), meta)
    return path


def timed(cmd: list[str], cpus: set[int] | None, expect_ok: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, preexec_fn=pin)
    dt = time.perf_counter() - t
    if expect_ok and p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
    return dt, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="model to use [default: bundled, else an untrained default one]")
    ap.add_argument("--data", type=Path, default=DATA, help="folder of face photos to copy")
    ap.add_argument("--cores", type=int, default=2, help="CPUs to pin the runs to (0: all)")
    ap.add_argument("--reps", type=int, default=5, help="cold-start repetitions")
    ap.add_argument("--throughput-reps", type=int, default=3)
    ap.add_argument("--copies", type=int, default=10, help="copies of the photos for the throughput run")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()

    photos = sorted(p for p in args.data.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        sys.exit(f"no photos in {args.data}")
    avail = sorted(os.sched_getaffinity(0))
    cpus = set(avail[: args.cores]) if args.cores else None
    if args.cores and len(avail) < args.cores:
        print(f"note: only {len(avail)} CPUs here, pinning to those")
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="jmvae-bench-"))
    try:
        from jmvae_cli.checkpoint import default_weights

        weights = args.weights or (default_weights() if default_weights().exists() else untrained_default_model(tmp))
        print(f"weights {weights}; {len(cpus) if cpus else len(avail)} CPUs; python {py}")
        one = tmp / "one.jpg"
        shutil.copy(photos[0], one)
        jmvae = [py, "-m", "jmvae_cli", "img2attr", str(one), "--weights", str(weights), "--format", "jsonl"]
        torch_only = [py, "-c", "import torch"]

        # 1. cold start, interleaved so that a busy moment on the machine hits both alike
        timed(torch_only, cpus)
        timed(jmvae, cpus)
        t_torch, t_cli = [], []
        for _ in range(args.reps):
            t_torch.append(timed(torch_only, cpus)[0])
            t_cli.append(timed(jmvae, cpus)[0])
        med_torch, med_cli = statistics.median(t_torch), statistics.median(t_cli)
        ratio = med_cli / med_torch
        print(f"cold start: import torch {med_torch:.3f} s, jmvae img2attr one.jpg {med_cli:.3f} s "
              f"(median of {args.reps}): {ratio:.2f}x  [target <= 1.5x: {'ok' if ratio <= 1.5 else 'MISSED'}]")

        # 2. throughput over a folder of copies
        folder = tmp / "photos"
        folder.mkdir()
        for k in range(args.copies):
            for p in photos:
                os.link(p, folder / f"{k:02d}_{p.name}") if p.stat().st_dev == folder.stat().st_dev else shutil.copy(
                    p, folder / f"{k:02d}_{p.name}"
                )
        n = args.copies * len(photos)
        batch = [py, "-m", "jmvae_cli", "img2attr", str(folder), "--weights", str(weights), "--format", "jsonl"]
        walls, found = [], 0
        for _ in range(args.throughput_reps):
            dt, p = timed(batch, cpus, expect_ok=False)
            walls.append(dt)
            found = len(p.stdout.splitlines())
        wall = statistics.median(walls)
        per_s, per_s_warm = n / wall, n / max(wall - med_cli, 1e-9)
        print(f"throughput: {n} photos in {wall:.2f} s (median of {args.throughput_reps}) = {per_s:.0f} images/s, "
              f"{per_s_warm:.0f} images/s without start-up; faces found in {found}/{n}  "
              f"[target >= 200/s: {'ok' if per_s >= 200 else 'MISSED'}]")

        # 3. bf16 against fp32 on the sample faces
        import numpy as np
        import torch

        from jmvae_cli import faces, translate
        from jmvae_cli.runtime import Precision

        bf16 = None
        if Precision.choose(torch.device("cpu")).name == "bf16":
            crops = []
            for p in photos:
                try:
                    crops.append(faces.load_faces(p, str(p))[1][0].crop)
                except Exception:
                    pass
            crops = np.stack(crops)
            a = translate.infer_attributes(translate.Translator.from_weights(weights, "cpu", "fp32"), crops)
            b = translate.infer_attributes(translate.Translator.from_weights(weights, "cpu", "bf16"), crops)
            bf16 = {
                "max_abs_diff": float(np.abs(a - b).max()),
                "mean_abs_diff": float(np.abs(a - b).mean()),
                "flips": int(((a >= 0.5) != (b >= 0.5)).sum()),
                "answers": int(a.size),
            }
            print(f"bf16 vs fp32 on {len(crops)} faces: max |dp| {bf16['max_abs_diff']:.4f}, mean "
                  f"{bf16['mean_abs_diff']:.5f}, yes/no changed {bf16['flips']} of {bf16['answers']}")
        else:
            print("bf16: not used on this CPU (fp32 batches)")

        if args.json:
            args.json.write_text(json.dumps({
                "weights": str(weights), "cpus": len(cpus) if cpus else len(avail),
                "cold_import_torch_s": med_torch, "cold_img2attr_s": med_cli, "ratio": ratio,
                "throughput_images": n, "throughput_wall_s": wall, "images_per_s": per_s,
                "images_per_s_without_startup": per_s_warm, "faces_found": found, "bf16": bf16,
                "runs": {"import_torch": t_torch, "img2attr": t_cli, "batch": walls},
            }, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
