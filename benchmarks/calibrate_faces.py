"""Measure faces.py's FRAME_SCALE / FRAME_DX / FRAME_DY on the training images themselves.

Aligned CelebA is framed for training by its centre square of side 148/178 of the width; here the detector
runs on those same images and we see where that square sits relative to the detector's box. Then, as a sanity
check, CelebA-HQ at 256x256 (used whole for training) should come out framed as nearly the whole image.

    python -m benchmarks.calibrate_faces [--n 9000]    # from the repository root
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from jmvae_cli import faces

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def iou(a: faces.Box, b: faces.Box) -> float:
    iw = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    ih = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = iw * ih
    return inter / (a.w * a.h + b.w * b.h - inter)


def summary(name: str, v: np.ndarray) -> str:
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return f"{name} median {med:.4f} (IQR {q1:.4f}..{q3:.4f})"


parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=9000, help="how many aligned CelebA images to use")
args = parser.parse_args()

# The half-size copies (89x109) are passed as they are: detect_faces itself upscales small images, exactly as
# it will for users, so the constants hold for the detector as shipped. All ratios are scale-free.
files = sorted((DATA / "celeba" / "img_align_celeba").glob("*.jpg"))[: args.n]
rows, truth = [], []
for f in files:
    img = Image.open(f).convert("RGB")
    W, H = img.size
    found = faces.detect_faces(img)
    if not found:
        continue
    b = found[0]  # find_faces uses the largest too
    side = W * 148 / 178
    crop = faces.Box(W / 2 - side / 2, H / 2 - side / 2, side, side)  # (15..163, 35..183) at 178x218
    rows.append((side / b.w, (W / 2 - (b.x + b.w / 2)) / b.w, (H / 2 - (b.y + b.h / 2)) / b.w))
    truth.append((b, crop))
scale, dx, dy = np.array(rows).T  # (3, found)
print(f"aligned CelebA: {len(rows)} of {len(files)} images with a face ({len(rows) / len(files):.1%})")
for name, v in (("scale", scale), ("dx", dx), ("dy", dy)):
    print("  " + summary(name, v))
print(f"FRAME_SCALE = {np.median(scale):.4f}\nFRAME_DX = {np.median(dx):.4f}\nFRAME_DY = {np.median(dy):.4f}")

# how well the constants now in faces.py reproduce the training crop (rerun after pasting new ones)
print("  " + summary("IoU(frame_box, training crop)", np.array([iou(faces.frame_box(b), c) for b, c in truth])))

hq = sorted((DATA / "celeba-hq-256-sample").glob("*.jpg"))
ious = []
for f in hq:
    img = Image.open(f).convert("RGB")
    try:
        ious.append(iou(faces.find_faces(img)[0], faces.Box(0, 0, *img.size)))
    except faces.NoFaceError:
        pass
print(f"CelebA-HQ 256 sample: {len(ious)} of {len(hq)} with a face; " + summary("IoU(frame, whole image)", np.array(ious)))
