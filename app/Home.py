"""Home page: open an existing run, or go to the Train page to start one.

Start the app from the project folder with ``streamlit run app/Home.py``.
"""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402

from app.state import current_run, find_runs, runs_root, select_run  # noqa: E402
from app.widgets import escape, run_page, start_page  # noqa: E402

RUNS_ROOT_KEY = "runs_root"


def open_run(path: Path) -> None:
    try:
        select_run(path)
    except ValueError as error:
        st.error(str(error))
        return
    st.switch_page("pages/2_Overview.py")


def show_run_list() -> None:
    root_text = st.text_input(
        "Runs folder", value=st.session_state.get(RUNS_ROOT_KEY, str(runs_root())),
        help="Folder whose sub-folders are run directories. Set LABELER_RUNS_DIR to change the default.",
    )
    st.session_state[RUNS_ROOT_KEY] = root_text
    runs = find_runs(Path(root_text).expanduser())
    if not runs:
        st.info(f"No runs in {escape(root_text)} yet. Start one on the Train page, or open a run by its path.")
        return

    table = pd.DataFrame([
        {"run": run.name, "images": run.images, "heads": run.heads,
         "labelled": "yes" if run.labelled else "not yet",
         "modified": pd.Timestamp(run.modified, unit="s").strftime("%Y-%m-%d %H:%M")}
        for run in runs
    ])
    st.dataframe(table, hide_index=True, width="stretch")
    names = [run.name for run in runs]
    chosen = st.selectbox("Run", names, key="home_run")
    if st.button("Open run", type="primary", key="home_open"):
        open_run(runs[names.index(chosen)].path)


def show_path_opener() -> None:
    with st.form("open_by_path"):
        typed = st.text_input("Run directory", placeholder="/path/to/runs/my-run")
        if st.form_submit_button("Open this run directory") and typed.strip():
            open_run(Path(typed.strip()))


def main() -> None:
    st.title("Self-Classifier labeler")
    st.write(
        "Sort a folder of unlabelled images into classes with a Self-Classifier network, "
        "then browse the classes, correct them and export the labels."
    )
    selected = current_run()
    if selected is not None:
        st.success(f"Open run: {escape(selected)}")

    st.subheader("Open a run")
    show_run_list()
    show_path_opener()

    st.subheader("Start a new run")
    st.page_link("pages/1_Train.py", label="Choose an image folder and train", icon=":material/model_training:")


start_page("Home")
run_page(main)
