"""How much a trained run learned: k-nearest-neighbour accuracy of its features against simple baselines.

Clustering ACC measures how well the classes match the folders. The kNN
accuracy of the features measures whether the network learned anything that
a better clustering could use. This script scores, with 20-nearest-neighbour
classification (cosine distance, 5-fold cross-validation) against the
parent-folder names: the raw pixels, a randomly initialised network of the
same architecture, and each given run's backbone features and embeddings.

    python bench/bench_probe.py ../datasets/cifar10-test runs/bench-label
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.assign import load_trained_model  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.run_files import RunFiles  # noqa: E402
from core.train import build_initial_model  # noqa: E402
from data.cache import build_cache  # noqa: E402
from data.scan import ground_truth_label, scan_folder  # noqa: E402
from data.transforms import normalize  # noqa: E402
from models.self_classifier import SelfClassifier  # noqa: E402

NEIGHBOURS = 20
FOLDS = 5
BATCH = 1000


def knn_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Return the mean cross-validated accuracy of a 20-NN classifier on (N, D) features."""
    classifier = KNeighborsClassifier(NEIGHBOURS, metric="cosine")
    return float(cross_val_score(classifier, features, labels, cv=FOLDS).mean())


@torch.no_grad()
def network_outputs(model: SelfClassifier, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Return backbone features (N, F) and embeddings (N, E) of normalised (N, 3, S, S) images."""
    model.eval()
    features, embeddings = [], []
    for first in range(0, len(pixels), BATCH):
        batch_features = model.features(pixels[first:first + BATCH])
        features.append(batch_features)
        embeddings.append(model.projection(batch_features))
    return torch.cat(features).numpy(), torch.cat(embeddings).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="image folder with one sub-folder per true class")
    parser.add_argument("runs", type=Path, nargs="+", help="run directories trained on that folder")
    args = parser.parse_args()

    config = TrainConfig.load(RunFiles(args.runs[0]).config)
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = build_cache(args.folder, scan_folder(args.folder), config.image_size, Path(cache_dir), workers=2)
        images = np.array(cache.images)
    labels = np.array([ground_truth_label(path) for path in cache.paths])
    pixels = normalize(torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255))

    rows = [("raw pixels", knn_accuracy(pixels.flatten(1).numpy(), labels), None)]
    torch.manual_seed(0)
    random_features, random_embeddings = network_outputs(build_initial_model(config), pixels)
    rows.append((f"random {config.backbone}", knn_accuracy(random_features, labels),
                 knn_accuracy(random_embeddings, labels)))
    for run in args.runs:
        model, _ = load_trained_model(run, torch.device("cpu"))
        features, embeddings = network_outputs(model, pixels)
        rows.append((f"trained: {run.name}", knn_accuracy(features, labels), knn_accuracy(embeddings, labels)))

    lines = [f"{NEIGHBOURS}-NN accuracy, {FOLDS}-fold, {len(labels)} images at {config.image_size} px", "",
             "| input | pixels or backbone features | embeddings |", "| --- | --- | --- |"]
    for name, features_score, embeddings_score in rows:
        embedding_cell = f"{embeddings_score:.3f}" if embeddings_score is not None else "-"
        lines.append(f"| {name} | {features_score:.3f} | {embedding_cell} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
