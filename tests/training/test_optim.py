"""Optimiser and learning-rate schedules: the benchmark's curves, wired through Lightning."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import torch
from test_fit import write_config  # tests/training is on sys.path

from flairkit.config import load_run_config
from flairkit.training.run import fit
from flairkit.training.schedules import PlateauAfterWarmup, WarmupThenHold

LR = 1e-3  # write_config's


def _sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def test_warmup_is_the_first_phase_of_one_cycle() -> None:
    """Same lr at every step as torch's OneCycleLR that only warms up (pct_start 1)."""
    ours, theirs = _sgd(), _sgd()
    warmup = WarmupThenHold(ours, steps=6, div_factor=25.0)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(
        theirs, 1.0, total_steps=7, pct_start=1.0, div_factor=25.0, final_div_factor=1.0,
        cycle_momentum=False,
    )  # fmt: skip
    seen = []
    for step in range(7):
        assert _lr(ours) == pytest.approx(_lr(theirs), rel=1e-12), step
        seen.append(_lr(ours))
        ours.step(), theirs.step()
        warmup.step()
        if step < 6:
            one_cycle.step()
    assert seen[0] == pytest.approx(1 / 25) and seen[-1] == 1.0 and warmup.done
    assert seen == sorted(seen)


def test_warmup_then_leaves_the_lr_alone() -> None:
    optimizer = _sgd(0.5)
    warmup = WarmupThenHold(optimizer, steps=2, div_factor=10.0)
    for _ in range(2):
        optimizer.step()
        warmup.step()
    assert _lr(optimizer) == 0.5
    optimizer.param_groups[0]["lr"] = 0.125  # what a plateau scheduler does
    for _ in range(3):
        optimizer.step()
        warmup.step()
    assert _lr(optimizer) == 0.125


def test_warmup_of_zero_steps_starts_at_the_peak() -> None:
    optimizer = _sgd(0.3)
    assert WarmupThenHold(optimizer, steps=0).done and _lr(optimizer) == 0.3
    with pytest.raises(ValueError, match="steps"):
        WarmupThenHold(_sgd(), steps=-1)
    with pytest.raises(ValueError, match="div_factor"):
        WarmupThenHold(_sgd(), steps=3, div_factor=0)


def _step(optimizer, warmup, plateau, val_loss: float, batches: int = 1) -> None:
    for _ in range(batches):
        optimizer.step()
        warmup.step()
    plateau.step(val_loss)


def test_plateau_waits_for_the_warmup_then_halves() -> None:
    optimizer = _sgd(1.0)
    warmup = WarmupThenHold(optimizer, steps=4, div_factor=100.0)
    plateau = PlateauAfterWarmup(optimizer, warmup, factor=0.5, patience=1, cooldown=0)
    # The first epoch ends inside the warm-up: its loss is not counted.
    _step(optimizer, warmup, plateau, 1.0, batches=2)
    assert not warmup.done and plateau.best == math.inf and _lr(optimizer) < 1.0
    # The second ends with it: its loss is the first the plateau sees.
    _step(optimizer, warmup, plateau, 2.0, batches=2)
    assert warmup.done and _lr(optimizer) == 1.0 and plateau.best == 2.0
    _step(optimizer, warmup, plateau, 3.0)  # one epoch without better: patience 1 waits
    assert _lr(optimizer) == 1.0
    _step(optimizer, warmup, plateau, 3.0)  # two: halved
    assert _lr(optimizer) == 0.5
    _step(optimizer, warmup, plateau, 1.5)  # better: kept
    assert _lr(optimizer) == 0.5 and plateau.best == 1.5


def test_plateau_state_saves_without_the_warmup_and_loads_weights_only() -> None:
    optimizer = _sgd(1.0)
    warmup = WarmupThenHold(optimizer, steps=0)
    plateau = PlateauAfterWarmup(optimizer, warmup, patience=3)
    plateau.step(2.0)
    plateau.step(2.5)
    buffer = io.BytesIO()
    torch.save(plateau.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "warmup" not in state
    fresh = PlateauAfterWarmup(optimizer, warmup, patience=3)
    fresh.load_state_dict(state)
    assert (fresh.best, fresh.num_bad_epochs, fresh.warmup) == (2.0, 1, warmup)


# -- through Lightning ----------------------------------------------------------------------


def _fit_lrs(root: Path, out: Path, epochs: int, **optim) -> tuple[list[float], list[dict]]:
    """Train on 2 batches per epoch; the lr of each step (metrics.csv) and the rows."""
    train = dict(limit_train_batches=2, limit_val_batches=1, log_every_n_steps=1)
    path = write_config(
        out.with_suffix(".yaml"), root, out, optim=optim, max_epochs=epochs,
        early_stopping_patience=None, **train,
    )  # fmt: skip
    fit(load_run_config(path))
    with (out / "logs" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")]
    assert len(lrs) == 2 * epochs  # one per step
    return lrs, rows


def test_one_cycle_curve(synthetic_root: Path, tmp_path: Path) -> None:
    lrs, _ = _fit_lrs(synthetic_root, tmp_path / "run", 2, warmup_fraction=0.5, div_factor=100.0)
    # torch's own OneCycleLR over the same 4 steps is the reference
    reference = torch.optim.lr_scheduler.OneCycleLR(
        _sgd(LR), LR, total_steps=4, pct_start=0.5, div_factor=100.0, cycle_momentum=False
    )
    expected = []
    for _ in range(4):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(LR / 100) and max(lrs) == pytest.approx(LR)


def test_cycle_then_plateau_warms_up_to_the_peak_then_only_lowers_it(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """The reference's cycle_then_plateau: warm-up on the first half of 8 steps, then plateau."""
    out = tmp_path / "run"
    lrs, rows = _fit_lrs(
        synthetic_root, out, 4, scheduler="cycle_then_plateau", warmup_fraction=0.5,
        div_factor=100.0, plateau_patience=0,
    )  # fmt: skip
    warm = [LR / 100 + (LR - LR / 100) * (1 - math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    assert lrs[:5] == pytest.approx(warm, rel=1e-9)  # reaches the peak, at step 4
    after = lrs[4:]
    assert after == sorted(after, reverse=True)
    assert all(math.log2(LR / lr) == pytest.approx(round(math.log2(LR / lr))) for lr in after)
    # the lr changes only between epochs (2 steps each)
    assert all(after[i] == after[i + 1] for i in range(0, len(after), 2))
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (warmup_state,) = state["lr_schedulers"]
    plateau_state = state["flairkit_plateau"]
    assert warmup_state["steps"] == 4 and warmup_state["last_epoch"] == 8
    last_val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(last_val) == 4
    # the warm-up ends with epoch 1 (step 4): the plateau saw the losses of epochs 1 to 3
    assert plateau_state["last_epoch"] == 3 and plateau_state["best"] == pytest.approx(
        min(last_val[1:]), rel=1e-6
    )


def test_plateau_starts_at_the_lr(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lrs, rows = _fit_lrs(synthetic_root, out, 2, scheduler="plateau", plateau_patience=5)
    assert lrs == [LR] * 4  # patience 5: nothing to lower in 2 epochs
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    plateau_state = state["flairkit_plateau"]
    losses = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert plateau_state["best"] == pytest.approx(min(losses), rel=1e-6)
