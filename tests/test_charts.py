from types import SimpleNamespace

import numpy as np

from app.charts import map_figure, selected_map_row

CLASSES = np.array([2, 0, 2, 1, 0, 2])
PATHS = [f"images/{row}.png" for row in range(len(CLASSES))]


def _figure():
    coordinates = np.arange(len(CLASSES) * 2, dtype=np.float32).reshape(-1, 2)
    return map_figure(coordinates, CLASSES, ["a", "b", "c"], PATHS)


def _event(*points):
    return SimpleNamespace(selection=SimpleNamespace(points=list(points)))


def _picked(figure, trace, index):
    """Return a picked point as in Streamlit's selection event: its trace, index and customdata."""
    return {"curve_number": trace, "point_index": index, "customdata": int(figure.data[trace].customdata[index])}


def test_map_pick_returns_row():
    figure = _figure()
    for trace, data in enumerate(figure.data):
        for index in range(len(data.x)):
            row = selected_map_row(_event(_picked(figure, trace, index)))
            assert data.name.startswith(f"{CLASSES[row]} ")
            assert data.x[index] == 2 * row


def test_map_pick_first_point_wins():
    figure = _figure()
    assert selected_map_row(_event(_picked(figure, 1, 0), _picked(figure, 0, 0))) == 3


def test_map_pick_customdata_list():
    assert selected_map_row(_event({"customdata": [4, "ignored"]})) == 4


def test_map_pick_nothing_selected():
    assert selected_map_row(None) is None
    assert selected_map_row(_event()) is None
    assert selected_map_row(_event({"x": 1.0, "y": 2.0})) is None
