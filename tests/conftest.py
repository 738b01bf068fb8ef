"""Shared test helpers: `run` for the CLI, and tiny data folders in each layout, written into a tmp dir.

Every image is one solid colour given by the number in its file name (face_colour), and its attributes are a
fixed function of that number too (face_attrs), so a test can check that rows, images and attributes still line
up after skipping, subsetting or merging. File numbers have gaps, like the real CelebA subsets.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from jmvae_cli import cli

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


def run(*args, input=None):
    """`jmvae ARGS...` through Typer's CliRunner; arguments may be paths or numbers."""
    return CliRunner().invoke(cli.app, [str(a) for a in args], input=input)


def fails(result, *words, code=1, after_report=False, one_line=None):
    """An expected error: no traceback, and (exit 1, or one_line) one "error:" line on stderr naming what went wrong,
    with nothing else on stdout or stderr; after_report: that line comes below what the command reported before it.
    Exit 2 is a usage error: Typer's own box, or (one_line) ours, as for a change the model cannot read."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if one_line is None:
        one_line = code == 1
    if one_line:
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), result.stderr
        assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
        if not after_report:
            assert len(lines) == 1 and result.stdout == "", result.output
        for w in words:
            assert w in lines[-1], result.stderr
    for w in words:
        assert w in result.stderr, result.stderr
    return result


def face_numbers(n: int, start: int = 1) -> list[int]:
    """n file numbers from start, with every third one missing (3, 6, ... from 1): numbering is not contiguous."""
    return [k for k in range(start, start + 2 * n) if (k - start) % 3 != 2][:n]


def face_number(name: str) -> int:
    """The number a fixture file name carries: '000007.jpg', '7.jpg' and 'img/007.jpg' all give 7."""
    return int(Path(name).stem)


def face_colour(k: int) -> tuple[int, int, int]:
    return (40 * k % 256, 255 - 70 * k % 256, 100 + 30 * k % 150)


def face_attrs(k: int, n_attrs: int) -> list[int]:
    """Attributes in {0, 1} for file number k."""
    return [int((k * 7 + j * 3) % 5 < 2) for j in range(n_attrs)]


def _write_face(path: Path, k: int, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, face_colour(k)).save(path, quality=95)


def _write_attr_txt(path: Path, names: list[str], attr_names: list[str], width: int) -> None:
    # CelebA right-aligns values in width 2, so they are separated by one or two spaces ("-1  1 -1");
    # CelebAMask-HQ uses single spaces (width 1)
    lines = [str(len(names)), " ".join(attr_names)]
    for name in names:
        values = [f"{2 * v - 1:{width}d}" for v in face_attrs(face_number(name), len(attr_names))]
        lines.append(f"{name} {' '.join(values)}")
    path.write_text("\n".join(lines) + "\n")


def write_celeba(tmp, n, *, name="celeba", partition=False, size=(178, 218), attr_names=CELEBA_ATTRS) -> Path:
    """An official-layout CelebA folder with n images (numbers 000001, 000002, 000004, ...). With partition,
    list_eval_partition.txt assigns row i to split i % 3."""
    root = Path(tmp) / name
    names = [f"{k:06d}.jpg" for k in face_numbers(n)]
    for file in names:
        _write_face(root / "img_align_celeba" / file, face_number(file), size)
    _write_attr_txt(root / "list_attr_celeba.txt", names, list(attr_names), width=2)
    if partition:
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {i % 3}\n" for i, f in enumerate(names)))
    return root


def write_celeba_hq(tmp, n, *, name="celeba-hq", size=(64, 64), attr_names=CELEBA_ATTRS) -> Path:
    """A CelebAMask-HQ folder with n images, 0-based with gaps (0.jpg, 1.jpg, 3.jpg, ...)."""
    root = Path(tmp) / name
    names = [f"{k}.jpg" for k in face_numbers(n, start=0)]
    for file in names:
        _write_face(root / "CelebA-HQ-img" / file, face_number(file), size)
    _write_attr_txt(root / "CelebAMask-HQ-attribute-anno.txt", names, list(attr_names), width=1)
    return root


def write_generic(tmp, n, attrs, *, name="generic", size=(80, 100), zero_one=False) -> Path:
    """A folder of images under img/ plus attributes.csv naming them relative to the folder; values are -1/1, or
    0/1 with zero_one."""
    root = Path(tmp) / name
    lines = [",".join(["file", *attrs])]
    for k in face_numbers(n):
        file = f"img/{k:03d}.jpg"
        _write_face(root / file, k, size)
        values = face_attrs(k, len(attrs)) if zero_one else [2 * v - 1 for v in face_attrs(k, len(attrs))]
        lines.append(",".join([file, *map(str, values)]))
    (root / "attributes.csv").write_text("\n".join(lines) + "\n")
    return root


def expected_attrs(names: list[str], n_attrs: int) -> np.ndarray:
    return np.array([face_attrs(face_number(name), n_attrs) for name in names], np.uint8)  # (N, A)


@pytest.fixture
def make_celeba():
    """write_celeba(tmp, n, ...) -> folder path."""
    return write_celeba


@pytest.fixture
def make_celeba_hq():
    """write_celeba_hq(tmp, n, ...) -> folder path."""
    return write_celeba_hq


@pytest.fixture
def make_generic():
    """write_generic(tmp, n, attrs, ...) -> folder path."""
    return write_generic


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # no test may write the decoded-image cache into the user's ~/.cache
    monkeypatch.setenv("JMVAE_CACHE_DIR", str(tmp_path_factory.mktemp("jmvae-cache")))
