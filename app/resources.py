"""Cached heavy resources of a run: neighbour index, 2-D map, model, previews and the export file.

Each one is built once per version of the files it comes from and kept in
Streamlit's cache. The slow ones show a status message while they build.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from app.state import file_stamp, image_folder, load_config, load_edited_labels
from core.appended_folders import read_appended_folders
from core.assign import load_trained_model
from core.edits import export_labels_csv
from core.embedding_map import cached_embedding_map, load_or_compute_embedding_map
from core.index import ImageQuery, NeighbourIndex, embed_image, load_or_build_index
from core.run_files import RunFiles
from core.setup import resolve_device
from core.thumbnails import UnsafePathError, load_preview
from data.images import ImageLoadError, load_rgb
from models.self_classifier import SelfClassifier

PREVIEW_QUALITY = 90


@st.cache_resource(max_entries=2, show_spinner="Building the neighbour index of this run (done once)...")
def _index(run_dir: str, stamp: int) -> NeighbourIndex:
    return load_or_build_index(Path(run_dir))


def neighbour_index(run_dir: Path) -> NeighbourIndex:
    """Return the run's FAISS index, built and saved in the run directory on first use."""
    return _index(str(run_dir), file_stamp(RunFiles(run_dir).embeddings))


@st.cache_data(max_entries=4, show_spinner=False)
def _map_from_disk(run_dir: str, embeddings_stamp: int, map_stamp: int) -> np.ndarray | None:
    return cached_embedding_map(Path(run_dir))


def embedding_map(run_dir: Path) -> np.ndarray:
    """Return the run's (num_images, 2) UMAP coordinates, computing and saving them on first use."""
    files = RunFiles(run_dir)
    coordinates = _map_from_disk(str(run_dir), file_stamp(files.embeddings), file_stamp(files.embedding_map))
    if coordinates is not None:
        return coordinates

    label = f"Computing the 2-D map of this run once; it is saved as {files.embedding_map.name} in the run folder"
    with st.status(label, expanded=True) as status:
        coordinates = load_or_compute_embedding_map(run_dir, on_progress=status.write)
        status.update(label="The 2-D map is computed and saved", state="complete", expanded=False)
    return coordinates


@st.cache_resource(max_entries=1, show_spinner="Loading the trained model...")
def _model(run_dir: str, stamp: int) -> SelfClassifier:
    model, _ = load_trained_model(Path(run_dir), resolve_device("auto"))
    return model


def describe_image(run_dir: Path, data: bytes, file_name: str) -> ImageQuery:
    """Decode an uploaded image and return its embedding and class per head.

    The upload is decoded from a temporary file outside the image folder, and
    the file is removed afterwards.

    Raises:
        ImageLoadError: if the upload is no readable image.
        ValueError: if the run has no checkpoint.
    """
    return _describe(str(run_dir), file_stamp(RunFiles(run_dir).checkpoint), data, Path(file_name).suffix[:10])


@st.cache_data(max_entries=8, show_spinner="Running the model on the image...")
def _describe(run_dir: str, stamp: int, data: bytes, suffix: str) -> ImageQuery:
    model = _model(run_dir, stamp)
    config = load_config(Path(run_dir))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        # Decoded as labelling decodes, so an upload of a folder image gets that image's embedding.
        image = load_rgb(path, config.image_size)
    device = next(model.parameters()).device
    return embed_image(model, image, config.image_size, config.row_tau, device)


def preview(run_dir: Path, rel_path: str) -> tuple[bytes | None, str]:
    """Return (JPEG bytes, "") of a large view of one image, or (None, reason) when it cannot be shown."""
    try:
        folder = image_folder(run_dir)
    except ValueError as error:
        return None, str(error)
    extra = tuple(str(path) for path in read_appended_folders(run_dir))
    return _preview(str(folder), rel_path, extra)


@st.cache_data(max_entries=32, show_spinner=False)
def _preview(folder: str, rel_path: str, extra_folders: tuple[str, ...] = ()) -> tuple[bytes | None, str]:
    try:
        image = load_preview(Path(folder), rel_path, extra_folders=[Path(path) for path in extra_folders])
    except (UnsafePathError, ImageLoadError, OSError) as error:
        return None, str(error)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue(), ""


def export_csv(run_dir: Path, head: str) -> bytes:
    """Return labels.csv with the run's edits and class names applied, with ``head`` as the primary head."""
    files = RunFiles(run_dir)
    return _export(str(run_dir), file_stamp(files.labels), file_stamp(files.edits), head)


@st.cache_data(max_entries=8, show_spinner="Preparing the CSV file...")
def _export(run_dir: str, labels_stamp: int, edits_stamp: int, head: str) -> bytes:
    edited = load_edited_labels(Path(run_dir))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.csv"
        export_labels_csv(path, edited, head)
        return path.read_bytes()

