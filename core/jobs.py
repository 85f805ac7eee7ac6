"""The engine's jobs: train a run, assign images, label a folder end to end.

The CLI and the app call these functions; they log through ``logging`` and
raise ``ValueError`` with a message for the user when the input is unusable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core import distributed
from core.assign import Assignment, assign_cache, assign_folder, load_trained_model
from core.config import TrainConfig
from core.labels_csv import write_labels_csv
from core.run_files import RunFiles
from core.setup import resolve_batch_size, resolve_config, resolve_device, write_skipped
from core.train import Trainer, TrainingState
from data.cache import ImageCache, build_cache
from data.scan import scan_folder

logger = logging.getLogger(__name__)


def load_or_create_config(run_dir: Path, config: TrainConfig, overrides: dict) -> TrainConfig:
    """Return the settings for training ``run_dir``.

    A new run uses ``config``. An existing run (one with ``config.json``)
    keeps its saved settings, except ``epochs``, ``time_budget``, ``device``
    and ``workers``, which ``overrides`` may change to continue training.

    Raises:
        ValueError: if ``overrides`` changes a setting that a resumed run must keep.
    """
    files = RunFiles(run_dir)
    if not files.config.exists():
        return config
    saved = TrainConfig.load(files.config)
    changeable = {"epochs", "time_budget", "device", "workers"}
    conflicts = {
        name: value for name, value in overrides.items()
        if name not in changeable and getattr(saved, name) != value
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
        ValueError: if the folder holds no usable image.
    """
    root = Path(config.image_folder)
    paths = scan_folder(root)
    if not paths:
        raise ValueError(
            f"no image files found in {root} (searched sub-folders for .jpg, .jpeg, .png, .bmp, .gif, "
            ".tif, .tiff, .webp, .heic, .heif); point to a folder that holds images"
        )
    logger.info("Found %d image files in %s", len(paths), root)

    config = resolve_config(config, root, paths)
    files = RunFiles(run_dir)
    cache = build_cache(root, paths, config.image_size, files.cache_dir, config.workers)
    if distributed.is_main_process():
        write_skipped(files.skipped, cache.skipped)
    if cache.skipped:
        logger.warning("%d of %d files could not be read; see %s", len(cache.skipped), len(paths), files.skipped)
    return config, cache


def train(config: TrainConfig, run_dir: Path) -> tuple[TrainConfig, ImageCache, TrainingState]:
    """Train (or resume) the run in ``run_dir`` on ``config.image_folder``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config, cache = prepare_images(config, run_dir)
    batch_size = resolve_batch_size(config, len(cache))
    if config.batch_size != batch_size:
        logger.info("Using batch size %d", batch_size)
    config = config.replace(batch_size=batch_size)
    if distributed.is_main_process():
        config.save(RunFiles(run_dir).config)

    device = resolve_device(config.device)
    local_batch = _local_batch_size(batch_size)
    logger.info(
        "Training %s at %d px on %s: %d images, batch %d, heads %s",
        config.backbone, config.image_size, device, len(cache), batch_size, list(config.class_counts),
    )
    state = Trainer(config, cache, run_dir, local_batch, device).fit()
    return config, cache, state


def assign_training_images(run_dir: Path, cache: ImageCache, device_name: str = "auto") -> Assignment:
    """Assign the run's own (cached) images and write labels.csv and embeddings.npy."""
    files = RunFiles(run_dir)
    device = resolve_device(device_name)
    model, config = load_trained_model(run_dir, device)
    result = assign_cache(model, cache, config.row_tau, files.embeddings, device)
    write_labels_csv(files.labels, result.paths, result.classes, result.confidences, config.class_counts)
    logger.info("Wrote %d labels to %s", len(result.paths), files.labels)
    return result


def assign(
    run_dir: Path, folder: Path | None = None, csv_path: Path | None = None,
    device_name: str = "auto", workers: int | None = None,
) -> Assignment:
    """Assign the images of ``folder`` (default: the run's own folder) with a trained run.

    Labels go to ``csv_path`` (default ``RUN/labels.csv``). For the run's own
    folder the embeddings go to ``RUN/embeddings.npy`` and the skipped
    files to ``RUN/skipped.csv``; for another folder they go beside the CSV
    as ``NAME.embeddings.npy`` and ``NAME.skipped.csv``.
    """
    files = RunFiles(run_dir)
    device = resolve_device(device_name)
    model, config = load_trained_model(run_dir, device)
    root = Path(folder) if folder is not None else Path(config.image_folder)
    own_folder = folder is None or root.resolve() == Path(config.image_folder).resolve()
    csv_path = Path(csv_path) if csv_path is not None else files.labels
    if own_folder:
        embeddings_path, skipped_path = files.embeddings, files.skipped
    else:
        embeddings_path = csv_path.with_name(csv_path.stem + ".embeddings.npy")
        skipped_path = csv_path.with_name(csv_path.stem + ".skipped.csv")

    paths = scan_folder(root)
    if not paths:
        raise ValueError(f"no image files found in {root}; point to a folder that holds images")
    workers = config.workers if workers is None else workers
    result = assign_folder(model, root, paths, config.image_size, config.row_tau, embeddings_path, device, workers)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_labels_csv(csv_path, result.paths, result.classes, result.confidences, config.class_counts)
    write_skipped(skipped_path, result.skipped)
    logger.info("Wrote %d labels to %s (%d files skipped)", len(result.paths), csv_path, len(result.skipped))
    return result


def label(config: TrainConfig, run_dir: Path) -> Assignment | None:
    """Train on ``config.image_folder``, then assign its images and export labels.csv.

    Returns None on processes other than the main one, which only train.
    """
    config, cache, _ = train(config, run_dir)
    if not distributed.is_main_process():
        return None
    return assign_training_images(run_dir, cache, config.device)


def _local_batch_size(batch_size: int) -> int:
    world = distributed.world_size()
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes; change --batch-size")
    return batch_size // world

