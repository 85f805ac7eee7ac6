"""The labels.csv format, written by the engine and read by the app and the evaluation.

Columns, in this order:

* ``path``: the image's path relative to the image folder, with forward slashes.
* ``class`` and ``confidence``: copies of the primary head's columns. The
  first head is the primary one, so callers pass the heads in that order.
* ``class_k<C>`` and ``confidence_k<C>`` for every head, in head order, where C
  is the head's number of classes. When several heads have the same C, the
  second one is named ``k<C>_2``, the third ``k<C>_3`` and so on, so heads of
  10, 20 and 10 classes give ``class_k10, confidence_k10, class_k20,
  confidence_k20, class_k10_2, confidence_k10_2``.
* the caller's extra columns, in the order given.

Classes are integers in [0, C). Confidences are in [0, 1] with 6 decimals.
The file is UTF-8 without a byte order mark, CSV as in RFC 4180 with CRLF
line ends, and a field is quoted only when it contains a comma, a double quote
or a line break.

Spreadsheet safety. Spreadsheet programs such as Excel and LibreOffice Calc
can evaluate a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(MITRE CWE-1236, "Improper Neutralization of Formula Elements in a CSV File"),
and this module treats a leading tab or carriage return the same way. Quoting
the field does not help, because the spreadsheet removes the CSV quotes before
it reads the cell. So no cell of this file starts with one of these characters:

* A path that starts with one of them, or with ``./``, is written with ``./``
  in front: ``=cmd.jpg`` is stored as ``./=cmd.jpg``. ``csv.reader`` and
  ``pandas.read_csv`` return ``./=cmd.jpg``, which names the same file:
  ``Path(folder) / "./=cmd.jpg" == Path(folder) / "=cmd.jpg"``, and
  ``os.path.normpath`` drops the prefix. A spreadsheet gets a cell that starts
  with ``.``, which is no formula trigger. Every other path is stored unchanged.
* A text value in an extra column that starts with one of them, or with
  ``'``, is written with ``'`` in front, which stops Excel from running it as a
  formula (CWE-1236). Plain decimal numbers such as ``-0.5`` are stored unchanged.
  ``csv.reader`` and ``pandas.read_csv`` return the value with the ``'``.

:func:`read_labels_csv` removes both prefixes and returns exactly the strings
that were written. Class and confidence cells are non-negative numbers, so
they never need a prefix.

NOTE: neither rule has been tried in a real Excel or LibreOffice. Some
spreadsheets may show the ``'`` of an escaped extra value.

With pandas, read the file as
``pandas.read_csv(path, dtype={"path": str}, keep_default_na=False)``.
Without these options pandas (checked with 3.1) reads a path named ``NA`` or
``null`` as NaN, and reads paths such as ``001`` as numbers when every path in
the file looks like one.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.commands import core_command
from core.run_files import RunFiles

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
PATH_ESCAPE = "./"
TEXT_ESCAPE = "'"
CONFIDENCE_DECIMALS = 6
CONFIDENCE_TOLERANCE = 1e-6

_HEAD_COLUMN = re.compile(r"(class|confidence)_(k\d+(?:_\d+)?)")
_DECIMAL_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_FIXED_COLUMNS = ("path", "class", "confidence")


@dataclass(frozen=True)
class LabelsTable:
    """The contents of a labels.csv file.

    Attributes:
        paths: image paths relative to the image folder, as they were written.
        class_counts: number of classes of each head, in head order.
        classes: (num_images, num_heads) int64 class index of each image per head.
        confidences: (num_images, num_heads) float32 confidence of each image per head.
        extra: values of each extra column, by column name, as strings.
    """

    paths: list[str]
    class_counts: list[int]
    classes: np.ndarray
    confidences: np.ndarray
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def head_names(self) -> list[str]:
        """Column suffix of each head, such as ``k10``, in head order."""
        return head_names(self.class_counts)


def head_names(class_counts: Sequence[int]) -> list[str]:
    """Name each head ``k<C>``, adding ``_2``, ``_3`` ... to repeats of the same C."""
    names = []
    seen: dict[int, int] = {}
    for count in class_counts:
        seen[count] = seen.get(count, 0) + 1
        suffix = "" if seen[count] == 1 else f"_{seen[count]}"
        names.append(f"k{int(count)}{suffix}")
    return names


def write_labels_csv(
    path: Path,
    rel_paths: Sequence[str],
    classes: np.ndarray,
    confidences: np.ndarray,
    class_counts: Sequence[int],
    extra_columns: Mapping[str, Sequence] | None = None,
) -> None:
    """Write labels.csv to a temporary file in the same folder, then rename it to ``path``.

    So ``path`` always contains a whole file, old or new. A process killed while
    writing can leave a hidden ``.<name>.<random>.tmp`` file next to it.

    Args:
        path: the file to write. An existing file is replaced.
        rel_paths: each image's path relative to the image folder, with forward slashes.
        classes: (num_images, num_heads) integer class index of each image per head.
        confidences: (num_images, num_heads) confidence of each image per head.
            Values up to 1e-6 outside [0, 1] are clipped.
        class_counts: number of classes of each head. The first head is the primary one.
        extra_columns: more columns to append, by name, one value per image.
            ``None`` values are written as empty cells and others with ``str``.

    Raises:
        ValueError: if the shapes disagree, ``classes`` is not an integer array,
            ``confidences`` is not numeric, a path is not a non-empty relative
            string, a class or confidence is out of range or NaN, or an extra
            column name is reserved. Nothing is written then.
    """
    classes, confidences = np.asarray(classes), np.asarray(confidences)
    extra = dict(extra_columns or {})
    _check_table(rel_paths, classes, confidences, class_counts)
    _check_extra_columns(extra, len(rel_paths))
    confidences = np.clip(confidences, 0.0, 1.0)

    names = head_names(class_counts)
    header = list(_FIXED_COLUMNS)
    for name in names:
        header += [f"class_{name}", f"confidence_{name}"]
    header += list(extra)
    _write_atomically(Path(path), header, _rows(rel_paths, classes, confidences, extra))


def read_run_labels(files: RunFiles) -> LabelsTable:
    """Read the labels.csv of a run directory (see ``read_labels_csv``).

    Raises:
        ValueError: if the run has no labels.csv yet; the message gives the command that writes it.
    """
    if not files.labels.is_file():
        raise ValueError(f"{files.labels} not found: write it first with {core_command('assign', files.root)}")
    return read_labels_csv(files.labels)


def read_labels_csv(path: Path) -> LabelsTable:
    """Read a labels.csv file and remove the spreadsheet-safety prefixes.

    Errors number rows as a spreadsheet does, with the header as row 1.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not UTF-8 CSV, a column is missing, a row has
            the wrong number of cells, or a class or confidence cell is not a
            number in range.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    class_counts, extra_names = _parse_header(path, header)
    names = head_names(class_counts)
    column_index = {name: i for i, name in enumerate(header)}

    classes = np.zeros((len(rows), len(names)), dtype=np.int64)
    confidences = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, row in enumerate(rows):
        cells = dict(zip(header, row, strict=True))
        for h, (name, count) in enumerate(zip(names, class_counts, strict=True)):
            classes[i, h] = _parse_class(path, i + 2, f"class_{name}", cells, count)
            confidences[i, h] = _parse_confidence(path, i + 2, f"confidence_{name}", cells)
        _check_primary_copy(path, i + 2, cells, names[0], class_counts[0])

    paths = [_unprotect_path(row[column_index["path"]]) for row in rows]
    extra = {name: [_unprotect_text(row[column_index[name]]) for row in rows] for name in extra_names}
    return LabelsTable(paths, class_counts, classes, confidences, extra)


# ---------------------------------------------------------------- validation


def _check_table(
    rel_paths: Sequence[str], classes: np.ndarray, confidences: np.ndarray, class_counts: Sequence[int]
) -> None:
    num_images, num_heads = len(rel_paths), len(class_counts)
    if num_heads == 0:
        raise ValueError("class_counts is empty: pass the number of classes of at least one head.")
    if any(int(count) < 1 for count in class_counts):
        raise ValueError(
            f"class_counts {list(class_counts)} contains a count below 1: every head needs classes."
        )
    for name, array in (("classes", classes), ("confidences", confidences)):
        if np.shape(array) != (num_images, num_heads):
            raise ValueError(
                f"{name} has shape {np.shape(array)}, expected (num_images, num_heads) = "
                f"({num_images}, {num_heads}) from {num_images} paths and {num_heads} class counts."
            )
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes has dtype {classes.dtype}: pass an integer array of class indices.")
    if not np.issubdtype(confidences.dtype, np.number):
        raise ValueError(f"confidences has dtype {confidences.dtype}: pass a float array of probabilities.")
    _check_ranges(classes, confidences, class_counts)
    for i, rel_path in enumerate(rel_paths):
        if not isinstance(rel_path, str) or not rel_path or rel_path.startswith("/"):
            raise ValueError(
                f"path {rel_path!r} of image {i} is not a non-empty string relative to the image folder."
            )


def _check_ranges(classes: np.ndarray, confidences: np.ndarray, class_counts: Sequence[int]) -> None:
    for h, count in enumerate(class_counts):
        bad = np.flatnonzero((classes[:, h] < 0) | (classes[:, h] >= count))
        if bad.size:
            raise ValueError(
                f"class {classes[bad[0], h]} of image {bad[0]} in head {h} is outside [0, {count}): "
                "pass class indices below the head's class count."
            )
    low, high = -CONFIDENCE_TOLERANCE, 1.0 + CONFIDENCE_TOLERANCE
    bad_cells = np.argwhere(~((confidences >= low) & (confidences <= high)))
    if bad_cells.size:
        image, head = bad_cells[0]
        raise ValueError(
            f"confidence {confidences[image, head]} of image {image} in head {head} is outside [0, 1]: "
            "pass probabilities."
        )


def _check_extra_columns(extra: Mapping[str, Sequence], num_images: int) -> None:
    for name, values in extra.items():
        if not name or name.startswith(FORMULA_PREFIXES):
            raise ValueError(f"extra column name {name!r} is empty or starts with a formula character.")
        if name in _FIXED_COLUMNS or _HEAD_COLUMN.fullmatch(name):
            raise ValueError(f"extra column name {name!r} is reserved for the class and confidence columns.")
        if len(values) != num_images:
            raise ValueError(
                f"extra column {name!r} has {len(values)} values, expected one per image ({num_images})."
            )


# ------------------------------------------------------------------- writing


def _rows(
    rel_paths: Sequence[str], classes: np.ndarray, confidences: np.ndarray, extra: Mapping[str, Sequence]
) -> Iterator[list[str]]:
    for i, rel_path in enumerate(rel_paths):
        heads = []
        for class_index, confidence in zip(classes[i], confidences[i], strict=True):
            heads += [str(int(class_index)), f"{confidence:.{CONFIDENCE_DECIMALS}f}"]
        extra_cells = [_protect_text(values[i]) for values in extra.values()]
        yield [_protect_path(rel_path), *heads[:2], *heads, *extra_cells]


def _write_atomically(path: Path, header: list[str], rows: Iterator[list[str]]) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # os.open applies the umask to 0o666, so the file gets the usual permissions.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
            writer.writerow(header)
            writer.writerows(rows)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _protect_path(rel_path: str) -> str:
    if rel_path.startswith(FORMULA_PREFIXES) or rel_path.startswith(PATH_ESCAPE):
        return PATH_ESCAPE + rel_path
    return rel_path


def _protect_text(value: object) -> str:
    text = "" if value is None else str(value)
    if _DECIMAL_NUMBER.fullmatch(text):
        return text
    if text.startswith(FORMULA_PREFIXES) or text.startswith(TEXT_ESCAPE):
        return TEXT_ESCAPE + text
    return text


# ------------------------------------------------------------------- reading


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    # utf-8-sig also accepts a file that a spreadsheet saved with a byte order mark.
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            rows = list(csv.reader(stream))
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error}): save it as UTF-8 or label the folder again."
        ) from error
    except csv.Error as error:
        raise ValueError(
            f"{path} is not valid CSV ({error}): label the folder again to rewrite it."
        ) from error
    if not rows:
        raise ValueError(f"{path} is empty: expected a header row starting with 'path,class,confidence'.")

    header, body = rows[0], rows[1:]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {i + 2} has {len(row)} cells, but the header has {len(header)}.")
    return header, body


def _parse_header(path: Path, header: list[str]) -> tuple[list[int], list[str]]:
    """Check the header and return the class count of each head and the extra column names."""
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: the header repeats a column name: {header}.")
    for name in _FIXED_COLUMNS:
        if name not in header:
            raise ValueError(f"{path}: column {name!r} is missing. The header is {header}.")

    found = [match.group(2) for name in header if (match := _HEAD_COLUMN.fullmatch(name))]
    names = list(dict.fromkeys(found))
    class_counts = [int(name[1:].split("_")[0]) for name in names]
    if not names or names != head_names(class_counts) or min(class_counts) < 1:
        raise ValueError(
            f"{path}: the head columns {names} do not follow the class_k<C>, class_k<C>_2 naming, "
            "or there are none."
        )
    for name in names:
        for column in (f"class_{name}", f"confidence_{name}"):
            if column not in header:
                raise ValueError(f"{path}: column {column!r} is missing. The header is {header}.")

    extra_names = [name for name in header if name not in _FIXED_COLUMNS and not _HEAD_COLUMN.fullmatch(name)]
    return class_counts, extra_names


def _parse_class(path: Path, row_number: int, column: str, cells: Mapping[str, str], count: int) -> int:
    cell = cells[column]
    try:
        value = int(cell)
    except ValueError:
        raise ValueError(
            f"{path}: row {row_number}, column {column!r}: {cell!r} is not an integer."
        ) from None
    if not 0 <= value < count:
        raise ValueError(
            f"{path}: row {row_number}, column {column!r}: class {value} is outside [0, {count})."
        )
    return value


def _parse_confidence(path: Path, row_number: int, column: str, cells: Mapping[str, str]) -> float:
    cell = cells[column]
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{path}: row {row_number}, column {column!r}: {cell!r} is not a number.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{path}: row {row_number}, column {column!r}: confidence {value} is outside [0, 1]."
        )
    return value


def _check_primary_copy(
    path: Path, row_number: int, cells: Mapping[str, str], primary: str, count: int
) -> None:
    """Raise if the class and confidence columns differ from the primary head's columns."""
    pairs = (
        (_parse_class(path, row_number, "class", cells, count), int(cells[f"class_{primary}"]), "class"),
        (
            _parse_confidence(path, row_number, "confidence", cells),
            float(cells[f"confidence_{primary}"]),
            "confidence",
        ),
    )
    for value, primary_value, column in pairs:
        if value != primary_value:
            raise ValueError(
                f"{path}: row {row_number}: column {column!r} is {value}, but {column}_{primary} is "
                f"{primary_value}, which it should copy. Label the folder again to rewrite the file."
            )


def _unprotect_path(cell: str) -> str:
    return cell[len(PATH_ESCAPE) :] if cell.startswith(PATH_ESCAPE) else cell


def _unprotect_text(cell: str) -> str:
    return cell[len(TEXT_ESCAPE) :] if cell.startswith(TEXT_ESCAPE) else cell
