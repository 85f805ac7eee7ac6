"""Head-only training time and accuracy on a sorted image folder, against k-means on the same features.

Run from the repository root:

    python -m bench.bench_head_only FOLDER RUN [--classes 10] [--views 4] [--epochs 30]

FOLDER contains one sub-folder per true class, such as the 10,000 images of the
CIFAR-10 test set. RUN is a trained run of this tool. Only its backbone is
used, frozen, while the projection and a head of ``--classes`` classes start
from random values. The benchmark decodes FOLDER at the run's image size,
computes the backbone features of the plain image and ``--views`` augmented
views of every image, trains the projection and the head on them
(``core.head_only.HeadTrainer``), assigns every image from its plain features,
and fits scikit-learn's k-means on the same plain features. It prints a
markdown table of ACC, NMI and ARI (``core.evaluate.evaluate_assignments``)
with the seconds of each step. With ``--work DIR`` the decoded images and
features stay in DIR, so a second run with the same backbone, folder, views
and seed skips computing them.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

from core.assign import load_trained_model
from core.config import TrainConfig
from core.evaluate import evaluate_assignments
from core.head_only import HEAD_ONLY_BASE_LR, HeadTrainer, classify_features, load_or_compute_features
from data.cache import build_cache
from data.scan import ground_truth_label, scan_folder
from models.self_classifier import SelfClassifier

logger = logging.getLogger("bench.bench_head_only")

KMEANS_RESTARTS = 10


def fresh_model(run_dir: Path, classes: int, device: torch.device) -> tuple[SelfClassifier, TrainConfig]:
    """Return a model with the run's trained backbone, a random projection and one random head of ``classes``."""
    trained, config = load_trained_model(run_dir, device)
    feature_dim = trained.projection.state_dict()["layers.0.weight"].shape[1]
    torch.manual_seed(config.seed)
    model = SelfClassifier(
        trained.backbone, feature_dim, [classes], config.embedding_dim, config.hidden_dim, config.hidden_layers
    )
    return model.to(device), config


def bench(
    folder: Path, run_dir: Path, work_dir: Path, classes: int, views: int, epochs: int, seed: int
) -> str:
    """Run every step, timing each, and return the markdown report."""
    device = torch.device("cpu")
    model, config = fresh_model(run_dir, classes, device)
    paths = scan_folder(folder)
    started = time.perf_counter()
    cache = build_cache(folder, paths, config.image_size, work_dir / "cache", workers=min(2, config.workers))
    decode_seconds = time.perf_counter() - started
    truth = [ground_truth_label(path) for path in cache.paths]

    started = time.perf_counter()
    features = load_or_compute_features(work_dir, model.backbone, cache, views, device, seed)
    feature_seconds = time.perf_counter() - started

    settings = config.replace(class_counts=(classes,), epochs=epochs, seed=seed,
                              batch_size=min(256, len(cache) - len(cache) % 2))
    started = time.perf_counter()
    HeadTrainer(model, features, settings, device).fit()
    train_seconds = time.perf_counter() - started
    assigned, _, _ = classify_features(model, features[0], config.row_tau, device)
    ours = evaluate_assignments(truth, assigned[:, 0])

    plain = np.asarray(features[0], dtype=np.float32)
    baselines = {}
    for name, vectors in (("raw", plain), ("L2-normalised", plain / np.linalg.norm(plain, axis=1, keepdims=True))):
        started = time.perf_counter()
        clusters = KMeans(n_clusters=classes, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(vectors)
        baselines[name] = (evaluate_assignments(truth, clusters), time.perf_counter() - started)

    timings = {"decode": decode_seconds, "features": feature_seconds, "train": train_seconds}
    command = f"{folder} {run_dir} --classes {classes} --views {views} --epochs {epochs} --seed {seed}"
    return report(command, config.backbone, len(cache), views, epochs, ours, baselines, timings)


def report(
    command: str,
    backbone: str,
    num_images: int,
    views: int,
    epochs: int,
    ours: dict,
    baselines: dict[str, tuple[dict, float]],
    timings: dict[str, float],
) -> str:
    """Format the scores and timings as a markdown section."""
    def row(method: str, scores: dict, seconds: float) -> str:
        return (f"| {method} | {scores['acc']:.3f} | {scores['nmi']:.3f} | {scores['ari']:.3f} | "
                f"{scores['num_nonempty_classes']} | {seconds:.1f} |")

    lines = [
        f"### Head-only training vs k-means on frozen {backbone} features ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python -m bench.bench_head_only {command}`",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU only. {num_images} images.",
        "",
        "| method | ACC | NMI | ARI | non-empty classes | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
        row(f"Self-Classifier head, head-only ({epochs} epochs, lr {HEAD_ONLY_BASE_LR:g})", ours, timings["train"]),
    ]
    lines += [row(f"k-means on {name} features", scores, seconds) for name, (scores, seconds) in baselines.items()]
    lines += [
        "",
        f"Shared steps: decoding {timings['decode']:.1f} s; backbone features of the plain image and "
        f"{views} views, {timings['features']:.1f} s (0 when reused from the cache).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_head_only", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="image folder with one sub-folder per true class")
    parser.add_argument("run", type=Path, help="trained run directory whose backbone is used")
    parser.add_argument("--classes", type=int, default=10, help="classes of the head and clusters of k-means")
    parser.add_argument("--views", type=int, default=4, help="augmented views per image (default: 4)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of head-only training (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the views, training and k-means")
    parser.add_argument("--work", type=Path, help="folder for the decoded images and features (default: temporary)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        with tempfile.TemporaryDirectory() as temporary:
            work_dir = args.work or Path(temporary)
            work_dir.mkdir(parents=True, exist_ok=True)
            text = bench(args.folder, args.run, work_dir, args.classes, args.views, args.epochs, args.seed)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        logger.error("%s", error)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
