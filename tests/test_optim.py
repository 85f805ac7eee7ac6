import math

import pytest
import torch
from torch import nn

from core.optim import LARS, learning_rate, parameter_groups


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.55, 0.5), (1.0, 0.0), (1.5, 0.0)],
)
def test_warmup_then_cosine(progress, expected):
    assert learning_rate(progress, peak_lr=1.0, warmup_fraction=0.1) == pytest.approx(expected, abs=1e-12)


def test_cosine_quarter_point():
    value = learning_rate(0.25, peak_lr=2.0, warmup_fraction=0.0)
    assert value == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_lars_scales_weight_update_by_trust_ratio():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.0, 10.0]])  # norm 10
    bias.grad = torch.tensor([2.0])
    optimizer = LARS([{"params": [weight], "adapt": True},
                      {"params": [bias], "adapt": False, "weight_decay": 0.0}],
                     lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.1)
    optimizer.step()
    # Weight: update = grad * 0.1 * 5 / 10 = grad * 0.05. Bias: plain SGD.
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 3.5]]))
    torch.testing.assert_close(bias.data, torch.tensor([-1.0]))


def test_parameter_groups_exclude_biases_and_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    adapted, plain = parameter_groups(model)
    assert [p.shape for p in adapted["params"]] == [torch.Size([4, 3])]
    assert len(plain["params"]) == 3
    assert plain["weight_decay"] == 0.0
