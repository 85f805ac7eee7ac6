"""LARS optimiser and the warm-up plus cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For parameters of a group with ``adapt=True`` (weight matrices and
    convolution kernels), weight decay is added to the gradient and the
    update is scaled by ``trust_coefficient * ||w|| / ||g||``. Groups with
    ``adapt=False`` (biases, normalisation parameters) get plain SGD with
    momentum and no weight decay.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if group["adapt"]:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / update_norm
                    trust = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    update = update.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return None


FINETUNE_BACKBONE_LR_SCALE = 0.1


def parameter_groups(
    model: nn.Module, backbone: nn.Module | None = None, backbone_lr_scale: float = 1.0
) -> list[dict]:
    """Split parameters into LARS-adapted weights and plain biases and norms.

    With ``backbone`` given and ``backbone_lr_scale`` other than 1, the
    parameters of ``backbone`` form two more groups, whose ``lr_scale``
    multiplies the learning rate that ``set_learning_rate`` sets.
    """
    if backbone is None or backbone_lr_scale == 1.0:
        return _split_parameters(model.parameters(), 1.0)
    in_backbone = {id(param) for param in backbone.parameters()}
    rest = [param for param in model.parameters() if id(param) not in in_backbone]
    return _split_parameters(rest, 1.0) + _split_parameters(backbone.parameters(), backbone_lr_scale)


def _split_parameters(parameters: Iterable[nn.Parameter], lr_scale: float) -> list[dict]:
    adapted: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for param in parameters:
        if not param.requires_grad:
            continue
        (adapted if param.ndim > 1 else plain).append(param)
    return [
        {"params": adapted, "adapt": True, "lr_scale": lr_scale},
        {"params": plain, "adapt": False, "weight_decay": 0.0, "lr_scale": lr_scale},
    ]


def learning_rate(progress: float, peak_lr: float, warmup_fraction: float) -> float:
    """Return the learning rate at ``progress`` in [0, 1] of training.

    Linear warm-up from 0 to ``peak_lr`` over the first ``warmup_fraction``
    of training, then cosine decay to 0.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return peak_lr * progress / warmup_fraction
    decay_progress = (progress - warmup_fraction) / (1 - warmup_fraction)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * decay_progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
