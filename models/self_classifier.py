"""The Self-Classifier network: backbone, projection, embedding, classifier heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.backbones import build_backbone
from models.heads import ClassifierHead, ProjectionMLP


class SelfClassifier(nn.Module):
    """Backbone, projection MLP, L2-normalised embedding and one head per class count.

    The first head is the primary one. Images enter as (batch, 3, H, W)
    float tensors normalised with the ImageNet mean and standard deviation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        class_counts: Sequence[int],
        embedding_dim: int = 128,
        hidden_dim: int = 2048,
        num_hidden_layers: int = 2,
    ) -> None:
        super().__init__()
        if not class_counts:
            raise ValueError("at least one classifier head is needed")
        for count in class_counts:
            if count < 2:
                raise ValueError(f"every head needs at least 2 classes, got {count}")
        self.backbone = backbone
        self.projection = ProjectionMLP(feature_dim, hidden_dim, embedding_dim, num_hidden_layers)
        self.heads = nn.ModuleList(ClassifierHead(embedding_dim, count) for count in class_counts)

    @property
    def class_counts(self) -> list[int]:
        return [head.num_classes for head in self.heads]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return backbone features, (batch, feature_dim)."""
        return self.backbone(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Return unit-norm embeddings, (batch, embedding_dim)."""
        return self.projection(self.features(images))

    def classify(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Return each head's logits, (batch, num_classes), for given embeddings."""
        return [head(embeddings) for head in self.heads]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return each head's logits, (batch, num_classes), for images."""
        return self.classify(self.embed(images))


def build_model(
    backbone: str,
    image_size: int,
    class_counts: Sequence[int],
    embedding_dim: int = 128,
    hidden_dim: int = 2048,
    num_hidden_layers: int = 2,
    weights: str | None = None,
    standard_stem: bool = False,
) -> SelfClassifier:
    """Build a SelfClassifier around a named backbone (see ``models.backbones``)."""
    module, feature_dim = build_backbone(backbone, image_size, weights, standard_stem)
    return SelfClassifier(module, feature_dim, class_counts, embedding_dim, hidden_dim, num_hidden_layers)
