"""Calibrate face framing on the training images themselves: faces.py's start frame and the bundled aligner.

CelebA-HQ faces (27,000 of the 36,000 training images, and the framing that held-out faces come in) are trained on
resized whole, so each image *is* its training frame. On the training split of celeba-hq-64 (the hash split of
data.read_source, so that validation faces stay unseen) this measures or fits

  constants  where that frame sits relative to the Haar cascade's box (faces.FRAME_SCALE / FRAME_DX / FRAME_DY),
             the aligner's starting point;
  aligner    the supervised-descent steps and the face score of jmvae_cli/face_aligner.py, on random views around
             each face's known frame (and views of no face), written to weights/face_aligner.safetensors; then
             their accuracy on validation faces (also alone: `check`).
  refiner    the aligner's last step, a small network trained on the same kind of views near the frame for
             --minutes, of the faces with their JPEG blocks smoothed away (deblock), added to the aligner's file;
             then `check` (on deblocked validation faces too). The bundled one: 25 minutes at --spread wide, then
             twice 15 more at --spread near --more, all three on the files' own pixels (before deblock), then 30
             more at --spread near --more (2 CPU cores).

    python -m benchmarks.calibrate_faces constants|aligner|refiner|check [--n N]    # from the repository root
"""

import argparse
import io
import math
import multiprocessing
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jmvae_cli import data, face_aligner, faces
from jmvae_cli.cpus import available_cpus

ROOT = Path(__file__).resolve().parents[1]
HQ64 = ROOT.parent / "shared" / "datasets" / "celeba-hq-64"


def hq_faces(split: str, deblocked: bool = False) -> np.ndarray:
    """(N, 64, 64, 3) uint8, each image its own training frame; deblocked: as photos show faces (see deblock)."""
    d = data.load_data([HQ64], progress=False)
    imgs = d.images[d.indices(split)]
    if not deblocked:
        return imgs
    with multiprocessing.get_context("spawn").Pool(available_cpus()) as pool:
        return np.stack(pool.map(deblock, imgs, chunksize=64))


def deblock(img: np.ndarray) -> np.ndarray:
    """A 64 px CelebA-HQ face with its JPEG blocks smoothed away: the mean of the image JPEG-coded again (at the
    files' own quality, 75) at 64 shifts of the grid (Nosratinia, 2001). Every one of these files is its own frame,
    so the grid of 8 px blocks (16 px for colour) lies exactly on the frame, and a network shown them learns to
    find the frame by its blocks: a refiner trained so erred half as much in size on views of these files as on the
    same faces brought to 64 px from their 256 px samples (docs/results.md). No photo's grid lies on its face."""
    h, w = img.shape[:2]
    pad = np.pad(img, ((16, 16), (16, 16), (0, 0)), mode="reflect")
    total = np.zeros((h, w, 3))
    for dy in range(0, 16, 2):
        for dx in range(0, 16, 2):
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pad[dy : dy + h + 16, dx : dx + w + 16])).save(buf, "JPEG", quality=75)
            total += np.asarray(Image.open(buf).convert("RGB"))[16 - dy : 16 - dy + h, 16 - dx : 16 - dx + w]
    return np.clip(total / 64 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- 1. the cascade's box vs the frame


def constants(n: int) -> None:
    imgs = hq_faces("train")[:n]
    rows = []
    for a in imgs:
        found = faces._Photo(Image.fromarray(a)).scan(0)  # the 64 px image is upscaled for detection, as for users
        if found:
            b = found[0]
            rows.append((64 / b.side, (32 - b.cx) / b.side, (32 - b.cy) / b.side))
    scale, dx, dy = np.array(rows).T  # (3, found)
    print(f"CelebA-HQ training faces: a face in {len(rows)} of {len(imgs)} ({len(rows) / len(imgs):.1%})")
    for name, v in (("scale", scale), ("dx", dx), ("dy", dy)):
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        print(f"  {name} median {med:.4f} (IQR {q1:.4f}..{q3:.4f})")
    print(f"FRAME_SCALE = {np.median(scale):.4f}\nFRAME_DX = {np.median(dx):.4f}\nFRAME_DY = {np.median(dy):.4f}")


# ----------------------------------------------------------------------------- 2. views of the training faces


def rotation(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (B, 2, 2)


def render(src: torch.Tensor, pose: torch.Tensor, rect: torch.Tensor, bg: torch.Tensor | None) -> torch.Tensor:
    """Views (B, 3, 64, 64) of frames `src` at `pose` (B, 4). Only the part of each source inside `rect` (B, 4:
    x0, y0, x1, y1, normalised) shows, mirrored beyond the source's own edge; beyond the rect the edge repeats (bg
    None) or the background `bg` shows."""
    theta = torch.cat([torch.exp(pose[:, 2, None, None]) * rotation(pose[:, 3]), pose[:, :2, None]], 2)  # (B, 2, 3)
    grid = F.affine_grid(theta, (len(src), 3, face_aligner.VIEW, face_aligner.VIEW), align_corners=False)
    lo, hi = rect[:, None, None, :2], rect[:, None, None, 2:]
    view = F.grid_sample(
        src, torch.minimum(torch.maximum(grid, lo), hi), padding_mode="reflection", align_corners=False
    )
    if bg is None:
        return view
    inside = ((grid >= lo) & (grid <= hi)).all(-1)[:, None].float()  # (B, 1, 64, 64)
    return inside * view + (1 - inside) * bg


def random_poses(n: int, g: torch.Generator) -> torch.Tensor:
    """Half wide (the detector's start: up to 25% off, 35% in size, 20 degrees), half near (the last steps)."""
    u = lambda *s: torch.rand(*s, generator=g)
    wide = torch.cat([(u(n, 2) * 2 - 1) * 0.25, (u(n, 1) * 2 - 1) * 0.3, (u(n, 1) * 2 - 1) * math.radians(20)], 1)
    near = torch.randn(n, 4, generator=g) * torch.tensor([0.04, 0.04, 0.04, math.radians(3)])
    return torch.where(u(n, 1) < 0.5, wide, near)  # (n, 4)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image by its own sigma (B,) in pixels (0: none), 7 taps each way."""
    k = torch.arange(-3, 4, dtype=x.dtype)
    w = torch.exp(-0.5 * (k[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)  # (B, 7)
    w = (w / w.sum(1, keepdim=True))[:, :, None, None, None]  # (B, 7, 1, 1, 1)
    p = F.pad(x, (3, 3, 3, 3), mode="replicate")  # (B, C, H + 6, W + 6)
    h, wd = x.shape[2:]
    rows = sum(w[:, i] * p[:, :, :, i : i + wd] for i in range(7))  # (B, C, H + 6, W)
    return sum(w[:, i] * rows[:, :, i : i + h] for i in range(7))  # (B, C, H, W)


def views(imgs: np.ndarray, pose: torch.Tensor, seed: int) -> np.ndarray:
    """(n, 64, 64, 3) uint8 views of random training faces at `pose` (n, 4), as photos would show them. The same
    seed draws the same faces, backgrounds and camera at any pose, so each step is fitted on the same views."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)
    n = len(pose)
    src = torch.from_numpy(imgs[torch.randint(len(imgs), (n,), generator=g).numpy()]).permute(0, 3, 1, 2).float()
    src = torch.where(u(n, 1, 1, 1) < 0.5, src, src.flip(3))  # a mirrored face keeps its frame
    # the content ends anywhere from well inside to well outside the frame (mirrored there), so that where it ends
    # (a pasted photo's edge) does not tell where the frame is
    rect = torch.cat([-1 + 0.4 * (u(n, 2) * 2 - 1), 1 + 0.4 * (u(n, 2) * 2 - 1)], 1)  # (n, 4)
    bg = backgrounds(src.roll(1, 0), g)
    v = torch.where(u(n, 1, 1, 1) < 0.5, render(src, pose, rect, None), render(src, pose, rect, bg))
    return camera(v, g)


def backgrounds(others: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(n, 3, 64, 64): smooth colour noise, or another face seen from afar and blurred."""
    u = lambda *s: torch.rand(*s, generator=g)
    n = len(others)
    coarse = F.interpolate(u(n, 3, 6, 6) * 255, size=64, mode="bicubic", align_corners=False)
    far = render(
        others,
        torch.cat([u(n, 2) * 2 - 1, u(n, 1) * 1.2 - 0.4, u(n, 1) * 6.3], 1),
        torch.tensor([[-1.0, -1, 1, 1]]).expand(n, 4),
        None,
    )
    return torch.where(u(n, 1, 1, 1) < 0.5, coarse, blur(far, 1 + 2 * u(n)))


def camera(v: torch.Tensor, g: torch.Generator) -> np.ndarray:
    """Blur, colour cast, gamma, grey photos and sensor noise; -> (n, 64, 64, 3) uint8."""
    u = lambda *s: torch.rand(*s, generator=g)
    n = len(v)
    v = blur(v, torch.where(u(n) < 0.5, 1.2 * u(n), torch.zeros(n)))
    v = v * (0.8 + 0.4 * u(n, 3, 1, 1))
    v = 255 * (v.clamp(0, 255) / 255) ** (0.7 + 0.7 * u(n, 1, 1, 1))
    v = torch.where(u(n, 1, 1, 1) < 0.1, v.mean(1, keepdim=True).expand_as(v), v)
    v = v + torch.randn(v.shape, generator=g) * 5 * u(n, 1, 1, 1)
    return v.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def clutter(imgs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, 64, 64, 3) uint8 views of no face: close-ups of hair, clothes or background beside the training faces,
    and backgrounds alone."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)
    src = torch.from_numpy(imgs[torch.randint(len(imgs), (n,), generator=g).numpy()]).permute(0, 3, 1, 2).float()
    off = torch.cat(
        [
            (u(n, 2) * 2 - 1).sign() * (0.6 + 0.4 * u(n, 2)),
            math.log(0.2) + u(n, 1) * math.log(3),
            u(n, 1) * 2 * math.pi,
        ],
        1,
    )  # (n, 4): centred far from the face, a fifth to three fifths its size
    v = render(src, off, torch.tensor([[-1.0, -1, 1, 1]]).expand(n, 4), None)
    v = torch.where(u(n, 1, 1, 1) < 0.3, backgrounds(src.roll(1, 0), g), v)
    return camera(v, g)


# ----------------------------------------------------------------------------- 3. fitting the aligner


def compose(pose: torch.Tensor, answer: np.ndarray) -> torch.Tensor:
    """The true pose of the view cut where the answer points, given the view's true pose (see face_aligner)."""
    answer = torch.from_numpy(answer).float()
    s = torch.exp(pose[:, 2] - answer[:, 2])
    a = pose[:, 3] - answer[:, 3]
    t = pose[:, :2] - s[:, None] * (rotation(a) @ answer[:, :2, None])[..., 0]
    return torch.cat([t, torch.log(s)[:, None], a[:, None]], 1)


def ridge(xtx: np.ndarray, xty: np.ndarray, held_x: np.ndarray, held_y: np.ndarray) -> np.ndarray:
    """Least squares with the ridge penalty that does best on held-out rows."""
    best = None
    for f in (1e-3, 1e-2, 1e-1):
        w = np.linalg.solve(xtx + f * np.trace(xtx) / len(xtx) * np.eye(len(xtx)), xty)
        err = np.abs(held_x @ w - held_y).mean()
        best = best if best and best[0] <= err else (err, w)
    return best[1]


CHUNK = 2000


def fit_aligner(n: int, n_steps: int) -> face_aligner.Aligner:
    """Fit each step on the views the steps before it leave (supervised descent), then the face score."""
    imgs = np.ascontiguousarray(hq_faces("train"))
    pose = random_poses(n, torch.Generator().manual_seed(0))
    report("training views, start", pose)
    feats = lambda p: np.vstack(
        [face_aligner.features(views(imgs, p[c : c + CHUNK], seed=c)).astype(np.float64) for c in range(0, n, CHUNK)]
    )
    fit = np.arange(n) < 0.9 * n  # the rest choose the ridge penalty
    steps = []
    for step in range(n_steps):
        x, y = feats(pose), pose.numpy() / face_aligner.POSE_UNITS
        steps.append(ridge(x[fit].T @ x[fit], x[fit].T @ y[fit], x[~fit], y[~fit]))
        pose = compose(pose, x @ steps[-1] * face_aligner.POSE_UNITS)
        report(f"training views, step {step + 1}", pose)
    # the face score: the aligned views against as many views of clutter, +1 / -1
    x = np.vstack([feats(pose), face_aligner.features(clutter(imgs, n, seed=10**6)).astype(np.float64)])
    y = np.concatenate([np.ones(n), -np.ones(n)])
    held = np.arange(len(x)) % 10 == 0
    face = ridge(x[~held].T @ x[~held], x[~held].T @ y[~held], x[held], y[held])
    return face_aligner.Aligner(np.stack(steps).astype(np.float32), face.astype(np.float32))


# the refiner's training poses (standard deviations of tx, ty, log s, a): first "wide", a few pixels and degrees
# about the frame, then "near", the spread the HOG steps leave (about half a pixel, 3-4% in size, a degree or two)
SPREADS = {"wide": (0.04, 0.04, 0.06, math.radians(4)), "near": (0.015, 0.015, 0.05, math.radians(2))}


def near_poses(n: int, g: torch.Generator, spread: str = "wide") -> torch.Tensor:
    """(n, 4) poses about the frame: half at SPREADS[spread], a quarter at a quarter of it (the last pixel), a
    quarter at twice it (misses)."""
    spread = torch.tensor(SPREADS[spread])
    k = torch.rand(n, 1, generator=g)
    scale = torch.where(k < 0.5, 1.0, torch.where(k < 0.75, 0.25, 2.0))  # (n, 1)
    return torch.randn(n, 4, generator=g) * spread * scale


def train_refiner(
    minutes: float, spread: str, init: torch.nn.Module | None = None, batch: int = 128, lr: float = 1e-3, seed: int = 0
) -> torch.nn.Module:
    """The refiner (from `init`, or new) trained on views of the training faces at near_poses(spread), fresh views
    each step, AdamW with a cosine decay over the given time; every 500 steps its error on validation views."""
    import time

    torch.manual_seed(seed)
    imgs, val = np.ascontiguousarray(hq_faces("train", True)), np.ascontiguousarray(hq_faces("val", True))
    units = torch.tensor(face_aligner.POSE_UNITS, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    net = (init or face_aligner.refiner_network()).train()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    held_pose = near_poses(2000, torch.Generator().manual_seed(seed + 1), spread)
    held = face_aligner.view_input(views(val, held_pose, seed=seed + 2))
    start, step = time.monotonic(), 0
    while (done := (time.monotonic() - start) / (60 * minutes)) < 1:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done))
        pose = near_poses(batch, g, spread)
        x = face_aligner.view_input(views(imgs, pose, seed=int(torch.randint(2**31, (1,), generator=g))))
        loss = F.smooth_l1_loss(net(x), pose / units)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            net.eval()
            with torch.no_grad():
                answer = torch.cat([net(held[c : c + 500]) for c in range(0, len(held), 500)]) * units
            net.train()
            report(f"step {step}, loss {loss.item():.3f}, validation views", compose(held_pose, answer.numpy()))
    return net.eval()


def report(name: str, pose: torch.Tensor) -> None:
    shift, size, angle = pose[:, :2].norm(dim=1) * 32, pose[:, 2].abs() * 100, pose[:, 3].abs() * 180 / math.pi
    q = lambda v: f"median {float(v.median()):.2f}, p90 {float(v.quantile(0.9)):.2f}"
    print(f"  {name}: shift (px of 64) {q(shift)}; size error (%) {q(size)}; angle error (deg) {q(angle)}", flush=True)


def check_aligner(aligner: face_aligner.Aligner, n: int = 2000) -> None:
    """On validation faces, from starts like the detector's: how far off each step leaves the view, and how
    the face score splits faces from clutter."""
    imgs = np.ascontiguousarray(hq_faces("val", True))
    pose = random_poses(n, torch.Generator().manual_seed(1))
    report("validation views, start", pose)
    for step in range(len(aligner.steps)):
        pose = compose(pose, aligner.pose(step, face_aligner.features(views(imgs, pose, seed=7))))
        report(f"validation views, step {step + 1}", pose)
    refined = pose  # the face score stays on the HOG steps' views, as faces.py scores them
    for step in range(face_aligner.REFINE_STEPS if aligner.refiner is not None else 0):
        refined = compose(refined, aligner.refine(views(imgs, refined, seed=7)))
        report(f"validation views, refiner step {step + 1}", refined)
    p_face = aligner.face_probability(face_aligner.features(views(imgs, pose, seed=7)))
    p_clutter = aligner.face_probability(face_aligner.features(clutter(imgs, n, seed=8)))
    print(
        f"  face probability >= 0.5: {np.mean(p_face >= 0.5):.1%} of aligned validation faces, "
        f"{np.mean(p_clutter >= 0.5):.1%} of clutter views"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["constants", "aligner", "refiner", "check"])
    ap.add_argument("--n", type=int, help="training faces for the constants [1500], views for the aligner [24000]")
    ap.add_argument("--steps", type=int, default=4, help="supervised-descent steps")
    ap.add_argument("--minutes", type=float, default=25, help="the refiner's training time")
    ap.add_argument("--spread", choices=list(SPREADS), default="wide", help="of the refiner's training poses")
    ap.add_argument("--more", action="store_true", help="train the file's refiner further rather than a new one")
    ap.add_argument("--out", type=Path, default=ROOT / "weights" / face_aligner.WEIGHTS_NAME)
    args = ap.parse_args()
    if args.part == "constants":
        constants(args.n or 1500)
    elif args.part == "aligner":
        aligner = fit_aligner(args.n or 24000, args.steps)
        face_aligner.save(
            args.out, aligner, {"fitted_on": "celeba-hq-64 training split", "views": str(args.n or 24000)}
        )
        print(f"wrote {args.out}")
        check_aligner(aligner)
    elif args.part == "refiner":
        from safetensors import safe_open

        aligner = face_aligner.load(args.out)
        with safe_open(str(args.out), "np") as f:
            meta = f.metadata() or {}
        aligner.refiner = train_refiner(args.minutes, args.spread, aligner.refiner if args.more else None)
        done = f"{args.minutes:g} minutes of {args.spread} views of deblocked faces"
        meta["refiner"] = f"{meta['refiner']}, then {done}" if args.more else f"{done}, seed 0"
        face_aligner.save(args.out, aligner, meta)
        print(f"wrote {args.out}")
        check_aligner(aligner)
    else:
        check_aligner(face_aligner.load(args.out))


if __name__ == "__main__":
    main()
