import json

import numpy as np
import pytest

from core.edits import (
    Edit,
    add_edit,
    apply_edits,
    check_new_edit,
    decided_suggestions,
    export_labels_csv,
    load_edits,
    save_edits,
    set_aside_edits,
    undo_last_edit,
)
from core.labels_csv import LabelsTable, read_labels_csv

PATHS = ["a/0.jpg", "a/1.jpg", "b/2.jpg", "b/3.jpg", "c/4.jpg", "c/5.jpg"]


@pytest.fixture
def table() -> LabelsTable:
    # Head k3 splits the images into classes 0, 1, 2; head k5 into 0, 1, 3, 4.
    classes = np.array([[0, 0], [0, 0], [1, 1], [1, 3], [2, 4], [2, 4]], dtype=np.int64)
    confidences = np.array([[0.9, 0.8], [0.7, 0.6], [0.5, 0.4], [0.6, 0.5], [0.8, 0.9], [0.3, 0.2]],
                           dtype=np.float32)
    return LabelsTable(list(PATHS), [3, 5], classes, confidences)


def test_no_edits_keeps_model_labels(table):
    edited = apply_edits(table, [])

    np.testing.assert_array_equal(edited.classes, table.classes)
    assert edited.classes is not table.classes
    assert edited.class_names("k3") == ["class 0", "class 1", "class 2"]
    assert edited.ignored == ()


def test_rename_changes_name_only(table):
    edited = apply_edits(table, [Edit.rename("k3", 1, "  birds ")])

    assert edited.class_name("k3", 1) == "birds"
    assert edited.class_name("k5", 1) == "class 1"
    np.testing.assert_array_equal(edited.classes, table.classes)


def test_merge_moves_every_image_of_the_class(table):
    edited = apply_edits(table, [Edit.merge("k3", 2, 0)])

    assert edited.classes[:, 0].tolist() == [0, 0, 1, 1, 0, 0]
    assert edited.classes[:, 1].tolist() == table.classes[:, 1].tolist()
    assert edited.class_sizes("k3").tolist() == [4, 2, 0]


def test_move_changes_only_named_images(table):
    edited = apply_edits(table, [Edit.move("k5", ["a/1.jpg", "c/5.jpg"], 2)])

    assert edited.classes[:, 1].tolist() == [0, 2, 1, 3, 4, 2]
    assert edited.classes[:, 0].tolist() == table.classes[:, 0].tolist()


def test_edits_apply_in_order(table):
    edits = [Edit.move("k3", ["a/0.jpg"], 2), Edit.merge("k3", 2, 1), Edit.rename("k3", 1, "things")]

    edited = apply_edits(table, edits)

    assert edited.classes[:, 0].tolist() == [1, 0, 1, 1, 1, 1]
    assert edited.class_name("k3", 1) == "things"


def test_model_labels_never_change(table):
    before = table.classes.copy()

    apply_edits(table, [Edit.merge("k3", 0, 1), Edit.move("k5", PATHS, 0)])

    np.testing.assert_array_equal(table.classes, before)


def test_edit_that_no_longer_fits_is_skipped(table):
    edits = [Edit.merge("k10", 1, 2), Edit.rename("k3", 7, "nope"), Edit.move("k3", ["gone.jpg", "a/0.jpg"], 2)]

    edited = apply_edits(table, edits)

    assert len(edited.ignored) == 3
    assert "no head 'k10'" in edited.ignored[0]
    assert "class 7 is outside" in edited.ignored[1]
    assert "1 of its 2 images are not in labels.csv" in edited.ignored[2]
    # The known image of the partial move was still moved.
    assert edited.classes[0, 0] == 2


def test_check_new_edit_rejects_bad_edits(table):
    edited = apply_edits(table, [Edit.rename("k3", 0, "cats")])

    with pytest.raises(ValueError, match="already named 'cats'"):
        check_new_edit(edited, Edit.rename("k3", 1, "CATS"))
    with pytest.raises(ValueError, match="name is empty"):
        check_new_edit(edited, Edit.rename("k3", 1, "   "))
    with pytest.raises(ValueError, match="control character"):
        check_new_edit(edited, Edit.rename("k3", 1, "a\nb"))
    with pytest.raises(ValueError, match="into itself"):
        check_new_edit(edited, Edit.merge("k3", 1, 1))
    with pytest.raises(ValueError, match="no images left"):
        check_new_edit(edited, Edit.merge("k5", 2, 1))
    with pytest.raises(ValueError, match="no images are selected"):
        check_new_edit(edited, Edit.move("k3", [], 1))
    with pytest.raises(ValueError, match="not in labels.csv"):
        check_new_edit(edited, Edit.move("k3", ["elsewhere.jpg"], 1))
    with pytest.raises(ValueError, match="outside head k3's classes"):
        check_new_edit(edited, Edit.move("k3", ["a/0.jpg"], 3))
    with pytest.raises(ValueError, match="heads are k3, k5"):
        check_new_edit(edited, Edit.rename("k7", 0, "x"))


def test_rename_to_own_name_allowed(table):
    edited = apply_edits(table, [Edit.rename("k3", 0, "cats")])

    check_new_edit(edited, Edit.rename("k3", 0, "Cats"))


def test_rename_to_same_name_rejected(table):
    edited = apply_edits(table, [Edit.rename("k3", 0, "cats")])

    with pytest.raises(ValueError, match="class 0 of head k3 is already named 'cats'; nothing to change"):
        check_new_edit(edited, Edit.rename("k3", 0, "cats"))
    with pytest.raises(ValueError, match="already named 'class 1'"):
        check_new_edit(edited, Edit.rename("k3", 1, "class 1"))


def test_add_edit_and_undo_round_trip(tmp_path, table):
    path = tmp_path / "edits.json"

    add_edit(path, table, Edit.rename("k3", 0, "planes"))
    add_edit(path, table, Edit.merge("k3", 2, 1))
    stored = load_edits(path)

    assert [edit.kind for edit in stored] == ["rename", "merge"]
    assert all(edit.time for edit in stored)
    assert apply_edits(table, stored).classes[:, 0].tolist() == [0, 0, 1, 1, 1, 1]

    removed = undo_last_edit(path)

    assert removed is not None and removed.kind == "merge"
    restored = apply_edits(table, load_edits(path))
    np.testing.assert_array_equal(restored.classes, table.classes)
    assert restored.class_name("k3", 0) == "planes"

    assert undo_last_edit(path).kind == "rename"
    assert undo_last_edit(path) is None
    assert load_edits(path) == []


def test_add_edit_rejects_and_keeps_file(tmp_path, table):
    path = tmp_path / "edits.json"
    add_edit(path, table, Edit.merge("k3", 2, 1))

    with pytest.raises(ValueError, match="no images left"):
        add_edit(path, table, Edit.merge("k3", 2, 0))
    assert len(load_edits(path)) == 1


def test_edits_file_format(tmp_path, table):
    path = tmp_path / "edits.json"
    edits = [
        Edit.rename("k3", 0, "cats"),
        Edit.merge("k3", 2, 1, suggested=True),
        Edit.move("k5", ["a/0.jpg"], 1),
        Edit.reject_merge("k5", 3, 1),
    ]

    save_edits(path, edits)

    assert json.loads(path.read_text(encoding="utf-8")) == [
        {"kind": "rename", "head": "k3", "class": 0, "name": "cats"},
        {"kind": "merge", "head": "k3", "class": 2, "into": 1, "suggested": True},
        {"kind": "move", "head": "k5", "paths": ["a/0.jpg"], "to": 1},
        {"kind": "reject_merge", "head": "k5", "class": 3, "into": 1},
    ]
    assert load_edits(path) == edits


def test_missing_edits_file_means_no_edits(tmp_path):
    assert load_edits(tmp_path / "edits.json") == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the edits"),
        ('{"kind": "rename"}', "must contain a JSON list"),
        ('[{"kind": "delete", "head": "k3"}]', "edit 1 is invalid: unknown edit kind 'delete'"),
        ('[{"kind": "rename", "head": "k3", "class": "1", "name": "x"}]', "field 'class' must be of type int"),
        ('[{"kind": "merge", "head": "k3", "class": true, "into": 1}]', "field 'class' must be of type int"),
        ('[{"kind": "move", "head": "k3", "paths": ["../../etc/passwd"], "to": 1}]', "contains '..'"),
        ('[{"kind": "move", "head": "k3", "paths": ["/etc/passwd"], "to": 1}]', "is absolute"),
        ('[{"kind": "move", "head": "k3", "paths": [3], "to": 1}]', "is not a string"),
    ],
)
def test_load_edits_rejects_invalid_files(tmp_path, content, message):
    path = tmp_path / "edits.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ValueError, match=message) as raised:
        load_edits(path)
    assert str(path) in str(raised.value)


def test_set_aside_edits_moves_the_file(tmp_path):
    path = tmp_path / "edits.json"
    path.write_text("{broken", encoding="utf-8")

    target = set_aside_edits(path)

    assert not path.exists()
    assert target.read_text(encoding="utf-8") == "{broken"
    assert target.name.startswith("edits.json.broken-")


def test_decided_suggestions(table):
    edits = [Edit.merge("k3", 2, 1, suggested=True), Edit.reject_merge("k5", 3, 1), Edit.merge("k3", 1, 0)]

    assert decided_suggestions(edits) == {("k3", 2, 1), ("k5", 3, 1)}


def test_export_puts_chosen_head_first_with_names(tmp_path, table):
    edited = apply_edits(table, [Edit.move("k5", ["a/0.jpg"], 2), Edit.rename("k5", 2, "dogs")])
    path = tmp_path / "export.csv"

    export_labels_csv(path, edited, "k5")

    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == ("path,class,confidence,class_k5,confidence_k5,class_k3,confidence_k3,class_name")
    exported = read_labels_csv(path)
    assert exported.paths == PATHS
    assert exported.classes[:, 0].tolist() == [2, 0, 1, 3, 4, 4]
    assert exported.classes[:, 1].tolist() == table.classes[:, 0].tolist()
    np.testing.assert_allclose(exported.confidences[:, 0], table.confidences[:, 1], atol=1e-6)
    assert exported.extra["class_name"] == ["dogs", "class 0", "class 1", "class 3", "class 4", "class 4"]


def test_export_repeated_counts_single_head(tmp_path):
    classes = np.array([[0, 1], [1, 0]], dtype=np.int64)
    table = LabelsTable(["x.jpg", "y.jpg"], [2, 2], classes, np.full((2, 2), 0.5, dtype=np.float32))
    path = tmp_path / "export.csv"

    export_labels_csv(path, apply_edits(table, []), "k2_2")

    exported = read_labels_csv(path)
    assert exported.class_counts == [2]
    assert exported.classes[:, 0].tolist() == [1, 0]
