"""Clustering quality of `label` on a folder with ground-truth class folders, against k-means on pixels.

Runs `python -m core label FOLDER` with a fixed training time budget in a
child process, evaluates it, fits k-means on the raw pixels of the same
images in the same run, and prints a Markdown report (also appended to
bench/RESULTS.md with --write).

    python bench/bench_label.py ../datasets/cifar10-test --budget 600 --write

Options that this script does not know are passed on to `label`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.evaluate import evaluate_assignments  # noqa: E402
from core.metrics_log import read_metrics  # noqa: E402
from data.cache import build_cache  # noqa: E402
from data.scan import ground_truth_label, scan_folder  # noqa: E402


def run_label(folder: Path, run_dir: Path, budget: float, extra: list[str]) -> tuple[float, float]:
    """Run `label` in a child process; return its wall seconds and peak resident memory in MiB."""
    command = [sys.executable, "-m", "core", "label", str(folder), "--out", str(run_dir),
               "--time-budget", str(budget), *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, peak_kib / 1024


def kmeans_on_pixels(folder: Path, classes: int, seed: int, cache_dir: Path) -> dict:
    """Cluster the raw 32x32 pixels with k-means and score it against the folder names."""
    paths = scan_folder(folder)
    cache = build_cache(folder, paths, 32, cache_dir, workers=2)
    pixels = np.asarray(cache.images, dtype=np.float32).reshape(len(cache), -1) / 255
    clusters = KMeans(n_clusters=classes, n_init=3, random_state=seed).fit_predict(pixels)
    return evaluate_assignments([ground_truth_label(p) for p in cache.paths], clusters)


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo, or the architecture where that file is missing."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def publish(text: str, write: bool) -> None:
    """Print a markdown report and, when ``write`` is set, append it to bench/RESULTS.md."""
    sys.stdout.write(text)
    if write:
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


def report(args: argparse.Namespace, ours: dict, baseline: dict, seconds: float, peak_mib: float,
           metrics: list[dict]) -> str:
    steady = [m["images_per_second"] for m in metrics[1:]] or [metrics[0]["images_per_second"]]
    head = ours["heads"][ours["primary"]]
    config = json.loads((args.out / "config.json").read_text(encoding="utf-8"))
    lines = [
        f"### Clustering quality: `label` vs k-means on pixels ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python bench/bench_label.py {args.folder} --budget {args.budget:g} "
        + (f"-- {' '.join(args.extra)}" if args.extra else "").strip() + "`",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, no GPU",
        "",
        "| method | ACC | NMI | ARI | non-empty classes |",
        "| --- | --- | --- | --- | --- |",
        f"| Self-Classifier ({ours['primary']}, {args.budget:g} s training) | {head['acc']:.3f} | "
        f"{head['nmi']:.3f} | {head['ari']:.3f} | {head['num_nonempty_classes']} |",
        f"| k-means on raw pixels | {baseline['acc']:.3f} | {baseline['nmi']:.3f} | "
        f"{baseline['ari']:.3f} | {baseline['num_nonempty_classes']} |",
        "",
        f"Backbone {config['backbone']} at {config['image_size']} px, batch {config['batch_size']}, "
        f"precision {config.get('precision', 'fp32')}.",
        f"Epochs: {len(metrics)}; training throughput (median over epochs after the first): "
        f"{np.median(steady):.0f} images/s; whole `label` wall time {seconds:.0f} s; "
        f"peak resident memory of `label` {peak_mib:.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="image folder with one sub-folder per true class")
    parser.add_argument("--budget", type=float, default=600, help="training seconds for `label`")
    parser.add_argument("--classes", type=int, default=10, help="clusters for both methods")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-label")
    parser.add_argument("--write", action="store_true", help="append the report to bench/RESULTS.md")
    args, extra = parser.parse_known_args()
    args.extra = [item for item in extra if item != "--"]

    if args.out.exists():
        subprocess.run(["rm", "-rf", str(args.out)], check=True)
    seconds, peak_mib = run_label(args.folder, args.out, args.budget, ["--classes", str(args.classes), *args.extra])
    ours = json.loads(subprocess.run(
        [sys.executable, "-m", "core", "evaluate", str(args.out)], cwd=REPO, check=True,
        capture_output=True, text=True,
    ).stdout)
    baseline = kmeans_on_pixels(args.folder, args.classes, seed=0, cache_dir=args.out / "kmeans-cache")
    publish(report(args, ours, baseline, seconds, peak_mib, read_metrics(args.out / "metrics.jsonl")), args.write)


if __name__ == "__main__":
    main()
