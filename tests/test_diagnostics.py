import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

from core.diagnostics import (
    CLASS_TREE_FILE,
    DIAGNOSTICS_FILE,
    compute_diagnostics,
    gini,
    head_statistics,
    merge_suggestions,
    normalized_entropy,
    pair_agreement,
    recommend_head,
    write_diagnostics,
)
from core.hierarchy import class_tree
from core.labels_csv import head_names, write_labels_csv


def _diagnose(columns: list[list[int]], counts: list[int], confidence: float = 0.9, embeddings=None) -> dict:
    """Run compute_diagnostics on heads given as one list of classes per head."""
    classes = np.array(columns, dtype=np.int64).T
    confidences = np.full(classes.shape, confidence)
    return compute_diagnostics(classes, confidences, counts, head_names(counts), embeddings)


def _unit_vectors(degrees: list[float]) -> np.ndarray:
    """Return (len(degrees), 2) unit vectors at the given angles."""
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# ----------------------------------------------------------- size statistics


@pytest.mark.parametrize(
    "sizes, expected",
    [([5, 5, 5, 5], 0.0), ([0, 0, 0, 20], 0.75), ([1, 3], 0.25), ([1, 1, 1, 17], 0.6), ([7], 0.0)],
)
def test_gini_known_values(sizes, expected):
    assert gini(np.array(sizes)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        ([5, 5, 5, 5], 1.0),
        ([0, 0, 0, 20], 0.0),
        ([1, 3], -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)),
        ([7], 1.0),
    ],
)
def test_normalized_entropy_known_values(sizes, expected):
    assert normalized_entropy(np.array(sizes)) == pytest.approx(expected)


def test_head_statistics_confidences():
    stats = head_statistics(np.array([0, 0, 1, 1]), np.array([0.2, 0.4, 0.6, 0.8]), 2)

    assert stats["confidence_mean"] == pytest.approx(0.5)
    assert stats["confidence_std"] == pytest.approx(math.sqrt(0.05))
    assert stats["low_confidence_share"] == pytest.approx(0.5)
    assert stats["class_confidence_mean"] == pytest.approx([0.3, 0.7])
    assert stats["class_low_confidence_share"] == pytest.approx([1.0, 0.0])
    assert stats["low_confidence_classes"] == [0]


def test_head_with_empty_classes(caplog):
    with caplog.at_level(logging.WARNING, logger="core.diagnostics"):
        result = _diagnose([[0, 0, 1, 1, 3, 3]], [5])
    stats = result["heads"]["k5"]

    assert stats["num_nonempty_classes"] == 3
    assert stats["empty_classes"] == [2, 4]
    assert stats["class_sizes"] == [2, 2, 0, 2, 0]
    assert stats["smallest_class_size"] == 2
    assert stats["unused_class_share"] == pytest.approx(0.4)
    assert stats["usable"] is False
    assert stats["size_gini"] == pytest.approx(0.4)
    assert "Head k5 leaves 2 of its 5 classes empty." in result["warnings"]
    assert "Head k5 leaves 2 of its 5 classes empty." in caplog.text


def test_head_with_one_giant_class(caplog):
    classes = [0] * 17 + [1, 2, 3]
    with caplog.at_level(logging.WARNING, logger="core.diagnostics"):
        result = _diagnose([classes], [4])
    stats = result["heads"]["k4"]

    assert stats["num_nonempty_classes"] == 4
    assert stats["largest_class_size"] == 17
    assert stats["largest_class_share"] == pytest.approx(0.85)
    assert stats["smallest_class_size"] == 1
    assert stats["size_gini"] == pytest.approx(0.6)
    assert stats["size_entropy"] < 0.5
    assert stats["tiny_classes"] == [1, 2, 3]
    assert "Class 0 of head k4 contains 85% of the images." in result["warnings"]
    assert "Head k4 has 3 tiny classes: [1, 2, 3]." in caplog.text


@pytest.mark.parametrize(
    "sizes, tiny",
    [
        ([97, 2, 1], [1, 2]),
        ([50, 46, 4], []),
        ([50, 47, 3], [2]),
        ([25, 25, 25, 23, 2], []),
        ([25, 25, 25, 24, 1], [4]),
    ],
    ids=[
        "three_classes_two_tiny",
        "three_classes_above_limit",
        "three_classes_below_limit",
        "five_classes_at_minimum",
        "five_classes_single_image",
    ],
)
def test_tiny_classes_threshold(sizes, tiny):
    # With 100 images the limit is max(2, 0.1 * 100 / num_classes): 3.33 for 3 classes and 2 for 5.
    classes = np.repeat(np.arange(len(sizes)), sizes)
    stats = head_statistics(classes, np.full(classes.size, 0.9), len(sizes))

    assert stats["tiny_classes"] == tiny


# ------------------------------------------------------------------- agreement


def test_heads_that_nest_perfectly():
    coarse = [0, 0, 0, 0, 1, 1, 1, 1]
    fine = [0, 0, 1, 1, 2, 2, 3, 3]
    result = _diagnose([coarse, fine], [2, 4])
    pair = result["agreement"]["k4"]["k2"]

    assert pair["nesting"] == 1.0
    assert pair["goodman_kruskal_lambda"] == 1.0
    assert pair["nmi"] == pytest.approx(2 / 3)


def test_heads_that_do_not_nest():
    coarse = [0, 0, 0, 0, 1, 1, 1, 1]
    fine = [0, 1, 2, 3, 0, 1, 2, 3]
    result = _diagnose([coarse, fine], [2, 4])
    pair = result["agreement"]["k4"]["k2"]

    assert pair["nesting"] == 0.5
    assert pair["goodman_kruskal_lambda"] == 0.0
    assert pair["nmi"] == pytest.approx(0.0)


def test_lambda_ignores_giant_coarse_class():
    # Most images sit in coarse class 0, so nesting is high by chance alone.
    coarse = [0] * 9 + [1]
    fine = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    pair = pair_agreement(np.array(fine), np.array(coarse), 2, 2)

    assert pair["nesting"] == pytest.approx(0.9)
    assert pair["goodman_kruskal_lambda"] == 0.0


def test_lambda_none_for_one_coarse_class():
    pair = pair_agreement(np.array([0, 1, 2]), np.array([0, 0, 0]), 3, 2)

    assert pair["nesting"] == 1.0
    assert pair["goodman_kruskal_lambda"] is None


@pytest.mark.parametrize("seed", range(4))
def test_pair_agreement_matches_definition(seed):
    rng = np.random.default_rng(seed)
    fine, coarse = rng.integers(0, 6, 40), rng.integers(0, 3, 40)
    majority = sum(max(np.sum((fine == f) & (coarse == c)) for c in range(3)) for f in range(6))
    largest = max(np.sum(coarse == c) for c in range(3))

    pair = pair_agreement(fine, coarse, 6, 3)
    assert pair["nesting"] == pytest.approx(majority / 40)
    assert pair["goodman_kruskal_lambda"] == pytest.approx((majority - largest) / (40 - largest))


def test_agreement_covers_every_coarser_head():
    # Column order k4, k2, k6, so k2 is the coarsest head.
    columns = [[0, 1, 2, 3, 0, 1], [0, 0, 1, 1, 0, 0], [0, 1, 2, 3, 4, 5]]
    classes = np.array(columns).T
    result = compute_diagnostics(classes, np.full(classes.shape, 0.9), [4, 2, 6], ["k4", "k2", "k6"])

    assert list(result["agreement"]) == ["k4", "k6"]
    assert list(result["agreement"]["k4"]) == ["k2"]
    assert list(result["agreement"]["k6"]) == ["k2", "k4"]


# -------------------------------------------------------------- recommendation


def _nested_heads() -> list[list[int]]:
    """Heads of 2, 4 and 8 classes that nest perfectly, and a head of 16 that cuts across the 8."""
    images = np.arange(64)
    return [(images // 32).tolist(), (images // 16).tolist(), (images // 8).tolist(), (images % 16).tolist()]


def test_recommendation_on_nested_heads():
    result = _diagnose(_nested_heads(), [2, 4, 8, 16])
    heads = result["heads"]

    assert heads["k2"]["refinement_lambda"] == 1.0
    assert heads["k4"]["refinement_lambda"] == 1.0
    assert heads["k8"]["refinement_lambda"] == pytest.approx(8 / 56)
    assert heads["k16"]["refinement_lambda"] is None
    assert heads["k4"]["refinement_drop"] == pytest.approx(1 - 8 / 56)
    assert heads["k8"]["refinement_drop"] == pytest.approx(8 / 56 - 0.8)
    assert heads["k8"]["refined_by"] == ["k16"]
    assert result["recommended_head"] == "k4"
    assert result["rule"]
    assert result["warnings"] == ["No embeddings were found, so the merge suggestions have no target class."]


def _rule_heads(lambdas: dict[str, float | None], usable: dict[str, bool] | None = None) -> dict:
    """Build the statistics that recommend_head reads, for heads k5, k10, k20 and k40."""
    names = list(lambdas)
    heads = {}
    for i, name in enumerate(names):
        own = lambdas[name]
        after = lambdas[names[i + 1]] if i + 1 < len(names) else None
        if own is None:
            drop = None
        elif i + 2 == len(names):
            drop = own - 0.8
        else:
            drop = own - after
        heads[name] = {
            "usable": True if usable is None else usable[name],
            "refinement_lambda": own,
            "refinement_drop": drop,
            "refined_by": names[i + 1 : i + 2],
            "unused_class_share": 0.0 if usable is None or usable[name] else 0.5,
        }
    return heads


COUNTS = [5, 10, 20, 40]
NAMES = ["k5", "k10", "k20", "k40"]


@pytest.mark.parametrize(
    "lambdas, expected, warned",
    [
        ([0.99, 0.95, 0.70, None], "k10", False),
        ([0.99, 0.95, 0.86, None], "k20", False),
        ([0.99, 0.70, 0.90, None], "k20", False),
        ([0.80, 0.70, 0.50, None], "k10", True),
        ([0.40, 0.45, 0.20, None], "k10", True),
    ],
    ids=["largest_passing", "second_largest_passing", "gap_below", "largest_drop", "weak"],
)
def test_recommend_head_rule(lambdas, expected, warned):
    recommendation = recommend_head(_rule_heads(dict(zip(NAMES, lambdas, strict=True))), NAMES, COUNTS)

    assert recommendation.head == expected
    assert (recommendation.warning is not None) == warned
    assert expected in recommendation.reason


def test_recommend_head_names_compared_heads():
    heads = _rule_heads(dict(zip(NAMES, [0.80, 0.70, 0.50, None], strict=True)))
    recommendation = recommend_head(heads, NAMES, COUNTS)

    assert "k20 nests into it with lambda 0.70, against 0.50 for k40 into k20." in recommendation.reason
    assert "knowing an image's k20 class removes 70% of the errors made when guessing its k10 class" in (
        recommendation.reason
    )


def test_recommend_head_explains_passing_lambda():
    heads = _rule_heads(dict(zip(NAMES, [0.99, 0.95, 0.86, None], strict=True)))
    recommendation = recommend_head(heads, NAMES, COUNTS)

    assert recommendation.reason.startswith("k20 is the largest head whose classes the next larger head splits")
    assert "k40 nests into it with lambda 0.86 (at least 0.85 needed)" in recommendation.reason
    assert "removes 86% of the errors made when guessing its k20 class" in recommendation.reason


def test_recommend_head_names_assumed_lambda_of_largest():
    lambdas = {"k3": 0.45, "k6": None}
    recommendation = recommend_head(_rule_heads(lambdas), ["k3", "k6"], [3, 6])

    assert recommendation.head == "k3"
    assert "against 0.80 assumed for k6, the largest head, which no larger head checks" in recommendation.reason


def test_recommend_head_only_checked_head():
    names = ["k10", "k20", "k40"]
    usable = {"k10": True, "k20": False, "k40": True}
    heads = _rule_heads({"k10": 0.44, "k20": 0.59, "k40": None}, usable)

    recommendation = recommend_head(heads, names, [10, 20, 40])

    assert recommendation.head == "k10"
    assert "because it is the only head that uses at least 90% of its classes" in recommendation.reason
    assert "drops most" not in recommendation.reason


def test_recommend_head_says_when_nesting_only_rises():
    heads = _rule_heads(dict(zip(NAMES, [0.30, 0.40, 0.60, None], strict=True)))

    recommendation = recommend_head(heads, NAMES, COUNTS)

    assert recommendation.head == "k5"
    assert "because nesting drops after no head, and changes least after it" in recommendation.reason


def test_recommend_head_weak_nesting_warns():
    heads = _rule_heads(dict(zip(NAMES, [0.40, 0.45, 0.20, None], strict=True)))
    recommendation = recommend_head(heads, NAMES, COUNTS)

    assert "barely nest" in recommendation.warning


def test_recommend_head_skips_unusable_heads():
    lambdas = dict(zip(NAMES, [0.99, 0.95, 0.90, None], strict=True))
    usable = dict(zip(NAMES, [True, True, False, True], strict=True))
    recommendation = recommend_head(_rule_heads(lambdas, usable), NAMES, COUNTS)

    assert recommendation.head == "k10"


def test_recommend_head_without_usable_checked_head():
    lambdas = dict(zip(NAMES, [0.99, 0.95, 0.90, None], strict=True))
    usable = dict(zip(NAMES, [False, False, False, True], strict=True))
    recommendation = recommend_head(_rule_heads(lambdas, usable), NAMES, COUNTS)

    assert recommendation.head == "k40"
    assert "No head both uses at least 90% of its classes and has a larger head" in recommendation.warning


def test_recommend_head_equal_counts_picks_primary():
    result = _diagnose([[0, 1, 0, 1], [1, 1, 0, 0]], [2, 2])

    assert result["recommended_head"] == "k2"
    assert "primary head" in result["recommendation_reason"]


def test_recommend_head_single_head():
    result = _diagnose([[0, 1, 2, 0, 1, 2]], [3])

    assert result["recommended_head"] == "k3"


def _cluster_heads(num_clusters: int, seed: int) -> dict:
    """Diagnose k-means heads of 5, 10, 20 and 40 classes on Gaussian clusters on the unit sphere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[np.arange(800) % num_clusters] + 0.25 * rng.normal(size=(800, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    columns = [KMeans(count, n_init=1, random_state=seed).fit_predict(points).tolist() for count in COUNTS]
    return _diagnose(columns, COUNTS, embeddings=points)


@pytest.mark.parametrize("num_clusters", [5, 10])
def test_recommendation_finds_cluster_count(num_clusters):
    result = _cluster_heads(num_clusters, seed=0)

    assert result["recommended_head"] == f"k{num_clusters}"


# ------------------------------------------------------------ merge suggestions


def test_merge_suggestion_picks_nearest_centroid():
    # Class 0 is one image at 80 degrees, class 1 sits at 0 degrees and class 2 at 90.
    classes = [0] + [1] * 10 + [2] * 10
    embeddings = _unit_vectors([80] + [0] * 10 + [90] * 10)
    result = _diagnose([classes], [3], embeddings=embeddings)

    assert result["merge_suggestions"] == [
        {
            "head": "k3",
            "class": 0,
            "size": 1,
            "into": 2,
            "similarity": pytest.approx(math.cos(math.radians(10))),
            "reason": "tiny: 1 image",
        }
    ]


def test_merge_suggestion_prefers_sound_target():
    # Tiny classes 0 (80 degrees) and 3 (85 degrees) are nearest to each other.
    classes = [0] + [1] * 10 + [2] * 10 + [3]
    embeddings = _unit_vectors([80] + [0] * 10 + [90] * 10 + [85])
    result = _diagnose([classes], [4], embeddings=embeddings)
    suggestions = result["merge_suggestions"]

    assert [s["class"] for s in suggestions] == [0, 3]
    assert [s["into"] for s in suggestions] == [2, 2]
    assert suggestions[1]["similarity"] == pytest.approx(math.cos(math.radians(5)))


def test_merge_suggestion_for_low_confidence_class():
    classes = np.array([0] * 4 + [1] * 4 + [2] * 4)
    confidences = np.array([0.2, 0.3, 0.4, 0.9] + [0.9] * 4 + [0.2, 0.3, 0.9, 0.9])
    embeddings = _unit_vectors([0] * 4 + [90] * 4 + [30] * 4)
    result = compute_diagnostics(classes[:, None], confidences[:, None], [3], ["k3"], embeddings)
    suggestions = result["merge_suggestions"]

    # Class 2 has exactly half of its images below 0.5, which is not a majority.
    assert [s["class"] for s in suggestions] == [0]
    assert suggestions[0]["into"] == 2
    assert suggestions[0]["reason"] == "low confidence: 75% of images below 0.5"


def test_merge_suggestion_tiny_and_low_confidence():
    classes = np.array([0] + [1] * 10 + [2] * 10)
    confidences = np.array([0.1] + [0.9] * 20)
    embeddings = _unit_vectors([80] + [0] * 10 + [90] * 10)
    result = compute_diagnostics(classes[:, None], confidences[:, None], [3], ["k3"], embeddings)

    assert result["merge_suggestions"][0]["reason"] == "tiny: 1 image; low confidence: 100% of images below 0.5"


def test_merge_suggestions_without_embeddings():
    result = _diagnose([[0] + [1] * 10 + [2] * 10], [3])

    assert result["merge_suggestions"][0]["into"] is None
    assert result["merge_suggestions"][0]["similarity"] is None
    assert "No embeddings were found, so the merge suggestions have no target class." in result["warnings"]


def test_merge_suggestion_without_other_class():
    classes = np.zeros((5, 1), dtype=np.int64)
    heads = {"k2": head_statistics(classes[:, 0], np.full(5, 0.1), 2)}
    suggestions = merge_suggestions(classes, heads, ["k2"], _unit_vectors([0] * 5))

    assert suggestions[0]["class"] == 0
    assert suggestions[0]["into"] is None


def test_merge_suggestions_sorted_by_head_then_class():
    coarse = [0] + [1] * 10 + [2] * 10
    fine = [3] + [0] * 10 + [2] * 9 + [1]
    embeddings = _unit_vectors([80] + [0] * 10 + [90] * 10)
    result = _diagnose([coarse, fine], [3, 4], embeddings=embeddings)

    assert [(s["head"], s["class"]) for s in result["merge_suggestions"]] == [("k3", 0), ("k4", 1), ("k4", 3)]


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "confidences, embeddings, message",
    [
        (np.full((4, 2), 0.5), None, r"confidences has shape \(4, 2\)"),
        (np.array([[0.5], [1.5], [0.5]]), None, "confidence 1.5 of image 1 in head 0 is outside"),
        (np.array([[0.5], [np.nan], [0.5]]), None, "confidence nan of image 1"),
        (np.array([["a"], ["b"], ["c"]]), None, "confidences has dtype"),
        (np.full((3, 1), 0.5), np.ones((2, 4)), r"embeddings has shape \(2, 4\)"),
        (np.full((3, 1), 0.5), np.array([[1.0], [np.inf], [0.0]]), "not finite"),
    ],
    ids=[
        "confidence_shape",
        "confidence_range",
        "confidence_nan",
        "confidence_text",
        "embedding_rows",
        "embedding_inf",
    ],
)
def test_compute_diagnostics_rejects_bad_input(confidences, embeddings, message):
    classes = np.array([[0], [1], [0]])
    with pytest.raises(ValueError, match=message):
        compute_diagnostics(classes, confidences, [2], ["k2"], embeddings)


def test_compute_diagnostics_is_json_serialisable():
    result = _diagnose(_nested_heads(), [2, 4, 8, 16], embeddings=_unit_vectors(list(range(64))))

    assert json.loads(json.dumps(result, allow_nan=False)) == result


# ----------------------------------------------------------------------- files


def _write_run(run_dir: Path, embeddings_rows: int | None = None) -> np.ndarray:
    columns = _nested_heads()
    classes = np.array(columns).T
    confidences = np.full(classes.shape, 0.75, dtype=np.float32)
    paths = [f"folder{i % 2}/{i:03d}.jpg" for i in range(64)]
    write_labels_csv(run_dir / "labels.csv", paths, classes, confidences, [2, 4, 8, 16])
    if embeddings_rows is not None:
        np.save(run_dir / "embeddings.npy", _unit_vectors(list(range(embeddings_rows))).astype(np.float32))
    return classes


def test_write_diagnostics_writes_both_files(tmp_path):
    classes = _write_run(tmp_path, embeddings_rows=64)
    result = write_diagnostics(tmp_path)

    assert json.loads((tmp_path / DIAGNOSTICS_FILE).read_text(encoding="utf-8")) == result
    tree = json.loads((tmp_path / CLASS_TREE_FILE).read_text(encoding="utf-8"))
    assert tree == class_tree(classes, ["k2", "k4", "k8", "k16"], [2, 4, 8, 16])
    assert result["recommended_head"] == "k4"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["labels.csv", "embeddings.npy", DIAGNOSTICS_FILE, CLASS_TREE_FILE]
    )


def test_write_diagnostics_without_embeddings(tmp_path):
    _write_run(tmp_path)
    result = write_diagnostics(tmp_path)

    assert "No embeddings were found, so the merge suggestions have no target class." in result["warnings"]
    assert (tmp_path / DIAGNOSTICS_FILE).is_file()


def test_write_diagnostics_rejects_missing_labels(tmp_path):
    with pytest.raises(ValueError, match="labels.csv not found: write it first with .* -m core assign"):
        write_diagnostics(tmp_path)


def test_write_diagnostics_rejects_other_embeddings(tmp_path):
    _write_run(tmp_path, embeddings_rows=63)

    with pytest.raises(ValueError, match=r"shape \(63, 2\), but labels.csv lists 64 images"):
        write_diagnostics(tmp_path)
    assert not (tmp_path / DIAGNOSTICS_FILE).exists()
