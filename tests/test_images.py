import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageCms

from jmvae_cli.errors import JmvaeError
from jmvae_cli.images import ImageError, flatten, from_uint8_array, keep_metadata, read_image, write_image


def saved(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(saved(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95))
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = img.getpixel((20, 15))
    assert r > 240 and g < 15 and b < 15  # red, not inverted


def test_grey(tmp_path):
    path = tmp_path / "grey.png"
    path.write_bytes(saved(Image.new("L", (10, 7), 128), "PNG"))
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (10, 7) and img.getpixel((3, 3)) == (128, 128, 128)


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    a = np.zeros((8, 12), np.uint16)  # (H, W)
    a[:, 4:8], a[:, 8:] = 32896, 65535  # 128 * 257, full scale
    path = tmp_path / "deep.png"
    path.write_bytes(saved(Image.fromarray(a), "PNG"))
    px = np.asarray(read_image(path))  # (8, 12, 3)
    assert px.shape == (8, 12, 3)
    assert (px[:, :4] == 0).all() and (px[:, 4:8] == 128).all() and (px[:, 8:] == 255).all()


def test_32bit_int_grey_holding_16bit_values():
    img = read_image(saved(Image.fromarray(np.full((4, 4), 65535, np.int32), "I"), "TIFF"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_float_grey_in_zero_to_one_is_scaled_up(tmp_path):
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # (8, 64): a ramp
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tif")  # a float TIFF, as science tools write
    got = np.asarray(read_image(tmp_path / "f.tif"))
    assert np.abs(got[..., 0].astype(int) - grey).max() <= 1 and (got[..., 0] == got[..., 2]).all()


def test_palette_with_transparency_goes_on_white():
    p = Image.new("P", (6, 6), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (made transparent), 1 blue
    p.paste(1, (0, 0, 3, 6))
    img = read_image(saved(p, "PNG", transparency=0))
    assert img.mode == "RGB" and img.getpixel((1, 1)) == (0, 0, 255) and img.getpixel((4, 4)) == (255, 255, 255)


@pytest.mark.parametrize("mode, clear, solid", [("RGBA", (0, 0, 0, 0), (255, 0, 0, 255)), ("LA", (0, 0), (60, 255))])
def test_alpha_is_composited_on_white(mode, clear, solid):
    src = Image.new(mode, (6, 4), clear)
    src.paste(solid, (0, 0, 3, 4))
    img = read_image(saved(src, "PNG"))
    assert img.mode == "RGB" and img.size == (6, 4)
    assert img.getpixel((5, 1)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == ((255, 0, 0) if mode == "RGBA" else (60, 60, 60))


def test_alpha_kept_when_asked_and_flattened_where_the_format_has_none(tmp_path):
    src = Image.new("RGBA", (6, 4), (10, 20, 30, 0))  # a colour stored under alpha 0
    src.paste((255, 0, 0, 128), (0, 0, 3, 4))
    img = read_image(saved(src, "PNG"), keep_alpha=True)
    assert img.mode == "RGBA" and np.array_equal(np.asarray(img), np.asarray(src))  # colours as stored
    assert read_image(saved(Image.new("RGB", (3, 3), "red"), "PNG"), keep_alpha=True).mode == "RGB"
    seen = flatten(img)
    assert seen.mode == "RGB" and seen.getpixel((5, 1)) == (255, 255, 255) and seen.getpixel((1, 1)) == (255, 127, 127)
    assert np.array_equal(np.asarray(seen), np.asarray(read_image(saved(src, "PNG"))))  # as read without alpha
    write_image(img, tmp_path / "a.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(src))
    write_image(img, tmp_path / "a.jpg")  # JPEG has no alpha: written as it shows, on white
    assert Image.open(tmp_path / "a.jpg").mode == "RGB"
    jpeg = np.asarray(Image.open(tmp_path / "a.jpg")).astype(int)  # away from the edge JPEG blurs
    assert np.abs(jpeg[1, [0, 5]] - np.asarray(seen)[1, [0, 5]]).max() < 12


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    img = read_image(saved(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif))
    assert img.size == (20, 40)


def _camera_jpeg(icc: bytes) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: sideways
    exif[0x010F] = "Camera maker"
    exif[0x0132] = "2026:11:27 10:00:00"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 24.0)  # GPS latitude
    return saved(Image.new("RGB", (40, 20), (200, 90, 60)), "JPEG", exif=exif, icc_profile=icc)


@pytest.mark.parametrize("fmt, fast", [("jpg", False), ("png", False), ("png", True), ("webp", False), ("tiff", False)])
def test_colour_profile_and_metadata_are_written_back(tmp_path, fmt, fast):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = read_image(_camera_jpeg(icc))
    assert img.size == (20, 40)
    write_image(img, tmp_path / f"out.{fmt}", fast=fast)
    out = Image.open(tmp_path / f"out.{fmt}")
    exif = out.getexif()
    assert out.size == (20, 40) and out.info.get("icc_profile") == icc
    assert exif[0x010F] == "Camera maker" and exif[0x0132] == "2026:11:27 10:00:00"
    assert exif.get_ifd(0x8825)[2] == (48.0, 51.0, 24.0)
    assert 0x0112 not in exif  # upright now: a viewer must not turn it again
    # what a new image made from the photo's pixels needs to carry them too
    assert keep_metadata(img, Image.new("RGB", img.size)).info == img.info


@pytest.mark.parametrize(
    "exif",
    [b"Exif\x00\x00garbage", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f\x00\x02\xff\xff\xff\xf0"],
)
def test_a_photo_with_broken_exif_is_read_and_written_without_it(tmp_path, exif):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing but our own one-line messages on stderr
        img = read_image(saved(Image.new("RGB", (20, 10), "red"), "JPEG", exif=exif))
    assert img.size == (20, 10) and "exif" not in img.info
    write_image(img, tmp_path / "out.jpg")
    assert not Image.open(tmp_path / "out.jpg").getexif()


def test_a_colour_profile_of_another_colour_space_is_dropped():
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not an RGB profile
    assert "icc_profile" not in read_image(_camera_jpeg(lab)).info
    cmyk = read_image(saved(Image.new("CMYK", (8, 8)), "JPEG"))
    assert cmyk.mode == "RGB" and "icc_profile" not in cmyk.info and "exif" not in cmyk.info


def test_bytes_and_streams():
    data = saved(Image.new("RGB", (5, 5), "green"), "PNG")
    assert read_image(data).size == (5, 5)
    assert read_image(io.BytesIO(data)).size == (5, 5)
    with pytest.raises(ImageError, match="<stdin>"):
        read_image(b"hello")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.jpg: no such file"):
        read_image(tmp_path / "nope.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: empty file"):
        read_image(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)  # (H, W, 3)
    data = saved(Image.fromarray(noise), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg: truncated"):
        read_image(tmp_path / "cut.jpg")


def test_text_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        read_image(tmp_path / "notes.jpg")


def test_a_folder(tmp_path):
    with pytest.raises(ImageError, match=str(tmp_path)):
        read_image(tmp_path)


@pytest.mark.parametrize("side", [12, 20])  # 144 px: Pillow only warns; 400 px: Pillow raises
def test_decompression_bomb(tmp_path, monkeypatch, side):
    (tmp_path / "bomb.png").write_bytes(saved(Image.new("RGB", (side, side)), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="bomb.png: image too large"):
        read_image(tmp_path / "bomb.png")


def test_errors_are_user_facing():
    assert issubclass(ImageError, JmvaeError)


@pytest.mark.parametrize("ext", ["png", "jpg", "jpeg", "webp", "PNG"])
def test_write_roundtrip(tmp_path, ext):
    img = Image.new("RGB", (16, 16), (200, 30, 90))
    write_image(img, tmp_path / f"out.{ext}")
    back = np.asarray(read_image(tmp_path / f"out.{ext}"))  # (16, 16, 3)
    assert np.abs(back.astype(int) - [200, 30, 90]).max() <= 3
    assert [p.name for p in tmp_path.iterdir()] == [f"out.{ext}"]  # no temp file left behind


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_fast_png_holds_the_exact_pixels(tmp_path, mode):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 29, len(mode)), dtype=np.uint8)  # noise: every filter difference wraps somewhere
    a[5:20] = a[5:6]  # and runs of equal rows, which the filter turns into zeros
    img = Image.fromarray(a.squeeze(-1) if mode == "L" else a, mode)
    write_image(img, tmp_path / "fast.png", fast=True)
    back = Image.open(tmp_path / "fast.png")
    assert back.mode == mode and np.array_equal(np.asarray(back), np.asarray(img))


def test_write_is_atomic(tmp_path):
    dest = tmp_path / "keep.jpg"
    write_image(Image.new("RGB", (8, 8), "blue"), dest)
    before = dest.read_bytes()
    with pytest.raises(ImageError, match="keep.jpg: cannot write"):
        write_image(Image.new("F", (8, 8)), dest)  # JPEG has no float pixels: fails midway
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jpg"]


def test_write_errors(tmp_path):
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ImageError, match="does not exist") as e:
        write_image(img, tmp_path / "no" / "such" / "out.png")
    assert str(tmp_path / "no" / "such") in str(e.value)
    for lossy in ("x.ico", "x.gif", "x.pdf"):  # Pillow writes these, but not as the photo it was given
        with pytest.raises(ImageError, match="unknown image file extension"):
            write_image(Image.new("RGB", (600, 400)), tmp_path / lossy)
    with pytest.raises(ImageError, match=r"out.xyz: unknown image file extension '.xyz'"):
        write_image(img, tmp_path / "out.xyz")
    with pytest.raises(ImageError, match="unknown image file extension ''"):
        write_image(img, tmp_path / "out")


def test_write_stream_defaults_to_png():
    buf = io.BytesIO()
    write_image(Image.new("RGB", (4, 4)), buf)
    assert buf.getvalue().startswith(b"\x89PNG")


def test_array_helpers():
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # (H, W, 3)
    img = from_uint8_array(a)
    assert img.size == (3, 2) and (np.asarray(img) == a).all()
    with pytest.raises(ValueError):
        from_uint8_array(a.astype(np.float32))


def test_an_image_pillow_cannot_encode_is_one_error(tmp_path):
    with pytest.raises(ImageError, match="x.webp: cannot write image .*16383"):
        write_image(Image.new("RGB", (17000, 2)), tmp_path / "x.webp")  # over WebP's limit: Pillow's ValueError
    assert list(tmp_path.iterdir()) == []
