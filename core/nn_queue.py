"""Nearest-neighbour augmentation: swap an embedding for its neighbour in a queue.

The queue holds the view-1 embeddings of recent batches together with the
dataset index of each image. Once it is full, each new view-1 embedding is
replaced by its most similar queued embedding of a *different* image, so the
loss asks two different but similar images to share a class.
"""

from __future__ import annotations

import torch


class NearestNeighbourQueue:
    """First-in first-out queue of (embedding, image index) pairs.

    Args:
        size: number of embeddings kept.
        dim: embedding dimension.
    """

    def __init__(self, size: int, dim: int) -> None:
        if size < 1:
            raise ValueError(f"queue size must be at least 1, got {size}")
        self.embeddings = torch.zeros(size, dim)
        self.indices = torch.full((size,), -1, dtype=torch.long)
        self.position = 0
        self.filled = 0

    @property
    def is_full(self) -> bool:
        return self.filled == self.embeddings.shape[0]

    @torch.no_grad()
    def nearest(self, embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Return, for each (batch, dim) embedding, its most similar queued embedding.

        Entries of the same image (equal index) are never chosen.
        """
        queue = self.embeddings.to(embeddings.device, embeddings.dtype)
        similarity = embeddings @ queue.t()
        same_image = indices.to(embeddings.device)[:, None] == self.indices.to(embeddings.device)[None, :]
        similarity = similarity.masked_fill(same_image, float("-inf"))
        return queue[similarity.argmax(dim=1)]

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, indices: torch.Tensor) -> None:
        """Add (batch, dim) embeddings and their image indices, dropping the oldest."""
        size = self.embeddings.shape[0]
        embeddings = embeddings.detach().float().cpu()[-size:]
        indices = indices.cpu()[-size:]
        slots = (self.position + torch.arange(embeddings.shape[0])) % size
        self.embeddings[slots] = embeddings
        self.indices[slots] = indices
        self.position = int((self.position + embeddings.shape[0]) % size)
        self.filled = min(size, self.filled + embeddings.shape[0])

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings, "indices": self.indices,
                "position": self.position, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if state["embeddings"].shape != self.embeddings.shape:
            raise ValueError(
                f"saved queue has shape {tuple(state['embeddings'].shape)}, "
                f"expected {tuple(self.embeddings.shape)}"
            )
        self.embeddings = state["embeddings"].clone()
        self.indices = state["indices"].clone()
        self.position = int(state["position"])
        self.filled = int(state["filled"])
