"""flairkit model files: weights + ModelConfig + PreprocessConfig in one file.

``save_model`` writes a ``.safetensors`` whose metadata holds the recipe as JSON, so predict and
maps need no YAML. ``load_model`` also accepts the Lightning ``.ckpt`` files that ``flairkit fit``
writes (read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairkit import __version__
from flairkit.config import ModelConfig, PreprocessConfig, from_dict, to_dict
from flairkit.models.build import build_model
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.safe_load import load_weights_only

METADATA_KEY = "flairkit"


class NonFiniteWeightsError(ValueError):
    """Weights hold NaN or infinite values: they are never saved as a model."""


def nonfinite_tensors(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def save_model(
    path: str | Path,
    model: MultiModalSegmenter,
    model_config: ModelConfig,
    preprocess: PreprocessConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and their recipe to a ``.safetensors`` file, atomically.

    Raises:
        NonFiniteWeightsError: a tensor holds NaN or inf (nothing is written, a file already
            at ``path`` is kept).
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(
            f"{path}: not written: {len(bad)} of {len(state)} tensors hold NaN or infinite "
            f"values (e.g. {', '.join(bad[:3])}); the training diverged"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "flairkit_version": __version__,
        "model": to_dict(model_config),
        "preprocess": to_dict(preprocess),
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    os.replace(tmp, path)  # a reader never sees a half-written model
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The metadata of a flairkit model file (``model``, ``preprocess``, version, extras).

    Raises:
        ValueError: not a flairkit model file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if METADATA_KEY not in meta:
            raise ValueError(
                f"{path}: no flairkit recipe in the file (is it an official FLAIR-HUB file?)"
            )
        return json.loads(meta[METADATA_KEY])
    checkpoint = load_weights_only(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model" not in hparams or "preprocess" not in hparams:
        raise ValueError(f"{path}: not a checkpoint written by flairkit fit")
    return dict(hparams)


def load_model(path: str | Path) -> tuple[MultiModalSegmenter, PreprocessConfig]:
    """Build the model a flairkit file describes and load its weights (strict).

    Args:
        path: ``.safetensors`` from ``save_model`` or a ``.ckpt`` from ``flairkit fit``.

    Returns:
        (model in eval mode, the PreprocessConfig its inputs need).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    recipe = read_recipe(path)
    model_config = from_dict(ModelConfig, recipe["model"], "model")
    preprocess = from_dict(PreprocessConfig, recipe["preprocess"], "preprocess")
    model = build_model(model_config)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, Tensor] = load_file(str(path))
    else:
        raw = load_weights_only(path)["state_dict"]
        state = {k.removeprefix("model."): v for k, v in raw.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval(), preprocess
