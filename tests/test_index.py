import numpy as np
import pytest
import torch
from PIL import Image

import core.index as index_module
from core.index import NeighbourIndex, build_index, embed_image, load_or_build_index
from core.run_files import RunFiles
from models.self_classifier import build_model


def _unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _write_run(tmp_path, embeddings):
    np.save(RunFiles(tmp_path).embeddings, embeddings)
    return tmp_path


def test_exact_search_on_known_vectors():
    # Four unit vectors in 2-D at 0, 30, 90 and 180 degrees.
    angles = np.deg2rad([0, 30, 90, 180])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    index = build_index(vectors)

    similarities, rows = index.search(vectors[:1], 4)

    assert index.kind == "flat"
    assert rows.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_allclose(similarities[0], [1.0, np.cos(np.deg2rad(30)), 0.0, -1.0], atol=1e-6)


def test_neighbours_leave_out_the_query_row():
    vectors = _unit_rows(20, 8, seed=0)
    index = build_index(vectors)

    pairs = index.neighbours(vectors[5], 3, exclude_row=5)

    assert len(pairs) == 3
    assert 5 not in [row for row, _ in pairs]
    expected = np.argsort(-(vectors @ vectors[5]))[1:4]
    assert [row for row, _ in pairs] == expected.tolist()
    similarities = [similarity for _, similarity in pairs]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("count", [1, 3, 7])
def test_search_asks_for_more_than_indexed(count):
    index = build_index(_unit_rows(count, 4, seed=count))

    similarities, rows = index.search(_unit_rows(2, 4, seed=99), 10)

    assert rows.shape == (2, count)
    assert similarities.shape == (2, count)
    assert len(index.neighbours(_unit_rows(1, 4, seed=5)[0], 10, exclude_row=0)) == count - 1


def test_build_index_rejects_one_dimensional_input():
    with pytest.raises(ValueError, match="must be \\(num_images, dim\\)"):
        build_index(np.ones(5, dtype=np.float32))


def test_approximate_index_recall_against_exact():
    vectors = _unit_rows(3000, 32, seed=1)
    queries = _unit_rows(100, 32, seed=2)
    exact = build_index(vectors)
    approximate = build_index(vectors, exact_limit=1000)

    _, exact_rows = exact.search(queries, 10)
    _, approximate_rows = approximate.search(queries, 10)

    assert approximate.kind == "hnsw"
    found = sum(len(set(a) & set(e)) for a, e in zip(approximate_rows, exact_rows, strict=True))
    recall = found / exact_rows.size
    assert recall >= 0.9


def test_index_is_saved_and_reused(tmp_path, monkeypatch):
    run_dir = _write_run(tmp_path, _unit_rows(50, 16, seed=3))
    first = load_or_build_index(run_dir)
    assert RunFiles(run_dir).index.exists()

    def fail(*args, **kwargs):
        raise AssertionError("the saved index should have been read")

    monkeypatch.setattr(index_module, "build_index", fail)
    second = load_or_build_index(run_dir)

    assert isinstance(second, NeighbourIndex)
    assert len(second) == len(first) == 50
    query = _unit_rows(1, 16, seed=4)
    np.testing.assert_array_equal(first.search(query, 5)[1], second.search(query, 5)[1])


def test_index_rebuilt_when_embeddings_change(tmp_path):
    run_dir = _write_run(tmp_path, _unit_rows(30, 16, seed=5))
    load_or_build_index(run_dir)
    _write_run(tmp_path, _unit_rows(40, 16, seed=6))

    assert len(load_or_build_index(run_dir)) == 40


def test_saved_hnsw_index_is_reused(tmp_path):
    run_dir = _write_run(tmp_path, _unit_rows(300, 16, seed=7))

    built = load_or_build_index(run_dir, exact_limit=100)
    loaded = load_or_build_index(run_dir, exact_limit=100)

    assert built.kind == loaded.kind == "hnsw"


def test_missing_embeddings_raise(tmp_path):
    with pytest.raises(ValueError, match="embeddings.npy is missing"):
        load_or_build_index(tmp_path)


def test_embed_image_matches_model_shapes():
    torch.manual_seed(0)
    model = build_model("resnet10n", 32, [3, 5], embedding_dim=16, hidden_dim=32).eval()
    image = Image.new("RGB", (48, 40), (120, 60, 30))

    query = embed_image(model, image, 32, 0.1, torch.device("cpu"))

    assert query.embedding.shape == (16,)
    assert np.linalg.norm(query.embedding) == pytest.approx(1.0, abs=1e-4)
    assert query.classes.shape == (2,)
    assert 0 <= query.classes[0] < 3
    assert 0 <= query.classes[1] < 5
    assert np.all((query.confidences > 0) & (query.confidences <= 1))
