"""Page furniture shared by the pages: set-up, error boundary, run guard, selectors and image grids."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import streamlit as st

from app import resources
from app.state import (
    SELECTED_IMAGE_KEY,
    current_run,
    load_edited_labels,
    load_embeddings,
    move_selection,
    path_rows,
    thumbnail_store,
)
from core.edits import EditedLabels
from core.logs import setup_logging
from core.run_files import RunFiles

logger = logging.getLogger(__name__)

GRID_COLUMNS = 8
NEIGHBOURS_IN_DETAILS = 8
HOME_PAGE = "Home.py"
_PLACEHOLDER = np.full((96, 96, 3), 200, dtype=np.uint8)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


@st.cache_resource
def _configure_logging() -> bool:
    # Leave a root logger alone that a host program (a test runner, say) has already set up.
    if not logging.getLogger().handlers:
        setup_logging()
    return True


def start_page(title: str) -> None:
    """Set the page title and layout and configure logging once per server process."""
    st.set_page_config(page_title=f"{title} · Self-Classifier labeler", layout="wide")
    _configure_logging()


def run_page(main: Callable[[], None]) -> None:
    """Run a page's ``main``; an unexpected error becomes a message, and its traceback goes to the log."""
    try:
        main()
    except Exception as error:  # noqa: BLE001 - the page must show a message, never a traceback
        logger.exception("The page failed")
        st.error(
            f"This page hit an unexpected error: {type(error).__name__}: {str(error).rstrip('.')}. "
            "The details are in the log of the terminal that runs the app."
        )


def escape(text: object) -> str:
    """Escape Markdown syntax in ``text``, so file and class names show as typed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def require_run(need_labels: bool = True) -> Path:
    """Return the selected run, or show how to pick one and stop the page."""
    run_dir = current_run()
    if run_dir is None:
        st.info("No run is open. Pick a run or start a new one on the home page.")
        st.page_link(HOME_PAGE, label="Go to the home page", icon=":material/home:")
        st.stop()
    show_sidebar(run_dir)
    if need_labels and not RunFiles(run_dir).labels.exists():
        st.info(
            f"Run {escape(run_dir.name)} has no labels yet: training is still running, was stopped "
            "before it finished, or failed. The Train page shows its progress."
        )
        st.page_link("pages/1_Train.py", label="Go to the Train page", icon=":material/model_training:")
        st.stop()
    return run_dir


def require_edited_labels(run_dir: Path) -> EditedLabels:
    """Return the run's edited labels, or show why they cannot be read and stop the page."""
    try:
        return load_edited_labels(run_dir)
    except ValueError as error:
        st.error(f"The labels of this run cannot be read: {error}")
        st.page_link("pages/6_Edit_and_export.py", label="Open Edit and export to repair the edits file")
        st.stop()


def show_sidebar(run_dir: Path) -> None:
    with st.sidebar:
        st.caption("Open run")
        st.markdown(f"**{escape(run_dir.name)}**")
        st.caption(escape(run_dir))
        st.page_link(HOME_PAGE, label="Change run", icon=":material/folder_open:")


# ----------------------------------------------------------------- selectors


def choose_head(edited: EditedLabels, key: str, label: str = "Head") -> str:
    """Show a head selector and return the head name; the first head is the default."""
    counts = dict(zip(edited.head_names, edited.table.class_counts, strict=True))
    return st.selectbox(
        label, edited.head_names, key=key,
        format_func=lambda head: f"{head} ({counts[head]} classes)",
        help="Each head splits the images into its own number of classes.",
    )


def class_label(edited: EditedLabels, head: str, class_index: int, sizes: np.ndarray | None = None) -> str:
    """Return ``3 · name (412 images)`` for a class of ``head``."""
    sizes = edited.class_sizes(head) if sizes is None else sizes
    size = int(sizes[class_index])
    return f"{class_index} · {edited.class_name(head, class_index)} ({size} {'image' if size == 1 else 'images'})"


def choose_class(edited: EditedLabels, head: str, key: str, label: str = "Class") -> int:
    """Show a class selector for ``head`` and return the class index; the first non-empty class is the default."""
    sizes = edited.class_sizes(head)
    non_empty = np.flatnonzero(sizes)
    return st.selectbox(
        label, range(len(sizes)), key=key, index=int(non_empty[0]) if len(non_empty) else 0,
        format_func=lambda index: class_label(edited, head, index, sizes),
    )


# -------------------------------------------------------------------- images


def open_image(rel_path: str) -> None:
    """Widget callback: show ``rel_path`` in the image details."""
    st.session_state[SELECTED_IMAGE_KEY] = rel_path


def _toggle_selection(rel_path: str, key: str) -> None:
    selection = move_selection()
    if st.session_state.get(key):
        selection.add(rel_path)
    else:
        selection.discard(rel_path)


def image_grid(
    run_dir: Path,
    edited: EditedLabels,
    head: str,
    rows: Sequence[int],
    key: str,
    captions: Sequence[str],
    selectable: bool = True,
    on_open: Callable[[str], None] = open_image,
) -> None:
    """Show thumbnails of ``rows`` of labels.csv in a grid, each with an Open button and a select box.

    ``on_open(path)`` runs when an image's Open button is clicked.
    """
    store = thumbnail_store(run_dir)
    paths = [edited.table.paths[row] for row in rows]
    thumbnails = store.get_many(paths)
    selection = move_selection()
    generation = st.session_state.get("selection_generation", 0)

    for start in range(0, len(rows), GRID_COLUMNS):
        columns = st.columns(GRID_COLUMNS)
        for column, offset in zip(columns, range(start, min(start + GRID_COLUMNS, len(rows))), strict=False):
            path = paths[offset]
            with column:
                thumbnail = thumbnails[offset]
                st.image(str(thumbnail) if thumbnail is not None else _PLACEHOLDER, width="stretch")
                st.caption(escape(captions[offset]))
                st.button("Open", key=f"{key}_open_{rows[offset]}", on_click=on_open, args=(path,),
                          help=path, width="stretch")
                if selectable:
                    box_key = f"{key}_select_{generation}_{rows[offset]}"
                    st.checkbox("Select", value=path in selection, key=box_key,
                                on_change=_toggle_selection, args=(path, box_key))


def clear_selection() -> None:
    """Widget callback: empty the move selection and reset the select boxes."""
    move_selection().clear()
    st.session_state["selection_generation"] = st.session_state.get("selection_generation", 0) + 1


def show_preview(run_dir: Path, rel_path: str) -> None:
    """Draw a large view of one image of the run, or a warning saying why it cannot be shown."""
    data, reason = resources.preview(run_dir, rel_path)
    if data is None:
        st.warning(f"The image cannot be shown: {escape(reason)}")
    else:
        st.image(data, width="stretch")


def image_details(run_dir: Path, edited: EditedLabels, rel_path: str, key: str) -> None:
    """Show one image large, with its path, class and confidence per head, and its nearest neighbours."""
    row = path_rows(run_dir).get(rel_path)
    if row is None:
        st.warning(f"{escape(rel_path)} is not among the labelled images of this run.")
        return

    picture, about = st.columns([2, 3])
    with picture:
        show_preview(run_dir, rel_path)
    with about:
        st.code(rel_path, language=None, wrap_lines=True)
        st.dataframe(_head_rows(edited, row), hide_index=True, width="stretch")
        st.page_link("pages/5_Neighbours.py", label="Explore the neighbours", icon=":material/hub:",
                     query_params={"run": str(run_dir), "image": rel_path})

    st.markdown("**Nearest neighbours**")
    index = resources.neighbour_index(run_dir)
    embeddings = load_embeddings(run_dir)
    pairs = index.neighbours(embeddings[row], NEIGHBOURS_IN_DETAILS, exclude_row=row)
    head_column = edited.head_index(edited.head_names[0])
    captions = [
        f"{similarity:.3f} · {edited.class_name(edited.head_names[0], edited.classes[other, head_column])}"
        for other, similarity in pairs
    ]
    image_grid(run_dir, edited, edited.head_names[0], [other for other, _ in pairs], f"{key}_nn", captions,
               selectable=False)


def _head_rows(edited: EditedLabels, row: int) -> list[dict[str, object]]:
    records = []
    for column, head in enumerate(edited.head_names):
        model_class = int(edited.table.classes[row, column])
        class_index = int(edited.classes[row, column])
        records.append({
            "head": head,
            "class": class_index,
            "name": edited.class_name(head, class_index),
            "confidence": round(float(edited.table.confidences[row, column]), 3),
            "edited": "" if model_class == class_index else f"model said class {model_class}",
        })
    return records

