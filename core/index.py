"""Nearest neighbours by embedding: a FAISS index over a run's embeddings, cached in the run directory.

Embeddings are unit-norm, so the inner product is the cosine similarity.
Runs of up to ``EXACT_SEARCH_LIMIT`` images get an exact ``IndexFlatIP``.
Larger runs get an approximate HNSW graph (``IndexHNSWFlat``), whose search
time grows roughly with the logarithm of the run size instead of linearly.
The index lives on the CPU. When faiss-gpu is installed and finds a GPU, an
exact index is copied there for searching.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.run_files import RunFiles
from data.cache import fit_square
from data.transforms import normalize
from models.self_classifier import SelfClassifier

logger = logging.getLogger(__name__)

# Above this many embeddings the index is HNSW. A flat search reads every
# vector for each query (26 MB for 50,000 embeddings of 128 floats), so the
# neighbours of every image cost time that grows with the square of the run size.
EXACT_SEARCH_LIMIT = 50_000
HNSW_LINKS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
_INDEX_FORMAT = 1


@dataclass
class NeighbourIndex:
    """A FAISS index over (num_images, dim) unit-norm embeddings; row i is image i of labels.csv."""

    index: Any
    kind: str
    gpu_resources: Any = None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the cosine similarities and rows of the ``k`` nearest images of each query.

        Args:
            queries: (num_queries, dim) unit-norm embeddings.
            k: neighbours per query; at most the number of indexed images are returned.

        Returns:
            similarities (num_queries, k') float32 and rows (num_queries, k') int64,
            best first, where k' = min(k, len(self)).
        """
        k = min(int(k), len(self))
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k <= 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        similarities, rows = self.index.search(queries, k)
        return similarities, rows.astype(np.int64)

    def neighbours(self, query: np.ndarray, k: int, exclude_row: int | None = None) -> list[tuple[int, float]]:
        """Return up to ``k`` (row, similarity) pairs nearest to one query, best first.

        ``exclude_row`` leaves out the query's own image when it is one of the run's.
        """
        extra = 1 if exclude_row is not None else 0
        similarities, rows = self.search(np.asarray(query)[None], k + extra)
        pairs = [
            (int(row), float(similarity))
            for row, similarity in zip(rows[0], similarities[0], strict=True)
            if row >= 0 and row != exclude_row
        ]
        return pairs[:k]


def build_index(embeddings: np.ndarray, exact_limit: int = EXACT_SEARCH_LIMIT) -> NeighbourIndex:
    """Build an exact index for up to ``exact_limit`` embeddings, else an HNSW index.

    Raises:
        ValueError: if ``embeddings`` is not a 2-D array.
    """
    import faiss

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be (num_images, dim), got shape {vectors.shape}")
    dim = vectors.shape[1]
    index: Any
    if len(vectors) <= exact_limit:
        index, kind = faiss.IndexFlatIP(dim), "flat"
    else:
        index, kind = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT), "hnsw"
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    logger.info("Built a %s FAISS index of %d embeddings", kind, len(vectors))
    return _prepare_for_search(index, kind)


def load_or_build_index(run_dir: Path, exact_limit: int = EXACT_SEARCH_LIMIT) -> NeighbourIndex:
    """Return the run's index, reading ``RUN/neighbours.faiss`` when it matches embeddings.npy.

    Otherwise the index is built from embeddings.npy and saved there.

    Raises:
        ValueError: if the run has no embeddings.npy.
    """
    import faiss

    files = RunFiles(Path(run_dir))
    stamp = embeddings_stamp(files.embeddings)
    stamp["exact_limit"] = exact_limit
    if read_cache_info(files.index_info) == stamp and files.index.exists():
        try:
            index = faiss.read_index(str(files.index))
            kind = "hnsw" if isinstance(index, faiss.IndexHNSWFlat) else "flat"
            return _prepare_for_search(index, kind)
        except RuntimeError as error:
            logger.warning("Rebuilding the unreadable index %s: %s", files.index, error)

    built = build_index(np.load(files.embeddings, mmap_mode="r"), exact_limit)
    temporary = files.index.with_name(f".{files.index.name}.{secrets.token_hex(4)}.tmp")
    try:
        faiss.write_index(faiss.index_gpu_to_cpu(built.index) if built.gpu_resources else built.index,
                          str(temporary))
        os.replace(temporary, files.index)
    finally:
        temporary.unlink(missing_ok=True)
    write_cache_info(files.index_info, stamp)
    return built


def _prepare_for_search(index: Any, kind: str) -> NeighbourIndex:
    """Set search parameters, and move an exact index to the GPU when faiss-gpu can."""
    import faiss

    if kind == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return NeighbourIndex(index, kind)
    # NOTE: this GPU branch has never run: only faiss-cpu was installed where it was written.
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        return NeighbourIndex(faiss.index_cpu_to_gpu(resources, 0, index), "flat-gpu", resources)
    return NeighbourIndex(index, kind)


# ------------------------------------------------------------- query images


@dataclass(frozen=True)
class ImageQuery:
    """The model's view of one image that may not be part of the run.

    Attributes:
        embedding: (embedding_dim,) unit-norm embedding.
        classes: (num_heads,) class chosen by each head.
        confidences: (num_heads,) softmax probability of that class.
    """

    embedding: np.ndarray
    classes: np.ndarray
    confidences: np.ndarray


@torch.no_grad()
def embed_image(
    model: SelfClassifier, image: Image.Image, image_size: int, row_tau: float, device: torch.device
) -> ImageQuery:
    """Embed and classify one RGB image as labelling does: centre crop, ImageNet normalisation.

    Confidences use the same softmax over each head's classes, with the logits
    divided by ``row_tau``, as labels.csv.
    """
    pixels = torch.from_numpy(fit_square(image.convert("RGB"), image_size).copy())
    batch = normalize(pixels.permute(2, 0, 1)[None].float().div(255).to(device))
    embedding = model.embed(batch)
    probabilities = [torch.softmax(logits.float() / row_tau, dim=1)[0] for logits in model.classify(embedding)]
    return ImageQuery(
        embedding=embedding[0].float().cpu().numpy(),
        classes=np.array([int(p.argmax()) for p in probabilities], dtype=np.int64),
        confidences=np.array([float(p.max()) for p in probabilities], dtype=np.float32),
    )


# ------------------------------------------------------------- cache stamps


def embeddings_stamp(path: Path) -> dict[str, Any]:
    """Return what identifies one version of embeddings.npy: its size and modification time."""
    try:
        status = path.stat()
    except FileNotFoundError as error:
        raise ValueError(
            f"{path} is missing, so the run has no embeddings yet; finish labelling the folder first"
        ) from error
    return {"format": _INDEX_FORMAT, "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def read_cache_info(path: Path) -> Any:
    """Return the JSON value stored at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_cache_info(path: Path, value: Any) -> None:
    """Write ``value`` as JSON through a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(json.dumps(value), encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
