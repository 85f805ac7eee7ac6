"""Classes page: a paged gallery per class, sorted by confidence, and the least confident images."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from app.edit_panel import move_form  # noqa: E402
from app.state import SELECTED_IMAGE_KEY  # noqa: E402
from app.widgets import (  # noqa: E402
    choose_class,
    choose_head,
    escape,
    image_details,
    image_grid,
    require_edited_labels,
    require_run,
    run_page,
    start_page,
)

PAGE_SIZE = 48
VIEWS = ("One class", "Least confident, all classes")


def close_details() -> None:
    st.session_state.pop(SELECTED_IMAGE_KEY, None)


def main() -> None:
    run_dir = require_run()
    edited = require_edited_labels(run_dir)
    st.title("Classes")

    selected = st.session_state.get(SELECTED_IMAGE_KEY)
    if selected:
        with st.container(border=True):
            st.button("Close", key="close_details", on_click=close_details, icon=":material/close:")
            image_details(run_dir, edited, selected, key="details")

    head_column, view_column, class_column = st.columns([1, 1, 2])
    with head_column:
        head = choose_head(edited, key="classes_head")
    with view_column:
        view = st.radio("Show", VIEWS, key="classes_view")
    column = edited.head_index(head)
    confidences = edited.table.confidences[:, column]

    if view == VIEWS[0]:
        with class_column:
            class_index = choose_class(edited, head, key=f"classes_class_{head}")
            confident_first = st.toggle("Most confident first", value=True, key="classes_order")
        rows = np.flatnonzero(edited.classes[:, column] == class_index)
        order = np.argsort(-confidences[rows] if confident_first else confidences[rows], kind="stable")
        rows = rows[order]
        page_key = f"page_{head}_{class_index}"
    else:
        rows = np.argsort(confidences, kind="stable")
        page_key = f"page_{head}_least"

    if len(rows) == 0:
        st.info("This class is empty.")
        move_form(run_dir, edited, head, key="classes")
        return

    pages = (len(rows) + PAGE_SIZE - 1) // PAGE_SIZE
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key=page_key)
    page_rows = rows[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    st.caption(f"Images {(page - 1) * PAGE_SIZE + 1} to {(page - 1) * PAGE_SIZE + len(page_rows)} of {len(rows)}")
    captions = [
        f"{confidences[row]:.2f}" if view == VIEWS[0]
        else f"{confidences[row]:.2f} · {edited.class_name(head, edited.classes[row, column])}"
        for row in page_rows
    ]
    image_grid(run_dir, edited, head, page_rows.tolist(), key="gallery", captions=captions)

    st.subheader("Move selected images")
    move_form(run_dir, edited, head, key="classes")
    st.caption(escape(f"Thumbnails are stored in {run_dir / 'thumbnails'}."))


start_page("Classes")
run_page(main)
