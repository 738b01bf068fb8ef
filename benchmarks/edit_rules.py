"""Which attribute-edit rule, at which per-attribute strength, makes `jmvae edit --set X` do what was asked?

Every rule edits the 64x64 crop x (in [-1, 1]) as x' = clip(x + delta); z = mu_x(x) is the mean of q(z|x), w the
model's own reading of the face (p(w|z) at z, thresholded), w' = w with attribute i set to 0.5 +- s/2 (the paper's
+-s, translate.py's strength convention), D the decoder's mean image:

    paper     delta = D(mu_w(w')) - D(mu_w(w))                       Suzuki et al.'s rule, translate.edit_face
    latent    delta = D(z + mu_w(w') - mu_w(w)) - D(z)               the same prototype move, applied to the face's z
    joint     delta = D(mu_xw(x, w')) - D(mu_xw(x, w))
    natural   delta = D(z + d_i(s)) - D(z),  d_i(s) = mean over training faces that HAVE attribute i (their w) of
              mu_w(w[i <- v]) - mu_w(w[i <- 1 - target]): the attribute's move where it naturally occurs (a
              moustache is learnt on male faces), not in this face's possibly rare combination
    regress   delta = D(z + c(s) B_i) - D(z),  B = ridge regression of mu_x over training faces on their 40 labels:
              the latent change per unit of attribute i with the other 39 held fixed; c(s) = +-(0.5 + s/2), the
              same change of w_i as the rules above
    probe     z moves along cov(z) a_i, a_i the ridge read-out of label i from z, until the read-out reaches
              off_i + s (on_i - off_i) (on_i, off_i: the mean read-out of training faces with, without it; for
              target 0 mirrored); each face moves as far as it needs (InterFaceGAN's edit on this latent space)
    probecond the same, along the smallest move that leaves the other 39 read-outs unchanged
    regressfit the same per-face goal, moving along B_i (regress's direction): with +foot, the library's `regress`
              rule (editing.py; B, the read-outs, their means and the footprints are fitted by edit_directions.py,
              whose goal also caps each face's move at 2 s spreads, which the measurements in docs/edit_rules.md
              predate)
    <rule>+foot   delta * F_i, F_i in [0, 1] (64 x 64) where attribute i shows in the photos: ridge regression of
              every training pixel on the 40 labels, |coefficient| scaled so the strongest tenth is 1 (footprints)
    <rule>+foot2  delta * F_i ** 2, tighter
    <rule>+mask   delta * m, m a per-pixel soft mask from |delta| itself
    <rule>@self<tau>  (report only) each face stops at the smallest grid strength at which the model's own
              img2attr reading of the edit gives the target probability >= tau

The classifier (weights/classifier.safetensors) judges the edit after rounding to 8-bit: target seen (probability
>= 0.5), other attributes kept (the other 39 as it saw them before), |delta| (mean absolute change per 8-bit value).
Faces are drawn per attribute and direction from faces whose label is not yet the target; the "strict" figures
keep only those the classifier also read as not yet the target (true flips). Strengths are calibrated on
training faces (per attribute and direction: the smallest grid strength at which a share of strict faces shows
the target, or the one with the best target seen - lam * others changed) and scored on validation faces.

    python -m benchmarks.edit_rules run --rules paper latent       # per-face results into out/edit_rules/
    python -m benchmarks.edit_rules report --detail regressfit+foot --goal 0.7   # tables, docs/edit_rules.png
    python -m benchmarks.edit_rules grid --attr Eyeglasses         # out/grid_<attr>.png to look at
    python -m benchmarks.edit_rules showcase --rule regressfit+foot --strengths s.json   # out/showcase_<rule>.png
"""

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from jmvae_cli import edit_directions, quality
from jmvae_cli.checkpoint import load_model
from jmvae_cli.data import load_data
from jmvae_cli.edit_directions import EditConstants
from jmvae_cli.model import JMVAE, Gaussian, output_to_pixels, pixels_to_input

ROOT = Path(__file__).resolve().parents[1]
DATA = ["../shared/datasets/celeba-hq-64", "../shared/datasets/celeba"]
OUT = ROOT / "out" / "edit_rules"  # --out changes it
EDITED = quality.EDITED  # the 13 attributes AttGAN and STGAN edit
STRENGTHS = {
    "paper": (1, 2, 3, 4, 6),
    "joint": (2, 4, 8),
    "latent": (1, 2, 3, 4, 6, 8, 12),
    "natural": (1, 2, 3, 4, 6, 8, 12),
    "regress": (1, 2, 3, 4, 6, 8, 12),
    "probe": (0.5, 1, 1.5, 2, 3, 4),
    "probecond": (0.5, 1, 1.5, 2, 3, 4),
    "regressfit": (0.5, 1, 1.5, 2, 3, 4),
}
# the rules docs/edit_rules.png and the findings compare (regress+foot with --strengths 1 2 3 4 6 8 12 16 24)
MEASURED = ("paper", "latent", "joint", "natural", "regress", "latent+foot", "regress+foot", "regressfit+foot")
BATCH = 256
MIN_FACES = 20  # a direction with fewer faces in a split is not scored there


# ----------------------------------------------------------------------------- what every rule shares


@dataclass
class Faces:
    """The faces of one split that some edit uses, with what every rule needs computed once."""

    rows: np.ndarray  # (N,) rows of the data
    u8: torch.Tensor  # (N, 64, 64, 3)
    x: torch.Tensor  # (N, 3, 64, 64) in [-1, 1]
    labels: np.ndarray  # (N, A) {0, 1}
    seen: torch.Tensor  # (N, A) bool, the classifier on the unedited face
    w: torch.Tensor  # (N, A) the model's reading, thresholded
    z: torch.Tensor  # (N, Z) mu_x(x)
    dz: torch.Tensor  # (N, 3, 64, 64) D(z)
    zw: torch.Tensor  # (N, Z) mu_w(w)
    dzw: torch.Tensor  # (N, 3, 64, 64) D(mu_w(w))
    feats: torch.Tensor  # (N, F) the image trunk, for the joint encoder
    dzxw: torch.Tensor  # (N, 3, 64, 64) D(mu_xw(x, w))


@dataclass
class Directions:
    """What the direction rules measure once on training faces."""

    contexts: list  # per attribute i: (c, A) the readings w of training faces that have it
    regress: torch.Tensor  # (A, Z)
    probe: torch.Tensor  # (A, Z + 1) linear read-out of each label from [z, 1]
    probe_dir: torch.Tensor  # (A, Z) cov(z) a_i: the move that changes read-out i along the way z varies
    probe_cond: torch.Tensor  # (A, Z) the smallest move (in cov(z)'s metric) changing read-out i by 1, others by 0
    probe_means: torch.Tensor  # (A, 2) mean read-out of the training faces without, with the attribute
    footprint: torch.Tensor | None = None  # (A, 1, 64, 64) in [0, 1]: where in the crop each attribute shows

    @property
    def constants(self) -> EditConstants:
        """The library's constants of the regress rule, as these directions measured them."""
        return EditConstants(self.regress, self.probe, self.probe_means, self.footprint[:, 0])

    def natural(self, model: JMVAE, i: int, target: int, s: float) -> torch.Tensor:
        ctx = self.contexts[i]
        base = model.q_w(with_value(ctx, i, 1 - target)).mu  # (c, Z)
        return (model.q_w(with_value(ctx, i, value(target, s))).mu - base).mean(0)  # (Z,)


def batched(fn: Callable, *tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat([fn(*(t[k : k + BATCH] for t in tensors)) for k in range(0, len(tensors[0]), BATCH)])


def decode(model: JMVAE, z: torch.Tensor) -> torch.Tensor:
    return batched(model.images_from_z, z)  # (N, 3, 64, 64)


def prepare(model: JMVAE, classifier: quality.Classifier, images: np.ndarray, labels: np.ndarray, rows: np.ndarray):
    u8 = torch.from_numpy(np.ascontiguousarray(images[rows]))  # (N, 64, 64, 3)
    x = pixels_to_input(u8)  # (N, 3, 64, 64)
    feats = batched(model.image_features, x)  # (N, F)
    z = Gaussian.from_head(model.enc_x(feats)).mu  # (N, Z) q_x from the shared trunk
    w = (torch.sigmoid(model.decode_w(z)) >= 0.5).float()  # (N, A)
    zw = model.q_w(w).mu  # (N, Z)
    return Faces(
        rows=rows,
        u8=u8,
        x=x,
        labels=labels[rows],
        seen=batched(classifier.probs, x) >= 0.5,
        w=w,
        z=z,
        dz=decode(model, z),
        zw=zw,
        dzw=decode(model, zw),
        feats=feats,
        dzxw=decode(model, model._joint(feats, w).mu),
    )


def value(target: int, s: float) -> float:
    return 0.5 + s / 2 if target else 0.5 - s / 2


def with_value(w: torch.Tensor, i: int, v: float) -> torch.Tensor:
    w = w.clone()
    w[:, i] = v
    return w


# ----------------------------------------------------------------------------- the rules


def delta_paper(model, f: Faces, dirs, k, i, target, s):
    return decode(model, model.q_w(with_value(f.w[k], i, value(target, s))).mu) - f.dzw[k]


def delta_latent(model, f: Faces, dirs, k, i, target, s):
    moved = model.q_w(with_value(f.w[k], i, value(target, s))).mu - f.zw[k]  # (b, Z)
    return decode(model, f.z[k] + moved) - f.dz[k]


def delta_joint(model, f: Faces, dirs, k, i, target, s):
    return decode(model, model._joint(f.feats[k], with_value(f.w[k], i, value(target, s))).mu) - f.dzxw[k]


def delta_natural(model, f: Faces, dirs: Directions, k, i, target, s):
    return decode(model, f.z[k] + dirs.natural(model, i, target, s)) - f.dz[k]


def delta_regress(model, f: Faces, dirs: Directions, k, i, target, s):
    c = (0.5 + s / 2) * (1 if target else -1)
    return decode(model, f.z[k] + c * dirs.regress[i]) - f.dz[k]


def probe_move(dirs: Directions, z: torch.Tensor, i: int, u: torch.Tensor, target: int, s: float):
    """Move z along u until the linear read-out of attribute i reaches its goal (no further if it already has;
    capped): each face moves as far as it needs, not a fixed step (InterFaceGAN's edit, on the JMVAE's latent
    space). The goal and the cap are the library's regress rule's (edit_directions.EditConstants.needed); along
    u = B_i this is that rule."""
    c = dirs.constants
    shape = (len(z), len(c.means))
    need = c.needed(z, torch.full(shape, bool(target)), torch.full(shape, float(s)))[:, i]  # (b,)
    return z + need[:, None] * u / c.readout[i, :-1].dot(u)  # (b, Z)


def delta_probe(model, f: Faces, dirs: Directions, k, i, target, s):
    z = probe_move(dirs, f.z[k], i, dirs.probe_dir[i], target, s)
    return decode(model, z) - f.dz[k]


def delta_regressfit(model, f: Faces, dirs: Directions, k, i, target, s):
    z = probe_move(dirs, f.z[k], i, dirs.regress[i], target, s)
    return decode(model, z) - f.dz[k]


def delta_probecond(model, f: Faces, dirs: Directions, k, i, target, s):
    z = probe_move(dirs, f.z[k], i, dirs.probe_cond[i], target, s)
    return decode(model, z) - f.dz[k]


MASK_LOW, MASK_HIGH = 4 / 127.5, 12 / 127.5  # |delta| in [-1, 1] units: dropped below 4/255ths, kept above 12


def mask(delta: torch.Tensor) -> torch.Tensor:
    """A soft per-pixel mask from the change itself: faint, spread-out changes (a tint over the whole crop) go,
    strong local ones (hair, glasses, a moustache) stay; blurred so the kept region has no hard edge."""
    mag = delta.abs().mean(1, keepdim=True)  # (b, 1, 64, 64)
    mag = F.avg_pool2d(mag, 5, 1, 2, count_include_pad=False)
    m = ((mag - MASK_LOW) / (MASK_HIGH - MASK_LOW)).clamp(0, 1)
    return F.avg_pool2d(m, 3, 1, 1, count_include_pad=False)  # (b, 1, 64, 64)


BASE_RULES = {
    "paper": delta_paper,
    "latent": delta_latent,
    "joint": delta_joint,
    "natural": delta_natural,
    "regress": delta_regress,
    "probe": delta_probe,
    "probecond": delta_probecond,
    "regressfit": delta_regressfit,
}


def rule_delta(name: str) -> Callable:
    base, _, extra = name.partition("+")
    fn = BASE_RULES[base]
    if extra == "mask":

        def masked(*a):
            delta = fn(*a)
            return delta * mask(delta)

        return masked
    if extra in ("foot", "foot2"):  # foot2: the footprint squared, tighter round the attribute's region
        power = 2 if extra == "foot2" else 1
        return lambda model, f, dirs, k, i, t, s: fn(model, f, dirs, k, i, t, s) * dirs.footprint[i] ** power
    if extra:
        raise ValueError(name)
    return fn


def strengths_of(name: str) -> tuple:
    return STRENGTHS[name.partition("+")[0]]


# ----------------------------------------------------------------------------- directions from training faces


def footprints(images: np.ndarray, labels: np.ndarray, train_rows: np.ndarray) -> torch.Tensor:
    """Where each attribute shows, from the photos alone: ridge regression of every training pixel on the 40
    labels, so that attribute i's map is its own change with the other 39 held fixed (blond hair lights the hair,
    not the face that blond people's photos also tend to have lighter). |coefficient| averaged over colour,
    scaled so the strongest tenth of the crop is 1, lightly blurred: (A, 1, 64, 64) in [0, 1]."""
    cache = OUT / "footprints.safetensors"
    if cache.exists():
        return load_file(cache)["footprint"]
    foot = edit_directions.footprints(images, labels, train_rows)[:, None]  # (A, 1, 64, 64)
    save_file({"footprint": foot.contiguous()}, cache)
    return foot


def directions(model: JMVAE, images: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, n: int, seed: int):
    cache = OUT / f"directions4_{n}_{seed}.safetensors"
    if cache.exists():
        saved = load_file(cache)
        contexts = [saved.pop(f"contexts.{i}") for i in range(labels.shape[1])]
        return Directions(contexts, **saved, footprint=footprints(images, labels, train_rows))
    rows = np.sort(np.random.default_rng(seed + 1).choice(train_rows, n, replace=False))
    x = pixels_to_input(torch.from_numpy(np.ascontiguousarray(images[rows])))  # (n, 3, 64, 64)
    z = batched(lambda t: model.q_x(t).mu, x)  # (n, Z)
    w = (torch.sigmoid(model.decode_w(z)) >= 0.5).float()  # (n, A)
    y = torch.from_numpy(labels[rows]).float()  # (n, A)
    regress = edit_directions.regression_directions(z, y)  # (A, Z): each attribute's own latent change
    probe = edit_directions.readout(z, y)  # (A, Z + 1)
    # a read-out's own gradient a_i leans on directions the data hardly varies in (and the decoder hardly
    # renders); cov(z) a_i moves along the data's own variation instead, like regress
    cov = torch.cov(z.T)  # (Z, Z)
    probe_dir = probe[:, :-1] @ cov  # (A, Z)
    # min d' cov^-1 d subject to a_j . d = [i == j] for every read-out j: d = cov A' (A cov A')^-1 e_i
    gram_a = probe_dir @ probe[:, :-1].T  # (A, A)
    probe_cond = torch.linalg.solve(gram_a + 1e-3 * gram_a.diagonal().mean() * torch.eye(len(gram_a)), probe_dir)
    # too few faces with the attribute to say where it occurs: every face is the context
    contexts = [w[w[:, i] == 1] if (w[:, i] == 1).sum() >= 10 else w for i in range(w.shape[1])]
    probe_means = edit_directions.class_means(z, y, probe)  # (A, 2)
    dirs = Directions(
        contexts, regress, probe, probe_dir, probe_cond, probe_means, footprints(images, labels, train_rows)
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    named = {"regress": regress, "probe": probe, "probe_dir": probe_dir, "probe_cond": probe_cond}
    named |= {"probe_means": probe_means} | {f"contexts.{i}": c for i, c in enumerate(contexts)}
    save_file(
        {k: v.clone(memory_format=torch.contiguous_format) for k, v in named.items()}, cache
    )  # safetensors: no pickle, even for a cache
    return dirs


# ----------------------------------------------------------------------------- running the edits


def pick(labels: np.ndarray, split_rows: np.ndarray, names: list[str], k: int, seed: int) -> dict:
    """(attribute, target) -> up to k rows of the split whose label is not the target, in a fixed random order."""
    order = np.random.default_rng(seed).permutation(split_rows)
    return {(a, t): order[labels[order, names.index(a)] != t][:k] for a in EDITED for t in (1, 0)}


def load(seed: int):
    torch.set_num_threads(2)
    data = load_data([str(ROOT / d) for d in DATA], progress=False)
    loaded = load_model(ROOT / "weights" / "default.safetensors")
    model, names = loaded.model.eval(), loaded.attr_names
    assert names == data.attr_names
    model = model.to(memory_format=torch.channels_last)
    classifier = quality.load_classifier(None, names, torch.device("cpu"))
    classifier.model.eval()
    return data, model, names, classifier


@torch.inference_mode()
def run(args) -> None:
    data, model, names, classifier = load(args.seed)
    dirs = directions(model, data.images, data.attrs, data.indices("train"), args.n_directions, args.seed)
    for split, k in (("train", args.k_train), ("val", args.k_val)):
        picked = pick(data.attrs, data.indices(split), names, k, args.seed)
        union = np.unique(np.concatenate(list(picked.values())))
        t0 = time.time()
        f = prepare(model, classifier, data.images, data.attrs, union)
        print(f"{split}: {len(union)} faces prepared in {time.time() - t0:.0f} s", flush=True)
        where = {key: np.searchsorted(union, r) for key, r in picked.items()}
        meta = {
            f"{a}|{t}": {
                "rows": where[a, t].tolist(),
                "before": (f.seen[where[a, t], names.index(a)] == bool(t)).tolist(),  # target seen unedited
                "male": f.labels[where[a, t], names.index("Male")].tolist(),
            }
            for a, t in picked
        }
        (OUT / f"faces_{split}.json").write_text(json.dumps(meta))
        for rule in args.rules:
            t0, delta_fn = time.time(), rule_delta(rule)
            grid_s = [float(s) for s in (args.strengths or strengths_of(rule))]
            result = {"strengths": grid_s, "cells": {}}
            for s in grid_s:
                for a in EDITED:
                    i = names.index(a)
                    others = torch.ones(len(names), dtype=torch.bool)
                    others[i] = False
                    # both directions in one pass: the batch is what costs
                    keys = [(t, where[a, t]) for t in (1, 0) if len(where[a, t])]
                    k_all = torch.from_numpy(np.concatenate([r for _, r in keys]))
                    tgt = torch.cat([torch.full((len(r),), t) for t, r in keys])
                    out, flips = [], torch.zeros(2, len(names))
                    for b in range(0, len(k_all), BATCH):
                        kb, tb = k_all[b : b + BATCH], tgt[b : b + BATCH]
                        delta = torch.empty_like(f.x[kb])
                        for t in (1, 0):
                            sel = tb == t
                            if sel.any():
                                delta[sel] = delta_fn(model, f, dirs, kb[sel], i, t, s)
                        written = output_to_pixels((f.x[kb] + delta).clamp(-1, 1))  # (b, 64, 64, 3)
                        after = classifier.probs(pixels_to_input(written)) >= 0.5  # (b, A)
                        kept = (after[:, others] == f.seen[kb][:, others]).sum(1)
                        changed = (after != f.seen[kb]).float()  # (b, A)
                        flips[0] += changed[tb == 1].sum(0)
                        flips[1] += changed[tb == 0].sum(0)
                        dpix = (written.float() - f.u8[kb].float()).abs().mean((1, 2, 3))
                        # the model's own reading of its edit, for rules that stop each face where the model
                        # itself sees the target (the report simulates them from these columns)
                        own = model.attrs_from_images(pixels_to_input(written))  # (b, A)
                        own_p = torch.where(tb.bool(), own[:, i], 1 - own[:, i])
                        own_kept = ((own >= 0.5) == f.w[kb].bool())[:, others].sum(1)
                        cols = [(after[:, i] == tb.bool()).float(), kept.float(), dpix, own_p, own_kept.float()]
                        out.append(torch.stack(cols, 1))
                    res = torch.cat(out).numpy()  # (n, 5)
                    start = 0
                    for t, r in keys:
                        result["cells"][f"{a}|{t}|{s:g}"] = res[start : start + len(r)].round(3).tolist()
                        result.setdefault("flips", {})[f"{a}|{t}|{s:g}"] = flips[1 - t].int().tolist()
                        start += len(r)
            (OUT / f"{split}_{rule}.json").write_text(json.dumps(result))
            print(f"{split} {rule}: {time.time() - t0:.0f} s", flush=True)


# ----------------------------------------------------------------------------- the report


def at(res: dict, a: str, t: int, policy) -> np.ndarray | None:
    """The per-face results (n, 5) of one attribute and direction under a policy: a strength, or (tau, cap) for
    "each face at the smallest grid strength up to cap at which the model itself reads the target with
    probability >= tau, else at cap"."""
    if not isinstance(policy, tuple):
        r = res["cells"].get(f"{a}|{t}|{policy:g}")
        return None if r is None else np.asarray(r)
    tau, cap = policy
    grid = [s for s in res["strengths"] if s <= cap]
    stack = np.stack([np.asarray(res["cells"][f"{a}|{t}|{s:g}"]) for s in grid])  # (S, n, 5)
    if stack.shape[2] < 5:
        raise SystemExit("these results predate the model's own reading: rerun them")
    ok = stack[:, :, 3] >= tau  # (S, n)
    first = np.where(ok.any(0), ok.argmax(0), len(grid) - 1)  # (n,)
    return stack[first, np.arange(stack.shape[1])]


def cell(r: np.ndarray | None, meta: dict, strict: bool, male: int | None = None) -> dict | None:
    if r is None:
        return None
    keep = np.ones(len(r), bool)
    if strict:
        keep &= ~np.asarray(meta["before"], bool)
    if male is not None:
        keep &= np.asarray(meta["male"]) == male
    if keep.sum() < MIN_FACES:
        return None
    r = r[keep]
    return {
        "n": int(keep.sum()),
        "seen": float(r[:, 0].mean()),
        "kept": float(r[:, 1].mean() / 39),
        "d": float(r[:, 2].mean()),
    }


def read(split: str, rule: str) -> tuple[dict, dict]:
    res = json.loads((OUT / f"{split}_{rule}.json").read_text())
    meta = json.loads((OUT / f"faces_{split}.json").read_text())
    return res, meta


def grid_of(name: str) -> list[float]:
    return read("val", split_rule(name)[0])[0]["strengths"]


def split_rule(name: str) -> tuple[str, float | None]:
    """'regress@self0.7' -> ('regress', 0.7): the results of regress, each face stopped where the model reads
    the target at 0.7."""
    rule, _, self_tau = name.partition("@self")
    return rule, float(self_tau) if self_tau else None


def calibrate(name: str, goal, cap: float) -> dict:
    """(attribute, target) -> the smallest grid strength (for @self rules: the smallest cap) whose training share
    (strict) reaches goal, else the largest strength up to cap. A goal ("trade", lam) instead picks the strength
    that maximises target seen - lam * (share of other attributes changed) on the training faces: the side
    effects are spent where they buy the most success."""
    rule, tau = split_rule(name)
    res, meta = read("train", rule)
    grid = [s for s in res["strengths"] if s <= cap]
    chosen = {}
    for a in EDITED:
        for t in (1, 0):
            cells = [(s, cell(at(res, a, t, s if tau is None else (tau, s)), meta[f"{a}|{t}"], True)) for s in grid]
            cells = [(s, c) for s, c in cells if c]
            if not cells:
                continue
            if isinstance(goal, tuple) and goal[0] == "fixed":
                chosen[a, t] = goal[1]
            elif isinstance(goal, tuple):
                chosen[a, t] = max(cells, key=lambda sc: sc[1]["seen"] - goal[1] * (1 - sc[1]["kept"]))[0]
            else:
                chosen[a, t] = next((s for s, c in cells if c["seen"] >= goal), cells[-1][0])
    return chosen


def aggregate(name: str, split: str, strengths: Callable, strict: bool, male=None) -> dict:
    """Per (attribute, target) cells at strengths(a, t), and the means over attributes (each attribute the mean of
    its scored directions)."""
    rule, tau = split_rule(name)
    res, meta = read(split, rule)
    cells = {}
    for a in EDITED:
        for t in (1, 0):
            s = strengths(a, t)
            if s is None:
                continue
            c = cell(at(res, a, t, s if tau is None else (tau, s)), meta[f"{a}|{t}"], strict, male)
            if c:
                cells[a, t] = c | {"s": s}
    per_attr = {}
    for a in EDITED:
        cs = [cells[a, t] for t in (1, 0) if (a, t) in cells]
        if cs:
            per_attr[a] = {k: float(np.mean([c[k] for c in cs])) for k in ("seen", "kept", "d")}
    mean = {k: float(np.mean([p[k] for p in per_attr.values()])) for k in ("seen", "kept", "d")} if per_attr else {}
    return {"cells": cells, "per_attr": per_attr, "mean": mean}


GOALS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
TRADES = tuple(("trade", lam) for lam in (1, 2, 3, 4, 6, 8, 12))


def goal_name(goal) -> str:
    if isinstance(goal, tuple):
        return f"{'strength' if goal[0] == 'fixed' else 'lam'} {goal[1]:g}"
    return f"{goal:.0%}"


def parse_goal(text: str):
    """'0.9' (a share), 'lam4' (a trade-off) or 's2' (one strength for every attribute)."""
    if text.startswith("lam"):
        return ("trade", float(text[3:]))
    if text.startswith("s"):
        return ("fixed", float(text[1:]))
    return float(text)


KEPT_BAR = 0.92


def calibrated(rule: str, goal: float, cap: float, split: str, strict: bool = True, male=None) -> dict:
    chosen = calibrate(rule, goal, cap)
    return aggregate(rule, split, lambda a, t: chosen.get((a, t)), strict, male) | {"chosen": chosen}


def pct(v: float) -> str:
    return f"{v:.1%}"


def report(args) -> None:
    have = lambda r: all((OUT / f"{sp}_{split_rule(r)[0]}.json").exists() for sp in ("train", "val"))
    rules = [r for r in args.rules if have(r)]
    names = json.loads((ROOT / "weights" / "default.json").read_text())["attr_names"]
    paper2 = aggregate("paper", "train", lambda a, t: 2.0, True)["mean"]["d"]
    lines = ["## Fixed strength (validation, strict faces, mean over the 13 attributes)\n"]
    lines.append("| rule | strength | target seen | others kept | abs delta | worst attribute |")
    lines.append("|---|---|---|---|---|---|")
    fixed, frontier = {}, {}
    for rule in rules:
        for s in grid_of(rule):
            agg = aggregate(rule, "val", lambda a, t, s=s: s, True)
            m = agg["mean"]
            worst = min(agg["per_attr"].items(), key=lambda kv: kv[1]["seen"])
            lines.append(
                f"| {rule} | {s:g} | {pct(m['seen'])} | {pct(m['kept'])} | {m['d']:.1f} | {worst[0]} {worst[1]['seen']:.0%} |"
            )
            fixed.setdefault(rule, []).append((f"{s:g}", m["seen"], m["kept"], m["d"]))
    lines.append(
        f"\n## Per-attribute strength calibrated on training faces (goal p: the smallest grid strength at which p "
        f"of strict training faces show the target; lam l: the strength maximising target seen - l * others "
        f"changed on training faces; cap {args.cap:g}), scored on validation\n"
    )
    lines.append(
        "| rule | goal | target seen (strict) | target seen (label) | others kept | abs delta | train: kept, abs delta | attributes < 50% |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    best = {bar: {} for bar in args.train_kept}
    for rule in rules:
        for goal in GOALS + TRADES:
            st = calibrated(rule, goal, args.cap, "val")
            lab = calibrated(rule, goal, args.cap, "val", strict=False)
            tr = calibrated(rule, goal, args.cap, "train")
            low = ", ".join(f"{a} {p['seen']:.0%}" for a, p in st["per_attr"].items() if p["seen"] < 0.5)
            m, mt = st["mean"], tr["mean"]
            lines.append(
                f"| {rule} | {goal_name(goal)} | {pct(m['seen'])} | {pct(lab['mean']['seen'])} | {pct(m['kept'])} | {m['d']:.1f} | {pct(mt['kept'])}, {mt['d']:.1f} | {low or '-'} |"
            )
            if not isinstance(goal, tuple):
                frontier.setdefault(rule, []).append((goal_name(goal), m["seen"], m["kept"], m["d"]))
            # the operating point chosen on TRAINING faces: the most success whose side effects stay in bounds
            for bar, chosen in best.items():
                if mt["kept"] >= bar and mt["d"] <= paper2 and mt["seen"] > chosen.get(rule, (0, {"seen": -1}, 0))[2]:
                    chosen[rule] = (goal, m, mt["seen"])
    for bar, chosen in best.items():
        lines.append(
            f"\n## Best success at equal side effects: the calibration whose TRAINING faces show the target most "
            f"often while keeping >= {bar:.0%} of the other attributes, abs delta <= paper@2's ({paper2:.1f}); "
            "validation numbers\n"
        )
        lines.append("| rule | calibration | target seen | others kept | abs delta |")
        lines.append("|---|---|---|---|---|")
        for rule, (goal, m, _) in sorted(chosen.items(), key=lambda kv: -kv[1][1]["seen"]):
            lines.append(f"| {rule} | {goal_name(goal)} | {pct(m['seen'])} | {pct(m['kept'])} | {m['d']:.1f} |")
    for rule in args.detail or []:
        if args.goal is None:
            goal = best[args.train_kept[0]].get(rule, (0.9,))[0]
        else:
            goal = parse_goal(args.goal)
        st = calibrated(rule, goal, args.cap, "val")
        lab = calibrated(rule, goal, args.cap, "val", strict=False)
        res, _ = read("val", split_rule(rule)[0])
        lines.append(f"\n### {rule} calibrated at {goal_name(goal)}: per attribute and direction (validation)\n")
        lines.append(
            "| attribute | target | strength | faces (strict) | target seen (strict) | target seen (label) | others kept | abs delta | most changed others (all faces) |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for (a, t), c in st["cells"].items():
            key = f"{a}|{t}|{c['s']:g}"
            n_all = len(res["cells"][key])
            flips = np.asarray(res.get("flips", {}).get(key, [0] * len(names))) / n_all
            if split_rule(rule)[1] is not None:
                flips[:] = 0  # counted per strength, not per face: unknown for a per-face choice
            flips[names.index(a)] = 0
            top = ", ".join(f"{names[j]} {flips[j]:.0%}" for j in np.argsort(-flips)[:3] if flips[j] >= 0.05)
            lines.append(
                f"| {a} | {'on' if t else 'off'} | {c['s']:g} | {c['n']} | {c['seen']:.0%} | {lab['cells'][a, t]['seen']:.0%} | {pct(c['kept'])} | {c['d']:.1f} | {top} |"
            )
        for a in ("Mustache", "Bald"):
            for male in (1, 0):
                split = calibrated(rule, goal, args.cap, "val", True, male)
                for (a_, t), c in split["cells"].items():
                    if a_ == a:
                        lines.append(
                            f"| {a} (Male={male}) | {'on' if t else 'off'} | {c['s']:g} | {c['n']} | {c['seen']:.0%} | | {pct(c['kept'])} | {c['d']:.1f} | |"
                        )
        m = st["mean"]
        lines.append(
            f"| **mean over attributes** | | | | {pct(m['seen'])} | {pct(lab['mean']['seen'])} | {pct(m['kept'])} | {m['d']:.1f} | |"
        )
        strengths = {a: {("on" if t else "off"): s for (a_, t), s in st["chosen"].items() if a_ == a} for a in EDITED}
        lines.append(f"\nstrengths: `{json.dumps(strengths)}`")
    text = "\n".join(lines)
    (OUT / "report.md").write_text(text)
    print(text)
    plot(fixed, frontier, ROOT / "docs" / "edit_rules.png")


# ----------------------------------------------------------------------------- the plot (Pillow: no matplotlib here)

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def plot(fixed: dict, frontier: dict, path: Path) -> None:
    """Target seen (y) against other attributes kept (x): one colour per rule; thin lines with dots over its fixed
    strengths, thick lines with squares over its per-attribute calibrations (labelled by goal)."""
    W, H, L, R, T, B = 1000, 700, 80, 230, 50, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    kept = [p[2] for c in (*fixed.values(), *frontier.values()) for p in c]
    x0, x1 = max(math.floor(min(kept) * 50) / 50, 0.7), 1.0
    px = lambda k: L + (max(k, x0) - x0) / (x1 - x0) * (W - L - R)
    py = lambda s: H - B - s * (H - T - B)
    d.rectangle([L, T, W - R, H - B], outline="black")
    for k in np.arange(x0, x1 + 1e-9, 0.02):
        d.line([px(k), H - B, px(k), H - B + 5], fill="black")
        d.text((px(k) - 12, H - B + 8), f"{k:.0%}", fill="black")
    for s in np.arange(0, 1.01, 0.1):
        d.line([L - 5, py(s), L, py(s)], fill="black")
        d.text((L - 40, py(s) - 6), f"{s:.0%}", fill="black")
    d.line([px(KEPT_BAR), T, px(KEPT_BAR), H - B], fill="#999999")
    d.line([L, py(0.8), W - R, py(0.8)], fill="#999999")
    d.text(
        (L + (W - L - R) / 2 - 170, H - 30),
        "other attributes kept (bundled classifier, validation faces)",
        fill="black",
    )
    d.text(
        (10, 8),
        "target seen (validation faces the classifier read as lacking it; mean over 13 attributes)",
        fill="black",
    )
    d.text(
        (10, 24),
        "thin + dots: one strength for all (label = strength); thick + squares: per-attribute strengths "
        "calibrated on training faces (label = share of them to reach)",
        fill="black",
    )
    for n, rule in enumerate(fixed):
        col = COLOURS[n % len(COLOURS)]
        for pts, width, r, square in ((fixed[rule], 1, 3, False), (frontier.get(rule, []), 3, 4, True)):
            xy = [(px(k), py(s)) for _, s, k, _ in pts]
            if len(xy) > 1:
                d.line(xy, fill=col, width=width)
            for (lab, *_), (x, y) in zip(pts, xy):
                (d.rectangle if square else d.ellipse)([x - r, y - r, x + r, y + r], fill=col)
                d.text((x + 5, y - 12), lab, fill=col)
        d.line([W - R + 15, T + 20 + 18 * n, W - R + 35, T + 20 + 18 * n], fill=col, width=3)
        d.text((W - R + 40, T + 14 + 18 * n), rule, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ----------------------------------------------------------------------------- images to look at


@torch.inference_mode()
def grid(args) -> None:
    """Rows: faces without the attribute (label); columns: the original, then each rule at each strength."""
    data, model, names, classifier = load(args.seed)
    dirs = directions(model, data.images, data.attrs, data.indices("train"), args.n_directions, args.seed)
    i, t = names.index(args.attr), 0 if args.off else 1
    rows = pick(data.attrs, data.indices("val"), names, args.faces, args.seed + 7)[args.attr, t]
    if args.male is not None:
        rows = np.asarray(
            [
                r
                for r in pick(data.attrs, data.indices("val"), names, 400, args.seed + 7)[args.attr, t]
                if data.attrs[r, names.index("Male")] == args.male
            ][: args.faces]
        )
    f = prepare(model, classifier, data.images, data.attrs, np.sort(rows))
    k = torch.arange(len(rows))
    cols = [f.u8]
    for spec in args.cols:
        rule, s = spec.rsplit("@", 1)
        delta = rule_delta(rule)(model, f, dirs, k, i, t, float(s) if "." in s else int(s))
        cols.append(output_to_pixels((f.x + delta).clamp(-1, 1)))
    scale = 2
    tile = 64 * scale
    img = Image.new("RGB", (tile * len(cols), tile * len(rows) + 14), "white")
    dr = ImageDraw.Draw(img)
    for c, col in enumerate(cols):
        dr.text((c * tile + 2, 1), "original" if c == 0 else args.cols[c - 1], fill="black")
        for r in range(len(rows)):
            img.paste(Image.fromarray(col[r].numpy()).resize((tile, tile), Image.NEAREST), (c * tile, 14 + r * tile))
    out = (
        ROOT
        / "out"
        / f"grid_{args.attr}_{'off' if args.off else 'on'}{'' if args.male is None else f'_male{args.male}'}{args.tag}.png"
    )
    img.save(out)
    print(out)


@torch.inference_mode()
def showcase(args) -> None:
    """One row per attribute and direction: for each of a few validation faces, the original, the paper's rule at
    the paper's +-2, and args.rule at its calibrated strength (--strengths, the report's JSON)."""
    data, model, names, classifier = load(args.seed)
    dirs = directions(model, data.images, data.attrs, data.indices("train"), args.n_directions, args.seed)
    strengths = json.loads(Path(args.strengths).read_text())
    picked = pick(data.attrs, data.indices("val"), names, 400, args.seed + 11)
    tile, rows = 64, []
    for a in EDITED:
        for t, key in ((1, "on"), (0, "off")):
            if key not in strengths.get(a, {}):
                continue
            i = names.index(a)
            cand = picked[a, t]
            if a in ("Mustache", "Bald") and t == 1:  # the faces the data has the combination for
                cand = cand[data.attrs[cand, names.index("Male")] == 1]
            f = prepare(model, classifier, data.images, data.attrs, np.sort(cand[: args.faces]))
            k = torch.arange(len(f.rows))
            paper = output_to_pixels((f.x + delta_paper(model, f, dirs, k, i, t, 2.0)).clamp(-1, 1))
            ours = output_to_pixels(
                (f.x + rule_delta(args.rule)(model, f, dirs, k, i, t, strengths[a][key])).clamp(-1, 1)
            )
            rows.append(
                (
                    f"{a} {key} ({strengths[a][key]:g})",
                    [im for j in range(len(k)) for im in (f.u8[j], paper[j], ours[j])],
                )
            )
    label_w = 150
    img = Image.new("RGB", (label_w + tile * 3 * args.faces, 14 + tile * len(rows)), "white")
    dr = ImageDraw.Draw(img)
    dr.text((2, 1), f"per face: original | paper@2 | {args.rule} at the calibrated strength", fill="black")
    for r, (label, ims) in enumerate(rows):
        dr.text((2, 14 + r * tile + 26), label, fill="black")
        for c, im in enumerate(ims):
            img.paste(Image.fromarray(im.numpy()), (label_w + c * tile, 14 + r * tile))
    out = ROOT / "out" / f"showcase_{args.rule}.png"
    img.save(out)
    print(out)


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report", "grid", "showcase"):
        q = sub.add_parser(name)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--n-directions", type=int, default=3000, help="training faces the directions are measured on")
        q.add_argument("--rules", nargs="+", default=list(MEASURED))
        q.add_argument("--out", default=str(OUT), help="folder of the per-face results")
    run_p, report_p, grid_p, show_p = (sub.choices[n] for n in ("run", "report", "grid", "showcase"))
    show_p.add_argument("--rule", required=True)
    show_p.add_argument("--strengths", required=True, help="a JSON file {attribute: {'on': s, 'off': s}}")
    show_p.add_argument("--faces", type=int, default=3)
    run_p.add_argument("--k-val", type=int, default=150, help="validation faces per attribute and direction")
    run_p.add_argument("--k-train", type=int, default=100, help="training faces per attribute and direction")
    run_p.add_argument("--strengths", type=float, nargs="+", help="instead of each rule's grid")
    report_p.add_argument(
        "--goal",
        help="calibration for --detail: a share (0.9), a trade-off (lam4) or a strength (s2); default: the best",
    )
    report_p.add_argument("--train-kept", type=float, nargs="+", default=[0.92, 0.95], help="bars on training kept")
    report_p.add_argument("--detail", nargs="*", help="rules to tabulate per attribute")
    report_p.add_argument("--cap", type=float, default=24, help="calibration: the largest strength allowed")
    grid_p.add_argument("--attr", required=True)
    grid_p.add_argument("--off", action="store_true")
    grid_p.add_argument("--male", type=int, choices=(0, 1))
    grid_p.add_argument("--faces", type=int, default=6)
    grid_p.add_argument("--tag", default="")
    grid_p.add_argument("--cols", nargs="+", default=["paper@2", "paper@4", "latent@4", "latent@8"])
    args = p.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    {"run": run, "report": report, "grid": grid, "showcase": showcase}[args.cmd](args)


if __name__ == "__main__":
    main()
