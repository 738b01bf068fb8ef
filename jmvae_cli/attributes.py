"""Attributes as the user names them and as the model codes them: the one place for names, values and changes.

Coding. The model reads and writes attributes as {0, 1} floats (probabilities where inferred); the paper codes them
+-1, so the paper's value v is our (v + 1) / 2. An attribute set on or off at strength s gets the paper's +-s, that
is 0.5 +- s/2 here (`coded`): s = 1 is plain 1 / 0, and the paper's edits (+-2) are s = 2, the default, which pushes
q(z|w) past the values it was trained on to make the change clearly visible.

Presence. An attribute is present from THRESHOLD on, the same comparison everywhere (img2attr's table, thresholding
for q(z|w), validation accuracy, evaluation, which way a flip goes).

Changes. One syntax names a change wherever one is given (`--set` / `--unset`, `evaluate --edit`, `figure --attr`):

    Name, +Name        set it on
    -Name, not Name    set it off (Not_Name too)
    ~Name              flip what was inferred for the face (only where there is a face: `figure edit`)
    ...=S              at its own strength S rather than the command's --strength: Smiling=3 is the paper's +3
                       (our 2.0), -Smiling=3 its -3; S is a number from 0 to MAX_STRENGTH

`--set` and `--unset` take Name or Name=S; the option says the direction.

Strengths. A change's own S wins; else the command's --strength for every attribute; else (`--strength auto`, the
default of edit and evaluate) the strength calibrated for that attribute and direction where the weights carry one
for the rule in use (`Strengths`, editing.strengths), and DEFAULT_STRENGTH for the rest.

Names are case-insensitive, with '-' and ' ' read as '_'; a typo gets the closest names suggested.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jmvae_cli.errors import JmvaeError

if TYPE_CHECKING:  # torch and numpy load only where they are used: `jmvae --help` stays instant
    import numpy as np
    import torch

THRESHOLD = 0.5
DEFAULT_STRENGTH = 2.0  # the paper's +-2
# Five times the paper's +-2. Much further out, q(z|w)'s mean leaves the region of the latent space that the prior
# and the training faces cover and the decoder draws saturated, featureless faces; the bound also keeps out inf,
# which would make NaN faces (black images).
MAX_STRENGTH = 10.0


class AttributeSpecError(JmvaeError):
    """A change that cannot be read: a bad strength, a flip where there is no face, a conflict."""

    exit_code = 2  # a usage error, as Typer's own for a bad option


class AttributeNameError(AttributeSpecError):
    pass


class AttrsFileError(JmvaeError):
    pass


# ----------------------------------------------------------------------------- values


def present(probs: torch.Tensor | np.ndarray):
    """Which attributes are present: probs >= THRESHOLD, elementwise (a bool tensor or array of probs' shape)."""
    return probs >= THRESHOLD


def binarize(probs: torch.Tensor | np.ndarray, soft: bool = False):
    return probs if soft else present(probs) * 1.0


def check_strength(strength: float, what: str = "strength") -> float:
    """`strength` if it is a number from 0 to MAX_STRENGTH; AttributeSpecError otherwise (NaN and inf included)."""
    if not 0 <= strength <= MAX_STRENGTH:  # NaN fails every comparison
        raise AttributeSpecError(f"{what} {strength:g} is not a number from 0 to {MAX_STRENGTH:g}")
    return strength


def check_directions(values: Mapping[int, float], attr_names: list[str] | None = None) -> None:
    """AttributeSpecError for a change coded THRESHOLD, strength 0: it says neither on nor off, and an edit moves a
    face one way or the other (read as off, `--set Smiling=0` took a smile away)."""
    for i, v in values.items():
        if v == THRESHOLD:
            name = attr_names[i] if attr_names else f"attribute {i}"
            raise AttributeSpecError(f"{name} at strength 0 is neither on nor off: an edit needs a strength above 0")


def coded(on: bool, strength: float = DEFAULT_STRENGTH) -> float:
    """The value the model gets for an attribute set on / off at `strength`: the paper's +-strength, 0.5 +- s/2."""
    check_strength(strength)
    return 0.5 + strength / 2 if on else 0.5 - strength / 2


@dataclass(frozen=True)
class Strengths:
    """The strength of a change whose spec names none: `calibrated` {name: {"on": s, "off": s}} where it has the
    attribute and direction, else `default`."""

    default: float = DEFAULT_STRENGTH
    calibrated: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def of(self, name: str, on: bool) -> float:
        return float(self.calibrated.get(name, {}).get("on" if on else "off", self.default))


# ----------------------------------------------------------------------------- names and changes


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def attr_index(name: str, attr_names: list[str]) -> int:
    """Case-insensitive, '-' and ' ' read as '_'; a miss names the closest attributes."""
    normed = [_norm(a) for a in attr_names]
    if _norm(name) in normed:
        return normed.index(_norm(name))
    close = difflib.get_close_matches(_norm(name), normed, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(attr_names[normed.index(c)] for c in close)}?" if close else ""
    raise AttributeNameError(f"unknown attribute {name!r}{hint} (`jmvae attributes` lists the model's names)")


@dataclass(frozen=True)
class Change:
    """One attribute to change: set on, off, or (on=None) flipped from what was inferred for the face."""

    index: int
    name: str  # as the model spells it
    on: bool | None
    strength: float | None = None  # its own (Name=S); None: the command's

    def value(self, strength: float | Strengths = DEFAULT_STRENGTH, present_now: bool | None = None) -> float:
        """The coded value to give the attribute; a flip needs to know whether it is present now."""
        on = self.direction(present_now)
        return coded(on, self.strength_of(strength, on))

    def strength_of(self, strength: float | Strengths, on: bool) -> float:
        """Its own strength, else the command's (one for all, or per attribute and direction)."""
        if self.strength is not None:
            return self.strength
        return strength.of(self.name, on) if isinstance(strength, Strengths) else strength

    def direction(self, present_now: bool | None = None) -> bool:
        """True to set it on, False off; a flip goes against `present_now`."""
        if self.on is not None:
            return self.on
        if present_now is None:
            raise AttributeSpecError(f"~{self.name}: flipping needs a face; use {self.name} or -{self.name} here")
        return not present_now


def parse_change(spec: str, attr_names: list[str], *, flip: bool = False, bare: bool | None = True) -> Change:
    """A change as written (see the module doc) -> Change. flip: '~Name' is allowed (where there is a face);
    bare: what a plain 'Name' means, on (True) or, where flip is allowed, a flip (None)."""
    s = spec.strip()
    strength = None
    if "=" in s:
        s, _, text = s.partition("=")
        try:
            strength = float(text)
        except ValueError:
            raise AttributeSpecError(f"{spec!r}: the strength after '=' is not a number") from None
        check_strength(strength, f"{spec!r}: strength")
        s = s.strip()
    on: bool | None = bare
    if s[:1] in ("+", "-", "~"):
        on = {"+": True, "-": False, "~": None}[s[0]]
        s = s[1:]
    elif _norm(s).startswith("not_") and _norm(s) not in map(_norm, attr_names):
        on, s = False, s[4:]
    i = attr_index(s, attr_names)
    if on is None and not flip:
        name = attr_names[i]
        raise AttributeSpecError(f"{spec!r}: flipping (~) needs a face; use {name} or -{name} here")
    return Change(i, attr_names[i], on, strength)


def parse_set_unset(set_specs: Iterable[str], unset_specs: Iterable[str], attr_names: list[str]) -> list[Change]:
    """--set and --unset as Changes (Name or Name=S each); an attribute in both is an error."""

    def read(specs: Iterable[str], on: bool, option: str) -> list[Change]:
        out = []
        for spec in specs:
            c = parse_change(spec, attr_names, flip=True)
            if c.on is not True:  # -Name, not Name, ~Name: the option already says which way
                raise AttributeSpecError(f"{option} {spec!r}: give the attribute's name (Name or Name=STRENGTH)")
            out.append(Change(c.index, c.name, on, c.strength))
        return out

    on, off = read(set_specs, True, "--set"), read(unset_specs, False, "--unset")
    both = sorted({c.index for c in on} & {c.index for c in off})
    if both:
        raise AttributeSpecError(f"{', '.join(attr_names[i] for i in both)}: both --set and --unset")
    return on + off


def first_repeat(changes: Iterable[Change], key: Callable[[Change], object]) -> Change | None:
    """The first change whose key(change) an earlier one has, or None."""
    seen = set()
    for c in changes:
        if key(c) in seen:
            return c
        seen.add(key(c))
    return None


def values(changes: Iterable[Change], strength: float | Strengths = DEFAULT_STRENGTH) -> dict[int, float]:
    """{attribute index: coded value} of changes that need no face (no flips); the last of repeats wins."""
    return {c.index: c.value(strength) for c in changes}


# ----------------------------------------------------------------------------- img2attr's output, read back


def read_record(text: str, attr_names: list[str], name: str = "<stdin>") -> tuple[np.ndarray, str | None]:
    """The first record of img2attr's json, jsonl, csv or tsv output -> (probabilities (A,), its file name).

    Attributes the record lacks (img2attr --only-positive drops those below its threshold) are taken as 0. Every
    value must be a probability, as img2attr writes them: a value outside [0, 1] (7, -1, 1e400) is an error, not
    clipped, since it most likely means another coding (CelebA's own -1 / 1) or a broken file; attributes beyond
    plain on / off are what `--set Name=STRENGTH` is for."""
    import csv
    import io
    import json

    import numpy as np

    text = text.lstrip("\ufeff")
    if not text.strip():
        raise AttrsFileError(f"{name}: empty attributes file")
    if text.lstrip()[:1] in "[{":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            try:  # jsonl: the first line alone
                data = json.loads(text.lstrip().splitlines()[0])
            except json.JSONDecodeError as e:
                raise AttrsFileError(f"{name}: not valid JSON ({e})") from None
        if isinstance(data, list):
            if not data:
                raise AttrsFileError(f"{name}: no records")
            data = data[0]
        if not isinstance(data, dict):
            raise AttrsFileError(f'{name}: expected img2attr records ({{"file": ..., "attributes": {{...}}}})')
        attrs = data.get("attributes", data)
        file = data.get("file") if isinstance(data.get("file"), str) else None
        if not isinstance(attrs, dict):
            raise AttrsFileError(f"{name}: 'attributes' is not a name -> probability mapping")
        record = {k: v for k, v in attrs.items() if k not in ("file", "face")}
    else:
        lines = text.splitlines()
        delim = "\t" if "\t" in lines[0] else ","
        try:
            rows = list(csv.reader(io.StringIO(text), delimiter=delim))
        except csv.Error as e:  # a field past csv's size limit, a stray line break: not img2attr's output
            raise AttrsFileError(f"{name}: not img2attr's output in any format ({e})") from None
        if len(rows) < 2:
            raise AttrsFileError(f"{name}: a header and at least one row are needed")
        header, row = rows[0], rows[1]
        if len(row) != len(header):
            raise AttrsFileError(f"{name}: the first row has {len(row)} fields, the header {len(header)}")
        file = row[header.index("file")] if "file" in header else None
        record = {h: v for h, v in zip(header, row) if h not in ("file", "face")}

    w = np.zeros(len(attr_names), np.float32)  # (A,)
    for key, value in record.items():
        try:
            i = attr_index(key, attr_names)
        except AttributeNameError as e:
            raise AttrsFileError(f"{name}: {e}") from None
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise AttrsFileError(f"{name}: {key} = {value!r} is not a number") from None
        if not math.isfinite(v):
            raise AttrsFileError(f"{name}: {key} = {value} is not a finite number")
        if not 0 <= v <= 1:
            raise AttrsFileError(
                f"{name}: {key} = {value} is not a probability in [0, 1] as img2attr writes them "
                f"(to push an attribute past on / off, use --set {attr_names[i]}=STRENGTH)"
            )
        w[i] = v
    return w, file
