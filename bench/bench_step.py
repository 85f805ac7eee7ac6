"""Time split of a CPU training step, and two ways tried to make it faster.

One step is the batched augmentation of 2 global views, then the network's
forward and backward passes and the LARS update, as ``core.train`` runs them
(no nearest-neighbour queue). The script times, in one process and on random
uint8 images:

- ``eager``: the step as ``label`` runs it, augmentation and network timed apart;
- ``compiled``: the backbone wrapped in ``torch.compile`` (TorchInductor), whose
  compilation time is reported apart;
- ``background``: the augmentation of the next batch in a second thread while
  the network trains on the current one.

    python bench/bench_step.py --steps 30 --batch-size 256
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_label import cpu_name  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.loss import SelfClassifierLoss  # noqa: E402
from core.optim import LARS, parameter_groups  # noqa: E402
from core.precision import autocast, resolve_precision  # noqa: E402
from core.train import MultiViewForward, build_initial_model  # noqa: E402
from data.transforms import MultiCropAugment, multicrop_config  # noqa: E402
from models.backbones import backbone_feature_dim  # noqa: E402

WARMUP_STEPS = 3


class Step:
    """Augmentation and network update of one batch, built as ``core.train.Trainer`` builds them."""

    def __init__(self, config: TrainConfig, batch_size: int, compiled: bool) -> None:
        self.config = config
        model = build_initial_model(config).to(memory_format=torch.channels_last)
        if compiled:
            model.backbone = torch.compile(model.backbone)
        self.forward = MultiViewForward(model, None)
        self.criterion = SelfClassifierLoss(config.row_tau, config.col_tau, config.eps)
        self.optimizer = LARS(parameter_groups(model), lr=0.1, momentum=0.9, weight_decay=config.weight_decay)
        self.augment = MultiCropAugment(multicrop_config(config.image_size))
        self.generator = torch.Generator().manual_seed(0)
        size = config.image_size
        self.images = torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8, generator=self.generator)
        self.indices = torch.arange(batch_size)

    def views(self) -> list[torch.Tensor]:
        """Return the 2 augmented global views, each (batch, 3, S, S) in channels-last layout."""
        return [v.contiguous(memory_format=torch.channels_last) for v in self.augment(self.images, self.generator)]

    def update(self, views: list[torch.Tensor]) -> None:
        """Run forward, backward and the optimiser on ``views``."""
        with autocast(torch.device("cpu"), self.config.precision):
            logits, _ = self.forward(views, self.indices)
            loss = self.criterion(logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def warm_up(step: Step) -> float:
    """Run the untimed first steps, which build kernels or compile, and return their seconds."""
    started = time.perf_counter()
    for _ in range(WARMUP_STEPS):
        step.update(step.views())
    return time.perf_counter() - started


def time_split(step: Step, steps: int) -> tuple[float, float]:
    """Return median seconds of augmentation and of the network update over ``steps`` steps."""
    augment, network = [], []
    for _ in range(steps):
        started = time.perf_counter()
        views = step.views()
        augmented = time.perf_counter()
        step.update(views)
        augment.append(augmented - started)
        network.append(time.perf_counter() - augmented)
    return statistics.median(augment), statistics.median(network)


def time_background(step: Step, steps: int) -> float:
    """Return seconds per step when a second thread augments the next batch."""
    ready: queue.Queue[list[torch.Tensor]] = queue.Queue(maxsize=2)

    def produce() -> None:
        for _ in range(steps):
            ready.put(step.views())

    started = time.perf_counter()
    threading.Thread(target=produce, daemon=True).start()
    for _ in range(steps):
        step.update(ready.get())
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, torch.device("cpu"))
    config = TrainConfig(image_folder=".", backbone=args.backbone, image_size=args.image_size,
                         hidden_dim=2 * backbone_feature_dim(args.backbone), precision=precision)
    batch = args.batch_size
    print(f"Machine: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"Setup: {args.backbone} at {args.image_size} px, batch {batch}, 2 views, {precision}, "
          f"{args.steps} timed steps after {WARMUP_STEPS} warm-up steps\n")
    print("| variant | augmentation ms | network ms | images/s | first steps s |")
    print("| --- | --- | --- | --- | --- |")

    for name in ("eager", "compiled"):
        step = Step(config, batch, compiled=name == "compiled")
        warmup = warm_up(step)
        augment, network = time_split(step, args.steps)
        rate = batch / (augment + network)
        print(f"| {name} | {augment * 1000:.1f} | {network * 1000:.1f} | {rate:.0f} | {warmup:.1f} |")

    step = Step(config, batch, compiled=False)
    warmup = warm_up(step)
    per_step = time_background(step, args.steps)
    print(f"| background augmentation | - | - | {batch / per_step:.0f} | {warmup:.1f} |")


if __name__ == "__main__":
    main()
