"""Fine-tuning: load what fits of another model's weights into a freshly built model.

The rules of the reference's loader (spec section 7), made explicit and reported:
- a published file's keys are mapped to flairkit's (``official.official_key``); tensors the
  reference builds but never runs are ignored; derived buffers (Swin index tables, attention
  masks) are never taken from a file: the model computes its own;
- a **class layer** whose class count differs is re-initialised: the final 1x1 convolution of
  each task head and auxiliary head (Xavier-uniform weight, zero bias) and, for the time series,
  the U-TAE's last output block (its convolution likewise, its norm as built);
- a Swin ``relative_position_bias_table`` of another window size is resized (bicubic, as a
  square grid of side 2w - 1 per head);
- anything else that does not fit (a key of no model tensor, another shape mismatch, a model
  tensor the file lacks) is an error, or with ``strict=False`` is skipped and listed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flairkit.models.official import (
    _UNUSED,
    WeightsError,
    _decoder_name,
    _examples,
    _is_derived_buffer,
    official_key,
)
from flairkit.models.segmenter import MultiModalSegmenter

_TABLE = "relative_position_bias_table"


@dataclass
class TransferReport:
    """What ``transfer_weights`` did (model keys).

    Attributes:
        loaded: tensors copied from the file as they are.
        reinitialised: class-layer tensors re-initialised, as ``key: file (..) -> model (..)``,
            or ``key: not in the file -> model (..)`` for a class layer the file does not have
            (the head of another task; the block FLAIR-HUB appends to the U-TAE's ``out_conv``
            when the class count is not its last width, as the reference's loader leaves it).
        resized: Swin tables resized, likewise.
        ignored: file keys not used: tensors the reference never runs, derived buffers, heads
            of tasks the model does not have.
        skipped: file tensors that fit nothing (``strict=False`` only).
        kept: model tensors the file lacks, left as built (``strict=False`` only).
    """

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, and examples of what was not simply loaded."""
        parts = [f"{len(self.loaded)} tensors loaded"]
        for title, items in (
            ("re-initialised (class count)", self.reinitialised),
            ("resized (Swin window)", self.resized),
            ("skipped (do not fit)", self.skipped),
            ("kept as built (not in the file)", self.kept),
        ):
            if items:
                parts.append(f"{len(items)} {title}: {_examples(items, 2)}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} unused by the model ignored")
        return "; ".join(parts)


def class_layer_test(model: MultiModalSegmenter) -> Callable[[str], bool]:
    """A test of whether a model key belongs to a layer whose size is a class count."""
    last_block: dict[str, int] = {}
    for k in model.state_dict():
        if m := re.match(r"temporal\.([^.]+)\.out_conv\.(\d+)\.", k):
            last_block[m[1]] = max(last_block.get(m[1], 0), int(m[2]))

    def test(key: str) -> bool:
        parts = key.split(".")
        if parts[0] in ("heads", "aux_heads"):
            # <heads>.<name>.head.<w|b> (decoder heads), <heads>.<name>.<w|b> (1x1 conv heads)
            return len(parts) == 3 or (len(parts) == 4 and parts[2] == "head")
        if parts[0] == "temporal" and len(parts) > 4 and parts[2] == "out_conv":
            return parts[1] in last_block and int(parts[3]) == last_block[parts[1]]
        return False

    return test


def resize_position_table(table: Tensor, size: int) -> Tensor:
    """A Swin relative-position bias table ((2w-1)^2, heads) resized to (size, heads)."""
    old, new = math.isqrt(table.shape[0]), math.isqrt(size)
    grid = table.T.reshape(1, table.shape[1], old, old).float()
    resized = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return resized.reshape(table.shape[1], new * new).T.to(table.dtype).contiguous()


def _fresh(key: str, built: Tensor) -> Tensor:
    """The re-initialisation of a class-layer tensor: Xavier-uniform conv weights, zero conv
    biases; norm parameters and statistics as the model built them."""
    if ".norm." in key:
        return built.clone()
    if built.dim() >= 2:
        value = torch.empty_like(built)
        nn.init.xavier_uniform_(value)
        return value
    return torch.zeros_like(built)


def transfer_weights(
    model: MultiModalSegmenter,
    state: Mapping[str, Tensor],
    *,
    published: bool,
    strict: bool = True,
    where: str = "",
) -> TransferReport:
    """Load what fits of ``state`` into ``model`` (in place) and say what was done.

    Args:
        model: a freshly built model.
        state: a published file's tensors (reference keys, ``model.`` stripped) or a flairkit
            model's (its keys).
        published: which of the two ``state`` is.
        strict: refuse what does not fit (beyond class layers and Swin tables).
        where: prefix of error messages (the file, the config key).

    Raises:
        WeightsError: with ``strict``, what does not fit, counted with examples, on one line.
    """
    own = model.state_dict()
    report = TransferReport()
    targets: dict[str, Tensor] = {}
    unknown, mismatched = [], []
    decoder = _decoder_name(model) if published else ""
    is_class_layer = class_layer_test(model)
    head_groups = ("heads", "aux_heads", "main_decoders", "aux_decoders")
    for key, value in state.items():
        target = key
        if published:
            try:
                target = official_key(model, key, decoder)
            except KeyError:
                if key.split(".")[0] in head_groups:
                    report.ignored.append(key)  # the head of a task this model does not have
                else:
                    unknown.append(key)
                continue
            if target == _UNUSED:
                report.ignored.append(key)
                continue
        if target not in own:
            if target.rsplit(".", 1)[-1] in ("relative_position_index", "attn_mask"):
                report.ignored.append(key)  # derived buffers: the model has its own
            elif target.split(".")[0] in head_groups:
                report.ignored.append(key)  # the head of a task this model does not have
            else:
                unknown.append(key if target == key else f"{key} -> {target}")
            continue
        if _is_derived_buffer(model, target):
            report.ignored.append(key)
            continue
        have = own[target]
        if value.shape == have.shape:
            targets[target] = value
            report.loaded.append(target)
        elif is_class_layer(target):
            targets[target] = _fresh(target, have)
            report.reinitialised.append(
                f"{target}: file {tuple(value.shape)} -> model {tuple(have.shape)}"
            )
        elif target.endswith(_TABLE) and value.dim() == 2 and value.shape[1] == have.shape[1]:
            targets[target] = resize_position_table(value, have.shape[0])
            report.resized.append(f"{target}: {tuple(value.shape)} -> {tuple(have.shape)}")
        else:
            mismatched.append(f"{target}: file {tuple(value.shape)}, model {tuple(have.shape)}")
    missing = []
    for key, built in own.items():
        if key in targets or _is_derived_buffer(model, key):
            continue
        if is_class_layer(key):  # another task's head, or a U-TAE class block appended
            targets[key] = _fresh(key, built)
            report.reinitialised.append(f"{key}: not in the file -> model {tuple(built.shape)}")
        else:
            missing.append(key)
    problems = [
        f"{len(items)} {title} (e.g. {_examples(items)})"
        for title, items in (
            ("unknown keys", unknown),
            ("of wrong shape", mismatched),
            ("model tensors missing from the file", missing),
        )
        if items
    ]
    if problems and strict:
        raise WeightsError(
            f"{where}{'; '.join(problems)}; they do not fit this model "
            "(model.init_strict: false loads the rest and lists them)"
        )
    report.skipped = unknown + mismatched
    report.kept += missing
    model.load_state_dict({**own, **targets}, strict=True)
    return report
