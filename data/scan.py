"""Find the image files under a folder, in a reproducible order."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif"}
)

# Files that every run folder contains (core.run_files names them). A sub-folder
# that contains both is a run, whose thumbnails must not be taken for images,
# so that --out may lie inside the image folder.
RUN_FOLDER_MARKERS: frozenset[str] = frozenset({"config.json", "run.log"})


def scan_folder(root: Path) -> list[str]:
    """Find every image file under ``root``, following symlinked folders.

    Hidden files and folders (names starting with "."), run folders of this tool
    (sub-folders containing every name in ``RUN_FOLDER_MARKERS``) and files whose suffix is not in
    ``IMAGE_EXTENSIONS`` (compared case-insensitively) are ignored. Broken symlinks with
    an image suffix are listed, so that decoding reports them as skipped. Each real
    folder is listed once. Folders reached through their own path
    are listed before any symlinked folder, so a symlink to a folder inside ``root``
    adds nothing and a symlink loop ends. Unreadable subfolders are logged as warnings
    and skipped.

    Returns:
        Paths relative to ``root`` with forward slashes, sorted as plain strings.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        PermissionError: ``root`` itself cannot be listed.
    """
    check_image_folder(root)
    found: list[str] = []
    for folder, rel_folder, entries in _walk_folders(root):
        found.extend(_image_files(folder, rel_folder, entries))

    found.sort()
    logger.info("Found %d image %s under %s", len(found), "file" if len(found) == 1 else "files", root)
    return found


def contains_image_files(root: Path) -> bool:
    """Return whether ``scan_folder(root)`` would find at least one file, stopping at the first."""
    check_image_folder(root)
    return any(_image_files(folder, rel, entries) for folder, rel, entries in _walk_folders(root))


def no_images_message(root: Path) -> str:
    """Return the message for a folder under which no image file was found."""
    suffixes = ", ".join(sorted(IMAGE_EXTENSIONS))
    return (
        f"no image files found in {printable_path(str(root))} (searched sub-folders for {suffixes}); "
        "point to a folder that holds images"
    )


def printable_path(text: str) -> str:
    """Return ``text``, a path or a message that contains one, for logs and CSV files,
    with bytes of the path that are not UTF-8 written as ``\\xNN`` escapes.

    Python keeps such bytes in a path string as lone surrogates, which a UTF-8
    file cannot store.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def unusable_name_reason(rel_path: str) -> str | None:
    """Return why the path ``rel_path`` cannot go into labels.csv, or None when it can."""
    if printable_path(rel_path) == rel_path:
        return None
    return (
        "the file name is not valid UTF-8, so labels.csv cannot record it; rename the file "
        "(for example with convmv) and run again"
    )


def ground_truth_label(rel_path: str) -> str:
    """Return the name of the folder that contains ``rel_path`` ('' at the top level).

    Only evaluation may call this, because training must not use the folder names.
    """
    return PurePosixPath(rel_path).parent.name


def check_image_folder(root: Path) -> None:
    """Raise FileNotFoundError, NotADirectoryError or PermissionError, with advice, unless
    ``root`` is a folder that can be listed."""
    if not root.exists():
        raise FileNotFoundError(f"Image folder {root} does not exist. Check the path.")
    if not root.is_dir():
        raise NotADirectoryError(
            f"Image folder {root} is a file, not a folder. Pass the folder that contains the images."
        )
    if not os.access(root, os.R_OK | os.X_OK):
        raise PermissionError(f"Image folder {root} cannot be read. Check its permissions.")


def _walk_folders(root: Path) -> Iterator[tuple[str, str, list[os.DirEntry[str]]]]:
    """List each real folder under ``root`` once, breadth first.

    Yields (path, path relative to root, visible entries sorted by name) for each
    folder. Symlinked folders wait in their own queue until every folder reachable
    without a symlink is listed, so a folder keeps its own path when it has one.
    """
    visited: set[str] = set()
    folders: deque[tuple[str, str, str]] = deque([(os.fspath(root), "", os.path.realpath(root))])
    linked_folders: deque[tuple[str, str, str]] = deque()

    while folders or linked_folders:
        folder, rel_folder, real_folder = folders.popleft() if folders else linked_folders.popleft()
        if real_folder in visited:
            logger.debug("Skipping %s: folder %s is already listed", folder, real_folder)
            continue
        visited.add(real_folder)

        entries = _list_visible(folder)
        if rel_folder and RUN_FOLDER_MARKERS <= {entry.name for entry in entries}:
            logger.info("Skipping %s: it is a run folder of this tool, not images", printable_path(folder))
            continue
        yield folder, rel_folder, entries

        # Queue subfolders, resolving a path only where a symlink makes it differ
        for entry in entries:
            if not _is_dir(entry):
                continue
            rel_path = f"{rel_folder}{entry.name}/"
            if entry.is_symlink():
                linked_folders.append((entry.path, rel_path, os.path.realpath(entry.path)))
            else:
                folders.append((entry.path, rel_path, os.path.join(real_folder, entry.name)))


def _list_visible(folder: str) -> list[os.DirEntry[str]]:
    """Return the entries of ``folder`` not starting with ".", or [] if it cannot be read."""
    try:
        with os.scandir(folder) as iterator:
            entries = [entry for entry in iterator if not entry.name.startswith(".")]
    except OSError as exc:
        logger.warning("Skipping unreadable folder %s: %s", printable_path(folder), exc.strerror or exc)
        return []
    entries.sort(key=lambda entry: entry.name)
    return entries


def _is_dir(entry: os.DirEntry[str]) -> bool:
    # A link loop fails here and in _image_files, and only the latter reports it.
    try:
        return entry.is_dir()
    except OSError:
        return False


def _image_files(folder: str, rel_folder: str, entries: list[os.DirEntry[str]]) -> list[str]:
    """Return the relative paths of the image files among ``entries``."""
    images: list[str] = []
    for entry in entries:
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            continue

        # is_file follows symlinks, so it is False for a broken symlink, and it
        # raises for a link loop. Both are kept, so that decoding lists them as
        # skipped with the reason.
        try:
            is_file = entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
        except OSError:
            is_file = True
        if not is_file:
            if not _is_dir(entry):
                logger.warning("Skipping %s: not a regular file (a FIFO, socket or device)",
                               printable_path(entry.path))
            continue

        images.append(rel_folder + entry.name)
    return images
