"""A 2-D map of a run's embeddings by UMAP, computed once and cached in the run directory.

UMAP (umap-learn) is fitted on at most ``FIT_SAMPLE`` embeddings, a random
sample of larger runs. Each other embedding is placed at the mean position
of its ``MAP_NEIGHBOURS`` nearest sample embeddings (cosine similarity).
That takes seconds for 100,000 images. UMAP's own ``transform`` gives a
slightly higher trustworthiness but took 12 s per 5,000 embeddings of a
synthetic run on two cores, and fitting plus transforming 5,000 random
embeddings took about 3 minutes (bench/RESULTS.md). Runs with fewer images
than UMAP's neighbour count use a smaller neighbour count, and runs of fewer
than ``MIN_UMAP_IMAGES`` images are projected with PCA instead, since UMAP
cannot lay out so few points.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.index import embeddings_stamp, read_cache_info, write_cache_info
from core.run_files import RunFiles

logger = logging.getLogger(__name__)

UMAP_NEIGHBOURS = 15
FIT_SAMPLE = 5_000
MIN_UMAP_IMAGES = 4
# Spectral initialisation needs a well-connected neighbour graph, which tiny runs lack.
MIN_SPECTRAL_IMAGES = 100
PLACE_CHUNK = 20_000
MAP_NEIGHBOURS = 5
# Similarities computed at once when placing embeddings on the map: 64 MiB of float32.
SIMILARITY_BLOCK = 1 << 24
PLACEMENTS = ("neighbours", "umap")
_MAP_FORMAT = 2

ProgressCallback = Callable[[str], None]


def compute_embedding_map(
    embeddings: np.ndarray,
    sample_size: int = FIT_SAMPLE,
    seed: int = 0,
    on_progress: ProgressCallback | None = None,
    placement: str = "neighbours",
) -> np.ndarray:
    """Return (num_images, 2) float32 map coordinates of (num_images, dim) embeddings.

    ``on_progress`` receives a short message before each stage. ``placement``
    selects how embeddings outside the fitted sample are placed: ``neighbours``
    (mean position of the nearest sample embeddings) or ``umap`` (UMAP's
    ``transform``, much slower).

    Raises:
        ValueError: if ``embeddings`` is not 2-D, ``sample_size`` is below
            ``MIN_UMAP_IMAGES`` or ``placement`` is unknown.
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be (num_images, dim), got shape {vectors.shape}")
    if sample_size < MIN_UMAP_IMAGES:
        raise ValueError(f"sample size must be at least {MIN_UMAP_IMAGES}, got {sample_size}")
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    report = on_progress or (lambda message: None)
    count = len(vectors)
    if count < MIN_UMAP_IMAGES:
        return _pca_map(vectors)

    report("Loading UMAP; its first use in a process compiles code for up to a minute")
    reducer = _make_reducer(min(count, sample_size))
    if count <= sample_size:
        report(f"Fitting UMAP on {count} embeddings")
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)

    sample = np.sort(np.random.default_rng(seed).choice(count, size=sample_size, replace=False))
    report(f"Fitting UMAP on a sample of {sample_size} of {count} embeddings")
    sampled = vectors[sample]
    reducer.fit(sampled)
    coordinates = np.empty((count, 2), dtype=np.float32)
    coordinates[sample] = reducer.embedding_

    rest = np.setdiff1d(np.arange(count), sample)
    for start in range(0, len(rest), PLACE_CHUNK):
        report(f"Placing embeddings {start + 1} to {min(start + PLACE_CHUNK, len(rest))} "
               f"of the other {len(rest)}")
        chunk = rest[start:start + PLACE_CHUNK]
        if placement == "umap":
            coordinates[chunk] = reducer.transform(vectors[chunk])
        else:
            coordinates[chunk] = place_by_neighbours(sampled, reducer.embedding_, vectors[chunk])
    return coordinates


def cached_embedding_map(run_dir: Path, sample_size: int = FIT_SAMPLE, seed: int = 0) -> np.ndarray | None:
    """Return the run's cached map if it was computed from the current embeddings.npy, else None."""
    files = RunFiles(Path(run_dir))
    try:
        stamp = _map_stamp(files, sample_size, seed)
    except ValueError:
        return None
    if read_cache_info(files.embedding_map_info) != stamp:
        return None
    try:
        coordinates = np.load(files.embedding_map)
    except (OSError, ValueError) as error:
        logger.warning("Ignoring the unreadable map %s: %s", files.embedding_map, error)
        return None
    if coordinates.shape != (stamp["rows"], 2):
        return None
    return coordinates


def load_or_compute_embedding_map(
    run_dir: Path, sample_size: int = FIT_SAMPLE, seed: int = 0, on_progress: ProgressCallback | None = None
) -> np.ndarray:
    """Return the run's 2-D map, computing it and saving ``RUN/embedding_map.npy`` when no valid copy exists.

    Raises:
        ValueError: if the run has no embeddings.npy.
    """
    cached = cached_embedding_map(run_dir, sample_size, seed)
    if cached is not None:
        return cached

    files = RunFiles(Path(run_dir))
    stamp = _map_stamp(files, sample_size, seed)
    coordinates = compute_embedding_map(np.load(files.embeddings, mmap_mode="r"), sample_size, seed, on_progress)
    temporary = files.embedding_map.with_name(f".{files.embedding_map.stem}.tmp.npy")
    np.save(temporary, coordinates)
    temporary.replace(files.embedding_map)
    write_cache_info(files.embedding_map_info, stamp)
    logger.info("Saved the 2-D map of %d embeddings to %s", len(coordinates), files.embedding_map)
    return coordinates


def _map_stamp(files: RunFiles, sample_size: int, seed: int) -> dict:
    stamp = embeddings_stamp(files.embeddings)
    rows = np.load(files.embeddings, mmap_mode="r").shape[0]
    stamp.update({"map_format": _MAP_FORMAT, "rows": int(rows), "sample_size": sample_size, "seed": seed,
                  "neighbours": UMAP_NEIGHBOURS})
    return stamp


def _make_reducer(fit_count: int):  # noqa: ANN202 - umap is imported lazily, so no annotation
    # Importing umap compiles numba code, which took 4 to 47 seconds on a busy 2-core machine,
    # so it happens only when a map is computed.
    import umap

    return umap.UMAP(
        n_neighbors=min(UMAP_NEIGHBOURS, fit_count - 1),
        n_components=2,
        # Embeddings are unit-norm, so Euclidean distance ranks neighbours as cosine does.
        metric="euclidean",
        init="spectral" if fit_count >= MIN_SPECTRAL_IMAGES else "random",
    )


def _pca_map(vectors: np.ndarray) -> np.ndarray:
    """Project fewer than ``MIN_UMAP_IMAGES`` embeddings onto their first two principal axes."""
    coordinates = np.zeros((len(vectors), 2), dtype=np.float32)
    if len(vectors) < 2:
        return coordinates
    centred = vectors - vectors.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ axes[:2].T
    coordinates[:, : projected.shape[1]] = projected
    return coordinates


def place_by_neighbours(
    old: np.ndarray, coordinates: np.ndarray, new: np.ndarray, neighbours: int = MAP_NEIGHBOURS
) -> np.ndarray:
    """Return (num_new, 2) positions: the mean position of each new embedding's nearest old ones.

    Args:
        old: (num_old, dim) unit-norm embeddings already on the map.
        coordinates: (num_old, 2) their map positions.
        new: (num_new, dim) unit-norm embeddings to place.
        neighbours: old embeddings averaged per new one, by cosine similarity.
    """
    count = min(neighbours, len(old))
    placed = np.empty((len(new), 2), dtype=np.float32)
    rows_per_block = max(1, SIMILARITY_BLOCK // max(1, len(old)))
    for start in range(0, len(new), rows_per_block):
        similarities = new[start:start + rows_per_block] @ old.T
        nearest = np.argpartition(-similarities, count - 1, axis=1)[:, :count]
        placed[start:start + rows_per_block] = coordinates[nearest].mean(axis=1)
    return placed
