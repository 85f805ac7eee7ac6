import pytest
import torch
import torch.nn.functional as F

from core.nn_queue import NearestNeighbourQueue


def test_queue_fills_and_wraps():
    queue = NearestNeighbourQueue(size=4, dim=2)
    queue.push(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    assert not queue.is_full
    queue.push(torch.full((2, 2), 2.0), torch.tensor([3, 4]))
    assert queue.is_full
    assert queue.indices.tolist() == [4, 1, 2, 3]


def test_nearest_returns_most_similar_other_image():
    queue = NearestNeighbourQueue(size=3, dim=2)
    stored = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    queue.push(stored, torch.tensor([10, 11, 12]))
    query = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=1)
    nearest = queue.nearest(query, torch.tensor([99, 98]))
    torch.testing.assert_close(nearest, stored[[0, 1]])


def test_nearest_never_returns_same_image():
    queue = NearestNeighbourQueue(size=3, dim=2)
    stored = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    queue.push(stored, torch.tensor([10, 11, 12]))
    # The query is image 10 itself, identical to its queued copy: the next best must win.
    nearest = queue.nearest(stored[:1], torch.tensor([10]))
    torch.testing.assert_close(nearest, stored[2:3])


def test_queue_state_round_trip():
    queue = NearestNeighbourQueue(size=4, dim=2)
    queue.push(torch.randn(3, 2), torch.tensor([5, 6, 7]))
    restored = NearestNeighbourQueue(size=4, dim=2)
    restored.load_state_dict(queue.state_dict())
    torch.testing.assert_close(restored.embeddings, queue.embeddings)
    assert restored.indices.tolist() == queue.indices.tolist()
    assert (restored.position, restored.filled) == (3, 3)
    with pytest.raises(ValueError, match="saved queue has shape"):
        NearestNeighbourQueue(size=5, dim=2).load_state_dict(queue.state_dict())
