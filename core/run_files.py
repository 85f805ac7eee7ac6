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
    def lock(self) -> Path:
        """Held by the command that writes the run (core.run_lock)."""
        return self.root / ".lock"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def diagnostics(self) -> Path:
        return self.root / "diagnostics.json"

    @property
    def class_tree(self) -> Path:
        return self.root / "class_tree.json"

    @property
    def thumbnails_dir(self) -> Path:
        return self.root / "thumbnails"

    @property
    def embedding_map(self) -> Path:
        """2-D UMAP coordinates, (num_images, 2) float32, in labels.csv row order."""
        return self.root / "embedding_map.npy"

    @property
    def embedding_map_info(self) -> Path:
        return self.root / "embedding_map.json"

    @property
    def index(self) -> Path:
        """FAISS nearest-neighbour index over embeddings.npy."""
        return self.root / "neighbours.faiss"

    @property
    def index_info(self) -> Path:
        return self.root / "neighbours.json"

    @property
    def edits(self) -> Path:
        return self.root / "edits.json"

    @property
    def train_pid(self) -> Path:
        """Process id and command of a training process started in the background."""
        return self.root / "train.pid"

    @property
    def train_output(self) -> Path:
        """Standard output and error of a training process started in the background."""
        return self.root / "train_output.log"

    @property
    def appended_folders(self) -> Path:
        """Absolute paths of the folders whose images were appended to the run, as a JSON list."""
        return self.root / "appended_folders.json"

    def owned_paths(self) -> frozenset[Path]:
        """Return the resolved path of every file and folder named here, for checks that must not overwrite them."""
        names = [name for name, value in vars(RunFiles).items() if isinstance(value, property)]
        return frozenset(getattr(self, name).resolve() for name in names)
