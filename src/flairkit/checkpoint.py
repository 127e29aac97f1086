"""flairkit model files: weights + ModelConfig + PreprocessConfig in one file.

``save_model`` writes a ``.safetensors`` whose metadata holds the recipe as JSON, so predict and
maps need no YAML. ``load_model`` also accepts the Lightning ``.ckpt`` files that ``flairkit fit``
writes (read with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairkit import __version__
from flairkit.config import (
    ModalityConfig,
    ModelConfig,
    PreprocessConfig,
    from_dict,
    preprocess_config_for,
    preset_config,
    to_dict,
)
from flairkit.modalities import Modality
from flairkit.model_ref import ModelRef, parse_model_ref, parse_repo_name
from flairkit.models.build import build_model
from flairkit.models.official import (
    WeightsError,
    check_finite,
    existing_file,
    load_official_state_dict,
    published_state,
    read_safetensors,
    read_safetensors_header,
    read_torch_file,
    state_mismatch,
)
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.models.transfer import TransferReport
from flairkit.presets import PRESETS

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
        "model": to_dict(dataclasses.replace(model_config, init_from=None)),
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


def read_model_recipe(
    ref: str | Path | ModelRef, preset: str | None = None
) -> tuple[ModelConfig, PreprocessConfig]:
    """The ModelConfig and PreprocessConfig of a model reference; no network is built.

    The configs are those ``load_model`` builds its network from (``pretrained_path`` cleared).
    A published ``.safetensors`` is told from its header alone.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: a damaged file or a bad recipe (with the dotted key); one line that
            starts with the path.
        ModelRefError / HubError (ValueError): a bad reference, or a hub file not to be had.
    """
    parsed, path = resolve_model_ref(ref, preset)
    located = dataclasses.replace(parsed, path=parsed.path or path)
    if path.suffix == ".safetensors":
        header, metadata = read_safetensors_header(path)
        if METADATA_KEY not in metadata:
            return published_recipe(located, header, "no flairkit recipe in the file's metadata")
        return _recipe_configs(path, _safetensors_recipe(path, metadata))
    weights = read_model_weights(path)
    if weights.recipe is None:
        return published_recipe(located, weights.state, weights.not_flairkit)
    return _recipe_configs(path, weights.recipe)


def _recipe_configs(path: Path, recipe: Mapping[str, Any]) -> tuple[ModelConfig, PreprocessConfig]:
    try:
        model_config = from_dict(ModelConfig, recipe["model"], "model")
        preprocess = from_dict(PreprocessConfig, recipe["preprocess"], "preprocess")
    except ValueError as exc:  # ConfigError, with the dotted key
        raise WeightsError(f"{path}: bad recipe: {exc}") from exc
    # The file's weights replace any pretrained backbone: its pretrained_path (a file of the
    # machine that trained it) is not read.
    return dataclasses.replace(model_config, pretrained_path=None, init_from=None), preprocess


def load_model(
    ref: str | Path | ModelRef, preset: str | None = None
) -> tuple[MultiModalSegmenter, PreprocessConfig]:
    """Build the model a reference describes and load its weights (strict).

    The one loader of a model for inference: ``flairkit test`` and ``predict`` wrap the network
    it returns (``SegmentationTask.from_network``), maps prune it (``inference.predictor``).

    Args:
        ref: a model reference (``model_ref``): a flairkit ``.safetensors`` from ``save_model``,
            a ``.ckpt`` from ``flairkit fit``, a published FLAIR-HUB file, or a hub id
            ``hf:<org>/<repo>[@<revision>]`` (fetched through ``huggingface_hub``, cached).
        preset: the benchmark preset of a published file whose name does not tell it (a
            flairkit file carries its recipe and ignores it).

    Returns:
        (model in eval mode, the PreprocessConfig its inputs need). A published model gets the
        benchmark's preparation of its preset (``published_recipe``).

    Raises:
        FileNotFoundError: no such file.
        WeightsError: a damaged or unsafe file, a bad recipe, tensors that do not fit the model
            the recipe describes, or non-finite tensors; one line that starts with the path.
        ModelRefError / HubError (ValueError): a bad reference, or a hub file not to be had.
    """
    parsed, path = resolve_model_ref(ref, preset)
    weights = read_model_weights(path)
    if weights.recipe is None:
        return _load_published(parsed, weights)
    model_config, preprocess = _recipe_configs(path, weights.recipe)
    model = _build(path, model_config)
    _check_fits(path, model, weights.state)
    model.load_state_dict(weights.state, strict=True)
    return model.eval(), preprocess


def resolve_model_ref(
    ref: str | Path | ModelRef, preset: str | None = None
) -> tuple[ModelRef, Path]:
    """A reference parsed, and its local file (a hub file is fetched into the hub cache).

    Raises:
        FileNotFoundError: a local file that does not exist.
        ModelRefError: a malformed reference or preset.
        HubError: a hub file not to be had (offline and not cached, no such repo...).
    """
    from flairkit.hub import model_file

    parsed = ref if isinstance(ref, ModelRef) else parse_model_ref(ref, preset)
    if preset is not None and parsed.preset is None:
        parsed = parse_model_ref(parsed.text, preset)
    path = model_file(parsed)
    existing_file(path, "model file")
    return parsed, path


def _build(path: Path, model_config: ModelConfig) -> MultiModalSegmenter:
    try:
        return build_model(model_config)
    except Exception as exc:  # values the config accepts but the layers do not
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"{path}: bad recipe: its model cannot be built ({reason})") from exc


#: Encoder tokens of IGN's repository names -> timm backbones (spec section 7).
PUBLISHED_ENCODERS = {
    "swintiny": "swin_tiny_patch4_window7_224",
    "swinsmall": "swin_small_patch4_window7_224",
    "swinbase": "swin_base_patch4_window12_384",
    "swinlarge": "swin_large_patch4_window12_384",
    "convnextv2tiny": "convnextv2_tiny",
    "convnextv2base": "convnextv2_base",
}


def published_recipe(
    ref: ModelRef, state_keys: Iterable[str] | None = None, not_flairkit: str = ""
) -> tuple[ModelConfig, PreprocessConfig]:
    """The ModelConfig and PreprocessConfig of a published FLAIR-HUB model.

    The preset comes from the reference (given, or read from IGN's repository/file naming),
    else from the file's tensor names (its encoders' modalities and its task) when exactly one
    preset has them. The model is the preset's network with the named encoder and decoder; the
    inputs get the benchmark's preparation (spec section 5.1: per-band normalisation, DEM as
    [DSM, DSM - DTM], S2 cloud filter), the aerial bands being NIR, R, G unless the name says
    ``RGB`` (R, G, B).

    Raises:
        WeightsError: the preset cannot be told (the message says how to give it), or the named
            encoder is unknown.
    """
    where = str(ref.path) if ref.path is not None else ref.text
    preset = ref.preset
    if preset is None and state_keys is not None:
        preset = preset_of_keys(state_keys)
    if preset is None:
        what = f"{not_flairkit}; if it is a" if not_flairkit else "a"
        raise WeightsError(
            f"{where}: {what} published FLAIR-HUB model, its preset cannot be told from its "
            "name or its tensors: give it (--preset LC-A, or model_preset: LC-A in a map config)"
        )
    named = parse_repo_name(ref.repo_id or (ref.path.stem if ref.path else ""))
    overrides: dict[str, Any] = {}
    if named is not None and named.decoder is not None:
        encoder = PUBLISHED_ENCODERS.get(named.encoder)
        if encoder is None:
            raise WeightsError(
                f"{where}: encoder {named.encoder!r} of IGN's naming is not known to flairkit; "
                f"known: {', '.join(PUBLISHED_ENCODERS)}"
            )
        overrides["arch"] = f"{encoder}-{named.decoder}"
    model_config = preset_config(preset, **overrides)
    preprocess = preprocess_config_for(list(model_config.inputs), tuple(model_config.tasks))
    if named is not None and named.channels == "RGB" and Modality.AERIAL_RGBI in preprocess.inputs:
        inputs = dict(preprocess.inputs)
        inputs[Modality.AERIAL_RGBI] = ModalityConfig(bands=("R", "G", "B"))
        preprocess = dataclasses.replace(preprocess, inputs=inputs)
    return model_config, preprocess


def preset_of_keys(keys: Iterable[str]) -> str | None:
    """The one preset whose inputs and task are those a published state dict's names show
    (``encoders.<MODALITY>.`` and ``main_decoders.<TASK>.``); None if none or several."""
    modalities, tasks = set(), set()
    for key in keys:
        parts = key.removeprefix("model.").split(".")
        if len(parts) > 2 and parts[0] == "encoders":
            modalities.add(parts[1])
        elif len(parts) > 2 and parts[0] == "main_decoders":
            tasks.add(parts[1])
    found = [
        p.model_id
        for p in PRESETS.values()
        if {m.value for m in p.inputs} == modalities and {p.task.value} == tasks
    ]
    return found[0] if len(found) == 1 else None


def _load_published(
    ref: ModelRef, weights: ModelWeights
) -> tuple[MultiModalSegmenter, PreprocessConfig]:
    path = weights.path
    model_config, preprocess = published_recipe(
        dataclasses.replace(ref, path=ref.path or path), weights.state, weights.not_flairkit
    )
    model = _build(path, model_config)
    try:
        load_official_state_dict(model, weights.state)
    except WeightsError as exc:
        raise WeightsError(
            f"{path}: {exc}; is it preset {preset_name(model_config)}? (give another with --preset)"
        ) from exc
    return model.eval(), preprocess


def preset_name(model_config: ModelConfig) -> str:
    """The preset whose inputs and tasks a ModelConfig has (for messages)."""
    for p in PRESETS.values():
        if set(p.inputs) == set(model_config.inputs) and {p.task} == set(model_config.tasks):
            return p.model_id
    return "?"


@dataclass(frozen=True)
class ModelWeights:
    """The tensors of a model file and what kind of file it is.

    Attributes:
        path: the file.
        state: flairkit model keys for a flairkit file; the reference's keys (``model.``
            stripped, ``criterion.*`` dropped) for a published FLAIR-HUB file. Finite.
        recipe: the flairkit recipe (``model``, ``preprocess``...); None for a published file.
        not_flairkit: for a published file, why it is not a flairkit file (for messages).
    """

    path: Path
    state: dict[str, Tensor]
    recipe: dict[str, Any] | None
    not_flairkit: str = ""

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
            why = "no flairkit recipe in the file's metadata"
            return ModelWeights(path, _published_state(path, state, why), None, why)
        recipe = _safetensors_recipe(path, metadata)
    else:
        checkpoint = read_torch_file(path)  # read once: it holds both the recipe and weights
        if not isinstance(checkpoint, Mapping):
            _checkpoint_recipe(path, checkpoint)  # raises: not a checkpoint at all
        hparams = checkpoint.get("hyper_parameters")
        if not (isinstance(hparams, Mapping) and "model" in hparams and "preprocess" in hparams):
            why = "not a checkpoint written by flairkit fit (no hyper_parameters)"
            return ModelWeights(path, _published_state(path, checkpoint, why), None, why)
        recipe = _checkpoint_recipe(path, checkpoint)
        state = _checkpoint_state(path, checkpoint)
    check_finite(path, state)
    return ModelWeights(path, state, recipe)


def _published_state(path: Path, raw: Any, why: str) -> dict[str, Tensor]:
    try:
        return published_state(path, raw)
    except WeightsError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise WeightsError(f"{path}: {why}, nor a published FLAIR-HUB file ({reason})") from exc


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


def init_from_reference(
    model: MultiModalSegmenter, ref: str | Path, strict: bool = True
) -> TransferReport:
    """Load what fits of a model reference into ``model`` (``model.init_from`` of ``fit``).

    Raises:
        FileNotFoundError: no such file (named with the config key).
        WeightsError / HubError (ValueError): an unreadable file, a hub file not to be had, or
            (``strict``) tensors that do not fit; one line naming ``model.init_from``.
    """
    from flairkit.models.transfer import transfer_weights

    try:
        _, path = resolve_model_ref(ref)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"model.init_from: {exc}") from exc
    except ValueError as exc:
        raise type(exc)(f"model.init_from: {exc}") from exc
    weights = read_model_weights(path)
    return transfer_weights(
        model,
        weights.state,
        published=weights.published,
        strict=strict,
        where=f"model.init_from: {path}: ",
    )
