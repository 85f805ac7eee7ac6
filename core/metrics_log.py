"""Per-epoch metrics as JSON lines, readable while a run is going."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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
