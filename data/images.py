"""Decode image files of any common format and mode into 8-bit RGB."""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from data.scan import printable_path

logger = logging.getLogger(__name__)

_HEIF_SUFFIXES = frozenset({".heic", ".heif"})

# Exceptions that Pillow raises for damaged or unsupported image data
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, EOFError)

_BOMB_ERRORS = (Image.DecompressionBombWarning, Image.DecompressionBombError)

# Formats whose decoder can scale down while decoding (Pillow's Image.draft). MPO is a multi-frame JPEG.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Integer and float grayscale modes whose values do not fit in 8 bits
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# EXIF orientations that turn the image by 90 degrees, so width and height swap
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})

_WHITE = (255, 255, 255)

# Images with more pixels are skipped: a decompression bomb protection, as in
# Pillow, whose own default (about 89 million pixels) would skip the photos of
# 100-megapixel cameras. The variable changes it; 0 turns the check off.
MAX_PIXELS_VARIABLE = "LABELER_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 250_000_000


class ImageLoadError(Exception):
    """Error for an image file that cannot be read or decoded. Its message is the reason, for the user."""


def _register_heif_opener() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        logger.debug("pillow_heif is not installed, so HEIC and HEIF images cannot be opened")
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE: bool = _register_heif_opener()


def max_pixels_from_environment() -> int | None:
    """Return the pixel limit set by ``$LABELER_MAX_IMAGE_PIXELS``, ``DEFAULT_MAX_PIXELS``
    when it is unset or invalid (with a warning), or None for no limit."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        logger.warning("Ignoring %s=%r: expected a whole number of pixels (0 for no limit); using %d",
                       MAX_PIXELS_VARIABLE, text, DEFAULT_MAX_PIXELS)
        return DEFAULT_MAX_PIXELS
    return value or None


# Pillow reads its limit from this global. Decoding processes import this module,
# so they apply the same limit, also where they are spawned instead of forked.
Image.MAX_IMAGE_PIXELS = max_pixels_from_environment()


def load_rgb(path: Path, min_side: int = 0) -> Image.Image:
    """Decode the first frame of the image at ``path`` into an 8-bit RGB image.

    The whole frame is decoded here, so a truncated file fails now and not during
    training. EXIF orientation is applied. Transparent pixels are composited onto
    white, and 16-bit, 32-bit and float grayscale is stretched to 0..255 (see
    ``convert_to_rgb``).

    With ``min_side`` > 0, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size
    (Pillow's draft mode) when both sides stay at least ``min_side`` pixels.
    Callers that shrink the image anyway save most of the decoding time of
    large photos.

    Raises:
        ImageLoadError: the file cannot be read or decoded, or has more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS``. The message gives the reason.
    """
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise ImageLoadError(_describe_read_error(exc, path)) from exc

    with file:
        _reject_empty(file)
        image = _decode_first_frame(file, path, min_side)
        image = _apply_exif_orientation(image, path)
    return convert_to_rgb(image)


def read_image_size(path: Path) -> tuple[int, int] | None:
    """Read (width, height) from the file header without decoding the pixels.

    The size is after EXIF orientation, so it matches ``load_rgb``. Returns None if
    Pillow cannot open the file or the image is over ``PIL.Image.MAX_IMAGE_PIXELS``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = _header_orientation(image)
    except (*_DECODE_ERRORS, *_BOMB_ERRORS):
        return None

    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def convert_to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Alpha and palette or colour-key transparency are composited onto white. Modes
    "I;16*", "I" and "F" are stretched linearly from their minimum to their maximum
    value, so 16-bit data keeps its contrast instead of clipping to white.

    Raises:
        ImageLoadError: Pillow cannot convert the mode.
    """
    mode = image.mode
    try:
        if mode in _HIGH_BIT_MODES:
            return _stretch_to_8_bit(image).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(image)
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageLoadError(f"cannot convert image mode {mode!r} to RGB: {exc}") from exc


def _describe_read_error(exc: OSError, path: Path) -> str:
    if isinstance(exc, PermissionError):
        return "cannot read file: permission denied"
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return (f"broken symbolic link: its target {printable_path(os.readlink(path))} does not exist; "
                "fix the link or delete it")
    if isinstance(exc, FileNotFoundError):
        return "cannot read file: file not found"
    if isinstance(exc, IsADirectoryError):
        return "cannot read file: it is a folder, not a file"
    return f"cannot read file: {exc.strerror or exc}"


def _reject_empty(file: BinaryIO) -> None:
    if not file.read(1):
        raise ImageLoadError("file is empty")
    file.seek(0)


def _decode_first_frame(file: BinaryIO, path: Path, min_side: int = 0) -> Image.Image:
    """Open ``file`` and decode its first frame, mapping every failure to ImageLoadError.

    A JPEG is decoded at a reduced size whose sides stay at least ``min_side``
    (see ``load_rgb``).

    The returned image still reads from ``file`` for metadata, so keep it open until the
    image is copied.
    """
    # NOTE: catch_warnings swaps the process-wide warning filters, so it is not
    # thread-safe. Threads loading images at the same time may see each other's filter.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
            image.seek(0)
            if min_side > 0 and image.format in _DRAFT_FORMATS:
                image.draft(None, (min_side, min_side))
            image.load()
        except UnidentifiedImageError as exc:
            raise ImageLoadError(_describe_unidentified(path)) from exc
        except _BOMB_ERRORS as exc:
            raise ImageLoadError(_describe_bomb(exc)) from exc
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(f"truncated or corrupt image data: {exc}") from exc
    return image


def _describe_unidentified(path: Path) -> str:
    if path.suffix.lower() in _HEIF_SUFFIXES and not HEIF_AVAILABLE:
        return "HEIC/HEIF image, but pillow-heif is not installed. Install it with 'pip install pillow-heif'."
    return "not an image file (cannot identify image format)"


def _describe_bomb(exc: Warning | Exception) -> str:
    limit = Image.MAX_IMAGE_PIXELS or 0
    advice = f"Resize it, or if you trust the file, set {MAX_PIXELS_VARIABLE} to a larger number and run again."

    # Pillow's message is "Image size (N pixels) exceeds limit of ..."
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match is None:
        reason = f"image is over the limit of {limit:,} pixels ({exc})"
    else:
        reason = f"image has {int(match.group(1)):,} pixels, above the limit of {limit:,}"
    return f"{reason} (decompression bomb protection). {advice}"


def _apply_exif_orientation(image: Image.Image, path: Path) -> Image.Image:
    """Return a copy of ``image`` turned upright by its EXIF orientation tag.

    A damaged EXIF block is logged and ignored, because the pixels are still valid.
    """
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        logger.warning("Ignoring unreadable EXIF orientation in %s: %s", path, exc)
        return image.copy()


def _header_orientation(image: Image.Image) -> int:
    # A PNG may store EXIF after the pixel data, and Pillow's getexif would decode the
    # whole image to reach it, so such a PNG counts as upright here.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (*_DECODE_ERRORS, TypeError):
        return 1


def _stretch_to_8_bit(image: Image.Image) -> Image.Image:
    """Map the finite values of a grayscale image linearly onto 0..255, as mode "L".

    A constant image has no range to stretch, so its value is clipped to 0..255.
    NaN and infinite values become 0.
    """
    # NOTE: the stretch is per image, so a dark 16-bit image is brightened to full
    # contrast and two images with the same values but different ranges differ.
    values = np.asarray(image).astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", image.size, 0)

    low = float(values[finite].min())
    high = float(values[finite].max())
    if high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = values
    scaled = np.where(finite, np.clip(scaled, 0.0, 255.0), 0.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode == "La":
        # Pillow has no direct conversion from premultiplied "La" to "RGBA"
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
