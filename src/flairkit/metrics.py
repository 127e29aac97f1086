"""Confusion matrices and the benchmark's scores: shared by validation and evaluation.

The scores follow the benchmark's evaluation (spec section 4.1):

1. a K x K confusion matrix over all label values 0..K-1 (rows = reference, columns =
   prediction); values outside [0, K) in either the reference or the prediction drop out,
   like sklearn's ``confusion_matrix(labels=range(K))``;
2. the rows **and** columns of the ignored classes are removed, so a pixel of a kept class
   predicted as an ignored class counts neither as an error nor in OA;
3. per-class IoU, precision, recall and F1 (x100, NaN -> 0), and their plain means over the
   kept classes (a class absent from both reference and prediction counts as 0);
4. OA = trace / sum of the reduced matrix (x100).

No Lightning here: the accumulator is a plain ``nn.Module`` so it follows ``.to(device)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from flairkit.modalities import COSIA_IGNORED, LPIS_IGNORED_CANDIDATES, Task

log = logging.getLogger(__name__)

#: What ``scores`` accepts as a matrix: a tensor, an array, or nested lists (from JSON).
MatrixLike = Tensor | np.ndarray | Sequence[Sequence[int]]


def default_ignored(
    task: Task, level: int = 1, lpis_ignored: tuple[int, ...] = LPIS_IGNORED_CANDIDATES
) -> tuple[int, ...]:
    """The classes the benchmark drops from its scores for a task.

    COSIA drops 15-18 (weight 0 in the reference config, spec section 4.1). For LPIS level 1
    the benchmark removes two of 23 classes without saying which; the default
    ``lpis_ignored`` is the spec's unverified guess (21 mixed crops, 22 background, spec
    section 4.2). LPIS levels 2 and 3 have no known removals.

    Args:
        task: the task being scored.
        level: LPIS nomenclature level (ignored for COSIA).
        lpis_ignored: the LPIS level-1 classes to drop; pass ``()`` to score all 23.

    Returns:
        Sorted class values to drop.
    """
    if task is Task.COSIA:
        return tuple(sorted(COSIA_IGNORED))
    return tuple(sorted(lpis_ignored)) if level == 1 else ()


def confusion_matrix(target: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    """Count (reference, prediction) pairs; values outside [0, K) drop out.

    Args:
        target: reference labels, any integer dtype (uint8 included) and any shape.
        pred: predicted labels, same number of elements as ``target``, on the same device.
        num_classes: K.

    Returns:
        (K, K) int64 tensor on the inputs' device; ``m[i, j]`` = pixels of class i predicted j.

    Raises:
        TypeError: an input is floating point (pass ``logits.argmax(1)``, not logits).
        ValueError: the inputs differ in size.
    """
    _check_labels(target, pred)
    return per_sample_confusion(target.reshape(1, -1), pred.reshape(1, -1), num_classes)[0]


def per_sample_confusion(target: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    """One confusion matrix per sample of a batch, in a single ``bincount``.

    Args:
        target: (B, ...) reference labels, any integer dtype.
        pred: (B, ...) predicted labels, same shape.
        num_classes: K.

    Returns:
        (B, K, K) int64 tensor.
    """
    _check_labels(target, pred)
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ")
    batch = target.shape[0]
    kk = num_classes * num_classes
    flat_t = target.reshape(batch, -1)
    flat_p = pred.reshape(batch, -1)
    per_pair = _pair_index(flat_t, flat_p, num_classes)  # (B, N)
    # Offset each sample into its own block of K*K bins; dropped pixels point past the end.
    offsets = torch.arange(batch, device=per_pair.device).unsqueeze(1) * kk
    index = torch.where(per_pair >= 0, per_pair + offsets, batch * kk).reshape(-1)
    counts = torch.bincount(index, minlength=batch * kk + 1)[: batch * kk]
    return counts.reshape(batch, num_classes, num_classes)


def _check_labels(target: Tensor, pred: Tensor) -> None:
    for name, t in (("target", target), ("pred", pred)):
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"{name} must hold class indices, got {t.dtype}; use logits.argmax(1)")
    if target.numel() != pred.numel():
        raise ValueError(
            f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ in size"
        )


def _pair_index(target: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    """``target * K + pred`` as int64, and -1 where either value is outside [0, K)."""
    t = target.long()  # also widens uint8, whose arithmetic would overflow
    p = pred.long()
    valid = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return torch.where(valid, t * num_classes + p, -1)


class ConfusionMatrix(nn.Module):
    """Accumulates a confusion matrix, and optionally one per group (e.g. per department).

    The counts are int64, so accumulation and the distributed sum are exact. The main
    matrix is a non-persistent buffer: it follows ``.to(device)`` but stays out of
    checkpoints. Group matrices live on the same device as the main matrix.

    Usage in a validation loop::

        cm.update(target, pred)            # each step
        cm.sync()                          # epoch end: every process now holds the totals
        metrics = scores(cm.compute(), ignored)
        cm.reset()

    ``sync()`` turns local counts into global ones, so updating after it would count the
    other processes' pixels twice at the next sync: ``update`` raises until ``reset()``.
    """

    matrix: Tensor

    def __init__(self, num_classes: int) -> None:
        """Create an empty accumulator for ``num_classes`` classes."""
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.register_buffer(
            "matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), persistent=False
        )
        self._groups: dict[str, Tensor] = {}
        self.is_synced = False

    def update(self, target: Tensor, pred: Tensor, groups: Sequence[str] | None = None) -> None:
        """Add a batch.

        Args:
            target: reference labels, any integer dtype; (B, ...) when ``groups`` is given.
            pred: predicted labels, same shape as ``target``.
            groups: one group name per sample of the batch (e.g. the department of each
                patch); each sample's pixels are also added to its group's matrix.

        Raises:
            RuntimeError: the accumulator was synced and not reset since.
            ValueError: ``groups`` does not have one entry per sample.
        """
        if self.is_synced:
            raise RuntimeError("update() after sync() would double-count; call reset() first")
        target = target.to(self.matrix.device)
        pred = pred.to(self.matrix.device)
        if groups is None:
            self.matrix += confusion_matrix(target, pred, self.num_classes)
            return
        if target.dim() == 0 or len(groups) != target.shape[0]:
            raise ValueError(
                f"groups has {len(groups)} names for a batch of shape {tuple(target.shape)}; "
                "give one name per sample"
            )
        per_sample = per_sample_confusion(target, pred, self.num_classes)  # (B, K, K)
        names = sorted(set(groups))
        ids = torch.tensor([names.index(g) for g in groups], device=per_sample.device)
        per_group = torch.zeros(
            len(names), self.num_classes, self.num_classes, dtype=torch.long, device=ids.device
        ).index_add_(0, ids, per_sample)
        # The total is the sum of the per-sample matrices, so groups always add up to it.
        self.matrix += per_group.sum(0)
        for name, counts in zip(names, per_group, strict=True):
            self._add_group(name, counts)

    def _add_group(self, name: str, counts: Tensor) -> None:
        current = self._groups.get(name)
        if current is None:
            self._groups[name] = counts.clone()
        else:
            self._groups[name] = current.to(counts.device) + counts

    def reset(self) -> None:
        """Zero the matrix, forget all groups and clear the synced flag."""
        self.matrix.zero_()
        self._groups = {}
        self.is_synced = False

    def compute(self) -> Tensor:
        """A copy of the (K, K) int64 matrix accumulated so far."""
        return self.matrix.clone()

    def compute_groups(self) -> dict[str, Tensor]:
        """Copies of the per-group (K, K) int64 matrices, sorted by group name."""
        return {name: self._groups[name].clone() for name in sorted(self._groups)}

    def sync(self) -> None:
        """Sum the counts of all processes, in place (exact: integer sums).

        The main matrix is summed with ``all_reduce``, which needs the matrix on a device the
        backend supports (CUDA for NCCL). Groups may differ from one process to another
        (each sees other departments), so each process's dict of group matrices is sent as
        CPU tensors with ``all_gather_object`` and merged by summing matrices of the same
        name; every process then holds the union of all groups. Without an initialised
        process group this only marks the accumulator as synced. A second call before
        ``reset()`` does nothing.
        """
        if self.is_synced:
            return
        self.is_synced = True
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        local = {name: m.cpu() for name, m in self._groups.items()}
        gathered: list[dict[str, Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        self._groups = merge_group_matrices(
            (g for g in gathered if g is not None), device=self.matrix.device
        )

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"num_classes={self.num_classes}, groups={len(self._groups)}"


def merge_group_matrices(
    dicts: Iterable[dict[str, Tensor]], device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """Sum group matrices of the same name across several dicts (e.g. one per process).

    Args:
        dicts: dicts of group name -> (K, K) int64 matrix.
        device: where the merged matrices go.

    Returns:
        Group name -> summed matrix, sorted by name.
    """
    merged: dict[str, Tensor] = {}
    for groups in dicts:
        for name, m in groups.items():
            m = m.to(device=device, dtype=torch.long)
            merged[name] = merged[name] + m if name in merged else m.clone()
    return {name: merged[name] for name in sorted(merged)}


def reduce_matrix(matrix: MatrixLike, ignored: Iterable[int] = ()) -> tuple[Tensor, list[int]]:
    """Drop the rows and columns of the ignored classes (the benchmark's step 2).

    Args:
        matrix: (K, K) confusion matrix.
        ignored: class values to drop.

    Returns:
        The reduced (K', K') int64 matrix on the CPU, and the kept class values in order.

    Raises:
        ValueError: the matrix is not square, or an ignored class is outside [0, K).
    """
    m = _as_matrix(matrix)
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square (K, K) matrix, got shape {tuple(m.shape)}")
    num_classes = m.shape[0]
    dropped = set(int(c) for c in ignored)
    bad = sorted(c for c in dropped if not 0 <= c < num_classes)
    if bad:
        raise ValueError(f"ignored classes {bad} are outside [0, {num_classes})")
    kept = [c for c in range(num_classes) if c not in dropped]
    idx = torch.tensor(kept, dtype=torch.long)
    return m[idx][:, idx], kept


def _as_matrix(matrix: MatrixLike) -> Tensor:
    """Any matrix-like input as an int64 CPU tensor."""
    if isinstance(matrix, Tensor):
        return matrix.detach().cpu().long()
    return torch.as_tensor(np.asarray(matrix, dtype=np.int64))


def scores(
    matrix: MatrixLike,
    ignored: Iterable[int] = (),
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The benchmark's scores from a confusion matrix, as JSON-ready Python numbers.

    Args:
        matrix: (K, K) confusion matrix, rows = reference, columns = prediction.
        ignored: classes whose rows and columns are dropped before scoring, e.g.
            ``default_ignored(Task.COSIA)``.
        class_names: K names; defaults to ``"class <i>"``.

    Returns:
        A dict with ``miou``, ``oa``, ``mean_precision``, ``mean_recall``, ``mean_f1`` (all
        x100), ``num_classes``, ``kept_classes``, ``ignored_classes``, ``num_pixels`` (sum
        of the reduced matrix), ``num_pixels_excluded`` (pixels whose reference or
        prediction is an ignored class), and ``per_class``: a dict keyed by the class value
        as a string (JSON keys are strings) whose entries hold ``index``, ``name``, ``iou``,
        ``precision``, ``recall``, ``f1`` (x100), ``support`` (reference pixels in the
        reduced matrix) and ``predicted`` (predicted pixels in the reduced matrix).

    Raises:
        ValueError: bad matrix or ignored classes, or ``class_names`` of the wrong length.
    """
    full = _as_matrix(matrix)
    reduced, kept = reduce_matrix(full, ignored)
    num_classes = full.shape[0]
    names = list(class_names) if class_names is not None else None
    if names is None:
        names = [f"class {i}" for i in range(num_classes)]
    elif len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class matrix")

    m = reduced.double()
    diag = m.diagonal()
    support = m.sum(1)  # reference pixels per class
    predicted = m.sum(0)  # predicted pixels per class
    iou = _ratio(diag, support + predicted - diag)
    precision = _ratio(diag, predicted)
    recall = _ratio(diag, support)
    f1 = _ratio(2 * diag, support + predicted)  # = 2PR / (P + R), and 0 where TP = 0
    total = m.sum()

    per_class = {
        str(c): {
            "index": c,
            "name": names[c],
            "iou": float(iou[i]),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(reduced[i].sum()),
            "predicted": int(reduced[:, i].sum()),
        }
        for i, c in enumerate(kept)
    }
    return {
        "miou": _mean(iou),
        "oa": float(100 * diag.sum() / total) if total > 0 else 0.0,
        "mean_precision": _mean(precision),
        "mean_recall": _mean(recall),
        "mean_f1": _mean(f1),
        "num_classes": len(kept),
        "kept_classes": kept,
        "ignored_classes": sorted(set(range(num_classes)) - set(kept)),
        "num_pixels": int(reduced.sum()),
        "num_pixels_excluded": int(full.sum()) - int(reduced.sum()),
        "per_class": per_class,
    }


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """100 * num / den with 0 where den is 0 (the benchmark's NaN -> 0)."""
    return torch.where(den > 0, 100 * num / den.clamp(min=1), torch.zeros_like(num))


def _mean(values: Tensor) -> float:
    # Plain mean over the kept classes, absent classes included as 0 (spec section 4.1).
    return float(values.mean()) if values.numel() else 0.0
