"""Per-epoch metrics as JSON lines, readable while a run is going."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


class EpochTally:
    """The losses and primary-head classes of one epoch's steps, turned into its metrics record."""

    def __init__(self, num_classes: int) -> None:
        self.started = time.perf_counter()
        self.losses: list[float] = []
        self.class_counts = torch.zeros(num_classes, dtype=torch.long)

    def add(self, loss: float, primary_logits: torch.Tensor) -> None:
        """Count one step: its loss and view 0's primary-head logits, (batch, num_classes)."""
        self.losses.append(loss)
        self.class_counts += torch.bincount(primary_logits.argmax(dim=1).cpu(), minlength=len(self.class_counts))

    @property
    def steps(self) -> int:
        """Number of steps counted so far."""
        return len(self.losses)

    def mean_loss(self) -> float:
        """Return the mean loss of the counted steps, NaN when there are none."""
        return float(np.mean(self.losses)) if self.losses else float("nan")

    def record(
        self, *, epoch: int, step: int, lr: float, elapsed_seconds: float, images: int,
        loss: float | None = None, class_counts: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Return the epoch's metrics.jsonl record.

        ``images`` is the number of images trained on in the epoch. ``loss``
        and ``class_counts`` replace this tally's own when the caller has
        combined those of several processes.
        """
        seconds = time.perf_counter() - self.started
        loss = self.mean_loss() if loss is None else loss
        class_counts = self.class_counts if class_counts is None else class_counts
        return {
            "epoch": epoch,
            "step": step,
            "loss": loss,
            "lr": lr,
            "classes_in_use": int((class_counts > 0).sum()),
            "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 2) if seconds > 0 else 0.0,
            "elapsed_seconds": round(elapsed_seconds, 3),
        }


def describe_epoch(record: dict[str, Any]) -> str:
    """Return the log line of an epoch's metrics record."""
    return (f"epoch {record['epoch']}: loss {record['loss']:.4f}, {record['classes_in_use']} classes in use, "
            f"{record['images_per_second']:.0f} images/s")


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line and flush it to disk."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Return every complete record; a torn last line (from a killed run) is ignored."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("Ignoring unreadable line %d of %s", number, path)
    return records


def keep_epochs_up_to(path: Path, last_epoch: int) -> None:
    """Drop records of epochs after ``last_epoch``, which a resumed run will redo."""
    kept = [record for record in read_metrics(path) if record.get("epoch", 0) <= last_epoch]
    text = "".join(json.dumps(record) + "\n" for record in kept)
    temporary = path.with_suffix(".jsonl.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
