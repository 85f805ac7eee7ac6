"""Training throughput: our batched pipeline against a per-image reference loop.

The reference is written the way the paper's code trains: every image is
decoded and augmented on its own with torchvision transforms on PIL images
inside DataLoader workers, then the same model, loss, optimiser and batch
size run the step. Ours reads the decoded-image cache and augments whole
batches with tensor operations (data/transforms.py).

The two alternate in rounds within one process, so that machine noise hits
both; the report gives medians and the ratio. With --images N both are then
trained on the same number of images from the same initial weights, and the
clustering accuracy of each is measured on the whole folder.

    python bench/bench_throughput.py ../datasets/cifar10-test --rounds 5 --steps 10 --images 40000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.assign import assign_cache  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.evaluate import evaluate_assignments  # noqa: E402
from core.loss import SelfClassifierLoss  # noqa: E402
from core.optim import LARS, parameter_groups  # noqa: E402
from core.setup import resolve_config  # noqa: E402
from core.train import Trainer  # noqa: E402
from data.cache import build_cache  # noqa: E402
from data.images import load_rgb  # noqa: E402
from data.scan import ground_truth_label, scan_folder  # noqa: E402
from data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


class TwoViewFolder(Dataset):
    """Per-image PIL pipeline: decode, then two independently augmented views."""

    def __init__(self, root: Path, paths: list[str], size: int) -> None:
        self.root, self.paths = root, paths
        jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        self.transform = v2.Compose([
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            jitter,
            v2.RandomGrayscale(p=0.2),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(self.root / self.paths[index])
        return self.transform(image), self.transform(image)


class ReferenceLoop:
    """The paper-style loop around a model built like ours.

    Its DataLoader workers run only between ``start`` and ``stop``. Left
    running, they would prepare batches during our pipeline's turn, which
    slows ours and hands the reference batches made outside its own time.
    """

    def __init__(self, trainer: Trainer, root: Path, paths: list[str], workers: int) -> None:
        self.trainer = trainer
        dataset = TwoViewFolder(root, paths, trainer.config.image_size)
        self.loader = DataLoader(dataset, batch_size=trainer.batch_size, shuffle=True, num_workers=workers,
                                 drop_last=True)
        self.batches = None
        self.criterion = SelfClassifierLoss()
        self.optimizer = LARS(parameter_groups(trainer.model), lr=trainer.peak_lr, weight_decay=1e-6)

    def start(self) -> None:
        """Start the workers; the time they take to start counts against the reference."""
        self.batches = iter(self.loader)

    def stop(self) -> None:
        """Shut the workers down, dropping the batches they prepared ahead."""
        self.batches = None

    def step(self) -> None:
        if self.batches is None:
            self.start()
        try:
            view1, view2 = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            view1, view2 = next(self.batches)
        model = self.trainer.model
        batch = view1.shape[0]
        embeddings = model.embed(torch.cat([view1, view2]).contiguous(memory_format=torch.channels_last))
        logits = [head(embeddings).view(2, batch, -1) for head in model.heads]
        loss = self.criterion(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def images_per_second(step, steps: int, batch: int, start=None, stop=None) -> float:
    """Time ``steps`` calls of ``step``, with ``start`` inside the timing and ``stop`` after it."""
    started = time.perf_counter()
    if start is not None:
        start()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    if stop is not None:
        stop()
    return steps * batch / seconds


def make_trainer(config: TrainConfig, cache, run_dir: Path) -> Trainer:
    trainer = Trainer(config, cache, run_dir, config.batch_size, torch.device("cpu"))
    trainer.model.train()
    return trainer


def ours_step(trainer: Trainer):
    """Return a function that runs one of our training steps on a random batch."""
    rng = np.random.default_rng(0)
    return lambda: trainer._train_step(rng.choice(len(trainer.cache), trainer.batch_size, replace=False))


def accuracy(trainer: Trainer, cache, run_dir: Path) -> float:
    result = assign_cache(trainer.model.eval(), cache, trainer.config.row_tau, run_dir / "emb.npy",
                          torch.device("cpu"))
    trainer.model.train()
    truth = [ground_truth_label(p) for p in result.paths]
    return evaluate_assignments(truth, result.classes[:, 0])["acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per method per round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference")
    parser.add_argument("--images", type=int, default=0, help="also train each on this many images and compare ACC")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-throughput")
    args = parser.parse_args()

    paths = scan_folder(args.folder)
    config = resolve_config(TrainConfig(image_folder=str(args.folder), class_counts=(10,),
                                        batch_size=args.batch_size, warmup_fraction=0.0), args.folder, paths)
    cache = build_cache(args.folder, paths, config.image_size, args.out / "cache", workers=2)
    ours = make_trainer(config, cache, args.out / "ours")
    reference = ReferenceLoop(make_trainer(config, cache, args.out / "reference"), args.folder, paths, args.workers)

    ours_rates, reference_rates = [], []
    for _ in range(args.rounds):
        reference_rates.append(images_per_second(reference.step, args.steps, args.batch_size,
                                                 reference.start, reference.stop))
        ours_rates.append(images_per_second(ours_step(ours), args.steps, args.batch_size))
    ours_median, reference_median = statistics.median(ours_rates), statistics.median(reference_rates)

    lines = [
        f"Command: `python bench/bench_throughput.py {args.folder} --rounds {args.rounds} --steps {args.steps} "
        f"--batch-size {args.batch_size} --images {args.images}`",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        f"Setup: {config.backbone} at {config.image_size} px, batch {args.batch_size}, 2 views",
        "",
        "| pipeline | median images/s | all rounds |",
        "| --- | --- | --- |",
        f"| reference (per-image PIL, {args.workers} workers) | {reference_median:.0f} | "
        + ", ".join(f"{r:.0f}" for r in reference_rates) + " |",
        f"| ours (cache + batched tensors) | {ours_median:.0f} | " + ", ".join(f"{r:.0f}" for r in ours_rates) + " |",
        "",
        f"Ratio ours / reference: {ours_median / reference_median:.2f}",
    ]
    if args.images:
        torch.manual_seed(0)
        fresh_ours = make_trainer(config, cache, args.out / "ours-acc")
        fresh_reference = ReferenceLoop(make_trainer(config, cache, args.out / "ref-acc"), args.folder, paths,
                                        args.workers)
        steps = args.images // args.batch_size
        for trainer_step in (ours_step(fresh_ours), fresh_reference.step):
            for _ in range(steps):
                trainer_step()
        fresh_reference.stop()
        lines.append(
            f"ACC after {steps * args.batch_size} images at a constant learning rate: ours "
            f"{accuracy(fresh_ours, cache, args.out):.3f}, reference "
            f"{accuracy(fresh_reference.trainer, cache, args.out):.3f}"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
