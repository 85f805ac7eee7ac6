"""Time the app's engine calls and page renders on a synthetic run of 10,000 images.

The run is made in a temporary folder: small random JPEGs, random unit
embeddings, and a labels.csv written by ``write_labels_csv``. Engine calls
are timed once each (cold, nothing cached), and every page is rendered
headless with Streamlit's AppTest: once cold, then ``--repeats`` times with
its caches filled, of which the median is reported. Page times are the
Python side of a rerun only; the browser's drawing is not included.

Usage, from the project folder:

    .venv/bin/python bench/bench_app.py [--images 10000] [--skip-umap]

The result is a Markdown table on standard output; progress goes to standard error.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from core.config import TrainConfig  # noqa: E402
from core.edits import Edit, apply_edits, load_edits, save_edits  # noqa: E402
from core.embedding_map import FIT_SAMPLE, load_or_compute_embedding_map  # noqa: E402
from core.index import build_index, load_or_build_index  # noqa: E402
from core.labels_csv import read_labels_csv, write_labels_csv  # noqa: E402
from core.metrics_log import append_metrics  # noqa: E402
from core.run_files import RunFiles  # noqa: E402
from core.thumbnails import ThumbnailStore  # noqa: E402

logger = logging.getLogger("bench_app")

CLASS_COUNTS = (10, 20, 40)
EMBEDDING_DIM = 128
IMAGE_SIDE = 96
PAGES = {
    "Classes (largest class, 48 thumbnails)": "pages/3_Classes.py",
    "Map (all points)": "pages/4_Map.py",
    "Overview": "pages/2_Overview.py",
    "Neighbours (12 of one image)": "pages/5_Neighbours.py",
    "Edit and export (CSV built)": "pages/6_Edit_and_export.py",
}


def make_images(folder: Path, count: int, seed: int) -> list[str]:
    """Write ``count`` random JPEGs in 100 sub-folders and return their relative paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        rel_path = f"group{index % 100:02d}/image{index:05d}.jpg"
        target = folder / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR).save(target, quality=85)
        paths.append(rel_path)
    return paths


def make_run(base: Path, count: int, seed: int = 0) -> Path:
    """Create a synthetic run directory with labels, embeddings, settings and metrics."""
    images = base / "images"
    run_dir = base / "runs" / "synthetic"
    run_dir.mkdir(parents=True)
    files = RunFiles(run_dir)
    paths = make_images(images, count, seed)

    rng = np.random.default_rng(seed)
    classes = np.stack([rng.integers(0, c, count) for c in CLASS_COUNTS], axis=1)
    confidences = rng.uniform(0.05, 1.0, size=(count, len(CLASS_COUNTS))).astype(np.float32)
    write_labels_csv(files.labels, paths, classes, confidences, CLASS_COUNTS)
    embeddings = rng.normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    np.save(files.embeddings, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True))

    TrainConfig(image_folder=str(images), class_counts=CLASS_COUNTS, epochs=20, batch_size=256,
                backbone="resnet10n", image_size=64, device="cpu").save(files.config)
    files.skipped.write_text("path,reason\r\n", encoding="utf-8")
    for epoch in range(1, 21):
        append_metrics(files.metrics, {"epoch": epoch, "step": epoch * 39, "loss": 4.0 - epoch * 0.05, "lr": 0.1,
                                       "classes_in_use": 10, "seconds": 30.0, "images_per_second": 330.0,
                                       "elapsed_seconds": 30.0 * epoch})
    return run_dir


def timed(name: str, results: list[tuple[str, str]], action: Callable[[], object]) -> object:
    logger.info("Timing %s", name)
    started = time.perf_counter()
    value = action()
    results.append((name, f"{time.perf_counter() - started:.2f} s"))
    return value


def time_engine(run_dir: Path, skip_umap: bool) -> list[tuple[str, str]]:
    """Time the engine calls that the pages rely on, each cold."""
    files = RunFiles(run_dir)
    results: list[tuple[str, str]] = []
    table = timed("read_labels_csv", results, lambda: read_labels_csv(files.labels))
    largest = int(np.bincount(table.classes[:, 0]).argmax())
    save_edits(files.edits, [Edit.rename("k10", 0, "zero"), Edit.merge("k20", 1, 2),
                             Edit.move("k10", table.paths[:500], 3)])
    timed("apply_edits (3 edits, one moving 500 images)", results, lambda: apply_edits(table, load_edits(files.edits)))

    config = TrainConfig.load(files.config)
    store = ThumbnailStore(Path(config.image_folder), files.thumbnails_dir)
    page_rows = np.flatnonzero(table.classes[:, 0] == largest)[:48]
    page_paths = [table.paths[row] for row in page_rows]
    timed("thumbnails of one gallery page (48, cold)", results, lambda: store.get_many(page_paths))
    timed("thumbnails of the same page (48, made)", results, lambda: store.get_many(page_paths))
    timed(f"thumbnails of all {len(table.paths)} images", results, lambda: store.build_all(table.paths))

    index = timed("FAISS exact index: build and save", results, lambda: load_or_build_index(run_dir))
    timed("FAISS exact index: load saved", results, lambda: load_or_build_index(run_dir))
    embeddings = np.load(files.embeddings)
    timed("FAISS exact: 100 queries of 12 neighbours", results, lambda: index.search(embeddings[:100], 13))
    hnsw = timed("FAISS HNSW index: build (for comparison)", results, lambda: build_index(embeddings, exact_limit=0))
    timed("FAISS HNSW: 100 queries of 12 neighbours", results, lambda: hnsw.search(embeddings[:100], 13))

    if skip_umap:
        coordinates = np.random.default_rng(1).normal(size=(len(embeddings), 2)).astype(np.float32)
        _save_fake_map(run_dir, coordinates)
        results.append(("UMAP map", "skipped (--skip-umap); random map cached"))
    else:
        timed(f"UMAP map: fit {min(FIT_SAMPLE, len(embeddings))}, transform the rest", results,
              lambda: load_or_compute_embedding_map(run_dir))
    return results


def _save_fake_map(run_dir: Path, coordinates: np.ndarray) -> None:
    """Cache random map coordinates in the format that load_or_compute_embedding_map reads back."""
    import core.embedding_map as embedding_map

    original = embedding_map.compute_embedding_map
    embedding_map.compute_embedding_map = lambda *args, **kwargs: coordinates
    try:
        load_or_compute_embedding_map(run_dir)
    finally:
        embedding_map.compute_embedding_map = original


def time_pages(run_dir: Path, repeats: int) -> list[tuple[str, str, str]]:
    """Render every page once cold and ``repeats`` times warm, and return (page, cold, warm median)."""
    from streamlit.testing.v1 import AppTest

    table = read_labels_csv(RunFiles(run_dir).labels)
    largest = int(np.bincount(table.classes[:, 0]).argmax())
    results = []
    for name, page in PAGES.items():
        logger.info("Rendering %s", name)
        app = AppTest.from_file(str(PROJECT_ROOT / "app" / "Home.py"), default_timeout=600)
        app.session_state["run_dir"] = str(run_dir)
        app.session_state["classes_class_k10"] = largest
        app.session_state["neighbours_filter"] = table.paths[0]
        started = time.perf_counter()
        app.switch_page(page).run()
        cold = time.perf_counter() - started
        if app.exception or app.error:
            raise RuntimeError(f"{page} failed: {[item.value for item in [*app.exception, *app.error]]}")
        warm = []
        for _ in range(repeats):
            started = time.perf_counter()
            app.run()
            warm.append(time.perf_counter() - started)
        results.append((name, f"{cold:.2f} s", f"{statistics.median(warm):.2f} s"))
    return results


def machine() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="number of synthetic images (default: 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="warm renders per page (default: 3)")
    parser.add_argument("--skip-umap", action="store_true", help="cache a random map instead of running UMAP")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    host = machine()
    with tempfile.TemporaryDirectory(prefix="bench_app_") as folder:
        started = time.perf_counter()
        run_dir = make_run(Path(folder), args.images)
        setup_seconds = time.perf_counter() - started
        engine = time_engine(run_dir, args.skip_umap)
        pages = time_pages(run_dir, args.repeats)

    command = "python bench/bench_app.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`",
        "",
        f"Machine: {host}",
        "",
        f"Synthetic run of {args.images} images made in {setup_seconds:.1f} s.",
        "",
        "| engine call | time |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in engine),
        "",
        f"| page (AppTest) | first render | warm render, median of {args.repeats} |",
        "| --- | --- | --- |",
        *(f"| {name} | {cold} | {warm} |" for name, cold, warm in pages),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
