"""User corrections to a run's labels, stored in ``RUN/edits.json`` and applied on top of labels.csv.

edits.json is a JSON list of edit records, applied in order. labels.csv is
never changed, so undoing an edit only removes its record. The records are::

    {"kind": "rename", "head": "k10", "class": 3, "name": "cats"}
    {"kind": "merge", "head": "k10", "class": 7, "into": 3}
    {"kind": "move", "head": "k10", "paths": ["cats/001.jpg"], "to": 3}
    {"kind": "reject_merge", "head": "k20", "class": 7, "into": 3}

``head`` is a head name of labels.csv (``k10`` for the class_k10 column).
A merge that accepts a suggestion of diagnostics.json carries
``"suggested": true``. A ``reject_merge`` record only stores that the user
declined such a suggestion, and changes no label. Every record may carry
a ``time`` in ISO 8601.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.labels_csv import LabelsTable, write_labels_csv
from core.thumbnails import UnsafePathError, check_relative_path

logger = logging.getLogger(__name__)

EDIT_KINDS = ("rename", "merge", "move", "reject_merge")
MAX_NAME_LENGTH = 80


@dataclass(frozen=True)
class Edit:
    """One correction of one head's labels.

    Attributes:
        kind: one of ``EDIT_KINDS``.
        head: head name, such as ``k10``.
        class_index: the class renamed, merged away or whose merge was rejected; -1 for a move.
        target: the class merged into or moved to; -1 for a rename.
        name: the new class name of a rename.
        paths: image paths of a move, relative to the image folder.
        suggested: whether a merge accepts a suggestion of diagnostics.json.
        time: when the edit was made, ISO 8601, or empty.
    """

    kind: str
    head: str
    class_index: int = -1
    target: int = -1
    name: str = ""
    paths: tuple[str, ...] = ()
    suggested: bool = False
    time: str = ""

    @classmethod
    def rename(cls, head: str, class_index: int, name: str) -> Edit:
        return cls("rename", head, class_index=int(class_index), name=name.strip())

    @classmethod
    def merge(cls, head: str, class_index: int, into: int, suggested: bool = False) -> Edit:
        return cls("merge", head, class_index=int(class_index), target=int(into), suggested=suggested)

    @classmethod
    def move(cls, head: str, paths: Sequence[str], to: int) -> Edit:
        return cls("move", head, target=int(to), paths=tuple(paths))

    @classmethod
    def reject_merge(cls, head: str, class_index: int, into: int) -> Edit:
        return cls("reject_merge", head, class_index=int(class_index), target=int(into), suggested=True)

    def describe(self) -> str:
        """Return a one-line description for the user, such as ``k10: merge class 7 into class 3``."""
        if self.kind == "rename":
            return f"{self.head}: rename class {self.class_index} to {self.name!r}"
        if self.kind == "merge":
            origin = " (suggested)" if self.suggested else ""
            return f"{self.head}: merge class {self.class_index} into class {self.target}{origin}"
        if self.kind == "move":
            return f"{self.head}: move {len(self.paths)} image(s) to class {self.target}"
        return f"{self.head}: keep class {self.class_index} apart from class {self.target} (suggestion rejected)"

    def to_json(self) -> dict[str, Any]:
        """Return the edit as a JSON record in the edits.json format."""
        record: dict[str, Any] = {"kind": self.kind, "head": self.head}
        if self.kind == "rename":
            record.update({"class": self.class_index, "name": self.name})
        elif self.kind == "move":
            record.update({"paths": list(self.paths), "to": self.target})
        else:
            record.update({"class": self.class_index, "into": self.target})
        if self.suggested and self.kind == "merge":
            record["suggested"] = True
        if self.time:
            record["time"] = self.time
        return record

    @classmethod
    def from_json(cls, record: Any) -> Edit:
        """Build an edit from one record of edits.json.

        Raises:
            ValueError: if the record is not an object of a known kind with fields of the right types,
                or a move names an absolute path or one containing ``..``.
        """
        if not isinstance(record, dict):
            raise ValueError(f"an edit must be a JSON object, got {record!r}")
        kind = record.get("kind")
        if kind not in EDIT_KINDS:
            raise ValueError(f"unknown edit kind {kind!r}; expected one of {', '.join(EDIT_KINDS)}")
        head = _field(record, "head", str)
        time = record.get("time", "")
        time = time if isinstance(time, str) else ""
        if kind == "rename":
            name = _field(record, "name", str)
            return cls(kind, head, class_index=_field(record, "class", int), name=name, time=time)
        if kind == "move":
            paths = _field(record, "paths", list)
            for path in paths:
                if not isinstance(path, str):
                    raise ValueError(f"move edit path {path!r} is not a string")
                check_relative_path(path)
            return cls(kind, head, target=_field(record, "to", int), paths=tuple(paths), time=time)
        return cls(
            kind, head, class_index=_field(record, "class", int), target=_field(record, "into", int),
            suggested=kind == "reject_merge" or record.get("suggested") is True, time=time,
        )


@dataclass(frozen=True)
class EditedLabels:
    """The model's labels with the edits applied.

    Attributes:
        table: the model's labels as read from labels.csv, unchanged.
        classes: (num_images, num_heads) int64 class of each image per head after the edits.
        names: per head, the user's name of each renamed class.
        ignored: one message per edit that no longer fits the labels and was skipped.
    """

    table: LabelsTable
    classes: np.ndarray
    names: tuple[dict[int, str], ...]
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def head_names(self) -> list[str]:
        return self.table.head_names

    def head_index(self, head: str) -> int:
        """Return the column of ``head`` in ``classes``.

        Raises:
            ValueError: if the run has no such head.
        """
        names = self.table.head_names
        if head not in names:
            raise ValueError(f"head {head!r} is not in this run; its heads are {', '.join(names)}")
        return names.index(head)

    def class_name(self, head: str, class_index: int) -> str:
        """Return the user's name of a class, or ``class N`` when it was never renamed."""
        return self.names[self.head_index(head)].get(int(class_index), default_class_name(class_index))

    def class_names(self, head: str) -> list[str]:
        """Return the name of every class of ``head``, in class order."""
        count = self.table.class_counts[self.head_index(head)]
        return [self.class_name(head, index) for index in range(count)]

    def class_sizes(self, head: str) -> np.ndarray:
        """Return (num_classes,) image counts of every class of ``head``."""
        index = self.head_index(head)
        return np.bincount(self.classes[:, index], minlength=self.table.class_counts[index])


def default_class_name(class_index: int) -> str:
    return f"class {int(class_index)}"


# ------------------------------------------------------------------ applying


def apply_edits(table: LabelsTable, edits: Sequence[Edit]) -> EditedLabels:
    """Apply ``edits`` in order to a copy of the model's labels.

    An edit that does not fit the labels (an unknown head or class, for example
    after the folder was labelled again with other heads) is skipped, logged, and
    listed in the result's ``ignored``. Paths of a move that are not in the
    labels are skipped the same way.
    """
    classes = np.array(table.classes, dtype=np.int64, copy=True)
    names: tuple[dict[int, str], ...] = tuple({} for _ in table.class_counts)
    rows_of_path: dict[str, int] = {}
    ignored: list[str] = []

    for number, edit in enumerate(edits, start=1):
        try:
            head = _head_index(table, edit.head)
            if edit.kind == "move" and not rows_of_path:
                rows_of_path = {path: row for row, path in enumerate(table.paths)}
            _apply_one(table, classes, names, rows_of_path, head, edit)
        except ValueError as error:
            message = f"edit {number} ({edit.describe()}) was skipped: {error}"
            logger.warning("%s", message)
            ignored.append(message)
    return EditedLabels(table, classes, names, tuple(ignored))


def _apply_one(
    table: LabelsTable,
    classes: np.ndarray,
    names: tuple[dict[int, str], ...],
    rows_of_path: dict[str, int],
    head: int,
    edit: Edit,
) -> None:
    count = table.class_counts[head]
    if edit.kind == "reject_merge":
        return
    if edit.kind == "rename":
        _check_class(edit.class_index, count, edit.head)
        names[head][edit.class_index] = edit.name
        return

    _check_class(edit.target, count, edit.head)
    if edit.kind == "merge":
        _check_class(edit.class_index, count, edit.head)
        classes[classes[:, head] == edit.class_index, head] = edit.target
        return

    rows = [rows_of_path[path] for path in edit.paths if path in rows_of_path]
    missing = len(edit.paths) - len(rows)
    classes[rows, head] = edit.target
    if missing:
        raise ValueError(f"{missing} of its {len(edit.paths)} images are not in labels.csv; the others were moved")


def _head_index(table: LabelsTable, head: str) -> int:
    names = table.head_names
    if head not in names:
        raise ValueError(f"the run has no head {head!r}; its heads are {', '.join(names)}")
    return names.index(head)


def _check_class(class_index: int, count: int, head: str) -> None:
    if not 0 <= class_index < count:
        raise ValueError(f"class {class_index} is outside head {head}'s classes 0 to {count - 1}")


# ------------------------------------------------------------ checking a new edit


def check_new_edit(edited: EditedLabels, edit: Edit) -> None:
    """Raise ValueError, with a message for the user, unless ``edit`` makes sense on top of ``edited``.

    Beyond what :func:`apply_edits` checks, a rename needs a short printable name
    not used by another class of the head, a merge needs two different classes
    and a non-empty source, and a move needs images that are in the labels.
    """
    head = edited.head_index(edit.head)
    count = edited.table.class_counts[head]
    if edit.kind == "rename":
        _check_class(edit.class_index, count, edit.head)
        _check_name(edited, edit)
        return

    _check_class(edit.target, count, edit.head)
    if edit.kind in ("merge", "reject_merge"):
        _check_class(edit.class_index, count, edit.head)
        if edit.class_index == edit.target:
            raise ValueError(f"class {edit.class_index} cannot be merged into itself; pick two different classes")
    if edit.kind == "merge" and not (edited.classes[:, head] == edit.class_index).any():
        raise ValueError(f"class {edit.class_index} of head {edit.head} has no images left to merge")
    if edit.kind == "move":
        if not edit.paths:
            raise ValueError("no images are selected; select the images to move first")
        known = set(edited.table.paths)
        unknown = [path for path in edit.paths if path not in known]
        if unknown:
            raise ValueError(f"{len(unknown)} selected image(s) are not in labels.csv, for example {unknown[0]!r}")


def _check_name(edited: EditedLabels, edit: Edit) -> None:
    name = edit.name
    if not name:
        raise ValueError("the new class name is empty; type a name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"the class name is {len(name)} characters long; use at most {MAX_NAME_LENGTH}")
    if any(unicodedata.category(character).startswith("C") for character in name):
        raise ValueError(f"the class name {name!r} contains a control character; use printable text")
    if edited.class_name(edit.head, edit.class_index) == name:
        raise ValueError(f"class {edit.class_index} of head {edit.head} is already named {name!r}; nothing to change")
    for index, other in enumerate(edited.class_names(edit.head)):
        if index != edit.class_index and other.casefold() == name.casefold():
            raise ValueError(
                f"class {index} of head {edit.head} is already named {other!r}; "
                "pick another name, or merge the two classes"
            )


# ----------------------------------------------------------------- the file


def load_edits(path: Path) -> list[Edit]:
    """Read edits.json; a missing file means no edits.

    Raises:
        ValueError: if the file is not a JSON list of valid edit records. The
            message names the file and the record.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the edits in {path}: {error}. Fix the file or move it away.") from error
    if not isinstance(records, list):
        raise ValueError(f"{path} must contain a JSON list of edits; fix the file or move it away")

    edits = []
    for number, record in enumerate(records, start=1):
        try:
            edits.append(Edit.from_json(record))
        except (ValueError, UnsafePathError) as error:
            raise ValueError(f"{path}: edit {number} is invalid: {error}. Fix the file or move it away.") from error
    return edits


def save_edits(path: Path, edits: Sequence[Edit]) -> None:
    """Write edits.json through a temporary file, so a reader never sees half a file."""
    path = Path(path)
    text = json.dumps([edit.to_json() for edit in edits], indent=1, ensure_ascii=False) + "\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def add_edit(path: Path, table: LabelsTable, edit: Edit) -> list[Edit]:
    """Check ``edit`` against the labels with the saved edits applied, then append it to edits.json.

    Returns the edits now stored.

    Raises:
        ValueError: if the edit does not make sense (see :func:`check_new_edit`),
            or the saved edits cannot be read.
    """
    edits = load_edits(path)
    check_new_edit(apply_edits(table, edits), edit)
    stamped = dataclasses.replace(edit, time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edits.append(stamped)
    save_edits(path, edits)
    logger.info("Saved edit %s to %s", stamped.describe(), path)
    return edits


def undo_last_edit(path: Path) -> Edit | None:
    """Remove the last edit from edits.json and return it, or None when there is none."""
    edits = load_edits(path)
    if not edits:
        return None
    removed = edits.pop()
    save_edits(path, edits)
    logger.info("Undid edit %s in %s", removed.describe(), path)
    return removed


def set_aside_edits(path: Path) -> Path:
    """Rename an unreadable edits.json to ``edits.json.broken-<time>`` and return the new path."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.broken-{stamp}")
    os.replace(path, target)
    logger.warning("Moved the unreadable edits file %s to %s", path, target)
    return target


def decided_suggestions(edits: Sequence[Edit]) -> set[tuple[str, int, int]]:
    """Return (head, class, into) of every merge suggestion the user accepted or rejected."""
    return {
        (edit.head, edit.class_index, edit.target)
        for edit in edits
        if edit.suggested and edit.kind in ("merge", "reject_merge")
    }


# ----------------------------------------------------------------- export


def export_labels_csv(path: Path, edited: EditedLabels, head: str) -> None:
    """Write the edited labels in the labels.csv format, with ``head`` as the primary head.

    The chosen head comes first, so the ``class`` and ``confidence`` columns copy
    it, and the other heads follow in their order. A ``class_name`` column contains
    the chosen head's class names. Confidences stay the model's own, also for
    images an edit moved.

    NOTE: when two heads have the same class count, reordering would rename
    their columns (``k10`` and ``k10_2``), so only the chosen head is written then.
    """
    chosen = edited.head_index(head)
    counts = edited.table.class_counts
    if len(set(counts)) == len(counts):
        order = [chosen] + [index for index in range(len(counts)) if index != chosen]
    else:
        order = [chosen]

    names = edited.class_names(head)
    write_labels_csv(
        path,
        edited.table.paths,
        edited.classes[:, order],
        edited.table.confidences[:, order],
        [counts[index] for index in order],
        extra_columns={"class_name": [names[index] for index in edited.classes[:, chosen]]},
    )


def _field(record: dict[str, Any], name: str, kind: type) -> Any:
    value = record.get(name)
    # bool is a subclass of int, but true is no class index.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r} must be of type {kind.__name__}, got {value!r}")
    return value
