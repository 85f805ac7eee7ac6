"""Time and peak memory of each stage on synthetic folders of growing size.

For each size N, writes N synthetic JPEG images of mixed sizes (64 to 512
pixels) to a temporary directory, then runs scan, decode, one training
epoch, assignment, nearest-neighbour indexing and the 2-D map, each in a
fresh process so that its peak resident memory is its own.

    python bench/bench_scale.py --sizes 1000 10000 100000
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_synthetic_folder(root: Path, count: int, seed: int = 0) -> None:
    """Write ``count`` JPEGs of random sizes between 64 and 512 pixels, 1,000 per sub-folder."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / f"part{index // 1000:04d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        width, height = rng.integers(64, 513, size=2)
        # A smooth random gradient with noise compresses like a photo, unlike pure noise.
        colour = rng.integers(0, 256, size=3)
        ramp = np.linspace(0, 1, int(width))[None, :, None] * rng.integers(0, 128, size=3)
        pixels = np.clip(colour + ramp + rng.normal(0, 8, (int(height), int(width), 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index:06d}.jpg", quality=85)


def _stage_runner(name: str, root: str, run_dir: str, queue) -> None:
    import torch

    from core.assign import assign_cache, load_trained_model
    from core.config import TrainConfig
    from core.jobs import prepare_images
    from core.train import Trainer
    from data.scan import scan_folder

    started = time.perf_counter()
    config = TrainConfig(image_folder=root, class_counts=(10,), epochs=1)
    if name == "scan":
        scan_folder(Path(root))
    elif name == "decode":
        prepare_images(config, Path(run_dir))
    elif name == "train one epoch":
        config, cache = prepare_images(config, Path(run_dir))
        config = config.replace(batch_size=min(256, len(cache)))
        config.save(Path(run_dir) / "config.json")
        started = time.perf_counter()
        Trainer(config, cache, Path(run_dir), config.batch_size, torch.device("cpu")).fit()
    elif name == "assign":
        _, cache = prepare_images(config, Path(run_dir))
        started = time.perf_counter()
        model, saved = load_trained_model(Path(run_dir), torch.device("cpu"))
        assign_cache(model, cache, saved.row_tau, Path(run_dir) / "embeddings.npy", torch.device("cpu"))
    elif name == "index":
        _run_optional("core.index", "build_index_for_run", Path(run_dir))
    elif name == "map":
        _run_optional("core.embedding_map", "compute_map_for_run", Path(run_dir))
    seconds = time.perf_counter() - started
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _run_optional(module_name: str, function_name: str, run_dir: Path) -> None:
    import importlib

    function: Callable = getattr(importlib.import_module(module_name), function_name)
    function(run_dir)


def run_stage(name: str, root: Path, run_dir: Path) -> tuple[float, float]:
    """Run one stage in a fresh process; return its seconds and peak resident MiB."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_stage_runner, args=(name, str(root), str(run_dir), queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        return float("nan"), float("nan")
    return queue.get()


STAGES = ("scan", "decode", "train one epoch", "assign", "index", "map")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        try:
            started = time.perf_counter()
            write_synthetic_folder(workdir / "images", size)
            sys.stderr.write(f"wrote {size} images in {time.perf_counter() - started:.0f} s\n")
            for stage in args.stages:
                seconds, peak = run_stage(stage, workdir / "images", workdir / "run")
                rows.append(f"| {size:,} | {stage} | {seconds:.1f} | {peak:.0f} |")
                sys.stderr.write(rows[-1] + "\n")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    lines = ["| images | stage | seconds | peak resident MiB |", "| --- | --- | --- | --- |", *rows]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
