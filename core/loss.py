"""Self-Classifier loss (Amrani, Karlinsky and Bronstein, ECCV 2022).

For every ordered pair of views (i, j) with i != j, skipping pairs where both
views are local crops, the loss is the cross-entropy between

* a *target* from view i: its logits soft-maxed over the **batch** axis with
  temperature ``col_tau``, then each sample's row renormalised to sum to 1, and
* a *prediction* from view j: its logits soft-maxed over the **class** axis with
  temperature ``row_tau``, then each class column renormalised to sum to 1 over
  the batch and scaled by ``N / C``.

Renormalising the prediction over the batch makes every class hold the same
total probability mass, which is Bayes' rule under a uniform class prior.
After the renormalisation a column sums to 1, so the average per-sample
probability of a class is 1 / N; the factor ``N / C`` brings it back to the
1 / C that a uniform prior over C classes gives, so that each row is again
close to a distribution over classes. Because every class must receive the
same mass, the collapsed solution (all samples in one class) cannot minimise
the loss.

The value is averaged over all pairs of all heads. Gradients flow through both
the target and the prediction, as in the authors' implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core import distributed

NUM_GLOBAL_VIEWS = 2


class SelfClassifierLoss(nn.Module):
    """Self-Classifier loss over one or more classifier heads.

    Args:
        row_tau: temperature of the softmax over classes (the prediction).
        col_tau: temperature of the softmax over the batch (the target).
        eps: floor of the L1 normalisations and offset inside the logarithm.

    Calling the module with a list of logits tensors, one per head, each of
    shape ``(num_views, batch_size, num_classes)``, returns the scalar loss.
    Views 0 and 1 are the global crops and views 2 and up are local crops.

    Under ``torch.distributed`` the logits passed in are this process's rows
    only. They are gathered from every process (with gradients routed back to
    their owner), both softmaxes run over the global batch, and the mean is
    taken over this process's rows, so averaging the gradients across
    processes gives exactly the single-process gradient of the global batch.
    """

    def __init__(self, row_tau: float = 0.1, col_tau: float = 0.05, eps: float = 1e-12) -> None:
        super().__init__()
        for name, value in (("row_tau", row_tau), ("col_tau", col_tau), ("eps", eps)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.row_tau = row_tau
        self.col_tau = col_tau
        self.eps = eps

    def forward(self, logits_per_head: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_logits(logits_per_head)
        pair_mask = _pair_mask(logits_per_head[0].shape[0], logits_per_head[0].device)

        # Autocast would run the einsum in bfloat16, so it is turned off here.
        total = logits_per_head[0].new_zeros((), dtype=torch.float32)
        with torch.autocast(logits_per_head[0].device.type, enabled=False):
            for logits in logits_per_head:
                pair_losses = self._pair_losses(logits.float())
                total = total + pair_losses[pair_mask].sum()

        num_terms = int(pair_mask.sum()) * len(logits_per_head)
        return total / num_terms

    def _pair_losses(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the loss of every (target view, prediction view) pair.

        Args:
            logits: (num_views, local_batch, num_classes) for one head.

        Returns:
            (num_views, num_views) tensor whose entry [i, j] is the loss with
            view i as target and view j as prediction.
        """
        local_batch, num_classes = logits.shape[1], logits.shape[2]
        all_logits = distributed.gather_with_grad(logits, dim=1)
        global_batch = all_logits.shape[1]
        own_rows = distributed.local_slice(local_batch)

        # Target: softmax over the batch axis (dim 1), then each sample's
        # class distribution renormalised to sum to 1 (dim 2).
        target = F.softmax(all_logits / self.col_tau, dim=1)[:, own_rows]
        target = F.normalize(target, p=1, dim=2, eps=self.eps)

        # Prediction: softmax over the class axis (dim 2), then each class
        # renormalised over the batch (dim 1), scaled by N / C as explained
        # in the module docstring.
        pred = F.softmax(all_logits / self.row_tau, dim=2)
        pred = F.normalize(pred, p=1, dim=1, eps=self.eps)[:, own_rows]
        log_pred = torch.log(global_batch / num_classes * pred + self.eps)

        # Cross-entropy summed over classes, averaged over this process's rows.
        return -torch.einsum("inc,jnc->ij", target, log_pred) / local_batch


def _pair_mask(num_views: int, device: torch.device) -> torch.Tensor:
    """Boolean (num_views, num_views) mask of the pairs that enter the loss."""
    view = torch.arange(num_views, device=device)
    is_local = view >= NUM_GLOBAL_VIEWS
    different = view[:, None] != view[None, :]
    both_local = is_local[:, None] & is_local[None, :]
    return different & ~both_local


def _check_logits(logits_per_head: Sequence[torch.Tensor]) -> None:
    if isinstance(logits_per_head, torch.Tensor) or len(logits_per_head) == 0:
        raise ValueError(
            "expected a non-empty list of logits tensors, one per head, "
            f"got {type(logits_per_head).__name__}"
        )
    first = logits_per_head[0]
    for index, logits in enumerate(logits_per_head):
        if logits.dim() != 3:
            raise ValueError(
                f"logits of head {index} must have shape (num_views, batch_size, num_classes), "
                f"got shape {tuple(logits.shape)}"
            )
        if logits.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"all heads must have the same (num_views, batch_size); head 0 has "
                f"{tuple(first.shape[:2])}, head {index} has {tuple(logits.shape[:2])}"
            )
        if logits.shape[2] < 2:
            raise ValueError(f"head {index} must have at least 2 classes, got {logits.shape[2]}")
    if first.shape[0] < NUM_GLOBAL_VIEWS:
        raise ValueError(f"at least 2 views (the global crops) are needed, got {first.shape[0]}")
    if first.shape[1] < 2:
        raise ValueError(f"the batch must hold at least 2 samples, got {first.shape[1]}")
