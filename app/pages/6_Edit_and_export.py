"""Edit and export page: rename, merge and move classes, undo, and download the edited labels.csv."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.edit_panel import export_button, history, merge_form, move_form, rename_form, repair_edits  # noqa: E402
from app.state import load_edited_labels  # noqa: E402
from app.widgets import choose_head, require_run, run_page, start_page  # noqa: E402
from core.edits import EditedLabels  # noqa: E402


def class_table(edited: EditedLabels, head: str) -> None:
    column = edited.head_index(head)
    sizes = edited.class_sizes(head)
    model_sizes = pd.Series(edited.table.classes[:, column]).value_counts()
    st.dataframe(pd.DataFrame({
        "class": range(len(sizes)),
        "name": edited.class_names(head),
        "images": sizes,
        "images before edits": [int(model_sizes.get(index, 0)) for index in range(len(sizes))],
    }), hide_index=True, width="stretch")


def main() -> None:
    run_dir = require_run()
    st.title("Edit and export")
    try:
        edited = load_edited_labels(run_dir)
    except ValueError as error:
        repair_edits(run_dir, error)
        return

    st.caption("Edits are saved in edits.json in the run folder and applied on top of the model's labels, "
               "which stay unchanged.")
    for message in edited.ignored:
        st.warning(message)
    head = choose_head(edited, key="edit_head")
    class_table(edited, head)

    rename, merge, move = st.tabs(["Rename", "Merge", "Move images"])
    with rename:
        rename_form(run_dir, edited, head)
    with merge:
        merge_form(run_dir, edited, head)
    with move:
        move_form(run_dir, edited, head, key="edit")

    st.subheader("Edits")
    history(run_dir)
    st.subheader("Export")
    export_button(run_dir, edited, head)


start_page("Edit and export")
run_page(main)
