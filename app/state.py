"""The selected run and cached access to its files, shared by every page.

Every loader is cached with Streamlit and keyed by the run directory and the
modification time of the files it reads, so a rerun reuses the result and a
rewritten file is read again.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.appended_folders import read_appended_folders
from core.config import TrainConfig
from core.edits import Edit, EditedLabels, apply_edits, load_edits
from core.labels_csv import LabelsTable, read_labels_csv
from core.metrics_log import read_metrics
from core.run_files import RunFiles
from core.thumbnails import ThumbnailStore

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNS_ROOT_VARIABLE = "LABELER_RUNS_DIR"
RUN_KEY = "run_dir"
SELECTED_IMAGE_KEY = "selected_image"
MOVE_SELECTION_KEY = "move_selection"


def runs_root() -> Path:
    """Return the folder listed for runs: $LABELER_RUNS_DIR, else ``runs`` in the project folder."""
    configured = os.environ.get(RUNS_ROOT_VARIABLE)
    return Path(configured).expanduser().resolve() if configured else PROJECT_ROOT / "runs"


def file_stamp(path: Path) -> int:
    """Return the modification time of ``path`` in nanoseconds, or 0 when it is missing (a cache key)."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0


# ------------------------------------------------------------ run selection


@dataclass(frozen=True)
class RunSummary:
    """One row of the run list on the home page."""

    path: Path
    name: str
    images: int | None
    heads: str
    labelled: bool
    modified: float


def find_runs(root: Path) -> list[RunSummary]:
    """Return the run directories (folders with config.json) directly under ``root``, newest first."""
    if not root.is_dir():
        return []
    summaries = []
    for folder in root.iterdir():
        files = RunFiles(folder)
        if not folder.is_dir() or not files.config.exists():
            continue
        try:
            heads = " ".join(str(count) for count in TrainConfig.load(files.config).class_counts)
        except ValueError:
            heads = "?"
        images = _count_embeddings(files.embeddings) if files.labels.exists() else None
        summaries.append(RunSummary(folder, folder.name, images, heads, images is not None,
                                    files.config.stat().st_mtime))
    return sorted(summaries, key=lambda summary: summary.modified, reverse=True)


def check_run_dir(path: Path) -> Path:
    """Return the resolved run directory, or raise ValueError saying what is missing."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise ValueError(f"{resolved} is not a folder; pick a run directory made by training")
    if not RunFiles(resolved).config.exists() and not RunFiles(resolved).train_pid.exists():
        raise ValueError(f"{resolved} is not a run directory: config.json is missing. Pick a folder made by training")
    return resolved


def select_run(path: Path) -> Path:
    """Make ``path`` the run that every page shows, and put it in the page address.

    Raises:
        ValueError: if ``path`` is not a run directory.
    """
    run_dir = check_run_dir(path)
    if st.session_state.get(RUN_KEY) != str(run_dir):
        st.session_state.pop(SELECTED_IMAGE_KEY, None)
        st.session_state[MOVE_SELECTION_KEY] = set()
    st.session_state[RUN_KEY] = str(run_dir)
    st.query_params["run"] = str(run_dir)
    return run_dir


def current_run() -> Path | None:
    """Return the selected run, from this session or from the ``run`` query parameter.

    A run named in the address is used only if it lies inside the runs folder,
    so a shared link cannot point the app at an arbitrary directory.
    """
    chosen = st.session_state.get(RUN_KEY)
    if chosen:
        return Path(chosen)
    requested = st.query_params.get("run")
    if not requested:
        return None
    try:
        candidate = Path(requested).expanduser().resolve()
        if not candidate.is_relative_to(runs_root()):
            raise ValueError(f"{candidate} is outside the runs folder {runs_root()}")
        return select_run(candidate)
    except (ValueError, OSError) as error:
        logger.warning("Ignoring the run in the address: %s", error)
        st.warning(f"The run in the address was ignored: {error}")
        return None


def move_selection() -> set[str]:
    """Return the image paths selected for a move in this session (a set the caller may change)."""
    return st.session_state.setdefault(MOVE_SELECTION_KEY, set())


# ----------------------------------------------------------- cached loaders


@st.cache_resource(max_entries=4, show_spinner=False)
def _labels(run_dir: str, stamp: int) -> LabelsTable:
    return read_labels_csv(RunFiles(Path(run_dir)).labels)


def load_labels(run_dir: Path) -> LabelsTable:
    """Return labels.csv of the run; the table is shared between reruns, so never change it."""
    return _labels(str(run_dir), file_stamp(RunFiles(run_dir).labels))


@st.cache_resource(max_entries=4, show_spinner=False)
def _path_rows(run_dir: str, stamp: int) -> dict[str, int]:
    return {path: row for row, path in enumerate(load_labels(Path(run_dir)).paths)}


def path_rows(run_dir: Path) -> dict[str, int]:
    """Return the labels.csv row of every image path of the run (shared, so never change it)."""
    return _path_rows(str(run_dir), file_stamp(RunFiles(run_dir).labels))


def load_run_edits(run_dir: Path) -> list[Edit]:
    """Return the run's edits. Raises ValueError for an unreadable edits.json."""
    return _edits(str(run_dir), file_stamp(RunFiles(run_dir).edits))


@st.cache_data(max_entries=8, show_spinner=False)
def _edits(run_dir: str, stamp: int) -> list[Edit]:
    return load_edits(RunFiles(Path(run_dir)).edits)


@st.cache_resource(max_entries=4, show_spinner=False)
def _edited(run_dir: str, labels_stamp: int, edits_stamp: int) -> EditedLabels:
    return apply_edits(load_labels(Path(run_dir)), load_run_edits(Path(run_dir)))


def load_edited_labels(run_dir: Path) -> EditedLabels:
    """Return the labels with the run's edits applied. Raises ValueError for unreadable files."""
    files = RunFiles(run_dir)
    return _edited(str(run_dir), file_stamp(files.labels), file_stamp(files.edits))


@st.cache_resource(max_entries=2, show_spinner=False)
def _embeddings(run_dir: str, stamp: int) -> np.ndarray:
    return np.load(RunFiles(Path(run_dir)).embeddings)


def load_embeddings(run_dir: Path) -> np.ndarray:
    """Return the run's (num_images, dim) embeddings, read once per version of the file."""
    return _embeddings(str(run_dir), file_stamp(RunFiles(run_dir).embeddings))


@st.cache_data(max_entries=8, show_spinner=False)
def _config(run_dir: str, stamp: int) -> TrainConfig:
    return TrainConfig.load(RunFiles(Path(run_dir)).config)


def load_config(run_dir: Path) -> TrainConfig:
    """Return the run's settings. Raises ValueError when config.json is missing or invalid."""
    return _config(str(run_dir), file_stamp(RunFiles(run_dir).config))


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Return the run's metrics.jsonl records (small, so read on every rerun)."""
    return read_metrics(RunFiles(run_dir).metrics)


def load_skipped(run_dir: Path) -> list[dict[str, str]]:
    """Return the rows (path, reason) of the run's skipped.csv, or none when it is missing."""
    path = RunFiles(run_dir).skipped
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            return [dict(row) for row in csv.DictReader(stream)]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        logger.warning("Cannot read %s: %s", path, error)
        return []


@st.cache_resource(max_entries=4, show_spinner=False)
def _thumbnails(run_dir: str, image_folder: str, extra_folders: tuple[str, ...]) -> ThumbnailStore:
    return ThumbnailStore(Path(image_folder), RunFiles(Path(run_dir)).thumbnails_dir,
                          extra_folders=tuple(Path(folder) for folder in extra_folders))


def thumbnail_store(run_dir: Path) -> ThumbnailStore:
    """Return the run's thumbnail store, reading from the run's image folder and its appended folders.

    Raises:
        ValueError: if the image folder is missing.
    """
    extra = tuple(str(folder) for folder in read_appended_folders(run_dir))
    return _thumbnails(str(run_dir), str(image_folder(run_dir)), extra)


def image_folder(run_dir: Path) -> Path:
    """Return the run's image folder; a relative one is looked up from the working and project folders.

    Raises:
        ValueError: if config.json is unreadable or the folder no longer exists.
    """
    folder = Path(load_config(run_dir).image_folder).expanduser()
    candidates = [folder] if folder.is_absolute() else [Path.cwd() / folder, PROJECT_ROOT / folder]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise ValueError(
        f"the run's image folder {folder} was not found; move the images back there to see them"
    )


def _count_embeddings(path: Path) -> int | None:
    """Return the number of labelled images from the header of embeddings.npy, without reading it."""
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None
