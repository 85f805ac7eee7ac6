import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import images
from data.images import ImageLoadError, convert_to_rgb, load_rgb, read_image_size

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

# Lossy formats (JPEG, HEIC) shift colours by a few levels
LOSSY_TOLERANCE = 12


def _assert_near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> None:
    for got, want in zip(actual, expected, strict=True):
        assert abs(got - want) <= tolerance, f"pixel {actual} is not within {tolerance} of {expected}"


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple), f"expected a multi-band pixel, got {value!r}"
    return value


def _assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def _save_jpeg(path: Path, image: Image.Image, **options: object) -> Path:
    image.save(path, format="JPEG", quality=95, **options)
    return path


def test_load_rgb_jpeg(tmp_path: Path) -> None:
    path = _save_jpeg(tmp_path / "photo.jpg", Image.new("RGB", (16, 8), (200, 40, 10)))

    image = load_rgb(path)

    _assert_rgb(image, (16, 8))
    _assert_near(_pixel(image, 4, 4), (200, 40, 10), LOSSY_TOLERANCE)


def _red_over_blue(width: int, height: int) -> Image.Image:
    """Return an image whose top half is red and bottom half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width, height // 2))
    return image


@pytest.mark.parametrize(("min_side", "expected"), [(0, (800, 600)), (100, (200, 150)), (150, (200, 150)),
                                                    (151, (400, 300)), (600, (800, 600))])
def test_reduced_decode_sizes(tmp_path: Path, min_side: int, expected: tuple[int, int]) -> None:
    path = _save_jpeg(tmp_path / "photo.jpg", _red_over_blue(800, 600))

    image = load_rgb(path, min_side)

    _assert_rgb(image, expected)
    _assert_near(_pixel(image, expected[0] // 2, expected[1] // 4), RED, LOSSY_TOLERANCE)
    _assert_near(_pixel(image, expected[0] // 2, expected[1] * 3 // 4), BLUE, LOSSY_TOLERANCE)


def test_reduced_decode_mpo_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "camera.mpo"
    second_frame = Image.new("RGB", (800, 600), GREEN)
    _red_over_blue(800, 600).save(path, format="MPO", save_all=True, append_images=[second_frame])

    image = load_rgb(path, 100)

    _assert_rgb(image, (200, 150))
    _assert_near(_pixel(image, 100, 30), RED, LOSSY_TOLERANCE)


def test_reduced_decode_keeps_orientation(tmp_path: Path) -> None:
    source = _red_over_blue(800, 600)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save_jpeg(tmp_path / "rotated.jpg", source, exif=exif.tobytes())

    image = load_rgb(path, 100)

    # Turned clockwise, the red top half becomes the right half.
    _assert_rgb(image, (150, 200))
    _assert_near(_pixel(image, 140, 100), RED, LOSSY_TOLERANCE)
    _assert_near(_pixel(image, 10, 100), BLUE, LOSSY_TOLERANCE)


def _save_truncated_jpeg(folder: Path, width: int, height: int) -> Path:
    """Save a noise JPEG cut after half of its bytes, as ``folder/half.jpg``."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    whole = _save_jpeg(folder / "whole.jpg", noise).read_bytes()
    half = folder / "half.jpg"
    half.write_bytes(whole[: len(whole) // 2])
    return half


def test_reduced_decode_truncated_jpeg(tmp_path: Path) -> None:
    path = _save_truncated_jpeg(tmp_path, 800, 600)

    with pytest.raises(ImageLoadError, match="truncated"):
        load_rgb(path, 64)


def test_min_side_ignores_png(tmp_path: Path) -> None:
    _red_over_blue(800, 600).save(tmp_path / "plain.png")

    assert load_rgb(tmp_path / "plain.png", 100).size == (800, 600)


def test_load_rgb_rgba_png_onto_white(tmp_path: Path) -> None:
    source = Image.new("RGBA", (3, 1), (0, 0, 255, 255))
    source.putpixel((1, 0), (255, 0, 0, 0))
    source.putpixel((2, 0), (0, 0, 0, 128))
    source.save(tmp_path / "alpha.png")

    image = load_rgb(tmp_path / "alpha.png")

    _assert_rgb(image, (3, 1))
    assert _pixel(image, 0, 0) == BLUE
    assert _pixel(image, 1, 0) == WHITE
    _assert_near(_pixel(image, 2, 0), (127, 127, 127), 1)


def test_load_rgb_palette_transparency(tmp_path: Path) -> None:
    source = Image.new("P", (2, 1))
    source.putpalette([*RED, *GREEN])
    source.putpixel((0, 0), 0)
    source.putpixel((1, 0), 1)
    source.save(tmp_path / "palette.png", transparency=0)
    assert Image.open(tmp_path / "palette.png").mode == "P"

    image = load_rgb(tmp_path / "palette.png")

    assert _pixel(image, 0, 0) == WHITE
    assert _pixel(image, 1, 0) == GREEN


def test_load_rgb_la_png(tmp_path: Path) -> None:
    source = Image.new("LA", (3, 1), (50, 255))
    source.putpixel((1, 0), (50, 0))
    source.putpixel((2, 0), (50, 128))
    source.save(tmp_path / "la.png")

    image = load_rgb(tmp_path / "la.png")

    assert _pixel(image, 0, 0) == (50, 50, 50)
    assert _pixel(image, 1, 0) == WHITE
    _assert_near(_pixel(image, 2, 0), (152, 152, 152), 1)


def test_load_rgb_16_bit_png(tmp_path: Path) -> None:
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")

    image = load_rgb(tmp_path / "deep.png")

    _assert_rgb(image, (4, 1))
    assert _pixel(image, 0, 0) == (0, 0, 0)
    _assert_near(_pixel(image, 1, 0), (64, 64, 64), 1)
    _assert_near(_pixel(image, 2, 0), (128, 128, 128), 1)
    assert _pixel(image, 3, 0) == WHITE


def test_load_rgb_16_bit_big_endian_tiff(tmp_path: Path) -> None:
    values = np.array([[1000, 2000, 3000]], dtype=">u2")
    Image.fromarray(values).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I;16B"

    image = load_rgb(tmp_path / "deep.tif")

    assert [_pixel(image, x, 0)[0] for x in range(3)] == [0, 128, 255]


def test_load_rgb_32_bit_int_tiff(tmp_path: Path) -> None:
    values = np.array([[-100000, 0, 100000]], dtype=np.int32)
    Image.fromarray(values).save(tmp_path / "int.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I"

    image = load_rgb(tmp_path / "int.tif")

    assert [_pixel(image, x, 0)[0] for x in range(3)] == [0, 128, 255]


def test_load_rgb_float_tiff(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 1.0, np.nan]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "float.tif")

    image = load_rgb(tmp_path / "float.tif")

    assert [_pixel(image, x, 0)[0] for x in range(4)] == [0, 64, 255, 0]


def test_load_rgb_constant_16_bit(tmp_path: Path) -> None:
    Image.fromarray(np.full((2, 2), 40, dtype=np.uint16)).save(tmp_path / "flat.png")

    assert load_rgb(tmp_path / "flat.png").getpixel((0, 0)) == (40, 40, 40)


def test_load_rgb_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save_jpeg(tmp_path / "print.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)))
    assert Image.open(path).mode == "CMYK"

    image = load_rgb(path)

    _assert_rgb(image, (16, 16))
    _assert_near(_pixel(image, 8, 8), RED, LOSSY_TOLERANCE)


def test_load_rgb_one_bit(tmp_path: Path) -> None:
    source = Image.new("1", (2, 1), 0)
    source.putpixel((1, 0), 1)
    source.save(tmp_path / "mono.png")

    image = load_rgb(tmp_path / "mono.png")

    assert _pixel(image, 0, 0) == (0, 0, 0)
    assert _pixel(image, 1, 0) == WHITE


def test_load_rgb_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 3

    image = load_rgb(tmp_path / "anim.gif")

    _assert_rgb(image, (4, 4))
    assert _pixel(image, 2, 2) == RED


def test_load_rgb_animated_webp_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), colour) for colour in (GREEN, RED)]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    assert getattr(Image.open(tmp_path / "anim.webp"), "n_frames", 1) == 2

    image = load_rgb(tmp_path / "anim.webp")

    assert _pixel(image, 2, 2) == GREEN


def test_load_rgb_multipage_tiff_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (5, 3), colour) for colour in (BLUE, RED)]
    pages[0].save(tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])

    image = load_rgb(tmp_path / "pages.tiff")

    _assert_rgb(image, (5, 3))
    assert _pixel(image, 1, 1) == BLUE


def test_load_rgb_webp_lossless(tmp_path: Path) -> None:
    Image.new("RGB", (6, 6), (10, 20, 30)).save(tmp_path / "still.webp", lossless=True)

    assert load_rgb(tmp_path / "still.webp").getpixel((3, 3)) == (10, 20, 30)


def test_load_rgb_bmp(tmp_path: Path) -> None:
    Image.new("RGB", (7, 5), (1, 2, 3)).save(tmp_path / "plain.bmp")

    image = load_rgb(tmp_path / "plain.bmp")

    _assert_rgb(image, (7, 5))
    assert _pixel(image, 6, 4) == (1, 2, 3)


def test_load_rgb_heic(tmp_path: Path) -> None:
    if not images.HEIF_AVAILABLE:
        pytest.skip("pillow_heif is not installed")
    try:
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "phone.heic", quality=95)
    except (OSError, ValueError, KeyError) as exc:
        pytest.skip(f"pillow_heif cannot write HEIC here: {exc}")

    image = load_rgb(tmp_path / "phone.heic")

    _assert_rgb(image, (16, 16))
    _assert_near(_pixel(image, 8, 8), (200, 10, 10), LOSSY_TOLERANCE)


def _save_rotated_jpeg(path: Path) -> Path:
    """Save a 20x10 blue JPEG with a red 8x8 block at the stored top-left corner and
    EXIF orientation 6, which means "turn 90 degrees clockwise to display"."""
    source = Image.new("RGB", (20, 10), BLUE)
    source.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save_jpeg(path, source, exif=exif.tobytes())


def test_load_rgb_exif_orientation(tmp_path: Path) -> None:
    path = _save_rotated_jpeg(tmp_path / "rotated.jpg")

    image = load_rgb(path)

    # Turning clockwise moves the stored top-left corner to the top-right
    _assert_rgb(image, (10, 20))
    _assert_near(_pixel(image, 9, 0), RED, LOSSY_TOLERANCE)
    _assert_near(_pixel(image, 0, 0), BLUE, LOSSY_TOLERANCE)
    _assert_near(_pixel(image, 9, 19), BLUE, LOSSY_TOLERANCE)


def test_read_image_size_header(tmp_path: Path) -> None:
    Image.new("RGB", (33, 17)).save(tmp_path / "plain.png")

    assert read_image_size(tmp_path / "plain.png") == (33, 17)


def test_read_image_size_exif_orientation(tmp_path: Path) -> None:
    path = _save_rotated_jpeg(tmp_path / "rotated.jpg")

    assert read_image_size(path) == (10, 20)


def test_read_image_size_unreadable(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image")

    assert read_image_size(tmp_path / "notes.jpg") is None
    assert read_image_size(tmp_path / "missing.jpg") is None


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("HSV", (0, 255, 255), RED),
        ("LAB", (128, 128, 128), (119, 119, 119)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
        ("L", 77, (77, 77, 77)),
    ],
)
def test_convert_to_rgb_colour_spaces(
    mode: str, value: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    image = convert_to_rgb(Image.new(mode, (2, 2), value))

    assert image.mode == "RGB"
    _assert_near(_pixel(image, 1, 1), expected, 1)


def test_convert_to_rgb_premultiplied_la() -> None:
    image = convert_to_rgb(Image.new("La", (1, 1), (0, 0)))

    assert _pixel(image, 0, 0) == WHITE


def test_load_rgb_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")

    with pytest.raises(ImageLoadError, match="file is empty"):
        load_rgb(tmp_path / "empty.jpg")


def test_load_rgb_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("shopping list: milk, eggs\n")

    with pytest.raises(ImageLoadError, match=r"not an image file \(cannot identify image format\)"):
        load_rgb(tmp_path / "notes.jpg")


def test_load_rgb_truncated_jpeg(tmp_path: Path) -> None:
    path = _save_truncated_jpeg(tmp_path, 64, 64)

    with pytest.raises(ImageLoadError, match="truncated or corrupt image data: .*truncated"):
        load_rgb(path)


def test_load_rgb_decompression_bomb_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 60 pixels is over a limit of 50 but under twice it, where Pillow only warns
    Image.new("RGB", (10, 6)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)

    with pytest.raises(
        ImageLoadError, match=r"image has 60 pixels, above the limit of 50 \(decompression bomb"
    ):
        load_rgb(tmp_path / "big.png")
    assert read_image_size(tmp_path / "big.png") is None


def test_load_rgb_decompression_bomb_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (100, 20)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)

    with pytest.raises(
        ImageLoadError, match=r"image has 2,000 pixels, above the limit of 50 \(decompression"
    ):
        load_rgb(tmp_path / "huge.png")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(path: Path, width: int, height: int) -> None:
    """Write the header of an 8-bit RGB PNG of the given size, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def test_100_megapixel_photo_is_within_default_limit(tmp_path: Path) -> None:
    _png_header(tmp_path / "camera.png", 12000, 9000)
    _png_header(tmp_path / "bomb.png", 20000, 20000)

    assert Image.MAX_IMAGE_PIXELS == images.DEFAULT_MAX_PIXELS
    assert read_image_size(tmp_path / "camera.png") == (12000, 9000)
    assert read_image_size(tmp_path / "bomb.png") is None


@pytest.mark.parametrize(
    "text, expected",
    [("", images.DEFAULT_MAX_PIXELS), ("0", None), ("300_000_000", 300_000_000), (" 1000 ", 1000)],
)
def test_max_pixels_from_environment(monkeypatch: pytest.MonkeyPatch, text: str, expected: int | None) -> None:
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, text)
    assert images.max_pixels_from_environment() == expected


@pytest.mark.parametrize("text", ["many", "-5", "1e9"])
def test_invalid_max_pixels_falls_back_with_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    monkeypatch.setenv(images.MAX_PIXELS_VARIABLE, text)

    assert images.max_pixels_from_environment() == images.DEFAULT_MAX_PIXELS
    assert f"Ignoring LABELER_MAX_IMAGE_PIXELS={text!r}" in caplog.text


def test_max_pixels_variable_applies_on_import(tmp_path: Path) -> None:
    Image.new("RGB", (10, 6)).save(tmp_path / "small.png")
    code = (
        "import sys; from pathlib import Path; from data.images import ImageLoadError, load_rgb\n"
        "try:\n    load_rgb(Path(sys.argv[1]))\nexcept ImageLoadError as error:\n    print(error)"
    )
    environment = {**os.environ, images.MAX_PIXELS_VARIABLE: "50"}
    repo = Path(images.__file__).resolve().parents[1]

    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "small.png")], cwd=repo,
                            env=environment, capture_output=True, text=True, check=True)

    assert "image has 60 pixels, above the limit of 50" in result.stdout
    assert "set LABELER_MAX_IMAGE_PIXELS to a larger number" in result.stdout


def test_bomb_message_without_pixel_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    message = images._describe_bomb(Image.DecompressionBombWarning("frame too large"))

    assert message.startswith("image is over the limit of 1,000 pixels (frame too large)")
    assert "decompression bomb protection" in message


def test_load_rgb_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="cannot read file: file not found"):
        load_rgb(tmp_path / "missing.jpg")


def test_load_rgb_folder(tmp_path: Path) -> None:
    (tmp_path / "album.jpg").mkdir()

    with pytest.raises(ImageLoadError, match="cannot read file: it is a folder"):
        load_rgb(tmp_path / "album.jpg")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_load_rgb_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)

    with pytest.raises(ImageLoadError, match="cannot read file: permission denied"):
        load_rgb(path)


def test_load_rgb_simulated_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too, where chmod cannot make a file unreadable
    def open_denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", open_denied, raising=False)

    with pytest.raises(ImageLoadError, match="cannot read file: permission denied"):
        load_rgb(tmp_path / "locked.png")


def test_load_rgb_heic_without_pillow_heif(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "HEIF_AVAILABLE", False)
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(16))
    monkeypatch.setattr(images.Image, "open", _raise_unidentified)

    with pytest.raises(ImageLoadError, match="pillow-heif is not installed"):
        load_rgb(tmp_path / "phone.heic")


def _raise_unidentified(*args: object, **kwargs: object) -> Image.Image:
    raise images.UnidentifiedImageError("cannot identify image file")
