"""Neighbours page: the class and nearest images of any image of the run, or of an uploaded image."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app import resources  # noqa: E402
from app.state import SELECTED_IMAGE_KEY, load_embeddings, path_rows  # noqa: E402
from app.widgets import (  # noqa: E402
    choose_head,
    escape,
    image_grid,
    require_edited_labels,
    require_run,
    run_page,
    show_preview,
    start_page,
)
from core.edits import EditedLabels  # noqa: E402
from data.images import ImageLoadError  # noqa: E402

SOURCES = ("An image of this run", "An uploaded image")
MAX_MATCHES = 200
FILTER_KEY = "neighbours_filter"


def query_with(rel_path: str) -> None:
    """Widget callback: make ``rel_path`` the query image."""
    st.session_state[FILTER_KEY] = rel_path
    st.session_state[SELECTED_IMAGE_KEY] = rel_path


def pick_run_image(run_dir: Path, edited: EditedLabels) -> str | None:
    """Let the user find an image of the run by path; the address's ``image`` parameter preselects one."""
    rows = path_rows(run_dir)
    requested = st.query_params.get("image")
    if requested in rows and requested != st.session_state.get("neighbours_requested"):
        st.session_state["neighbours_requested"] = requested
        st.session_state[FILTER_KEY] = requested
    if FILTER_KEY not in st.session_state:
        st.session_state[FILTER_KEY] = st.session_state.get(SELECTED_IMAGE_KEY, "")
    typed = st.text_input("Find an image by path", key=FILTER_KEY,
                          help="Part of a file path; the list below shows the matches.")
    needle = typed.strip().lower()
    if typed in rows:
        matches = [typed]
    else:
        matches = [path for path in edited.table.paths if needle in path.lower()][:MAX_MATCHES]
    if not matches:
        st.info(f"No image path contains {escape(typed)}.")
        return None
    return st.selectbox(f"Image ({len(matches)} shown)", matches, key="neighbours_pick")


def show_classes(edited: EditedLabels, classes: list[int], confidences: list[float]) -> None:
    st.dataframe(pd.DataFrame([
        {"head": head, "class": classes[column], "name": edited.class_name(head, classes[column]),
         "confidence": round(confidences[column], 3)}
        for column, head in enumerate(edited.head_names)
    ]), hide_index=True, width="stretch")


def show_neighbours(run_dir: Path, edited: EditedLabels, pairs: list[tuple[int, float]], head: str) -> None:
    column = edited.head_index(head)
    st.markdown(f"**{len(pairs)} nearest images**, by cosine similarity of the embeddings")
    captions = [f"{similarity:.3f} · {edited.class_name(head, edited.classes[row, column])}"
                for row, similarity in pairs]
    image_grid(run_dir, edited, head, [row for row, _ in pairs], key="neighbours", captions=captions,
               selectable=False, on_open=query_with)


def main() -> None:
    run_dir = require_run()
    edited = require_edited_labels(run_dir)
    st.title("Neighbours")
    source = st.radio("Query", SOURCES, horizontal=True, key="neighbours_source")
    left, right = st.columns(2)
    count = left.slider("Neighbours", min_value=1, max_value=50, value=12, key="neighbours_k")
    with right:
        head = choose_head(edited, key="neighbours_head", label="Show classes of head")
    index = resources.neighbour_index(run_dir)

    if source == SOURCES[0]:
        chosen = pick_run_image(run_dir, edited)
        if chosen is None:
            return
        row = path_rows(run_dir)[chosen]
        picture, about = st.columns([1, 2])
        with picture:
            show_preview(run_dir, chosen)
        with about:
            st.code(chosen, language=None, wrap_lines=True)
            show_classes(edited, edited.classes[row].tolist(), edited.table.confidences[row].tolist())
        pairs = index.neighbours(load_embeddings(run_dir)[row], count, exclude_row=row)
    else:
        upload = st.file_uploader("Image", type=["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"],
                                  key="neighbours_upload")
        if upload is None:
            st.caption("Upload an image to see which class the model gives it and which images are closest.")
            return
        try:
            query = resources.describe_image(run_dir, upload.getvalue(), upload.name)
        except ImageLoadError as error:
            st.error(f"{escape(upload.name)} cannot be read as an image: {escape(error)}")
            return
        picture, about = st.columns([1, 2])
        picture.image(upload.getvalue(), width="stretch")
        with about:
            show_classes(edited, query.classes.tolist(), query.confidences.tolist())
        pairs = index.neighbours(query.embedding, count)
    show_neighbours(run_dir, edited, pairs, head)


start_page("Neighbours")
run_page(main)
