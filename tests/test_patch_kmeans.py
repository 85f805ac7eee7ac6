import argparse
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from core.assign import load_trained_model
from core.cli import _interrupted_advice, main
from core.config import TrainConfig
from core.evaluate import evaluate_assignments
from core.head_only import _warn_unused_options
from data.transforms import normalize
from models import patch_kmeans
from models.patch_kmeans import CONTRAST_EPS, FEATURE_DIM, NUM_CENTROIDS, PATCH_SIZE, PatchKMeans


@pytest.fixture(autouse=True)
def fewer_fit_patches(monkeypatch):
    # 40 patches per centroid is enough for these checks and keeps a fit under a second.
    monkeypatch.setattr(patch_kmeans, "FIT_PATCHES", 40 * NUM_CENTROIDS)


def _stripes(count: int, vertical: bool, seed: int) -> np.ndarray:
    """(count, 32, 32, 3) uint8 grey stripes of random period, phase, brightness and contrast."""
    rng = np.random.default_rng(seed)
    axis = np.arange(32)
    images = []
    for _ in range(count):
        period, phase = rng.uniform(4, 9), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * axis / period + phase)
        pattern = np.tile(wave, (32, 1)) if vertical else np.tile(wave[:, None], (1, 32))
        dark, light = rng.uniform(0, 100), rng.uniform(155, 255)
        images.append(np.repeat(dark + pattern[..., None] * (light - dark), 3, axis=2))
    return np.stack(images).round().astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """60 striped images: 30 with vertical stripes, then 30 with horizontal ones."""
    return np.concatenate([_stripes(30, True, seed=0), _stripes(30, False, seed=1)])


@pytest.fixture
def fitted(images) -> PatchKMeans:
    return PatchKMeans().fit(images, seed=0)


def _normalised(images: np.ndarray) -> torch.Tensor:
    return normalize(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


def _explicit_activations(model: PatchKMeans, images: np.ndarray) -> torch.Tensor:
    """Triangle activations, (batch, H', W', K), computed patch by patch with unfold and cdist."""
    patch_dim = 3 * PATCH_SIZE * PATCH_SIZE
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    patches = F.unfold(pixels, PATCH_SIZE).transpose(1, 2)  # (batch, locations, 3 P P)
    centred = patches - patches.mean(-1, keepdim=True)
    normalised = centred / (centred.var(-1, keepdim=True) + CONTRAST_EPS).sqrt()
    whiten = model.whiten.double().view(patch_dim, patch_dim)
    whitened = normalised @ whiten.T - model.whitened_mean.double()
    distances = torch.cdist(whitened, model.centroids.double().expand(len(images), -1, -1))
    activations = (distances.mean(-1, keepdim=True) - distances).clamp_min(0)
    side = images.shape[1] - PATCH_SIZE + 1
    return activations.view(len(images), side, side, -1)


def test_activations_match_explicit_patches(fitted, images):
    with torch.no_grad():
        activations = fitted.activations(_normalised(images[::10]))

    torch.testing.assert_close(activations.double(), _explicit_activations(fitted, images[::10]),
                               rtol=1e-3, atol=1e-3)


def test_fit_whitens_patches(fitted, images):
    with torch.no_grad():
        whitened = fitted._whitened_patches(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    patches = whitened.permute(0, 2, 3, 1).reshape(-1, whitened.shape[1]).double()

    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T))
    # ZCA with eps: eigenvalue e of the patch covariance becomes e / (e + eps) <= 1.
    assert patches.mean(0).abs().max() < 0.05
    assert 0.8 < eigenvalues.max() < 1.05


def test_features_standardised_on_fit_images(fitted, images):
    with torch.no_grad():
        features = fitted(_normalised(images))

    assert features.shape == (60, FEATURE_DIM)
    varying = features.std(0) > 0.5
    assert varying.sum() > FEATURE_DIM // 4
    torch.testing.assert_close(features.mean(0), torch.zeros(FEATURE_DIM), atol=1e-3, rtol=0)
    torch.testing.assert_close(features.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())),
                               atol=1e-3, rtol=0)


def test_features_separate_stripe_directions(fitted, images):
    truth = ["vertical"] * 30 + ["horizontal"] * 30
    with torch.no_grad():
        features = fitted(_normalised(images)).numpy()
    pixels = images.reshape(len(images), -1).astype(np.float32)

    on_features = KMeans(2, n_init=10, random_state=0).fit_predict(features)
    on_pixels = KMeans(2, n_init=10, random_state=0).fit_predict(pixels)

    assert evaluate_assignments(truth, on_features)["acc"] == 1.0
    assert evaluate_assignments(truth, on_pixels)["acc"] < 0.8


def test_state_dict_round_trip(fitted, images):
    loaded = PatchKMeans()
    batch = _normalised(images[:4])
    with torch.no_grad():
        assert not torch.allclose(loaded(batch), fitted(batch))
        loaded.load_state_dict(fitted.state_dict())
        torch.testing.assert_close(loaded(batch), fitted(batch), rtol=0, atol=0)


def test_fit_repeats_with_same_seed(fitted, images):
    # An interrupted run fits again on restart and must find the same dictionary to reuse its cached features.
    again = PatchKMeans().fit(images, seed=0)
    other_seed = PatchKMeans().fit(images, seed=1)

    for name, tensor in fitted.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)
    assert not torch.equal(other_seed.centroids, fitted.centroids)


def test_fit_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 6 pixels per side"):
        PatchKMeans().fit(np.zeros((3, 5, 5, 3), dtype=np.uint8), seed=0)


def test_label_patch_kmeans_end_to_end(demo_folder, tmp_path):
    run = tmp_path / "run"
    code = main(["label", str(demo_folder), "--out", str(run), "--backbone", "patch-kmeans", "--epochs", "3",
                 "--batch-size", "16", "--classes", "4", "--workers", "0"])

    assert code == 0
    config = TrainConfig.load(run / "config.json")
    assert config.backbone == "patch-kmeans"
    assert config.hidden_dim == 1024
    assert (run / "features.npy").exists()
    rows = (run / "labels.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 41
    model, _ = load_trained_model(run, torch.device("cpu"))
    assert model.backbone.centroids.abs().sum() > 0
    assert main(["assign", str(run), str(demo_folder), "--csv", str(tmp_path / "again.csv")]) == 0
    assert (tmp_path / "again.csv").read_text(encoding="utf-8").splitlines()[1:] == rows[1:]


def test_patch_kmeans_rejects_init(demo_folder, tmp_path, capsys):
    code = main(["train", str(demo_folder), "--out", str(tmp_path / "run"), "--backbone", "patch-kmeans",
                 "--init", "imagenet"])

    assert code == 2
    assert "--backbone patch-kmeans is fitted to the images, so it takes no --init" in capsys.readouterr().err


def test_patch_kmeans_finetune_names_backbone(demo_folder, tmp_path, capsys):
    code = main(["train", str(demo_folder), "--out", str(tmp_path / "run"), "--backbone", "patch-kmeans",
                 "--finetune"])

    assert code == 2
    assert "--backbone patch-kmeans is fitted to the images" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "backbone", "freeze", "resumes"), [
    ("label", "patch-kmeans", None, False),
    ("train", "resnet10t", True, False),
    ("train", "resnet10t", None, True),
])
def test_interrupted_advice_by_run_kind(command, backbone, freeze, resumes):
    args = argparse.Namespace(command=command, backbone=backbone, freeze_backbone=freeze)

    advice = _interrupted_advice(args)

    assert ("The last checkpoint is kept" in advice) == resumes
    assert ("Head-only training does not resume" in advice) == (not resumes)


def test_head_only_warns_of_ignored_options(caplog):
    config = TrainConfig(image_folder="unused", backbone="patch-kmeans", base_lr=0.05, nn_queue_size=512,
                         local_crops=2)

    with caplog.at_level(logging.WARNING):
        _warn_unused_options(config, uses_augment_options=True)
        _warn_unused_options(TrainConfig(image_folder="unused", backbone="patch-kmeans"), uses_augment_options=True)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert "--local-crops 2 has no effect" in messages[0]
    assert "--nn-queue 512 has no effect" in messages[1]
    assert "does not use --lr 0.05; set its learning rate with --head-lr (now 5)" in messages[2]
