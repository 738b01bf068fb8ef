"""The files a command reads and writes: its arguments expanded to photos, and where each photo's edit goes.

Apart from translate.py, which imports torch: a batch command expands its inputs before it loads the model, and can
start reading the photos meanwhile (faces.SearchAhead).
"""

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from jmvae_cli.errors import JmvaeError
from jmvae_cli.images import EDIT_MARK, png_text

# Image files taken from a folder; anything else in it (sidecar .json, .txt) is skipped.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm"}
if ".avif" in Image.registered_extensions():  # Pillow's wheels read AVIF from 11.3 on
    IMAGE_SUFFIXES.add(".avif")


def expand_inputs(args: Iterable[str]) -> list[str]:
    """Files, folders (their images, recursively, sorted, hidden files and folders left out) and globs (for shells
    that did not expand them). A file a folder or glob finds again (named already, or inside two folders given) is
    taken once. Names that match nothing are kept, so that reading them reports the problem in its place."""
    out: list[str] = []
    # the absolute path of every file taken so far: by name, not by file, since two names of one file (hard links,
    # a folder of copies linked to save space) are two photos to a user, each with its own edit
    seen: set[str] = set()

    def take(found: Iterable[str]) -> None:
        for f in found:
            if os.path.abspath(f) not in seen:
                seen.add(os.path.abspath(f))
                out.append(f)

    for a in args:
        p = Path(a)
        if a == "-" or p.is_file():
            out.append(a)  # named by the user: kept, even twice
            seen.add(os.path.abspath(a))
        elif p.is_dir():
            take(
                sorted(
                    str(f)
                    for f in p.rglob("*")
                    if f.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in f.relative_to(p).parts)
                    and f.is_file()
                )
            )
        elif glob.has_magic(a):
            found = sorted(f for f in glob.glob(a, recursive=True) if Path(f).is_file())
            if found:
                take(found)
            else:
                out.append(a)
        else:
            out.append(a)
    return out


def earlier_edits(args: Iterable[str], sources: list[str], out_dir: Path | None) -> list[str]:
    """The sources that folders or globs in `args` found (expand_inputs) and that are the edit this command writes
    of another source: a run again over a folder finds its own NAME-edited.png beside NAME.jpg, or DIR/NAME.png
    in an --out-dir inside it, and would edit the edits. Only files that carry jmvae's mark (images.EDIT_MARK): a
    photo that merely has such a name is a photo, never overwritten. A file named in `args` is never one of them."""
    named = {os.path.abspath(a) for a in args if a != "-" and Path(a).is_file()}
    paths = {s: Path(s).resolve() for s in sources if s != "-"}
    # of other photos: a photo that is only its own output (in the output folder) is refused later
    # (check_edit_outputs), not left out
    outputs = {out for s, p in paths.items() if (out := default_edit_output(s, out_dir).resolve()) != p}
    key, mark = EDIT_MARK
    return [
        s for s, p in paths.items() if p in outputs and os.path.abspath(s) not in named and png_text(s).get(key) == mark
    ]


def default_edit_output(image: str, out_dir: Path | None = None) -> Path:
    """Where the edit of `image` goes: photo.jpg -> photo-edited.png beside it, or OUT_DIR/photo.png (the name kept).
    PNG, since re-encoding a JPEG would change every pixel."""
    p = Path(image)
    return out_dir / f"{p.stem}.png" if out_dir is not None else p.with_name(f"{p.stem}-edited.png")


def _file_id(path: str | Path) -> tuple[int, int] | None:
    """The file's identity: the same for every spelling of its name and for its hard and symbolic links."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_edit_outputs(sources: list[str], outputs: list[Path], force: bool = False) -> list[Path | JmvaeError]:
    """Each source's output as given, or the error that stops that photo: the output is one of the inputs (never
    overwritten, even with force), is an earlier photo's output too, or exists already (without force)."""
    inputs = {_file_id(s): s for s in sources if s != "-"}
    inputs.pop(None, None)
    taken: dict[Path, str] = {}
    checked: list[Path | JmvaeError] = []
    for src, out in zip(sources, outputs, strict=True):
        same_as = inputs.get(_file_id(out))
        key = out.resolve()
        if same_as is not None:
            which = "the input image itself" if same_as == src else f"the input image {same_as}"
            checked.append(
                JmvaeError(f"{src}: its output {out} is {which}: an input is never overwritten, even with --force")
            )
        elif key in taken:
            checked.append(JmvaeError(f"{src}: its output {out} is the output of {taken[key]} too: rename one"))
        elif out.exists() and not force:
            checked.append(JmvaeError(f"{src}: its output {out} exists: --force overwrites it"))
        else:
            checked.append(out)
        taken.setdefault(key, src)
    return checked
