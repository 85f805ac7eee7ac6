"""Logging set-up for the entry points; engine modules only call logging.getLogger."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """Log to standard error and, when given, append to ``log_file``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT,
                        handlers=handlers, force=True)
    for noisy in ("PIL", "matplotlib", "numba", "urllib3", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
