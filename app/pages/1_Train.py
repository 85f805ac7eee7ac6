"""Train page: start a run on an image folder, watch its progress, stop and resume it."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st  # noqa: E402

from app.state import current_run  # noqa: E402
from app.train_panel import new_run_form, training_panel  # noqa: E402
from app.widgets import escape, run_page, show_sidebar, start_page  # noqa: E402


def main() -> None:
    st.title("Train")
    run_dir = current_run()
    if run_dir is not None:
        show_sidebar(run_dir)
        st.subheader(f"Run {escape(run_dir.name)}")
        training_panel(run_dir)

    with st.expander("Start a new run", expanded=run_dir is None):
        new_run_form()


start_page("Train")
run_page(main)
