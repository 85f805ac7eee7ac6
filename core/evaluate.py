"""Scores of a labeling against ground-truth classes, for benchmarks and the ``evaluate`` command.

Training never calls this module. The ground truth of an image is the name
of the folder it sits in, so a folder of ``cat/`` and ``dog/`` sub-folders can
be labeled as if it were unsorted and then scored.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from core.json_files import write_json_atomic
from core.labels_csv import read_run_labels
from core.run_files import RunFiles

logger = logging.getLogger(__name__)


def clustering_accuracy(
    true_labels: Sequence[Hashable] | np.ndarray, cluster_ids: Sequence[int] | np.ndarray
) -> float:
    """Compute the accuracy under the best one-to-one map from clusters to true classes.

    The map is the Hungarian matching (``scipy.optimize.linear_sum_assignment``)
    that maximises the number of images whose cluster maps to their class. The
    numbers of clusters and classes may differ, and the images of a cluster left
    without a class count as wrong.

    Raises:
        ValueError: if the inputs are empty or have different lengths.
    """
    _check_lengths(true_labels, cluster_ids)
    # Rows are true classes and columns are clusters.
    counts = contingency_matrix(np.asarray(true_labels), np.asarray(cluster_ids))
    rows, columns = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, columns].sum() / counts.sum())


def evaluate_assignments(true_labels: Sequence[str], cluster_ids: np.ndarray) -> dict[str, Any]:
    """Score one head's cluster assignments against the true classes.

    Returns:
        ``acc`` (see :func:`clustering_accuracy`), ``nmi``, ``ami`` and ``ari``
        (scikit-learn's normalized and adjusted mutual information and adjusted
        Rand index), ``num_nonempty_classes`` (clusters with at least one
        image), ``num_images`` and ``num_true_classes``.

    Raises:
        ValueError: if the inputs are empty or have different lengths.
    """
    _check_lengths(true_labels, cluster_ids)
    truth = np.asarray(true_labels)
    clusters = np.asarray(cluster_ids)
    return {
        "acc": clustering_accuracy(truth, clusters),
        "nmi": float(normalized_mutual_info_score(truth, clusters)),
        "ami": float(adjusted_mutual_info_score(truth, clusters)),
        "ari": float(adjusted_rand_score(truth, clusters)),
        "num_nonempty_classes": int(np.unique(clusters).size),
        "num_images": int(truth.size),
        "num_true_classes": int(np.unique(truth).size),
    }


def evaluate_run(run_dir: Path) -> dict[str, Any]:
    """Score every head of a finished run and write the scores to its evaluation.json.

    The ground truth of an image is the last folder in its path, so
    ``cat/001.jpg`` and ``train/cat/002.jpg`` are both ``cat``. Images at the
    top of the folder get the class ``''``.

    Returns:
        ``{"heads": {"k10": scores, ...}, "primary": "k10"}``, with the scores
        of :func:`evaluate_assignments` for each head, named as in labels.csv.

    Raises:
        ValueError: if the run has no labels.csv, the file is invalid, or the
            images are not in at least 2 different folders.
    """
    files = RunFiles(Path(run_dir))
    if not files.root.is_dir():
        raise ValueError(f"run directory {run_dir} not found: give the --out directory of a label or train command.")
    table = read_run_labels(files)
    truth = _folder_labels(table.paths, files.labels)

    heads = {}
    for h, name in enumerate(table.head_names):
        heads[name] = evaluate_assignments(truth, table.classes[:, h])
        _log_scores(name, heads[name])
    result = {"heads": heads, "primary": table.head_names[0]}

    write_json_atomic(files.evaluation, result)
    return result


def _folder_labels(paths: Sequence[str], labels_file: Path) -> list[str]:
    if not paths:
        raise ValueError(f"{labels_file} lists no images: label a folder of images before evaluating.")
    truth = [PurePosixPath(path).parent.name for path in paths]
    folders = set(truth)
    if len(folders) < 2:
        folder = truth[0]
        place = f"the folder {folder!r}" if folder else "the top level of the image folder"
        raise ValueError(
            f"{labels_file}: all images are in {place}, but evaluation needs the images sorted into "
            "one sub-folder per true class."
        )

    num_top_level = truth.count("")
    if num_top_level:
        logger.warning(
            "%d images are at the top level of the image folder and are scored as one class named ''.",
            num_top_level,
        )
    return truth


def _log_scores(name: str, scores: dict[str, Any]) -> None:
    logger.info(
        "head %s: ACC %.4f, NMI %.4f, AMI %.4f, ARI %.4f, %d non-empty classes, %d true classes, %d images",
        name,
        scores["acc"],
        scores["nmi"],
        scores["ami"],
        scores["ari"],
        scores["num_nonempty_classes"],
        scores["num_true_classes"],
        scores["num_images"],
    )


def _check_lengths(
    true_labels: Sequence[Hashable] | np.ndarray, cluster_ids: Sequence[int] | np.ndarray
) -> None:
    if len(true_labels) != len(cluster_ids):
        raise ValueError(
            f"true_labels has {len(true_labels)} entries but cluster_ids has {len(cluster_ids)}: "
            "pass one of each per image."
        )
    if len(true_labels) == 0:
        raise ValueError("true_labels and cluster_ids are empty: pass at least one image.")
