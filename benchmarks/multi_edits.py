"""Two attributes changed in one edit (`jmvae edit --set Smiling --unset Eyeglasses`): does each change still show,
and what does the pair cost the rest of the face, against each change made alone on the same faces?

For every pair, validation faces whose labels hold neither target yet (at most --faces of them) are edited three
ways with the model's default rule and calibrated strengths: the first change alone, the second alone, both
together. The bundled classifier judges the 8-bit results: each target seen, both seen, the other 38 attributes
kept as it read them before, |delta| per 8-bit value.

    python -m benchmarks.multi_edits                   # table on stderr, section in docs/results.md
    python -m benchmarks.multi_edits --faces 100 --no-write
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._results import write_section
from jmvae_cli import attributes, editing, quality
from jmvae_cli.checkpoint import load_model
from jmvae_cli.data import Preprocess, load_data
from jmvae_cli.model import pixels_to_input

ROOT = Path(__file__).resolve().parents[1]
DATA = ["../shared/datasets/celeba-hq-64", "../shared/datasets/celeba"]
# what people combine first (the README's example leads), with the 13 AttGAN/STGAN attributes among them
PAIRS = (
    ("+Smiling", "-Eyeglasses"),
    ("+Eyeglasses", "+Smiling"),
    ("+Blond_Hair", "+Bangs"),
    ("-Young", "+Eyeglasses"),
    ("-Male", "+Blond_Hair"),
    ("+Mouth_Slightly_Open", "+Pale_Skin"),
)
BATCH = 128


def parse(spec: str, names: list[str]) -> tuple[int, bool]:
    return attributes.attr_index(spec[1:], names), spec[0] == "+"


def score(model, judge, x, before, changes: dict[int, float], pair: tuple[int, int]) -> np.ndarray:
    """Per face: first target seen, second seen, others kept (share of the 38), |delta|; (n, 4)."""
    out = []
    (i, on_i), (j, on_j) = pair
    others = torch.ones(before.shape[1], dtype=torch.bool)
    others[[i, j]] = False
    for k in range(0, len(x), BATCH):
        xb = x[k : k + BATCH]
        e = editing.edit(model, xb, changes)
        written = quality.as_written(e.result)
        with torch.inference_mode():
            after = attributes.present(judge.probs(written))  # (b, A)
        kept = (after[:, others] == before[k : k + BATCH][:, others]).float().mean(1)
        delta = ((written - xb).abs() * 127.5).mean((1, 2, 3))
        out.append(torch.stack([after[:, i] == on_i, after[:, j] == on_j, kept, delta], 1).float())
    return torch.cat(out).numpy()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(ROOT / "weights" / "default.safetensors"))
    p.add_argument("--data", nargs="+", default=DATA)
    p.add_argument("--faces", type=int, default=300, help="faces per pair at most")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/results.md alone")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.time()
    loaded = load_model(args.weights, "cpu")
    model, names = loaded.model.eval(), loaded.attr_names
    pre = Preprocess.from_dict(loaded.meta.get("preprocess") or {"size": model.cfg.image_size})
    data = quality.align_attributes(load_data(args.data, preprocess=pre, progress=False), names)
    val = data.indices("val")
    judge = quality.load_classifier(None, names, torch.device("cpu"))
    strengths = editing.strengths(model, None, None)
    rng = np.random.default_rng(0)
    lines = [
        "| pair | faces | first seen (alone → in the pair) | second seen (alone → in the pair) | both seen | "
        "others kept (alone, alone → pair) | \\|Δ\\| (pair) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in PAIRS:
        (i, on_i), (j, on_j) = pair = (parse(a, names), parse(b, names))
        rows = val[(data.attrs[val, i] != on_i) & (data.attrs[val, j] != on_j)]
        rows = np.sort(rng.permutation(rows)[: args.faces])
        x = pixels_to_input(torch.from_numpy(np.ascontiguousarray(data.images[rows])))
        with torch.inference_mode():
            before = attributes.present(judge.probs(x))
        vi = attributes.coded(on_i, strengths.of(names[i], on_i))
        vj = attributes.coded(on_j, strengths.of(names[j], on_j))
        first = score(model, judge, x, before, {i: vi}, pair)
        second = score(model, judge, x, before, {j: vj}, pair)
        both = score(model, judge, x, before, {i: vi, j: vj}, pair)
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        lines.append(
            f"| {a} {b} | {len(rows)} | {pct(first[:, 0].mean())} → {pct(both[:, 0].mean())} | "
            f"{pct(second[:, 1].mean())} → {pct(both[:, 1].mean())} | {pct((both[:, 0] * both[:, 1]).mean())} | "
            f"{pct(first[:, 2].mean())}, {pct(second[:, 2].mean())} → {pct(both[:, 2].mean())} | "
            f"{both[:, 3].mean():.1f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    body = (
        f"`python -m benchmarks.multi_edits` ({Path(args.weights).name}, its default rule and calibrated strengths; "
        f"validation faces whose labels hold neither target, at most {args.faces} per pair; judged by the bundled "
        f"classifier; {time.time() - t0:.0f} s on the CPU). Each change is scored alone and in the pair on the same "
        "faces; kept counts the other 38 attributes.\n\n" + "\n".join(lines)
    )
    if not args.no_write:
        write_section(ROOT / "docs" / "results.md", "## Two changes in one edit", body)
    print(body)


if __name__ == "__main__":
    main()
