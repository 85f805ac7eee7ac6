import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEMO
from sklearn.cluster import KMeans

from bench import bench_head_only
from core import head_only
from core.assign import load_trained_model
from core.cli import main
from core.config import TrainConfig
from core.evaluate import evaluate_assignments
from core.head_only import (
    HeadTrainer,
    _warn_unused_options,
    classify_features,
    compute_view_features,
    load_or_compute_features,
    nearest_neighbours,
    train_head_only,
)
from core.jobs import prepare_images
from core.metrics_log import read_metrics
from data.cache import ImageCache
from data.scan import ground_truth_label
from data.transforms import normalize
from models.self_classifier import build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained for 2 epochs on 100 demo images of 2 classes (airplane, frog)."""
    base = tmp_path_factory.mktemp("trained")
    images = base / "images"
    for name in ("airplane", "frog"):
        shutil.copytree(DEMO / name, images / name)
    run = base / "run"
    code = main(["label", str(images), "--out", str(run), "--epochs", "2", "--batch-size", "40", "--classes", "2",
                 "--image-size", "32", "--workers", "0", "--hidden-dim", "64"])
    assert code == 0
    return run, images


def _config(**changes) -> TrainConfig:
    settings = dict(image_folder="unused", class_counts=(2,), epochs=2, batch_size=16, backbone="resnet10n",
                    image_size=32, hidden_dim=32, workers=0)
    settings.update(changes)
    return TrainConfig(**settings)


def _random_cache(count: int = 6) -> ImageCache:
    images = np.random.default_rng(0).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    return ImageCache(images, [f"image_{index}.png" for index in range(count)], [])


# ----------------------------------------------------------------- accuracy


def test_head_only_beats_kmeans_on_trained_backbone(trained_run, tmp_path):
    run, _ = trained_run
    trained, config = load_trained_model(run, CPU)
    _, cache = prepare_images(config, run)
    features = load_or_compute_features(tmp_path, trained.backbone, cache, 4, CPU, seed=0)
    truth = [ground_truth_label(path) for path in cache.paths]

    plain = np.asarray(features[0], dtype=np.float32)
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(plain)
    kmeans_accuracy = evaluate_assignments(truth, kmeans)["acc"]

    torch.manual_seed(0)
    model = build_model(config.backbone, config.image_size, [2], config.embedding_dim, config.hidden_dim)
    model.backbone.load_state_dict(trained.backbone.state_dict())
    HeadTrainer(model, features, config.replace(class_counts=(2,), epochs=30, seed=0), CPU).fit()
    classes, _, _ = classify_features(model, features[0], config.row_tau, CPU)
    head_accuracy = evaluate_assignments(truth, classes[:, 0])["acc"]

    assert head_accuracy >= kmeans_accuracy


def test_bench_prints_markdown_table(trained_run, tmp_path, capsys):
    run, images = trained_run
    code = bench_head_only.main([str(images), str(run), "--classes", "2", "--epochs", "2", "--work", str(tmp_path)])

    output = capsys.readouterr().out
    assert code == 0
    assert "| method | ACC | NMI | ARI | non-empty classes | seconds |" in output
    assert "| Self-Classifier head, head-only (2 epochs, lr 5) |" in output
    assert "| k-means on raw features |" in output
    assert "100 images" in output


# ----------------------------------------------------------------- features


def test_features_have_plain_and_augmented_views(tmp_path):
    backbone = build_model("resnet10n", 32, [2], hidden_dim=32).backbone.eval()
    cache = _random_cache()

    features = compute_view_features(backbone, cache.images, tmp_path / "f.npy", 3, CPU, seed=0, dtype=np.float32)

    assert features.shape == (4, 6, 256)
    with torch.no_grad():
        pixels = torch.from_numpy(np.array(cache.images)).permute(0, 3, 1, 2).float().div(255)
        expected = backbone(normalize(pixels)).numpy()
    np.testing.assert_allclose(features[0], expected, rtol=1e-4, atol=1e-5)
    for view in range(1, 4):
        assert not np.allclose(features[view], features[0])


def test_features_reused_until_inputs_change(tmp_path, monkeypatch):
    backbone = build_model("resnet10n", 32, [2], hidden_dim=32).backbone
    cache = _random_cache()
    first = np.array(load_or_compute_features(tmp_path, backbone, cache, 2, CPU, seed=0))
    assert first.dtype == np.float16

    def fail(*args, **kwargs):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(head_only, "compute_view_features", fail)
    np.testing.assert_array_equal(load_or_compute_features(tmp_path, backbone, cache, 2, CPU, seed=0), first)
    for change in ({"seed": 1}, {"num_views": 3}):
        arguments = {"num_views": 2, "seed": 0, **change}
        with pytest.raises(AssertionError, match="computed again"):
            load_or_compute_features(tmp_path, backbone, cache, device=CPU, **arguments)
    with torch.no_grad():
        backbone.stem[0].weight.add_(1.0)
    with pytest.raises(AssertionError, match="computed again"):
        load_or_compute_features(tmp_path, backbone, cache, 2, CPU, seed=0)


def test_classify_features_matches_model_on_images():
    model = build_model("resnet10n", 32, [2, 3], hidden_dim=32).eval()
    cache = _random_cache()
    pixels = normalize(torch.from_numpy(np.array(cache.images)).permute(0, 3, 1, 2).float().div(255))
    with torch.no_grad():
        features = model.features(pixels).numpy()
        embeddings = model.embed(pixels)
        logits = model.classify(embeddings)

    classes, confidences, found = classify_features(model, features, 0.1, CPU)

    np.testing.assert_allclose(found, embeddings.numpy(), rtol=1e-5, atol=1e-6)
    for head, head_logits in enumerate(logits):
        probabilities = torch.softmax(head_logits / 0.1, dim=1)
        np.testing.assert_array_equal(classes[:, head], probabilities.argmax(dim=1).numpy())
        np.testing.assert_allclose(confidences[:, head], probabilities.max(dim=1).values.numpy(), rtol=1e-5)


# ----------------------------------------------------------------- training


def test_head_trainer_changes_only_projection_and_heads(tmp_path):
    model = build_model("resnet10n", 32, [2, 4], hidden_dim=32)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    views = np.random.default_rng(0).random((3, 40, 256)).astype(np.float16)

    state = HeadTrainer(model, views, _config(class_counts=(2, 4)), CPU, tmp_path / "metrics.jsonl").fit()

    assert (state.epoch, state.step, state.finished) == (2, 4, True)
    after = model.state_dict()
    for key, value in after.items():
        if key.startswith("backbone."):
            torch.testing.assert_close(value, before[key])
    assert not torch.equal(after["projection.layers.0.weight"], before["projection.layers.0.weight"])
    assert not torch.equal(after["heads.1.weight"], before["heads.1.weight"])
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [record["epoch"] for record in records] == [1, 2]


def test_head_trainer_with_neighbours_runs():
    model = build_model("resnet10n", 32, [2], hidden_dim=32)
    views = np.random.default_rng(0).random((2, 32, 256)).astype(np.float16)
    neighbours = nearest_neighbours(views[0], 3)

    state = HeadTrainer(model, views, _config(), CPU, neighbours=neighbours).fit()

    assert state.step == 4


def test_head_trainer_rejects_bad_input():
    model = build_model("resnet10n", 32, [2], hidden_dim=32)
    views = np.zeros((2, 20, 256), dtype=np.float16)
    with pytest.raises(ValueError, match="at least 2 augmented views per image, got 1"):
        HeadTrainer(model, views[:1], _config(), CPU)
    with pytest.raises(ValueError, match="20 images are fewer than one batch of 32"):
        HeadTrainer(model, views, _config(batch_size=32), CPU)
    with pytest.raises(ValueError, match=r"neighbours must be \(num_images, k\) = \(20, k >= 1\), got shape \(5, 2\)"):
        HeadTrainer(model, views, _config(), CPU, neighbours=np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="learning rate must be positive, got 0"):
        HeadTrainer(model, views, _config(), CPU, base_lr=0)


def test_nearest_neighbours_excludes_self():
    features = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(nearest_neighbours(features, 1), [[1], [0], [3], [2]])
    with pytest.raises(ValueError, match=r"must be in \[1, 3\] for 4 images, got 4"):
        nearest_neighbours(features, 4)


def test_train_head_only_writes_loadable_checkpoint(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    run.mkdir()
    config = _config(epochs=1, batch_size=4)
    config.save(run / "config.json")
    torch.manual_seed(0)
    model = build_model("resnet10n", 32, [2], embedding_dim=128, hidden_dim=32)

    state = train_head_only(config, _random_cache(8), run, model, CPU, num_views=2)

    assert state.finished
    assert (run / "features.npy").exists()
    loaded, _ = load_trained_model(run, CPU)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(images), model.eval().embed(images))

    def fail(self):
        raise AssertionError("trained again")

    monkeypatch.setattr(HeadTrainer, "fit", fail)
    with caplog.at_level(logging.INFO):
        assert train_head_only(config, _random_cache(8), run, model, CPU, num_views=2).finished
    assert "It does not resume, so to train the heads longer" in caplog.text
    assert caplog.records[-1].levelno == logging.INFO

    # Asking for more epochs than the run finished gets a warning, since none will run.
    with caplog.at_level(logging.INFO):
        train_head_only(config.replace(epochs=3), _random_cache(8), run, model, CPU, num_views=2)
    assert caplog.records[-1].levelno == logging.WARNING


@pytest.mark.parametrize(("changes", "warned"), [({}, False), ({"color_strength": 0.0}, True),
                                                 ({"min_crop_scale": 0.5}, True)])
def test_unused_augment_options_warn(caplog, changes, warned):
    with caplog.at_level(logging.WARNING):
        _warn_unused_options(_config(**changes), uses_augment_options=False)
    assert ("--color-strength and --min-crop-scale have no effect" in caplog.text) == warned
