"""Names of the files inside a run directory, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFiles:
    """Paths of everything a run writes under its directory ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings.npy"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.csv"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"
