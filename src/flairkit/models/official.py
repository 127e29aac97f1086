"""Published FLAIR-HUB weights: read a local file safely and load it into a flairkit model.

The reference (IGNF/FLAIR-HUB) publishes Lightning ``.ckpt`` or ``.safetensors`` files whose
keys are listed in ``shared/reference-state-dict/*.json``. Loading is strict: every tensor of the
file is used, or is one the reference builds but never uses in its forward pass (fusion convs of
a single-input model, the dummy fusion conv and single-task 1x1 decoder of time-series-only
models); every tensor of the model is given; shapes must agree. Files are read with safetensors
(header checked first) or ``torch.load(weights_only=True)``: no code is ever unpickled. Every
problem with a file is a ``WeightsError`` whose one-line message starts with the file's path;
tensors holding NaN or infinity are refused.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flairkit.models.decoders import decoder_key_from_official
from flairkit.models.encoders import encoder_key_from_official
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.models.utae import official_utae_key
from flairkit.safe_load import CheckpointReadError, describe_load_error, load_weights_only

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
        WeightsError: unreadable file, one that holds no tensors, or a non-finite tensor.
    """
    path = existing_file(path, "weights file")
    if path.suffix == ".safetensors":
        raw: Any = read_safetensors(path)
    else:
        raw = read_torch_file(path)
    return published_state(path, raw)


def published_state(path: str | Path, raw: Any) -> dict[str, Tensor]:
    """The official state dict in what a published file holds (a state dict or a checkpoint).

    Keys lose the ``model.`` prefix; ``criterion.*`` and non-tensor entries are dropped.

    Raises:
        WeightsError: no state dict, or a non-finite tensor (naming ``path``).
    """
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(f"{path}: holds no state dict")
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            continue
        if str(key).startswith("criterion."):
            continue
        out[str(key).removeprefix("model.")] = value
    if not out:
        raise WeightsError(f"{path}: holds no tensors")
    check_finite(path, out)
    return out


def existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def read_torch_file(path: str | Path) -> Any:
    """What a torch pickle holds, read with the weights-only unpickler (never code).

    Raises:
        WeightsError: the file would run or build other objects, or is damaged or not a torch
            file; the message names the file and never suggests unsafe loading.
    """
    try:
        return load_weights_only(path)
    except CheckpointReadError as exc:
        reason = describe_load_error(exc.__cause__) if exc.__cause__ else str(exc)
        raise WeightsError(f"{path}: cannot read weights: {reason}") from exc


#: Bytes per element of the safetensors dtypes (sub-byte types are left to safetensors).
_SAFETENSORS_ITEM_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "C64": 8,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
}  # fmt: skip
#: The safetensors library refuses larger headers; checked before anything is allocated.
_MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The tensor entries and the metadata of a ``.safetensors`` file, all checked.

    Reads only the header: the 8-byte length, then that many bytes of JSON. The length, the JSON,
    every entry's dtype, shape and byte range are checked against the file's size, so a
    truncated or forged file is refused here, before any tensor is allocated.

    Returns:
        (tensor name -> {"dtype", "shape", "data_offsets"}, the ``__metadata__`` strings).

    Raises:
        WeightsError: the file is not a well-formed safetensors file; the message says why.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            what = "empty file" if size == 0 else f"only {size} bytes"
            raise WeightsError(f"{path}: not a safetensors file ({what})")
        length = int.from_bytes(prefix, "little")
        if length > size - 8:
            raise WeightsError(
                f"{path}: not a safetensors file, or a truncated one: its header length says "
                f"{length} bytes, the file has {size - 8} after it"
            )
        if length > _MAX_HEADER_BYTES:
            raise WeightsError(f"{path}: safetensors header of {length} bytes is too large")
        text = f.read(length)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(
            f"{path}: not a safetensors file: its header is not JSON ({exc})"
        ) from exc
    if not isinstance(header, dict):
        raise WeightsError(
            f"{path}: not a safetensors file: its header is a JSON {type(header).__name__}, "
            "not an object"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path}: safetensors __metadata__ is not an object of strings")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        _check_header_entry(path, name, entry, data_bytes)
    return header, metadata


def _check_header_entry(path: Path, name: str, entry: Any, data_bytes: int) -> None:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise WeightsError(f"{where}: header entry lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise WeightsError(f"{where}: shape {shape!r} is not a list of sizes")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise WeightsError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
    if offsets[1] > data_bytes:
        raise WeightsError(
            f"{where}: ends at byte {offsets[1]} of the data, which has {data_bytes} "
            "(truncated file?)"
        )
    item = _SAFETENSORS_ITEM_BYTES.get(dtype) if isinstance(dtype, str) else None
    if item is not None and item * math.prod(shape) != offsets[1] - offsets[0]:
        raise WeightsError(
            f"{where}: {dtype} {tuple(shape)} needs {item * math.prod(shape)} bytes, "
            f"its offsets give {offsets[1] - offsets[0]}"
        )


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file, its header checked first.

    Raises:
        WeightsError: a malformed or truncated file.
    """
    read_safetensors_header(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, or torch's for a dtype it lacks
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"{path}: cannot read the safetensors file ({reason})") from exc


def check_finite(path: str | Path, state: Mapping[str, Tensor]) -> None:
    """Refuse weights holding NaN or infinity: a model never runs on them.

    Raises:
        WeightsError: naming the file and the first tensor (in file order) that is not finite.
    """
    for key, value in state.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = value[~finite]
            nan = int(torch.isnan(bad).sum())
            raise WeightsError(
                f"{path}: tensor {key} holds {nan} NaN and {bad.numel() - nan} infinite "
                f"values (of {value.numel()}); flairkit does not use non-finite weights"
            )


def state_mismatch(
    own: Mapping[str, Tensor], stored: Mapping[str, object], where: str = "file"
) -> str:
    """What keeps ``stored`` from loading strictly into a module of state ``own``, on one line.

    Returns:
        ``""`` when every key is there with its shape, else ``describe_mismatch``'s line.
    """
    missing = [k for k in own if k not in stored]
    unexpected = [k for k in stored if k not in own]
    wrong_shape = [
        f"{k}: {where} {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in stored.items()
        if k in own and isinstance(v, Tensor) and v.shape != own[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return ""
    return describe_mismatch(missing, unexpected, wrong_shape)


def describe_mismatch(
    missing: list[str], unexpected: list[str], wrong_shape: list[str], shown: int = 3
) -> str:
    """One line: ``3 tensors missing (e.g. a, b), 1 unexpected (e.g. c), 1 of wrong shape (...)``.

    Args:
        missing: model keys the file lacks.
        unexpected: file keys the model lacks.
        wrong_shape: ``"key: file (..), model (..)"`` per mismatch.
        shown: examples given per kind.
    """
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {_examples(missing, shown)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {_examples(unexpected, shown)})")
    if wrong_shape:
        parts.append(f"{len(wrong_shape)} of wrong shape ({_examples(wrong_shape, shown)})")
    return ", ".join(parts)


def _examples(items: list[str], shown: int = 3) -> str:
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


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
        WeightsError: unknown keys, missing model tensors or shape mismatches: one line that
            counts each kind and gives examples.
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
    problems = [
        f"{len(items)} {title} ({_examples(items)})"
        for title, items in (
            ("unknown keys", unknown),
            ("shape mismatches", mismatched),
            ("missing", missing),
        )
        if items
    ]
    if problems:
        raise WeightsError("weights do not fit the model: " + "; ".join(problems))
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
    """Read a published FLAIR-HUB weights file and load it strictly into ``model``.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: an unreadable file or one that does not fit; the message starts with
            the file's path.
    """
    state = read_weights_file(path)
    try:
        return load_official_state_dict(model, state, decoder)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from exc
