"""Charts of the app: training curves, class sizes and the 2-D map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

# Enough distinct colours for 40 classes; plotly's qualitative palettes have 10 to 24.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
    "#756bb1", "#636363", "#6baed6", "#fd8d3c", "#74c476", "#9e9ac8", "#969696", "#9ecae1", "#fdae6b",
    "#a1d99b", "#bcbddc", "#bdbdbd", "#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb", "#d9d9d9", "#e7969c",
    "#de9ed6", "#cedb9c", "#e7cb94", "#ad494a",
)


def show_training_curves(records: Sequence[dict[str, Any]]) -> None:
    """Show the loss and the number of primary classes in use per epoch, side by side."""
    if not records:
        st.caption("No epoch has finished yet.")
        return
    epochs = [record.get("epoch") for record in records]
    loss, classes = st.columns(2)
    with loss:
        st.plotly_chart(_curve(epochs, [record.get("loss") for record in records], "Loss per epoch"),
                        key="curve_loss")
    with classes:
        st.plotly_chart(_curve(epochs, [record.get("classes_in_use") for record in records],
                               "Primary-head classes in use"), key="curve_classes")


def _curve(epochs: list[Any], values: list[Any], title: str) -> go.Figure:
    figure = go.Figure(go.Scatter(x=epochs, y=values, mode="lines+markers"))
    figure.update_layout(title=title, xaxis_title="epoch", height=240, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def class_size_figure(sizes: np.ndarray, names: Sequence[str], head: str) -> go.Figure:
    """Return a bar chart of the image count of each class, in class order."""
    figure = go.Figure(go.Bar(
        x=[str(index) for index in range(len(sizes))], y=sizes,
        customdata=list(names), hovertemplate="class %{x} · %{customdata}<br>%{y} images<extra></extra>",
    ))
    figure.update_layout(
        title=f"Images per class, head {head}", xaxis_title="class", yaxis_title="images",
        height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_type="category",
    )
    return figure


def map_figure(
    coordinates: np.ndarray, classes: np.ndarray, class_names: Sequence[str], paths: Sequence[str]
) -> go.Figure:
    """Return a WebGL scatter plot of the map, one trace per class, hover showing file and class.

    Each point's ``customdata`` is its row in labels.csv, so a selection names the image.
    """
    figure = go.Figure()
    names = np.array([_escape_hover(PurePosixPath(path).name) for path in paths], dtype=object)
    for class_index in np.unique(classes):
        rows = np.flatnonzero(classes == class_index)
        label = f"{class_index} · {class_names[class_index]}"
        figure.add_trace(go.Scattergl(
            x=coordinates[rows, 0], y=coordinates[rows, 1], mode="markers", name=label,
            marker={"size": 5, "color": _PALETTE[int(class_index) % len(_PALETTE)], "opacity": 0.8},
            customdata=rows, text=names[rows],
            hovertemplate=f"%{{text}}<br>{_escape_hover(label)}<extra></extra>",
        ))
    figure.update_layout(
        height=640, margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend={"itemsizing": "constant"}, showlegend=True,
        xaxis={"visible": False}, yaxis={"visible": False}, dragmode="pan",
    )
    return figure


def selected_map_row(event: object) -> int | None:
    """Return the labels.csv row of the first point picked on a ``map_figure``, or None.

    ``event`` is what ``st.plotly_chart(..., on_select="rerun")`` returns. Each
    picked point carries the ``customdata`` that ``map_figure`` gave it.
    """
    points = getattr(getattr(event, "selection", None), "points", None) or []
    for point in points:
        value = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, (int, float)):
            return int(value)
    return None


def _escape_hover(text: str) -> str:
    """Return ``text`` with what plotly would read as a placeholder (``%{``) or a tag (``<``, ``>``) defused."""
    return text.replace("%{", "% {").replace("<", "\u2039").replace(">", "\u203a")
