"""Check the recommended-head rule of ``core.diagnostics`` against true classes.

Two modes, run from the repository root:

``python -m bench.bench_heads RUN``
    RUN is a labeled run directory whose images sit in one sub-folder per true
    class, such as a run on the CIFAR-10 test folder trained with
    ``--classes 5 10 20 40``. Writes diagnostics.json, class_tree.json and
    evaluation.json into RUN and prints a markdown table with every head's
    diagnostics and its ACC and NMI, the head the rule picks and the head with
    the best ACC.

``python -m bench.bench_heads --synthetic``
    Runs the rule on Gaussian clusters on the unit sphere, with k-means heads
    of 5, 10, 20 and 40 classes, and prints how often it picks the true number
    of clusters. It took 15 s on two CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.cluster import KMeans

from core.diagnostics import compute_diagnostics, write_diagnostics
from core.evaluate import evaluate_run

logger = logging.getLogger("bench.bench_heads")

SYNTHETIC_HEADS = (5, 10, 20, 40)
SYNTHETIC_CLUSTERS = (5, 10, 20)
SYNTHETIC_NOISE = (0.125, 0.25, 0.375)
SYNTHETIC_SEEDS = range(5)
SYNTHETIC_POINTS = 800
SYNTHETIC_DIMENSIONS = 16


# --------------------------------------------------------------------- real runs


def bench_run(run_dir: Path) -> str:
    """Compute the diagnostics and the scores of a run and return them as a markdown report.

    Raises:
        ValueError: if the run has no valid labels.csv, or its images are not
            sorted into at least 2 sub-folders.
    """
    diagnostics = write_diagnostics(run_dir)
    scores = evaluate_run(run_dir)["heads"]
    return run_report(diagnostics, scores)


def run_report(diagnostics: dict[str, Any], scores: dict[str, dict[str, Any]]) -> str:
    """Format one markdown row per head, then the rule's pick and the best head by ACC."""
    recommended = diagnostics["recommended_head"]
    lines = [
        "| head | classes | non-empty | tiny | largest class | size entropy | mean confidence "
        "| lambda into it | ACC | NMI | rule |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, stats in diagnostics["heads"].items():
        lines.append(
            f"| {name} | {stats['num_classes']} | {stats['num_nonempty_classes']} "
            f"| {len(stats['tiny_classes'])} | {stats['largest_class_share']:.1%} "
            f"| {stats['size_entropy']:.3f} | {stats['confidence_mean']:.3f} "
            f"| {_format_optional(stats['refinement_lambda'])} "
            f"| {scores[name]['acc']:.4f} | {scores[name]['nmi']:.4f} "
            f"| {'picked' if name == recommended else ''} |"
        )

    best = max(scores, key=lambda name: scores[name]["acc"])
    lines += [
        "",
        f"The rule picks {recommended} (ACC {scores[recommended]['acc']:.4f}, NMI {scores[recommended]['nmi']:.4f}). "
        f"The best head by ACC is {best} (ACC {scores[best]['acc']:.4f}).",
        "",
        f"Reason: {diagnostics['recommendation_reason']}",
    ]
    return "\n".join(lines) + "\n"


def _format_optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------- synthetic data


def synthetic_points(num_clusters: int, noise: float, seed: int, balanced: bool) -> np.ndarray:
    """Draw unit-norm points around random unit-norm cluster centres.

    Unbalanced cluster sizes are drawn from a Dirichlet distribution with
    concentration 5. ``noise`` is the standard deviation per coordinate before
    the points are normalised.

    Returns:
        (SYNTHETIC_POINTS, SYNTHETIC_DIMENSIONS) float64 points.
    """
    rng = np.random.default_rng(seed + (100 if balanced else 0))
    centres = rng.normal(size=(num_clusters, SYNTHETIC_DIMENSIONS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if balanced:
        truth = np.arange(SYNTHETIC_POINTS) % num_clusters
    else:
        truth = rng.choice(num_clusters, SYNTHETIC_POINTS, p=rng.dirichlet(np.full(num_clusters, 5.0)))
    points = centres[truth] + noise * rng.normal(size=(SYNTHETIC_POINTS, SYNTHETIC_DIMENSIONS))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def synthetic_pick(points: np.ndarray, seed: int, class_counts: Sequence[int] = SYNTHETIC_HEADS) -> str:
    """Cluster ``points`` (num_points, dim) with k-means once per class count and return the rule's pick."""
    classes = np.stack(
        [KMeans(count, n_init=1, random_state=seed).fit_predict(points) for count in class_counts], axis=1
    )
    confidences = np.ones(classes.shape)
    names = [f"k{count}" for count in class_counts]
    return compute_diagnostics(classes, confidences, class_counts, names, points)["recommended_head"]


def synthetic_report() -> str:
    """Run the rule on every synthetic case and return a markdown table of the hits per noise level."""
    # The rule's warnings repeat for every case and would bury the table.
    logging.getLogger("core.diagnostics").setLevel(logging.ERROR)
    lines = ["| noise | clusters | true count picked | picks |", "|---:|---:|---:|---|"]
    for noise in SYNTHETIC_NOISE:
        for num_clusters in SYNTHETIC_CLUSTERS:
            picks = [
                synthetic_pick(synthetic_points(num_clusters, noise, seed, balanced), seed)
                for seed in SYNTHETIC_SEEDS
                for balanced in (True, False)
            ]
            hits = picks.count(f"k{num_clusters}")
            lines.append(f"| {noise} | {num_clusters} | {hits} of {len(picks)} | {' '.join(picks)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_heads", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="labeled run directory, images in one folder per class")
    parser.add_argument("--synthetic", action="store_true", help="check the rule on synthetic clusters instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.synthetic == (args.run is not None):
        parser.error("pass either a run directory or --synthetic")
    try:
        report = synthetic_report() if args.synthetic else bench_run(args.run)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
