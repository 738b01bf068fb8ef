"""The constants of the `regress` edit rule (editing.py) and its per-attribute strengths: fitted on training faces,
stored inside the weights file (tensors under EDIT_PREFIX, strengths in the metadata's "edit" entry), read back
with the model (checkpoint.load_model attaches them as `model.edit_constants`). `jmvae calibrate` makes them.

With z the mean of q(z|x), Y the 40 labels of the training faces, X their pixels, ridge regressions (penalty
`ridge`, an intercept column appended) give

    directions  B (A, Z)      z on [Y, 1]: row i is attribute i's latent change per unit of its label with the
                              other labels held fixed (a moustache without the rest of "male")
    readout     P (A, Z + 1)  Y on [z, 1]: r_i(z) = a_i . z + b_i, a linear reading of attribute i from z
    means       (A, 2)        the mean read-out of training faces without / with attribute i (off_i, on_i)
    footprints  F (A, S, S)   X on [Y, 1]: |coefficient| averaged over colour, scaled so the strongest tenth of
                              the crop is 1 (of an attribute on a smaller part, CalibrateConfig.parts, the
                              strongest share that part covers), clipped to [0, 1], lightly blurred: where
                              attribute i shows in photos
    powers      (A, 2)        the power each footprint is raised to when attribute i is turned off / on, chosen
                              with the strengths (1 where not calibrated): F_i^3 keeps a moustache on the upper
                              lip where F_i darkens the whole lower face
    bank        (N, Z), (N, A) the latents and labels of BANK_FACES random training faces, for the cells whose
                              direction is the face's own neighbours' (local, below)
    local       (A, 2)        which cells (attribute i turned off / on) take that direction, chosen with the
                              strengths (none where not calibrated)
    drawn       (A, 2)        which cells the model draws outright where they change the face (below; none where
                              not calibrated)

Attributes that recolour a part every face has (RECOLOURS: hair) are kept, besides, to the pixels of this face that
have that part's colour (same_colour): the model draws blond hair fuller than the photo's, over the background beside
it, and the footprint, where hair lies on the average face, let that through as a pale halo. Which attributes these
are is read from the names the weights carry, so it is not stored.

An edit of attribute i to target t at strength s (editing.regress) moves z along B_i until r_i reaches
goal = off_i + s (on_i - off_i) (mirrored, on_i - s (on_i - off_i), for t = 0): s = 1 is where the average
training face with the target reads, 2 as far again. Faces already past the goal do not move; no face moves more
than CAP_SPREADS * s spreads |on_i - off_i|, so that a face read far off the training range is not thrown out of
it. With several changes, editing.regress moves and draws each attribute alone and adds up the changes, each
kept inside its own footprint.

Local directions. B_i is one direction for every face. Where a cell is local, a face's direction for attribute i is
instead the mean latent of its NEIGHBOURS nearest bank faces with attribute i less that of its nearest without it
(Upchurch et al.'s deep feature interpolation, in the model's latent space): the change as it looks on faces like
this one, so that brown hair asked of a blond face is drawn brown, where B_i (brown with the other hair colours
held) draws it ginger. It moves the read-out to the same goal.

Drawn cells. A change is a difference added to the photo, so the photo's own detail stays under it: moved towards
baldness, dark hair only greys and thins, and no classifier or person reads the head as bald. Where a cell is drawn
(CalibrateConfig.drawn: Bald on), the face takes the model's picture itself inside the cell's region, as far as that
picture differs from the model's picture of the face as it is (editing.regress: the fade, full from FADE_FULL): the
hair goes, and the scalp is the model's, as blurred as the 64 px decoder draws it.

Strengths. Per attribute and direction, of the strengths of a grid (each tried with every footprint power of
cfg.powers, along B_i and along the neighbours) at which the bundled attribute classifier sees the target on at
least `goal` of the training faces that do not yet have it (label and classifier agree they lack it: true flips;
where none does, the grid's largest), the one with the most target seen less a trade-off L times the share of the
other attributes the classifier reads changed on those faces. The goal alone (the smallest strength that reaches
it, L = None) asks every attribute for the same share whatever it costs; the trade-off buys more where it is
cheap, and the goal keeps it from giving up on the hard cells (a moustache asked for and none drawn). A cell may
have a floor (CalibrateConfig.floors) where the classifier is satisfied before a person is, a ceiling
(CalibrateConfig.ceilings) where a person sees the change before the classifier does, and a fixed footprint power
and direction (CalibrateConfig.fixed) where a person sees the change only so. Only training faces are used, split
as training splits them (data.py), so the validation faces stay unseen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from jmvae_cli import attributes, editing
from jmvae_cli.errors import JmvaeError

if TYPE_CHECKING:
    from jmvae_cli.model import JMVAE
    from jmvae_cli.quality import Classifier

EDIT_PREFIX = "edit."  # the constants' tensors in the weights file: edit.directions, edit.readout, ...
CAP_SPREADS = 2.0
FOOTPRINT_QUANTILE = 0.9  # the strongest tenth of a footprint is 1
# The bank of training latents local directions are read from, and how many neighbours of each kind a face's
# direction averages: enough that the rarest edited attribute (Bald, 2% of faces) has hundreds in the bank, few
# enough that the weights file stays under 25 MB (fp16)
BANK_FACES = 12000
NEIGHBOURS = 50
BATCH = 256
RECOLOURS = frozenset({"Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"})
# Where a face's hair colour is sampled, as shares of the crop: the rows above CROWN[0], the columns between CROWN[1]
# and CROWN[2], weighted by the attribute's footprint. The training faces' framing puts hair there on nearly every
# face; on a bald one or one in a hat the change follows the scalp's or the hat's colour instead
CROWN = (0.22, 0.3, 0.7)
# A pixel this near the crown's colour (CIELAB distance, lightness counted at LIGHTNESS_WEIGHT: hair in shadow is
# darker, not another colour) is recoloured fully, from SAME_COLOUR[1] not at all (docs/results.md, "Hair colour")
SAME_COLOUR = (15.0, 35.0)
LIGHTNESS_WEIGHT = 0.4
# How far (in the model's [-1, 1] range, the largest of the three channels) a drawn cell's picture of the changed
# face must differ from that of the face as it is for the face to take the picture in full; less, in proportion: a
# scalp drawn over hair replaces the hair, the ear beside it that the picture barely changes keeps its detail
FADE_FULL = 0.2


class NoEditConstantsError(JmvaeError):
    pass


@dataclass
class EditConstants:
    directions: torch.Tensor  # (A, Z) B
    readout: torch.Tensor  # (A, Z + 1) [a_i, b_i]
    means: torch.Tensor  # (A, 2) mean read-out without, with the attribute
    footprints: torch.Tensor  # (A, S, S) in [0, 1]
    strengths: dict[str, dict[str, float]] = field(default_factory=dict)  # {name: {"on": s, "off": s}}
    powers: torch.Tensor | None = None  # (A, 2) each footprint's power turning the attribute off, on (None: all 1)
    recolours: frozenset[int] = frozenset()  # the attributes of RECOLOURS, by index (recolouring())
    bank: torch.Tensor | None = None  # (N, Z) latents of training faces (None: no cell can be local)
    bank_labels: torch.Tensor | None = None  # (N, A) bool, their labels
    local: torch.Tensor | None = None  # (A, 2) bool: the cells whose direction is the neighbours' (None: none)
    drawn: torch.Tensor | None = None  # (A, 2) bool: the cells the model draws outright (None: none)

    TENSORS = ("directions", "readout", "means", "footprints")
    OPTIONAL = ("powers", "bank", "bank_labels", "local", "drawn")  # absent from files calibrated before them
    FLAGS = ("bank_labels", "local", "drawn")  # stored as uint8

    def __post_init__(self):
        a, device = len(self.footprints), self.footprints.device
        if self.powers is None:  # files calibrated before the powers: every footprint as fitted
            self.powers = torch.ones(a, 2, device=device)
        if self.local is None:
            self.local = torch.zeros(a, 2, dtype=torch.bool, device=device)
        if self.drawn is None:
            self.drawn = torch.zeros(a, 2, dtype=torch.bool, device=device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """As stored in the weights file, under EDIT_PREFIX: fp32, the bank's latents fp16 and the flags uint8."""
        out = {EDIT_PREFIX + k: getattr(self, k).float().contiguous() for k in (*self.TENSORS, "powers")}
        for k in ("local", "drawn"):
            out[EDIT_PREFIX + k] = getattr(self, k).to(torch.uint8).contiguous()
        if self.bank is not None:
            out[EDIT_PREFIX + "bank"] = self.bank.half().contiguous()
            out[EDIT_PREFIX + "bank_labels"] = self.bank_labels.to(torch.uint8).contiguous()
        return out

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], meta: dict) -> EditConstants | None:
        """The constants among a weights file's tensors (None where it has none) and its metadata's strengths."""
        if not all(EDIT_PREFIX + k in tensors for k in cls.TENSORS):
            return None
        strengths = (meta.get("edit") or {}).get("strengths") or {}
        optional = {k: tensors.get(EDIT_PREFIX + k) for k in cls.OPTIONAL}
        optional = {k: None if t is None else t.bool() if k in cls.FLAGS else t.float() for k, t in optional.items()}
        return cls(
            **{k: tensors[EDIT_PREFIX + k].float() for k in cls.TENSORS},
            **optional,
            strengths=strengths,
            recolours=recolouring(meta.get("attr_names") or []),
        )

    def to(self, device: torch.device | str) -> EditConstants:
        moved = {
            k: None if getattr(self, k) is None else getattr(self, k).to(device)
            for k in (*self.TENSORS, *self.OPTIONAL)
        }
        return EditConstants(**moved, strengths=self.strengths, recolours=self.recolours)

    def footprint(self, i: int, target: torch.Tensor) -> torch.Tensor:
        """(b, 1, S, S): attribute i's footprint for faces turning it on (target (b,) True) or off, each raised to
        the power calibrated for its direction."""
        power = self.powers[i, target.long()]  # (b,)
        return self.footprints[i][None, None] ** power[:, None, None, None]

    def fade(self, i: int, target: torch.Tensor, region: torch.Tensor, before: torch.Tensor, after: torch.Tensor):
        """(b, 1, S, S): how much of the model's picture `after` a change of attribute i to `target` (b,) bool puts
        in place of the face, inside its `region` (b, 1, S, S): 0 for a cell that is not drawn, else by how far
        `after` differs there from `before` (FADE_FULL)."""
        drawn = self.drawn[i, target.long()][:, None, None, None]  # (b, 1, 1, 1)
        far = ((after - before).abs().amax(1, keepdim=True) / FADE_FULL).clamp(max=1)  # (b, 1, S, S)
        return torch.where(drawn, region * far, 0)

    def region(self, i: int, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(b, 1, S, S): where a change of attribute i lands on faces x (b, 3, S, S) in [-1, 1] turning it on
        (target (b,) True) or off: its footprint (footprint()), and for an attribute that recolours, only on the
        pixels of each face that have the colour of the part it recolours (same_colour())."""
        where = self.footprint(i, target)
        return where * same_colour(x, self.footprints[i]) if i in self.recolours else where

    def needed(self, z: torch.Tensor, target: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """How far each attribute's read-out must move to reach its goal, (B, A) for z (B, Z) and targets (B, A)
        bool at strengths s (B, A): 0 where the face reads past the goal already, capped at CAP_SPREADS * s
        spreads."""
        a, b = self.readout[:, :-1], self.readout[:, -1]  # (A, Z), (A,)
        off, on = self.means[:, 0], self.means[:, 1]  # (A,)
        spread = on - off  # (A,)
        goal = torch.where(target, off + s * spread, on - s * spread)  # (B, A)
        need = goal - (z @ a.T + b)  # (B, A)
        need = torch.where(target, need.clamp_min(0), need.clamp_max(0))  # (B, A)
        cap = CAP_SPREADS * s * spread.abs()  # (B, A)
        return torch.maximum(torch.minimum(need, cap), -cap)

    def directions_for(self, z: torch.Tensor, changed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, A, Z): each face's direction for each attribute, B_i, or for a change (`changed` (B, A) bool, to
        `target` (B, A) bool) whose cell is local, its neighbours' in the bank (module doc)."""
        dirs = self.directions.repeat(len(z), 1, 1)  # (B, A, Z)
        use = changed & self.local[torch.arange(len(self.local), device=z.device), target.long()]  # (B, A)
        if self.bank is None or not use.any():
            return dirs
        far = torch.cdist(z, self.bank)  # (B, N)
        for i in use.any(0).nonzero()[:, 0].tolist():
            near = []
            for has in (True, False):
                pool = self.bank_labels[:, i] == has  # (N,)
                k = min(NEIGHBOURS, int(pool.sum()))
                if k == 0:
                    break
                idx = far.masked_fill(~pool, float("inf")).topk(k, largest=False).indices  # (B, k)
                near.append(self.bank[idx].mean(1))  # (B, Z)
            if len(near) == 2:
                d = near[0] - near[1]  # (B, Z)
                take = use[:, i] & (d @ self.readout[i, :-1] > 0)  # (B,): where it raises the read-out at all
                dirs[:, i] = torch.where(take[:, None], d, dirs[:, i])
        return dirs

    def move(self, z: torch.Tensor, changed: torch.Tensor, target: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """z (B, Z) moved along each face's direction (directions_for) for every attribute `changed` (B, A) bool,
        each read-out to its goal."""
        dirs = self.directions_for(z, changed, target)  # (B, A, Z)
        gain = (dirs * self.readout[:, :-1]).sum(-1)  # (B, A) the read-out's change per unit step along each
        step = torch.where(changed, self.needed(z, target, s) / gain, 0)  # (B, A)
        return z + (step[:, :, None] * dirs).sum(1)  # (B, Z)

    def strength(self, name: str, on: bool) -> float | None:
        return self.strengths.get(name, {}).get("on" if on else "off")


def recolouring(attr_names: list[str]) -> frozenset[int]:
    """The indices of the attributes of RECOLOURS among a model's attribute names."""
    return frozenset(i for i, name in enumerate(attr_names) if name in RECOLOURS)


def same_colour(x: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """(b, 1, S, S) in [0, 1]: how near each pixel of faces x (b, 3, S, S) in [-1, 1] is in colour to the face's own
    colour at the crown (CROWN), the median there weighted by `footprint` (S, S): 1 within SAME_COLOUR[0], 0 from
    SAME_COLOUR[1], lightly blurred so that the edge of a part changes smoothly."""
    from jmvae_cli.colour import srgb_to_lab

    lab = srgb_to_lab((x + 1) / 2)  # (b, 3, S, S)
    size = x.shape[-1]
    rows, left, right = (round(share * size) for share in CROWN)
    values, order = lab[:, :, :rows, left:right].flatten(2).sort(-1)  # (b, 3, n) each
    # a footprint of nothing at the crown (an attribute fitted on too few faces) weighs the crown's pixels alike
    weights = (footprint[:rows, left:right].flatten() + 1e-6)[order].cumsum(-1)  # (b, 3, n)
    half = (weights < weights[..., -1:] / 2).sum(-1, keepdim=True)  # (b, 3, 1)
    crown = values.gather(-1, half)  # (b, 3, 1): the weighted median of each channel
    d = lab - crown[..., None]  # (b, 3, S, S)
    d = d * torch.tensor([LIGHTNESS_WEIGHT, 1.0, 1.0], device=x.device)[:, None, None]
    far = (d * d).sum(1, keepdim=True).sqrt()  # (b, 1, S, S)
    near = ((SAME_COLOUR[1] - far) / (SAME_COLOUR[1] - SAME_COLOUR[0])).clamp(0, 1)
    return F.avg_pool2d(near, 3, 1, 1, count_include_pad=False)


def constants_of(model: JMVAE) -> EditConstants:
    """The model's edit constants; NoEditConstantsError (one line, naming the command that adds them) if none."""
    constants = getattr(model, "edit_constants", None)
    if constants is None:
        raise NoEditConstantsError(
            f"these weights carry no constants for the {editing.REGRESS} edit: add them with `jmvae calibrate` "
            "(or use --method paper or latent)"
        )
    return constants


# ----------------------------------------------------------------------------- fitting


def _ridge(design: torch.Tensor, target: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_C |[design, 1] C - target|^2 + ridge |C|^2 (intercept included): (D + 1, T), float64 inside."""
    d = torch.cat([design, torch.ones(len(design), 1, dtype=design.dtype)], 1).double()  # (n, D + 1)
    gram = d.T @ d + ridge * torch.eye(d.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, d.T @ target.double()).float()


def regression_directions(z: torch.Tensor, labels: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """B (A, Z): z (n, Z) regressed on the labels (n, A), the intercept dropped."""
    return _ridge(labels.float(), z.float(), ridge)[:-1]


def readout(z: torch.Tensor, labels: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """P (A, Z + 1): the labels (n, A) regressed on z (n, Z); r_i(z) = P[i, :Z] . z + P[i, Z]."""
    return _ridge(z.float(), labels.float(), ridge).T


def class_means(z: torch.Tensor, labels: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """(A, 2): the mean read-out of the faces without, with each attribute (a class with no face reads 0)."""
    scores = z.float() @ read[:, :-1].T + read[:, -1]  # (n, A)
    has = labels.bool()  # (n, A)
    off = (scores * ~has).sum(0) / (~has).sum(0).clamp_min(1)
    on = (scores * has).sum(0) / has.sum(0).clamp_min(1)
    return torch.stack([off, on], 1)


def footprints(
    images: np.ndarray, labels: np.ndarray, rows: np.ndarray, ridge: float = 1.0, tops: list[float] | None = None
) -> torch.Tensor:
    """(A, S, S) in [0, 1]: where each attribute shows in the photos `images` (N, S, S, 3) uint8 at `rows`,
    from the photos alone (no model): each pixel regressed on the labels (N, A), so attribute i's map is its own
    change with the others held fixed (blond hair lights the hair, not the lighter faces blond people's photos
    also tend to have). `tops` (A,): the share of each map that is 1 (None: 1 - FOOTPRINT_QUANTILE for all)."""
    design = np.concatenate([labels[rows].astype(np.float64), np.ones((len(rows), 1))], 1)  # (n, A + 1)
    xty = np.zeros((design.shape[1], images[0].size))
    for k in range(0, len(rows), 4096):
        pixels = images[rows[k : k + 4096]].reshape(-1, images[0].size).astype(np.float64)  # (b, S * S * 3)
        xty += design[k : k + 4096].T @ pixels
    coef = np.linalg.solve(design.T @ design + ridge * np.eye(design.shape[1]), xty)[:-1]  # (A, S * S * 3)
    size = images.shape[1]
    mag = torch.from_numpy(np.abs(coef).reshape(len(coef), size, size, 3).mean(-1)).float()[:, None]  # (A, 1, S, S)
    quantiles = [FOOTPRINT_QUANTILE] * len(mag) if tops is None else [1 - t for t in tops]
    scale = torch.stack([torch.quantile(m.flatten(), q) for m, q in zip(mag, quantiles)]).clamp_min(1e-12)  # (A,)
    mag = mag / scale[:, None, None, None]
    return F.avg_pool2d(mag.clamp(0, 1), 3, 1, 1, count_include_pad=False)[:, 0]  # (A, S, S)


def encode(model: JMVAE, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """The means of q(z|x) of (N, S, S, 3) uint8 faces, (N, Z) on the CPU."""
    from jmvae_cli.model import pixels_to_input

    out = []
    with torch.inference_mode():
        for k in range(0, len(images), BATCH):
            u8 = torch.from_numpy(np.ascontiguousarray(images[k : k + BATCH])).to(device)
            out.append(model.q_x(pixels_to_input(u8)).mu.float().cpu())  # (b, Z)
    return torch.cat(out)


@dataclass
class CalibrateConfig:
    goal: float = 0.6  # share of the strict training faces that must show the target
    # every strength of the grid is tried, and of those that reach the goal (or, where none does, the largest) the
    # one with the most target seen less `trade` times the share of the other attributes the classifier reads
    # changed is kept; None keeps the smallest that reaches the goal (the calibrations compared: docs/results.md)
    trade: float | None = 5.0
    faces: int = 100  # training faces drawn per attribute and direction (before the strict filter)
    grid: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    # footprint powers each strength is tried with: a higher one keeps the change nearer where the attribute shows
    # most (docs/results.md, "Footprint powers")
    powers: tuple[float, ...] = (1.0, 3.0)
    # training faces B, the read-out and the means are fitted on (None: all). Rare attributes' directions depend on
    # which faces a sample happens to hold, so the default takes every one (encoding them is cheap beside the search)
    latent_faces: int | None = None
    ridge: float = 1.0
    seed: int = 0
    min_faces: int = 10  # fewer strict faces than this: the cell keeps FALLBACK_STRENGTH
    # (name, on, strength): the least strength a cell may take, where the classifier is satisfied before a person
    # is. Eyeglasses on at 2 draws dark shadows round the eyes, which the classifier reads as glasses on 91% of the
    # validation faces; from 3 the lenses are opaque, sunglasses (docs/results.md, "Edit rules")
    floors: tuple[tuple[str, bool, float], ...] = (("Eyeglasses", True, 3.0),)
    # (name, on, strength): the most a cell may take, where a person sees the change before the classifier does.
    # Brown_Hair on along the neighbours is brown hair at 2, the classifier sees it on under 60% of the training
    # faces at any strength, and the fallback to the largest would darken the whole head (docs/results.md, "Local
    # directions"). Bald on, drawn, is read as bald on no more male faces at 3 than at 2, for 4 points of kept less.
    # Young on along the neighbours reaches the goal only at 4, and from 3 it tints grey hair orange
    ceilings: tuple[tuple[str, bool, float], ...] = (
        ("Brown_Hair", True, 2.0),
        ("Bald", True, 2.0),
        ("Young", True, 2.0),
    )
    # (name, on, power, local): the only footprint power and direction a cell is tried with, where a person sees the
    # change only so. Mustache on cubed still darkens the cheeks and jaw of a face read as female; at 8 the moustache
    # is drawn over a face left clean, which a second judge sees on 7 points more faces and the bundled classifier on
    # 1.7 fewer (docs/results.md, "A second judge"). Brown_Hair on along B_i is ginger, along the neighbours brown.
    # Bald on is drawn (below), along the neighbours, its footprint's square root: the hair round the crown goes too.
    # Young on along B_i, footprint cubed or not, is dark eye make-up, which both classifiers read as young and a
    # person as black eyes; along the neighbours, as fitted, it darkens grey hair and smooths the skin
    # (docs/results.md, "Young on, by hand")
    fixed: tuple[tuple[str, bool, float, bool], ...] = (
        ("Mustache", True, 8.0, False),
        ("Brown_Hair", True, 1.0, True),
        ("Bald", True, 0.5, True),
        ("Young", True, 1.0, True),
    )
    # (name, on): the cells the model draws outright where they change the face (module doc, "Drawn cells"). Added to
    # the photo, Bald on is read as bald on 1% of the validation faces at any strength (docs/results.md, "Bald, drawn")
    drawn: tuple[tuple[str, bool], ...] = (("Bald", True),)
    # the strength of a cell with too few faces to calibrate on (and of attributes not calibrated at all)
    fallback_strength: float = attributes.DEFAULT_STRENGTH
    # the directions each setting is tried with: B_i (False) and the face's neighbours' (True, EditConstants.local)
    local: tuple[bool, ...] = (False, True)
    # (name, share): attributes that show on a part of the face smaller than the tenth of the crop a footprint's
    # strongest values fill (FOOTPRINT_QUANTILE), and the share that part covers, which is then what is 1. Mustache's
    # tenth reached past the upper lip into the brows, cheeks and hairline that the regression weighs a little, which
    # no power took out: the moustache came with brown smudges there. Scaled to the brows, Bushy_Eyebrows is seen on
    # more faces for as much kept (docs/results.md, "Mustache, a smaller part")
    parts: tuple[tuple[str, float], ...] = (("Mustache", 0.03), ("Bushy_Eyebrows", 0.03))

    def tops(self, attr_names: list[str]) -> list[float] | None:
        """footprints()' `tops` for the attributes `attr_names`; None (every footprint's strongest tenth) where none
        of them is in self.parts, as where the names are not known."""
        shares = dict(self.parts)
        if not shares.keys() & set(attr_names):
            return None
        return [shares.get(name, 1 - FOOTPRINT_QUANTILE) for name in attr_names]


def fit(
    model: JMVAE,
    images: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    cfg: CalibrateConfig | None = None,
    device: torch.device | str = "cpu",
    attr_names: list[str] | None = None,
) -> EditConstants:
    """B, the read-out and its class means from cfg.latent_faces random training faces (None: all of them); the
    footprints from all of them. labels (N, A) {0, 1} in the model's attribute order, `attr_names` its names (for
    RECOLOURS)."""
    cfg = cfg or CalibrateConfig()
    rows = np.sort(train_rows)
    if cfg.latent_faces is not None and cfg.latent_faces < len(rows):
        rows = np.sort(np.random.default_rng(cfg.seed + 1).choice(rows, cfg.latent_faces, replace=False))
    z = encode(model, images[rows], device)  # (n, Z)
    y = torch.from_numpy(np.asarray(labels[rows], np.float32))  # (n, A)
    read = readout(z, y, cfg.ridge)
    bank = np.sort(np.random.default_rng(cfg.seed + 2).permutation(len(rows))[:BANK_FACES])
    return EditConstants(
        directions=regression_directions(z, y, cfg.ridge),
        readout=read,
        means=class_means(z, y, read),
        footprints=footprints(images, labels, np.sort(train_rows), cfg.ridge, cfg.tops(attr_names or [])),
        recolours=recolouring(attr_names or []),
        bank=z[bank].half().float(),  # as the weights file will hold it
        bank_labels=y[bank].bool(),
    ).to(device)


@dataclass
class Cell:
    strength: float
    faces: int  # strict faces it was calibrated on
    seen: float | None  # share of them showing the target at that strength (None: too few faces)
    kept: float | None = None  # share of the other attributes the classifier reads as before
    power: float = 1.0  # the footprint's power it was tried with
    local: bool = False  # whether with the neighbours' direction (EditConstants.local)
    drawn: bool = False  # whether the model draws it outright (EditConstants.drawn)

    def score(self, trade: float) -> float:
        return self.seen - trade * (1 - self.kept)


def calibrate_strengths(
    model: JMVAE,
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    attr_names: list[str],
    cfg: CalibrateConfig | None = None,
    device: torch.device | str = "cpu",
    on_cell: Callable[[str, bool, Cell], None] | None = None,
) -> dict[str, dict[str, Cell]]:
    """{name: {"on": Cell, "off": Cell}}: of the strengths of cfg.grid (between the cell's floor in cfg.floors and
    its ceiling in cfg.ceilings), each with every footprint power of cfg.powers along every direction of cfg.local
    (or the cell's own power and direction in cfg.fixed), at which the classifier
    sees the target on cfg.goal of the strict training faces, edited with the model's constants
    (model.edit_constants), the one with the best Cell.score(cfg.trade); with cfg.trade None, the smallest (the
    better kept of equal ones). The chosen powers are left in the constants."""
    cfg = cfg or CalibrateConfig()
    from jmvae_cli.model import pixels_to_input
    from jmvae_cli.quality import as_written

    order = np.random.default_rng(cfg.seed).permutation(train_rows)
    constants = constants_of(model)
    out: dict[str, dict[str, Cell]] = {}
    for i, name in enumerate(attr_names):
        for on in (True, False):
            rows = np.sort(order[labels[order, i] != on][: cfg.faces])
            u8 = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device)
            x = pixels_to_input(u8)  # (n, 3, S, S)
            with torch.inference_mode():
                read = attributes.present(classifier.probs(x))  # (n, A)
                strict = read[:, i] != on  # (n,)
                x, read = x[strict], read[strict]
                probs = model.attrs_from_images(x)  # (m, A)
            others = torch.arange(len(attr_names), device=x.device) != i  # (A,)
            drawn = (name, on) in cfg.drawn
            constants.drawn[i, int(on)] = drawn
            cell = Cell(cfg.fallback_strength, len(x), None, drawn=drawn)
            floor = max([f for n, way, f in cfg.floors if (n, way) == (name, on)], default=0.0)
            ceiling = min([c for n, way, c in cfg.ceilings if (n, way) == (name, on)], default=max(cfg.grid))
            grid = [s for s in cfg.grid if floor <= s <= ceiling] or [max(cfg.grid)]
            if len(x) >= cfg.min_faces:
                tried = []
                kinds = cfg.local if constants.bank is not None else (False,)
                fixed = [(local, p) for n, way, p, local in cfg.fixed if (n, way) == (name, on)]
                for local, power in fixed or itertools.product(kinds, cfg.powers):
                    constants.local[i, int(on)], constants.powers[i, int(on)] = local, power
                    for s in grid:
                        e = editing.edit(model, x, {i: attributes.coded(on, s)}, method=editing.REGRESS, probs=probs)
                        after = attributes.present(classifier.probs(as_written(e.result)))  # (m, A)
                        seen = float((after[:, i] == on).float().mean())
                        kept = float((after[:, others] == read[:, others]).float().mean())
                        tried.append(Cell(s, len(x), seen, kept, power, local, drawn))
                        if cfg.trade is None and seen >= cfg.goal:
                            break
                # among the strengths that reach the goal, where some do (else the largest, its best power)
                reach = [c for c in tried if c.seen >= cfg.goal]
                if not reach:
                    largest = [c for c in tried if c.strength == grid[-1]]
                    reach = [max(largest, key=lambda c: c.score(cfg.trade if cfg.trade is not None else 0.0))]
                if cfg.trade is None:
                    cell = min(reach, key=lambda c: (c.strength, -c.kept))
                else:
                    cell = max(reach, key=lambda c: c.score(cfg.trade))
            constants.local[i, int(on)], constants.powers[i, int(on)] = cell.local, cell.power
            out.setdefault(name, {})["on" if on else "off"] = cell
            if on_cell:
                on_cell(name, on, cell)
    return out


def edit_metadata(cells: dict[str, dict[str, Cell]], cfg: CalibrateConfig, how: str) -> dict:
    """The weights' metadata "edit" entry: the rule, its strengths per attribute and direction, and how they were
    made."""
    return {
        "method": editing.REGRESS,
        "strengths": {a: {d: c.strength for d, c in dirs.items()} for a, dirs in cells.items()},
        "powers": {a: {d: c.power for d, c in dirs.items()} for a, dirs in cells.items()},
        "local": {a: {d: c.local for d, c in dirs.items()} for a, dirs in cells.items()},
        "drawn": {a: {d: c.drawn for d, c in dirs.items()} for a, dirs in cells.items()},
        "seen": {a: {d: c.seen for d, c in dirs.items()} for a, dirs in cells.items()},
        "kept": {a: {d: c.kept for d, c in dirs.items()} for a, dirs in cells.items()},
        "faces": {a: {d: c.faces for d, c in dirs.items()} for a, dirs in cells.items()},
        "config": asdict(cfg),
        "how": how,
    }


def calibrate_weights(
    weights: Path,
    data: list[Path],
    out: Path,
    *,
    classifier: Path | None = None,
    cfg: CalibrateConfig | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_cell: Callable[[str, bool, Cell], None] | None = None,
) -> dict:
    """`jmvae calibrate`: fit the constants on the training split of `data` (as training splits it), calibrate
    every attribute's strengths, and write the weights with both to `out` (atomically; an existing file only with
    `force`). Returns the metadata's "edit" entry."""
    cfg = cfg or CalibrateConfig()
    from jmvae_cli import quality
    from jmvae_cli.checkpoint import WeightsError, check_weights_output, load_model, save_edit_constants
    from jmvae_cli.data import Preprocess, load_data, val_fraction_of
    from jmvae_cli.model import JMVAE

    out = check_weights_output(out)
    for taken in (out, out.with_suffix(".json")):  # the metadata beside it, which would be replaced too
        if taken.exists() and not force:
            raise JmvaeError(f"{taken} exists: --force overwrites it")
    loaded = load_model(weights, device)
    model, names = loaded.model, loaded.attr_names
    if not isinstance(model, JMVAE):
        raise WeightsError(f"{weights} holds a {model.cfg.model} model; edits need a JMVAE")
    pre = Preprocess.from_dict(loaded.meta.get("preprocess") or {"size": model.cfg.image_size})
    split = val_fraction_of(loaded.meta)
    faces = quality.align_attributes(load_data(data, preprocess=pre, val_fraction=split, progress=progress), names)
    train_rows = faces.indices("train")
    if len(train_rows) == 0:
        raise JmvaeError("the data has no training faces to calibrate on")
    judge = quality.load_classifier(classifier, names, torch.device(device))
    constants = fit(model, faces.images, faces.attrs, train_rows, cfg, device, names)
    model.edit_constants = constants
    cells = calibrate_strengths(model, judge, faces.images, faces.attrs, train_rows, names, cfg, device, on_cell)
    how = (
        f"jmvae calibrate on the training split of {', '.join(Path(d).name for d in data)} "
        f"({len(train_rows)} faces), judged by {judge.path.name}"
    )
    meta = edit_metadata(cells, cfg, how)
    save_edit_constants(Path(weights), out, constants.tensors(), meta)
    return meta
