import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.labels_csv import head_names, read_labels_csv, write_labels_csv

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

AWKWARD_PATHS = [
    "plain/a.jpg",
    "comma,name.jpg",
    'say "hi".png',
    "line\nbreak.jpg",
    "café/ü 日本.png",
    "=cmd.jpg",
    "+1.jpg",
    "-minus.jpg",
    "@sum.jpg",
    "\ttab.jpg",
    "\rreturn.jpg",
    "=folder/inner.jpg",
    "sub/=inner.jpg",
    "./already.jpg",
    "'quote.jpg",
    "NA",
]
CLASS_COUNTS = [3, 5, 3]


def _table(num_images: int, class_counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, count, num_images) for count in class_counts], axis=1)
    confidences = rng.random((num_images, len(class_counts))).astype(np.float32)
    return classes, confidences


def _write(folder: Path, paths: list[str] = AWKWARD_PATHS, **kwargs) -> tuple[Path, np.ndarray, np.ndarray]:
    classes, confidences = _table(len(paths), CLASS_COUNTS)
    target = folder / "labels.csv"
    write_labels_csv(target, paths, classes, confidences, CLASS_COUNTS, **kwargs)
    return target, classes, confidences


def _stored_path(path: str) -> str:
    """The cell that the documented scheme writes for ``path``."""
    return "./" + path if path.startswith(FORMULA_PREFIXES) or path.startswith("./") else path


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as stream:
        return list(csv.reader(stream))


# ----------------------------------------------------------------- round trip


def test_read_labels_csv_round_trip(tmp_path):
    target, classes, confidences = _write(tmp_path)
    table = read_labels_csv(target)

    assert table.paths == AWKWARD_PATHS
    assert table.class_counts == CLASS_COUNTS
    assert table.head_names == ["k3", "k5", "k3_2"]
    assert table.classes.dtype == np.int64
    assert table.confidences.dtype == np.float32
    np.testing.assert_array_equal(table.classes, classes)
    rounded = np.array([[float(f"{x:.6f}") for x in row] for row in confidences], dtype=np.float32)
    np.testing.assert_array_equal(table.confidences, rounded)
    assert table.extra == {}


def test_csv_reader_sees_escaped_paths(tmp_path):
    target, classes, confidences = _write(tmp_path)
    rows = _csv_rows(target)

    assert len(rows) == len(AWKWARD_PATHS) + 1
    cells = [row[0] for row in rows[1:]]
    assert cells == [_stored_path(path) for path in AWKWARD_PATHS]
    assert cells[AWKWARD_PATHS.index("=cmd.jpg")] == "./=cmd.jpg"
    assert cells[AWKWARD_PATHS.index("sub/=inner.jpg")] == "sub/=inner.jpg"
    for cell, path in zip(cells, AWKWARD_PATHS, strict=True):
        assert tmp_path / cell == tmp_path / path
    assert [int(row[3]) for row in rows[1:]] == classes[:, 0].tolist()
    assert [row[4] for row in rows[1:]] == [f"{x:.6f}" for x in confidences[:, 0]]


def test_pandas_sees_escaped_paths(tmp_path):
    target, classes, confidences = _write(tmp_path)
    frame = pd.read_csv(target, dtype={"path": str}, keep_default_na=False)

    assert frame["path"].tolist() == [_stored_path(path) for path in AWKWARD_PATHS]
    assert frame["class_k5"].tolist() == classes[:, 1].tolist()
    np.testing.assert_allclose(frame["confidence_k3_2"].to_numpy(), confidences[:, 2], atol=5e-7)


def test_no_cell_starts_with_formula_character(tmp_path):
    target, _, _ = _write(tmp_path, extra_columns={"note": ["=1+1", "@x", "-y", "+z"] * 4})
    for row in _csv_rows(target):
        for cell in row:
            assert not cell.startswith(FORMULA_PREFIXES), cell


def test_extra_columns_round_trip(tmp_path):
    paths = ["a/1.jpg", "a/2.jpg", "b/3.jpg", "b/4.jpg", "b/5.jpg"]
    values = ["=HYPERLINK(1)", "'quoted", "-0.5", None, 3]
    target, _, _ = _write(tmp_path, paths, extra_columns={"note": values})

    assert [row[-1] for row in _csv_rows(target)] == ["note", "'=HYPERLINK(1)", "''quoted", "-0.5", "", "3"]
    assert read_labels_csv(target).extra == {"note": ["=HYPERLINK(1)", "'quoted", "-0.5", "", "3"]}


def test_round_trip_without_images(tmp_path):
    target = tmp_path / "labels.csv"
    write_labels_csv(target, [], np.zeros((0, 2), np.int64), np.zeros((0, 2)), [4, 6])
    table = read_labels_csv(target)

    assert table.paths == []
    assert table.class_counts == [4, 6]
    assert table.classes.shape == (0, 2)
    assert table.confidences.shape == (0, 2)


# --------------------------------------------------------------------- layout


def test_column_order(tmp_path):
    target, _, _ = _write(tmp_path, extra_columns={"note": [""] * len(AWKWARD_PATHS)})
    assert _csv_rows(target)[0] == [
        "path",
        "class",
        "confidence",
        "class_k3",
        "confidence_k3",
        "class_k5",
        "confidence_k5",
        "class_k3_2",
        "confidence_k3_2",
        "note",
    ]


@pytest.mark.parametrize(
    "class_counts, expected",
    [
        ([10], ["k10"]),
        ([10, 20], ["k10", "k20"]),
        ([10, 10, 20, 10], ["k10", "k10_2", "k20", "k10_3"]),
    ],
)
def test_head_names(class_counts, expected):
    assert head_names(class_counts) == expected


def test_bytes_on_disk(tmp_path):
    target, _, confidences = _write(tmp_path, ["a/1.jpg", "b/2.jpg"])
    data = target.read_bytes()

    assert data.startswith(b"path,class,confidence,class_k3,")
    assert data.endswith(b"\r\n")
    assert data.count(b"\r\n") == 3
    assert data.count(b"\n") == 3
    assert b"a/1.jpg," in data
    assert f"{confidences[0, 0]:.6f}".encode() in data


def test_primary_columns_copy_first_head(tmp_path):
    target, classes, confidences = _write(tmp_path)
    rows = _csv_rows(target)[1:]
    for row, image_classes, image_confidences in zip(rows, classes, confidences, strict=True):
        assert row[1] == row[3] == str(image_classes[0])
        assert row[2] == row[4] == f"{image_confidences[0]:.6f}"


def test_atomic_write_leaves_only_the_file(tmp_path):
    _write(tmp_path)
    _write(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["labels.csv"]


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot format")


def test_failed_write_keeps_old_file(tmp_path):
    target, _, _ = _write(tmp_path)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="cannot format"):
        _write(tmp_path, extra_columns={"note": [_Unprintable()] * len(AWKWARD_PATHS)})

    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["labels.csv"]


# ------------------------------------------------------------ writing errors


def _arrays(num_images: int, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((num_images, num_heads), np.int64), np.zeros((num_images, num_heads), np.float32)


@pytest.mark.parametrize(
    "classes, confidences, class_counts, message",
    [
        (*_arrays(3, 2), [3, 3], r"classes has shape \(3, 2\), expected .*\(2, 2\)"),
        (_arrays(2, 2)[0], _arrays(2, 1)[1], [3, 3], r"confidences has shape \(2, 1\), expected .*\(2, 2\)"),
        (*_arrays(2, 2), [3], r"classes has shape \(2, 2\), expected .*\(2, 1\)"),
        (*_arrays(2, 0), [], "class_counts is empty"),
        (*_arrays(2, 1), [0], "count below 1"),
        (np.zeros((2, 1)), _arrays(2, 1)[1], [3], "integer array"),
        (_arrays(2, 1)[0], np.array([["high"], ["low"]]), [3], "float array"),
        (np.array([[0], [3]]), _arrays(2, 1)[1], [3], r"class 3 of image 1 in head 0 is outside \[0, 3\)"),
        (np.array([[0], [-1]]), _arrays(2, 1)[1], [3], r"class -1 of image 1 in head 0"),
        (_arrays(2, 1)[0], np.array([[0.5], [1.5]]), [3], r"confidence 1.5 of image 1 in head 0"),
        (_arrays(2, 1)[0], np.array([[np.nan], [0.5]]), [3], r"confidence nan of image 0"),
    ],
)
def test_write_rejects_bad_table(tmp_path, classes, confidences, class_counts, message):
    with pytest.raises(ValueError, match=message):
        write_labels_csv(tmp_path / "labels.csv", ["a.jpg", "b.jpg"], classes, confidences, class_counts)
    assert list(tmp_path.iterdir()) == []


def test_write_clips_rounding_error(tmp_path):
    target = tmp_path / "labels.csv"
    write_labels_csv(target, ["a.jpg"], np.zeros((1, 1), np.int64), np.array([[1.0000004]]), [2])
    assert read_labels_csv(target).confidences[0, 0] == 1.0


@pytest.mark.parametrize(
    "paths, extra, message",
    [
        (["a.jpg", ""], None, "path '' of image 1 is not a non-empty string relative"),
        (["a.jpg", "/abs/b.jpg"], None, "path '/abs/b.jpg' of image 1 is not a non-empty string relative"),
        (
            ["a.jpg", Path("b.jpg")],
            None,
            "path PosixPath\\('b.jpg'\\) of image 1 is not a non-empty string relative",
        ),
        (
            ["a.jpg", "b.jpg"],
            {"note": ["x"]},
            "extra column 'note' has 1 values, expected one per image \\(2\\)",
        ),
        (["a.jpg", "b.jpg"], {"class": ["x", "y"]}, "extra column name 'class' is reserved"),
        (["a.jpg", "b.jpg"], {"confidence_k7": ["x", "y"]}, "extra column name 'confidence_k7' is reserved"),
        (["a.jpg", "b.jpg"], {"=note": ["x", "y"]}, "starts with a formula character"),
        (["a.jpg", "b.jpg"], {"": ["x", "y"]}, "is empty"),
    ],
)
def test_write_rejects_bad_paths_and_columns(tmp_path, paths, extra, message):
    classes, confidences = _arrays(2, 1)
    with pytest.raises(ValueError, match=message):
        write_labels_csv(tmp_path / "labels.csv", paths, classes, confidences, [3], extra)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ reading errors


def _write_text(folder: Path, lines: list[str]) -> Path:
    target = folder / "labels.csv"
    target.write_bytes("".join(line + "\r\n" for line in lines).encode("utf-8"))
    return target


GOOD_HEADER = "path,class,confidence,class_k3,confidence_k3"


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "is empty"),
        (["path,class,class_k3,confidence_k3"], "column 'confidence' is missing"),
        (["path,class,confidence,class_k3", "a.jpg,1,0.5,1"], "column 'confidence_k3' is missing"),
        (["path,class,confidence", "a.jpg,1,0.5"], "head columns"),
        (["path,class,confidence,class_k3_2,confidence_k3_2"], "head columns"),
        (["path,class,confidence,class_k0,confidence_k0"], "head columns"),
        ([GOOD_HEADER + ",class"], "repeats a column name"),
        (
            [GOOD_HEADER, "a.jpg,1,0.5,1,0.5", "b.jpg,1,0.5,one,0.5"],
            "row 3, column 'class_k3': 'one' is not an integer",
        ),
        (
            [GOOD_HEADER, "a.jpg,1,0.5,1,0.5", "b.jpg,1,0.5,1,high"],
            "row 3, column 'confidence_k3': 'high' is not a number",
        ),
        ([GOOD_HEADER, "a.jpg,1,0.5,3,0.5"], r"row 2, column 'class_k3': class 3 is outside \[0, 3\)"),
        (
            [GOOD_HEADER, "a.jpg,1,0.5,1,1.5"],
            r"row 2, column 'confidence_k3': confidence 1.5 is outside \[0, 1\]",
        ),
        ([GOOD_HEADER, "a.jpg,1,0.5,1"], "row 2 has 4 cells, but the header has 5"),
        ([GOOD_HEADER, "a.jpg,2,0.5,1,0.5"], "row 2: column 'class' is 2, but class_k3 is 1"),
        ([GOOD_HEADER, "a.jpg,1,0.4,1,0.5"], "row 2: column 'confidence' is 0.4, but confidence_k3 is 0.5"),
    ],
)
def test_read_rejects_bad_file(tmp_path, lines, message):
    target = _write_text(tmp_path, lines)
    with pytest.raises(ValueError, match=message):
        read_labels_csv(target)


def test_read_names_file_in_error(tmp_path):
    target = _write_text(tmp_path, [GOOD_HEADER, "a.jpg,1,0.5,x,0.5"])
    with pytest.raises(ValueError, match=str(target)):
        read_labels_csv(target)


def test_read_rejects_non_utf8(tmp_path):
    target = tmp_path / "labels.csv"
    target.write_bytes(GOOD_HEADER.encode() + b"\r\ncaf\xe9.jpg,1,0.5,1,0.5\r\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_labels_csv(target)


def test_read_accepts_byte_order_mark(tmp_path):
    target = tmp_path / "labels.csv"
    target.write_bytes(b"\xef\xbb\xbf" + GOOD_HEADER.encode() + b"\r\na.jpg,1,0.5,1,0.5\r\n")
    table = read_labels_csv(target)
    assert table.paths == ["a.jpg"]
    assert table.class_counts == [3]


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_labels_csv(tmp_path / "labels.csv")
