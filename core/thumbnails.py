"""Small JPEG thumbnails of a run's images, and the check that keeps reads inside the image folder.

Every image the app shows is read through :func:`resolve_image_path`. It
rejects absolute paths and requires the resolved path, after following
symlinks, to lie inside the resolved image folder or inside one of the
folders that images were appended from (``core.append``), the only place
where labels.csv paths contain ``..``. So a path from labels.csv, an edit
file or a query string cannot make the app open any other file.

Thumbnails are decoded once, turned upright by their EXIF orientation,
shrunk to fit a square of ``side`` pixels and stored as JPEG files under
``RUN/thumbnails``, so pages never decode full-size images on a rerun.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from PIL import Image

from data.images import ImageLoadError, load_rgb

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160
THUMBNAIL_QUALITY = 82
PREVIEW_SIDE = 768
THUMBNAIL_WORKERS = 2


class UnsafePathError(ValueError):
    """Error for an image path that is absolute or resolves outside the folders the app may read."""


def check_relative_path(rel_path: str, allow_parent: bool = False) -> None:
    """Raise UnsafePathError unless ``rel_path`` is a relative path, with no ``..`` component unless allowed.

    Both ``/`` and ``\\`` count as separators here, so ``a\\..\\b`` is rejected too.
    """
    if not isinstance(rel_path, str) or not rel_path:
        raise UnsafePathError(f"image path {rel_path!r} is empty or not a string")
    if "\x00" in rel_path:
        raise UnsafePathError(f"image path {rel_path!r} contains a NUL character")
    parts = rel_path.replace("\\", "/").split("/")
    if rel_path.startswith(("/", "\\")) or (os.name == "nt" and PureWindowsPath(rel_path).drive):
        raise UnsafePathError(f"image path {rel_path!r} is absolute; paths must be relative to the image folder")
    if ".." in parts and not allow_parent:
        raise UnsafePathError(f"image path {rel_path!r} contains '..'; paths must stay inside the image folder")


def resolve_image_path(image_folder: Path, rel_path: str, extra_folders: Sequence[Path] = ()) -> Path:
    """Return the real path of ``rel_path``, relative to ``image_folder``.

    Args:
        extra_folders: folders outside ``image_folder`` that ``rel_path``
            may reach with ``..``, the folders images were appended from.

    Raises:
        UnsafePathError: if ``rel_path`` is absolute, or resolves (through
            ``..`` or a symlink) to a file outside ``image_folder`` and every
            one of ``extra_folders``. Without ``extra_folders``, any ``..`` is rejected.
    """
    check_relative_path(rel_path, allow_parent=bool(extra_folders))
    root = Path(image_folder).resolve()
    candidate = (root / rel_path).resolve()
    allowed = [root, *(Path(folder).resolve() for folder in extra_folders)]
    if not any(candidate.is_relative_to(folder) for folder in allowed):
        raise UnsafePathError(
            f"image path {rel_path!r} resolves to {candidate}, outside the image folder {root}"
            + (" and the appended folders" if extra_folders else "")
            + "; a symlink or '..' points out of the folder"
        )
    return candidate


def load_preview(
    image_folder: Path, rel_path: str, side: int = PREVIEW_SIDE, extra_folders: Sequence[Path] = ()
) -> Image.Image:
    """Decode one image of the folder, upright, shrunk to fit a square of ``side`` pixels.

    Raises:
        UnsafePathError: if the path leaves the image folder and ``extra_folders``.
        ImageLoadError: if the file cannot be decoded.
    """
    image = load_rgb(resolve_image_path(image_folder, rel_path, extra_folders), side)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


@dataclass(frozen=True)
class ThumbnailStore:
    """Thumbnails of the images under ``image_folder``, kept as JPEG files under ``folder``.

    A thumbnail is remade when its source file is newer than it. Images in
    ``extra_folders`` (folders appended to the run) can be shown too.
    """

    image_folder: Path
    folder: Path
    side: int = THUMBNAIL_SIDE
    extra_folders: tuple[Path, ...] = ()

    def path_for(self, rel_path: str) -> Path:
        """Return where the thumbnail of ``rel_path`` is stored: a hash of the path, in 256 sub-folders."""
        digest = hashlib.sha256(f"{self.side}:{rel_path}".encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest[2:34]}.jpg"

    def get(self, rel_path: str) -> Path:
        """Return the thumbnail file of ``rel_path``, making it first if it is missing or stale.

        Raises:
            UnsafePathError: if the path leaves the image folder.
            ImageLoadError: if the source image cannot be decoded.
        """
        source = resolve_image_path(self.image_folder, rel_path, self.extra_folders)
        target = self.path_for(rel_path)
        try:
            if target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
                return target
        except FileNotFoundError:
            pass
        self._make(source, target)
        return target

    def get_many(self, rel_paths: Sequence[str]) -> list[Path | None]:
        """Return the thumbnail of each path, or None where the image cannot be shown (logged)."""
        if not rel_paths:
            return []
        workers = min(THUMBNAIL_WORKERS, len(rel_paths))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._get_or_none, rel_paths))

    def build_all(
        self, rel_paths: Sequence[str], on_progress: Callable[[int, int], None] | None = None, chunk: int = 64
    ) -> int:
        """Make every missing thumbnail and return how many images could not be shown.

        ``on_progress(done, total)`` is called after every ``chunk`` images.
        """
        failed = 0
        for start in range(0, len(rel_paths), chunk):
            results = self.get_many(rel_paths[start:start + chunk])
            failed += sum(result is None for result in results)
            if on_progress is not None:
                on_progress(min(start + chunk, len(rel_paths)), len(rel_paths))
        return failed

    def _get_or_none(self, rel_path: str) -> Path | None:
        try:
            return self.get(rel_path)
        except (UnsafePathError, ImageLoadError, OSError) as error:
            logger.warning("Cannot make a thumbnail of %s: %s", rel_path, error)
            return None

    def _make(self, source: Path, target: Path) -> None:
        image = load_rgb(source, self.side)
        image.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)

        # Write to a unique temporary name, then rename, so a page running at the
        # same time never reads a half-written file.
        temporary = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp")
        try:
            image.save(temporary, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
