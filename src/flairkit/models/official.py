"""Published FLAIR-HUB weights: read a local file safely and load it into a flairkit model.

The reference (IGNF/FLAIR-HUB) publishes Lightning ``.ckpt`` or ``.safetensors`` files whose
keys are listed in ``shared/reference-state-dict/*.json``. Loading is strict: every tensor of the
file is used, or is one the reference builds but never uses in its forward pass (fusion convs of
a single-input model, the dummy fusion conv and single-task 1x1 decoder of time-series-only
models); every tensor of the model is given; shapes must agree. Files are read with safetensors
or ``torch.load(weights_only=True)``: no code is ever unpickled.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from flairkit.models.decoders import decoder_key_from_official
from flairkit.models.encoders import encoder_key_from_official
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.models.utae import official_utae_key

log = logging.getLogger(__name__)

_UNUSED = "<unused by the reference forward>"


class WeightsError(ValueError):
    """A weights file does not fit the model; the message lists what is wrong."""


@dataclass
class LoadReport:
    """What a load did.

    Attributes:
        loaded: number of model tensors set from the file.
        ignored: file keys the reference builds but never uses in forward.
    """

    loaded: int
    ignored: list[str] = field(default_factory=list)


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors``, ``.ckpt``, ``.pt`` or ``.pth`` file, without unpickling code.

    A Lightning checkpoint's ``state_dict`` is taken; the ``model.`` prefix is stripped and
    ``criterion.*`` buffers (class weights) are dropped, as the reference's loader does.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: unreadable file, or one that holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Mapping = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights ({exc})") from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(f"{path}: holds no state dict")
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            continue
        if key.startswith("criterion."):
            continue
        out[key.removeprefix("model.")] = value
    return out


def official_key(model: MultiModalSegmenter, key: str, decoder: str) -> str:
    """The model key of an official key, or ``_UNUSED`` for tensors the reference never uses.

    Raises:
        KeyError: the key belongs to no part of this model.
    """
    parts = key.split(".")
    group = parts[0]
    if group == "encoders":
        mod, rest = parts[1], ".".join(parts[2:])
        if mod in model.encoders:
            return f"encoders.{mod}.{encoder_key_from_official(rest.removeprefix('seg_model.'))}"
        if mod in model.temporal:
            return f"temporal.{mod}.{official_utae_key(rest)}"
    elif group == "fusion_handler":
        if match := re.fullmatch(r"fusion_handler\.conv_f\.(\d+)\.(weight|bias)", key):
            return f"fusion.convs.{match[1]}.{match[2]}" if model.fusion is not None else _UNUSED
    elif group in ("main_decoders", "aux_decoders"):
        name, rest = parts[1], ".".join(parts[2:])
        ours = "heads" if group == "main_decoders" else "aux_heads"
        container = model.heads if group == "main_decoders" else model.aux_heads
        if rest.startswith("seg_model."):
            if name in container:
                return f"{ours}.{name}.{decoder_key_from_official(decoder, rest.removeprefix('seg_model.'))}"
        elif rest in ("weight", "bias"):  # 1x1 conv of time-series-only models
            if name in container:
                return f"{ours}.{name}.{rest}"
            if group == "main_decoders" and not model.encoders and len(model.tasks) == 1:
                return _UNUSED  # single task: the reference returns the fused logits as they are
    raise KeyError(f"official key {key!r} matches no part of this model")


def match_official_keys(
    model: MultiModalSegmenter, shapes: Mapping[str, tuple[int, ...]], decoder: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """Map official keys to model keys and check shapes, without touching any tensor data.

    Works on a model built on the ``meta`` device, so a 370 M-parameter manifest is checked in
    a second.

    Args:
        model: the target model.
        shapes: official key -> tensor shape (keys without the ``model.`` prefix).
        decoder: the decoder name; default: that of the model's config arch.

    Returns:
        (official key -> model key, official keys the reference never uses in forward).

    Raises:
        WeightsError: unknown keys, missing model tensors or shape mismatches, all listed.
    """
    decoder = decoder or _decoder_name(model)
    own = model.state_dict()
    mapping: dict[str, str] = {}
    ignored, unknown, mismatched = [], [], []
    for key, shape in shapes.items():
        try:
            target = official_key(model, key, decoder)
        except KeyError:
            unknown.append(key)
            continue
        if target == _UNUSED:
            ignored.append(key)
        elif target not in own:
            unknown.append(f"{key} -> {target}")
        elif tuple(own[target].shape) != tuple(shape):
            mismatched.append(f"{key}: file {tuple(shape)}, model {tuple(own[target].shape)}")
        else:
            mapping[key] = target
    targets = set(mapping.values())
    missing = [k for k in own if k not in targets and not _is_derived_buffer(model, k)]
    problems = []
    for title, items in (
        ("unknown keys", unknown),
        ("shape mismatches", mismatched),
        ("missing", missing),
    ):
        if items:
            shown = "\n  ".join(items[:10]) + (
                f"\n  ... {len(items) - 10} more" if len(items) > 10 else ""
            )
            problems.append(f"{len(items)} {title}:\n  {shown}")
    if problems:
        raise WeightsError("weights do not fit the model:\n" + "\n".join(problems))
    return mapping, ignored


def _decoder_name(model: MultiModalSegmenter) -> str:
    config = getattr(model, "config", None)
    return config.arch.rpartition("-")[2] if config is not None else "upernet"


def load_official_state_dict(
    model: MultiModalSegmenter, state: Mapping[str, Tensor], decoder: str | None = None
) -> LoadReport:
    """Load official tensors (keys without ``model.``) into ``model``, strictly.

    Raises:
        WeightsError: unknown keys, missing model tensors or shape mismatches, all listed.
    """
    mapping, ignored = match_official_keys(
        model, {k: tuple(v.shape) for k, v in state.items()}, decoder
    )
    model.load_state_dict({mapping[k]: state[k] for k in mapping}, strict=False)
    log.info("loaded %d tensors (%d unused by the reference ignored)", len(mapping), len(ignored))
    return LoadReport(len(mapping), ignored)


def _is_derived_buffer(model: MultiModalSegmenter, key: str) -> bool:
    """Buffers the model computes itself (Swin index tables, attention masks)."""
    name = key.rsplit(".", 1)[-1]
    return name in ("relative_position_index", "attn_mask") and key not in dict(
        model.named_parameters()
    )


def load_published_weights(
    model: MultiModalSegmenter, path: str | Path, decoder: str | None = None
) -> LoadReport:
    """Read a published FLAIR-HUB weights file and load it strictly into ``model``."""
    return load_official_state_dict(model, read_weights_file(path), decoder)
