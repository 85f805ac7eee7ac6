import json

import numpy as np
import pytest

from core.hierarchy import (
    class_tree,
    coarse_to_fine_order,
    contingency_table,
    tree_path_column,
    validate_assignments,
)

# Ten images and three heads, in column order k4, k2, k6, so coarse to fine is k2, k4, k6.
K2 = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
K4 = [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
K6 = [0, 0, 1, 1, 2, 4, 4, 4, 2, 1]
NAMES = ["k4", "k2", "k6"]
COUNTS = [4, 2, 6]
CLASSES = np.array([K4, K2, K6]).T

EXPECTED_TREE = {
    "heads": ["k2", "k4", "k6"],
    "num_images": 10,
    "roots": [{"class": 0, "size": 5}, {"class": 1, "size": 5}],
    "links": {
        "k4": {
            "parent_head": "k2",
            "classes": [
                {"class": 0, "size": 2, "parent": 0, "share": 1.0},
                {"class": 1, "size": 2, "parent": 0, "share": 1.0},
                {"class": 2, "size": 3, "parent": 1, "share": 2 / 3},
                {"class": 3, "size": 3, "parent": 1, "share": 1.0},
            ],
        },
        "k6": {
            "parent_head": "k4",
            "classes": [
                {"class": 0, "size": 2, "parent": 0, "share": 1.0},
                {"class": 1, "size": 3, "parent": 1, "share": 2 / 3},
                {"class": 2, "size": 2, "parent": 2, "share": 0.5},
                {"class": 4, "size": 3, "parent": 2, "share": 2 / 3},
            ],
        },
    },
}


# ------------------------------------------------------------------- ordering


@pytest.mark.parametrize(
    "counts, expected",
    [
        ([10, 20, 40], [0, 1, 2]),
        ([40, 10, 20], [1, 2, 0]),
        ([10, 5, 10], [1, 0, 2]),
        ([7], [0]),
    ],
)
def test_coarse_to_fine_order(counts, expected):
    assert coarse_to_fine_order(counts) == expected


def test_contingency_table_keeps_empty_classes():
    table = contingency_table(np.array([0, 0, 2]), np.array([1, 1, 0]), 4, 3)

    assert table.shape == (4, 3)
    assert table.tolist() == [[0, 2, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]


# ----------------------------------------------------------------------- tree


def test_class_tree_constructed_case():
    tree = class_tree(CLASSES, NAMES, COUNTS)

    assert tree["heads"] == EXPECTED_TREE["heads"]
    assert tree["num_images"] == 10
    assert tree["roots"] == EXPECTED_TREE["roots"]
    assert tree["links"].keys() == EXPECTED_TREE["links"].keys()
    for name, link in EXPECTED_TREE["links"].items():
        assert tree["links"][name]["parent_head"] == link["parent_head"]
        assert tree["links"][name]["classes"] == [pytest.approx(entry) for entry in link["classes"]]


def test_class_tree_leaves_out_empty_classes():
    tree = class_tree(CLASSES, NAMES, COUNTS)

    listed = [entry["class"] for entry in tree["links"]["k6"]["classes"]]
    assert listed == [0, 1, 2, 4]


def test_class_tree_tie_goes_to_lower_parent():
    # Fine class 2 of k6 contains one image of k4 class 2 and one of class 3.
    tree = class_tree(CLASSES, NAMES, COUNTS)

    entry = tree["links"]["k6"]["classes"][2]
    assert entry["parent"] == 2
    assert entry["share"] == 0.5


def test_class_tree_single_head():
    tree = class_tree(np.array([[1], [1], [0]]), ["k3"], [3])

    assert tree["heads"] == ["k3"]
    assert tree["roots"] == [{"class": 0, "size": 1}, {"class": 1, "size": 2}]
    assert tree["links"] == {}


def test_class_tree_is_json_serialisable():
    tree = class_tree(CLASSES, NAMES, COUNTS)

    assert json.loads(json.dumps(tree, allow_nan=False)) == tree


# ------------------------------------------------------------------ tree path


def test_tree_path_column_follows_parents():
    tree = class_tree(CLASSES, NAMES, COUNTS)
    cells = tree_path_column(tree, CLASSES, NAMES)

    assert len(cells) == 10
    assert cells[0] == "k2=0/k4=0/k6=0"
    assert cells[9] == "k2=0/k4=1/k6=1"
    # Image 8 is in k4 class 3, but its k6 class 2 has the majority parent 2.
    assert cells[8] == "k2=1/k4=2/k6=2"


def test_tree_path_column_rejects_other_classes():
    tree = class_tree(CLASSES, NAMES, COUNTS)

    with pytest.raises(ValueError, match="build the tree from the same classes"):
        tree_path_column(tree, CLASSES[:5], NAMES)


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "classes, names, counts, message",
    [
        (np.zeros((0, 2), dtype=np.int64), ["k2", "k4"], [2, 4], r"shape \(0, 2\)"),
        (np.zeros(5, dtype=np.int64), ["k2"], [2], r"shape \(5,\)"),
        (np.zeros((3, 2)), ["k2", "k4"], [2, 4], "dtype float64"),
        (np.zeros((3, 2), dtype=np.int64), ["k2"], [2, 4], "head_names has length 1 and class_counts has length 2"),
        (np.zeros((3, 2), dtype=np.int64), ["k2", "k2"], [2, 2], "contains a name twice"),
        (np.zeros((3, 2), dtype=np.int64), ["k0", "k4"], [0, 4], "head k0 has class count 0"),
        (np.array([[0, 4], [1, 0]]), ["k2", "k4"], [2, 4], r"class 4 of image 0 in head k4 is outside \[0, 4\)"),
        (np.array([[0, 1], [-1, 0]]), ["k2", "k4"], [2, 4], r"class -1 of image 1 in head k2"),
    ],
    ids=[
        "no_images",
        "one_dimensional",
        "float",
        "name_count",
        "duplicate_name",
        "zero_count",
        "too_large",
        "negative",
    ],
)
def test_validate_assignments_rejects_bad_input(classes, names, counts, message):
    with pytest.raises(ValueError, match=message):
        validate_assignments(classes, names, counts)


def test_validate_assignments_returns_int64():
    result = validate_assignments(np.array([[0, 1]], dtype=np.int32), ["k2", "k4"], [2, 4])

    assert result.dtype == np.int64
    assert result.tolist() == [[0, 1]]
