"""Time and peak memory of each stage on synthetic folders of growing size.

For each size N, writes N synthetic JPEG images of mixed sizes (64 to 512
pixels) to a temporary directory, then runs each stage in a fresh process so
that its peak resident memory is its own:

- scan, decode (into the uint8 image cache);
- train: ``--train-seconds`` of training steps; the epoch time is projected
  from the measured images per second;
- assign: every image through the trained network, embeddings to disk;
- index: the run's FAISS index as the app builds it;
- knn: the 10 nearest neighbours of every image, and recall@10 of the
  approximate index against exact search when the run is large enough to get one;
- map: the run's 2-D UMAP map as the app computes it (fitted on a sample,
  the rest placed by their nearest neighbours), with its trustworthiness on
  a random subset, and for runs of up to ``FULL_FIT_MAX`` images the same
  for UMAP's own transform and for UMAP fitted on every embedding;
- label: the whole ``python -m core label`` command in a child process
  (training limited by ``--train-seconds``), for the peak memory of one run.

    python bench/bench_scale.py --sizes 1000 10000 100000

With ``--map-run RUN``, only the map stage runs, on a copy of the
embeddings of an existing run (real images rather than synthetic ones).
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGES_PER_FOLDER = 1000
TRUSTWORTHINESS_SUBSET = 2000
TRUSTWORTHINESS_NEIGHBOURS = 10
# Largest run for which the map stage also fits UMAP on every embedding, for comparison.
FULL_FIT_MAX = 20_000


def _write_part(args: tuple[Path, int, int, int]) -> None:
    """Write images ``first`` to ``first + count - 1`` into one sub-folder."""
    root, first, count, seed = args
    rng = np.random.default_rng([seed, first])
    folder = root / f"part{first // IMAGES_PER_FOLDER:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    # One noise tile per part; each image takes a random window of it, so
    # generating an image costs about as much as encoding it.
    noise = rng.normal(0, 8, (512, 512, 3)).astype(np.float32)
    for index in range(first, first + count):
        width, height = (int(side) for side in rng.integers(64, 513, size=2))
        top, left = rng.integers(0, 513 - height), rng.integers(0, 513 - width)
        colour = rng.integers(0, 256, size=3)
        ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None] * rng.integers(0, 128, size=3)
        pixels = np.clip(colour + ramp + noise[top:top + height, left:left + width], 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=85)


def write_synthetic_folder(root: Path, count: int, seed: int = 0, processes: int = 2) -> None:
    """Write ``count`` JPEGs of random sizes between 64 and 512 pixels, 1,000 per sub-folder.

    Each image is a smooth colour gradient plus noise, which compresses like
    a photograph rather than like pure noise.
    """
    parts = [(root, first, min(IMAGES_PER_FOLDER, count - first), seed)
             for first in range(0, count, IMAGES_PER_FOLDER)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_write_part, parts)


def _stage_runner(name: str, root: str, run_dir: str, train_seconds: float, queue) -> None:
    # Import the engine before starting the clock, so stage times exclude
    # loading torch and FAISS (several seconds); UMAP's first-use compilation is counted.
    import faiss  # noqa: F401

    import core.assign  # noqa: F401
    import core.jobs  # noqa: F401
    import core.train  # noqa: F401

    started = time.perf_counter()
    details = _run_stage(name, Path(root), Path(run_dir), train_seconds)
    seconds = details.pop("seconds", time.perf_counter() - started)
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, details))


def _run_stage(name: str, root: Path, run_dir: Path, train_seconds: float) -> dict:
    import torch

    from core.assign import assign_cache, load_trained_model
    from core.config import TrainConfig
    from core.jobs import prepare_images
    from core.train import Trainer
    from data.scan import scan_folder

    config = TrainConfig(image_folder=str(root), class_counts=(10,), epochs=1, time_budget=train_seconds)
    if name == "scan":
        return {"files": len(scan_folder(root))}
    if name == "decode":
        config, cache = prepare_images(config, run_dir)
        return {"image side": config.image_size}
    if name == "train":
        config, cache = prepare_images(config, run_dir)
        config = config.replace(batch_size=min(256, len(cache)))
        config.save(run_dir / "config.json")
        trainer = Trainer(config, cache, run_dir, config.batch_size, torch.device("cpu"))
        state = trainer.fit()
        per_second = state.step * config.batch_size / state.elapsed_seconds
        return {"seconds": state.elapsed_seconds, "images/s": round(per_second, 1),
                "projected epoch s": round(len(cache) / per_second)}
    if name == "assign":
        _, cache = prepare_images(config, run_dir)
        started = time.perf_counter()
        model, saved = load_trained_model(run_dir, torch.device("cpu"))
        assign_cache(model, cache, saved.row_tau, run_dir / "embeddings.npy", torch.device("cpu"))
        return {"seconds": time.perf_counter() - started}
    if name == "index":
        from core.index import load_or_build_index

        return {"kind": load_or_build_index(run_dir).kind}
    if name == "knn":
        return _all_neighbours(run_dir)
    if name == "map":
        return _map_with_quality(run_dir)
    raise ValueError(f"unknown stage {name}")


def _all_neighbours(run_dir: Path) -> dict:
    """Query the 10 nearest neighbours of every image; compare with exact search if the index is approximate."""
    from core.index import build_index, load_or_build_index

    embeddings = np.load(run_dir / "embeddings.npy")
    index = load_or_build_index(run_dir)
    started = time.perf_counter()
    _, rows = index.search(embeddings, 11)
    seconds = time.perf_counter() - started
    details: dict = {"seconds": seconds, "index": index.kind}
    if index.kind != "flat":
        exact = build_index(embeddings, exact_limit=len(embeddings))
        exact_started = time.perf_counter()
        _, exact_rows = exact.search(embeddings, 11)
        details["exact search s"] = round(time.perf_counter() - exact_started, 1)
        details["recall@10"] = round(_recall(rows[:, 1:], exact_rows[:, 1:]), 4)
    return details


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` that appears in the same row of ``found``."""
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def _map_with_quality(run_dir: Path) -> dict:
    from core.embedding_map import FIT_SAMPLE, compute_embedding_map, load_or_compute_embedding_map

    started = time.perf_counter()
    coordinates = load_or_compute_embedding_map(run_dir)
    seconds = time.perf_counter() - started
    embeddings = np.load(run_dir / "embeddings.npy", mmap_mode="r")
    subset_size = min(TRUSTWORTHINESS_SUBSET, len(embeddings))
    subset = np.random.default_rng(1).choice(len(embeddings), subset_size, replace=False)
    vectors = np.asarray(embeddings[subset])
    details = {"seconds": seconds, "trustworthiness": round(_trustworthiness(vectors, coordinates[subset]), 4)}
    if FIT_SAMPLE < len(embeddings) <= FULL_FIT_MAX:
        # The trade-off of fitting on a sample: the same measure for UMAP's own
        # transform of the other embeddings, and for UMAP fitted on all of them.
        for label, options in (("umap transform", {"placement": "umap"}),
                               ("full fit", {"sample_size": len(embeddings)})):
            other_started = time.perf_counter()
            other = compute_embedding_map(embeddings, **options)
            details[f"{label} s"] = round(time.perf_counter() - other_started, 1)
            details[f"{label} trustworthiness"] = round(_trustworthiness(vectors, other[subset]), 4)
    return details


def _trustworthiness(vectors: np.ndarray, coordinates: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(vectors, coordinates, n_neighbors=TRUSTWORTHINESS_NEIGHBOURS))


def run_stage(name: str, root: Path, run_dir: Path, train_seconds: float) -> tuple[float, float, dict]:
    """Run one stage in a fresh process; return its seconds, peak resident MiB and details."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_stage_runner, args=(name, str(root), str(run_dir), train_seconds, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                sys.stderr.write(f"stage {name} failed with exit code {process.exitcode}\n")
                return float("nan"), float("nan"), {"exit": process.exitcode}
    process.join()
    return result


def run_label_command(root: Path, run_dir: Path, train_seconds: float) -> tuple[float, float, dict]:
    """Run ``python -m core label`` on ``root``; return seconds, the largest child's peak MiB and details.

    The decoded-image cache of the staged run is linked in, so the command
    skips decoding and its figures cover training, assignment and the run files.
    """
    (run_dir / "cache").mkdir(parents=True, exist_ok=True)
    for cached in (run_dir.parent / "run" / "cache").iterdir():
        (run_dir / "cache" / cached.name).hardlink_to(cached)
    command = [sys.executable, "-m", "core", "label", str(root), "--out", str(run_dir),
               "--classes", "10", "--time-budget", str(train_seconds)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-2000:])
        return seconds, float("nan"), {"exit": result.returncode}
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with open(run_dir / "labels.csv", encoding="utf-8") as labels:
        rows = sum(1 for _ in labels) - 1
    return seconds, peak, {"labels": rows}


def compare_maps(run_dir: Path) -> None:
    """Print the map stage's figures for the embeddings of ``run_dir``, computed in a temporary copy."""
    with tempfile.TemporaryDirectory(prefix="bench-map-") as scratch:
        shutil.copy(run_dir / "embeddings.npy", Path(scratch) / "embeddings.npy")
        details = _map_with_quality(Path(scratch))
    notes = ", ".join(f"{key} {value}" for key, value in details.items())
    sys.stdout.write(f"| {run_dir.name} | map | {details['seconds']:.1f} | {notes} |\n")


STAGES = ("scan", "decode", "train", "assign", "index", "knn", "map", "label")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--train-seconds", type=float, default=60.0,
                        help="training-step seconds in the train and label stages")
    parser.add_argument("--map-run", type=Path, help="only compare the maps of this run's embeddings")
    args = parser.parse_args()
    if args.map_run is not None:
        compare_maps(args.map_run)
        return

    rows = []
    for size in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        try:
            started = time.perf_counter()
            write_synthetic_folder(workdir / "images", size)
            sys.stderr.write(f"wrote {size} images in {time.perf_counter() - started:.0f} s\n")
            for stage in args.stages:
                if stage == "label":
                    result = run_label_command(workdir / "images", workdir / "label-run", args.train_seconds)
                else:
                    result = run_stage(stage, workdir / "images", workdir / "run", args.train_seconds)
                seconds, peak, details = result
                notes = ", ".join(f"{key} {value}" for key, value in details.items())
                rows.append(f"| {size:,} | {stage} | {seconds:.1f} | {peak:.0f} | {notes} |")
                sys.stderr.write(rows[-1] + "\n")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    lines = [
        f"Machine: {platform.machine()}, {multiprocessing.cpu_count()} cores, Python {platform.python_version()}",
        "",
        "| images | stage | seconds | peak resident MiB | details |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
