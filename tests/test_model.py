import pytest
import torch

from models.backbones import BACKBONES, backbone_feature_dim, build_backbone
from models.self_classifier import build_model


def test_model_outputs_shapes_and_norms():
    model = build_model("resnet10n", 32, [3, 5], hidden_dim=32).eval()
    images = torch.randn(4, 3, 32, 32)
    embeddings = model.embed(images)
    assert embeddings.shape == (4, 128)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(4))
    logits = model(images)
    assert [tuple(t.shape) for t in logits] == [(4, 3), (4, 5)]
    for head_logits in logits:
        assert head_logits.abs().max() <= 1 + 1e-5


def test_head_logits_are_cosine_similarities():
    model = build_model("resnet10n", 32, [4], hidden_dim=32).eval()
    embeddings = torch.nn.functional.normalize(torch.randn(6, 128), dim=1)
    weight = model.heads[0].weight.detach()
    expected = embeddings @ torch.nn.functional.normalize(weight, dim=1).t()
    torch.testing.assert_close(model.classify(embeddings)[0], expected)
    # Scaling a class vector changes nothing: the layer is weight-normalised.
    with torch.no_grad():
        model.heads[0].weight.mul_(7.0)
    torch.testing.assert_close(model.classify(embeddings)[0], expected)


def test_heads_stay_float32_under_autocast():
    model = build_model("resnet10t", 32, [10], hidden_dim=32).eval()
    features = torch.randn(8, model.projection.layers[0].in_features)
    expected_embeddings = model.projection(features)
    expected_logits = model.classify(expected_embeddings)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model.projection(features.bfloat16())
        logits = model.classify(embeddings)[0]
    assert embeddings.dtype == logits.dtype == torch.float32
    # Only the bfloat16 input is rounded; in bfloat16 the logits would be off by about 1e-2.
    torch.testing.assert_close(logits, expected_logits, atol=2e-3, rtol=0)


@pytest.mark.parametrize(("size", "expected_side"), [(32, 1), (224, 1)])
def test_backbone_features_pool_to_vector(size, expected_side):
    backbone, dim = build_backbone("resnet18", size)
    features = backbone.eval()(torch.randn(2, 3, size, size))
    assert features.shape == (2, dim)
    assert dim == backbone_feature_dim("resnet18")


def test_small_images_get_small_stem():
    small, _ = build_backbone("resnet18", 32)
    large, _ = build_backbone("resnet18", 224)
    assert small.conv1.kernel_size == (3, 3)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7)


def test_feature_dims_match_built_backbones():
    for name in ("resnet10t", "resnet10n", "resnet18", "resnet50"):
        backbone, dim = build_backbone(name, 32)
        assert dim == backbone_feature_dim(name)
        assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, dim)


def test_resnet10t_halves_resnet10n_widths():
    tiny, tiny_dim = build_backbone("resnet10t", 32)
    narrow, narrow_dim = build_backbone("resnet10n", 32)
    assert (tiny_dim, narrow_dim) == (128, 256)
    assert tiny.stem[0].out_channels == 16
    assert narrow.stem[0].out_channels == 32


def test_unknown_backbone_and_bad_heads():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 32)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("resnet10n", 32, [1])
    assert "resnet50" in BACKBONES
