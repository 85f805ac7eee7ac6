"""Settings of a training run, stored as ``config.json`` in the run directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.names import BACKBONES, FITTED_BACKBONES

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
# At 2, brightness and contrast factors span 0.2 to 1.8. Stronger jitter would make some crops nearly black.
MAX_COLOR_STRENGTH = 2.0
# Settings whose value here means "choose from the data and machine", so that
# asking for it again fits any value a saved run chose.
AUTOMATIC_VALUES: dict[str, Any] = {"batch_size": 0, "backbone": "auto", "image_size": 0, "local_size": 0,
                                    "hidden_dim": 0}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; ``0`` or ``"auto"`` means "choose from the data and machine".

    ``resolve`` in ``core.setup`` replaces the automatic values, and the
    resolved copy is what ``config.json`` stores, so a run can be repeated.
    """

    image_folder: str
    class_counts: tuple[int, ...] = (10, 20, 40)
    epochs: int = 100
    time_budget: float = 0.0
    batch_size: int = 0
    backbone: str = "auto"
    image_size: int = 0
    local_crops: int = 0
    local_size: int = 0
    device: str = "auto"
    seed: int = 0
    workers: int = -1
    base_lr: float = 0.5
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_fraction: float = 0.05
    grad_clip: float = 0.0
    row_tau: float = 0.1
    col_tau: float = 0.05
    eps: float = 1e-12
    embedding_dim: int = 128
    hidden_dim: int = 0
    hidden_layers: int = 2
    nn_queue_size: int = 0
    # Scale of the colour jitter ranges, where 0 turns colour changes off (data.transforms.multicrop_config).
    color_strength: float = 1.0
    # Smallest fraction of the image area a global crop covers.
    min_crop_scale: float = 0.2
    sync_batchnorm: bool = False
    # "auto", "bf16" or "fp32". core.setup.resolve_config replaces "auto" with the format this machine runs fast.
    precision: str = "auto"
    # Initial weights: "" (random), "imagenet", a weights file or a run directory (models.weights).
    init: str = ""
    # Keep torchvision's 7x7 stem for images <= 64 px; set by resolve_config when init needs it.
    standard_stem: bool = False
    # Train only the projection and heads on cached backbone features (core.head_only).
    freeze_backbone: bool = False
    head_views: int = 4
    head_lr: float = 5.0
    # Train everything from init, the backbone at FINETUNE_BACKBONE_LR_SCALE times the learning rate.
    finetune: bool = False

    def __post_init__(self) -> None:
        _check("class_counts", len(self.class_counts) > 0,
               "at least one class count is needed, for example --classes 10")
        for count in self.class_counts:
            _check("class_counts", count >= 2, f"every class count must be at least 2, got {count}")
        _check("epochs", self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check("time_budget", self.time_budget >= 0, f"time budget must be >= 0 seconds, got {self.time_budget}")
        _check("batch_size", self.batch_size == 0 or self.batch_size >= 2,
               f"batch size must be at least 2, got {self.batch_size}")
        _check("backbone", self.backbone == "auto" or self.backbone in BACKBONES,
               f"unknown backbone {self.backbone!r}; choose auto or one of {', '.join(BACKBONES)}")
        _check("image_size", self.image_size == 0 or self.image_size >= 16,
               f"image size must be >= 16, got {self.image_size}")
        _check("local_crops", self.local_crops >= 0, f"local crops must be >= 0, got {self.local_crops}")
        _check("precision", self.precision in PRECISIONS,
               f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        _check("device", self.device in DEVICES,
               f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        _check("base_lr", self.base_lr > 0, f"learning rate must be positive, got {self.base_lr}")
        _check("warmup_fraction", 0 <= self.warmup_fraction < 1,
               f"warm-up fraction must be in [0, 1), got {self.warmup_fraction}")
        _check("weight_decay", self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        _check("momentum", 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check("row_tau", self.row_tau > 0, f"row temperature must be positive, got {self.row_tau}")
        _check("col_tau", self.col_tau > 0, f"column temperature must be positive, got {self.col_tau}")
        _check("eps", self.eps > 0, f"eps must be positive, got {self.eps}")
        _check("embedding_dim", self.embedding_dim >= 2,
               f"embedding dimension must be at least 2, got {self.embedding_dim}")
        _check("hidden_dim", self.hidden_dim >= 0,
               f"hidden dimension must be >= 0 (0 picks it), got {self.hidden_dim}")
        _check("hidden_layers", self.hidden_layers >= 0, f"hidden layers must be >= 0, got {self.hidden_layers}")
        _check("local_size", self.local_size == 0 or self.local_size >= 8,
               f"local crop size must be at least 8 pixels (0 picks it), got {self.local_size}")
        _check("seed", self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check("nn_queue_size", self.nn_queue_size >= 0, f"queue size must be >= 0, got {self.nn_queue_size}")
        _check("color_strength", 0 <= self.color_strength <= MAX_COLOR_STRENGTH,
               f"colour strength must be between 0 and {MAX_COLOR_STRENGTH:g}, got {self.color_strength}")
        _check("min_crop_scale", 0 < self.min_crop_scale <= 1,
               f"minimum crop scale must be above 0 and at most 1, got {self.min_crop_scale}")
        _check("grad_clip", self.grad_clip >= 0, f"gradient clipping norm must be >= 0, got {self.grad_clip}")
        _check("head_views", self.head_views >= 2,
               f"head-only training needs at least 2 views per image, got {self.head_views}")
        _check("head_lr", self.head_lr > 0, f"head-only learning rate must be positive, got {self.head_lr}")
        _check("backbone", self.backbone not in FITTED_BACKBONES or not (self.init or self.finetune),
               f"--backbone {self.backbone} is fitted to the images, so it takes no --init or --finetune; "
               "drop those options or choose a ResNet")
        _check("", not (self.freeze_backbone and self.finetune),
               "--freeze-backbone keeps the backbone fixed and --finetune trains it; pass only one")
        _check("", not self.finetune or bool(self.init), "--finetune needs starting weights; pass --init too")
        _check("", not self.freeze_backbone or bool(self.init) or self.backbone in FITTED_BACKBONES,
               "--freeze-backbone keeps a random backbone without starting weights; pass --init too")

    @property
    def primary_classes(self) -> int:
        return self.class_counts[0]

    @property
    def trains_heads_only(self) -> bool:
        """Whether training leaves the backbone fixed and trains the projection and heads on cached features."""
        return self.freeze_backbone or self.backbone in FITTED_BACKBONES

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown settings in config: {', '.join(unknown)}")
        values = dict(values)
        values["class_counts"] = tuple(values.get("class_counts", cls.class_counts))
        return cls(**values)

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read run settings from {path}: {error}") from error
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            # A plain ValueError, because the setting comes from the file and not from an option.
            raise ValueError(f"invalid run settings in {path}: {error}") from error


class ConfigError(ValueError):
    """An invalid setting. ``field`` names the TrainConfig field, or is empty when several fields conflict."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check(field: str, condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(field, message)
