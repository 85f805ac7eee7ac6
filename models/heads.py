"""Projection MLP and the weight-normalised classifier heads.

Both compute in float32, even inside a bfloat16 autocast region. The loss
divides the logits, cosines in [-1, 1], by temperatures of 0.05 and 0.1, which
would magnify bfloat16's rounding of the embedding and the logits 10 to 20
times. These layers cost little next to the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionMLP(nn.Module):
    """Map backbone features to L2-normalised embeddings.

    ``num_hidden_layers`` blocks of Linear, BatchNorm and LeakyReLU, then a
    linear layer to ``embedding_dim``. Input (batch, in_dim), output
    (batch, embedding_dim) with unit L2 norm per row.
    """

    def __init__(self, in_dim: int, hidden_dim: int, embedding_dim: int, num_hidden_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.LeakyReLU(inplace=True)]
            width = hidden_dim
        layers.append(nn.Linear(width, embedding_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return F.normalize(self.layers(features.float()), dim=1)


class ClassifierHead(nn.Module):
    """Bias-free weight-normalised linear layer with its gain fixed at 1.

    Each class vector is divided by its L2 norm before the product, so with
    unit-norm embeddings a logit is the cosine similarity between a sample
    and a class, in [-1, 1]. Input (batch, embedding_dim), output
    (batch, num_classes).
    """

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(embeddings.device.type, enabled=False):
            return embeddings.float() @ F.normalize(self.weight, dim=1).t()
