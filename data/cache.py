"""Decode every image once into a memory-mapped uint8 array.

Training reads random batches many times per run; decoding JPEGs and
resizing them each time would cost more than the network on a CPU. The cache
holds each usable image resized so its shorter side is ``size`` and
centre-cropped to (size, size, 3). It is an ``.npy`` file, so it is
memory-mapped rather than loaded whole, with a JSON index beside it that
lists the cached paths and the skipped files with their reasons.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from data.images import ImageLoadError, load_rgb
from data.scan import printable_path, unusable_name_reason

logger = logging.getLogger(__name__)

DECODE_BATCH = 64


@dataclass(frozen=True)
class SkippedFile:
    """A file that could not be used, with the reason.

    ``path`` is the path as scanned, which may hold bytes that are not UTF-8
    (see ``data.scan.printable_path``).
    """

    path: str
    reason: str


@dataclass
class ImageCache:
    """Decoded images: ``images`` is (num_images, size, size, 3) uint8, one row per ``paths`` entry."""

    images: np.ndarray
    paths: list[str]
    skipped: list[SkippedFile]

    @property
    def size(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return len(self.paths)


def skip_file(path: str, reason: str) -> SkippedFile:
    """Log that the file ``path`` is skipped and return its record."""
    logger.warning("Skipping %s: %s", printable_path(path), printable_path(reason))
    return SkippedFile(path, reason)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, centre-crop, and return (size, size, 3) uint8."""
    image = TF.resize(image, size, antialias=True)
    image = TF.center_crop(image, [size, size])
    return np.asarray(image, dtype=np.uint8)


class _DecodeDataset(Dataset):
    def __init__(self, root: Path, paths: Sequence[str], size: int) -> None:
        self.root = root
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        name_problem = unusable_name_reason(self.paths[index])
        if name_problem:
            return index, None, name_problem
        try:
            return index, fit_square(load_rgb(self.root / self.paths[index], self.size), self.size), ""
        except ImageLoadError as error:
            return index, None, str(error)
        except Exception as error:  # noqa: BLE001 - one bad file must not stop the run
            return index, None, f"unexpected error while decoding: {type(error).__name__}: {error}"


def _collate(items: list) -> list:
    return items


def iter_decoded(
    root: Path, paths: Sequence[str], size: int, workers: int, progress: str | None = None
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yield (index, image or None, failure reason) for every path, in order.

    Images are decoded by ``workers`` processes (0 decodes in this process)
    and come back as (size, size, 3) uint8 arrays.
    """
    loader = DataLoader(
        _DecodeDataset(root, paths, size),
        batch_size=DECODE_BATCH,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    with tqdm(total=len(paths), desc=progress, unit="img", disable=True if progress is None else None) as bar:
        for batch in loader:
            yield from batch
            bar.update(len(batch))


def build_cache(
    root: Path, paths: Sequence[str], size: int, cache_dir: Path, workers: int
) -> ImageCache:
    """Decode ``paths`` (relative to ``root``) into ``cache_dir``, or reuse a complete cache.

    Files that cannot be decoded are logged, listed in the result's
    ``skipped`` and left out of the cache; the others keep their order.
    """
    array_path = cache_dir / f"images_{size}.npy"
    index_path = cache_dir / f"images_{size}.json"
    cached = _load_existing(array_path, index_path, paths)
    if cached is not None:
        logger.info("Reusing the decoded-image cache %s (%d images)", array_path, len(cached))
        return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = array_path.with_suffix(".partial.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    kept: list[str] = []
    skipped: list[SkippedFile] = []
    for index, image, reason in iter_decoded(root, paths, size, workers, progress="decode"):
        if image is None:
            skipped.append(skip_file(paths[index], reason))
            continue
        array[len(kept)] = image
        kept.append(paths[index])
    array.flush()
    del array
    os.replace(partial, array_path)

    index = {"size": size, "requested": list(paths), "paths": kept, "skipped": [vars(s) for s in skipped]}
    temporary = index_path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(index), encoding="utf-8")
    os.replace(temporary, index_path)
    return ImageCache(np.load(array_path, mmap_mode="r")[: len(kept)], kept, skipped)


def _load_existing(array_path: Path, index_path: Path, paths: Sequence[str]) -> ImageCache | None:
    if not (array_path.exists() and index_path.exists()):
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index["requested"] != list(paths) or any(unusable_name_reason(path) for path in index["paths"]):
            return None
        images = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, KeyError) as error:
        logger.warning("Ignoring the unreadable image cache %s: %s", array_path, error)
        return None
    skipped = [SkippedFile(**item) for item in index["skipped"]]
    return ImageCache(images[: len(index["paths"])], index["paths"], skipped)


def read_batch(cache: ImageCache, indices: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Read the cached images at ``indices``.

    Returns the indices sorted (memory-mapped reads are faster in file order)
    and the matching (batch, size, size, 3) uint8 tensor.
    """
    order = np.sort(indices)
    return order, torch.from_numpy(np.ascontiguousarray(cache.images[order]))
