"""Backbones: torchvision ResNets, with a stem sized for the input resolution.

A ResNet's stem (7x7 stride-2 convolution plus max-pooling) divides the image
side by 4, which suits 224-pixel photos but leaves almost nothing of a
32-pixel image. For inputs of at most ``SMALL_IMAGE_MAX_SIZE`` pixels the stem
is replaced by a 3x3 convolution and the max-pooling is removed, so that the
first stage sees the image at half its resolution.

``resnet10n`` is a narrow four-stage ResNet (one basic block per stage, widths
32-64-128-256) built from torchvision's ``BasicBlock``; it trains about ten
times faster than ResNet-18 on a CPU. ``resnet10t`` halves every width
(16-32-64-128) and trains about three times faster again.

``patch-kmeans`` is not a network trained by gradient descent but one layer
of features fitted to the images by k-means (``models.patch_kmeans``).
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from models.names import BACKBONES, NARROW_RESNETS, PATCH_KMEANS
from models.patch_kmeans import FEATURE_DIM as PATCH_FEATURE_DIM
from models.patch_kmeans import PatchKMeans

logger = logging.getLogger(__name__)

SMALL_IMAGE_MAX_SIZE = 64
PATCH_HIDDEN_DIM = 1024


def backbone_feature_dim(name: str) -> int:
    """Return the feature dimension of a backbone without building it."""
    if name in NARROW_RESNETS:
        return NARROW_RESNETS[name][-1]
    if name == PATCH_KMEANS:
        return PATCH_FEATURE_DIM
    return 512 if name in ("resnet18", "resnet34") else 2048


def default_hidden_dim(name: str) -> int:
    """Return the projection MLP's default width for a backbone: twice its feature size, 1024 for patch-kmeans.

    Patch-kmeans has 1,600 features. A 3,200-wide MLP would have 15 million
    weights against 2.7 million, so its head-only epochs would take several
    times longer (an estimate from the weight counts, not measured).
    """
    return PATCH_HIDDEN_DIM if name == PATCH_KMEANS else 2 * backbone_feature_dim(name)


def build_backbone(
    name: str, image_size: int, weights: str | None = None, standard_stem: bool = False
) -> tuple[nn.Module, int]:
    """Build a backbone that maps (batch, 3, H, W) images to (batch, feature_dim) features.

    Args:
        name: one of ``BACKBONES``.
        image_size: side of the training crops in pixels; picks the stem.
        weights: torchvision weights name (for example ``"DEFAULT"``) to
            download, or None for random initialisation.
        standard_stem: keep the 7x7 stride-2 stem and max-pooling even for
            images of at most ``SMALL_IMAGE_MAX_SIZE`` pixels, so that weights
            trained with that stem (ImageNet weights) fit.

    Returns:
        The backbone module and its feature dimension.

    Raises:
        ValueError: for an unknown name, or weights asked for a backbone
            that has none.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    small_stem = image_size <= SMALL_IMAGE_MAX_SIZE and not standard_stem

    if name == PATCH_KMEANS:
        if weights is not None:
            raise ValueError(f"backbone {name!r} is fitted to the images and has no pretrained weights; "
                             "choose a ResNet to start from weights")
        return PatchKMeans(), PATCH_FEATURE_DIM
    if name in NARROW_RESNETS:
        if weights is not None:
            raise ValueError(f"backbone {name!r} has no pretrained weights; choose a torchvision ResNet")
        backbone = _NarrowResNet(NARROW_RESNETS[name], small_stem)
        return backbone, backbone.feature_dim

    model = torchvision.models.get_model(name, weights=weights)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    if small_stem:
        # Pretrained 7x7 stem weights no longer apply; the new stem starts random.
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=2, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model, feature_dim


class _NarrowResNet(nn.Module):
    """ResNet with one torchvision ``BasicBlock`` per stage and custom widths."""

    def __init__(self, widths: tuple[int, ...], small_stem: bool) -> None:
        super().__init__()
        if small_stem:
            stem = [nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)]
        stem += [nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        if not small_stem:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)

        blocks = []
        in_width = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            downsample = None
            if stride != 1 or in_width != width:
                downsample = nn.Sequential(
                    nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks.append(BasicBlock(in_width, width, stride, downsample))
            in_width = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_width
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(images))).flatten(1)


def _init_weights(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
