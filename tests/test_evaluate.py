import itertools
import json
import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from core.evaluate import clustering_accuracy, evaluate_assignments, evaluate_run
from core.labels_csv import write_labels_csv


def _brute_force_accuracy(truth: list[str], clusters: list[int]) -> float:
    """Best accuracy over every one-to-one map from clusters to classes."""
    classes = sorted(set(truth))
    cluster_ids = sorted(set(clusters))
    best = 0
    for count in range(1, min(len(classes), len(cluster_ids)) + 1):
        for chosen in itertools.permutations(cluster_ids, count):
            for targets in itertools.permutations(classes, count):
                mapping = dict(zip(chosen, targets, strict=True))
                best = max(best, sum(mapping.get(c) == t for c, t in zip(clusters, truth, strict=True)))
    return best / len(truth)


# ----------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "truth, clusters, expected",
    [
        (list("aabbcc"), [2, 2, 0, 0, 1, 1], 1.0),
        (list("aaaabbbb"), [0, 0, 0, 1, 1, 1, 1, 0], 0.75),
        (list("aaaabb"), [0, 0, 1, 1, 2, 2], 4 / 6),
        (list("aabbcc"), [0, 0, 0, 0, 1, 1], 4 / 6),
        (list("aaab"), [0, 0, 0, 0], 0.75),
        (["cat"], [7], 1.0),
    ],
    ids=["permutation", "three_quarters", "more_clusters", "fewer_clusters", "one_cluster", "one_image"],
)
def test_clustering_accuracy_known_cases(truth, clusters, expected):
    assert clustering_accuracy(truth, np.array(clusters)) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(6))
def test_clustering_accuracy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_classes, num_clusters = rng.integers(1, 5, size=2)
    truth = [f"class{c}" for c in rng.integers(0, num_classes, 12)]
    clusters = rng.integers(0, num_clusters, 12).tolist()
    assert clustering_accuracy(truth, clusters) == pytest.approx(_brute_force_accuracy(truth, clusters))


@pytest.mark.parametrize(
    "truth, clusters, message",
    [
        (["a", "b"], [0], "true_labels has 2 entries but cluster_ids has 1"),
        ([], [], "empty"),
    ],
)
def test_clustering_accuracy_rejects_bad_input(truth, clusters, message):
    with pytest.raises(ValueError, match=message):
        clustering_accuracy(truth, np.array(clusters, dtype=np.int64))


# ------------------------------------------------------------------ metrics


def test_evaluate_assignments_matches_sklearn():
    truth = list("aaaabbbbcc")
    clusters = np.array([0, 0, 0, 1, 1, 1, 1, 0, 3, 3])
    scores = evaluate_assignments(truth, clusters)

    assert set(scores) == {
        "acc",
        "nmi",
        "ami",
        "ari",
        "num_nonempty_classes",
        "num_images",
        "num_true_classes",
    }
    assert scores["acc"] == pytest.approx(0.8)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(truth, clusters))
    assert scores["ami"] == pytest.approx(adjusted_mutual_info_score(truth, clusters))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(truth, clusters))
    assert scores["num_nonempty_classes"] == 3
    assert scores["num_images"] == 10
    assert scores["num_true_classes"] == 3


def test_evaluate_assignments_perfect_labeling():
    scores = evaluate_assignments(list("xxyyzz"), np.array([5, 5, 1, 1, 0, 0]))
    for key in ("acc", "nmi", "ami", "ari"):
        assert scores[key] == pytest.approx(1.0), key


def test_evaluate_assignments_returns_json_types():
    scores = evaluate_assignments(list("aabb"), np.array([0, 1, 1, 1]))
    assert json.loads(json.dumps(scores)) == scores
    assert all(type(scores[key]) is float for key in ("acc", "nmi", "ami", "ari"))


# --------------------------------------------------------------------- runs

PATHS = ["cat/1.jpg", "cat/2.jpg", "cat/3.jpg", "dog/4.jpg", "dog/5.jpg", "train/dog/6.jpg"]


def _write_run(run_dir, paths, classes, class_counts):
    classes = np.array(classes, dtype=np.int64)
    confidences = np.full(classes.shape, 0.5, dtype=np.float32)
    write_labels_csv(run_dir / "labels.csv", paths, classes, confidences, class_counts)


def test_evaluate_run_scores_every_head(tmp_path, caplog):
    # Head k2 separates the folders exactly. Head k3 puts one cat and one dog
    # together in cluster 0, so its best map gets 2 cats and 2 dogs right.
    classes = [[1, 1, 1, 0, 0, 0], [2, 2, 0, 0, 1, 1]]
    _write_run(tmp_path, PATHS, np.array(classes).T, [2, 3])
    with caplog.at_level(logging.INFO, logger="core.evaluate"):
        result = evaluate_run(tmp_path)

    assert result["primary"] == "k2"
    assert list(result["heads"]) == ["k2", "k3"]
    assert result["heads"]["k2"]["acc"] == pytest.approx(1.0)
    assert result["heads"]["k3"]["acc"] == pytest.approx(4 / 6)
    assert result["heads"]["k3"]["num_true_classes"] == 2
    assert result["heads"]["k3"]["num_nonempty_classes"] == 3
    assert json.loads((tmp_path / "evaluation.json").read_text()) == result
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["head k2", "head k3"]


def test_evaluate_run_uses_last_folder(tmp_path):
    _write_run(tmp_path, ["train/cat/1.jpg", "val/cat/2.jpg", "dog/3.jpg"], [[0], [0], [1]], [2])
    assert evaluate_run(tmp_path)["heads"]["k2"]["num_true_classes"] == 2


def test_evaluate_run_warns_about_top_level_images(tmp_path, caplog):
    _write_run(tmp_path, ["cat/1.jpg", "dog/2.jpg", "3.jpg"], [[0], [1], [1]], [2])
    with caplog.at_level(logging.WARNING, logger="core.evaluate"):
        result = evaluate_run(tmp_path)

    assert result["heads"]["k2"]["num_true_classes"] == 3
    assert "1 images are at the top level of the image folder" in caplog.text


def test_evaluate_run_rejects_flat_folder(tmp_path):
    _write_run(tmp_path, ["1.jpg", "2.jpg", "3.jpg"], [[0], [1], [1]], [2])
    with pytest.raises(
        ValueError, match="top level of the image folder, but .* one sub-folder per true class"
    ):
        evaluate_run(tmp_path)
    assert not (tmp_path / "evaluation.json").exists()


def test_evaluate_run_rejects_single_folder(tmp_path):
    _write_run(tmp_path, ["cat/1.jpg", "cat/2.jpg"], [[0], [1]], [2])
    with pytest.raises(ValueError, match="all images are in the folder 'cat'"):
        evaluate_run(tmp_path)


def test_evaluate_run_without_labels(tmp_path):
    with pytest.raises(ValueError, match="labels.csv not found: write it first with .* -m core assign"):
        evaluate_run(tmp_path)


def test_evaluate_run_rejects_empty_labels(tmp_path):
    _write_run(tmp_path, [], np.zeros((0, 1)), [2])
    with pytest.raises(ValueError, match="lists no images"):
        evaluate_run(tmp_path)
