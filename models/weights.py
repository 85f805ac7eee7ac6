"""Initial weights for a SelfClassifier: ImageNet, a weights file, or a run of this tool.

``read_weights`` accepts:

* ``"imagenet"``: torchvision's ImageNet weights of a torchvision ResNet, read
  through ``torch.hub.load_state_dict_from_url``, which uses its cache folder
  first and downloads only when the file is not there.
* a torchvision ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``,
  ..., ``fc.*``). The ImageNet classifier ``fc`` is dropped.
* a checkpoint of the official Self-Classifier code
  (github.com/elad-amrani/self-classifier, ``src/model.py``): a dict whose
  ``"state_dict"`` has the backbone under ``module.backbone.``, the projection
  MLP under ``module.mlp_head.mlp.<i>.`` and one weight-normalised linear
  classifier per head, ``module.cls_<i>.weight_g`` (num_classes, 1) and
  ``module.cls_<i>.weight_v`` (num_classes, embedding_dim).
* a run directory of this tool, its ``checkpoint.pt`` (``{"model": state_dict, ...}``),
  or a saved ``SelfClassifier.state_dict()``.

Every source is converted to the SelfClassifier key names (``backbone.*``,
``projection.layers.<i>.*``, ``heads.<i>.weight``), and ``load_weights`` checks
every key and shape before it changes the model. Files are read with
``torch.load(weights_only=True)``, which rebuilds only tensors and plain
containers, so loading a file cannot run code stored in it.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from models.backbones import build_backbone
from models.names import NARROW_RESNETS, TORCHVISION_RESNETS
from models.self_classifier import SelfClassifier

logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
PARTS = ("backbone", "projection", "heads")
HEAD_CHOICES = ("auto", "keep", "drop")
# The official classifiers are weight-normalised with a trainable gain g per
# class; ClassifierHead fixes g at 1. Gains further than this from 1 change
# the relative size of the logits.
GAIN_TOLERANCE = 1e-3
RUN_CHECKPOINT = "checkpoint.pt"
_MAX_LISTED = 12
# Image sides that make build_backbone choose the small and the standard stem.
_SMALL_STEM_SIZE, _STANDARD_STEM_SIZE = 32, 224

_OFFICIAL_HEAD = re.compile(
    r"cls_(\d+)(?:\.(weight_g|weight_v|parametrizations\.weight\.original0|parametrizations\.weight\.original1))?"
)
_GAIN_NAMES = ("weight_g", "parametrizations.weight.original0")


@dataclass(frozen=True)
class Weights:
    """Tensors in SelfClassifier key names, and where they came from.

    Attributes:
        state: tensors by SelfClassifier key, such as ``backbone.conv1.weight``,
            ``projection.layers.0.weight`` or ``heads.0.weight``.
        layout: ``"imagenet"``, ``"torchvision"``, ``"official"`` or ``"run"``.
        source: the file or name the tensors were read from, for messages.
        run_config: the settings stored in a checkpoint of this tool, else None.
    """

    state: dict[str, torch.Tensor]
    layout: str
    source: str
    run_config: dict[str, Any] | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        """Parts of the network present, in the order of ``PARTS``."""
        present = {key.split(".", 1)[0] for key in self.state}
        return tuple(part for part in PARTS if part in present)

    @property
    def head_shapes(self) -> list[tuple[int, ...]]:
        """(num_classes, embedding_dim) of each head, in head order."""
        return [tuple(self.state[key].shape) for key in _head_keys(self.state)]


@dataclass(frozen=True)
class Architecture:
    """Network settings inferred from the weights' tensor shapes; None where the shapes do not determine them.

    Attributes:
        backbone: the name in ``models.names.BACKBONES`` whose parameter
            shapes equal those of the weights.
        small_stem: True for the 3x3 stem that ``build_backbone`` uses for
            images of at most 64 pixels, False for torchvision's 7x7 stem.
        hidden_dim: width of the projection MLP's hidden layers.
        hidden_layers: hidden layers of the projection MLP.
        embedding_dim: dimension of the embedding.
        class_counts: classes of each head, in head order.
    """

    backbone: str | None
    small_stem: bool | None
    hidden_dim: int | None
    hidden_layers: int | None
    embedding_dim: int | None
    class_counts: tuple[int, ...]


# ------------------------------------------------------------------ reading


def read_weights(init: str | Path, backbone: str | None = None) -> Weights:
    """Read initial weights from ``"imagenet"``, a file or a run directory.

    Args:
        init: ``"imagenet"``, a weights file, or a run directory of this tool.
        backbone: the backbone name; needed only for ``"imagenet"``.

    Raises:
        ValueError: if the file or run is missing or unreadable, contains
            Python objects other than tensors and plain containers, has none of
            the layouts above, or ImageNet weights cannot be found or downloaded.
    """
    if str(init) == IMAGENET:
        if backbone is None or backbone not in TORCHVISION_RESNETS:
            raise ValueError(
                f"--init imagenet needs a torchvision backbone, got {backbone!r}; "
                f"pass --backbone with one of {', '.join(TORCHVISION_RESNETS)}"
            )
        return imagenet_weights(backbone)

    path = Path(init)
    if path.is_dir():
        checkpoint = path / RUN_CHECKPOINT
        if not checkpoint.is_file():
            raise ValueError(
                f"{path} is a folder without {RUN_CHECKPOINT}; pass a run directory of this tool "
                "or a weights file (.pt, .pth, .pth.tar) to --init"
            )
        path = checkpoint
    return convert_checkpoint(_load_file(path), str(path))


def imagenet_weights(backbone: str) -> Weights:
    """Return torchvision's default ImageNet weights of ``backbone``, without the ``fc`` classifier.

    Raises:
        ValueError: if ``backbone`` has no torchvision weights, or the file is
            neither in torch.hub's cache nor downloadable.
    """
    if backbone not in TORCHVISION_RESNETS:
        raise ValueError(
            f"backbone {backbone!r} has no ImageNet weights in torchvision; choose one of "
            f"{', '.join(TORCHVISION_RESNETS)}, or pass a weights file with --init PATH"
        )
    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except OSError as error:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        raise ValueError(
            f"cannot download the ImageNet weights of {backbone} from {url}: {error}. Without internet "
            f"access, download that file on another machine and pass it with --init PATH, or copy it to {cached}"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ValueError(
            f"cannot read the cached ImageNet weights of {backbone}: {error}. Delete the file "
            f"in {Path(torch.hub.get_dir()) / 'checkpoints'} to download it again"
        ) from error
    weights = _from_torchvision(_tensors_only(state, url), url)
    return Weights(weights.state, IMAGENET, url)


def convert_checkpoint(content: Any, source: str) -> Weights:
    """Convert what ``torch.load`` returned to SelfClassifier key names, detecting the layout.

    Raises:
        ValueError: if ``content`` is not a dict of tensors in one of the
            layouts listed in the module documentation.
    """
    if not isinstance(content, dict):
        raise ValueError(f"{source} contains a {type(content).__name__}, not a dict of tensors")
    if isinstance(content.get("model"), dict):
        config = content.get("config") if isinstance(content.get("config"), dict) else None
        return Weights(_tensors_only(content["model"], source), "run", source, config)
    if isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]

    state = {_strip_module(key): value for key, value in _tensors_only(content, source).items()}
    if not state:
        raise ValueError(f"{source} contains no tensors; pass a weights file or a run directory of this tool")
    if any(key.startswith(("projection.", "heads.")) for key in state) or all(
        key.startswith("backbone.") for key in state
    ):
        return Weights(state, "run", source)
    if any(key.startswith(("mlp_head.", "cls_")) for key in state):
        return _from_official(state, source)
    if "conv1.weight" in state:
        return _from_torchvision(state, source)
    listed = ", ".join(list(state)[:5]) or "none"
    raise ValueError(
        f"{source} is not a weights layout this tool reads (first keys: {listed}); pass a torchvision "
        "ResNet state dict, an official Self-Classifier checkpoint, or a run directory of this tool"
    )


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise ValueError(f"weights file {path} not found; check the path given to --init") from error
    except pickle.UnpicklingError as error:
        # NOTE: training checkpoints of the official code also pickle their
        # nearest-neighbour queue object, so only a file with the tensors
        # saved on their own (for example {"state_dict": ...}) loads here.
        reason = str(error).strip().splitlines()[-1]
        raise ValueError(
            f"{path} contains Python objects other than tensors and plain containers ({reason}); it is not "
            "loaded because loading such objects can run code stored in the file. Save only its state "
            "dict, for example torch.save({'state_dict': checkpoint['state_dict']}, 'weights.pth')"
        ) from error
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ValueError(f"cannot read {path} as a PyTorch weights file: {error}") from error


def _tensors_only(content: dict, source: str) -> dict[str, torch.Tensor]:
    others = [str(key) for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise ValueError(
            f"{source}: expected a state dict of tensors, but {_listing(others)} are not tensors"
        )
    return dict(content)


def _strip_module(key: str) -> str:
    """Remove the ``module.`` prefix that DataParallel and DistributedDataParallel add."""
    return key.removeprefix("module.")


def _from_torchvision(state: dict[str, torch.Tensor], source: str) -> Weights:
    backbone = {f"backbone.{key}": value for key, value in state.items() if not key.startswith("fc.")}
    return Weights(backbone, "torchvision", source)


def _from_official(state: dict[str, torch.Tensor], source: str) -> Weights:
    """Map official keys to SelfClassifier keys and weight-norm pairs to plain head weights."""
    converted: dict[str, torch.Tensor] = {}
    head_parts: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head = _OFFICIAL_HEAD.fullmatch(key)
        if head:
            head_parts.setdefault(int(head.group(1)), {})[head.group(2) or "weight"] = value
        elif key.startswith("mlp_head.mlp."):
            converted[_projection_key(key.removeprefix("mlp_head.mlp."))] = value
        else:
            converted[key] = value

    for index, parts in sorted(head_parts.items()):
        converted[f"heads.{index}.weight"] = _head_weight(index, parts, source)

    if _projection_without_batchnorm(converted):
        logger.warning(
            "The projection MLP in %s has no BatchNorm layers, unlike this tool's projection, so only "
            "its backbone is loaded; the projection and heads start from random values.", source,
        )
        converted = {key: value for key, value in converted.items() if key.startswith("backbone.")}
    return Weights(converted, "official", source)


def _projection_key(rest: str) -> str:
    # A one-layer official MLP is a bare Linear, whose keys have no index.
    if rest in ("weight", "bias"):
        return f"projection.layers.0.{rest}"
    return f"projection.layers.{rest}"


def _head_weight(index: int, parts: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    """Return the (num_classes, embedding_dim) weight of official head ``index``, checking its gains."""
    if "weight" in parts:
        return parts["weight"]
    direction = parts.get("weight_v", parts.get("parametrizations.weight.original1"))
    gain = next((parts[name] for name in _GAIN_NAMES if name in parts), None)
    if direction is None or gain is None:
        raise ValueError(
            f"{source}: head cls_{index} has {sorted(parts)} but needs both the gain (weight_g) and "
            "the direction (weight_v) of its weight normalisation"
        )
    deviation = float((gain.float() - 1).abs().max())
    if deviation > GAIN_TOLERANCE:
        logger.warning(
            "Head cls_%d of %s has weight-norm gains between %.4f and %.4f; this tool's heads use gain 1, "
            "so their logits and chosen classes can differ from the original model.",
            index, source, float(gain.min()), float(gain.max()),
        )
    return direction


def _projection_without_batchnorm(state: dict[str, torch.Tensor]) -> bool:
    keys = [key for key in state if key.startswith("projection.")]
    linear = [key for key in keys if key.endswith(".weight") and state[key].ndim == 2]
    return len(linear) > 1 and not any(key.endswith(".running_mean") for key in keys)


# ------------------------------------------------------------------ loading


def load_weights(model: SelfClassifier, weights: Weights, heads: str = "auto") -> tuple[str, ...]:
    """Copy ``weights`` into ``model`` after checking every key and shape.

    Parts that ``weights`` lacks (a backbone-only file has no projection or
    heads) keep the model's values. BatchNorm ``num_batches_tracked`` counters
    missing from old torchvision files also keep the model's values.

    Args:
        model: the network to fill.
        weights: tensors from ``read_weights``.
        heads: ``"auto"`` loads the heads of ``weights`` when their shapes
            equal the model's. Otherwise it logs that and leaves the model's
            heads unchanged. ``"keep"`` always loads them, so heads of other
            shapes raise the mismatch error. ``"drop"`` never loads them.

    Returns:
        The parts loaded, in the order of ``PARTS``.

    Raises:
        ValueError: if ``heads`` is not one of ``HEAD_CHOICES``, or any key of
            a loaded part is missing, unexpected or of another shape. The one
            message lists every such key, and the model is left unchanged.
    """
    if heads not in HEAD_CHOICES:
        raise ValueError(f"heads must be one of {', '.join(HEAD_CHOICES)}, got {heads!r}")
    state = _select_heads(model, weights, heads)
    target = model.state_dict()
    parts = tuple(part for part in PARTS if any(key.startswith(part + ".") for key in state))

    missing, unexpected, reshaped = _compare(state, target, parts)
    if missing or unexpected or reshaped:
        raise ValueError(_mismatch_message(weights, missing, unexpected, reshaped))

    for key in target:
        if key.endswith("num_batches_tracked") and key.split(".", 1)[0] in parts and key not in state:
            state[key] = target[key]
    model.load_state_dict(state, strict=False)
    logger.info("Loaded the %s from %s (%s layout)", ", ".join(parts), weights.source, weights.layout)
    return parts


def _select_heads(model: SelfClassifier, weights: Weights, heads: str) -> dict[str, torch.Tensor]:
    state = dict(weights.state)
    target = model.state_dict()
    model_shapes = [tuple(target[key].shape) for key in _head_keys(target)]
    if heads == "keep" or not weights.head_shapes:
        return state
    if heads == "auto" and weights.head_shapes == model_shapes:
        return state
    if heads == "auto":
        logger.info(
            "The heads in %s have class counts %s, not the model's %s; the model's heads start from "
            "random values.", weights.source, [shape[0] for shape in weights.head_shapes], model.class_counts,
        )
    return {key: value for key, value in state.items() if not key.startswith("heads.")}


def _compare(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], parts: tuple[str, ...]
) -> tuple[list[str], list[str], list[str]]:
    """Return the missing keys, the unexpected keys and the shape mismatches, as readable lines."""
    expected = [key for key in target if key.split(".", 1)[0] in parts]
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in target]
    reshaped = [
        f"{key}: weights {tuple(state[key].shape)}, model {tuple(target[key].shape)}"
        for key in state
        if key in target and state[key].shape != target[key].shape
    ]
    return missing, unexpected, reshaped


def _mismatch_message(weights: Weights, missing: list[str], unexpected: list[str], reshaped: list[str]) -> str:
    lines = [f"the weights in {weights.source} ({weights.layout} layout) do not fit the model:"]
    if missing:
        lines.append(f"  missing from the weights ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  not in the model ({len(unexpected)}): {_listing(unexpected)}")
    if reshaped:
        lines.append(f"  different shapes ({len(reshaped)}): {_listing(reshaped, separator='; ')}")
    lines.append(_architecture_hint(describe_weights(weights)))
    return "\n".join(lines)


def _architecture_hint(architecture: Architecture) -> str:
    settings = []
    if architecture.backbone is not None:
        stem = "3x3 stem for images of at most 64 px" if architecture.small_stem else "torchvision's 7x7 stem"
        settings.append(f"backbone {architecture.backbone} with {stem}")
    if architecture.hidden_layers is not None:
        settings.append(f"{architecture.hidden_layers} hidden layers of width {architecture.hidden_dim}")
    if architecture.embedding_dim is not None:
        settings.append(f"embedding dimension {architecture.embedding_dim}")
    if architecture.class_counts:
        settings.append(f"heads of {list(architecture.class_counts)} classes")
    if not settings:
        return "Build the model with the settings these weights were trained with."
    return "The weights fit a model with " + ", ".join(settings) + "; build the model with these settings."


def _listing(items: list[str], separator: str = ", ") -> str:
    first_items = separator.join(items[:_MAX_LISTED])
    if len(items) <= _MAX_LISTED:
        return first_items
    return f"{first_items}{separator}... and {len(items) - _MAX_LISTED} more"


# ------------------------------------------------------------- description


def describe_weights(weights: Weights) -> Architecture:
    """Infer the backbone, stem, projection sizes and class counts from the tensor shapes."""
    linear = _projection_linear_shapes(weights.state)
    hidden_layers = len(linear) - 1 if linear else None
    backbone, small_stem = _guess_backbone(weights.state)
    return Architecture(
        backbone=backbone,
        small_stem=small_stem,
        hidden_dim=linear[0][0] if hidden_layers else None,
        hidden_layers=hidden_layers,
        embedding_dim=linear[-1][0] if linear else None,
        class_counts=tuple(shape[0] for shape in weights.head_shapes),
    )


def _projection_linear_shapes(state: dict[str, torch.Tensor]) -> list[tuple[int, ...]]:
    """Return the (out, in) shapes of the projection's Linear layers, in layer order."""
    pattern = re.compile(r"projection\.layers\.(\d+)\.weight")
    found = []
    for key, value in state.items():
        match = pattern.fullmatch(key)
        if match and value.ndim == 2:
            found.append((int(match.group(1)), tuple(value.shape)))
    return [shape for _, shape in sorted(found)]


def _head_keys(state: dict[str, torch.Tensor]) -> list[str]:
    pattern = re.compile(r"heads\.(\d+)\.weight")
    indexed = [(int(match.group(1)), key) for key in state if (match := pattern.fullmatch(key))]
    return [key for _, key in sorted(indexed)]


def _guess_backbone(state: dict[str, torch.Tensor]) -> tuple[str | None, bool | None]:
    """Return the backbone name and stem whose parameter shapes equal the weights' backbone, if any."""
    shapes = {
        key.removeprefix("backbone."): tuple(value.shape)
        for key, value in state.items()
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked")
    }
    first_conv = shapes.get("stem.0.weight", shapes.get("conv1.weight"))
    if first_conv is None or len(first_conv) != 4:
        return None, None
    small_stem = first_conv[-1] == 3
    candidates = NARROW_RESNETS if "stem.0.weight" in shapes else TORCHVISION_RESNETS
    for name in candidates:
        if _backbone_shapes(name, small_stem) == shapes:
            return name, small_stem
    return None, small_stem


@functools.cache
def _backbone_shapes(name: str, small_stem: bool) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of a backbone, built on the meta device so no memory is allocated."""
    size = _SMALL_STEM_SIZE if small_stem else _STANDARD_STEM_SIZE
    with torch.device("meta"):
        module, _ = build_backbone(name, size)
    return _shapes_of(module)


def _shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        key: tuple(value.shape)
        for key, value in module.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
