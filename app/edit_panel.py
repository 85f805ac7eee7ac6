"""Forms that change labels through edits.json: rename, merge, move, undo, and the export button."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import resources
from app.state import load_run_edits, move_selection
from app.widgets import choose_class, clear_selection, escape
from core.edits import Edit, EditedLabels, add_edit, set_aside_edits, undo_last_edit
from core.run_files import RunFiles


def save_edit(run_dir: Path, edited: EditedLabels, edit: Edit) -> bool:
    """Append ``edit`` to the run's edits; show the reason and return False when it is rejected."""
    try:
        add_edit(RunFiles(run_dir).edits, edited.table, edit)
    except ValueError as error:
        st.error(str(error))
        return False
    st.toast(f"Saved: {edit.describe()}")
    return True


def rename_form(run_dir: Path, edited: EditedLabels, head: str) -> None:
    # Enter in the name field already submits the form. The name stays, so a
    # rejected name can be corrected, and a second submit of it is rejected as unchanged.
    with st.form(f"rename_{head}"):
        class_index = choose_class(edited, head, key=f"rename_class_{head}")
        name = st.text_input("New name", max_chars=80, key=f"rename_name_{head}")
        if st.form_submit_button("Rename") and save_edit(run_dir, edited, Edit.rename(head, class_index, name)):
            st.rerun()


def merge_form(run_dir: Path, edited: EditedLabels, head: str) -> None:
    with st.form(f"merge_{head}"):
        source = choose_class(edited, head, key=f"merge_source_{head}", label="Merge this class")
        target = choose_class(edited, head, key=f"merge_target_{head}", label="into this class")
        if st.form_submit_button("Merge") and save_edit(run_dir, edited, Edit.merge(head, source, target)):
            st.rerun()


def move_form(run_dir: Path, edited: EditedLabels, head: str, key: str) -> None:
    """Show the images selected in the galleries and a form that moves them to a class of ``head``."""
    selection = move_selection()
    if not selection:
        st.caption("Select images in the gallery (the Select box under each image) to move them to another class.")
        return
    with st.form(f"move_{key}"):
        st.write(f"{len(selection)} image(s) selected.")
        target = choose_class(edited, head, key=f"move_target_{key}", label="Move them to")
        moved = st.form_submit_button("Move selected images")
    st.button("Clear the selection", key=f"clear_{key}", on_click=clear_selection)
    if moved and save_edit(run_dir, edited, Edit.move(head, sorted(selection), target)):
        clear_selection()
        st.rerun()


def history(run_dir: Path) -> None:
    """Show the list of edits, newest last, with an Undo button for the last one."""
    edits = load_run_edits(run_dir)
    if not edits:
        st.caption("No edits yet. The labels are the model's own.")
        return
    table = pd.DataFrame([{"#": number, "edit": edit.describe(), "time": edit.time}
                          for number, edit in enumerate(edits, start=1)])
    st.dataframe(table, hide_index=True, width="stretch")
    if st.button("Undo the last edit", key="undo", icon=":material/undo:"):
        removed = undo_last_edit(RunFiles(run_dir).edits)
        if removed is not None:
            st.toast(f"Undone: {removed.describe()}")
        st.rerun()


def repair_edits(run_dir: Path, error: ValueError) -> None:
    """Explain why edits.json cannot be read and offer to move it aside."""
    st.error(f"The edits of this run cannot be read: {error}")
    if st.button("Move the broken edits file aside and start with no edits", key="set_aside"):
        target = set_aside_edits(RunFiles(run_dir).edits)
        st.toast(f"Moved to {target.name}")
        st.rerun()


def export_button(run_dir: Path, edited: EditedLabels, head: str) -> None:
    st.write(
        f"The file has the columns of labels.csv with head {escape(head)} first, the edits applied, "
        "and a class_name column."
    )
    st.download_button(
        f"Download labels_{head}.csv", data=resources.export_csv(run_dir, head), file_name=f"labels_{head}.csv",
        mime="text/csv", key=f"export_{head}", type="primary", icon=":material/download:",
    )
