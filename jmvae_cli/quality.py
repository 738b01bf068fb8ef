"""How well a JMVAE translates in both directions, as `jmvae evaluate` reports it, and the image statistics the
JMVAE-GAN comparison uses.

    img2attr   faces of the evaluation split -> attributes, p(w|z) at the mean of q(z|x) thresholded at 0.5, and
               the same through q(z|x, w=0) (JMVAE-zero's route into the joint encoder), against the labels; the
               majority class of each attribute on the training split is the baseline to beat
    attr2img   the label vectors of the evaluation split -> the decoded mean of q(z|w), as 8-bit faces, read back
               by the separately trained attribute classifier (baselines.AttributeClassifier); coherence is the
               agreement between requested and recognised attributes. The classifier's own scores on the real
               faces are the ceiling: coherence above them would mean nothing
    edit       x' = x + the rule's change on the crops (editing.edit, as `jmvae edit` does it: by default its rule and
               strengths, auto), for faces whose label is not yet the target; the classifier says whether the edit
               reached the target (on all those faces, and on the "strict" ones it also read as lacking the
               target before) and whether the other attributes stayed as it saw them before; |delta| is the mean
               absolute change per 8-bit pixel value of the crop; "unmade", the share of faces the edit left as
               they were, the model sure they showed the target already (editing.ALREADY_SURE). By default the 13
               attributes AttGAN and STGAN edit, both directions; Mustache and Bald are also split by the face's
               Male label (the data holds no bald women nor women with a moustache)

Scores per attribute are accuracy, balanced accuracy (mean of the true-positive and true-negative rates: on
CelebA's lopsided attributes accuracy alone rewards always saying "no") and F1 of the positive class.
"""

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from jmvae_cli import attributes, editing
from jmvae_cli.baselines import AttributeClassifier
from jmvae_cli.bundled import bundled_weights
from jmvae_cli.checkpoint import load_model
from jmvae_cli.console import console
from jmvae_cli.data import DataError, FaceData
from jmvae_cli.errors import JmvaeError
from jmvae_cli.model import JMVAE, output_to_pixels, pixels_to_input
from jmvae_cli.runtime import Precision

CLASSIFIER_WEIGHTS_NAME = "classifier.safetensors"
# The attributes whose single-attribute edits are scored by default, both directions: the 13 AttGAN and STGAN edit.
EDITED = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bushy_Eyebrows", "Eyeglasses", "Male",
    "Mouth_Slightly_Open", "Mustache", "No_Beard", "Pale_Skin", "Young",
)  # fmt: skip
DEFAULT_EDITS = tuple((n, t) for n in EDITED for t in (1, 0))
# Edits also reported per value of the face's Male label: the combinations the data lacks do not move
SPLIT_BY = "Male"
SPLIT_EDITS = ("Mustache", "Bald")
BATCH_SIZE = 128


class ClassifierError(JmvaeError):
    pass


# ----------------------------------------------------------------------------- scores with known answers


def binary_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column accuracy, balanced accuracy and F1 of {0, 1} predictions (N, A) against {0, 1} targets (N, A).

    Where a column's targets hold one class only, balanced accuracy is that class's rate alone. F1 is 0 where
    no positive is either predicted or present (scikit-learn's zero_division=0), so a mean F1 never rises
    because an attribute happens to be absent."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)  # (N, A)
    tp = (pred & target).sum(0)  # (A,)
    tn = (~pred & ~target).sum(0)
    fp = (pred & ~target).sum(0)
    fn = (~pred & target).sum(0)
    n = max(len(pred), 1)
    pos, neg = tp + fn, tn + fp  # (A,)
    tpr = np.divide(tp, pos, out=np.zeros(tp.shape), where=pos > 0)
    tnr = np.divide(tn, neg, out=np.zeros(tn.shape), where=neg > 0)
    balanced = (tpr * (pos > 0) + tnr * (neg > 0)) / np.maximum((pos > 0).astype(int) + (neg > 0), 1)
    f1_den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, f1_den, out=np.zeros(tp.shape), where=f1_den > 0)
    return {"accuracy": (tp + tn) / n, "balanced_accuracy": balanced, "f1": f1}


def majority_classes(train_attrs: np.ndarray) -> np.ndarray:
    """The more frequent value of each attribute, (N, A) {0, 1} -> (A,) {0, 1}; a tie counts as 1."""
    return (np.asarray(train_attrs, np.float64).mean(0) >= 0.5).astype(np.uint8)


def majority_scores(train_attrs: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """The baseline that ignores the face: every prediction is the training split's majority class."""
    return binary_scores(np.broadcast_to(majority_classes(train_attrs), np.shape(target)), target)


def coherence_scores(requested: np.ndarray, recognised: np.ndarray) -> dict[str, np.ndarray]:
    """Agreement of the attributes a face was generated from with those the classifier recognises in it: the
    requested vector plays the labels, so balanced accuracy and F1 are about what was asked for."""
    return binary_scores(recognised, requested)


def summary(scores: dict[str, np.ndarray], names: list[str]) -> dict:
    """{'mean': {score: value}, 'per_attribute': {name: {score: value}}}, plain floats for JSON."""
    return {
        "mean": {k: float(np.mean(v)) for k, v in scores.items()},
        "per_attribute": {n: {k: float(v[i]) for k, v in scores.items()} for i, n in enumerate(names)},
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F), FID's formula:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2).

    tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2, which is
    symmetric positive semi-definite: eigh on it is stable where a general matrix square root is not."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)  # (F,)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))  # (F, F)
    vals, vecs = np.linalg.eigh(s_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # S_a^1/2
    m = root_a @ s_b @ root_a
    cross = np.linalg.eigvalsh((m + m.T) / 2)  # symmetric up to rounding; eigvalsh reads one triangle only
    tr_root = np.sqrt(np.clip(cross, 0, None)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_root)
    return max(d, 0.0)  # rounding can take identical sets a hair below zero


LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_energy(x: torch.Tensor) -> float:
    """Mean squared response of a 3x3 Laplacian, per channel, over the interior (no padding to invent edges):
    the high-frequency energy of images (B, C, H, W) in any fixed range."""
    x = x.float()
    c = x.shape[1]
    kernel = LAPLACIAN.to(x.device).expand(c, 1, 3, 3)  # (C, 1, 3, 3): one filter per channel
    return float(F.conv2d(x, kernel, groups=c).pow(2).mean())  # (B, C, H-2, W-2) averaged


# ----------------------------------------------------------------------------- models


def default_classifier() -> Path:
    """The attribute classifier bundled beside the default model (weights/ in the repository)."""
    return bundled_weights(CLASSIFIER_WEIGHTS_NAME)


@dataclass
class Classifier:
    """The attribute classifier, its outputs reordered to a JMVAE's attribute order."""

    model: torch.nn.Module  # baselines.AttributeClassifier
    index: torch.Tensor  # (A,) the classifier's column for each of the JMVAE's attributes
    path: Path

    @torch.inference_mode()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1] -> (B, A) probabilities in the JMVAE's attribute order."""
        return self.model.attrs_from_images(x)[:, self.index]

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)  # (B, F)


def load_classifier(path: str | Path | None, attr_names: list[str], device: torch.device) -> Classifier:
    """Load an attribute classifier that knows every attribute in `attr_names` (in any order)."""
    path = Path(path) if path is not None else default_classifier()
    loaded = load_model(path, device)
    if not isinstance(loaded.model, AttributeClassifier):
        raise ClassifierError(f"{path} holds a {loaded.model.cfg.model} model, not an attribute classifier")
    names = loaded.meta.get("attr_names") or []
    missing = [n for n in attr_names if n not in names]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ClassifierError(
            f"the classifier {path} does not know the model's attributes {', '.join(missing[:3])}{more}: "
            "train one on the same attributes (`jmvae train --model classifier`)"
        )
    index = torch.tensor([names.index(n) for n in attr_names], device=device)
    model = loaded.model.to(memory_format=Precision(device, None).memory_format)  # the convolutions' fast layout
    return Classifier(model, index, path)


def default_edits(attr_names: list[str]) -> list[attributes.Change]:
    """DEFAULT_EDITS among the attributes the model has (a model of other attributes gets fewer, or none)."""
    return [attributes.Change(attr_names.index(n), n, bool(t)) for n, t in DEFAULT_EDITS if n in attr_names]


# ----------------------------------------------------------------------------- the evaluation


def _progress(enabled: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True, disable=not enabled)


def as_written(x: torch.Tensor) -> torch.Tensor:
    """Round model output to 8-bit pixels and back: the classifier judges the faces a user would get."""
    return pixels_to_input(output_to_pixels(x))  # (B, 3, S, S)


@torch.inference_mode()
def evaluate_quality(
    model: JMVAE,
    attr_names: list[str],
    images: np.ndarray,
    attrs: np.ndarray,
    train_attrs: np.ndarray,
    *,
    classifier: Classifier | None = None,
    parts: Iterable[str] = ("img2attr", "attr2img", "edit"),
    edits: list[attributes.Change] | None = None,
    strength: float | None = None,
    method: str | None = None,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """The img2attr, attr2img and edit reports of `jmvae evaluate` for faces (N, S, S, 3) uint8 with labels
    (N, A) {0, 1} in the model's attribute order; train_attrs (M, A) give the majority baseline. attr2img and
    edit need the classifier. Edits (no flips: a label says which way) follow the rule `method` of editing.RULES
    (None: the model's default) at `strength` for every attribute (None: auto, editing.strengths).
    Everything runs in fp32, as attr2img and edit do."""
    parts = set(parts)
    if parts & {"attr2img", "edit"} and classifier is None:
        raise ClassifierError("attr2img coherence and edits are judged by an attribute classifier: none was given")
    edits = default_edits(attr_names) if edits is None else edits
    method = method or editing.default_method(model)
    strengths = editing.strengths(model, method, strength)
    values = [c.value(strengths) for c in edits]  # a flip has no face's value to go against: an error here
    split = attr_names.index(SPLIT_BY) if SPLIT_BY in attr_names else None
    device = torch.device(device)
    n, a = len(images), len(attr_names)
    pred_x = np.zeros((n, a), np.uint8)  # p(w|z) at the mean of q(z|x), thresholded
    pred_zero = np.zeros((n, a), np.uint8)  # the same through q(z|x, w=0)
    cls_real = np.zeros((n, a), np.uint8)  # the classifier on the real faces
    cls_gen = np.zeros((n, a), np.uint8)  # the classifier on faces generated from the labels
    # per edit and group of faces (all, split label 0, split label 1): COUNTS
    counts = np.zeros((len(edits), 3, len(COUNTS)), np.float64)

    with _progress(progress) as bar:
        task = bar.add_task("evaluating", total=n)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            u8 = torch.from_numpy(np.ascontiguousarray(images[sl])).to(device)  # (b, S, S, 3)
            x = pixels_to_input(u8)  # (b, 3, S, S)
            w = torch.from_numpy(np.asarray(attrs[sl], np.float32)).to(device)  # (b, A)
            probs = model.attrs_from_images(x)  # (b, A)
            if "img2attr" in parts:
                pred_x[sl] = attributes.present(probs).cpu().numpy()
                pred_zero[sl] = attributes.present(torch.sigmoid(model.decode_w(model.q_xw_blank(x).mu))).cpu().numpy()
            if classifier is not None and parts & {"attr2img", "edit"}:
                seen = attributes.present(classifier.probs(x))  # (b, A)
                cls_real[sl] = seen.cpu().numpy()
            if "attr2img" in parts:
                gen = as_written(model.images_from_z(model.q_w(w).mu))  # (b, 3, S, S)
                cls_gen[sl] = attributes.present(classifier.probs(gen)).cpu().numpy()
            if "edit" in parts:
                for e, (change, value) in enumerate(zip(edits, values)):
                    i, target = change.index, int(change.direction())
                    todo = w[:, i] != target  # (b,) faces whose label is not yet the target
                    if not todo.any():
                        continue
                    edit = editing.edit(model, x[todo], {i: value}, method=method, probs=probs[todo])
                    written = as_written(edit.result)  # (t, 3, S, S)
                    after = attributes.present(classifier.probs(written))  # (t, A)
                    before = seen[todo]  # (t, A)
                    others = torch.ones(a, dtype=torch.bool, device=device)
                    others[i] = False
                    was = before[:, i] == bool(target)  # (t,)
                    now = after[:, i] == bool(target)
                    per_face = torch.stack(
                        [
                            torch.ones_like(now, dtype=torch.float64),
                            was.double(),
                            now.double(),
                            (after[:, others] == before[:, others]).sum(1).double(),
                            ((written - x[todo]).abs() * 127.5).mean((1, 2, 3)).double(),
                            (~was).double(),
                            (now & ~was).double(),
                            editing.shows_already(probs[todo, i], bool(target)).double(),
                        ],
                        1,
                    ).cpu()  # (t, COUNTS)
                    counts[e, 0] += per_face.sum(0).numpy()
                    if split is not None:
                        male = w[todo, split].bool().cpu()
                        counts[e, 1] += per_face[~male].sum(0).numpy()
                        counts[e, 2] += per_face[male].sum(0).numpy()
            bar.advance(task, len(u8))

    report: dict = {}
    if "img2attr" in parts:
        report["img2attr"] = {
            "q_x": summary(binary_scores(pred_x, attrs), attr_names),
            "q_xw_zero": summary(binary_scores(pred_zero, attrs), attr_names),
            "majority": summary(majority_scores(train_attrs, attrs), attr_names),
        }
    if "attr2img" in parts:
        report["attr2img"] = {
            "coherence": summary(coherence_scores(attrs, cls_gen), attr_names),
            "classifier_on_real": summary(binary_scores(cls_real, attrs), attr_names),
        }
    if "edit" in parts:
        report["edit"] = edit_report(counts, edits, attr_names, strengths, strength, method)
    return report


# per edit and group of faces, summed over the faces: edited, target seen before, target seen after, other
# attributes seen unchanged, |delta| per 8-bit value, strict faces (target not seen before), strict faces flipped,
# faces left as they were (the model sure they showed the target already: editing.ALREADY_SURE)
COUNTS = ("faces", "before", "after", "kept", "delta", "strict", "strict_after", "unmade")
MEANS = ("target_before", "flipped", "flipped_strict", "others_unchanged", "abs_delta", "unmade")


def _rates(c: np.ndarray, n_attrs: int) -> dict:
    faces, before, after, kept, delta, strict, strict_after, unmade = c
    share = lambda v, n: float(v / n) if n else None  # noqa: E731
    return {
        "faces": int(faces),
        # the classifier already sees the target on some unedited faces (its errors, or label noise)
        "target_before": share(before, faces),
        "flipped": share(after, faces),
        "flipped_strict": share(strict_after, strict),
        "others_unchanged": share(kept, faces * (n_attrs - 1)),
        "abs_delta": share(delta, faces),
        "unmade": share(unmade, faces),
    }


def edit_report(
    counts: np.ndarray,
    edits: list[attributes.Change],
    attr_names: list[str],
    strengths: attributes.Strengths,
    strength: float | None,
    method: str,
) -> dict:
    """counts (E, 3, COUNTS): per edit, for all its faces and for those whose SPLIT_BY label is 0 and 1. Every row
    says the strength it was made at. The means are over attributes, each the mean of its directions."""
    rows = []
    for change, c in zip(edits, counts):
        on = change.direction()
        row = {"attribute": attr_names[change.index], "target": int(on), "strength": change.strength_of(strengths, on)}
        rows.append(row | _rates(c[0], len(attr_names)))
        if row["attribute"] in SPLIT_EDITS and SPLIT_BY in attr_names:
            for value in (1, 0):
                if c[1 + value][0]:
                    by = {"split": f"{SPLIT_BY}={value}"}
                    rows.append(row | by | _rates(c[1 + value], len(attr_names)))
    done = [r for r in rows if r["faces"] and "split" not in r]
    per_attr: dict[str, list[dict]] = {}
    for r in done:
        per_attr.setdefault(r["attribute"], []).append(r)

    def mean(values) -> float | None:
        v = [x for x in values if x is not None]
        return float(np.mean(v)) if v else None

    # each attribute as the bar reads it: the mean of its two directions
    attrs = {a: {k: mean(r[k] for r in rs) for k in MEANS} for a, rs in per_attr.items()}
    seen = {a: m["flipped"] for a, m in attrs.items() if m["flipped"] is not None}
    return {
        "method": method,
        "strength": "auto" if strength is None else strength,
        "edits": rows,
        "attributes": attrs,
        "lowest": min(seen, key=seen.get) if seen else None,  # the attribute seen least
        "mean": {k: mean(m[k] for m in attrs.values()) for k in MEANS},
    }


def align_attributes(data: FaceData, attr_names: list[str]) -> FaceData:
    """The data's labels in the model's attribute order; the data must have every attribute the model has."""
    if data.attr_names == list(attr_names):
        return data
    missing = [n for n in attr_names if n not in data.attr_names]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"the data has no labels for the model's attributes {', '.join(missing[:3])}{more}")
    cols = [data.attr_names.index(n) for n in attr_names]
    return dataclasses.replace(data, attrs=data.attrs[:, cols], attr_names=list(attr_names))
