"""Turn a TrainConfig with automatic values into concrete ones for this folder and machine."""

from __future__ import annotations

import csv
import logging
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from core.config import TrainConfig
from core.precision import resolve_precision
from data.cache import SkippedFile
from data.images import read_image_size
from data.scan import printable_path
from models.backbones import default_hidden_dim
from models.weights import IMAGENET, describe_weights, read_weights

logger = logging.getLogger(__name__)

MIN_IMAGES = 4
DEFAULT_BATCH_SIZE = 256
# Largest automatic image side; bigger inputs cost too much on a CPU.
MAX_AUTO_IMAGE_SIZE = {"cpu": 64, "cuda": 224}
DEFAULT_BACKBONE = {"cpu": "resnet10t", "cuda": "resnet18"}
# Backbone that ``--init imagenet`` picks when --backbone is auto.
DEFAULT_IMAGENET_BACKBONE = "resnet18"
SIZE_SAMPLE = 256


def resolve_device(name: str) -> torch.device:
    """Return the torch device for ``auto``, ``cpu`` or ``cuda``.

    Raises:
        ValueError: if ``cuda`` is asked for and no CUDA device is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but PyTorch finds no CUDA device; use --device cpu")
    return torch.device(name)


def resolve_config(config: TrainConfig, root: Path, paths: Sequence[str]) -> TrainConfig:
    """Fill in every automatic setting from the initial weights, the images and the machine."""
    config = resolve_init(config)
    device = resolve_device(config.device).type
    precision = resolve_precision(config.precision, torch.device(device))
    backbone = config.backbone if config.backbone != "auto" else DEFAULT_BACKBONE[device]
    image_size = config.image_size or auto_image_size(root, paths, MAX_AUTO_IMAGE_SIZE[device])
    local_size = config.local_size or max(16, _round_to(image_size * 96 / 224, 8))
    workers = config.workers if config.workers >= 0 else min(8, os.cpu_count() or 1)
    hidden_dim = config.hidden_dim or default_hidden_dim(backbone)
    return config.replace(
        backbone=backbone, image_size=image_size, local_size=local_size, workers=workers, hidden_dim=hidden_dim,
        precision=precision,
    )


def resolve_init(config: TrainConfig) -> TrainConfig:
    """Take the backbone, projection width and stem from ``config.init``'s weights where they are automatic.

    Raises:
        ValueError: if the weights cannot be read, or their backbone is
            unknown while ``config.backbone`` is ``auto``.
    """
    if not config.init:
        return config
    if config.init == IMAGENET:
        backbone = DEFAULT_IMAGENET_BACKBONE if config.backbone == "auto" else config.backbone
        return config.replace(backbone=backbone, standard_stem=True)

    architecture = describe_weights(read_weights(config.init))
    changes: dict = {"standard_stem": architecture.small_stem is False}
    if config.backbone == "auto":
        if architecture.backbone is None:
            raise ValueError(f"cannot tell which backbone the weights in {config.init} belong to; pass --backbone")
        changes["backbone"] = architecture.backbone
    if config.hidden_dim == 0 and architecture.hidden_dim is not None:
        changes["hidden_dim"] = architecture.hidden_dim
    return config.replace(**changes)


def auto_image_size(root: Path, paths: Sequence[str], max_size: int) -> int:
    """Return the median shorter side of a sample of images, between 32 and ``max_size``.

    Only image headers are read. Images are never enlarged beyond their
    typical size: a folder of 32-pixel images trains on 32-pixel crops.
    """
    step = max(1, len(paths) // SIZE_SAMPLE)
    sides = []
    for path in paths[::step][:SIZE_SAMPLE]:
        size = read_image_size(root / path)
        if size is not None:
            sides.append(min(size))
    if not sides:
        return min(max_size, 64)
    median = int(statistics.median(sides))
    return max(32, min(max_size, _round_to(median, 8)))


def resolve_batch_size(config: TrainConfig, num_images: int) -> int:
    """Return the batch size for ``num_images`` usable images.

    Raises:
        ValueError: if there are too few images, naming how many were found.
    """
    if num_images < MIN_IMAGES:
        raise ValueError(
            f"found {num_images} usable {'image' if num_images == 1 else 'images'} in {config.image_folder}; "
            f"at least {MIN_IMAGES} are "
            "needed. Point to a folder with more images (sub-folders are searched too)."
        )
    if config.batch_size == 0:
        size = min(DEFAULT_BATCH_SIZE, num_images)
        return size - size % 2
    if config.batch_size > num_images:
        raise ValueError(
            f"found {num_images} usable images in {config.image_folder}, fewer than one batch of "
            f"{config.batch_size}; pass --batch-size {num_images} or less, or add images"
        )
    return config.batch_size


def write_skipped(path: Path, skipped: Sequence[SkippedFile]) -> None:
    """Write the skipped files and their reasons as a two-column CSV (path, reason)."""
    temporary = path.with_suffix(".csv.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        for item in skipped:
            writer.writerow([printable_path(item.path), printable_path(item.reason)])
    temporary.replace(path)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)
