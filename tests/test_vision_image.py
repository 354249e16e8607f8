"""load_image: every source kind, every PIL mode, and every way a file can be bad."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from visualrwkv.vision.image import DEFAULT_MAX_PIXELS, ImageError, load_image, to_rgb


def _rgb_array(height=6, width=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


# ---- sources -------------------------------------------------------------------------------


def test_every_source_kind_gives_the_same_exact_pixels(tmp_path):
    pixels = _rgb_array()
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    with open(path, "rb") as f:
        from_file_object = load_image(f)
    sources = [path, str(path), data, bytearray(data), memoryview(data), io.BytesIO(data), Image.fromarray(pixels)]
    for image in [load_image(s) for s in sources] + [from_file_object]:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_missing_path_directory_and_garbage_raise_image_error_naming_the_source(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*does not exist"):
        load_image(missing)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match="garbage.png"):
        load_image(garbage)
    with pytest.raises(ImageError, match="<5 bytes>"):
        load_image(b"hello")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    assert issubclass(ImageError, ValueError)


def test_text_mode_file_and_wrong_types_are_rejected(tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text("x")
    with open(text_file) as f, pytest.raises(ImageError, match="text mode"):
        load_image(f)
    with pytest.raises(TypeError, match="int"):
        load_image(42)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(b"abc", max_pixels=0)


# ---- truncated and oversized files -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise(tmp_path, fmt):
    noisy = Image.fromarray(_rgb_array(64, 64, seed=1))
    path = tmp_path / f"full.{fmt.lower()}"
    noisy.save(path, fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    load_image(path)  # the intact file is fine
    with pytest.raises(ImageError, match=f"cut.{fmt.lower()}.*(truncated|corrupt)"):
        load_image(cut)


def test_a_process_wide_truncation_override_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(_png_bytes(Image.new("RGB", (2, 2))))


def test_decompression_bomb_is_refused_from_the_header_alone():
    bomb = _png_header_only(9000, 7500)  # 67.5 Mpx > 64 Mpx default; its pixel data is only 10 bytes
    assert 9000 * 7500 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError, match="9000x7500.*max_pixels"):
        load_image(bomb)
    # The same kind of file with a small size claim reaches the decoder, which then finds the data
    # missing: so the bomb above was refused by the size check, before any decoding.
    small_claim = _png_header_only(30, 20)
    with pytest.raises(ImageError, match="truncated"):
        load_image(small_claim)


def test_max_pixels_is_configurable_and_applies_to_pil_inputs():
    image = Image.new("RGB", (100, 50))
    with pytest.raises(ImageError, match="5000 pixels"):
        load_image(_png_bytes(image), max_pixels=4999)
    with pytest.raises(ImageError, match="max_pixels=10"):
        load_image(image, max_pixels=10)
    assert load_image(_png_bytes(image), max_pixels=5000).size == (100, 50)
    assert load_image(_png_bytes(image), max_pixels=None).size == (100, 50)


# ---- pixel modes -------------------------------------------------------------------------------


def test_one_by_one_image():
    image = load_image(_png_bytes(Image.new("RGB", (1, 1), (10, 20, 30))))
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # red
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # black
    path = tmp_path / "cmyk.tif"
    cmyk.save(path)
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb[0], [[255, 255, 255], [255, 0, 0], [0, 0, 0]])


def test_alpha_is_composited_onto_white_not_dropped():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> background
    rgba[0, 1] = (200, 10, 10, 255)  # opaque -> itself
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white -> mid grey
    out = np.asarray(load_image(_png_bytes(Image.fromarray(rgba, "RGBA")))).astype(int)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 10, 10])
    assert np.all(np.abs(out[0, 2] - 127) <= 1)
    black_background = np.asarray(load_image(Image.fromarray(rgba, "RGBA"), background=(0, 0, 0)))
    np.testing.assert_array_equal(black_background[0, 0], [0, 0, 0])


def test_grey_with_alpha():
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    out = np.asarray(load_image(_png_bytes(la)))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [50, 50, 50]])


def test_palette_with_transparency_index(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    palette_image.info["transparency"] = 0  # red entry is transparent
    for fmt in ("PNG", "GIF"):
        path = tmp_path / f"p.{fmt.lower()}"
        palette_image.save(path, fmt, transparency=0)
        out = np.asarray(load_image(path))
        np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 255]], err_msg=fmt)
    opaque = Image.new("P", (1, 1))
    opaque.putpalette([1, 2, 3] + [0] * 765)
    np.testing.assert_array_equal(np.asarray(load_image(opaque))[0, 0], [1, 2, 3])


def test_grey_and_one_bit():
    grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")
    np.testing.assert_array_equal(np.asarray(load_image(_png_bytes(grey)))[0, :, 0], [0, 77, 255])
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    out = np.asarray(load_image(_png_bytes(bits)))
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [255, 255, 255]])


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 300]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = np.asarray(load_image(path))[0, :, 0]
    # PIL's own convert would give [0, 255, 255, 255]: everything above 255 clipped to white.
    np.testing.assert_array_equal(out, [0, 100, 255, 1])
    assert np.all(np.asarray(load_image(path)) == out[None, :, None])


def test_32_bit_integer_images(tmp_path):
    in_range = Image.fromarray(np.array([[0, 65535, 257 * 20]], np.int32))
    assert in_range.mode == "I"
    path = tmp_path / "i.tif"
    in_range.save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, :, 0], [0, 255, 20])
    out_of_range = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))
    np.testing.assert_array_equal(np.asarray(to_rgb(out_of_range))[0, :, 0], [0, 128, 255])


def test_float_images(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    path = tmp_path / "f.tif"
    unit.save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, :, 0], [0, 128, 255])
    byte_range = Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32))
    np.testing.assert_array_equal(np.asarray(to_rgb(byte_range))[0, :, 0], [0, 100, 255])
    arbitrary = Image.fromarray(np.array([[-2.0, 0.0, 2.0, np.nan]], np.float32))
    np.testing.assert_array_equal(np.asarray(to_rgb(arbitrary))[0, :, 0], [0, 128, 255, 128])


def test_exif_orientation_is_applied(tmp_path):
    # 40x20: left half red, right half blue. Orientation 6 = "rotate 90° clockwise to display".
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10].astype(int), np.asarray(image)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pixels).save(plain, "JPEG", quality=95)
    assert load_image(plain).size == (40, 20)
