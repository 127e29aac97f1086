"""The data types every layer passes on, and the collate that turns samples into a batch.

files --io--> RawSample (numpy, native dtype) --Preprocessor--> Sample (torch, float inputs,
integer labels) --collate--> Batch (padded time series with masks).

They sit below io/, transforms/, data/, models/ and inference/, which all use them. The module
imports torch only where a function needs it, so io/ (readers, ``flairkit info``/``check``) loads
without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flairkit.modalities import Modality, Task

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass(frozen=True)
class Georef:
    """Where a raster lies: CRS, north-up affine transform and size.

    Attributes:
        crs: ``"EPSG:<code>"`` or a WKT string; ``None`` when the file has no CRS.
        transform: affine coefficients ``(a, b, c, d, e, f)`` as in ``affine.Affine``.
        width: pixels per row.
        height: rows.
    """

    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units (north-up rasters)."""
        a, _, c, _, e, f = self.transform
        x0, x1 = c, c + a * self.width
        y0, y1 = f, f + e * self.height
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    @property
    def gsd_m(self) -> float:
        """Pixel width in CRS units (metres for Lambert-93)."""
        return abs(self.transform[0])


@dataclass
class RawSample:
    """One patch as stored on disk.

    Attributes:
        patch_id: official patch id.
        arrays: per modality, ``(C, H, W)`` or ``(T, C, H, W)`` in the file's dtype and band order.
        dates: per time-series modality, ``datetime64[D]`` of shape ``(T,)`` in band order.
        georefs: per modality, where the file lies.
        paths: per modality, the file the array was read from (named in error messages).
        nonfinite: per float modality, how many of its values are NaN or infinite, counted by
            the reader (``io.raster.count_nonfinite``); integer arrays have no entry. The
            Preprocessor applies ``PreprocessConfig.nonfinite`` to these.
    """

    patch_id: str
    arrays: dict[Modality, np.ndarray]
    dates: dict[Modality, np.ndarray] = field(default_factory=dict)
    georefs: dict[Modality, Georef] = field(default_factory=dict)
    paths: dict[Modality, Path] = field(default_factory=dict)
    nonfinite: dict[Modality, int] = field(default_factory=dict)


@dataclass
class Sample:
    """One preprocessed patch, ready for a model.

    Attributes:
        patch_id: official patch id.
        inputs: per input modality, float32 ``(C, H, W)`` or ``(T, C, H, W)``.
        dates: per time-series input, float32 day offsets from the reference date, ``(T,)``.
        labels: per task, class indices ``(H, W)``: uint8 (as on disk), int64 for wider files.
        bounds: (left, bottom, right, top) of the patch footprint.
        crs: CRS of the footprint.
    """

    patch_id: str
    inputs: dict[Modality, Tensor]
    dates: dict[Modality, Tensor] = field(default_factory=dict)
    labels: dict[Task, Tensor] = field(default_factory=dict)
    bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None


@dataclass
class Batch:
    """Samples stacked along a batch axis B; time series padded to the longest T.

    Attributes:
        inputs: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` float32 per input modality.
        dates: ``(B, T)`` float32 day offsets per time-series input (0 where padded).
        pad_masks: ``(B, T)`` bool per time-series input, True where the date is padding.
        labels: ``(B, H, W)`` class indices per task, uint8 as on disk (a quarter of the
            memory and transfer of int64; losses cast on the device), int64 for wider files.
        patch_ids: one id per sample.
        bounds: one footprint per sample.
        crs: one CRS per sample.
    """

    inputs: dict[Modality, Tensor]
    dates: dict[Modality, Tensor]
    pad_masks: dict[Modality, Tensor]
    labels: dict[Task, Tensor]
    patch_ids: list[str]
    bounds: list[tuple[float, float, float, float] | None]
    crs: list[str | None]

    def __len__(self) -> int:
        return len(self.patch_ids)

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor to a device."""

        def move(d: Mapping) -> dict:
            return {k: v.to(device, non_blocking=True) for k, v in d.items()}

        return Batch(
            move(self.inputs),
            move(self.dates),
            move(self.pad_masks),
            move(self.labels),
            self.patch_ids,
            self.bounds,
            self.crs,
        )

    def pin_memory(self) -> Batch:
        """Page-lock every tensor (called by DataLoader when ``pin_memory=True``)."""

        def pin(d: Mapping) -> dict:
            return {k: v.pin_memory() for k, v in d.items()}

        return Batch(
            pin(self.inputs),
            pin(self.dates),
            pin(self.pad_masks),
            pin(self.labels),
            self.patch_ids,
            self.bounds,
            self.crs,
        )


def pad_time_series(
    series: Sequence[Tensor], dates: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad ``(T_i, C, H, W)`` series and their ``(T_i,)`` dates to the longest T.

    Returns:
        ``(B, T, C, H, W)`` values, ``(B, T)`` dates, ``(B, T)`` mask (True = padding).
    """
    import torch

    lengths = [s.shape[0] for s in series]
    t_max = max(lengths)
    first = series[0]
    values = first.new_zeros((len(series), t_max, *first.shape[1:]))
    offsets = dates[0].new_zeros((len(series), t_max))
    mask = torch.ones((len(series), t_max), dtype=torch.bool)
    for i, (s, d, n) in enumerate(zip(series, dates, lengths, strict=True)):
        values[i, :n] = s
        offsets[i, :n] = d
        mask[i, :n] = False
    return values, offsets, mask


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a Batch; time series of different lengths are zero-padded.

    Raises:
        ValueError: the samples do not hold the same modalities and tasks.
    """
    import torch

    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    for s in samples[1:]:
        if s.inputs.keys() != first.inputs.keys() or s.labels.keys() != first.labels.keys():
            raise ValueError(
                f"samples {first.patch_id} and {s.patch_id} hold different modalities or tasks"
            )
    inputs: dict[Modality, Tensor] = {}
    dates: dict[Modality, Tensor] = {}
    masks: dict[Modality, Tensor] = {}
    for m in first.inputs:
        if m in first.dates:
            inputs[m], dates[m], masks[m] = pad_time_series(
                [s.inputs[m] for s in samples], [s.dates[m] for s in samples]
            )
        else:
            inputs[m] = torch.stack([s.inputs[m] for s in samples])
    labels = {t: torch.stack([s.labels[t] for s in samples]) for t in first.labels}
    return Batch(
        inputs,
        dates,
        masks,
        labels,
        [s.patch_id for s in samples],
        [s.bounds for s in samples],
        [s.crs for s in samples],
    )
