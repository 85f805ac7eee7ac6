"""The Overview page's parts: run settings, class sizes per head, signs of trouble and diagnostics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from app.charts import class_size_figure
from app.state import file_stamp, load_config, load_run_edits
from app.widgets import escape
from core.edits import Edit, EditedLabels, add_edit, decided_suggestions, default_class_name
from core.run_files import RunFiles

logger = logging.getLogger(__name__)

# A head where one class contains more than this share of the images has probably collapsed.
DOMINANT_SHARE = 0.5


def trouble_signs(sizes: np.ndarray) -> list[str]:
    """Return warnings about one head's (num_classes,) class sizes: empty, single-image, dominant classes."""
    signs = []
    total = int(sizes.sum())
    empty = int((sizes == 0).sum())
    if empty:
        signs.append(f"{empty} of {len(sizes)} classes are empty.")
    single = int((sizes == 1).sum())
    if single:
        signs.append(f"{single} classes hold a single image." if single > 1 else "1 class holds a single image.")
    if total and sizes.max() / total > DOMINANT_SHARE:
        largest = int(sizes.argmax())
        signs.append(f"Class {largest} contains {sizes.max() / total:.0%} of the images.")
    return signs


def show_settings(run_dir: Path) -> None:
    config = load_config(run_dir).to_dict()
    main_settings = {name: config[name] for name in ("image_folder", "class_counts", "epochs", "time_budget",
                                              "batch_size", "backbone", "image_size", "device", "seed")}
    main_settings["class_counts"] = " ".join(str(count) for count in main_settings["class_counts"])
    table = pd.DataFrame({"setting": list(main_settings), "value": [str(value) for value in main_settings.values()]})
    st.dataframe(table, hide_index=True, width="stretch")
    with st.expander("All settings"):
        st.json(config)


def show_heads(edited: EditedLabels, with_signs: bool = True) -> None:
    """Show each head's class-size histogram, edits included, and with ``with_signs`` its signs of trouble.

    The page turns the signs off when diagnostics.json exists and no merge or
    move changed the class sizes, because its warnings then describe the same sizes.
    """
    for head in edited.head_names:
        sizes = edited.class_sizes(head)
        chart, notes = st.columns([3, 1])
        with chart:
            st.plotly_chart(class_size_figure(sizes, edited.class_names(head), head), key=f"sizes_{head}")
        with notes:
            st.metric(f"Non-empty classes of {head}", f"{int((sizes > 0).sum())} of {len(sizes)}")
            for sign in trouble_signs(sizes) if with_signs else []:
                st.warning(sign)


@st.cache_data(max_entries=4, show_spinner=False)
def _diagnostics(path: str, stamp: int) -> dict[str, Any] | None:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("Cannot read %s: %s", path, error)
        return None
    return value if isinstance(value, dict) else None


def load_diagnostics(run_dir: Path) -> dict[str, Any] | None:
    """Return diagnostics.json of the run, or None when it is missing or unreadable."""
    path = RunFiles(run_dir).diagnostics
    if not path.exists():
        return None
    return _diagnostics(str(path), file_stamp(path))


def show_diagnostics(
    run_dir: Path, edited: EditedLabels, diagnostics: dict[str, Any], before_edits: bool = False
) -> None:
    """Show per-head diagnostics, the recommended head, and merge suggestions to accept or reject.

    With ``before_edits``, a caption notes that the warnings predate the merges and moves.
    """
    recommended = diagnostics.get("recommended_head")
    if isinstance(recommended, str):
        st.success(f"Recommended head: {escape(recommended)}")
    if isinstance(diagnostics.get("recommendation_reason"), str):
        st.caption(escape(diagnostics["recommendation_reason"]))
    warnings = diagnostics.get("warnings") or []
    if warnings and before_edits:
        st.caption("These warnings describe the classes as assigned, before your merges and moves.")
    for warning in warnings:
        st.warning(escape(warning))

    table = _head_table(diagnostics.get("heads"))
    if table is not None:
        st.dataframe(table, width="stretch")
    others = {key: value for key, value in diagnostics.items()
              if key not in ("recommended_head", "recommendation_reason", "warnings", "heads", "merge_suggestions")}
    if others:
        with st.expander("All diagnostics"):
            st.json(others)
    _show_suggestions(run_dir, edited, diagnostics.get("merge_suggestions"))


def _head_table(heads: Any) -> pd.DataFrame | None:
    """Return one row per head with the scalar statistics; lists such as class sizes are left out."""
    if not isinstance(heads, dict) or not heads:
        return None
    rows = {
        str(head): {name: value for name, value in stats.items() if isinstance(value, (int, float, str, bool))}
        for head, stats in heads.items() if isinstance(stats, dict)
    }
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None


def _show_suggestions(run_dir: Path, edited: EditedLabels, suggestions: Any) -> None:
    items = [item for item in suggestions or [] if isinstance(item, dict) and item.get("head") in edited.head_names]
    merges = [item for item in items if _is_merge(item)]
    notes = [item for item in items if not _is_merge(item)]
    for item in notes:
        reason = item.get("reason") if isinstance(item.get("reason"), str) else "no reason given"
        st.info(escape(f"{item['head']}, class {item.get('class')}: {reason}"))
    if not merges:
        return

    decided = decided_suggestions(load_run_edits(run_dir))
    open_items = [item for item in merges if (item["head"], item["class"], item["into"]) not in decided]
    st.markdown(f"**Merge suggestions** ({len(open_items)} open, {len(merges) - len(open_items)} decided)")
    for number, item in enumerate(open_items):
        head, source, into = item["head"], item["class"], item["into"]
        text = f"{head}: merge {_named_class(edited, head, source)} into {_named_class(edited, head, into)}"
        if isinstance(item.get("similarity"), (int, float)):
            text += f", similarity {item['similarity']:.2f}"
        if isinstance(item.get("reason"), str):
            text += f". {item['reason']}"
        words, accept, reject = st.columns([6, 1, 1])
        words.write(escape(text))
        if accept.button("Accept", key=f"accept_{number}_{head}_{source}_{into}"):
            _save(run_dir, edited, Edit.merge(head, source, into, suggested=True))
        if reject.button("Reject", key=f"reject_{number}_{head}_{source}_{into}"):
            _save(run_dir, edited, Edit.reject_merge(head, source, into))


def _named_class(edited: EditedLabels, head: str, class_index: int) -> str:
    """Return ``class 3``, or ``cats (class 3)`` once the user has named it."""
    name = edited.class_name(head, class_index)
    return name if name == default_class_name(class_index) else f"{name} (class {class_index})"


def _is_merge(item: dict[str, Any]) -> bool:
    """Return whether a suggestion names two classes, so it can be accepted as a merge."""
    return all(isinstance(item.get(key), int) and not isinstance(item.get(key), bool) for key in ("class", "into"))


def _save(run_dir: Path, edited: EditedLabels, edit: Edit) -> None:
    try:
        add_edit(RunFiles(run_dir).edits, edited.table, edit)
    except ValueError as error:
        st.error(str(error))
        return
    st.rerun()
