"""flairkit model files: weights + ModelConfig + PreprocessConfig in one file.

``save_model`` writes a ``.safetensors`` whose metadata holds the recipe as JSON, so predict and
maps need no YAML. ``load_model`` also accepts the Lightning ``.ckpt`` files that ``flairkit fit``
writes (read with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairkit import __version__
from flairkit.config import ModelConfig, PreprocessConfig, from_dict, to_dict
from flairkit.models.build import build_model
from flairkit.models.official import (
    WeightsError,
    check_finite,
    existing_file,
    published_state,
    read_safetensors,
    read_safetensors_header,
    read_torch_file,
    state_mismatch,
)
from flairkit.models.segmenter import MultiModalSegmenter

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
        FileNotFoundError: no such file.
        WeightsError: not a flairkit model file, a damaged one, or one whose recipe is not a
            mapping with ``model`` and ``preprocess``; the message starts with the file's path.
    """
    path = existing_file(path, "model file")
    if path.suffix == ".safetensors":
        recipe = _safetensors_recipe(path, read_safetensors_header(path)[1])
    else:
        recipe = _checkpoint_recipe(path, read_torch_file(path))
    return recipe


def _safetensors_recipe(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise WeightsError(
            f"{path}: no flairkit recipe in the file's metadata (is it an official FLAIR-HUB "
            "file? those load with flairkit.models.official.load_published_weights)"
        )
    try:
        recipe = json.loads(metadata[METADATA_KEY])
    except ValueError as exc:
        raise WeightsError(
            f"{path}: the flairkit recipe in its metadata is not JSON ({exc})"
        ) from exc
    return _checked_recipe(path, recipe)


def _checkpoint_recipe(path: Path, checkpoint: Any) -> dict[str, Any]:
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(
            f"{path}: not a checkpoint written by flairkit fit (it holds a "
            f"{type(checkpoint).__name__}, not a dict)"
        )
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        raise WeightsError(
            f"{path}: not a checkpoint written by flairkit fit (no hyper_parameters)"
        )
    return _checked_recipe(path, dict(hparams))


def _checked_recipe(path: Path, recipe: Any) -> dict[str, Any]:
    if not isinstance(recipe, dict):
        raise WeightsError(f"{path}: the flairkit recipe is a {type(recipe).__name__}, not a dict")
    lacking = [key for key in ("model", "preprocess") if key not in recipe]
    if lacking:
        raise WeightsError(f"{path}: the flairkit recipe has no {' or '.join(lacking)} section")
    return recipe


def read_model_recipe(path: str | Path) -> tuple[ModelConfig, PreprocessConfig]:
    """The ModelConfig and PreprocessConfig of a flairkit model file; no network is built.

    The configs are those ``load_model`` builds its network from (``pretrained_path`` cleared).

    Raises:
        FileNotFoundError: no such file.
        WeightsError: not a flairkit model file, a damaged one, or a bad recipe (with the
            dotted key); one line that starts with the path.
    """
    path = existing_file(path, "model file")
    return _recipe_configs(path, read_recipe(path))


def _recipe_configs(path: Path, recipe: Mapping[str, Any]) -> tuple[ModelConfig, PreprocessConfig]:
    try:
        model_config = from_dict(ModelConfig, recipe["model"], "model")
        preprocess = from_dict(PreprocessConfig, recipe["preprocess"], "preprocess")
    except ValueError as exc:  # ConfigError, with the dotted key
        raise WeightsError(f"{path}: bad recipe: {exc}") from exc
    # The file's weights replace any pretrained backbone: its pretrained_path (a file of the
    # machine that trained it) is not read.
    return dataclasses.replace(model_config, pretrained_path=None), preprocess


def load_model(path: str | Path) -> tuple[MultiModalSegmenter, PreprocessConfig]:
    """Build the model a flairkit file describes and load its weights (strict).

    The one loader of a model for inference: ``flairkit test`` and ``predict`` wrap the network
    it returns (``SegmentationTask.from_network``), maps prune it (``inference.predictor``).

    Args:
        path: ``.safetensors`` from ``save_model`` or a ``.ckpt`` from ``flairkit fit``.

    Returns:
        (model in eval mode, the PreprocessConfig its inputs need).

    Raises:
        FileNotFoundError: no such file.
        WeightsError: a damaged or unsafe file, a bad recipe, tensors that do not fit the model
            the recipe describes, or non-finite tensors; one line that starts with the path.
    """
    path = existing_file(path, "model file")
    if path.suffix == ".safetensors":
        recipe = read_recipe(path)
        state = read_safetensors(path)
    else:
        checkpoint = read_torch_file(path)  # read once: it holds both the recipe and weights
        recipe = _checkpoint_recipe(path, checkpoint)
        state = _checkpoint_state(path, checkpoint)
    model_config, preprocess = _recipe_configs(path, recipe)
    try:
        model = build_model(model_config)
    except Exception as exc:  # values the config accepts but the layers do not
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"{path}: bad recipe: its model cannot be built ({reason})") from exc
    _check_fits(path, model, state)
    check_finite(path, state)
    model.load_state_dict(state, strict=True)
    return model.eval(), preprocess


@dataclass(frozen=True)
class ModelWeights:
    """The tensors of a model file and what kind of file it is.

    Attributes:
        path: the file.
        state: flairkit model keys for a flairkit file; the reference's keys (``model.``
            stripped, ``criterion.*`` dropped) for a published FLAIR-HUB file. Finite.
        recipe: the flairkit recipe (``model``, ``preprocess``...); None for a published file.
    """

    path: Path
    state: dict[str, Tensor]
    recipe: dict[str, Any] | None

    @property
    def published(self) -> bool:
        return self.recipe is None


def read_model_weights(path: str | Path) -> ModelWeights:
    """Read any model file once: a flairkit ``.safetensors`` or fit ``.ckpt``, or a published
    FLAIR-HUB ``.safetensors`` / ``.ckpt`` / ``.pth`` (told apart by the flairkit recipe).

    Raises:
        FileNotFoundError: no such file.
        WeightsError: a damaged or unsafe file, a bad recipe, no tensors, non-finite tensors.
    """
    path = existing_file(path, "model file")
    if path.suffix == ".safetensors":
        metadata = read_safetensors_header(path)[1]
        state = read_safetensors(path)
        if METADATA_KEY not in metadata:
            return ModelWeights(path, published_state(path, state), None)
        recipe = _safetensors_recipe(path, metadata)
    else:
        checkpoint = read_torch_file(path)  # read once: it holds both the recipe and weights
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
        if not (isinstance(hparams, Mapping) and "model" in hparams and "preprocess" in hparams):
            return ModelWeights(path, published_state(path, checkpoint), None)
        recipe = _checkpoint_recipe(path, checkpoint)
        state = _checkpoint_state(path, checkpoint)
    check_finite(path, state)
    return ModelWeights(path, state, recipe)


def _checkpoint_state(path: Path, checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    raw = checkpoint.get("state_dict")
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{path}: not a checkpoint written by flairkit fit (no state_dict)")
    state = {}
    for key, value in raw.items():
        if not str(key).startswith("model."):
            continue  # the LightningModule's metrics and loss buffers
        if not isinstance(value, Tensor):
            raise WeightsError(f"{path}: state_dict entry {key} is a {type(value).__name__}")
        state[key.removeprefix("model.")] = value
    return state


def _check_fits(path: Path, model: MultiModalSegmenter, state: Mapping[str, Tensor]) -> None:
    """Strict loading, with one line that counts and shows what does not fit."""
    mismatch = state_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsError(
            f"{path}: {mismatch}; the tensors do not fit the model its recipe describes"
        )
