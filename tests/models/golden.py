"""The deterministic weights and inputs of ``shared/reference-golden`` (its README gives the rules)."""

from __future__ import annotations

import ast
import json
import math
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

# The reference files live in the project's shared/ folder beside the repository (CI lays it
# there); FLAIRKIT_SHARED points elsewhere. Without them the reference tests are skipped.
SHARED = Path(os.environ.get("FLAIRKIT_SHARED", Path(__file__).resolve().parents[3] / "shared"))
MANIFEST_DIR = SHARED / "reference-state-dict"
GOLDEN_DIR = SHARED / "reference-golden"
if not MANIFEST_DIR.is_dir():
    pytest.skip(
        f"reference files not found in {SHARED} (set FLAIRKIT_SHARED)", allow_module_level=True
    )

#: Input seeds and shapes (already-normalised model inputs, batch of 1).
GOLDEN_INPUTS = {
    "AERIAL_RGBI": (1, (1, 3, 512, 512)),
    "DEM_ELEV": (2, (1, 2, 512, 512)),
    "SPOT_RGBI": (3, (1, 3, 64, 64)),
    "AERIAL-RLT_PAN": (4, (1, 1, 256, 256)),
    "SENTINEL2_TS": (5, (1, 12, 10, 10, 10)),
    "SENTINEL1-ASC_TS": (6, (1, 10, 2, 10, 10)),
    "SENTINEL1-DESC_TS": (7, (1, 10, 2, 10, 10)),
}
GOLDEN_DATES = {
    "SENTINEL2_TS": [-120, -90, -60, -30, 0, 15, 30, 60, 90, 120, 150, 180],
    "SENTINEL1-ASC_TS": [-100, -70, -40, -10, 20, 50, 80, 110, 140, 170],
    "SENTINEL1-DESC_TS": [-95, -65, -35, -5, 25, 55, 85, 115, 145, 175],
}


def load_manifest(model_id: str) -> dict:
    """A manifest of ``shared/reference-state-dict``; ``tensors`` parsed into a list of dicts."""
    data = json.loads((MANIFEST_DIR / f"{model_id}.json").read_text())
    tensors = data["tensors"]
    if isinstance(tensors, str):  # stored as a Python literal in some manifests
        tensors = ast.literal_eval(tensors)
    data["tensors"] = tensors
    return data


def golden_tensor(key: str, shape: list[int], dtype: str) -> torch.Tensor:
    """The value the golden README's rule gives to one named tensor."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    if key.endswith("running_var"):
        return z.abs() + 0.5
    if key.endswith("running_mean"):
        return 0.1 * z
    if len(shape) == 1:
        return 1 + 0.1 * z if key.endswith("weight") else 0.02 * z
    fan_in = math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def golden_state_dict(model_id: str) -> dict[str, torch.Tensor]:
    """Official-name state dict of a manifest filled by the golden rule.

    Buffers other than BatchNorm statistics (index tables) are skipped: the model computes them.
    """
    out = {}
    for t in load_manifest(model_id)["tensors"]:
        key = t["key"]
        is_bn_stat = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if t.get("kind") == "buffer" and not is_bn_stat:
            continue
        out[key] = golden_tensor(key, t["shape"], t["dtype"])
    return out


def golden_inputs(modalities: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(inputs, dates) by official modality key, as the golden README defines them."""
    inputs, dates = {}, {}
    for m in modalities:
        seed, shape = GOLDEN_INPUTS[m]
        g = torch.Generator().manual_seed(seed)
        inputs[m] = torch.randn(shape, generator=g)
        if m in GOLDEN_DATES:
            dates[m] = torch.tensor([GOLDEN_DATES[m]], dtype=torch.float32)
    return inputs, dates


def load_golden(model_id: str) -> dict[str, np.ndarray]:
    """Arrays of ``<ID>.npz``: ``<TASK>__logits_sub4`` (K, 128, 128), ``<TASK>__argmax``, ``meta``."""
    with np.load(GOLDEN_DIR / f"{model_id}.npz") as data:
        return {k: data[k] for k in data.files}


def assert_matches_golden(logits: torch.Tensor, model_id: str, task: str) -> None:
    """The README's agreement rule on full-size logits (1, K, 512, 512)."""
    ref = load_golden(model_id)
    ours = logits[0].detach().float().numpy()
    sub = ours[:, ::4, ::4]
    ref_sub = ref[f"{task}__logits_sub4"]
    assert sub.shape == ref_sub.shape, (sub.shape, ref_sub.shape)
    tol = 1e-3 * np.abs(ref_sub).max()
    err = np.abs(sub - ref_sub).max()
    assert err <= tol, f"{model_id}: max|ours - ref| = {err:.3g} > {tol:.3g}"
    agree = (ours.argmax(0) == ref[f"{task}__argmax"]).mean()
    assert agree >= 0.999, f"{model_id}: argmax agrees on {agree:.4%} of pixels"
