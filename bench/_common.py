"""Helpers shared by the bench scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

#: Dates per Sentinel series in the benchmarks' random batches.
NUM_DATES = 12


def make_batch(cfg, batch: int, seed: int = 0):
    """Random inputs and labels for a ModelConfig, as the DataLoader would give them."""
    import torch

    from flairkit.sample import Batch

    g = torch.Generator().manual_seed(seed)
    inputs, dates, masks = {}, {}, {}
    for m, channels in cfg.inputs.items():
        px = cfg.img_sizes[m]
        if m.spec.is_time_series:
            inputs[m] = torch.randn(batch, NUM_DATES, channels, px, px, generator=g)
            dates[m] = torch.linspace(-120, 200, NUM_DATES).repeat(batch, 1)
            masks[m] = torch.zeros(batch, NUM_DATES, dtype=torch.bool)
        else:
            inputs[m] = torch.randn(batch, channels, px, px, generator=g)
    labels = {
        t: torch.randint(0, k, (batch, cfg.out_px, cfg.out_px), generator=g, dtype=torch.uint8)
        for t, k in cfg.tasks.items()
    }
    ids = [f"bench-{i}" for i in range(batch)]
    return Batch(inputs, dates, masks, labels, ids, [None] * batch, [None] * batch)


def run_isolated(script: str, name: str, steps: int, extra: list[str] | None = None) -> dict:
    """Run one configuration of a bench script in a fresh process, so its peak RSS is its own.

    Returns:
        The JSON row the child printed, or ``{"error": <last stderr line>}`` if it failed.
    """
    proc = subprocess.run(
        [sys.executable, script, "--steps", str(steps), "--one", name, *(extra or [])],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
