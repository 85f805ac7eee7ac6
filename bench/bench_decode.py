"""Decoding speed of large JPEG photos into the image cache, with and without reduced-size decoding.

Writes ``--count`` synthetic camera-sized JPEGs (smooth colour fields with
noise, ``--width`` x ``--height`` pixels) to a temporary folder. Then it
times ``load_rgb`` and ``fit_square`` on every image in one process, twice.
The first pass decodes every pixel. The second passes ``min_side`` equal to
the cache size, so Pillow's JPEG decoder scales down while decoding. The
mean absolute difference between the two caches shows what the faster path
changes.

    python bench/bench_decode.py --count 100 --size 64 --write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_label import cpu_name, publish  # noqa: E402
from data.cache import fit_square  # noqa: E402
from data.images import load_rgb  # noqa: E402


def write_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Write ``count`` photo-like JPEGs: upsampled colour noise plus fine grain, quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        path = folder / f"photo_{index:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def decode_all(paths: list[Path], size: int, min_side: int) -> tuple[np.ndarray, float]:
    """Return the (count, size, size, 3) cache rows and the seconds taken."""
    started = time.perf_counter()
    rows = np.stack([fit_square(load_rgb(path, min_side), size) for path in paths])
    return rows, time.perf_counter() - started


def report(args: argparse.Namespace, full: float, reduced: float, difference: float) -> str:
    count = args.count
    return "\n".join([
        f"### Decoding {args.width}x{args.height} JPEGs into a {args.size}-pixel cache ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python bench/bench_decode.py --count {count} --size {args.size} "
        f"--width {args.width} --height {args.height}`",
        f"Machine: {cpu_name()}, one process, Pillow {Image.__version__}",
        "",
        "| decoding | seconds | images/s |",
        "| --- | --- | --- |",
        f"| every pixel, then resize | {full:.2f} | {count / full:.1f} |",
        f"| reduced-size JPEG decode (min_side={args.size}), then resize | {reduced:.2f} | {count / reduced:.1f} |",
        "",
        f"Speed-up {full / reduced:.1f}x; mean absolute difference between the two caches "
        f"{difference:.2f} levels of 255.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="number of photos")
    parser.add_argument("--size", type=int, default=64, help="side of the cached images")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--write", action="store_true", help="append the report to bench/RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(Path(folder), args.count, args.width, args.height)
        decode_all(paths[:2], args.size, 0)  # warm the file cache and Pillow's imports
        full_rows, full = decode_all(paths, args.size, 0)
        reduced_rows, reduced = decode_all(paths, args.size, args.size)
    difference = float(np.abs(full_rows.astype(np.float32) - reduced_rows.astype(np.float32)).mean())
    publish(report(args, full, reduced, difference), args.write)


if __name__ == "__main__":
    main()
