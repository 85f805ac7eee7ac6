import numpy as np
import pytest

import core.embedding_map as embedding_map
from core.embedding_map import (
    UMAP_NEIGHBOURS,
    cached_embedding_map,
    compute_embedding_map,
    load_or_compute_embedding_map,
)
from core.run_files import RunFiles


def _clusters(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around four centres, so UMAP has some structure to find."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    vectors = centres[np.arange(count) % 4] + 0.1 * rng.normal(size=(count, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_fewer_than_four_points_use_pca(count):
    coordinates = compute_embedding_map(_clusters(max(count, 1))[:count])

    assert coordinates.shape == (count, 2)
    assert coordinates.dtype == np.float32
    assert np.isfinite(coordinates).all()


def test_two_points_are_placed_apart():
    coordinates = compute_embedding_map(_clusters(2))

    assert np.linalg.norm(coordinates[0] - coordinates[1]) > 0


@pytest.mark.parametrize("count", [4, UMAP_NEIGHBOURS, 40])
def test_umap_handles_fewer_images_than_neighbours(count):
    coordinates = compute_embedding_map(_clusters(count))

    assert coordinates.shape == (count, 2)
    assert np.isfinite(coordinates).all()


def test_large_runs_fit_on_a_sample(monkeypatch):
    messages = []

    coordinates = compute_embedding_map(_clusters(60), sample_size=30, on_progress=messages.append)

    assert coordinates.shape == (60, 2)
    assert np.isfinite(coordinates).all()
    assert messages[1] == "Fitting UMAP on a sample of 30 of 60 embeddings"
    assert messages[2] == "Placing embeddings 1 to 30 of the other 30"


def test_points_outside_the_sample_land_in_their_cluster():
    vectors = _clusters(400)
    cluster = np.arange(400) % 4

    coordinates = compute_embedding_map(vectors, sample_size=100, seed=0)

    sample = np.sort(np.random.default_rng(0).choice(400, size=100, replace=False))
    rest = np.setdiff1d(np.arange(400), sample)
    distances = np.linalg.norm(coordinates[rest][:, None] - coordinates[sample][None], axis=2)
    nearest_on_map = sample[distances.argmin(axis=1)]
    assert (cluster[nearest_on_map] == cluster[rest]).mean() > 0.95


def test_invalid_input_raises():
    with pytest.raises(ValueError, match="must be \\(num_images, dim\\)"):
        compute_embedding_map(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="sample size must be at least 4"):
        compute_embedding_map(_clusters(10), sample_size=2)
    with pytest.raises(ValueError, match="unknown placement 'tsne'"):
        compute_embedding_map(_clusters(10), placement="tsne")


def test_map_is_cached_in_the_run_directory(tmp_path, monkeypatch):
    np.save(RunFiles(tmp_path).embeddings, _clusters(3))
    assert cached_embedding_map(tmp_path) is None

    first = load_or_compute_embedding_map(tmp_path)

    assert RunFiles(tmp_path).embedding_map.exists()

    def fail(*args, **kwargs):
        raise AssertionError("the cached map should have been read")

    monkeypatch.setattr(embedding_map, "compute_embedding_map", fail)
    np.testing.assert_array_equal(load_or_compute_embedding_map(tmp_path), first)
    np.testing.assert_array_equal(cached_embedding_map(tmp_path), first)


def test_map_recomputed_when_embeddings_change(tmp_path):
    np.save(RunFiles(tmp_path).embeddings, _clusters(3))
    load_or_compute_embedding_map(tmp_path)
    np.save(RunFiles(tmp_path).embeddings, _clusters(2, seed=1))

    assert cached_embedding_map(tmp_path) is None
    assert load_or_compute_embedding_map(tmp_path).shape == (2, 2)


def test_cache_depends_on_sample_size(tmp_path):
    np.save(RunFiles(tmp_path).embeddings, _clusters(3))
    load_or_compute_embedding_map(tmp_path, sample_size=100)

    assert cached_embedding_map(tmp_path, sample_size=100) is not None
    assert cached_embedding_map(tmp_path, sample_size=200) is None


def test_missing_embeddings_raise(tmp_path):
    assert cached_embedding_map(tmp_path) is None
    with pytest.raises(ValueError, match="embeddings.npy is missing"):
        load_or_compute_embedding_map(tmp_path)
