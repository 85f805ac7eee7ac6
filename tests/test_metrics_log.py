import math
import time

import pytest
import torch

from core.metrics_log import EpochTally, append_metrics, describe_epoch, keep_epochs_up_to, read_metrics


def _logits(classes: list[int], num_classes: int = 4) -> torch.Tensor:
    """(batch, num_classes) logits whose argmax is ``classes``."""
    return torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float()


def test_tally_record_counts_loss_and_classes_in_use():
    tally = EpochTally(4)
    tally.add(2.0, _logits([0, 0, 3]))
    tally.add(1.0, _logits([3, 3, 3]))
    tally.started = time.perf_counter() - 2.0  # as if the epoch began 2 s ago
    record = tally.record(epoch=5, step=40, lr=0.25, elapsed_seconds=12.3456, images=6)

    assert tally.steps == 2
    assert record["loss"] == pytest.approx(1.5)
    assert record["classes_in_use"] == 2
    assert (record["epoch"], record["step"], record["lr"], record["elapsed_seconds"]) == (5, 40, 0.25, 12.346)
    assert record["seconds"] == pytest.approx(2.0, abs=0.5)
    assert record["images_per_second"] == pytest.approx(6 / record["seconds"], rel=0.01)
    assert tally.class_counts.tolist() == [2, 0, 0, 4]


def test_tally_record_takes_combined_values():
    tally = EpochTally(3)
    tally.add(4.0, _logits([0], 3))
    record = tally.record(epoch=1, step=1, lr=0.1, elapsed_seconds=1.0, images=1,
                          loss=3.0, class_counts=torch.tensor([1, 1, 1]))
    assert (record["loss"], record["classes_in_use"]) == (3.0, 3)


def test_describe_epoch_line():
    record = {"epoch": 3, "loss": 2.345678, "classes_in_use": 9, "images_per_second": 1234.56}
    assert describe_epoch(record) == "epoch 3: loss 2.3457, 9 classes in use, 1235 images/s"


def test_empty_tally_has_no_loss():
    assert math.isnan(EpochTally(2).mean_loss())


def test_metrics_round_trip_and_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (1, 2, 3):
        append_metrics(path, {"epoch": epoch, "loss": 1.0 / epoch})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"epoch": 4, "lo')  # torn by a killed run
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3]

    keep_epochs_up_to(path, 2)
    assert read_metrics(path) == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
