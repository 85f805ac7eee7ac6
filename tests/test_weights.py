import logging
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from core.checkpoint import save_checkpoint
from models.self_classifier import SelfClassifier, build_model
from models.weights import Architecture, Weights, convert_checkpoint, describe_weights, load_weights, read_weights

IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _randomise_batchnorm(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm layer non-trivial statistics, so that loading them is checked too."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            size = layer.num_features
            layer.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)


def _model(backbone: str = "resnet10n", image_size: int = 32, classes: tuple[int, ...] = (3, 5),
           hidden_dim: int = 32, seed: int = 0) -> SelfClassifier:
    torch.manual_seed(seed)
    model = build_model(backbone, image_size, classes, embedding_dim=16, hidden_dim=hidden_dim)
    _randomise_batchnorm(model, seed)
    return model.eval()


def _weights_of(model: SelfClassifier) -> Weights:
    return convert_checkpoint({"model": model.state_dict()}, "memory")


class _OfficialStyle(nn.Module):
    """The module layout of the official Self-Classifier code: backbone, mlp_head.mlp, cls_<i>."""

    def __init__(self, class_counts: tuple[int, ...], hidden_dim: int, dim: int, use_bn: bool = True) -> None:
        super().__init__()
        self.backbone = torchvision.models.resnet50()
        self.backbone.fc = nn.Identity()
        layers: list[nn.Module] = []
        width = 2048
        for _ in range(2):
            layers.append(nn.Linear(width, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.LeakyReLU(inplace=True))
            width = hidden_dim
        layers.append(nn.Linear(width, dim))
        self.mlp_head = nn.Module()
        self.mlp_head.mlp = nn.Sequential(*layers)
        for index, count in enumerate(class_counts):
            head = nn.utils.parametrizations.weight_norm(nn.Linear(dim, count, bias=False))
            head.parametrizations.weight.original0.data.fill_(1.0)
            setattr(self, f"cls_{index}", head)
        self.num_heads = len(class_counts)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        embeddings = F.normalize(self.mlp_head.mlp(self.backbone(images)), dim=1, eps=1e-7)
        return [getattr(self, f"cls_{index}")(embeddings) for index in range(self.num_heads)]


def _official_checkpoint(model: _OfficialStyle) -> dict:
    """Save ``model`` as the official code does: weight-norm pairs as weight_g/weight_v, keys under module."""
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        state[f"module.{key}"] = value
    return {"epoch": 800, "arch": "resnet50", "state_dict": state}


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[_OfficialStyle, Path]:
    torch.manual_seed(1)
    model = _OfficialStyle((4, 6), hidden_dim=64, dim=16)
    _randomise_batchnorm(model, 1)
    model.eval()
    path = tmp_path_factory.mktemp("official") / "model_800.pth.tar"
    torch.save(_official_checkpoint(model), path)
    return model, path


# ------------------------------------------------------------------ layouts


def test_run_directory_gives_same_outputs(tmp_path):
    source = _model(seed=0)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", {"model": source.state_dict(), "config": {"backbone": "resnet10n"}})

    for init in (run, run / "checkpoint.pt"):
        target = _model(seed=1)
        weights = read_weights(init)
        assert weights.layout == "run"
        assert weights.run_config == {"backbone": "resnet10n"}
        assert load_weights(target, weights) == ("backbone", "projection", "heads")
        for expected, actual in zip(source(IMAGES[:, :, :32, :32]), target(IMAGES[:, :, :32, :32]), strict=True):
            torch.testing.assert_close(actual, expected)


def test_bare_model_state_dict_is_read(tmp_path):
    source = _model(seed=0)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = _model(seed=1)
    load_weights(target, read_weights(tmp_path / "model.pt"))
    torch.testing.assert_close(target.embed(IMAGES), source.embed(IMAGES))


def test_torchvision_state_dict_gives_same_features(tmp_path):
    torch.manual_seed(2)
    reference = torchvision.models.resnet18()
    _randomise_batchnorm(reference, 2)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    reference.fc = nn.Identity()
    reference.eval()

    target = _model("resnet18", image_size=224, hidden_dim=32, seed=3)
    projection_before = target.projection.state_dict()["layers.0.weight"].clone()
    weights = read_weights(tmp_path / "resnet18.pth")

    assert weights.layout == "torchvision"
    assert not any(key.startswith("backbone.fc.") for key in weights.state)
    assert load_weights(target, weights) == ("backbone",)
    torch.testing.assert_close(target.features(IMAGES), reference(IMAGES))
    torch.testing.assert_close(target.projection.state_dict()["layers.0.weight"], projection_before)


def test_torchvision_file_without_batch_counters_loads(tmp_path):
    reference = torchvision.models.resnet18()
    state = {key: value for key, value in reference.state_dict().items() if "num_batches_tracked" not in key}
    torch.save(state, tmp_path / "old.pth")
    target = _model("resnet18", image_size=224)
    assert load_weights(target, read_weights(tmp_path / "old.pth")) == ("backbone",)


def test_official_checkpoint_gives_same_outputs(official):
    source, path = official
    weights = read_weights(path)
    architecture = describe_weights(weights)

    assert weights.layout == "official"
    assert architecture == Architecture(
        backbone="resnet50", small_stem=False, hidden_dim=64, hidden_layers=2, embedding_dim=16, class_counts=(4, 6)
    )
    target = build_model("resnet50", 224, architecture.class_counts, architecture.embedding_dim,
                         architecture.hidden_dim, architecture.hidden_layers).eval()
    assert load_weights(target, weights) == ("backbone", "projection", "heads")
    with torch.no_grad():
        for expected, actual in zip(source(IMAGES), target(IMAGES), strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_official_heads_dropped_for_other_classes(official, caplog):
    _, path = official
    target = build_model("resnet50", 224, [10], embedding_dim=16, hidden_dim=64).eval()
    heads_before = target.heads[0].weight.detach().clone()

    with caplog.at_level(logging.INFO, logger="models.weights"):
        parts = load_weights(target, read_weights(path))

    assert parts == ("backbone", "projection")
    torch.testing.assert_close(target.heads[0].weight, heads_before)
    assert "class counts [4, 6], not the model's [10]" in caplog.text


def test_official_heads_kept_on_request_must_fit(official):
    _, path = official
    target = build_model("resnet50", 224, [10], embedding_dim=16, hidden_dim=64)
    with pytest.raises(ValueError, match=r"heads\.0\.weight: weights \(4, 16\), model \(10, 16\)"):
        load_weights(target, read_weights(path), heads="keep")


def test_official_gain_far_from_one_warns(tmp_path, caplog):
    torch.manual_seed(4)
    model = _OfficialStyle((3,), hidden_dim=32, dim=8)
    model.cls_0.parametrizations.weight.original0.data.fill_(1.5)
    torch.save(_official_checkpoint(model), tmp_path / "gain.pth")

    with caplog.at_level(logging.WARNING, logger="models.weights"):
        weights = read_weights(tmp_path / "gain.pth")

    assert "gains between 1.5000 and 1.5000" in caplog.text
    torch.testing.assert_close(weights.state["heads.0.weight"], model.cls_0.parametrizations.weight.original1)


def test_official_projection_without_batchnorm_loads_backbone_only(tmp_path, caplog):
    model = _OfficialStyle((3,), hidden_dim=32, dim=8, use_bn=False)
    torch.save(_official_checkpoint(model), tmp_path / "no_bn.pth")

    with caplog.at_level(logging.WARNING, logger="models.weights"):
        weights = read_weights(tmp_path / "no_bn.pth")

    assert weights.parts == ("backbone",)
    assert "no BatchNorm layers" in caplog.text


# ------------------------------------------------------------------- errors


def test_mismatch_lists_every_problem_and_changes_nothing():
    source = _model("resnet10n", hidden_dim=32, seed=0)
    target = _model("resnet18", hidden_dim=64, seed=1)
    before = {key: value.clone() for key, value in target.state_dict().items()}

    with pytest.raises(ValueError, match="do not fit the model") as raised:
        load_weights(target, _weights_of(source))

    message = str(raised.value)
    assert "missing from the weights" in message
    assert "backbone.conv1.weight" in message
    assert "not in the model" in message
    assert "backbone.stem.0.weight" in message
    assert "different shapes" in message
    assert "projection.layers.0.weight: weights (32, 256), model (64, 512)" in message
    assert "backbone resnet10n with 3x3 stem" in message
    assert message.count("\n") == 4
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_stem_mismatch_is_named():
    source = _model("resnet18", image_size=32)
    target = _model("resnet18", image_size=224)
    with pytest.raises(ValueError, match=r"backbone\.conv1\.weight: weights \(64, 3, 3, 3\), model \(64, 3, 7, 7\)"):
        load_weights(target, _weights_of(source))


class _RunsCode:
    """An object whose unpickling would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_file_with_python_objects_is_rejected(tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "queue": _RunsCode(marker)}, tmp_path / "bad.pth")

    with pytest.raises(ValueError, match="not loaded because loading such objects can run code"):
        read_weights(tmp_path / "bad.pth")
    assert not marker.exists()


def test_unknown_layout_is_rejected(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not a weights layout this tool reads \(first keys: encoder.weight\)"):
        read_weights(tmp_path / "other.pth")


def test_missing_file_and_empty_folder_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="not found; check the path given to --init"):
        read_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="is a folder without checkpoint.pt"):
        read_weights(tmp_path)


def test_invalid_heads_choice_is_rejected():
    model = _model()
    with pytest.raises(ValueError, match="heads must be one of auto, keep, drop, got 'some'"):
        load_weights(model, _weights_of(model), heads="some")


# ----------------------------------------------------------------- imagenet


def test_imagenet_offline_names_local_file_option(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"resnet18-f37072fd\.pth.*--init PATH"):
        read_weights("imagenet", "resnet18")


def test_imagenet_reads_hub_cache_without_download(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("the test must not download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cached)

    weights = read_weights("imagenet", "resnet18")
    target = _model("resnet18", image_size=224)

    assert weights.layout == "imagenet"
    assert load_weights(target, weights) == ("backbone",)
    torch.testing.assert_close(target.backbone.conv1.weight, reference.conv1.weight)


def test_imagenet_needs_torchvision_backbone():
    with pytest.raises(ValueError, match="--init imagenet needs a torchvision backbone, got 'resnet10n'"):
        read_weights("imagenet", "resnet10n")
