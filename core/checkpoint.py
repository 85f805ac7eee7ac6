"""Atomic, safely loadable training checkpoints."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename.

    A crash while writing leaves the previous checkpoint intact. ``state``
    must hold only tensors, numbers, strings, lists and dicts, so that
    ``load_checkpoint`` can read it without unpickling arbitrary objects.
    """
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` with ``weights_only=True``.

    Raises:
        ValueError: if the file is missing, truncated or contains objects other
            than tensors and plain containers.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as error:
        raise ValueError(f"checkpoint not found: {path}") from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise ValueError(
            f"cannot load checkpoint {path}: {error}. The file may be damaged or not a checkpoint "
            "of this tool; delete it to start the run again from scratch."
        ) from error
