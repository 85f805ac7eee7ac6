"""Label-free diagnostics of every head of a run, a recommended head, and merge suggestions.

A run trains several heads of different sizes at once, and a user without
labels cannot score them. This module describes each head from its own
assignments: how many classes hold images, how even their sizes are, how
confident the assignments are, and how well the heads agree with each other.

Agreement between a finer and a coarser head is measured on their contingency
table ``n[i, j]``, the number of images in fine class ``i`` and coarse class ``j``:

* ``nesting``: the share of images that sit in the majority parent of their
  fine class, ``sum_i max_j n[i, j] / N``. It is 1.0 when every fine class lies
  inside one coarse class.
* ``goodman_kruskal_lambda``: Goodman and Kruskal's lambda for predicting the
  coarse class from the fine class,
  ``(sum_i max_j n[i, j] - max_j n[., j]) / (N - max_j n[., j])``. It is
  nesting corrected for chance: 0 when knowing the fine class does not help
  beyond guessing the largest coarse class, 1 for a perfect nesting. So a coarse
  head with one giant class does not score well merely because most images
  fall into that class. It is ``None`` when all images share one coarse class.
* ``nmi``: scikit-learn's normalized mutual information of the two heads.

The recommendation rule
-----------------------
A head is *usable* when at most 10% of its classes are empty or tiny, because
a head that leaves classes unused has more classes than the images support.
For each head ``h``, ``refinement_lambda`` is the lambda with which the head of
the next larger class count nests into ``h`` (the lowest one when several
heads share that count).

1. Recommend the largest usable head whose ``refinement_lambda`` is at least 0.85.
2. If there is none, recommend the usable head after which nesting drops most,
   the head with the largest ``refinement_drop = refinement_lambda(h) -
   refinement_lambda(next larger head)``. The largest head has no larger head to
   check it, so 0.8 is used in place of its lambda. This fallback logs a warning.

Why nesting marks the right class count: when a head's classes are real
groups, a larger head splits each of them, so its classes nest. When a head is
already too large, its classes cut real groups at arbitrary places. The larger
head cuts them at other places, and its classes straddle several parents. So
nesting into a head stays high up to the right class count and drops after it.

``python -m bench.bench_heads --synthetic`` checks the rule on Gaussian
clusters on the unit sphere: 800 points in 16 dimensions from 5, 10 or 20
clusters, balanced or not, 5 seeds each, and k-means heads of 5, 10, 20 and
40 classes. With noise of standard deviation 0.125 or 0.25 per coordinate
(before the points are normalised) the rule found the true count in 57 of 60
cases. With 0.375, where clusters
overlap, it found 17 of 30.

Consequences of the rule:

* The largest head is not recommended while a smaller head is usable, because
  nothing checks it. Train one head larger than the number of classes you expect.
* Confidence is reported but not used, because the maximum softmax
  probability tends to fall as the class count grows, so it would compare
  head sizes more than how well they fit.
* When the recommended head's own lambda is below 0.5, the heads barely nest
  and the fallback warning adds that the choice is weak.
* When no usable head has a larger head to nest into it, the head with the fewest empty or
  tiny classes (then the fewest classes) is recommended with a warning. When
  all heads have the same class count, the primary head is recommended.

NOTE: the thresholds come from the synthetic check and have not yet been
checked on trained runs. ``python -m bench.bench_heads RUN`` prints the head the
rule picks next to every head's accuracy on a folder sorted by true class.

Doubtful classes
----------------
A non-empty class is *tiny* when it contains fewer images than 10% of the head's
mean class size ``N / C``, or fewer than 2 images. It has *low confidence*
when more than half of its images have a confidence below 0.5. Each tiny or
low-confidence class gets a merge suggestion: the other non-empty class whose
embedding centroid has the highest cosine similarity, preferring classes that
are not doubtful themselves. Centroids are the means of the class's unit-norm
embeddings, normalised again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from core.hierarchy import class_tree, coarse_to_fine_order, contingency_table, validate_assignments
from core.json_files import write_json_atomic
from core.labels_csv import read_run_labels
from core.run_files import RunFiles

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = RunFiles(Path()).diagnostics.name
CLASS_TREE_FILE = RunFiles(Path()).class_tree.name

# Thresholds for doubtful classes and for the recommendation rule, explained in the module docstring.
TINY_SHARE = 0.1
MIN_CLASS_SIZE = 2
LOW_CONFIDENCE = 0.5
LOW_CONFIDENCE_MAJORITY = 0.5
MAX_UNUSED_SHARE = 0.1
MIN_REFINEMENT_LAMBDA = 0.85
LARGEST_HEAD_LAMBDA = 0.8
WEAK_NESTING_LAMBDA = 0.5
GIANT_CLASS_SHARE = 0.5
CONFIDENCE_TOLERANCE = 1e-6

RULE = (
    f"Recommend the largest head with at most {MAX_UNUSED_SHARE:.0%} of its classes empty or tiny "
    f"into which the next larger head nests with a Goodman-Kruskal lambda of at least "
    f"{MIN_REFINEMENT_LAMBDA}, or else the head after which that lambda drops most."
)


class Recommendation(NamedTuple):
    """The recommended head, a sentence that explains the choice, and a warning for a fallback."""

    head: str
    reason: str
    warning: str | None


def compute_diagnostics(
    classes: np.ndarray,
    confidences: np.ndarray,
    class_counts: Sequence[int],
    head_names: Sequence[str],
    embeddings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Describe every head, compare the heads, recommend one and suggest merges of doubtful classes.

    Args:
        classes: (num_images, num_heads) integer class index of each image per head.
        confidences: (num_images, num_heads) confidence in [0, 1] of each image per head.
        class_counts: number of classes of each head, in column order.
        head_names: name of each head, such as ``k10``, in column order. The
            first head is the primary one.
        embeddings: (num_images, embedding_dim) embedding of each image, or
            ``None``. Without embeddings the merge suggestions have no target.

    Returns:
        A JSON-serialisable dict with these keys:

        * ``num_images`` and ``primary_head``.
        * ``heads``: statistics by head name, in column order. Each list in
          them is indexed by class.
        * ``agreement``: ``agreement[fine][coarse]`` for every finer head and
          every coarser head.
        * ``recommended_head``, ``rule`` and ``recommendation_reason``.
        * ``merge_suggestions``, sorted by head and class.
        * ``warnings``: the odd but legal findings, which are also logged.

    Raises:
        ValueError: if the arrays have the wrong shape or type, a class is out
            of range, a confidence is outside [0, 1], or an embedding is not finite.
    """
    classes = validate_assignments(classes, head_names, class_counts)
    confidences = _validated_confidences(confidences, classes.shape)
    if embeddings is not None:
        embeddings = _validated_embeddings(embeddings, classes.shape[0])
    names = list(head_names)
    counts = [int(count) for count in class_counts]

    # Per-head statistics, then the refinement check that needs the agreement.
    heads = {name: head_statistics(classes[:, h], confidences[:, h], counts[h]) for h, name in enumerate(names)}
    agreement = head_agreement(classes, names, counts)
    _add_refinement(heads, agreement, names, counts)

    # Recommendation, merge suggestions and the warnings collected on the way.
    recommendation = recommend_head(heads, names, counts)
    merges = merge_suggestions(classes, heads, names, embeddings)
    warnings = [message for name in names for message in _head_warnings(name, heads[name])]
    if recommendation.warning:
        warnings.append(recommendation.warning)
    if embeddings is None:
        warnings.append("No embeddings were found, so the merge suggestions have no target class.")
    for message in warnings:
        logger.warning("%s", message)

    return {
        "num_images": int(classes.shape[0]),
        "primary_head": names[0],
        "heads": heads,
        "agreement": agreement,
        "recommended_head": recommendation.head,
        "rule": RULE,
        "recommendation_reason": recommendation.reason,
        "merge_suggestions": merges,
        "warnings": warnings,
    }


def write_diagnostics(run_dir: Path) -> dict[str, Any]:
    """Compute the diagnostics of a labeled run and write diagnostics.json and class_tree.json into it.

    Reads ``labels.csv`` and, if present, ``embeddings.npy``. Each JSON file is
    written to a temporary file first and then renamed, so readers never see
    half a file.

    Returns:
        The diagnostics, as :func:`compute_diagnostics` returns them.

    Raises:
        ValueError: if the run has no labels.csv, the file is invalid, or
            embeddings.npy does not have one row per image of labels.csv.
    """
    run_dir = Path(run_dir)
    files = RunFiles(run_dir)
    table = read_run_labels(files)
    embeddings = _load_embeddings(files.embeddings, len(table.paths))

    diagnostics = compute_diagnostics(
        table.classes, table.confidences, table.class_counts, table.head_names, embeddings
    )
    tree = class_tree(table.classes, table.head_names, table.class_counts)
    write_json_atomic(files.diagnostics, diagnostics, allow_nan=False)
    write_json_atomic(files.class_tree, tree, allow_nan=False)
    logger.info("Wrote %s and %s", DIAGNOSTICS_FILE, CLASS_TREE_FILE)
    return diagnostics


# ------------------------------------------------------------ per-head statistics


def head_statistics(classes: np.ndarray, confidences: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Describe the class sizes and confidences of one head.

    Args:
        classes: (num_images,) class index of each image, in ``[0, num_classes)``.
        confidences: (num_images,) confidence of each image, in [0, 1].
        num_classes: the head's number of classes.

    Returns:
        Counts, the lists ``empty_classes`` and ``tiny_classes``, size
        statistics, confidence statistics, and per-class lists indexed by class
        with ``None`` for empty classes. ``size_gini`` counts empty classes too.
        ``size_entropy`` is the entropy of the class shares divided by
        ``log(num_classes)``, so 1.0 means equal sizes. ``usable`` is the first
        check of the recommendation rule.
    """
    sizes = np.bincount(classes, minlength=num_classes)
    nonempty = sizes > 0
    tiny = nonempty & (sizes < tiny_size_limit(classes.size, num_classes))
    low_shares = _class_means(classes, (confidences < LOW_CONFIDENCE).astype(np.float64), sizes)
    unused_share = float((~nonempty | tiny).sum() / num_classes)

    return {
        "num_classes": num_classes,
        "num_nonempty_classes": int(nonempty.sum()),
        "empty_classes": np.flatnonzero(~nonempty).tolist(),
        "tiny_classes": np.flatnonzero(tiny).tolist(),
        "class_sizes": sizes.tolist(),
        "smallest_class_size": int(sizes[nonempty].min()),
        "largest_class_size": int(sizes.max()),
        "largest_class_share": float(sizes.max() / classes.size),
        "size_gini": gini(sizes),
        "size_entropy": normalized_entropy(sizes),
        "confidence_mean": float(confidences.mean()),
        "confidence_std": float(confidences.std()),
        "low_confidence_share": float((confidences < LOW_CONFIDENCE).mean()),
        "class_confidence_mean": _class_means(classes, confidences.astype(np.float64), sizes),
        "class_low_confidence_share": low_shares,
        "low_confidence_classes": [c for c, share in enumerate(low_shares) if _is_low_confidence(share)],
        "unused_class_share": unused_share,
        "usable": unused_share <= MAX_UNUSED_SHARE,
    }


def tiny_size_limit(num_images: int, num_classes: int) -> float:
    """Return the size below which a non-empty class counts as tiny."""
    return max(float(MIN_CLASS_SIZE), TINY_SHARE * num_images / num_classes)


def gini(sizes: np.ndarray) -> float:
    """Compute the Gini coefficient of class sizes: 0 for equal sizes, ``(C - 1) / C`` for one full class.

    Args:
        sizes: (num_classes,) non-negative class sizes with a positive sum.
    """
    ordered = np.sort(np.asarray(sizes, dtype=np.float64))
    count = ordered.size
    ranks = np.arange(1, count + 1)
    return float(2.0 * (ranks * ordered).sum() / (count * ordered.sum()) - (count + 1) / count)


def normalized_entropy(sizes: np.ndarray) -> float:
    """Compute the entropy of the class shares divided by its maximum ``log(C)``, or 1.0 when ``C`` is 1.

    Args:
        sizes: (num_classes,) non-negative class sizes with a positive sum.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.size == 1:
        return 1.0
    shares = sizes[sizes > 0] / sizes.sum()
    return float(-(shares * np.log(shares)).sum() / np.log(sizes.size))


def _class_means(classes: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> list[float | None]:
    sums = np.bincount(classes, weights=values, minlength=sizes.size)
    return [float(sums[c] / sizes[c]) if sizes[c] else None for c in range(sizes.size)]


def _is_low_confidence(low_share: float | None) -> bool:
    return low_share is not None and low_share > LOW_CONFIDENCE_MAJORITY


def _head_warnings(name: str, stats: dict[str, Any]) -> list[str]:
    """Describe the odd but legal findings about one head."""
    num_classes = stats["num_classes"]
    messages = []
    if stats["empty_classes"]:
        messages.append(f"Head {name} leaves {len(stats['empty_classes'])} of its {num_classes} classes empty.")
    tiny = stats["tiny_classes"]
    if tiny:
        noun = "class" if len(tiny) == 1 else "classes"
        messages.append(f"Head {name} has {len(tiny)} tiny {noun}: {tiny}.")
    if num_classes > 2 and stats["largest_class_share"] > GIANT_CLASS_SHARE:
        largest = int(np.argmax(stats["class_sizes"]))
        messages.append(f"Class {largest} of head {name} contains {stats['largest_class_share']:.0%} of the images.")
    return messages


# --------------------------------------------------------------------- agreement


def head_agreement(
    classes: np.ndarray, head_names: Sequence[str], class_counts: Sequence[int]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Measure how each head nests into every coarser head.

    Heads are ordered by class count, and a head with the same count as
    another counts as finer when it comes later in column order.

    Args:
        classes: (num_images, num_heads) integer class index of each image per head.

    Returns:
        ``agreement[fine][coarse]`` with ``nesting``, ``goodman_kruskal_lambda``
        and ``nmi`` (see the module docstring), fine heads from coarse to fine.
    """
    order = coarse_to_fine_order(class_counts)
    agreement: dict[str, dict[str, dict[str, float | None]]] = {}
    for position, fine in enumerate(order[1:], start=1):
        agreement[head_names[fine]] = {
            head_names[coarse]: pair_agreement(
                classes[:, fine], classes[:, coarse], int(class_counts[fine]), int(class_counts[coarse])
            )
            for coarse in order[:position]
        }
    return agreement


def pair_agreement(
    fine: np.ndarray, coarse: np.ndarray, num_fine_classes: int, num_coarse_classes: int
) -> dict[str, float | None]:
    """Compute nesting, Goodman and Kruskal's lambda and NMI of a fine head against a coarse one.

    Args:
        fine: (num_images,) class index of each image in the finer head.
        coarse: (num_images,) class index of each image in the coarser head.
    """
    table = contingency_table(fine, coarse, num_fine_classes, num_coarse_classes)
    num_images = int(table.sum())
    majority_total = int(table.max(axis=1).sum())
    largest_coarse = int(table.sum(axis=0).max())
    if largest_coarse == num_images:
        lambda_value = None
    else:
        lambda_value = (majority_total - largest_coarse) / (num_images - largest_coarse)
    return {
        "nesting": majority_total / num_images,
        "goodman_kruskal_lambda": lambda_value,
        "nmi": float(normalized_mutual_info_score(coarse, fine)),
    }


def _add_refinement(
    heads: dict[str, dict[str, Any]],
    agreement: dict[str, dict[str, dict[str, float | None]]],
    head_names: Sequence[str],
    class_counts: Sequence[int],
) -> None:
    """Store ``refined_by``, ``refinement_lambda`` and ``refinement_drop`` in each head's statistics."""
    next_heads = {name: _next_larger_heads(name, head_names, class_counts) for name in head_names}
    for name in head_names:
        lambdas = [agreement[finer][name]["goodman_kruskal_lambda"] for finer in next_heads[name]]
        known = [value for value in lambdas if value is not None]
        heads[name]["refined_by"] = next_heads[name]
        heads[name]["refinement_lambda"] = min(known) if known else None

    for name in head_names:
        own = heads[name]["refinement_lambda"]
        after = [heads[finer]["refinement_lambda"] for finer in next_heads[name]]
        if own is None:
            drop = None
        elif all(not next_heads[finer] for finer in next_heads[name]):
            # The next larger head is the largest, so nothing measures how it nests.
            drop = own - LARGEST_HEAD_LAMBDA
        else:
            # A next head whose lambda is unknown puts all images into one class, so nothing nests.
            drop = own - min(0.0 if value is None else value for value in after)
        heads[name]["refinement_drop"] = drop


def _next_larger_heads(name: str, head_names: Sequence[str], class_counts: Sequence[int]) -> list[str]:
    """Return the heads with the smallest class count above the count of ``name``."""
    count = class_counts[list(head_names).index(name)]
    larger = [c for c in class_counts if c > count]
    if not larger:
        return []
    return [n for n, c in zip(head_names, class_counts, strict=True) if c == min(larger)]


# ---------------------------------------------------------------- recommendation


def recommend_head(
    heads: dict[str, dict[str, Any]], head_names: Sequence[str], class_counts: Sequence[int]
) -> Recommendation:
    """Pick a head by the rule in the module docstring.

    Args:
        heads: statistics by head name, as :func:`compute_diagnostics` builds
            them, including ``usable``, ``refinement_lambda`` and ``refinement_drop``.
        head_names: name of each head, in column order.
        class_counts: number of classes of each head, in column order.
    """
    count_of = dict(zip(head_names, class_counts, strict=True))
    if len(set(class_counts)) == 1:
        return Recommendation(
            head_names[0], f"Every head has {class_counts[0]} classes, so the primary head is recommended.", None
        )

    checked = [n for n in head_names if heads[n]["usable"] and heads[n]["refinement_drop"] is not None]
    if not checked:
        best = min(head_names, key=lambda n: (heads[n]["unused_class_share"], count_of[n]))
        reason = (
            f"No head both uses at least {1 - MAX_UNUSED_SHARE:.0%} of its classes and has a larger head "
            f"to check it, so {best} is recommended: it leaves the smallest share of its classes empty or tiny "
            f"({heads[best]['unused_class_share']:.0%})."
        )
        return Recommendation(best, reason, reason)

    passing = [n for n in checked if heads[n]["refinement_lambda"] >= MIN_REFINEMENT_LAMBDA]
    if passing:
        best = max(passing, key=lambda n: count_of[n])
        stats = heads[best]
        finer = ", ".join(stats["refined_by"])
        reason = (
            f"{best} is the largest head whose classes the next larger head splits cleanly: {finer} nests into "
            f"it with lambda {stats['refinement_lambda']:.2f} (at least {MIN_REFINEMENT_LAMBDA} needed). "
            + _lambda_meaning(stats["refinement_lambda"], best, finer)
        )
        return Recommendation(best, reason, None)

    best = max(checked, key=lambda n: (heads[n]["refinement_drop"], count_of[n]))
    stats = heads[best]
    after = stats["refinement_lambda"] - stats["refinement_drop"]
    finer = ", ".join(stats["refined_by"])
    finest = sorted({n for head in stats["refined_by"] for n in heads[head]["refined_by"]})
    if finest:
        compared = f"{after:.2f} for {', '.join(finest)} into {finer}"
    else:
        compared = f"{after:.2f} assumed for {finer}, the largest head, which no larger head checks"
    if len(checked) == 1:
        basis = (f"it is the only head that uses at least {1 - MAX_UNUSED_SHARE:.0%} of its classes and has a "
               "larger head to check it")
    elif stats["refinement_drop"] > 0:
        basis = "nesting drops most after it"
    else:
        basis = "nesting drops after no head, and changes least after it"
    reason = (
        f"No head has lambda {MIN_REFINEMENT_LAMBDA} or more, so {best} is recommended because {basis}: "
        f"{finer} nests into it with lambda {stats['refinement_lambda']:.2f}, against {compared}. "
        + _lambda_meaning(stats["refinement_lambda"], best, finer)
    )
    if stats["refinement_lambda"] < WEAK_NESTING_LAMBDA:
        return Recommendation(best, reason, f"{reason} The heads barely nest, so this choice is weak.")
    return Recommendation(best, reason, reason)


def _lambda_meaning(value: float, coarse: str, finer: str) -> str:
    return (f"Lambda {value:.2f} means that knowing an image's {finer} class removes {value:.0%} of the "
            f"errors made when guessing its {coarse} class.")


# ------------------------------------------------------------- merge suggestions


def merge_suggestions(
    classes: np.ndarray,
    heads: dict[str, dict[str, Any]],
    head_names: Sequence[str],
    embeddings: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Suggest merging each tiny or low-confidence class into the class with the nearest centroid.

    Args:
        classes: (num_images, num_heads) integer class index of each image per head.
        heads: statistics by head name, as :func:`head_statistics` returns them.
        head_names: name of each head, in column order.
        embeddings: (num_images, embedding_dim) embedding of each image, or
            ``None``, which leaves ``into`` and ``similarity`` as ``None``.

    Returns:
        ``{"head", "class", "size", "into", "similarity", "reason"}`` for each
        doubtful class, in column order of the heads and then by class.
    """
    suggestions = []
    for h, name in enumerate(head_names):
        stats = heads[name]
        doubtful = sorted(set(stats["tiny_classes"]) | set(stats["low_confidence_classes"]))
        if not doubtful:
            continue
        similarities = None if embeddings is None else _centroid_similarities(classes[:, h], embeddings, stats)
        for class_index in doubtful:
            into, similarity = _nearest_class(class_index, similarities, stats, doubtful)
            suggestions.append(
                {
                    "head": name,
                    "class": class_index,
                    "size": stats["class_sizes"][class_index],
                    "into": into,
                    "similarity": similarity,
                    "reason": _doubt_reason(class_index, stats),
                }
            )
    return suggestions


def _centroid_similarities(classes: np.ndarray, embeddings: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Return the (num_classes, num_classes) cosine similarities of the class centroids."""
    centroids = np.zeros((stats["num_classes"], embeddings.shape[1]), dtype=np.float64)
    np.add.at(centroids, classes, embeddings)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids = np.divide(centroids, norms, out=np.zeros_like(centroids), where=norms > 0)
    return centroids @ centroids.T


def _nearest_class(
    class_index: int, similarities: np.ndarray | None, stats: dict[str, Any], doubtful: list[int]
) -> tuple[int | None, float | None]:
    """Pick the most similar other non-empty class, preferring classes that are not doubtful."""
    if similarities is None:
        return None, None
    others = [c for c, size in enumerate(stats["class_sizes"]) if size > 0 and c != class_index]
    sound = [c for c in others if c not in doubtful]
    candidates = sound or others
    if not candidates:
        return None, None
    best = max(candidates, key=lambda c: similarities[class_index, c])
    return best, float(similarities[class_index, best])


def _doubt_reason(class_index: int, stats: dict[str, Any]) -> str:
    reasons = []
    size = stats["class_sizes"][class_index]
    if class_index in stats["tiny_classes"]:
        reasons.append(f"tiny: {size} image{'s' if size != 1 else ''}")
    if class_index in stats["low_confidence_classes"]:
        share = stats["class_low_confidence_share"][class_index]
        reasons.append(f"low confidence: {share:.0%} of images below {LOW_CONFIDENCE}")
    return "; ".join(reasons)


# ------------------------------------------------------------ validation and files


def _validated_confidences(confidences: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    confidences = np.asarray(confidences)
    if confidences.shape != shape:
        raise ValueError(
            f"confidences has shape {confidences.shape}, but classes has shape {shape}: "
            "pass one confidence per image and head."
        )
    if not np.issubdtype(confidences.dtype, np.number):
        raise ValueError(f"confidences has dtype {confidences.dtype}: pass a float array of probabilities.")
    inside = (confidences >= -CONFIDENCE_TOLERANCE) & (confidences <= 1.0 + CONFIDENCE_TOLERANCE)
    if not inside.all():
        image, head = np.argwhere(~inside)[0]
        raise ValueError(
            f"confidence {confidences[image, head]} of image {image} in head {head} is outside [0, 1]: "
            "pass probabilities."
        )
    return np.clip(confidences.astype(np.float64), 0.0, 1.0)


def _validated_embeddings(embeddings: np.ndarray, num_images: int) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != num_images or embeddings.shape[1] == 0:
        raise ValueError(
            f"embeddings has shape {embeddings.shape}: pass a (num_images, embedding_dim) array with "
            f"{num_images} rows, in the order of classes."
        )
    if not np.issubdtype(embeddings.dtype, np.number) or not np.isfinite(embeddings).all():
        raise ValueError("embeddings contains values that are not finite numbers: label the folder again.")
    return embeddings.astype(np.float64)


def _load_embeddings(path: Path, num_images: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    embeddings = np.load(path, allow_pickle=False)
    if embeddings.ndim != 2 or embeddings.shape[0] != num_images:
        raise ValueError(
            f"{path} has shape {embeddings.shape}, but labels.csv lists {num_images} images: "
            "label the folder again so that both files come from the same assignment."
        )
    return embeddings
