"""Atomic JSON writes for the small files of a run directory."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, value: Any, allow_nan: bool = True) -> None:
    """Write ``value`` as indented JSON through a temporary file and a rename.

    A crash while writing leaves the previous file intact and removes the
    temporary one. ``allow_nan=False`` raises ValueError for NaN or infinity.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(json.dumps(value, indent=2, allow_nan=allow_nan) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
