"""The paper's Table 1 at a budget this machine affords: train JMVAE-kl, JMVAE-zero, VAE, CVAE and CMMA on the same
data for the same wall time and seed, then estimate each one's test log-likelihoods on the same images.

    python benchmarks/table1.py [--data DIR ...] [--max-images 6000] [--time-limit 4] [--k 100] [--eval-images 500]

Writes the section "## Likelihoods (Table 1)" of docs/results.md (other sections are kept) and every number,
per model, to OUT_DIR/table1.json. --reuse evaluates the models already trained in --out-dir instead of training.
Marginal log p(x) is set against the VAE's, conditional log p(x|w) against CVAE's and CMMA's, as in the paper;
since every model sees the same images, differences come with paired standard errors.
"""

import argparse
import json
import math
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._results import write_section  # noqa: E402
from jmvae_cli.checkpoint import load_model  # noqa: E402
from jmvae_cli.data import load_data  # noqa: E402
from jmvae_cli.likelihood import (  # noqa: E402
    ATTRIBUTE_KEYS,
    attribute_log_likelihoods,
    per_image_log_likelihoods,
    summarize,
)
from jmvae_cli.runtime import pick_device  # noqa: E402
from jmvae_cli.train import MODEL_FILE, TrainOptions, train  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "celeba-hq-64"
RESULTS = ROOT / "docs" / "results.md"
HEADING = "## Likelihoods (Table 1)"
# name -> (TrainOptions.model, TrainOptions.objective), in the paper's row order
MODELS = {
    "vae": ("vae", "jmvae-kl"),
    "cvae": ("cvae", "jmvae-kl"),
    "cmma": ("cmma", "jmvae-kl"),
    "jmvae-zero": ("jmvae", "jmvae-zero"),
    "jmvae-kl": ("jmvae", "jmvae-kl"),
}
LABELS = {"vae": "VAE", "cvae": "CVAE", "cmma": "CMMA", "jmvae-zero": "JMVAE-zero", "jmvae-kl": "JMVAE-kl"}
# table column -> (heading, key per model); a model without the key gets a dash
COLUMNS = {
    "px_qx": ("log p(x), q(z\\|x)", {"vae": "log_px_iw_qx", "jmvae-zero": "log_px_iw_qx", "jmvae-kl": "log_px_iw_qx"}),
    "px_qxw": ("log p(x), q(z\\|x,w)", {"jmvae-zero": "log_px_iw_qxw", "jmvae-kl": "log_px_iw_qxw"}),
    "pxw_bound": ("log p(x\\|w), bound", {"cvae": "log_px_given_w_iw_qxw", "cmma": "log_px_given_w_iw_qx"}),
    "pxw_paper": (
        "log p(x\\|w), Eq. 4, N_w prior samples",
        {"jmvae-zero": "log_px_given_w_paper", "jmvae-kl": "log_px_given_w_paper"},
    ),
    "pxw_iw": (
        "log p(x\\|w), Eq. 4, q(z\\|w) IS",
        {"jmvae-zero": "log_px_given_w_iw", "jmvae-kl": "log_px_given_w_iw"},
    ),
    "pxw_mix": (
        "log p(x\\|w), Eq. 4, mixture IS",
        {"jmvae-zero": "log_px_given_w_mix", "jmvae-kl": "log_px_given_w_mix"},
    ),
}
# paired comparisons (model, key) - (baseline, key): the paper's claims
COMPARISONS = [
    (("jmvae-kl", "log_px_iw_qx"), ("vae", "log_px_iw_qx")),
    (("jmvae-kl", "log_px_iw_qxw"), ("vae", "log_px_iw_qx")),
    (("jmvae-zero", "log_px_iw_qx"), ("vae", "log_px_iw_qx")),
    (("jmvae-zero", "log_px_iw_qxw"), ("vae", "log_px_iw_qx")),
    (("jmvae-kl", "log_px_given_w_mix"), ("cvae", "log_px_given_w_iw_qxw")),
    (("jmvae-kl", "log_px_given_w_mix"), ("cmma", "log_px_given_w_iw_qx")),
    (("jmvae-kl", "log_px_given_w_paper"), ("cvae", "log_px_given_w_iw_qxw")),
    (("jmvae-kl", "log_px_given_w_paper"), ("cmma", "log_px_given_w_iw_qx")),
    (("jmvae-zero", "log_px_given_w_mix"), ("cvae", "log_px_given_w_iw_qxw")),
    (("jmvae-zero", "log_px_given_w_mix"), ("cmma", "log_px_given_w_iw_qx")),
    (("cvae", "log_px_given_w_iw_qxw"), ("cmma", "log_px_given_w_iw_qx")),
]
PW_KEYS = ("log_pw_prior_nw", "log_pw_iw_qw", "log_pw_iw_mix")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, action="append", help=f"data folder(s) (default {DATA})")
    p.add_argument("--max-images", type=int, default=6000, help="images used in all (train + validation)")
    p.add_argument(
        "--time-limit",
        type=float,
        default=4.0,
        help="training minutes per model; 0: none, --epochs alone sets the budget (a fairer one on a "
        "machine that other jobs share)",
    )
    p.add_argument("--epochs", type=int, default=100, help="training epochs per model, if the time limit allows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    p.add_argument("--k", type=int, default=100, help="importance samples per image")
    p.add_argument("--nw", type=int, default=10, help="prior samples for the paper's log p(w)")
    p.add_argument("--kw", type=int, default=1000, help="samples for the q(z|w) and mixture estimates of log p(w)")
    p.add_argument(
        "--reference-samples",
        type=int,
        default=10_000,
        help="samples for each log p(w) estimate again, to see how far the others are from converged",
    )
    p.add_argument("--eval-images", type=int, default=500, help="validation images evaluated (the first ones)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--batch-size", type=int, default=50, help="images per evaluation batch")
    p.add_argument("--decode-batch", type=int, default=1000, help="images per decoder pass in evaluation")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "table1")
    p.add_argument("--reuse", action="store_true", help="evaluate the models already trained in --out-dir")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file whose Table 1 section is rewritten")
    p.add_argument("--quiet", action="store_true", help="no training progress bars")
    p.add_argument("--note", default="", help="a sentence for the results section (e.g. what else ran meanwhile)")
    args = p.parse_args()
    args.data = args.data or [DATA]
    args.models = args.models.split(",")
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models: {', '.join(sorted(unknown))}")
    return args


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, PyTorch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, PyTorch {torch.__version__}"


def cell(values: np.ndarray | None, dims: int) -> tuple[str, str]:
    """(nats mean ± se, bits/dim mean ± se) as table cells."""
    if values is None:
        return "—", "—"
    s = summarize(values, dims)
    return f"{s['nats']:.1f} ± {s['nats_se']:.1f}", f"{s['bits_per_dim']:.4f} ± {s['bits_per_dim_se']:.4f}"


def verdict(d: np.ndarray) -> tuple[float, float, str]:
    """Mean and paired standard error of per-image differences, and what they say at two standard errors."""
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    word = "better" if mean > 2 * se else "worse" if mean < -2 * se else "no clear difference"
    return mean, se, word


def markdown(args, runs: dict, n_eval: int, image_dims: int, n_attrs: int, device: torch.device, data_desc: str) -> str:
    cmd = "python benchmarks/table1.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    precisions = sorted({run["precision"] for run in runs.values()})
    budget = (
        f"each model trained for {args.time_limit:g} minutes of wall time (at most {args.epochs} epochs)"
        if args.time_limit
        else f"each model trained for {args.epochs} epochs"
    )
    headings = " | ".join(h for h, _ in COLUMNS.values())
    lines = [
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}).",
        "",
        f"- Data: {data_desc}. Evaluated on the first {n_eval} images of the {args.split} split: the same images "
        "and the same random seed for every model.",
        f"- Budget: {budget}, seed {args.seed}, the default architecture and optimiser of `jmvae train` "
        f"({'/'.join(precisions)} training), one model after another on {hardware(device)}. Evaluation in fp32.",
        f"- Estimators (`jmvae_cli/likelihood.py`): K = {args.k} importance samples per image for every bound; "
        f"log p(w) from N_w = {args.nw} prior samples as in the paper, and from K_w = {args.kw} samples of q(z|w) "
        "and of the mixture (q(z|w) + p(z)) / 2 (defensive importance sampling). Nats per image (higher is better), "
        f"mean ± standard error over the images; bits/dim = -nats / ({image_dims} ln 2) (lower is better).",
        "- The log p(x) columns and CVAE's and CMMA's log p(x|w) are importance-weighted lower bounds (Eq. 5). "
        "JMVAE's log p(x|w) (Eq. 4) is a bound on log p(x,w) minus an estimate of log p(w), so not a bound: an "
        "underestimate of log p(w) raises it. Every log p(w) estimate is low on average, the noisier the lower; "
        "the table of log p(w) below shows by how much.",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
        f"| model | train steps (epochs) | {headings} |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, run in runs.items():
        cells = [cell(run["values"].get(keys.get(name)), image_dims)[0] for _, keys in COLUMNS.values()]
        lines.append(f"| {LABELS[name]} | {run['step']} ({run['epochs']:.2f}) | " + " | ".join(cells) + " |")
    lines += ["", "The same in bits per dimension:", "", f"| model | {headings} |", "|---|" + "---|" * len(COLUMNS)]
    for name, run in runs.items():
        cells = [cell(run["values"].get(keys.get(name)), image_dims)[1] for _, keys in COLUMNS.values()]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "Paired differences on the same images (nats per image, first minus second; 'better' and "
        "'worse' at two paired standard errors):",
        "",
        "| comparison | difference | paired s.e. | first model is |",
        "|---|---|---|---|",
    ]
    for (a, ka), (b, kb) in COMPARISONS:
        if a in runs and b in runs:
            mean, se, word = verdict(runs[a]["values"][ka] - runs[b]["values"][kb])
            lines.append(f"| {LABELS[a]} `{ka}` − {LABELS[b]} `{kb}` | {mean:.1f} | {se:.1f} | {word} |")

    jm = [n for n in ("jmvae-zero", "jmvae-kl") if n in runs]
    if jm:
        keys = ("log_px_elbo_qx", "log_px_elbo_qxw", "log_pxw_elbo", "log_pxw_iw")
        lines += [
            "",
            "JMVAE's ELBOs (from the same K samples as the bounds) and its bound on log p(x,w), nats:",
            "",
            "| model | log p(x) ELBO, q(z\\|x) | log p(x) ELBO, q(z\\|x,w) | log p(x,w) ELBO | log p(x,w) IW |",
            "|---|---|---|---|---|",
        ]
        for n in jm:
            lines.append(
                f"| {LABELS[n]} | " + " | ".join(cell(runs[n]["values"][key], image_dims)[0] for key in keys) + " |"
            )
        r = args.reference_samples
        lines += [
            "",
            f"JMVAE's log p(w) over the {n_attrs} attributes (nats), as used above and again with {r} "
            "samples each. Each estimate is low on average and rises towards log p(w) as its samples grow, so "
            "the highest is the closest (up to noise).",
            "",
            f"| model | prior, N_w = {args.nw} (paper) | q(z\\|w), {args.kw} | mixture, {args.kw} | "
            f"prior, {r} | q(z\\|w), {r} | mixture, {r} |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in jm:
            cells = [cell(runs[n]["values"][key], n_attrs)[0] for key in PW_KEYS]
            cells += [cell(runs[n]["reference_pw"][key], n_attrs)[0] for key in PW_KEYS]
            lines.append(f"| {LABELS[n]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Evaluation time per model: "
        + ", ".join(f"{LABELS[n]} {r['eval_seconds']:.0f} s" for n, r in runs.items())
        + "; training time: "
        + ", ".join(f"{LABELS[n]} {r['train_seconds']:.0f} s" for n, r in runs.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def reference_log_pw(model, data, idx: np.ndarray, args, device: torch.device) -> dict[str, np.ndarray]:
    """The three log p(w) estimates again with --reference-samples samples each: {key: (N,)}."""
    gen = torch.Generator(device).manual_seed(args.seed + 1)  # samples independent of the evaluation's
    per_batch: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(idx), args.batch_size):
        w = torch.from_numpy(data.attrs[idx[start : start + args.batch_size]]).to(device)  # (B, A)
        est = attribute_log_likelihoods(
            model,
            w,
            nw=args.reference_samples,
            kw=args.reference_samples,
            decode_batch=args.decode_batch,
            generator=gen,
        )
        for key, v in est.items():
            per_batch.setdefault(key, []).append(v.double().cpu().numpy())
    return {key: np.concatenate(v) for key, v in per_batch.items()}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    runs: dict[str, dict] = {}
    for name in [n for n in MODELS if n in args.models]:
        out = args.out_dir / name
        if not args.reuse:
            model, objective = MODELS[name]
            t = time.monotonic()
            train(
                TrainOptions(
                    data=args.data,
                    out=out,
                    epochs=args.epochs,
                    model=model,
                    objective=objective,
                    device=args.device,
                    seed=args.seed,
                    max_images=args.max_images,
                    time_limit=args.time_limit or None,
                    progress=not args.quiet,
                )
            )
            print(f"{name}: trained in {time.monotonic() - t:.0f} s", flush=True)
        loaded = load_model(out / MODEL_FILE, device)
        steps_per_epoch = loaded.meta["data"]["train_images"] // loaded.meta["train"]["batch_size"]
        runs[name] = {
            "step": loaded.meta["step"],
            "epochs": loaded.meta["step"] / steps_per_epoch,
            "train_seconds": loaded.meta["train_seconds"],
            "precision": loaded.meta["metrics"]["precision"],
            "model": loaded.model,
        }

    data = load_data(args.data, max_images=args.max_images, progress=False)
    idx = data.indices(args.split)[: args.eval_images]
    for name, run in runs.items():
        t = time.monotonic()
        model = run.pop("model")
        run["values"] = per_image_log_likelihoods(
            model,
            data,
            idx,
            k=args.k,
            nw=args.nw,
            kw=args.kw,
            batch_size=args.batch_size,
            decode_batch=args.decode_batch,
            device=device,
            seed=args.seed,
        )
        run["eval_seconds"] = time.monotonic() - t
        print(f"{name}: evaluated {len(idx)} images in {run['eval_seconds']:.0f} s", flush=True)
        if model.models_attributes:  # it has log p(w) estimates to check against more samples
            run["reference_pw"] = reference_log_pw(model, data, idx, args, device)

    image_dims, n_attrs = 3 * data.images.shape[1] ** 2, len(data.attr_names)
    data_desc = (
        f"{', '.join(str(Path(d).name) for d in args.data)}, --max-images {args.max_images}: "
        f"{len(data.indices('train'))} training and {len(data.indices('val'))} validation images, "
        f"{n_attrs} attributes, 64x64"
    )
    write_section(args.results, HEADING, markdown(args, runs, len(idx), image_dims, n_attrs, device, data_desc))
    summary = {
        name: {
            **{k: v for k, v in run.items() if k not in ("values", "reference_pw")},
            "bounds": {
                k: summarize(v, n_attrs if k in ATTRIBUTE_KEYS else image_dims) for k, v in run["values"].items()
            },
            "log_pw_reference": {k: summarize(v, n_attrs) for k, v in run.get("reference_pw", {}).items()},
        }
        for name, run in runs.items()
    }
    (args.out_dir / "table1.json").write_text(
        json.dumps({"args": vars(args), "models": summary}, indent=2, default=str) + "\n"
    )
    print(f"wrote {args.results} and {args.out_dir / 'table1.json'}")


if __name__ == "__main__":
    main()
