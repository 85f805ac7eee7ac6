import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.loss import SelfClassifierLoss

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "selfclassifier_loss_vectors.json").read_text())
VECTORS = np.load(FIXTURES / "selfclassifier_loss_vectors.npz")


def _logits(case: dict) -> list[torch.Tensor]:
    name = case["name"]
    return [
        torch.tensor(VECTORS[f"{name}/logits_head{h}"], requires_grad=True)
        for h in range(len(case["head_sizes"]))
    ]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_loss_matches_reference_value(case):
    criterion = SelfClassifierLoss(case["row_tau"], case["col_tau"], case["eps"])
    loss = criterion(_logits(case))
    expected = float(VECTORS[f"{case['name']}/loss"])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(case["loss"], rel=1e-6)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_loss_stays_float32_under_bf16_autocast(case):
    criterion = SelfClassifierLoss(case["row_tau"], case["col_tau"], case["eps"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = criterion(_logits(case))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(float(VECTORS[f"{case['name']}/loss"]), rel=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_loss_matches_reference_gradients(case):
    criterion = SelfClassifierLoss(case["row_tau"], case["col_tau"], case["eps"])
    logits = _logits(case)
    criterion(logits).backward()
    for h, tensor in enumerate(logits):
        expected = torch.from_numpy(VECTORS[f"{case['name']}/grad_head{h}"])
        torch.testing.assert_close(tensor.grad, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_loss_is_lower_for_balanced_assignment():
    # Views that agree and spread samples over all classes beat views that
    # put every sample in one class: the uniform prior rules out collapse.
    batch, classes = 40, 4
    balanced = torch.full((2, batch, classes), -5.0)
    balanced[:, torch.arange(batch), torch.arange(batch) % classes] = 5.0
    collapsed = torch.full((2, batch, classes), -5.0)
    collapsed[:, :, 0] = 5.0
    criterion = SelfClassifierLoss()
    assert criterion([balanced]) < criterion([collapsed])


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (torch.zeros(2, 8, 5), "non-empty list"),
        ([], "non-empty list"),
        ([torch.zeros(8, 5)], r"shape \(num_views, batch_size, num_classes\)"),
        ([torch.zeros(2, 8, 5), torch.zeros(2, 6, 5)], "same"),
        ([torch.zeros(2, 8, 1)], "at least 2 classes"),
        ([torch.zeros(1, 8, 5)], "at least 2 views"),
        ([torch.zeros(2, 1, 5)], "at least 2 samples"),
    ],
)
def test_loss_rejects_bad_shapes(logits, message):
    with pytest.raises(ValueError, match=message):
        SelfClassifierLoss()(logits)


@pytest.mark.parametrize("name", ["row_tau", "col_tau", "eps"])
def test_loss_rejects_nonpositive_settings(name):
    with pytest.raises(ValueError, match=name):
        SelfClassifierLoss(**{name: 0.0})
