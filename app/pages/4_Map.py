"""Map page: a 2-D UMAP of the embeddings, coloured by class; pick a point to open its image."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import streamlit as st  # noqa: E402

from app import resources  # noqa: E402
from app.charts import map_figure, selected_map_row  # noqa: E402
from app.state import SELECTED_IMAGE_KEY  # noqa: E402
from app.widgets import (  # noqa: E402
    choose_head,
    image_details,
    require_edited_labels,
    require_run,
    run_page,
    start_page,
)


def main() -> None:
    run_dir = require_run()
    edited = require_edited_labels(run_dir)
    st.title("Map")
    head = choose_head(edited, key="map_head", label="Colour by the classes of head")
    coordinates = resources.embedding_map(run_dir)
    if len(coordinates) != len(edited.table.paths):
        st.error(
            f"The map has {len(coordinates)} points but labels.csv has {len(edited.table.paths)} images; "
            "label the folder again so labels.csv and embeddings.npy match."
        )
        return

    st.caption("Each point is an image; nearby points have similar embeddings. Click a point to open it.")
    column = edited.head_index(head)
    figure = map_figure(coordinates, edited.classes[:, column], edited.class_names(head), edited.table.paths)
    event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key=f"map_{head}")

    row = selected_map_row(event)
    if row is not None and 0 <= row < len(edited.table.paths):
        st.session_state[SELECTED_IMAGE_KEY] = edited.table.paths[row]
    selected = st.session_state.get(SELECTED_IMAGE_KEY)
    if selected:
        with st.container(border=True):
            image_details(run_dir, edited, selected, key="map_details")


start_page("Map")
run_page(main)
