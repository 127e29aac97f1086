"""Losses of the multitask segmenter: weighted cross-entropy per task, plus auxiliary heads.

A class weight of 0 removes a class from the loss (the benchmark ignores COSIA 15-18). Labels
outside [0, K) are ignored too, rather than silently becoming class 0 as in the reference
(spec section 4.3).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairkit.modalities import Modality, Task

IGNORE_INDEX = -100


def class_weight_vector(num_classes: int, weights: Mapping[int, float] | None) -> Tensor:
    """A (K,) float tensor of ones with the given per-class weights set.

    Raises:
        ValueError: a class index outside [0, K) or a negative (or NaN) weight.
    """
    vector = torch.ones(num_classes)
    for index, weight in (weights or {}).items():
        if not 0 <= int(index) < num_classes:
            raise ValueError(
                f"class weight for class {index}, but the task has {num_classes} classes"
            )
        if not weight >= 0:  # also NaN
            raise ValueError(f"class {index}: weight must be >= 0, got {weight}")
        vector[int(index)] = float(weight)
    return vector


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean cross-entropy over the pixels of classes with non-zero weight, weighted.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) class indices of any integer dtype (uint8 as stored).
        weight: (K,) class weights; 0 = ignored.

    Returns:
        Scalar loss; 0 (with a gradient path) when no pixel counts.
    """
    num_classes = logits.shape[1]
    target = target.long()
    valid = (target >= 0) & (target < num_classes)
    target = torch.where(valid, target, torch.full_like(target, IGNORE_INDEX))
    weight = weight.to(device=logits.device, dtype=torch.float32)
    total = F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    norm = weight[target.clamp_min(0)].masked_fill(~valid, 0).sum()
    # sum w CE / sum w exactly, even for tiny weights. When no pixel counts, every term of the
    # sum is 0 and so is its gradient: divide by 1 (no host sync, unlike ``if norm > 0``).
    return total / torch.where(norm > 0, norm, torch.ones_like(norm))


class MultiTaskLoss(nn.Module):
    """Sum over tasks of task_weight x (main loss + aux_weight x mean of the auxiliary losses).

    Args:
        num_classes: classes per task.
        class_weights: per task, {class index: weight}; unspecified classes weigh 1.
        task_weights: per task (default 1).
        aux_weight: weight of the auxiliary losses (0: left out; the reference configures 1.5
            but its auxiliary loss is always 0).
    """

    def __init__(
        self,
        num_classes: Mapping[Task, int],
        class_weights: Mapping[Task, Mapping[int, float]] | None = None,
        task_weights: Mapping[Task, float] | None = None,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = list(num_classes)
        for task in self.tasks:
            weights = (class_weights or {}).get(task)
            self.register_buffer(
                f"weight_{task.name}", class_weight_vector(num_classes[task], weights)
            )
        self.task_weights = {t: float((task_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.aux_weight = aux_weight

    def class_weights(self, task: Task) -> Tensor:
        """(K,) weights of a task."""
        return getattr(self, f"weight_{task.name}")

    def forward(
        self,
        logits: Mapping[Task, Tensor],
        labels: Mapping[Task, Tensor],
        aux: Mapping[tuple[Modality, Task], Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts (``loss_<task>``, ``aux_<modality>_<task>``), detached."""
        total = torch.zeros((), device=next(iter(logits.values())).device)
        parts: dict[str, Tensor] = {}
        for task in self.tasks:
            main = weighted_cross_entropy(logits[task], labels[task], self.class_weights(task))
            parts[f"loss_{task.name}"] = main.detach()
            aux_losses = []
            for (modality, aux_task), aux_logits in (aux or {}).items():
                if aux_task is task:
                    value = weighted_cross_entropy(
                        aux_logits, labels[task], self.class_weights(task)
                    )
                    parts[f"aux_{modality.name}_{task.name}"] = value.detach()
                    aux_losses.append(value)
            term = main
            if aux_losses:
                term = term + self.aux_weight * torch.stack(aux_losses).mean()
            total = total + self.task_weights[task] * term
        return total, parts
