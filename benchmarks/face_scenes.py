"""Faces in scenes, as users' photos show them: is the face found, framed as in training, and read as well as a crop?

Each face (the 256 px CelebA-HQ samples, and 64 px CelebA-HQ validation faces upscaled) is pasted at 120-200 px,
turned by 0, 10, 20 or 30 degrees (either way), somewhere in a 640x480 scene whose background is
  plain       one colour with a gentle gradient,
  photo       clutter: smooth colour noise, blurred shapes and hard-edged ones, fine texture,
  face        another CelebA-HQ face filling the scene, blurred as an out-of-focus background would be.
A CelebA-HQ image is its own training frame, so the true frame is known: the pasted square.

Reported per tilt and background: faces found (the face used lies on the pasted one: centre within a quarter of
its side), background picked (a face was used, but elsewhere), framing error of the found faces (centre offset
and size error in % of the side, angle error in degrees; medians), and the mean img->attr accuracy on the found
faces beside the same faces' accuracy given as crops with --no-detect, and the same for the faces the model never
saw and those it was trained on apart; and, for reference, the crops themselves with detection. With --all-faces,
every face found is used, as `--all-faces` uses them: the face read is the one on the pasted face, and "others"
counts the boxes beside it per scene (each one a second edit on the scene where it lies over the face, a false one
elsewhere).

    python -m benchmarks.face_scenes [--faces 100] [--weights FILE] [--json out.json]   # from the repository root
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jmvae_cli import data, faces, translate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TILTS = (0, 10, 20, 30)
BACKGROUNDS = ("plain", "photo", "face")
SCENE = (640, 480)
# the faces of a mixed set reported apart: those the model never saw (as held-out faces), and those it was trained
# on, whose crops it has learnt at their exact framing
GROUPS = {"unseen": "that the model never saw (validation faces)", "trained": "that the model was trained on"}


def face_sets(n_upscaled: int) -> dict[str, tuple[list[Image.Image], np.ndarray, np.ndarray]]:
    """{name: (face images, (N, A) labels, (N,) unseen)}: the 256 px samples, and validation faces at 64 px;
    unseen marks the validation faces, which the model was not trained on (as held-out faces are not)."""
    src = data.read_source(DATASETS / "celeba-hq-64")
    row = {name: i for i, name in enumerate(src.names)}
    samples = sorted((DATASETS / "celeba-hq-256-sample").glob("*.jpg"))
    val = np.flatnonzero(src.split == data.SPLITS["val"])[:n_upscaled]
    rows = [row[p.name] for p in samples]
    return {
        "256 px samples": (
            [Image.open(p).convert("RGB") for p in samples],
            src.attrs[rows],
            src.split[rows] == data.SPLITS["val"],
        ),
        "64 px val, upscaled": (
            [Image.open(src.paths[i]).convert("RGB") for i in val],
            src.attrs[val],
            np.ones(len(val), bool),
        ),
    }


def background(kind: str, rng: np.random.Generator, other_face: Image.Image) -> Image.Image:
    w, h = SCENE
    if kind == "plain":
        c0, c1 = rng.integers(20, 236, 3), rng.integers(20, 236, 3)
        t = np.linspace(0, 1, w)[None, :, None] * 0.3
        return Image.fromarray(((1 - t) * c0 + t * c1 + np.zeros((h, 1, 3))).astype(np.uint8))
    if kind == "photo":
        coarse = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        img = Image.fromarray(coarse).resize(SCENE, Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(25):  # furniture, windows, plants: shapes of every size, some blurred later
            x, y = rng.integers(-100, w), rng.integers(-100, h)
            box = (x, y, x + rng.integers(20, 300), y + rng.integers(20, 300))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.4 else draw.rectangle)(box, fill=fill)
        for _ in range(15):
            draw.line(
                [tuple(int(v) for v in rng.integers(0, w, 2)) for _ in range(2)],
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                width=int(rng.integers(1, 6)),
            )
        img = img.filter(ImageFilter.GaussianBlur(1.0))
        noise = rng.normal(0, 12, (h, w, 3))  # fine texture: fabric, foliage, sensor noise
        return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
    side = int(rng.integers(640, 800))  # a face filling the scene behind the one in front, out of focus
    big = other_face.resize((side, side), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(side * 0.012))
    scene = Image.new("RGB", SCENE)
    scene.paste(big, (round((w - side) * rng.random()), round((h - side) * rng.random())))
    return scene


def paste(scene: Image.Image, face: Image.Image, side: int, tilt: float, rng: np.random.Generator) -> faces.Frame:
    """Paste `face` at `side` px, turned by `tilt` degrees clockwise, somewhere wholly inside; its true frame."""
    f = face.resize((side, side), Image.Resampling.BICUBIC)
    turned = f.rotate(-tilt, Image.Resampling.BICUBIC, expand=True)  # PIL turns counter-clockwise
    alpha = Image.new("L", f.size, 255).rotate(-tilt, Image.Resampling.BICUBIC, expand=True)
    x = int(rng.integers(0, SCENE[0] - turned.width + 1))
    y = int(rng.integers(0, SCENE[1] - turned.height + 1))
    scene.paste(turned, (x, y), alpha)
    return faces.Frame(x + turned.width / 2, y + turned.height / 2, side, tilt)


def judge(used: faces.Frame | None, truth: faces.Frame) -> str:
    if used is None:
        return "missed"
    off = math.hypot(used.cx - truth.cx, used.cy - truth.cy)
    return "found" if off < truth.side / 4 else "background"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=100, help="64 px validation faces to upscale (beside the 100 samples)")
    ap.add_argument("--weights", type=Path, help="model [default: the bundled one]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--misses", type=Path, help="folder to save the scenes whose face was missed or mistaken")
    ap.add_argument("--only", help="run only the face set whose name starts with this (256 or 64)")
    ap.add_argument("--tilts", default=",".join(map(str, TILTS)), help="comma-separated tilts [%(default)s]")
    ap.add_argument("--refine", action="store_true", help="frame found faces as `--refine` does (refine_frames)")
    ap.add_argument("--all-faces", action="store_true", help="find every face, as `--all-faces` does")
    args = ap.parse_args()
    tr = translate.Translator.from_weights(args.weights, "cpu", "fp32")
    sets = {k: v for k, v in face_sets(args.faces).items() if not args.only or k.startswith(args.only)}
    tilts = [int(t) for t in args.tilts.split(",")]
    if args.misses:
        args.misses.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    report, t0 = {}, time.time()

    others: list[int] = []  # with --all-faces: per scene, the faces found beside the pasted one

    def find(img: Image.Image, truth: faces.Frame | None = None) -> faces.Frame:
        """The frame of the face img2attr would use (faces.NoFaceError if none); with --all-faces, of the faces
        found the one nearest `truth`."""
        if args.all_faces and truth is not None:
            frames = faces.find_faces(img, all_faces=True)
            frame = min(frames, key=lambda f: math.hypot(f.cx - truth.cx, f.cy - truth.cy))
            others.append(len(frames) - (judge(frame, truth) == "found"))
            return frame
        frame = faces.find_faces(img)[0]
        if not args.refine:
            return frame
        crop = faces.FaceCrop(0, frame, np.asarray(faces.crop_face(img, frame, tr.image_size)))
        return translate.refine_frames(tr, img, [crop])[0].frame

    def accuracy(crops: list[np.ndarray], labels: np.ndarray) -> float:
        return float(((translate.infer_attributes(tr, np.stack(crops)) >= 0.5) == labels).mean()) if crops else math.nan

    for set_name, (imgs, labels, unseen) in sets.items():
        crops = [np.asarray(faces.crop_face(im, faces.find_faces(im, detect=False)[0])) for im in imgs]
        ref = (translate.infer_attributes(tr, np.stack(crops)) >= 0.5) == labels  # (N, A): --no-detect, per answer
        rows = {"crops, --no-detect": {"found": 1.0, "accuracy": float(ref.mean()), "n": len(imgs)}}
        detected, ok = [], []
        for i, im in enumerate(imgs):
            try:
                detected.append(np.asarray(faces.crop_face(im, find(im))))
                ok.append(i)
            except faces.NoFaceError:
                pass
        rows["crops, detected"] = {
            "found": len(ok) / len(imgs),
            "accuracy": accuracy(detected, labels[ok]),
            "no_detect_accuracy": float(ref[ok].mean()),
            "n": len(imgs),
        }
        for tilt in tilts:
            for bg in BACKGROUNDS:
                outcome, errs, crops_found, crops_true, found_rows = [], [], [], [], []
                for i, im in enumerate(imgs):
                    other = imgs[(i + 1 + int(rng.integers(len(imgs) - 1))) % len(imgs)]
                    scene = background(bg, rng, other)
                    sign = 1 if rng.random() < 0.5 else -1
                    truth = paste(scene, im, int(rng.integers(120, 201)), sign * tilt, rng)
                    try:
                        used = find(scene, truth)
                    except faces.NoFaceError:
                        used = None
                    outcome.append(judge(used, truth))
                    if args.misses and outcome[-1] != "found":
                        scene.save(args.misses / f"{set_name.split()[0]}-t{tilt}-{bg}-{i}-{outcome[-1]}.png")
                    if outcome[-1] == "found":
                        errs.append(
                            (
                                math.hypot(used.cx - truth.cx, used.cy - truth.cy) / truth.side,
                                abs(math.log(used.side / truth.side)),
                                abs(used.angle - truth.angle),
                            )
                        )
                        crops_found.append(np.asarray(faces.crop_face(scene, used)))
                        # the same face cut at its true frame: what framing alone costs, beside the scene's resampling
                        crops_true.append(np.asarray(faces.crop_face(scene, truth)))
                        found_rows.append(i)
                e = np.array(errs).reshape(-1, 3)
                row = {
                    "found": outcome.count("found") / len(imgs),
                    "background": outcome.count("background") / len(imgs),
                    "centre_err_pct": float(np.median(e[:, 0]) * 100) if len(e) else math.nan,
                    "size_err_pct": float(np.median(e[:, 1]) * 100) if len(e) else math.nan,
                    "angle_err_deg": float(np.median(e[:, 2])) if len(e) else math.nan,
                    "accuracy": accuracy(crops_found, labels[found_rows]),
                    "true_frame_accuracy": accuracy(crops_true, labels[found_rows]),
                    "no_detect_accuracy": float(ref[found_rows].mean()) if found_rows else math.nan,
                    "n": len(imgs),
                }
                if args.all_faces:
                    row["others_per_scene"] = sum(others) / len(imgs)
                    row["scenes_with_others"] = sum(o > 0 for o in others) / len(imgs)
                    others.clear()
                if not unseen.all():  # the faces of this set the model never saw, and those it was trained on, apart
                    for group in GROUPS:
                        member = unseen if group == "unseen" else ~unseen
                        k = [j for j, i in enumerate(found_rows) if member[i]]
                        row[group] = {
                            "n": int(member.sum()),
                            "found": len(k),
                            "accuracy": accuracy([crops_found[j] for j in k], labels[[found_rows[j] for j in k]]),
                            "no_detect_accuracy": float(ref[[found_rows[j] for j in k]].mean()) if k else math.nan,
                        }
                rows[f"tilt {tilt}, {bg}"] = row
                print(
                    f"{set_name} | tilt {tilt:2d} | {bg:5s} | found {row['found']:.1%} | background "
                    f"{row['background']:.1%} | centre {row['centre_err_pct']:.1f}% size {row['size_err_pct']:.1f}% "
                    f"angle {row['angle_err_deg']:.1f} deg | accuracy {row['accuracy']:.2%}, at the true frame "
                    f"{row['true_frame_accuracy']:.2%}, --no-detect {row['no_detect_accuracy']:.2%} "
                    + (
                        f"| others {row['others_per_scene']:.2f} per scene, in {row['scenes_with_others']:.1%} "
                        if args.all_faces
                        else ""
                    )
                    + f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
        report[set_name] = rows

    print(
        "\n| faces | input | found | background picked | centre error | size error | angle error | img→attr "
        "accuracy | at the true frame | same faces, --no-detect | difference |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for set_name, rows in report.items():
        for name, r in rows.items():
            nd = r.get("no_detect_accuracy", r["accuracy"])
            cells = [set_name, name, f"{r['found']:.1%}", f"{r['background']:.1%}" if "background" in r else "–"]
            cells += [
                f"{r[k]:.1f}{u}" if k in r else "–"
                for k, u in (("centre_err_pct", "%"), ("size_err_pct", "%"), ("angle_err_deg", "°"))
            ]
            true = f"{r['true_frame_accuracy']:.2%}" if "true_frame_accuracy" in r else "–"
            cells += [f"{r['accuracy']:.2%}", true, f"{nd:.2%}", f"{(r['accuracy'] - nd) * 100:+.2f}"]
            print("| " + " | ".join(cells) + " |")
    for group, among in GROUPS.items():
        print(f"\nThe faces of a set {among}, apart:\n")
        print("| faces | input | faces found | img→attr accuracy | same faces, --no-detect | difference |")
        print("|---|---|---|---|---|---|")
        for set_name, rows in report.items():
            for name, r in rows.items():
                if group in r:
                    u = r[group]
                    diff = (u["accuracy"] - u["no_detect_accuracy"]) * 100
                    print(
                        f"| {set_name} | {name} | {u['found']} of {u['n']} | {u['accuracy']:.2%} | "
                        f"{u['no_detect_accuracy']:.2%} | {diff:+.2f} |"
                    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
