"""Attribute names and values: reading a name as the user wrote it, and the threshold at which an attribute is present.

The model reads and writes attributes as probabilities in [0, 1]; an attribute is present from THRESHOLD on, the
same comparison everywhere (img2attr's table, thresholding for q(z|w), validation accuracy, evaluation).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from jmvae_cli.errors import JmvaeError

if TYPE_CHECKING:  # torch and numpy load only where they are used: `jmvae --help` stays instant
    import numpy as np
    import torch

THRESHOLD = 0.5


class AttributeNameError(JmvaeError):
    pass


def present(probs: torch.Tensor | np.ndarray):
    """Which attributes are present: probs >= THRESHOLD, elementwise (a bool tensor or array of probs' shape)."""
    return probs >= THRESHOLD


def binarize(probs: torch.Tensor | np.ndarray, soft: bool = False):
    return probs if soft else present(probs) * 1.0


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
