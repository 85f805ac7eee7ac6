"""Training loop: epochs over the decoded-image cache, checkpoints, metrics, resume."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core import distributed
from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import TrainConfig
from core.loss import SelfClassifierLoss
from core.metrics_log import EpochTally, append_metrics, describe_epoch, keep_epochs_up_to
from core.nn_queue import NearestNeighbourQueue
from core.optim import FINETUNE_BACKBONE_LR_SCALE, LARS, learning_rate, parameter_groups, set_learning_rate
from core.precision import autocast
from core.run_files import RunFiles
from data.cache import ImageCache, read_batch
from data.transforms import MultiCropAugment, multicrop_config
from models.self_classifier import SelfClassifier, build_model
from models.weights import load_weights, read_weights

logger = logging.getLogger(__name__)


def build_initial_model(config: TrainConfig, load_init: bool = True) -> SelfClassifier:
    """Build the network of ``config`` and, when ``config.init`` is set and ``load_init``, load those weights.

    Raises:
        ValueError: if the initial weights cannot be read or do not fit the network.
    """
    model = build_model(
        config.backbone, config.image_size, config.class_counts,
        config.embedding_dim, config.hidden_dim, config.hidden_layers, standard_stem=config.standard_stem,
    )
    if config.init and load_init:
        load_weights(model, read_weights(config.init, config.backbone))
    return model


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainingState:
    """Training progress, saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    elapsed_seconds: float = 0.0
    finished: bool = False


def training_progress(state: TrainingState, config: TrainConfig, steps_per_epoch: int) -> float:
    """Return the fraction of training done, by steps or by the time budget, whichever is further."""
    by_steps = state.step / max(1, config.epochs * steps_per_epoch)
    if config.time_budget > 0:
        return max(by_steps, state.elapsed_seconds / config.time_budget)
    return by_steps


def budget_spent(state: TrainingState, config: TrainConfig) -> bool:
    """Return whether the time budget is set and used up."""
    return config.time_budget > 0 and state.elapsed_seconds >= config.time_budget


def finished_message(state: TrainingState, config: TrainConfig) -> str:
    """Return why a run's training is over and which option trains it longer."""
    if budget_spent(state, config):
        return (
            f"Training already finished at epoch {state.epoch}: its time budget of {config.time_budget:g} s is "
            f"spent. To train longer, run train again with a larger total --time-budget (for example "
            f"--time-budget {2 * config.time_budget:g}), or --time-budget 0 to stop after --epochs only."
        )
    if state.epoch > config.epochs:
        return (
            f"Training already finished at epoch {state.epoch}, more than the {config.epochs} asked for now, "
            f"so nothing is trained. To train longer, run train again with --epochs above {state.epoch}."
        )
    return (
        f"Training already finished at epoch {state.epoch} of {config.epochs}. To train longer, run train "
        f"again with a larger --epochs."
    )


class MultiViewForward(nn.Module):
    """Run every view through the network and return each head's logits.

    The nearest-neighbour swap of view 1 happens between the embedding and
    the heads, so this wrapper (not the model) is what
    DistributedDataParallel wraps.
    """

    def __init__(self, model: SelfClassifier, queue: NearestNeighbourQueue | None) -> None:
        super().__init__()
        self.model = model
        self.queue = queue

    def forward(
        self, views: list[torch.Tensor], indices: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return logits per head, each (num_views, batch, num_classes), and view 1's embeddings.

        Args:
            views: 2 global views (batch, 3, S, S), then local views (batch, 3, s, s).
            indices: (batch,) dataset index of each image.
        """
        batch = views[0].shape[0]
        embeddings = list(self.model.embed(torch.cat(views[:2])).split(batch))
        if len(views) > 2:
            embeddings += list(self.model.embed(torch.cat(views[2:])).split(batch))

        view1 = embeddings[1]
        if self.queue is not None and self.queue.is_full:
            embeddings[1] = self.queue.nearest(view1.detach(), indices)

        stacked = torch.stack(embeddings)
        logits = [
            head(stacked.flatten(0, 1)).view(len(views), batch, -1) for head in self.model.heads
        ]
        return logits, view1


class Trainer:
    """Train a SelfClassifier on cached images, writing checkpoints and metrics to a run directory.

    Args:
        config: resolved settings (no automatic values left).
        cache: the decoded training images.
        run_dir: where checkpoint.pt and metrics.jsonl go.
        batch_size: images per step on this process.
        device: where the model runs.
    """

    def __init__(
        self, config: TrainConfig, cache: ImageCache, run_dir: Path, batch_size: int, device: torch.device
    ) -> None:
        self.config = config
        self.cache = cache
        self.files = RunFiles(run_dir)
        self.batch_size = batch_size
        self.device = device
        self.steps_per_epoch = len(cache) // (batch_size * distributed.world_size())
        self.state = TrainingState()

        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + distributed.rank())
        self.model = self._build_model()
        self.queue = (
            NearestNeighbourQueue(config.nn_queue_size, config.embedding_dim) if config.nn_queue_size else None
        )
        self.forward = self._wrap(MultiViewForward(self.model, self.queue))
        self.criterion = SelfClassifierLoss(config.row_tau, config.col_tau, config.eps)
        backbone_lr_scale = FINETUNE_BACKBONE_LR_SCALE if config.finetune else 1.0
        self.optimizer = LARS(
            parameter_groups(self.model, self.model.backbone, backbone_lr_scale),
            lr=0.0, momentum=config.momentum, weight_decay=config.weight_decay,
        )
        # Linear scaling rule: the peak rate grows with the global batch, the
        # images of one step over all processes.
        global_batch = batch_size * distributed.world_size()
        self.peak_lr = config.base_lr * global_batch / 256
        logger.info("Peak learning rate %.4g (%.4g per 256 images, global batch %d over %d processes)",
                    self.peak_lr, config.base_lr, global_batch, distributed.world_size())
        self.augment = MultiCropAugment(
            multicrop_config(config.image_size, config.local_size, config.local_crops,
                             config.color_strength, config.min_crop_scale)
        )

    def _build_model(self) -> SelfClassifier:
        # A resumed run reads its own checkpoint, so the initial weights are not needed.
        model = build_initial_model(self.config, load_init=not self.files.checkpoint.exists())
        return model.to(self.device, memory_format=torch.channels_last)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if distributed.world_size() == 1:
            return module
        if self.config.sync_batchnorm:
            if self.device.type != "cuda":
                raise ValueError(
                    f"--sync-batchnorm needs CUDA devices, but this run trains on {self.device}. PyTorch's "
                    "SyncBatchNorm runs on GPUs only, so drop --sync-batchnorm or use --device cuda."
                )
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    # Schedule and stopping

    def progress(self) -> float:
        return training_progress(self.state, self.config, self.steps_per_epoch)

    def _budget_spent(self) -> bool:
        return budget_spent(self.state, self.config)

    # Training

    def fit(self) -> TrainingState:
        """Train until the epochs or the time budget are used up, resuming from a checkpoint if present."""
        if self.files.checkpoint.exists():
            self._resume()
        if self.state.finished:
            logger.info(finished_message(self.state, self.config))
            return self.state
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.cache)} images are fewer than one batch of {self.batch_size}")

        self.model.train()
        while self.state.epoch < self.config.epochs and not self._budget_spent():
            record = self._train_epoch()
            self.state.finished = self.state.epoch >= self.config.epochs or self._budget_spent()
            self._save()
            if distributed.is_main_process():
                append_metrics(self.files.metrics, record)
            logger.info(describe_epoch(record))
        return self.state

    def _train_epoch(self) -> dict:
        # The order depends only on the seed and the epoch, so every process
        # draws the same one and a resumed run repeats it.
        order = np.random.default_rng([self.config.seed, self.state.epoch]).permutation(len(self.cache))
        order = _shard(order, self.steps_per_epoch * self.batch_size)
        tally = EpochTally(self.config.primary_classes)

        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.state.epoch + 1}",
                   disable=distributed.progress_bar_disabled(), leave=False)
        for step in range(self.steps_per_epoch):
            if self._budget_spent():
                logger.info("Time budget of %.0f s spent; stopping", self.config.time_budget)
                break
            step_started = time.perf_counter()
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            loss, primary_logits = self._train_step(batch)
            tally.add(loss, primary_logits)
            self._add_elapsed(time.perf_counter() - step_started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.close()

        # Every process ran the same number of steps on equal shares of each
        # global batch, so the mean of the processes' losses is the loss of
        # the global batch.
        mean_loss = distributed.sum_over_processes(torch.tensor(tally.mean_loss(), dtype=torch.float64))
        self.state.epoch += 1
        return tally.record(
            epoch=self.state.epoch, step=self.state.step, lr=self.optimizer.param_groups[0]["lr"],
            elapsed_seconds=self.state.elapsed_seconds,
            images=tally.steps * self.batch_size * distributed.world_size(),
            loss=float(mean_loss / distributed.world_size()),
            class_counts=distributed.sum_over_processes(tally.class_counts),
        )

    def _add_elapsed(self, seconds: float) -> None:
        self.state.elapsed_seconds += seconds
        # The time budget sets the learning rate and when to stop, so every
        # process uses the elapsed time of the slowest one.
        if self.config.time_budget > 0:
            self.state.elapsed_seconds = distributed.max_over_processes(self.state.elapsed_seconds)

    def _train_step(self, batch: np.ndarray) -> tuple[float, torch.Tensor]:
        indices, images = read_batch(self.cache, batch)
        indices_tensor = torch.from_numpy(indices)
        images = images.to(self.device, non_blocking=True)
        views = [v.contiguous(memory_format=torch.channels_last) for v in self.augment(images, self.generator)]
        set_learning_rate(self.optimizer, learning_rate(self.progress(), self.peak_lr,
                                                        self.config.warmup_fraction))

        with autocast(self.device, self.config.precision):
            logits, view1 = self.forward(views, indices_tensor)
            loss = self.criterion(logits)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {self.state.step}; the last good checkpoint "
                f"{self.files.checkpoint} is kept. Lower --lr or set --grad-clip, then run train again."
            )

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        if self.queue is not None:
            self.queue.push(distributed.gather(view1.detach().float()), distributed.gather(indices_tensor))
        self.state.step += 1
        return loss.item(), logits[0][0].detach()

    # Checkpoints

    def _save(self) -> None:
        """Write the checkpoint on the main process, and return on every process once it is written."""
        generators = distributed.gather(self.generator.get_state()[None])
        if distributed.is_main_process():
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "training": vars(self.state).copy(),
                "generator": self.generator.get_state(),
                "generators": generators,
                "torch_rng": torch.get_rng_state(),
                "config": self.config.to_dict(),
            }
            if self.queue is not None:
                state["queue"] = self.queue.state_dict()
            save_checkpoint(self.files.checkpoint, state)
        distributed.barrier()

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.files.checkpoint, map_location=self.device)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainingState(**checkpoint["training"])
        self._restore_generator(checkpoint)
        torch.set_rng_state(checkpoint["torch_rng"].cpu())
        if self.queue is not None and "queue" in checkpoint:
            self.queue.load_state_dict(checkpoint["queue"])
        if self.state.epoch < self.config.epochs and not self._budget_spent():
            self.state.finished = False
        if distributed.is_main_process():
            keep_epochs_up_to(self.files.metrics, self.state.epoch)
        logger.info("Resuming from %s after epoch %d (step %d)",
                    self.files.checkpoint, self.state.epoch, self.state.step)

    def _restore_generator(self, checkpoint: dict) -> None:
        """Give this process back its augmentation random state, by rank."""
        states = checkpoint.get("generators")
        world, rank = distributed.world_size(), distributed.rank()
        if states is not None and states.shape[0] == world:
            # A clone, because set_state on a view of a larger tensor crashes (PyTorch 2.14.1).
            self.generator.set_state(states[rank].cpu().clone())
        elif world == 1:
            self.generator.set_state(checkpoint["generator"].cpu())
        else:
            saved = states.shape[0] if states is not None else 1
            logger.info("The checkpoint was written by %d processes, not %d, so the augmentation random "
                        "states restart from the seed, the rank and the step", saved, world)
            seed = np.random.SeedSequence([self.config.seed, rank, self.state.step]).generate_state(1)[0]
            self.generator.manual_seed(int(seed))


def _shard(order: np.ndarray, used: int) -> np.ndarray:
    """Return this process's ``used`` images of a shuffled order: every world_size-th one."""
    world = distributed.world_size()
    return order[: used * world][distributed.rank()::world]
