"""Head-only training: the projection and heads learn on backbone features computed once.

With the backbone frozen, its output for a given input never changes, so it
runs once per image and view before training starts. ``load_or_compute_features``
writes ``RUN/features.npy``, a (num_views + 1, num_images, feature_dim)
array: view 0 is the plain image (normalised, not augmented) and views 1 and
up are global views from ``data.transforms.MultiCropAugment``. Every training
step then takes two different views of each image in the batch from this
array, so an epoch costs only the projection MLP and the heads.

The defaults differ from full training: milder views (``head_only_augment``),
the plain image among the views, and a 10 times higher learning rate
(``HEAD_ONLY_BASE_LR``). LARS scales each update to a fixed fraction of the
weight's norm, so the few steps of a head-only run move the weights little at
full training's rate. They were chosen on the demo images with backbones of
short runs of this tool (1 to 5 epochs), comparing the primary head's
accuracy with k-means on the same features, 3 head seeds each:

* 2 classes, 100 images, 3 backbones: 0.75 to 0.83 against k-means' 0.66 to 0.70.
* 3 classes, 120 images, 6 backbones: at or above k-means in 14 of 18 cases,
  but in only 4 of 18 with colour jitter (probability 0.8) added to the views.
* 10 classes, 500 images, 1 backbone: 0.20 to 0.22, like k-means' 0.20
  (0.22 on L2-normalised features).

NOTE: these backbones are weak. How the two compare on strong features, such
as ImageNet weights, is not measured here; ``bench/bench_head_only.py``
measures it for a given run and folder.

The features depend on the backbone's weights, the images, the number of
views and the seed. ``RUN/features.json`` records these, so a later call
reuses the file only when they are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import TrainConfig
from core.json_files import write_json_atomic
from core.loss import NUM_GLOBAL_VIEWS, SelfClassifierLoss
from core.metrics_log import EpochTally, append_metrics, describe_epoch, keep_epochs_up_to
from core.optim import LARS, learning_rate, parameter_groups, set_learning_rate
from core.precision import autocast, inference_autocast
from core.run_files import RunFiles
from core.train import TrainingDivergedError, TrainingState, budget_spent, training_progress
from data.cache import ImageCache
from data.transforms import AugmentConfig, MultiCropAugment, normalize
from models.self_classifier import SelfClassifier

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = 4
HEAD_ONLY_BASE_LR = 5.0
# Smallest area fraction of the random crops of head-only views.
HEAD_ONLY_MIN_SCALE = 0.6
FEATURE_BATCH = 256
CLASSIFY_BATCH = 4096
# Similarities computed at once when searching neighbours: 64 MiB of float32.
NEIGHBOUR_BLOCK = 1 << 24
FEATURES_FILE = "features.npy"
FEATURES_INFO = "features.json"
_FEATURES_FORMAT = 1


# ----------------------------------------------------------------- features


def head_only_augment(image_size: int) -> AugmentConfig:
    """Return the views of head-only training: crops of at least 60 % of the image and horizontal flips.

    Colour jitter, grayscale, blur and solarisation are off. A frozen
    backbone cannot learn to ignore them, and with them the heads learned to
    ignore colour, which separates many classes in weak features.
    """
    return AugmentConfig(
        global_size=image_size,
        global_scale=(HEAD_ONLY_MIN_SCALE, 1.0),
        jitter_probability=0.0,
        grayscale_probability=0.0,
        global_blur_probability=(0.0, 0.0),
        solarize_probability=(0.0, 0.0),
    )


def head_only_option(config: TrainConfig) -> str:
    """Return the option that makes the run head-only, for messages: --freeze-backbone or --backbone NAME."""
    return "--freeze-backbone" if config.freeze_backbone else f"--backbone {config.backbone}"


def _warn_unused_options(config: TrainConfig, uses_augment_options: bool) -> None:
    """Log a warning for each option the run sets that head-only training does not use.

    ``uses_augment_options`` is False when the views come from ``head_only_augment``,
    which ignores --color-strength and --min-crop-scale.
    """
    option = head_only_option(config)
    augment_options = (config.color_strength, config.min_crop_scale)
    if not uses_augment_options and augment_options != (TrainConfig.color_strength, TrainConfig.min_crop_scale):
        logger.warning(
            "--freeze-backbone uses its own views (no colour changes, crops of at least %.0f%% of the image), "
            "so --color-strength and --min-crop-scale have no effect", HEAD_ONLY_MIN_SCALE * 100,
        )
    if config.local_crops > 0:
        logger.warning("%s trains on cached global views only, so --local-crops %d has no effect",
                       option, config.local_crops)
    if config.nn_queue_size > 0:
        logger.warning("%s pairs views of the same image, so --nn-queue %d has no effect",
                       option, config.nn_queue_size)
    if config.base_lr != TrainConfig.base_lr:
        logger.warning("%s does not use --lr %g; set its learning rate with --head-lr (now %g)",
                       option, config.base_lr, config.head_lr)


@torch.no_grad()
def compute_view_features(
    backbone: nn.Module,
    images: np.ndarray,
    path: Path,
    num_views: int,
    device: torch.device,
    seed: int,
    augment: AugmentConfig | None = None,
    dtype: type = np.float16,
) -> np.ndarray:
    """Write the backbone features of every image, plain and augmented, to the .npy file ``path``.

    Args:
        backbone: maps (batch, 3, S, S) normalised images to (batch, feature_dim).
            It runs in evaluation mode, so BatchNorm uses its running statistics.
        images: (num_images, S, S, 3) uint8 images.
        num_views: augmented views per image, at least 2.
        augment: the augmentation of the views; only its global-view
            settings are used. None uses ``head_only_augment(S)``.
        dtype: storage type; float16 halves the file against float32.

    Returns:
        The (num_views + 1, num_images, feature_dim) array, memory-mapped from
        ``path``; view 0 is the plain image.

    Raises:
        ValueError: if ``num_views`` is below 2 or ``images`` is empty.
    """
    if num_views < NUM_GLOBAL_VIEWS:
        raise ValueError(f"head-only training needs at least 2 augmented views per image, got {num_views}")
    if len(images) == 0:
        raise ValueError("no images to compute features of; the image folder has no usable image")
    augmenter = MultiCropAugment(augment or head_only_augment(images.shape[1]))
    generator = torch.Generator().manual_seed(seed)
    backbone.eval()

    partial = path.with_name(path.stem + ".partial.npy")
    output: np.ndarray | None = None
    with tqdm(total=len(images), desc="features", unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(images), FEATURE_BATCH):
            pixels = torch.from_numpy(np.array(images[start:start + FEATURE_BATCH])).to(device)
            features = _batch_view_features(backbone, pixels, num_views, augmenter, generator, device)
            if output is None:
                shape = (num_views + 1, len(images), features.shape[-1])
                output = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
            output[:, start:start + len(pixels)] = features
            bar.update(len(pixels))
    if isinstance(output, np.memmap):
        output.flush()
    del output
    os.replace(partial, path)
    return np.load(path, mmap_mode="r")


def _batch_view_features(
    backbone: nn.Module,
    pixels: torch.Tensor,
    num_views: int,
    augment: MultiCropAugment,
    generator: torch.Generator,
    device: torch.device,
) -> np.ndarray:
    """Return (num_views + 1, batch, feature_dim) features of (batch, S, S, 3) uint8 ``pixels``."""
    views = [normalize(pixels.permute(0, 3, 1, 2).float().div(255))]
    # Each call returns 2 global views; an odd count drops the last one.
    while len(views) < num_views + 1:
        views += augment(pixels, generator)

    outputs = []
    with inference_autocast(device):
        for view in views[: num_views + 1]:
            outputs.append(backbone(view.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.stack(outputs).numpy()


def load_or_compute_features(
    run_dir: Path,
    backbone: nn.Module,
    cache: ImageCache,
    num_views: int,
    device: torch.device,
    seed: int,
    augment: AugmentConfig | None = None,
) -> np.ndarray:
    """Return ``RUN/features.npy`` for ``cache``, computing it when its record in features.json differs.

    Returns:
        (num_views + 1, num_images, feature_dim) float16 features, memory-mapped;
        view 0 is the plain image and views 1 and up are augmented.
    """
    path, info_path = Path(run_dir) / FEATURES_FILE, Path(run_dir) / FEATURES_INFO
    augment = augment or head_only_augment(cache.size)
    stamp = features_stamp(backbone, cache.paths, augment, num_views, seed)
    if path.exists() and _read_json(info_path) == stamp:
        logger.info("Reusing the cached backbone features %s", path)
        return np.load(path, mmap_mode="r")

    info_path.unlink(missing_ok=True)
    started = time.perf_counter()
    features = compute_view_features(backbone, cache.images, path, num_views, device, seed, augment)
    write_json_atomic(info_path, stamp)
    logger.info(
        "Computed backbone features of %d images x %d views in %.1f s",
        len(cache), num_views + 1, time.perf_counter() - started,
    )
    return features


def features_stamp(
    backbone: nn.Module, paths: Sequence[str], augment: AugmentConfig, num_views: int, seed: int
) -> dict:
    """Return what the cached features depend on, with digests of the backbone's tensors and the paths."""
    weights = hashlib.sha256()
    for key, tensor in sorted(backbone.state_dict().items()):
        weights.update(key.encode())
        weights.update(tensor.detach().float().cpu().numpy().tobytes())
    images = hashlib.sha256("\n".join(paths).encode())
    stamp = {
        "format": _FEATURES_FORMAT,
        "backbone": weights.hexdigest(),
        "paths": images.hexdigest(),
        "num_images": len(paths),
        "augment": dataclasses.asdict(augment),
        "views": num_views,
        "seed": seed,
    }
    # Through JSON and back, so that it compares equal to the copy read from features.json.
    return json.loads(json.dumps(stamp))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------- training


class HeadTrainer:
    """Train the projection and heads of a SelfClassifier on cached backbone features.

    The backbone's parameters are frozen and it is never called. Settings
    come from ``config``: batch_size (resolved, not 0), epochs, time_budget,
    warmup_fraction, weight_decay, momentum, grad_clip, the loss
    temperatures and seed. Its base_lr is not used.

    Args:
        model: the network whose projection and heads are trained in place.
        views: (num_views, num_images, feature_dim) backbone features of at
            least 2 views of every image, such as all views of
            ``load_or_compute_features``.
        config: resolved settings.
        device: where the projection and heads run.
        metrics_path: metrics.jsonl to append one record per epoch to, or None.
        base_lr: peak learning rate for a batch of 256, scaled linearly with
            the batch size.
        neighbours: (num_images, k) indices of each image's nearest other
            images (``nearest_neighbours``). With them the second view of a
            pair is any view of a random one of these neighbours, like the
            nearest-neighbour swap of full training. None pairs two views of
            the same image. Neighbour pairs were not better on the demo
            trials in the module documentation, so none is the default.
    """

    def __init__(
        self,
        model: SelfClassifier,
        views: np.ndarray,
        config: TrainConfig,
        device: torch.device,
        metrics_path: Path | None = None,
        base_lr: float = HEAD_ONLY_BASE_LR,
        neighbours: np.ndarray | None = None,
    ) -> None:
        _check_views(views, config.batch_size)
        _check_neighbours(neighbours, views.shape[1])
        if not base_lr > 0:
            raise ValueError(f"learning rate must be positive, got {base_lr}")
        self.model = model
        self.config = config
        self.device = device
        self.metrics_path = metrics_path
        # A copy in memory, because training reads random rows of every view. NOTE: it takes
        # views.nbytes of RAM, 2 GB for 5 float16 views of 100,000 ResNet-50 features.
        self.views = torch.from_numpy(np.array(views))
        self.batch_size = config.batch_size
        self.steps_per_epoch = self.views.shape[1] // self.batch_size
        self.neighbours = None if neighbours is None else torch.from_numpy(np.asarray(neighbours, dtype=np.int64))
        self.state = TrainingState()

        model.backbone.requires_grad_(False)
        self.trainable = nn.ModuleList([model.projection, model.heads]).to(device)
        self.criterion = SelfClassifierLoss(config.row_tau, config.col_tau, config.eps)
        self.optimizer = LARS(
            parameter_groups(self.trainable), lr=0.0, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.peak_lr = base_lr * self.batch_size / 256

    def progress(self) -> float:
        return training_progress(self.state, self.config, self.steps_per_epoch)

    def _budget_spent(self) -> bool:
        return budget_spent(self.state, self.config)

    def fit(self) -> TrainingState:
        """Train until the epochs or the time budget are used up, and return the training state.

        Raises:
            TrainingDivergedError: if the loss becomes NaN or infinite.
        """
        self.trainable.train()
        while self.state.epoch < self.config.epochs and not self._budget_spent():
            record = self._train_epoch()
            if self.metrics_path is not None:
                append_metrics(self.metrics_path, record)
            logger.info(describe_epoch(record))
        self.state.finished = True
        self.model.eval()
        return self.state

    def _train_epoch(self) -> dict:
        # The order and the views depend only on the seed and the epoch.
        rng = np.random.default_rng([self.config.seed, self.state.epoch])
        order = torch.from_numpy(rng.permutation(self.views.shape[1]))
        tally = EpochTally(self.config.primary_classes)

        for step in range(self.steps_per_epoch):
            if self._budget_spent():
                logger.info("Time budget of %.0f s spent; stopping", self.config.time_budget)
                break
            step_started = time.perf_counter()
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            tally.add(*self._train_step(batch, rng))
            self.state.elapsed_seconds += time.perf_counter() - step_started

        self.state.epoch += 1
        return tally.record(
            epoch=self.state.epoch, step=self.state.step, lr=self.optimizer.param_groups[0]["lr"],
            elapsed_seconds=self.state.elapsed_seconds, images=tally.steps * self.batch_size,
        )

    def _train_step(self, batch: torch.Tensor, rng: np.random.Generator) -> tuple[float, torch.Tensor]:
        """Run one step on images ``batch`` (batch,); return the loss and view 0's primary logits."""
        num_views = self.views.shape[0]
        first = torch.from_numpy(rng.integers(num_views, size=len(batch)))
        if self.neighbours is None:
            # Two different views of every image: the second is offset
            # from the first by 1 to num_views - 1, modulo num_views.
            partner = batch
            second = (first + torch.from_numpy(rng.integers(1, num_views, size=len(batch)))) % num_views
        else:
            # Any view of one of the image's nearest neighbours.
            choice = torch.from_numpy(rng.integers(self.neighbours.shape[1], size=len(batch)))
            partner = self.neighbours[batch, choice]
            second = torch.from_numpy(rng.integers(num_views, size=len(batch)))
        pair = torch.cat([self.views[first, batch], self.views[second, partner]]).to(self.device).float()
        set_learning_rate(self.optimizer, learning_rate(self.progress(), self.peak_lr, self.config.warmup_fraction))

        with autocast(self.device, self.config.precision):
            embeddings = self.model.projection(pair)
            logits = [head(embeddings).view(NUM_GLOBAL_VIEWS, len(batch), -1) for head in self.model.heads]
            loss = self.criterion(logits)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at step {self.state.step} of head-only training; "
                "lower --lr or set --grad-clip, then run train again"
            )

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.trainable.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        return loss.item(), logits[0][0].detach()


def _check_neighbours(neighbours: np.ndarray | None, num_images: int) -> None:
    if neighbours is None:
        return
    if neighbours.ndim != 2 or neighbours.shape[0] != num_images or neighbours.shape[1] < 1:
        raise ValueError(
            f"neighbours must be (num_images, k) = ({num_images}, k >= 1), got shape {neighbours.shape}"
        )


def nearest_neighbours(features: np.ndarray, k: int) -> np.ndarray:
    """Return the (num_images, k) indices of each image's k most cosine-similar other images, best first.

    Args:
        features: (num_images, feature_dim) features, such as view 0 of
            ``load_or_compute_features``.

    Raises:
        ValueError: if ``k`` is not in [1, num_images - 1].
    """
    count = len(features)
    if not 1 <= k < count:
        raise ValueError(f"neighbours per image must be in [1, {count - 1}] for {count} images, got {k}")
    vectors = torch.nn.functional.normalize(torch.from_numpy(np.asarray(features, dtype=np.float32)), dim=1)
    rows_per_block = max(1, NEIGHBOUR_BLOCK // count)
    found = []
    for start in range(0, count, rows_per_block):
        similarities = vectors[start:start + rows_per_block] @ vectors.T
        # An image is not its own neighbour.
        own = torch.arange(start, start + len(similarities))
        similarities[torch.arange(len(similarities)), own] = -float("inf")
        found.append(similarities.topk(k, dim=1).indices)
    return torch.cat(found).numpy()


def _check_views(views: np.ndarray, batch_size: int) -> None:
    if views.ndim != 3:
        raise ValueError(f"views must be (num_views, num_images, feature_dim), got shape {views.shape}")
    if views.shape[0] < NUM_GLOBAL_VIEWS:
        raise ValueError(f"head-only training needs at least 2 augmented views per image, got {views.shape[0]}")
    if batch_size < 2:
        raise ValueError(f"batch size must be at least 2, got {batch_size}; resolve the settings first")
    if views.shape[1] < batch_size:
        raise ValueError(
            f"{views.shape[1]} images are fewer than one batch of {batch_size}; pass a smaller --batch-size"
        )


# ------------------------------------------------------------ classification


@torch.no_grad()
def classify_features(
    model: SelfClassifier, features: np.ndarray, row_tau: float, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign every image from its backbone features, as ``core.assign`` does from pixels.

    Args:
        features: (num_images, feature_dim) backbone features of the plain images.
        row_tau: temperature of the softmax over classes behind the confidences.

    Returns:
        classes (num_images, num_heads) int64, confidences (num_images, num_heads)
        float32 (softmax probability of the chosen class) and embeddings
        (num_images, embedding_dim) float32.
    """
    model.eval()
    classes, confidences, embeddings = [], [], []
    for start in range(0, len(features), CLASSIFY_BATCH):
        batch = torch.from_numpy(np.asarray(features[start:start + CLASSIFY_BATCH], dtype=np.float32))
        embedding = model.projection(batch.to(device))
        probabilities = [torch.softmax(logits / row_tau, dim=1) for logits in model.classify(embedding)]
        best = [p.max(dim=1) for p in probabilities]
        confidences.append(torch.stack([value for value, _ in best], dim=1).cpu())
        classes.append(torch.stack([index for _, index in best], dim=1).cpu())
        embeddings.append(embedding.cpu())
    return (
        torch.cat(classes).numpy().astype(np.int64),
        torch.cat(confidences).numpy().astype(np.float32),
        torch.cat(embeddings).numpy().astype(np.float32),
    )


# ------------------------------------------------------------ orchestration


def train_head_only(
    config: TrainConfig,
    cache: ImageCache,
    run_dir: Path,
    model: SelfClassifier,
    device: torch.device,
    num_views: int = DEFAULT_VIEWS,
    base_lr: float = HEAD_ONLY_BASE_LR,
    augment: AugmentConfig | None = None,
) -> TrainingState:
    """Compute or reuse the cached features, train the projection and heads, and save checkpoint.pt.

    ``model`` contains the initial weights (for example from ``models.weights``)
    and is trained in place on the plain image and ``num_views`` augmented
    views of every image of ``cache``, with peak learning rate ``base_lr``
    for a batch of 256, with views made by ``augment`` (None:
    ``head_only_augment``). The checkpoint has the ``model``, ``training``
    and ``config`` entries of ``core.train.Trainer``'s checkpoints, so
    ``core.assign.load_trained_model`` reads it, but no optimizer state.

    A run whose checkpoint records finished training is not trained again.
    NOTE: an interrupted head-only run starts training over, reusing its
    cached features; training is the short part of the run.
    """
    _warn_unused_options(config, uses_augment_options=augment is not None)
    files = RunFiles(Path(run_dir))
    if files.checkpoint.exists():
        state = TrainingState(**load_checkpoint(files.checkpoint)["training"])
        if state.finished:
            # A warning when more epochs were asked for, since none will run.
            log = logger.warning if config.epochs > state.epoch else logger.info
            log("Head-only training already finished at epoch %d. It does not resume, so to train "
                "the heads longer, run it again with a new --out directory.", state.epoch)
            return state
    keep_epochs_up_to(files.metrics, 0)

    torch.manual_seed(config.seed)
    model.to(device)
    features = load_or_compute_features(run_dir, model.backbone, cache, num_views, device, config.seed, augment)
    logger.info(
        "Training the projection and the heads of %s classes on %d images x %d cached views; the backbone "
        "is frozen", model.class_counts, features.shape[1], features.shape[0],
    )
    state = HeadTrainer(model, features, config, device, files.metrics, base_lr).fit()

    save_checkpoint(files.checkpoint, {
        "model": model.state_dict(),
        "training": vars(state).copy(),
        "config": config.to_dict(),
    })
    return state
