"""How fast `jmvae img2attr` is for a person (one photo, cold start) and for a script (a folder of photos), and
how fast `jmvae edit` is over a folder of photos against one call per photo.

    python benchmarks/cli_latency.py [--weights FILE] [--cores 2] [--reps 5] [--copies 10] [--parts cold,...]

1. Cold latency: wall time of a fresh `jmvae img2attr one.jpg` process, median of --reps runs after one warm-up
   (so the OS file cache is warm, as it is for anyone running the command twice), beside a fresh
   `python -c "import torch"` on the same machine. Target: within 1.5x of it.
2. Throughput: `jmvae img2attr FOLDER` over --copies copies of the 100 CelebA-HQ samples (1,000 photos at 256 px),
   pinned to --cores CPUs, decoding and face detection included. Target: >= 200 images/s on 2 cores. Reported
   both as photos / whole wall time and with the process's start-up (the cold latency above) taken out.
3. bf16 check: where runtime.Precision picks bf16 for batches, the probabilities it gives on the sample faces
   against fp32's (largest difference, and how many yes/no answers at 0.5 change).
4. Batch edit: `jmvae edit FOLDER --set Smiling --out-dir OUT` over the same 1,000 photos, against
   `jmvae edit PHOTO --set Smiling -o OUT` once per photo, timed on --single-calls of them and extrapolated to
   1,000. Target: >= 50 photos/s on 2 cores. Wall time and the process's CPU time (user + system) are both
   reported: on a machine shared with other work the CPU time is the steadier of the two. Also checks that the
   batch wrote the same bytes as the single calls.

Without --weights it uses the bundled model, or, while there is none, an untrained model of the default
architecture saved to a temporary file: the speed is the same, the bf16 check then says little.
"""

import argparse
import json
import os
import resource
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


def cpu_seconds() -> float:
    """User + system time of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cpus: set[int] | None, expect_ok: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of a run of `cmd`; its CPU time is left in the result's .cpu_s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    t, c = time.perf_counter(), cpu_seconds()
    p = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, preexec_fn=pin)
    dt = time.perf_counter() - t
    p.cpu_s = cpu_seconds() - c
    if expect_ok and p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
    return dt, p


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def batch_edit(py, weights, folder: Path, n: int, tmp: Path, cpus, reps: int, single_calls: int) -> dict:
    """Part 4: one `jmvae edit FOLDER --out-dir` against single calls on a sample of its photos (extrapolated)."""
    edit = [py, "-m", "jmvae_cli", "edit", "--set", "Smiling", "--weights", str(weights)]
    print(f"batch edit: load average before {load_average()} ({len(os.sched_getaffinity(0))} CPUs here)")
    walls, cpus_s = [], []
    for _ in range(reps):
        out = tmp / "edited"
        shutil.rmtree(out, ignore_errors=True)
        dt, p = timed([*edit, str(folder), "--out-dir", str(out)], cpus)
        walls.append(dt)
        cpus_s.append(p.cpu_s)
    wall, cpu = statistics.median(walls), statistics.median(cpus_s)
    written = len(list(out.iterdir()))
    sample = sorted(folder.iterdir())[:: max(1, n // single_calls)][:single_calls]
    single_walls, single_cpus, same = [], [], 0
    for photo in sample:
        dt, p = timed([*edit, str(photo), "-o", str(tmp / "single.png"), "--force"], cpus)
        single_walls.append(dt)
        single_cpus.append(p.cpu_s)
        same += (tmp / "single.png").read_bytes() == (out / f"{photo.stem}.png").read_bytes()
    single_wall, single_cpu = statistics.mean(single_walls), statistics.mean(single_cpus)
    r = {
        "photos": n, "written": written, "load_average_after": load_average(),
        "batch_wall_s": wall, "batch_cpu_s": cpu, "batch_photos_per_s": n / wall, "batch_cpu_ms_per_photo": 1e3 * cpu / n,
        "single_calls_timed": len(sample), "single_wall_s_mean": single_wall, "single_cpu_s_mean": single_cpu,
        "single_photos_per_s": 1 / single_wall, "single_1000_wall_s_extrapolated": n * single_wall,
        "same_bytes_as_single": f"{same}/{len(sample)}", "runs": {"batch": walls, "single": single_walls},
    }  # fmt: skip
    print(
        f"batch edit: {n} photos ({written} written) in {wall:.1f} s wall, {cpu:.1f} s CPU (median of {reps}) = "
        f"{n / wall:.1f} photos/s, {1e3 * cpu / n:.1f} ms CPU per photo  "
        f"[target >= 50/s: {'ok' if n / wall >= 50 else 'MISSED'}]"
    )
    print(
        f"single edits: {single_wall:.2f} s wall, {single_cpu:.2f} s CPU per call (mean of {len(sample)}) = "
        f"{1 / single_wall:.2f} photos/s; {n} calls would take ~{n * single_wall:.0f} s; batch speed-up "
        f"{n * single_wall / wall:.0f}x; same bytes as the batch: {same}/{len(sample)}; "
        f"load average after {r['load_average_after']}"
    )
    return r


def bf16_check(weights: Path, photos: list[Path]) -> dict | None:
    """Part 3: where bf16 is used for batches, its probabilities on the sample faces against fp32's."""
    import numpy as np
    import torch

    from jmvae_cli import faces, translate
    from jmvae_cli.runtime import Precision

    if Precision.choose(torch.device("cpu")).name != "bf16":
        print("bf16: not used on this CPU (fp32 batches)")
        return None
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
    print(
        f"bf16 vs fp32 on {len(crops)} faces: max |dp| {bf16['max_abs_diff']:.4f}, mean "
        f"{bf16['mean_abs_diff']:.5f}, yes/no changed {bf16['flips']} of {bf16['answers']}"
    )
    return bf16


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="model to use [default: bundled, else an untrained default one]")
    ap.add_argument("--data", type=Path, default=DATA, help="folder of face photos to copy")
    ap.add_argument("--cores", type=int, default=2, help="CPUs to pin the runs to (0: all)")
    ap.add_argument("--reps", type=int, default=5, help="cold-start repetitions")
    ap.add_argument("--throughput-reps", type=int, default=3)
    ap.add_argument("--copies", type=int, default=10, help="copies of the photos for the throughput run")
    ap.add_argument("--single-calls", type=int, default=20, help="single `jmvae edit` calls timed (part 4)")
    ap.add_argument("--parts", default="cold,throughput,bf16,edit", help="which parts to run, comma-separated")
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
        parts = set(args.parts.split(","))
        report = {"weights": str(weights), "cpus": len(cpus) if cpus else len(avail), "parts": sorted(parts)}
        one = tmp / "one.jpg"
        shutil.copy(photos[0], one)
        jmvae = [py, "-m", "jmvae_cli", "img2attr", str(one), "--weights", str(weights), "--format", "jsonl"]
        torch_only = [py, "-c", "import torch"]

        # 1. cold start, interleaved so that a busy moment on the machine hits both alike
        med_cli = None
        if "cold" in parts:
            timed(torch_only, cpus)
            timed(jmvae, cpus)
            t_torch, t_cli = [], []
            for _ in range(args.reps):
                t_torch.append(timed(torch_only, cpus)[0])
                t_cli.append(timed(jmvae, cpus)[0])
            med_torch, med_cli = statistics.median(t_torch), statistics.median(t_cli)
            ratio = med_cli / med_torch
            print(
                f"cold start: import torch {med_torch:.3f} s, jmvae img2attr one.jpg {med_cli:.3f} s "
                f"(median of {args.reps}): {ratio:.2f}x  [target <= 1.5x: {'ok' if ratio <= 1.5 else 'MISSED'}]"
            )
            report.update(
                cold_import_torch_s=med_torch,
                cold_img2attr_s=med_cli,
                ratio=ratio,
                runs={"import_torch": t_torch, "img2attr": t_cli},
            )

        # the folder of copies for parts 2 and 4
        folder = tmp / "photos"
        folder.mkdir()
        for k in range(args.copies):
            for p in photos:
                os.link(p, folder / f"{k:02d}_{p.name}") if p.stat().st_dev == folder.stat().st_dev else shutil.copy(
                    p, folder / f"{k:02d}_{p.name}"
                )
        n = args.copies * len(photos)

        # 2. throughput over the folder
        if "throughput" in parts:
            batch = [py, "-m", "jmvae_cli", "img2attr", str(folder), "--weights", str(weights), "--format", "jsonl"]
            walls, found = [], 0
            for _ in range(args.throughput_reps):
                dt, p = timed(batch, cpus, expect_ok=False)
                walls.append(dt)
                found = len(p.stdout.splitlines())
            wall = statistics.median(walls)
            per_s = n / wall
            per_s_warm = n / max(wall - med_cli, 1e-9) if med_cli is not None else None
            warm = f", {per_s_warm:.0f} images/s without start-up" if per_s_warm is not None else ""
            print(
                f"throughput: {n} photos in {wall:.2f} s (median of {args.throughput_reps}) = {per_s:.0f} "
                f"images/s{warm}; faces found in {found}/{n}  [target >= 200/s: {'ok' if per_s >= 200 else 'MISSED'}]"
            )
            report.update(
                throughput_images=n,
                throughput_wall_s=wall,
                images_per_s=per_s,
                images_per_s_without_startup=per_s_warm,
                faces_found=found,
                throughput_runs=walls,
            )

        # 3. bf16 against fp32 on the sample faces
        if "bf16" in parts:
            report["bf16"] = bf16_check(weights, photos)

        # 4. a batch edit against single edits
        if "edit" in parts:
            report["batch_edit"] = batch_edit(
                py, weights, folder, n, tmp, cpus, args.throughput_reps, args.single_calls
            )

        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
