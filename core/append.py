"""Add the images of a folder to a labelled run without retraining.

The run's trained model assigns every image of the folder that the run does
not list yet, and the results are appended as new rows of labels.csv and
embeddings.npy. Existing rows, their order and their classes stay unchanged.

Paths. labels.csv stores every path relative to the run's image folder,
because its format rejects absolute paths. An image outside that folder is
stored with ``..`` segments, for example ``../new_photos/cat/001.jpg``, which
names the file as long as both folders keep their places relative to each
other. Two paths name the same image when their resolved absolute paths
(symbolic links followed) are equal, so an image already in the run is not
added again, whichever folder it is reached through.

Each folder that images were appended from is listed in
``RUN/appended_folders.json``. The app reads images only inside the image
folder and those listed folders (``core.thumbnails.resolve_image_path``).

Derived files. When ``neighbours.faiss`` (``core.index``) was built from the
previous embeddings.npy, the new embeddings are added to it. When
``embedding_map.npy`` (``core.embedding_map``) was, each new image is placed
at the mean map position of its nearest existing images by cosine
similarity, instead of fitting UMAP again, so existing points keep their
places. A derived file that was already out of date is left for its module
to rebuild.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import distributed
from core.appended_folders import record_appended_folder
from core.assign import Assignment, assign_folder, load_trained_model
from core.commands import core_command
from core.config import TrainConfig
from core.embedding_map import place_by_neighbours
from core.index import embeddings_stamp, read_cache_info, write_cache_info
from core.labels_csv import LabelsTable, read_labels_csv, write_labels_csv
from core.run_files import RunFiles
from core.setup import resolve_device, write_skipped
from data.cache import SkippedFile
from data.scan import no_images_message, printable_path, scan_folder, unusable_name_reason

logger = logging.getLogger(__name__)

COPY_ROWS = 65536


@dataclass(frozen=True)
class AppendResult:
    """Changes made by ``append_to_run``.

    Attributes:
        added: labels.csv paths of the appended images, in row order.
        duplicates: labels.csv paths of the folder's images that the run already listed.
        skipped: files that could not be decoded, with labels.csv paths.
        num_rows: rows of labels.csv after the append.
    """

    added: list[str]
    duplicates: list[str]
    skipped: list[SkippedFile]
    num_rows: int


def append_to_run(
    run_dir: Path, folder: Path, device_name: str = "auto", workers: int | None = None
) -> AppendResult:
    """Assign the images of ``folder`` that ``run_dir`` does not list and append them to the run.

    Args:
        run_dir: a labelled run (config.json, checkpoint.pt, labels.csv and embeddings.npy).
        folder: images to add; sub-folders are searched too.
        device_name: ``auto``, ``cpu`` or ``cuda``.
        workers: processes that decode images; None uses the run's setting.

    Raises:
        ValueError: if the run is not trained or not labelled, labels.csv and
            embeddings.npy disagree with each other or with the model,
            ``folder`` contains no image files, or a process group is running.
        FileNotFoundError, NotADirectoryError: if ``folder`` is missing or a file.
    """
    if distributed.world_size() > 1:
        raise ValueError("appending runs in one process; start it with python -m core, not torchrun")
    files = RunFiles(Path(run_dir))
    device = resolve_device(device_name)
    model, config = load_trained_model(files.root, device)
    table = _read_labels(files, config)
    image_root = Path(config.image_folder)

    if unusable_name_reason(labels_path(Path(folder), image_root)):
        raise ValueError(
            f"the path of {printable_path(str(folder))} is not valid UTF-8, so labels.csv cannot record its "
            "images; rename the folder or move the images to a folder with a UTF-8 name"
        )
    candidates = scan_folder(Path(folder))
    if not candidates:
        raise ValueError(no_images_message(Path(folder)))
    new_paths, stored, duplicates = select_new_images(Path(folder), candidates, image_root, table.paths)
    if duplicates:
        logger.info("%d of %d images in %s are already in the run", len(duplicates), len(candidates), folder)
    if not new_paths:
        logger.info("Nothing to add: every image in %s is already in the run", folder)
        # An earlier append stopped between its rows and this record would otherwise never list the folder.
        _record_folder(files, Path(folder), image_root)
        return AppendResult([], duplicates, [], len(table.paths))

    scratch = files.root / f".append.{secrets.token_hex(4)}.embeddings.npy"
    try:
        workers = config.workers if workers is None else workers
        result = assign_folder(
            model, Path(folder), new_paths, config.image_size, config.row_tau, scratch, device, workers
        )
        if result is None:
            # Only processes other than the main one of a process group get None.
            raise RuntimeError(f"assigning the images of {folder} returned no result")
        stored_of = dict(zip(new_paths, stored, strict=True))
        added = [stored_of[path] for path in result.paths]
        skipped = [SkippedFile(stored_of[item.path], item.reason) for item in result.skipped]
        if added:
            # Recorded first, so that an interruption between the two cannot leave rows whose folder is unlisted.
            for listed in [Path(folder), *_linked_targets(Path(folder), result.paths)]:
                _record_folder(files, listed, image_root)
            _write_rows(files, table, added, result)
    finally:
        scratch.unlink(missing_ok=True)

    _merge_skipped(files.skipped, skipped)
    num_rows = len(table.paths) + len(added)
    logger.info("Appended %d images to %s (rows: %d, files skipped: %d)", len(added), files.labels,
                num_rows, len(skipped))
    return AppendResult(added, duplicates, skipped, num_rows)


def select_new_images(
    folder: Path, candidates: list[str], image_root: Path, existing: list[str]
) -> tuple[list[str], list[str], list[str]]:
    """Split ``candidates`` (paths relative to ``folder``) into new images and images already listed.

    Args:
        existing: labels.csv paths, relative to ``image_root``.

    Returns:
        The new images' paths relative to ``folder``, the same images' paths
        for labels.csv (relative to ``image_root``), and the labels.csv paths
        of the candidates already in ``existing`` or repeated in ``candidates``.
    """
    known = {os.path.realpath(image_root / path) for path in existing}
    new_paths: list[str] = []
    stored: list[str] = []
    duplicates: list[str] = []
    for path in candidates:
        real = os.path.realpath(folder / path)
        label_path = labels_path(folder / path, image_root)
        if real in known:
            duplicates.append(label_path)
            continue
        known.add(real)
        new_paths.append(path)
        stored.append(label_path)
    return new_paths, stored, duplicates


def _linked_targets(folder: Path, rel_paths: list[str]) -> list[Path]:
    """Return the real folders of the images under ``folder`` that symbolic links lead out of it,
    so that the app, which compares real paths, may show them."""
    real_folder = folder.resolve()
    targets = {(folder / path).resolve().parent for path in rel_paths}
    # Sorted, a folder comes before the folders inside it, so only the outermost ones are kept.
    kept: list[Path] = []
    for target in sorted(target for target in targets if not target.is_relative_to(real_folder)):
        if not any(target.is_relative_to(parent) for parent in kept):
            kept.append(target)
    return kept


def _record_folder(files: RunFiles, folder: Path, image_root: Path) -> None:
    """List ``folder`` in appended_folders.json unless its real path lies inside the image folder's,
    which the app shows anyway (it compares real paths)."""
    if not folder.resolve().is_relative_to(image_root.resolve()):
        record_appended_folder(files, folder)


def labels_path(image: Path, image_root: Path) -> str:
    """Return the labels.csv path of ``image``: relative to ``image_root``, with ``..`` when outside it.

    Symbolic links are kept, as in ``data.scan.scan_folder``, so an image
    under a linked sub-folder keeps the link's name.

    Raises:
        ValueError: if no relative path exists, as between two Windows drives.
    """
    try:
        relative = os.path.relpath(os.path.abspath(image), os.path.abspath(image_root))
    except ValueError as error:
        raise ValueError(
            f"cannot store {image} relative to the run's image folder {image_root} ({error}); "
            "copy the new images onto the drive that holds the image folder"
        ) from error
    return relative.replace(os.sep, "/")


# ------------------------------------------------------------------ reading


def _read_labels(files: RunFiles, config: TrainConfig) -> LabelsTable:
    """Read labels.csv and check it against embeddings.npy and the run's heads."""
    if not files.labels.is_file() or not files.embeddings.is_file():
        raise ValueError(
            f"{files.root} has no labels.csv or embeddings.npy yet; label the run's own folder first "
            f"with: {core_command('assign', files.root)}"
        )
    table = read_labels_csv(files.labels)
    if table.class_counts != list(config.class_counts):
        raise ValueError(
            f"{files.labels} has heads of {table.class_counts} classes but the run's model has "
            f"{list(config.class_counts)}; write it again with: {core_command('assign', files.root)}"
        )
    rows = np.load(files.embeddings, mmap_mode="r").shape[0]
    if rows != len(table.paths):
        raise ValueError(
            f"{files.embeddings} has {rows} rows but {files.labels} has {len(table.paths)}; write both again "
            f"with: {core_command('assign', files.root)}, then append the other folders again"
        )
    return table


# ------------------------------------------------------------------ writing


def _write_rows(files: RunFiles, table: LabelsTable, added: list[str], result: Assignment) -> None:
    """Append rows to embeddings.npy and labels.csv, then bring the index and the map up to date."""
    num_old = len(table.paths)
    old_stamp = embeddings_stamp(files.embeddings)
    index_current = files.index.is_file() and _matches(read_cache_info(files.index_info), old_stamp)
    map_current = files.embedding_map.is_file() and _matches(read_cache_info(files.embedding_map_info), old_stamp)

    # Both files are written in full beside the originals, then renamed one
    # after the other, so a crash leaves at most this short window between them.
    embeddings_temporary = _appended_embeddings(files.embeddings, result.embeddings)
    labels_temporary = files.labels.with_name(f".{files.labels.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_labels(labels_temporary, table, added, result)
        os.replace(embeddings_temporary, files.embeddings)
        os.replace(labels_temporary, files.labels)
    finally:
        embeddings_temporary.unlink(missing_ok=True)
        labels_temporary.unlink(missing_ok=True)

    embeddings = np.load(files.embeddings, mmap_mode="r")
    if index_current:
        _extend_index(files, embeddings[num_old:])
    if map_current:
        _extend_map(files, embeddings[:num_old], embeddings[num_old:])


def _appended_embeddings(path: Path, new: np.ndarray) -> Path:
    """Write the rows of ``path`` followed by ``new`` to a temporary .npy file beside it; return its path."""
    old = np.load(path, mmap_mode="r")
    if old.shape[1:] != new.shape[1:]:
        raise ValueError(
            f"{path} contains embeddings of shape (rows, {old.shape[1]}), but the model outputs "
            f"(rows, {new.shape[1]}); "
            f"write it again with: {core_command('assign', path.parent)}"
        )
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp.npy")
    target = np.lib.format.open_memmap(
        temporary, mode="w+", dtype=np.float32, shape=(len(old) + len(new), *old.shape[1:])
    )
    for start in range(0, len(old), COPY_ROWS):
        stop = min(start + COPY_ROWS, len(old))
        target[start:stop] = old[start:stop]
    target[len(old):] = new
    target.flush()
    del target, old
    return temporary


def _write_labels(path: Path, table: LabelsTable, added: list[str], result: Assignment) -> None:
    extra = {name: [*values, *([""] * len(added))] for name, values in table.extra.items()}
    write_labels_csv(
        path,
        [*table.paths, *added],
        np.concatenate([table.classes, result.classes]),
        np.concatenate([table.confidences, result.confidences]),
        table.class_counts,
        extra,
    )


def _merge_skipped(path: Path, skipped: list[SkippedFile]) -> None:
    """Add ``skipped`` to the run's skipped.csv, keeping the files it already lists."""
    if not skipped:
        return
    listed: list[SkippedFile] = []
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as handle:
            listed = [SkippedFile(row["path"], row["reason"]) for row in csv.DictReader(handle)]
    known = {item.path for item in listed}
    write_skipped(path, listed + [item for item in skipped if printable_path(item.path) not in known])


# ----------------------------------------------------------- derived files
#
# NOTE: these two functions rely on how core.index and core.embedding_map
# record what their files were built from: a JSON file holding
# core.index.embeddings_stamp() of embeddings.npy, plus "rows" for the map.
# If that record changes, they must change with it.


def _matches(info: object, stamp: dict) -> bool:
    """Return whether a derived file's record matches the embeddings.npy identified by ``stamp``."""
    return isinstance(info, dict) and all(info.get(key) == value for key, value in stamp.items())


def _extend_index(files: RunFiles, new: np.ndarray) -> None:
    """Add ``new`` (num_new, dim) embeddings to the FAISS index and record the new embeddings.npy."""
    import faiss

    info = read_cache_info(files.index_info)
    index = faiss.read_index(str(files.index))
    index.add(np.ascontiguousarray(new, dtype=np.float32))
    temporary = files.index.with_name(f".{files.index.name}.{secrets.token_hex(4)}.tmp")
    try:
        faiss.write_index(index, str(temporary))
        os.replace(temporary, files.index)
    finally:
        temporary.unlink(missing_ok=True)
    write_cache_info(files.index_info, {**info, **embeddings_stamp(files.embeddings)})
    logger.info("Added %d embeddings to the nearest-neighbour index %s", len(new), files.index)


def _extend_map(files: RunFiles, old: np.ndarray, new: np.ndarray) -> None:
    """Append map positions for ``new`` embeddings, placed among their nearest ``old`` ones."""
    info = read_cache_info(files.embedding_map_info)
    coordinates = np.load(files.embedding_map)
    if coordinates.shape != (len(old), 2):
        logger.info("The 2-D map %s does not match the embeddings; it is rebuilt on next use", files.embedding_map)
        return
    placed = place_by_neighbours(np.asarray(old, dtype=np.float32), coordinates, np.asarray(new, dtype=np.float32))
    temporary = files.embedding_map.with_name(f".{files.embedding_map.stem}.{secrets.token_hex(4)}.tmp.npy")
    np.save(temporary, np.concatenate([coordinates, placed]).astype(np.float32))
    os.replace(temporary, files.embedding_map)
    write_cache_info(
        files.embedding_map_info,
        {**info, **embeddings_stamp(files.embeddings), "rows": len(old) + len(new)},
    )
    logger.info("Placed %d new images on the 2-D map %s by their nearest neighbours", len(new), files.embedding_map)
