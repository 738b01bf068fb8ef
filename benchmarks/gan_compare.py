"""JMVAE-GAN against JMVAE on the validation split: is the adversarial term worth it?

    python benchmarks/gan_compare.py --data ../shared/datasets/celeba-hq-64 --data ../shared/datasets/celeba
        [--default weights/default.safetensors] [--gan weights/jmvae-gan.safetensors]
        [--classifier weights/classifier.safetensors] [--max-images N] [--device auto] [--seed 0]
        [--grid docs/gan_grid.png] [--results docs/results.md] [--notes FILE] [--json FILE]

For each model, from the attribute vectors of the validation faces:
  sharpness   high-frequency energy (mean squared 3x3 Laplacian response) of the generated faces divided by the
              same on the real validation faces: 1 is as sharp as the photos, a VAE's blurry means sit far below
  coherence   the bundled attribute classifier's agreement with the requested attributes (mean accuracy and
              balanced accuracy), beside its own scores on the real faces (the ceiling)
  Fréchet     distance between Gaussians fitted to the classifier's features (classifier.features, 512-d) of the
              generated and the real faces: FID's formula in a face-attribute feature space instead of Inception's;
              the distance between two halves of the real faces is the floor that sampling noise alone gives
  img2attr    accuracy of p(w|z) at the mean of q(z|x), thresholded at 0.5, against the labels
Generated faces are the decoded means of q(z|w) (what attr2img draws first) and samples z = mean + sigma * eps,
eps ~ N(0, I) (the same eps for both models), each rounded to 8-bit pixels as attr2img writes them.

Writes a grid (rows: real | JMVAE | JMVAE-GAN means, then both models' samples, for the same attribute vectors)
and the section `## JMVAE-GAN against JMVAE` of docs/results.md (re-read just before writing; other sections are
left alone; --notes adds a markdown file's text, such as the interpretation, to the section), and prints the
numbers as JSON on stdout.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._results import write_section  # noqa: E402
from jmvae_cli import figures, images, quality  # noqa: E402
from jmvae_cli.checkpoint import load_model  # noqa: E402
from jmvae_cli.console import console  # noqa: E402
from jmvae_cli.data import load_data  # noqa: E402
from jmvae_cli.model import output_to_pixels, pixels_to_input  # noqa: E402
from jmvae_cli.runtime import Precision, pick_device  # noqa: E402

SECTION = "## JMVAE-GAN against JMVAE"
BATCH = 250


def batches(n: int):
    for start in range(0, n, BATCH):
        yield slice(start, start + BATCH)


@torch.inference_mode()
def generate(model, w: np.ndarray, eps: torch.Tensor | None, device) -> np.ndarray:
    """Faces for attribute vectors w (N, A): the decoded mean of q(z|w), or mean + sigma * eps -> (N, 64, 64, 3) uint8."""
    out = []
    for sl in batches(len(w)):
        q = model.q_w(torch.from_numpy(np.asarray(w[sl], np.float32)).to(device))  # (b, Z)
        z = q.mu if eps is None else q.mu + torch.exp(0.5 * q.logvar) * eps[sl].to(device)
        out.append(output_to_pixels(model.images_from_z(z)).cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def classify(clf: quality.Classifier, faces_u8: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """-> (recognised attributes (N, A) {0, 1}, classifier features (N, F))."""
    seen, feats = [], []
    for sl in batches(len(faces_u8)):
        x = pixels_to_input(torch.from_numpy(np.ascontiguousarray(faces_u8[sl])).to(device))  # (b, 3, 64, 64)
        seen.append((clf.probs(x) >= 0.5).cpu().numpy())
        feats.append(clf.features(x).cpu().numpy())
    return np.concatenate(seen), np.concatenate(feats)


def energy(faces_u8: np.ndarray) -> float:
    """Laplacian energy over a whole set, batch by batch (every image has as many pixels, so the mean of
    batch means weighted by batch size is the set's mean)."""
    total = 0.0
    for sl in batches(len(faces_u8)):
        x = pixels_to_input(torch.from_numpy(np.ascontiguousarray(faces_u8[sl])))
        total += quality.laplacian_energy(x) * len(x)
    return total / len(faces_u8)


@torch.inference_mode()
def img2attr(model, faces_u8: np.ndarray, device) -> np.ndarray:
    out = []
    for sl in batches(len(faces_u8)):
        x = pixels_to_input(torch.from_numpy(np.ascontiguousarray(faces_u8[sl])).to(device))
        out.append((model.attrs_from_images(x) >= 0.5).cpu().numpy())
    return np.concatenate(out)


def mean_scores(pred: np.ndarray, target: np.ndarray) -> dict:
    return {k: float(v.mean()) for k, v in quality.binary_scores(pred, target).items()}


def measure(
    path: Path, real: np.ndarray, attrs: np.ndarray, clf, real_feats, real_energy, eps, device
) -> tuple[dict, dict]:
    loaded = load_model(path, device)
    model = loaded.model.to(memory_format=Precision(device, None).memory_format)  # the convolutions' fast layout
    meta = loaded.meta
    train = meta.get("train", {})
    row = {
        "weights": str(path),
        "step": meta.get("step"),
        "epochs_done": meta.get("epochs_done"),
        "train_seconds": meta.get("train_seconds"),
        "time_limit_min": train.get("time_limit"),
        "gan": train.get("gan"),
        "gan_weight": train.get("gan_weight") if train.get("gan") else None,
        "alpha": model.cfg.alpha,
        "img2attr": mean_scores(img2attr(model, real, device), attrs),
    }
    faces = {}
    for kind, e in (("mean", None), ("sample", eps)):
        gen = generate(model, attrs, e, device)
        seen, feats = classify(clf, gen, device)
        row[kind] = {
            "sharpness": energy(gen) / real_energy,
            "coherence": mean_scores(seen, attrs),
            "frechet": quality.frechet_distance(feats, real_feats),
        }
        faces[kind] = gen
    return row, faces


def markdown(report: dict, command: str, notes: str) -> str:
    d, g = report["default"], report["gan"]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def line(label, a, b, spec, better):
        mark = ""
        if a is not None and b is not None and a != b:
            mark = "JMVAE" if better(a, b) else "JMVAE-GAN"
        return f"| {label.replace('|', chr(92) + '|')} | {fmt(a, spec)} | {fmt(b, spec)} | {mark} |"  # | inside a cell

    higher = lambda a, b: a > b  # noqa: E731
    lower = lambda a, b: a < b  # noqa: E731
    nearer_one = lambda a, b: abs(np.log(a)) < abs(np.log(b))  # noqa: E731
    rows = [
        "| | JMVAE | JMVAE-GAN | better |",
        "|---|---:|---:|---|",
        f"| weights | `{Path(d['weights']).name}` | `{Path(g['weights']).name}` | |",
        f"| training steps / epochs / seconds (time limit) | {d['step']:,} / {d['epochs_done']} / "
        f"{d['train_seconds']:.0f} ({fmt(d['time_limit_min'], 'g')} min) | {g['step']:,} / {g['epochs_done']} / "
        f"{g['train_seconds']:.0f} ({fmt(g['time_limit_min'], 'g')} min) | |",
        f"| alpha (JMVAE-kl) / adversarial weight | {d['alpha']:g} / - | {g['alpha']:g} / {fmt(g['gan_weight'], 'g')} | |",
    ]
    for kind, what in (("mean", "attr→img means"), ("sample", "attr→img samples (ζ = 1)")):
        rows += [
            line(f"sharpness of {what} (÷ real; 1 = as sharp as photos)", d[kind]["sharpness"], g[kind]["sharpness"],
                 ".3f", nearer_one),
            line(f"coherence of {what}: mean accuracy", d[kind]["coherence"]["accuracy"],
                 g[kind]["coherence"]["accuracy"], ".4f", higher),
            line(f"coherence of {what}: balanced accuracy", d[kind]["coherence"]["balanced_accuracy"],
                 g[kind]["coherence"]["balanced_accuracy"], ".4f", higher),
            line(f"Fréchet distance of {what} to real faces", d[kind]["frechet"], g[kind]["frechet"], ".2f", lower),
        ]  # fmt: skip
    rows += [
        line("img→attr through q(z|x): mean accuracy", d["img2attr"]["accuracy"], g["img2attr"]["accuracy"], ".4f",
             higher),
        line("img→attr through q(z|x): balanced accuracy", d["img2attr"]["balanced_accuracy"],
             g["img2attr"]["balanced_accuracy"], ".4f", higher),
    ]  # fmt: skip
    ref = report["reference"]
    return "\n".join(
        [
            f"Measured by `{command}` on {report['images']:,} validation faces ({report['device']}, "
            f"{report['seconds']:.0f} s, {time.strftime('%Y-%m-%d', time.gmtime())}).",
            "",
            *rows,
            "",
            f"References: the classifier on the real validation faces scores mean accuracy "
            f"{ref['classifier_on_real']['accuracy']:.4f} and balanced accuracy "
            f"{ref['classifier_on_real']['balanced_accuracy']:.4f} (the ceiling of coherence); the Fréchet distance "
            f"between two random halves of the real faces is {ref['frechet_real_halves']:.2f} (what sampling alone "
            "gives; with half as many faces per set as the comparisons above, whose floor is therefore lower).",
            "",
            "Sharpness is the mean squared response of a 3x3 Laplacian filter on the generated faces divided by the "
            "same on the real ones; coherence is the bundled attribute classifier's agreement with the requested "
            "attributes; the Fréchet distance is FID's formula on the classifier's 512-d features. Means are the "
            "decoded means of q(z|w), samples use z = mean + σ·ε with the same ε for both models.",
            "",
            f"![real | JMVAE | JMVAE-GAN]({report['grid_name']})",
            "",
            "Rows: real validation faces; JMVAE and JMVAE-GAN attr→img, the decoded mean of q(z|w); the same two "
            "with one sample z = mean + σ·ε each (the same ε for both). Each column comes from the real face's "
            "attribute labels.",
            *(["", notes.strip()] if notes.strip() else []),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True, help="a data folder (repeatable)")
    ap.add_argument("--default", type=Path, default=ROOT / "weights" / "default.safetensors")
    ap.add_argument("--gan", type=Path, default=ROOT / "weights" / "jmvae-gan.safetensors")
    ap.add_argument("--classifier", type=Path, default=ROOT / "weights" / "classifier.safetensors")
    ap.add_argument("--max-images", type=int, default=None, help="a seeded random subset of the validation split")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=Path, default=ROOT / "docs" / "gan_grid.png")
    ap.add_argument("--grid-faces", type=int, default=10)
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md", help="'-' writes no results file")
    ap.add_argument("--notes", type=Path, default=None, help="markdown appended to the results section")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    names = load_model(args.default, "cpu").attr_names
    data = quality.align_attributes(load_data(args.data, progress=console.is_terminal), names)
    idx = data.indices("val")
    if args.max_images is not None and args.max_images < len(idx):
        idx = np.sort(np.random.default_rng(args.seed).choice(idx, args.max_images, replace=False))
    real, attrs = np.asarray(data.images[idx]), data.attrs[idx]  # (N, 64, 64, 3), (N, A)
    clf = quality.load_classifier(args.classifier, names, device)
    real_seen, real_feats = classify(clf, real, device)
    halves = np.random.default_rng(args.seed).permutation(len(real))
    h = len(real) // 2
    reference = {
        "classifier_on_real": mean_scores(real_seen, attrs),
        "frechet_real_halves": quality.frechet_distance(real_feats[halves[:h]], real_feats[halves[h:]]),
    }
    real_energy = energy(real)
    latent = load_model(args.default, "cpu").model.cfg.latent_dim
    eps = torch.randn(len(real), latent, generator=torch.Generator().manual_seed(args.seed))  # (N, Z), shared

    report = {"images": int(len(idx)), "device": str(device), "reference": reference}
    generated = {}
    for key, path in (("default", args.default), ("gan", args.gan)):
        console.print(f"measuring {path}", highlight=False)
        report[key], generated[key] = measure(path, real, attrs, clf, real_feats, real_energy, eps, device)
    report["seconds"] = time.perf_counter() - t0

    cols = np.random.default_rng(args.seed).choice(len(real), min(args.grid_faces, len(real)), replace=False)
    rows = [list(real[cols])] + [
        list(generated[m][kind][cols]) for kind in ("mean", "sample") for m in ("default", "gan")
    ]
    labels = ["real", "JMVAE", "JMVAE-GAN", "JMVAE sample", "GAN sample"]
    sheet = figures.tile_sheet(rows, None, 96, row_labels=labels)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    images.write_image(sheet, args.grid)
    report["grid_name"] = args.grid.name

    command = "python benchmarks/gan_compare.py " + " ".join(f"--data {d}" for d in args.data)
    if args.max_images:
        command += f" --max-images {args.max_images}"
    if str(args.results) != "-":
        notes = args.notes.read_text() if args.notes else ""
        write_section(args.results, SECTION, markdown(report, command, notes))
        console.print(f"wrote {args.results} ({SECTION})", highlight=False)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
