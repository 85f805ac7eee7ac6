"""Overview page: settings, image counts, skipped files, training curves and class sizes per head."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.charts import show_training_curves  # noqa: E402
from app.overview_panel import load_diagnostics, show_diagnostics, show_heads, show_settings  # noqa: E402
from app.state import load_metrics, load_run_edits, load_skipped  # noqa: E402
from app.widgets import escape, require_edited_labels, require_run, run_page, start_page  # noqa: E402
from core.background import training_status  # noqa: E402


def main() -> None:
    run_dir = require_run()
    edited = require_edited_labels(run_dir)
    skipped = load_skipped(run_dir)
    st.title(f"Overview of {escape(run_dir.name)}")

    images, left_out, heads, state = st.columns(4)
    images.metric("Labelled images", len(edited.table.paths))
    left_out.metric("Skipped files", len(skipped))
    heads.metric("Heads", " ".join(edited.head_names))
    state.metric("Training", training_status(run_dir).state)

    st.subheader("Settings")
    show_settings(run_dir)
    st.subheader("Training")
    show_training_curves(load_metrics(run_dir))
    if skipped:
        with st.expander(f"Skipped files ({len(skipped)})"):
            st.dataframe(pd.DataFrame(skipped), hide_index=True, width="stretch")

    st.subheader("Classes per head")
    for message in edited.ignored:
        st.warning(message)
    diagnostics = load_diagnostics(run_dir)
    sizes_edited = any(edit.kind in ("merge", "move") for edit in load_run_edits(run_dir))
    show_heads(edited, with_signs=diagnostics is None or sizes_edited)
    if diagnostics is not None:
        st.subheader("Diagnostics")
        show_diagnostics(run_dir, edited, diagnostics, before_edits=sizes_edited)


start_page("Overview")
run_page(main)
