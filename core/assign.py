"""Assign every image to a class of each head, with a confidence and an embedding."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core import distributed
from core.checkpoint import load_checkpoint
from core.commands import core_command
from core.config import TrainConfig
from core.precision import inference_autocast
from core.run_files import RunFiles
from data.cache import ImageCache, SkippedFile, iter_decoded, skip_file
from data.transforms import normalize
from models.self_classifier import SelfClassifier, build_model

logger = logging.getLogger(__name__)

ASSIGN_BATCH = 256


@dataclass
class Assignment:
    """Per-image results, one row per entry of ``paths``.

    ``classes`` and ``confidences`` are (num_images, num_heads); a
    confidence is the softmax probability of the chosen class, with the
    logits divided by the training row temperature. ``embeddings`` is
    (num_images, embedding_dim), memory-mapped from ``embeddings_path``.
    """

    paths: list[str]
    classes: np.ndarray
    confidences: np.ndarray
    embeddings: np.ndarray
    skipped: list[SkippedFile]


def load_trained_model(run_dir: Path, device: torch.device) -> tuple[SelfClassifier, TrainConfig]:
    """Load the model and settings of a run directory for inference.

    Raises:
        ValueError: if the run has no checkpoint or settings.
    """
    files = RunFiles(run_dir)
    if not files.config.exists() or not files.checkpoint.exists():
        raise ValueError(
            f"{run_dir} is not a trained run: config.json or checkpoint.pt is missing. "
            f"Train it first with: {core_command('train', 'FOLDER', '--out', run_dir)}"
        )
    config = TrainConfig.load(files.config)
    model = build_model(
        config.backbone, config.image_size, config.class_counts,
        config.embedding_dim, config.hidden_dim, config.hidden_layers, standard_stem=config.standard_stem,
    )
    checkpoint = load_checkpoint(files.checkpoint)
    model.load_state_dict(checkpoint["model"])
    return model.to(device, memory_format=torch.channels_last).eval(), config


def assign_cache(
    model: SelfClassifier, cache: ImageCache, row_tau: float, embeddings_path: Path, device: torch.device
) -> Assignment | None:
    """Assign the images of a decoded-image cache.

    Under torch.distributed each process assigns a contiguous share of the
    rows. The main process gathers the results in row order and returns
    them, and the other processes return None.
    """
    start, stop = distributed.shard_bounds(len(cache))
    batches = (
        (np.arange(first - start, min(first + ASSIGN_BATCH, stop) - start),
         torch.from_numpy(np.array(cache.images[first:min(first + ASSIGN_BATCH, stop)])))
        for first in range(start, stop, ASSIGN_BATCH)
    )
    # Every process has the same list of skipped files, so only the main
    # process passes it on.
    skipped = cache.skipped if distributed.is_main_process() else []
    with _shard_embeddings_path(embeddings_path) as shard_path:
        result = _assign(model, batches, cache.paths[start:stop], skipped, row_tau, shard_path, device)
        return _gather_shards(result, embeddings_path)


def assign_folder(
    model: SelfClassifier,
    root: Path,
    paths: Sequence[str],
    image_size: int,
    row_tau: float,
    embeddings_path: Path,
    device: torch.device,
    workers: int,
) -> Assignment | None:
    """Decode and assign the images ``paths`` under ``root``, streaming them in batches.

    Files that cannot be decoded are logged and returned in ``skipped``.
    Under torch.distributed each process decodes and assigns a contiguous
    share of ``paths``. The main process gathers the results in path order
    and returns them, and the other processes return None.
    """
    start, stop = distributed.shard_bounds(len(paths))
    paths = paths[start:stop]
    kept: list[str] = []
    skipped: list[SkippedFile] = []

    def batches() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        pending: list[np.ndarray] = []
        for index, image, reason in iter_decoded(root, paths, image_size, workers):
            if image is None:
                skipped.append(skip_file(paths[index], reason))
                continue
            kept.append(paths[index])
            pending.append(image)
            if len(pending) == ASSIGN_BATCH:
                yield np.arange(len(kept) - len(pending), len(kept)), torch.from_numpy(np.stack(pending))
                pending = []
        if pending:
            yield np.arange(len(kept) - len(pending), len(kept)), torch.from_numpy(np.stack(pending))

    # Rows are only known once decoded, so the count of paths is an upper bound.
    with _shard_embeddings_path(embeddings_path) as shard_path:
        result = _assign(model, batches(), kept, skipped, row_tau, shard_path, device, capacity=len(paths))
        return _gather_shards(result, embeddings_path)


@contextmanager
def _shard_embeddings_path(embeddings_path: Path) -> Iterator[Path]:
    """Yield where this process writes its embeddings: ``embeddings_path`` itself without a
    process group, else a temporary file removed on exit."""
    if distributed.world_size() == 1:
        yield embeddings_path
        return
    with tempfile.TemporaryDirectory(prefix="assign-shard-") as folder:
        yield Path(folder) / embeddings_path.name


def _gather_shards(shard: Assignment, embeddings_path: Path) -> Assignment | None:
    """Return every process's ``shard`` joined in rank order on the main process, None elsewhere.

    The main process writes the joined embeddings to ``embeddings_path``.
    Without a process group ``shard`` is already the whole result.
    """
    if distributed.world_size() == 1:
        return shard
    paths = [path for part in distributed.all_gather_objects(shard.paths) for path in part]
    skipped = [item for part in distributed.all_gather_objects(shard.skipped) for item in part]
    if not distributed.is_main_process():
        for array in (shard.classes, shard.confidences, shard.embeddings):
            distributed.gather_rows(array, None)
        return None

    count, num_heads = len(paths), shard.classes.shape[1]
    classes = np.zeros((count, num_heads), dtype=np.int64)
    confidences = np.zeros((count, num_heads), dtype=np.float32)
    distributed.gather_rows(shard.classes, classes)
    distributed.gather_rows(shard.confidences, confidences)

    partial = embeddings_path.with_name(embeddings_path.stem + ".partial.npy")
    embeddings = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                           shape=(count, shard.embeddings.shape[1]))
    distributed.gather_rows(shard.embeddings, embeddings)
    embeddings.flush()
    del embeddings
    partial.replace(embeddings_path)
    return Assignment(paths, classes, confidences, np.load(embeddings_path, mmap_mode="r"), skipped)


@torch.no_grad()
def _assign(
    model: SelfClassifier,
    batches: Iterator[tuple[np.ndarray, torch.Tensor]],
    paths: list[str],
    skipped: list[SkippedFile],
    row_tau: float,
    embeddings_path: Path,
    device: torch.device,
    capacity: int | None = None,
) -> Assignment:
    """Run ``batches`` of (row numbers, (batch, S, S, 3) uint8 images) through the model."""
    capacity = capacity if capacity is not None else len(paths)
    num_heads = len(model.heads)
    embedding_dim = model.heads[0].weight.shape[1]
    classes = np.zeros((capacity, num_heads), dtype=np.int64)
    confidences = np.zeros((capacity, num_heads), dtype=np.float32)
    partial = embeddings_path.with_name(embeddings_path.stem + ".partial.npy")
    embeddings = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                           shape=(max(capacity, 1), embedding_dim))

    model.eval()
    progress = tqdm(total=capacity, desc="assign", unit="img", leave=False, disable=distributed.progress_bar_disabled())
    try:
        with inference_autocast(device), progress as bar:
            for rows, images in batches:
                pixels = normalize(images.to(device).permute(0, 3, 1, 2).float().div_(255))
                embedding = model.embed(pixels.contiguous(memory_format=torch.channels_last))
                for head, logits in enumerate(model.classify(embedding)):
                    probabilities = torch.softmax(logits.float() / row_tau, dim=1)
                    confidence, chosen = probabilities.max(dim=1)
                    classes[rows, head] = chosen.cpu().numpy()
                    confidences[rows, head] = confidence.cpu().numpy()
                embeddings[rows] = embedding.float().cpu().numpy()
                bar.update(len(rows))
    except BaseException:
        # Interrupted or failed: leave no half-written file beside the outputs.
        del embeddings
        partial.unlink(missing_ok=True)
        raise

    count = len(paths)
    embeddings.flush()
    del embeddings
    _finish_embeddings(partial, embeddings_path, count, embedding_dim)
    return Assignment(
        paths=list(paths),
        classes=classes[:count],
        confidences=confidences[:count],
        embeddings=np.load(embeddings_path, mmap_mode="r"),
        skipped=list(skipped),
    )


def _finish_embeddings(partial: Path, final: Path, count: int, dim: int) -> None:
    """Move the first ``count`` rows of ``partial`` into ``final`` (an .npy file)."""
    source = np.load(partial, mmap_mode="r")
    if source.shape[0] == count:
        del source
        partial.replace(final)
        return
    temporary = final.with_name(final.stem + ".tmp.npy")
    target = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, 65536):
        stop = min(start + 65536, count)
        target[start:stop] = source[start:stop]
    target.flush()
    del target, source
    temporary.replace(final)
    partial.unlink()
