"""Learning-rate schedules the benchmark uses that torch has no single class for.

``cycle_then_plateau`` (the reference's ``tasks_module.py``): a cosine warm-up from
``lr / div_factor`` to ``lr`` over the first ``warmup_fraction`` of the steps, then
ReduceLROnPlateau on the validation loss for the rest of the run. Torch offers the two halves
(OneCycleLR with ``pct_start=1``, ReduceLROnPlateau) but not their sequence: OneCycleLR raises
once stepped past its steps and sets the lr on every step, which would undo the plateau's
reductions; SequentialLR does not accept ReduceLROnPlateau. The reference steps both by hand,
outside Lightning, so their state is lost on resume. Here ``WarmupThenHold`` is a per-step
scheduler that Lightning steps and checkpoints, and ``PlateauAfterWarmup`` stays idle until the
warm-up is over (``SegmentationTask`` steps it after each validation and checkpoints it).
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


class WarmupThenHold(LRScheduler):
    """Cosine warm-up from ``base_lr / div_factor`` to ``base_lr`` in ``steps`` steps, then
    leaves the lr as it finds it (another scheduler may lower it).

    The curve is OneCycleLR's first phase (cosine annealing between the two values).

    Args:
        optimizer: the optimiser; its current lr is the peak.
        steps: warm-up steps (0: the lr is the peak from the start).
        div_factor: initial lr = peak / div_factor.
    """

    def __init__(self, optimizer: Optimizer, steps: int, div_factor: float = 1000.0) -> None:
        if steps < 0:
            raise ValueError(f"warm-up steps must be >= 0, got {steps}")
        if div_factor <= 0:
            raise ValueError(f"div_factor must be > 0, got {div_factor}")
        self.steps = int(steps)
        self.div_factor = float(div_factor)
        super().__init__(optimizer)

    @property
    def done(self) -> bool:
        """True once the peak is reached."""
        return self.last_epoch >= self.steps

    def get_lr(self) -> list[float | Tensor]:
        if self.last_epoch > self.steps:  # past the warm-up: hands off
            return [group["lr"] for group in self.optimizer.param_groups]
        fraction = self.last_epoch / self.steps if self.steps else 1.0
        rise = (1.0 - math.cos(math.pi * fraction)) / 2.0
        return [
            base / self.div_factor + (base - base / self.div_factor) * rise
            for base in self.base_lrs
        ]


class PlateauAfterWarmup(ReduceLROnPlateau):
    """ReduceLROnPlateau that ignores the epochs of a warm-up (``WarmupThenHold``).

    Args:
        optimizer: the optimiser.
        warmup: the warm-up scheduler of the same optimiser; None: no warm-up.
        **kwargs: ReduceLROnPlateau's arguments.
    """

    def __init__(
        self, optimizer: Optimizer, warmup: WarmupThenHold | None = None, **kwargs: Any
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.warmup = warmup

    # ReduceLROnPlateau.step already breaks LRScheduler.step's signature (torch ignores it too)
    def step(self, metrics: SupportsFloat, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.warmup is None or self.warmup.done:
            super().step(metrics)

    def state_dict(self) -> dict[str, Any]:
        # ReduceLROnPlateau saves its whole __dict__ but the optimiser; the warm-up is saved on
        # its own and would not load with torch.load(weights_only=True).
        return {k: v for k, v in super().state_dict().items() if k != "warmup"}
