"""Reading and writing user images: any file Pillow can open comes back as plain 8-bit RGB (or, asked to keep its
transparency, RGBA), or as one clear error. A photo's colour profile and camera metadata ride along (METADATA), so
that an edited photo is written with them."""

import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from jmvae_cli.errors import JmvaeError
from jmvae_cli.files import replacing

# Pillow's default pixel limit (Image.MAX_IMAGE_PIXELS, about 89 Mpx) is kept: far above any camera photo,
# far below what a crafted file could make us allocate. Above it we refuse rather than warn.

# Transparent pixels are composited on white rather than having their alpha dropped: under alpha 0 a PNG may
# store any colour (often black or leftovers of an edit), which dropping the alpha would expose; white is what
# the picture looked like on the page it came from.
BACKGROUND = (255, 255, 255)
# Formats that store an alpha channel; an RGBA image written to any other is flattened on BACKGROUND first.
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
# The formats written: those that keep a photo's size and colours (Pillow also writes ICO, which shrinks it to an
# icon, GIF's 256 colours, and formats it cannot read back, such as PDF)
OUTPUT_FORMATS = {"PNG", "JPEG", "WEBP", "TIFF", "BMP", "PPM"}
# What of a photo's file is kept for its edit, in Image.info: the ICC colour profile (without it a wide-gamut phone
# photo's colours shift when written back) and the EXIF metadata (camera, date, place), re-encoded without the
# orientation (the pixels are turned upright on reading) and without the embedded thumbnail (the unedited photo).
METADATA = ("icc_profile", "exif")
# Formats that store both
METADATA_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}


class ImageError(JmvaeError):
    pass


def read_image(
    source: str | Path | bytes | BinaryIO, name: str | None = None, *, keep_alpha: bool = False
) -> Image.Image:
    """Decode an image file, bytes or binary stream to an upright RGB image; `name` labels it in errors. With
    keep_alpha an image with transparency comes back as RGBA, its colours as stored (flatten shows it as seen)."""
    if isinstance(source, (str, Path)):
        name = name or str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file") from None
        except OSError as e:  # a folder, no permission, an I/O error
            raise ImageError(f"{name}: cannot read file ({e.strerror or e})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name, data = name or "<stdin>", bytes(source)
    else:
        name, data = name or str(getattr(source, "name", "<stdin>")), source.read()
    if not data:
        raise ImageError(f"{name}: empty file")

    with warnings.catch_warnings():
        # Between 1x and 2x the limit Pillow only warns; a bomb is a bomb either way
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Corrupt EXIF: the photo reads all the same, unturned where the orientation is lost, and is written
        # without it (_metadata); a Python warning would only break the one-line messages on stderr
        warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()  # decode now, so truncation shows up here and not in some later resize
            ImageOps.exif_transpose(img, in_place=True)  # a copy otherwise, even of an upright photo
            meta = _metadata(img)
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"{name}: image too large to decode safely ({e})") from None
        except Exception as e:  # decoders of untrusted bytes raise OSError, SyntaxError, ValueError, EOFError, ...
            raise ImageError(f"{name}: truncated or corrupt image ({e})") from None
    img = _to_8_bit(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = img.convert("RGBA") if keep_alpha else flatten(img.convert("RGBA"))
    else:
        # CMYK, YCbCr, L, 1 and P go straight through Pillow's own conversions; RGB, most photos, is not copied
        img = img if img.mode == "RGB" else img.convert("RGB")
    img.info = meta
    return img


def _metadata(img: Image.Image) -> dict:
    """The METADATA of a file as opened, ready to write (see METADATA). A profile of another colour space (a CMYK
    or grey photo's) is dropped: the pixels are converted to RGB without it."""
    icc = img.info.get("icc_profile") or b""
    meta = {"icc_profile": icc} if icc[16:20] == b"RGB " else {}
    if not img.info.get("exif"):  # no EXIF block (a TIFF's own tags describe its file, not the photo)
        return meta
    try:
        exif = img.getexif()  # the image's own: changed here only once the pixels are upright
        exif.pop(0x0112, None)  # Orientation
        if len(exif) or exif.get_ifd(0x8769) or exif.get_ifd(0x8825):  # IFD0, the Exif IFD, the GPS IFD
            meta["exif"] = exif.tobytes()  # those three only: the thumbnail's IFD is left out
    except Exception:  # EXIF that does not parse: the photo is read and written without it
        pass
    return meta


def keep_metadata(src: Image.Image, dst: Image.Image) -> Image.Image:
    """dst, given src's METADATA (a new image made from src's pixels has none)."""
    dst.info.update({k: src.info[k] for k in METADATA if k in src.info})
    return dst


def flatten(img: Image.Image) -> Image.Image:
    """An RGBA image as it shows on the page, composited on BACKGROUND: RGB. Any other image as it is."""
    if img.mode != "RGBA":
        return img
    out = Image.new("RGBA", img.size, BACKGROUND + (255,))
    out.alpha_composite(img)
    return keep_metadata(img, out.convert("RGB"))


def _to_8_bit(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):
        # 16-bit grey: convert("L") would clip everything above 255 to white; rescale the range instead
        a = np.asarray(img).astype(np.float32) / 257  # (H, W) 0..65535 -> 0..255
        img = Image.fromarray(np.rint(a).astype(np.uint8), "L")
    elif img.mode in ("I", "F"):
        # 32-bit int/float grey has no fixed range: 8-bit data stored wide stays put, anything larger is
        # taken as 16-bit (what these modes hold in practice, e.g. 16-bit PNGs on older Pillow), and floats no
        # larger than 1 as the 0..1 range that float images (scientific TIFFs) use
        a = np.nan_to_num(np.asarray(img).astype(np.float64))  # (H, W)
        top = a.max()
        if top > 255:
            a = a / 257
        elif img.mode == "F" and top <= 1:
            a = a * 255
        img = Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8), "L")
    return img


# The text a PNG written by `jmvae edit` carries (a tEXt chunk): a run again over its folder tells its own earlier
# edits from photos by it (photo_files.earlier_edits), never by their names alone
EDIT_MARK = ("Software", "jmvae edit")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_image(
    img: Image.Image, dest: str | Path | BinaryIO, *, fast: bool = False, text: dict[str, str] | None = None
) -> None:
    """Save `img` in the format its file name says; a path is replaced atomically, never left half-written.
    fast: an 8-bit PNG is written by _fast_png rather than by Pillow, several times faster for files a little larger
    on photos (docs/results.md, "Batch edits"), though much larger on noisy images such as training samples.
    text: tEXt chunks for a PNG (other formats have none)."""
    if not isinstance(dest, (str, Path)):
        # a stream (stdout) has no extension unless it was opened on a named file: default to lossless PNG
        name = str(getattr(dest, "name", "<stdout>"))
        suffix = Path(name).suffix
        _save(img, dest, _format_for(suffix, name) if suffix else "PNG", name, fast, text)
        return

    path = Path(dest)
    fmt = check_output(dest)
    try:
        with replacing(path) as tmp, open(tmp, "wb") as f:
            _save(img, f, fmt, str(dest), fast, text)
    except OSError as e:  # a read-only folder, a full disk, a name taken by a folder meanwhile
        raise ImageError(f"{dest}: cannot write image ({e.strerror or e})") from None


def check_output(dest: str | Path) -> str:
    """What can be known about writing an image to `dest` before making it: its format, from the extension (an
    ImageError for an unknown one, a missing folder, or a folder in the way)."""
    path = Path(dest)
    if path.is_dir():
        raise ImageError(f"{dest}: is a folder, not an image file")
    fmt = _format_for(path.suffix, str(dest))
    if not path.parent.is_dir():
        raise ImageError(f"{dest}: output folder {str(path.parent)!r} does not exist")
    return fmt


def _format_for(suffix: str, name: str) -> str:
    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt not in OUTPUT_FORMATS or fmt not in Image.SAVE:
        raise ImageError(f"{name}: unknown image file extension {suffix!r} (use .png, .jpg, .webp, .tif, .bmp or .ppm)")
    return fmt


def _save(img: Image.Image, f: BinaryIO, fmt: str, name: str, fast: bool = False, text: dict | None = None) -> None:
    # quality 95: the default 75 visibly smears 64x64 faces, and the files stay tiny
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    text = text if fmt == "PNG" else None
    if fmt in METADATA_FORMATS:
        options.update({k: img.info[k] for k in METADATA if k in img.info})
    if fmt not in ALPHA_FORMATS:
        img = flatten(img)
    try:
        if fast and fmt == "PNG" and img.mode in _PNG_COLOUR_TYPES and isinstance(options.get("exif", b""), bytes):
            _fast_png(img, f, options, text or {})
        else:
            if text:
                from PIL.PngImagePlugin import PngInfo

                options["pnginfo"] = info = PngInfo()
                for k, v in text.items():
                    info.add_text(k, v)
            img.save(f, format=fmt, **options)
    except (OSError, ValueError) as e:  # Pillow's ValueError: a WebP over 16,383 px, EXIF too long for a JPEG
        raise ImageError(f"{name}: cannot write image ({e})") from None


_PNG_COLOUR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}


def _fast_png(img: Image.Image, f: BinaryIO, meta: dict, text: dict[str, str]) -> None:
    """An 8-bit PNG with the METADATA in `meta`, in about half the time Pillow takes at its fastest: every row is
    filtered by its difference from the row above (PNG's "Up" filter) rather than by the best of five filters
    tried on each row, and compressed by zlib's run-length strategy (docs/results.md, "Batch edits")."""
    a = np.asarray(img).reshape(img.height, -1)  # (H, W * channels) uint8
    rows = np.empty((a.shape[0], a.shape[1] + 1), np.uint8)  # each row led by its filter's number
    rows[:, 0] = 2
    rows[0, 1:] = a[0]
    np.subtract(a[1:], a[:-1], out=rows[1:, 1:])  # modulo 256, as PNG's filters count
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    header = struct.pack(">IIBBBBB", img.width, img.height, 8, _PNG_COLOUR_TYPES[img.mode], 0, 0, 0)
    chunks = [(b"IHDR", header)] + [(b"tEXt", f"{k}\0{v}".encode("latin-1")) for k, v in text.items()]
    if meta.get("icc_profile"):  # a profile name, its compression method (0: zlib), the profile
        chunks.append((b"iCCP", b"ICC Profile\0\0" + zlib.compress(meta["icc_profile"])))
    if meta.get("exif"):  # PNG's eXIf holds the TIFF structure without JPEG's "Exif" marker
        chunks.append((b"eXIf", meta["exif"].removeprefix(b"Exif\0\0")))
    chunks += [(b"IDAT", deflate.compress(rows) + deflate.flush()), (b"IEND", b"")]
    f.write(PNG_SIGNATURE)
    for kind, data in chunks:
        f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


def png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG file ahead of its pixels, as Pillow reads them on opening it (nothing decoded); {}
    for another file, or one that cannot be read."""
    try:
        with Image.open(path) as img:
            return {k: v for k, v in img.info.items() if isinstance(v, str)} if img.format == "PNG" else {}
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return {}


def from_uint8_array(a: np.ndarray) -> Image.Image:
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {a.shape} {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(a), "RGB")
