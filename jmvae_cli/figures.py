"""The paper's figures (Suzuki, Nakayama & Matsuo 2016), drawn with a trained JMVAE, as `jmvae figure` writes them.

    faces  Figure 1(a): one column per attribute set on (or off) a random base vector, the decoded mean of q(z|w)
           in the first row and random faces z = mean + sigma * eps, eps ~ N(0, zeta I), below it; a row shares
           its eps across the columns, so a row is one "person" under different attributes
    pca    Figure 1(b): the two leading principal components of the means of q(z|w) for random bases with one
           attribute set on, coloured by that attribute
    edit   Figure 2: a face, then the paper's edit x' = x + x'_mean - x_mean for one attribute at a time, with
           the attributes inferred for the face printed beneath

Faces come from the functions behind the commands (translate.average_face, editing.edit, attributes' coding and
change specs), so a figure shows exactly what attr2img and edit produce. Everything is drawn with Pillow: no
plotting library needed.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from jmvae_cli import attributes, editing, translate
from jmvae_cli.translate import Translator

GAP = 2  # pixels between tiles
HEADER_LINES = 2  # column labels wrap onto at most two lines
FOOTER_LINES = 2  # the edit figure's inferred attributes
ROW_LABEL_WIDTH = 60  # at 64-pixel tiles; every margin scales with the tile
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
# Matplotlib's tab10: distinguishable, and kind to the common colour blindnesses in its first five.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip

FACES_COLUMNS = ("Male", "-Male", "Bald", "Smiling", "-Smiling", "Eyeglasses", "Blond_Hair", "Black_Hair",
                 "Mustache", "Wearing_Hat", "-Young")  # fmt: skip
PCA_ATTRIBUTES = ("Male", "Smiling", "Eyeglasses", "Blond_Hair", "Bald")
EDIT_COLUMNS = ("Smiling", "Eyeglasses", "Male", "Blond_Hair", "Black_Hair", "Bangs", "Mustache", "Young")
FACES_ZETA = 0.5  # eps variance of the random rows: below 1 keeps the faces near the average face


# ----------------------------------------------------------------------------- attribute specs


def defaults(specs: tuple[str, ...], attr_names: list[str]) -> list[str]:
    """The default specs whose attribute the model has: a model of other attributes still gets a figure."""
    known = []
    for spec in specs:
        try:
            attributes.parse_change(spec, attr_names, flip=True)
        except attributes.AttributeNameError:
            continue
        known.append(spec)
    return known


def _label(change: attributes.Change, on: bool) -> str:
    text = change.name.replace("_", " ") if on else f"Not {change.name.replace('_', ' ')}"
    return text if change.strength is None else f"{text} ({change.strength:g})"


# ----------------------------------------------------------------------------- layout


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _scale(tile: int) -> float:
    return tile / 64


def _line_height(tile: int) -> int:
    return max(9, round(11 * _scale(tile))) + 3


def sheet_size(
    n_rows: int,
    n_cols: int,
    tile: int,
    row_labels: list[str] | None = None,
    footer_lines: int = 0,
    col_labels: bool = True,
) -> tuple[int, int]:
    """(width, height) of a sheet of n_rows x n_cols tiles of tile x tile pixels, with room for its labels: the
    row labels' margin is ROW_LABEL_WIDTH (scaled) or as wide as the longest label needs."""
    line = _line_height(tile)
    left = 0
    if row_labels is not None:
        font = _font(line - 3)
        longest = max((font.getlength(t) for t in row_labels), default=0)
        left = max(round(ROW_LABEL_WIDTH * _scale(tile)), int(longest) + 8)
    header = HEADER_LINES * line + 4 if col_labels else 0
    footer = footer_lines * line + 6 if footer_lines else 0
    return left + n_cols * tile + (n_cols - 1) * GAP, header + n_rows * tile + (n_rows - 1) * GAP + footer


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; what does not fit in max_lines is cut with an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
        while len(lines[-1]) > 1 and draw.textlength(lines[-1] + "…", font=font) > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "…"
    return lines


def tile_sheet(
    rows: list[list[np.ndarray]],
    col_labels: list[str] | None,
    tile: int = 64,
    row_labels: list[str] | None = None,
    footer: str | None = None,
    corner: str | None = None,
) -> Image.Image:
    """Faces (S, S, 3) uint8 in rows x columns, upscaled to tile pixels, labelled above each column (and left
    of each row, with `corner` above the row labels); the footer's text runs under the whole sheet."""
    n_rows, n_cols = len(rows), len(rows[0])
    footer_lines = FOOTER_LINES if footer else 0
    width, height = sheet_size(n_rows, n_cols, tile, row_labels, footer_lines, col_labels is not None)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    line = _line_height(tile)
    font = _font(line - 3)
    left = width - n_cols * tile - (n_cols - 1) * GAP
    header = HEADER_LINES * line + 4 if col_labels is not None else 0
    for c, label in enumerate(col_labels or []):
        x0 = left + c * (tile + GAP)
        lines = _wrap(draw, label, font, tile, HEADER_LINES)
        top = header - 2 - len(lines) * line  # bottom-aligned: the labels sit right on their faces
        for k, text in enumerate(lines):
            draw.text((x0 + tile / 2, top + k * line), text, fill=INK, font=font, anchor="ma")
    if corner and row_labels is not None:
        draw.text((left - 4, header - 2 - line), corner, fill=INK, font=font, anchor="ra")
    for r, row in enumerate(rows):
        y0 = header + r * (tile + GAP)
        for c, face in enumerate(row):
            sheet.paste(translate.upscale(Image.fromarray(face, "RGB"), tile), (left + c * (tile + GAP), y0))
        if row_labels is not None:
            draw.text((left - 4, y0 + tile / 2), row_labels[r], fill=INK, font=font, anchor="rm")
    if footer:
        y0 = header + n_rows * tile + (n_rows - 1) * GAP + 4
        for k, text in enumerate(_wrap(draw, footer, font, width - 8, FOOTER_LINES)):
            draw.text((4, y0 + k * line), text, fill=INK, font=font)
    return sheet


# ----------------------------------------------------------------------------- Figure 1(a): faces


def faces_figure(
    tr: Translator,
    columns: list[str] | None = None,
    samples: int = 4,
    zeta: float = FACES_ZETA,
    seed: int = 0,
    strength: float = attributes.DEFAULT_STRENGTH,
    tile: int = 64,
) -> Image.Image:
    """Base = the paper's random attribute vector (seeded); each further column sets one attribute on or off
    at `strength`. Row 1 the average faces, then `samples` rows of random faces, each with one shared eps."""
    base = translate.base_attributes("random", len(tr.attr_names), seed)  # (A,)
    ws, labels = [base], ["Base"]
    for spec in columns or defaults(FACES_COLUMNS, tr.attr_names):
        change = attributes.parse_change(spec, tr.attr_names)
        w = base.copy()
        w[change.index] = change.value(strength)
        ws.append(w)
        labels.append(_label(change, change.on))

    def row_labels(samples: int) -> list[str]:
        return ["mean"] + [f"sample {r}" for r in range(1, samples + 1)]

    # the widest row label is the last one's (sizing all of a huge --samples' labels would take long)
    translate.check_samples(samples, lambda n: sheet_size(1 + n, len(ws), tile, row_labels(0) + [f"sample {n}"]))
    # the same seed for every column draws the same eps for each row: one person per row across the columns
    faces = [translate.average_face(tr, w, samples, zeta, seed) for w in ws]  # each (1 + samples, S, S, 3)
    rows = [[f[r] for f in faces] for r in range(1 + samples)]
    return tile_sheet(rows, labels, tile, row_labels(samples), corner=f"zeta {zeta:g}" if samples else None)


# ----------------------------------------------------------------------------- Figure 1(b): PCA


@torch.inference_mode()
def pca_points(
    tr: Translator,
    attrs: list[str] | None = None,
    n_bases: int = 200,
    seed: int = 0,
    strength: float = attributes.DEFAULT_STRENGTH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Means of q(z|w) for n_bases random bases (the shown attributes off), each with one of `attrs` set on,
    projected on their two leading principal components. -> (points (K * n_bases, 2), attribute number of each
    point (K * n_bases,), share of the variance each component explains (2,), attribute names (K,))."""
    changes = [attributes.parse_change(a, tr.attr_names) for a in attrs or defaults(PCA_ATTRIBUTES, tr.attr_names)]
    if not changes:
        raise attributes.AttributeSpecError("the model has none of the paper's PCA attributes: choose some with --attr")
    if len(changes) > len(PALETTE):
        raise attributes.AttributeSpecError(f"the PCA tells at most {len(PALETTE)} attributes apart, one colour each")
    for c in changes:
        if not c.on:
            raise attributes.AttributeSpecError(f"the PCA colours attributes set on: give {c.name}, not its opposite")
    twice = attributes.first_repeat(changes, lambda c: c.index)
    if twice is not None:
        raise attributes.AttributeSpecError(f"{twice.name} is given twice: each attribute is one colour")
    idx = [c.index for c in changes]
    bases = np.random.default_rng(seed).integers(0, 2, (n_bases, len(tr.attr_names))).astype(np.float32)  # (N, A)
    bases[:, idx] = 0  # each point then carries exactly one of the attributes shown, the one it is coloured by
    ws = np.repeat(bases[None], len(idx), 0)  # (K, N, A)
    for k, c in enumerate(changes):
        ws[k, :, c.index] = c.value(strength)
    w = torch.from_numpy(ws.reshape(-1, ws.shape[-1])).to(tr.device)  # (K * N, A)
    z = tr.model.q_w(w).mu.double().cpu()  # (K * N, Z)
    z = z - z.mean(0)
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    # a latent of one dimension has one component: the second axis is then 0
    points = np.zeros((len(z), 2))  # (K * N, 2)
    points[:, : len(vh[:2])] = (z @ vh[:2].T).numpy()
    explained = np.zeros(2)  # (2,)
    explained[: len(s[:2])] = (s[:2] ** 2 / (s**2).sum()).numpy()
    labels = np.repeat(np.arange(len(idx)), n_bases)  # (K * N,)
    return points, labels, explained, [tr.attr_names[i] for i in idx]


def scatter(
    points: np.ndarray, labels: np.ndarray, names: list[str], explained: np.ndarray, size=(720, 540), seed: int = 0
) -> Image.Image:
    """A labelled scatter of points (N, 2) coloured by labels (N,) with a legend, drawn with Pillow."""
    width, height = size
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA drawing blends: overlapping points stay visible
    font, small = _font(15), _font(12)
    left, right, top, bottom = 50, 20, 40, 50
    draw.text((width / 2, 12), "PCA of the means of q(z|w): random bases with one of these attributes set", fill=INK,
              font=font, anchor="ma")  # fmt: skip
    draw.rectangle((left, top, width - right, height - bottom), outline=INK)
    draw.text(((left + width - right) / 2, height - bottom + 22), f"PC 1 ({explained[0]:.0%} of the variance)",
              fill=INK, font=small, anchor="ma")  # fmt: skip
    axis = Image.new("RGBA", (260, 20), BACKGROUND + (0,))
    ImageDraw.Draw(axis).text((130, 2), f"PC 2 ({explained[1]:.0%} of the variance)", fill=INK, font=small, anchor="ma")
    axis = axis.rotate(90, expand=True)
    img.paste(axis, (left - 42, (top + height - bottom) // 2 - axis.height // 2), axis)

    lo, hi = points.min(0), points.max(0)  # (2,)
    span = np.where(hi > lo, hi - lo, 1.0)
    pad = 12
    inner_w, inner_h = width - left - right - 2 * pad, height - top - bottom - 2 * pad
    xy = np.stack(
        [
            left + pad + (points[:, 0] - lo[0]) / span[0] * inner_w,
            height - bottom - pad - (points[:, 1] - lo[1]) / span[1] * inner_h,
        ],
        axis=1,
    )  # (N, 2) pixel positions, PC 2 pointing up
    r = 3
    # drawn in a shuffled order: drawn attribute by attribute, the last would bury the others where they overlap
    for p in np.random.default_rng(seed).permutation(len(xy)):
        x, y = xy[p]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=PALETTE[labels[p] % len(PALETTE)] + (170,))

    line = 18
    box_w = 24 + max(int(draw.textlength(n.replace("_", " "), font=small)) for n in names) + 10
    x0, y0 = width - right - box_w - 6, top + 6
    draw.rectangle((x0, y0, x0 + box_w, y0 + len(names) * line + 6), fill=BACKGROUND + (230,), outline=INK)
    for k, n in enumerate(names):
        cy = y0 + 3 + k * line + line / 2
        draw.rectangle((x0 + 8, cy - 5, x0 + 18, cy + 5), fill=PALETTE[k % len(PALETTE)])
        draw.text((x0 + 24, cy), n.replace("_", " "), fill=INK, font=small, anchor="lm")
    return img


def pca_figure(
    tr: Translator,
    attrs: list[str] | None = None,
    n_bases: int = 200,
    seed: int = 0,
    strength: float = attributes.DEFAULT_STRENGTH,
) -> Image.Image:
    points, labels, explained, names = pca_points(tr, attrs, n_bases, seed, strength)
    return scatter(points, labels, names, explained, seed=seed)


# ----------------------------------------------------------------------------- Figure 2: edits


def edit_figure(
    tr: Translator,
    face_u8: np.ndarray,
    columns: list[str] | None = None,
    strength: float = attributes.DEFAULT_STRENGTH,
    tile: int = 64,
    top: int = 8,
    method: str = editing.PAPER,  # Figure 2 is the paper's rule, whatever edit's default
) -> tuple[Image.Image, np.ndarray]:
    """original | one edit per column, of a (S, S, 3) uint8 face crop. A bare attribute name flips what was
    inferred for the face (a smiling face gets "Not Smiling"), '+Name' / '-Name' set it on / off whatever it was.
    The `top` most probable attributes inferred for the face are printed under the faces.
    -> (the figure, p(w|z) at the mean of q(z|x) (A,))."""
    x = editing.to_input([face_u8], tr.device)  # (1, 3, S, S)
    probs, _ = editing.infer(tr.model, x)  # (1, A)
    p = probs[0].cpu().numpy()  # (A,)
    tiles, labels = [np.asarray(face_u8, np.uint8)], ["Original"]
    for spec in columns or defaults(EDIT_COLUMNS, tr.attr_names):
        change = attributes.parse_change(spec, tr.attr_names, flip=True, bare=None)
        now = bool(attributes.present(p[change.index]))
        # one edit per call, as `jmvae edit` makes it: a tile is exactly that command's --crop-only result (a batch
        # of all the columns would differ from it in the last bits of a float, now and then in a pixel)
        values = {change.index: change.value(strength, now)}
        attributes.check_directions(values, tr.attr_names)  # by its name, where editing.edit knows only its index
        edit = editing.edit(tr.model, x, values, probs=probs, method=method)
        tiles.append(edit.pixels("result")[0])
        labels.append(_label(change, change.direction(now)))
    ranked = [i for i in np.argsort(-p, kind="stable") if attributes.present(p[i])][:top]
    footer = "inferred: " + (", ".join(f"{tr.attr_names[i].replace('_', ' ')} {p[i]:.2f}" for i in ranked) or "none")
    return tile_sheet([tiles], labels, tile, footer=footer), p
