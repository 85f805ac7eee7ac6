"""The engine's jobs: train a run, assign images, label a folder end to end.

The CLI and the app call these functions; they log through ``logging`` and
raise ``ValueError`` with a message for the user when the input is unusable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from core import distributed
from core.append import AppendResult, append_to_run
from core.appended_folders import read_appended_folders
from core.assign import Assignment, assign_cache, assign_folder, load_trained_model
from core.commands import core_command
from core.config import AUTOMATIC_VALUES, TrainConfig
from core.diagnostics import write_diagnostics
from core.head_only import head_only_option, train_head_only
from core.labels_csv import write_labels_csv
from core.run_files import RunFiles
from core.setup import resolve_batch_size, resolve_config, resolve_device, write_skipped
from core.train import Trainer, TrainingState, build_initial_model
from data.cache import ImageCache, build_cache
from data.scan import no_images_message, scan_folder
from data.transforms import multicrop_config
from models.names import FITTED_BACKBONES
from models.patch_kmeans import PatchKMeans

logger = logging.getLogger(__name__)

# Assumed slowest decoding rate, in images per second, of the main process
# while the others wait for it to build the image cache.
# NOTE: an estimate, not a measurement; a slower machine or storage makes the
# waiting processes time out and the run stop with an error.
MIN_DECODE_RATE = 10.0


def load_or_create_config(run_dir: Path, config: TrainConfig, overrides: dict) -> TrainConfig:
    """Return the settings for training ``run_dir``.

    A new run uses ``config``. An existing run (one with ``config.json``)
    keeps its saved settings, except ``epochs``, ``time_budget``, ``device``,
    ``precision`` and ``workers``, which ``overrides`` may change to continue training.
    An override that asks for an automatic value (``--backbone auto``,
    ``--batch-size 0``) fits the value the run chose.

    Raises:
        ValueError: if ``overrides`` changes a setting that a resumed run must keep.
    """
    files = RunFiles(run_dir)
    if not files.config.exists():
        return config
    saved = TrainConfig.load(files.config)
    changeable = {"epochs", "time_budget", "device", "precision", "workers"}
    conflicts = {
        name: value for name, value in overrides.items()
        if name not in changeable and getattr(saved, name) != value
        and not (name in AUTOMATIC_VALUES and value == AUTOMATIC_VALUES[name])
    }
    if conflicts:
        listed = ", ".join(f"{name}={value!r} (run has {getattr(saved, name)!r})" for name, value in conflicts.items())
        raise ValueError(
            f"{run_dir} already holds a run with other settings: {listed}. "
            "Use a new --out directory, or drop these options to resume the run."
        )
    return saved.replace(**{name: value for name, value in overrides.items() if name in changeable})


def prepare_images(config: TrainConfig, run_dir: Path) -> tuple[TrainConfig, ImageCache]:
    """Scan the folder, fill in automatic settings and decode the images once.

    Raises:
        ValueError: if the folder contains no usable image.
    """
    root = Path(config.image_folder)
    paths = scan_folder(root)
    if not paths:
        raise ValueError(no_images_message(root))

    distributed.check_same_list(paths, f"list of image files in {root}")
    config = resolve_config(config, root, paths)
    files = RunFiles(run_dir)
    # The main process decodes the images; the others reuse its cache.
    with distributed.main_process_first(extra_seconds=len(paths) / MIN_DECODE_RATE):
        cache = build_cache(root, paths, config.image_size, files.cache_dir, config.workers)
    if distributed.is_main_process():
        write_skipped(files.skipped, cache.skipped)
    if cache.skipped:
        logger.warning("%d of %d files could not be read; see %s", len(cache.skipped), len(paths), files.skipped)
    return config, cache


def train(config: TrainConfig, run_dir: Path) -> tuple[TrainConfig, ImageCache, TrainingState]:
    """Train (or resume) the run in ``run_dir`` on ``config.image_folder``.

    Under torchrun every process calls this, and only the main one writes files.

    Raises:
        ValueError: if the images are unusable, or if the processes of a
            distributed run do not share ``run_dir``.
    """
    if distributed.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.check_shared_directory(run_dir)
    config, cache = prepare_images(config, run_dir)
    batch_size = resolve_batch_size(config, len(cache))
    if config.batch_size == 0:
        batch_size -= batch_size % distributed.world_size()
    if config.batch_size != batch_size:
        logger.info("Using batch size %d", batch_size)
    config = config.replace(batch_size=batch_size)
    if distributed.is_main_process():
        config.save(RunFiles(run_dir).config)

    device = distributed.local_device(resolve_device(config.device))
    local_batch = _local_batch_size(batch_size)
    logger.info(
        "Training %s at %d px on %s: %d images, batch %d, heads %s",
        config.backbone, config.image_size, device, len(cache), batch_size, list(config.class_counts),
    )
    if config.trains_heads_only:
        return config, cache, _train_head_only(config, cache, run_dir, device)
    state = Trainer(config, cache, run_dir, local_batch, device).fit()
    return config, cache, state


def _train_head_only(config: TrainConfig, cache: ImageCache, run_dir: Path, device: torch.device) -> TrainingState:
    """Train the projection and heads on cached backbone features, in one process.

    A patch-kmeans backbone is fitted to the images first, unless the run's
    checkpoint already contains it. Its views get the full training augmentation,
    because its features, unlike a frozen ResNet's, gain from colour changes.
    """
    if distributed.world_size() > 1:
        raise ValueError(
            f"{head_only_option(config)} trains in one process; start it with python -m core, not torchrun"
        )
    torch.manual_seed(config.seed)
    trained = RunFiles(run_dir).checkpoint.exists()
    model = build_initial_model(config, load_init=not trained)
    augment = None
    if config.backbone in FITTED_BACKBONES:
        augment = multicrop_config(config.image_size, color_strength=config.color_strength,
                                   min_crop_scale=config.min_crop_scale)
        if not trained:
            _fit_backbone(model.backbone, cache, config.seed)
    return train_head_only(config, cache, run_dir, model, device, config.head_views, config.head_lr, augment)


def _fit_backbone(backbone: PatchKMeans, cache: ImageCache, seed: int) -> None:
    """Fit a patch-kmeans backbone to the decoded images, and log the time it took."""
    started = time.perf_counter()
    backbone.fit(cache.images, seed)
    logger.info("Fitted the patch dictionary to %d images in %.1f s", len(cache), time.perf_counter() - started)


def assign_training_images(run_dir: Path, cache: ImageCache, device_name: str = "auto") -> Assignment | None:
    """Assign the run's own (cached) images and write labels.csv and embeddings.npy.

    Under torchrun each process assigns a share of the images. The main
    process writes the files and returns the result, and the others return None.
    """
    files = RunFiles(run_dir)
    device = distributed.local_device(resolve_device(device_name))
    model, config = load_trained_model(run_dir, device)
    result = _assign_and_write(
        lambda scratch: assign_cache(model, cache, config.row_tau, scratch, device),
        files.labels, files.embeddings, config.class_counts,
    )
    if result is None:
        return None
    logger.info("Wrote %d labels to %s", len(result.paths), files.labels)
    _warn_dropped_appended_rows(run_dir)
    write_run_diagnostics(run_dir)
    return result


def _assign_and_write(
    assign_into: Callable[[Path], Assignment | None], csv_path: Path, embeddings_path: Path,
    class_counts: Sequence[int],
) -> Assignment | None:
    """Run ``assign_into`` on a scratch embeddings file, write the labels beside ``csv_path``, then
    rename both into place one right after the other.

    So an interruption leaves the embeddings and the CSV both old or both new,
    except in the moment between the two renames. Returns None on processes
    other than the main one, which write nothing.
    """
    token = secrets.token_hex(4)
    embeddings_scratch = embeddings_path.with_name(f".{embeddings_path.stem}.{token}.npy")
    labels_scratch = csv_path.with_name(f".{csv_path.stem}.{token}.csv")
    try:
        result = assign_into(embeddings_scratch)
        if result is None:
            return None
        write_labels_csv(labels_scratch, result.paths, result.classes, result.confidences, class_counts)
        # Drop the memory map of the scratch file before renaming it, since Windows may refuse to rename a mapped file.
        result = dataclasses.replace(result, embeddings=np.empty((0, 0), dtype=np.float32))
        os.replace(embeddings_scratch, embeddings_path)
        os.replace(labels_scratch, csv_path)
    finally:
        embeddings_scratch.unlink(missing_ok=True)
        labels_scratch.unlink(missing_ok=True)
    return dataclasses.replace(result, embeddings=np.load(embeddings_path, mmap_mode="r"))


def write_run_diagnostics(run_dir: Path) -> None:
    """Write diagnostics.json and class_tree.json; a failure here is logged and never loses the labels."""
    try:
        report = write_diagnostics(run_dir)
    except (ValueError, OSError) as error:
        logger.warning("Could not compute the per-head diagnostics of %s: %s", run_dir, error)
        return
    reason = report["recommendation_reason"]
    if any(reason in warning for warning in report["warnings"]):
        # The fallback's reason was just logged as a warning.
        logger.info("Recommended head: %s", report["recommended_head"])
    else:
        logger.info("Recommended head: %s (%s)", report["recommended_head"], reason)


def assign(
    run_dir: Path, folder: Path | None = None, csv_path: Path | None = None,
    device_name: str = "auto", workers: int | None = None,
) -> Assignment | None:
    """Assign the images of ``folder`` (default: the run's own folder) with a trained run.

    Labels go to ``csv_path`` (default ``RUN/labels.csv``, for the run's own
    folder only; another folder needs a separate ``csv_path``). With
    ``RUN/labels.csv`` the embeddings go to ``RUN/embeddings.npy`` and the
    skipped files to ``RUN/skipped.csv``; with any other CSV they go beside it
    as ``NAME.embeddings.npy`` and ``NAME.skipped.csv``, and the run's files
    stay as they are.

    Under torchrun each process decodes and assigns a contiguous share of
    the images. The main process writes the same files, in the same order,
    as a single process would and returns the result. The others return None.
    """
    files = RunFiles(run_dir)
    device = distributed.local_device(resolve_device(device_name))
    model, config = load_trained_model(run_dir, device)
    root = Path(folder) if folder is not None else Path(config.image_folder)
    own_folder = folder is None or root.resolve() == Path(config.image_folder).resolve()
    if not own_folder and (csv_path is None or Path(csv_path).resolve() == files.labels.resolve()):
        # RUN/labels.csv must keep matching embeddings.npy and the run's own images.
        raise ValueError(
            f"{root} is not the run's image folder ({config.image_folder}), so its labels would replace "
            f"{files.labels}. Pass --csv NEW.csv to write them to a separate file, or --append to add "
            "its images to the run."
        )
    csv_path = Path(csv_path) if csv_path is not None else files.labels
    writes_run_labels = csv_path.resolve() == files.labels.resolve()
    if writes_run_labels:
        # Writing through a link to RUN/labels.csv would replace the link, not the run's file.
        csv_path, embeddings_path, skipped_path = files.labels, files.embeddings, files.skipped
    else:
        embeddings_path = csv_path.with_name(csv_path.stem + ".embeddings.npy")
        skipped_path = csv_path.with_name(csv_path.stem + ".skipped.csv")
        check_csv_target(csv_path, (csv_path, embeddings_path, skipped_path), files)

    paths = scan_folder(root)
    if not paths:
        raise ValueError(no_images_message(root))
    distributed.check_same_list(paths, f"list of image files in {root}")
    workers = config.workers if workers is None else workers
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result = _assign_and_write(
        lambda scratch: assign_folder(model, root, paths, config.image_size, config.row_tau, scratch, device, workers),
        csv_path, embeddings_path, config.class_counts,
    )
    if result is None:
        return None
    write_skipped(skipped_path, result.skipped)
    logger.info("Wrote %d labels to %s (files skipped: %d)", len(result.paths), csv_path, len(result.skipped))
    if writes_run_labels:
        _warn_dropped_appended_rows(run_dir)
        write_run_diagnostics(run_dir)
    return result


def check_csv_target(csv_path: Path, outputs: tuple[Path, ...], files: RunFiles) -> None:
    """Raise ValueError, before any image is decoded, when ``--csv`` cannot be written or one of
    ``outputs`` (the CSV and the files beside it) would replace a file of this run or of a run
    folder that contains the CSV."""
    if csv_path.is_dir():
        raise ValueError(f"--csv {csv_path} is a folder. Give a file name, for example {csv_path / 'new_labels.csv'}.")
    # lexists, because a broken link is no folder either.
    blocking = next((parent for parent in csv_path.parents if os.path.lexists(parent) and not parent.is_dir()), None)
    if blocking is not None:
        raise ValueError(
            f"--csv {csv_path} is inside {blocking}, which is a file or a broken link, not a folder. "
            "Give a path in a folder."
        )
    folder = next((path for path in outputs if path.is_dir()), None)
    if folder is not None:
        raise ValueError(f"--csv {csv_path} would write {folder}, which is a folder. Choose another name for the CSV.")

    enclosing = (RunFiles(parent) for parent in csv_path.resolve().parents)
    for run in [files, *(run for run in enclosing if _contains_run(run))]:
        owned = run.owned_paths()
        for path in outputs:
            resolved = path.resolve()
            if resolved in owned or not owned.isdisjoint(resolved.parents):
                raise ValueError(
                    f"--csv {csv_path} would write {path}, which belongs to the run {run.root}. "
                    "Choose another name or folder for the CSV."
                )


def _contains_run(files: RunFiles) -> bool:
    """Return whether ``files.root`` contains a run's settings and its checkpoint, log or labels.

    Broader than the scan's test (``data.scan.RUN_FOLDER_MARKERS``) on purpose: a wrong
    match here only rejects a CSV path, while there it would drop images.
    """
    companions = (files.checkpoint, files.log, files.labels)
    return files.config.is_file() and any(path.is_file() for path in companions)


def _warn_dropped_appended_rows(run_dir: Path) -> None:
    """Warn that rewriting RUN/labels.csv from the image folder left out the appended folders."""
    folders = read_appended_folders(run_dir)
    if folders:
        listed = " ".join(shlex.quote(str(folder)) for folder in folders)
        logger.warning(
            "labels.csv now lists the run's image folder only. To add the images appended before, "
            "run %s for each of: %s", core_command("assign", run_dir, "FOLDER", "--append"), listed,
        )


def append(run_dir: Path, folder: Path, device_name: str = "auto", workers: int | None = None) -> AppendResult:
    """Add the images of ``folder`` that the run does not list to its labels.csv and embeddings.npy,
    then update the diagnostics."""
    result = append_to_run(run_dir, folder, device_name, workers)
    if result.added:
        write_run_diagnostics(run_dir)
    return result


def label(config: TrainConfig, run_dir: Path) -> Assignment | None:
    """Train on ``config.image_folder``, then assign its images and export labels.csv.

    Returns None on processes other than the main one, which share the
    training and the assignment but write nothing.
    """
    config, cache, _ = train(config, run_dir)
    return assign_training_images(run_dir, cache, config.device)


def _local_batch_size(batch_size: int) -> int:
    world = distributed.world_size()
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes; change --batch-size")
    if batch_size // world < 2:
        raise ValueError(
            f"batch size {batch_size} over {world} processes leaves fewer than 2 images per process; "
            f"pass --batch-size {2 * world} or more"
        )
    return batch_size // world

