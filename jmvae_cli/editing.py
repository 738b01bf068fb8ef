"""Editing attributes of faces with a trained JMVAE: the one batched edit behind `jmvae edit`, `jmvae evaluate` and
`jmvae figure edit`, and the rules it can follow.

Every edit starts alike. w = p(w|z) at the mean of q(z|x), thresholded at attributes.THRESHOLD (or, soft, kept as
probabilities), and w' = w with the requested changes, except those the model is sure the face shows already
(ALREADY_SURE: asked to take off glasses it is sure the face does not wear, it leaves the face as it is). A rule
then says how the faces change, as two images the model draws for each face, `before` (for w) and `after` (for
w'); change() says what that adds to the face, the edited face is x plus that, clipped to the pixel range, and the
photo at full resolution gets the same change, upscaled (faces.paste_edit). The paper's rule adds after - before,
as the paper does. The others add the change of lightness, and of colour where the colour changes little, but
where it changes much (a and b of CIELAB, over COLOUR_TAKEN) the face takes the colour the model draws: added to
olive-brown hair, the yellowing the model draws for Blond_Hair on its own reading of that hair is green, while its
blond is golden.

    paper   Suzuki et al.'s: before = x_mean, the decoded mean of q(z|w); after = x'_mean, the same for w'
    latent  the face's own latent moved by what the change moves q(z|w)'s mean: before = D(mu_x), the decoded mean
            of q(z|x); after = D(mu_x + mu_w(w') - mu_w(w)). The step is the paper's; it starts from this face
            rather than from the average face of its attributes, so what the decoder adds is drawn on this person
    regress the face's own latent z = mu_x moved along each changed attribute's regression direction (or, where
            calibrated so, along what the attribute changes on the face's nearest training faces) until a linear
            read-out of that attribute reaches a goal set by the strength (edit_directions.py: the constants,
            fitted on training faces and stored with the weights by `jmvae calibrate`); before = D(z), after =
            D(z) + sum_i F_i (D(z_i') - D(z)), z_i' the move of changed attribute i alone and F_i its footprint
            (raised to the power calibrated for the attribute and direction), so that each change lands only
            where the attribute shows in photos (blond hair, not a blond tint over the face); a hair colour lands,
            besides, only on the pixels of this face's hair colour (edit_directions.same_colour), not on the
            background the model draws fuller hair over. Where a cell is drawn (Bald on), the face takes `after`
            itself rather than itself plus the change (the fade: edit_directions.py, "Drawn cells"). A face with
            several changes also gets them in one move inside the union of their footprints, and keeps whichever
            of the two the model, reading the results, sees more of the changes on. Measured best of the rules at
            equal side effects (docs/edit_rules.md)

Which rule by default (default_method): regress where the model carries its constants, else paper, so that weights
without them edit as they always did. `jmvae figure edit` is always the paper's.

Strength in the regress rule. The changed attributes are those where w' differs from w; each one's coded value v
(attributes.coded: 0.5 +- s/2) gives its target, v > 0.5, and its strength s = |2 v - 1|, in units of the
attribute's read-out spread (edit_directions.py): s = 1 moves a face to where the average training face with the
target reads, 2 as far again. `--strength auto` (strengths()) takes each attribute's calibrated strength from the
weights for this rule, and the paper's 2 for the others.

A new rule is one function `rule(model, x, z, w, w_new) -> (before, after, fade)` (a Drawing; fade None but where
the face takes `after` itself), every tensor batched (z: the mean of q(z|x), which edit has already computed to read
w), and its name in RULES; `jmvae edit --method` offers every name there. The strip of the paper's Figure 2 (`edit
--show`) is face | before | after | result, whatever the rule.

Thresholding. q(z|w) only ever saw binary vectors in training: an uncertain 0.5 is a point it has never been asked
about, so its answer there is not "halfway between"; the binary w is also what the paper's p(w|z) would have to give
for x_mean to be the face of a definite attribute set. `soft=True` keeps the probabilities instead.

Edits run in fp32 with the model in eval mode: batch norm then uses its running statistics, so each face of a batch
is edited as if alone (up to float rounding: how a matrix product sums may depend on the batch's size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jmvae_cli import attributes

if TYPE_CHECKING:  # torch loads only where it is used: the CLI reads RULES' names for `--help`
    import numpy as np
    import torch

    from jmvae_cli.model import JMVAE

PAPER = "paper"
REGRESS = "regress"
# How far (CIELAB a-b distance) a rule's two faces must differ in colour for the face to take the colour drawn
# rather than its own plus the difference; in between, some of each (docs/results.md, "Pasting colour")
COLOUR_TAKEN = 10.0
# How sure the model must be that a face shows a requested change already for edit to leave it as it is. Pushed on
# past its target, a face with no glasses got bright rims round the eyes for --unset Eyeglasses and a young face dark
# ones for --set Young; below this the request itself counts as evidence (the model misreads some faces) and the
# change is made (docs/results.md, "Changes a face shows already")
ALREADY_SURE = 0.9

# What a rule draws for a batch of faces: before and after (B, 3, H, W), and where the face takes `after` itself in
# place of its own pixels plus the change (B, 1, H, W) in [0, 1], or None where nowhere (edit_directions.py, "Drawn
# cells"); faces.paste_edit takes the photo's own detail out there too
Drawing = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor | None"]


def paper(model: JMVAE, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, w_new: torch.Tensor) -> Drawing:
    """x_mean and x'_mean: the decoded means of q(z|w) and q(z|w'), (B, 3, H, W) each; x and z are not used."""
    import torch

    means = model.images_from_z(model.q_w(torch.cat([w, w_new])).mu)  # (2B, 3, H, W): one pass for both
    return means[: len(w)], means[len(w) :], None


def latent(model: JMVAE, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, w_new: torch.Tensor) -> Drawing:
    """D(mu_x) and D(mu_x + mu_w(w') - mu_w(w)), (B, 3, H, W) each; mu_x is z."""
    import torch

    mu_w = model.q_w(torch.cat([w, w_new])).mu  # (2B, Z)
    # the step first, so that an unchanged w moves the latent by exactly nothing ((a + b) - b need not be a)
    means = model.images_from_z(torch.cat([z, z + (mu_w[len(w) :] - mu_w[: len(w)])]))  # (2B, 3, H, W)
    return means[: len(x)], means[len(x) :], None


def regress(model: JMVAE, x: torch.Tensor, z: torch.Tensor, w: torch.Tensor, w_new: torch.Tensor) -> Drawing:
    """D(z) and D(z) + sum_i F_i (D(z_i') - D(z)), (B, 3, H, W) each, or for a face with several changes the joint
    move where the model reads that as doing more of them, and the fade of the drawn cells (edit_directions.py,
    "Drawn cells"; None where no change is drawn); see the module doc."""
    import torch

    from jmvae_cli.edit_directions import constants_of

    constants = constants_of(model)
    changed = w_new != w  # (B, A)
    target, s = w_new > attributes.THRESHOLD, (2 * w_new - 1).abs()  # (B, A) each
    before = model.images_from_z(z)  # (B, 3, H, W)
    after = before.clone()
    # Every face of the batch goes through every move and decoding below, changed or not, and is then kept or left
    # as it was: on the CPU a batch's size changes how its sums round, so a face's edit would otherwise depend on
    # how many of its neighbours change (a face the model reads as showing the change already is left alone).
    # Apart: each changed attribute drawn on its own, inside its own footprint, the changes added up.
    # Where each change lands (B, 1, H, W), once: both ways below use it
    regions = {i: constants.region(i, target[:, i], x) for i in changed.any(0).nonzero()[:, 0].tolist()}
    for i, region in regions.items():
        only = torch.zeros_like(changed)
        only[:, i] = changed[:, i]
        z_new = constants.move(z, only, target, s)  # (B, Z)
        moved = (z_new != z).any(1)[:, None, None, None]  # (B, 1, 1, 1): a face left where it is stays so
        drawn = model.images_from_z(z_new)  # (B, 3, H, W)
        after += torch.where(moved, region * (drawn - before), 0)
    several = changed.sum(1) > 1  # (B,)
    if several.any():
        after = _together(model, x, z, changed, target, s, regions, before, after)
    return before, after, _fade(constants, regions, changed, target, before, after)


def _fade(constants, regions: dict, changed, target, before, after):
    """(B, 1, H, W): the fade of regress's drawn cells among the changed ones (EditConstants.fade), the largest
    where several overlap; None where none is drawn."""
    import torch

    fade = None
    for i, region in regions.items():
        if constants.drawn[i].any():
            f = constants.fade(i, target[:, i], region, before, after) * changed[:, i, None, None, None]
            fade = f if fade is None else torch.maximum(fade, f)
    return fade


def _together(model, x, z, changed, target, s, regions: dict, before, after):
    """regress's `after` for faces with several changes (`several`): whichever way the model reads as doing more."""
    import torch

    from jmvae_cli.edit_directions import constants_of

    constants = constants_of(model)
    several = changed.sum(1) > 1  # (B,)
    # Together: one move for all of them, drawn once inside the union of their footprints. Neither way wins on
    # every pair (docs/results.md, "Two changes in one edit"): apart, a strong change cannot wash out another
    # (aged, a face keeps the glasses asked for with it); together, changes of the same place are drawn as one
    # (blond bangs, not a dark fringe over blond hair). Each face keeps whichever the model reads as doing more.
    drawn = model.images_from_z(constants.move(z, changed, target, s))  # (B, 3, H, W)
    outside = torch.ones_like(before[:, :1])  # (B, 1, H, W): outside every changed footprint
    for i, region in regions.items():
        outside = outside * (1 - region * changed[:, i, None, None, None])
    together = before + (1 - outside) * (drawn - before)  # (B, 3, H, W)

    def done(candidate: torch.Tensor) -> torch.Tensor:
        """(B,) how many of each face's changes the model reads on that result."""
        fade = _fade(constants, regions, changed, target, before, candidate)
        pasted = x + pasted_change(x, before, candidate, fade, REGRESS)  # (B, 3, H, W)
        read = attributes.present(model.attrs_from_images(pasted.clamp(-1, 1)))
        return ((read == target) & changed).sum(1)

    pick = several & (done(together) > done(after))  # (B,)
    return torch.where(pick[:, None, None, None], together, after)


Rule = Callable[["JMVAE", "torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor"], Drawing]
RULES: dict[str, Rule] = {PAPER: paper, "latent": latent, REGRESS: regress}


def has_constants(model: JMVAE) -> bool:
    return getattr(model, "edit_constants", None) is not None


def default_method(model: JMVAE) -> str:
    """regress where the model carries its constants (`jmvae calibrate`), else the paper's rule."""
    return REGRESS if has_constants(model) else PAPER


def strengths(model: JMVAE, method: str | None, strength: float | None) -> attributes.Strengths:
    """The strength of each change whose spec names none: `strength` for every attribute, or where it is None
    (`--strength auto`) the strengths calibrated for the regress rule when that is the rule and the model has
    them (attributes without one: attributes.DEFAULT_STRENGTH), else attributes.DEFAULT_STRENGTH, the paper's."""
    if strength is not None:
        return attributes.Strengths(strength)
    if (method or default_method(model)) == REGRESS and has_constants(model):
        return attributes.Strengths(calibrated=model.edit_constants.strengths)
    return attributes.Strengths()


def shows_already(p, on: bool):
    """Whether the model, reading p(w|z) = p for an attribute (a float, or a tensor of them), is sure (ALREADY_SURE)
    the face shows it on / off."""
    return p >= ALREADY_SURE if on else p <= 1 - ALREADY_SURE


def pasted_change(
    x: torch.Tensor, before: torch.Tensor, after: torch.Tensor, fade: torch.Tensor | None, method: str
) -> torch.Tensor:
    """What an edit adds to the faces x: change(), and where `fade` (B, 1, H, W) is 1, what makes x `after` itself."""
    d = change(x, before, after, method)  # (B, 3, H, W)
    return d if fade is None else d + fade * (after - x - d)


def change(x: torch.Tensor, before: torch.Tensor, after: torch.Tensor, method: str) -> torch.Tensor:
    """What an edit by `method` adds to the faces x, given the rule's two faces, (B, 3, H, W) each in [-1, 1]: the
    paper's rule after - before; the others the change of CIELAB lightness, and of colour where the colour changes
    little, with the colour drawn where it changes much (module doc), as an RGB difference. Not clipped; where the
    rule changes nothing it is exactly 0."""
    import torch

    from jmvae_cli.colour import lab_to_srgb, srgb_to_lab

    if method == PAPER:
        return after - before
    lab_x, lab_b, lab_a = (srgb_to_lab((t + 1) / 2) for t in (x, before, after))  # (B, 3, H, W) each
    d = lab_a - lab_b
    # hypot, not norm over the channel axis: the same distance, a hundred times faster on the CPU for this shape
    taken = (torch.hypot(d[:, 1:2], d[:, 2:3]) / COLOUR_TAKEN).clamp(max=1)  # (B, 1, H, W)
    d[:, 1:] += taken * (lab_b[:, 1:] - lab_x[:, 1:])  # the colour drawn, in place of the face's own, where taken
    return 2 * (lab_to_srgb(lab_x + d) - lab_to_srgb(lab_x))


@dataclass
class Edit:
    """An edit of a batch of faces; images in the model's [-1, 1] range, (B, 3, H, W)."""

    probs: torch.Tensor  # (B, A) p(w|z) at the mean of q(z|x)
    w: torch.Tensor  # (B, A) the faces' attributes as fed to the rule
    w_new: torch.Tensor  # (B, A) with the requested changes
    x: torch.Tensor  # the faces
    before: torch.Tensor  # the rule's picture of the faces as they are (the paper's x_mean)
    after: torch.Tensor  # and as changed (x'_mean)
    change: torch.Tensor  # what is added to x (change(), and `after` itself where faded), not clipped
    result: torch.Tensor  # x + change, clipped to the pixel range
    fade: torch.Tensor | None = None  # (B, 1, H, W) where the face takes `after` itself (Drawing), None: nowhere
    read: torch.Tensor | None = None  # (B, A) p(w|z) of the result as written (read_result), where a caller has read it

    @property
    def delta_pixels(self) -> np.ndarray:
        """The change in 8-bit pixel units, as faces.paste_edit adds it to a photo: (B, H, W, 3) float32."""
        return (self.change * 127.5).permute(0, 2, 3, 1).float().cpu().numpy()

    @property
    def fade_map(self) -> np.ndarray | None:
        """Where the photo's own detail gives way to the drawing, as faces.paste_edit takes it: (B, H, W) float32."""
        return None if self.fade is None else self.fade[:, 0].float().cpu().numpy()

    def pixels(self, which: str) -> np.ndarray:
        """(B, H, W, 3) uint8 of 'x', 'before', 'after' or 'result'."""
        from jmvae_cli.model import output_to_pixels

        return output_to_pixels(getattr(self, which)).cpu().numpy()

    def strip(self) -> np.ndarray:
        """face | before | after | result for each face in turn, as the paper's Figure 2: (4B, H, W, 3) uint8."""
        import numpy as np

        return np.stack([self.pixels(k) for k in ("x", "before", "after", "result")], 1).reshape(
            -1, *self.x.shape[2:], 3
        )


def to_input(faces_u8: np.ndarray | Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """Face crops (B, H, W, 3) uint8 -> the model's input (B, 3, H, W) in [-1, 1] on `device`."""
    import numpy as np
    import torch

    from jmvae_cli.model import pixels_to_input

    return pixels_to_input(torch.from_numpy(np.stack(faces_u8).astype(np.uint8, copy=False)).to(device))


def infer(model: JMVAE, x: torch.Tensor, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces x (B, 3, H, W) -> (p(w|z) at the mean of q(z|x) (B, A), w as the edit feeds it to its rule (B, A))."""
    import torch

    with torch.inference_mode():
        probs = model.attrs_from_images(x.float())  # (B, A)
    return probs, attributes.binarize(probs, soft)


def edit(
    model: JMVAE,
    x: torch.Tensor,
    changes: Mapping[int, float] | Sequence[Mapping[int, float]],
    *,
    soft: bool = False,
    method: str | None = None,
    probs: torch.Tensor | None = None,
) -> Edit:
    """Edit faces x (B, 3, H, W) in [-1, 1]: `changes` {attribute index: coded value} for every face, or one such
    mapping per face; `probs` (B, A), when given, are p(w|z) already inferred for x (evaluate infers them once for
    many edits). `method` names the rule in RULES (None: default_method)."""
    import torch

    method = method or default_method(model)
    if method not in RULES:
        raise ValueError(f"unknown edit method {method!r}: one of {', '.join(RULES)}")
    x = x.float()
    with torch.inference_mode():
        z = model.q_x(x).mu  # (B, Z): the faces' latents, which the rules start from and w is read from
        probs = model.attrs_from_z(z) if probs is None else probs  # (B, A)
    w = attributes.binarize(probs, soft)
    per_face = [changes] * len(x) if isinstance(changes, Mapping) else list(changes)
    if len(per_face) != len(x):
        raise ValueError(f"{len(per_face)} sets of changes for {len(x)} faces")
    for face_changes in per_face:
        attributes.check_directions(face_changes)
    with torch.inference_mode():
        w_new = w.clone()  # (B, A)
        for row, face_changes in enumerate(per_face):
            for i, v in face_changes.items():
                if not shows_already(float(probs[row, i]), v > attributes.THRESHOLD):
                    w_new[row, i] = v
        before, after, fade = RULES[method](model, x, z, w, w_new)  # (B, 3, H, W) each, (B, 1, H, W) or None
        d = pasted_change(x, before, after, fade, method)  # (B, 3, H, W)
        result = (x + d).clamp(-1, 1)  # a face the rule leaves alone stays exactly x
    return Edit(probs, w, w_new, x, before, after, d, result, fade)


@dataclass(frozen=True)
class Reading:
    """How the model reads one requested change on one face."""

    face: int  # row of the edit
    index: int  # the attribute
    on: bool  # which way it was asked to go
    p: float  # the model's probability of the attribute on the face


def _readings(
    probs: torch.Tensor, changes: Mapping[int, float], keep: Callable[[int, int, float, bool], bool]
) -> list[Reading]:
    """The changes, face by face, for which keep(face, attribute, the model's probability, whether the change turns
    it on) holds."""
    out = []
    for face in range(len(probs)):
        for i, v in changes.items():
            on, p = v > attributes.THRESHOLD, float(probs[face, i])
            if keep(face, i, p, on):
                out.append(Reading(face, i, on, p))
    return out


def already(edited: Edit, changes: Mapping[int, float]) -> list[Reading]:
    """The changes (as given to edit, the same for every face) that edit did not make, since the face reads so
    already: the model was sure of it (shows_already), or, asked at strength 1 (plain on or off), read it so at all,
    which leaves the rule's w' as its w."""
    unmade = (edited.w_new == edited.w).cpu()  # (B, A)
    return _readings(edited.probs.float().cpu(), changes, lambda face, i, p, on: bool(unmade[face, i]))


def read_back(model: JMVAE, edited: Edit, changes: Mapping[int, float]) -> list[Reading]:
    """The changes (as given to edit, the same for every face) that the model, reading the edited faces as written
    (8-bit) through q(z|x), sees on the wrong side of attributes.THRESHOLD: changes that look weak. Edit.read where
    the caller has read the results already (translate.edit_faces: a block at a time, as img2attr reads), else here."""
    probs = (edited.read if edited.read is not None else read_result(model, edited.result)).float().cpu()  # (B, A)
    return _readings(probs, changes, lambda face, i, p, on: bool(attributes.present(p)) != on)


def read_result(model: JMVAE, result: torch.Tensor) -> torch.Tensor:
    """p(w|z) at the mean of q(z|x) for edited faces (B, 3, H, W) as they are written, in 8 bits: (B, A)."""
    import torch

    from jmvae_cli.model import output_to_pixels, pixels_to_input

    with torch.inference_mode():
        return model.attrs_from_images(pixels_to_input(output_to_pixels(result)))
