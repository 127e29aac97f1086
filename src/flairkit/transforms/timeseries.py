"""Sentinel time-series preprocessing: snow/cloud filtering and temporal averaging.

Pure functions on numpy arrays, shared by patch training and large-area inference.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from flairkit.config import CloudFilterConfig
from flairkit.io.dates import day_offsets

log = logging.getLogger(__name__)

TemporalMean = Literal["none", "monthly", "semi-monthly"]


def clear_fraction(
    mask: np.ndarray, max_cloud: float = 1.0, max_snow: float = 1.0, use_cloud: bool = True
) -> np.ndarray:
    """Fraction of the pixels of each date that are clear.

    Args:
        mask: ``(T, 2, H, W)`` probabilities 0-100, channel 0 snow, channel 1 cloud.
        max_cloud: a pixel is clear when its cloud probability is at most this...
        max_snow: ...and its snow probability at most this.
        use_cloud: False tests snow only.

    Returns:
        ``(T,)`` float64 fractions.
    """
    clear = mask[:, 0] <= max_snow
    if use_cloud:
        clear &= mask[:, 1] <= max_cloud
    return clear.reshape(clear.shape[0], -1).mean(axis=1)


def cloud_filter(
    mask: np.ndarray,
    max_cloud: float = 1.0,
    max_snow: float = 1.0,
    max_cover_fraction: float = 0.05,
    fallback_num_dates: int = 3,
) -> np.ndarray:
    """Indices of the S2 dates to keep, as the benchmark filters them (spec section 2.3).

    A date is kept when at least ``1 - max_cover_fraction`` of its pixels have cloud
    <= ``max_cloud`` and snow <= ``max_snow`` (defaults 1, 1, 0.05: the benchmark's).
    If no date passes, the test is repeated on snow alone, as the benchmark does.
    If still none passes (a patch under snow all year), flairkit keeps the
    ``fallback_num_dates`` dates with the largest clear fraction (clouds and snow counted),
    in time order, so a sample never ends up with no date at all.

    Args:
        mask: ``(T, 2, H, W)``, channel 0 snow, channel 1 cloud, 0-100.

    Returns:
        Sorted int64 indices into the T axis; never empty when T > 0.
    """
    if mask.ndim != 4 or mask.shape[1] != 2:
        raise ValueError(f"cloud mask must be (T, 2, H, W), got {mask.shape}")
    num_dates = mask.shape[0]
    if num_dates == 0:
        return np.zeros(0, dtype=np.int64)
    min_clear = 1.0 - max_cover_fraction
    fraction = clear_fraction(mask, max_cloud, max_snow)
    kept = np.flatnonzero(fraction >= min_clear - 1e-12)
    if kept.size:
        return kept
    kept = np.flatnonzero(clear_fraction(mask, max_cloud, max_snow, False) >= min_clear - 1e-12)
    if kept.size:
        return kept
    best = np.argsort(-fraction, kind="stable")[: max(1, fallback_num_dates)]
    return np.sort(best)


def filter_dates(mask: np.ndarray, config: CloudFilterConfig) -> np.ndarray:
    """``cloud_filter`` with a CloudFilterConfig's thresholds (all dates when it is disabled)."""
    if not config.enabled:
        return np.arange(mask.shape[0])
    return cloud_filter(
        mask,
        config.max_cloud,
        config.max_snow,
        config.max_cover_fraction,
        config.fallback_num_dates,
    )


def temporal_average(
    data: np.ndarray,
    dates: np.ndarray,
    mode: TemporalMean,
    reference_date: str = "05-15",
) -> tuple[np.ndarray, np.ndarray]:
    """Average a series over calendar months or half-months, as the benchmark does.

    ``monthly`` gives 12 periods placed on day 15; ``semi-monthly`` gives 24 (days 1-15 and 16-end)
    placed on days 8 and 23. Dates are grouped by month regardless of year; offsets use the
    year of the first date. A period without any date repeats the previous period's mean and
    offset (zeros and offset 0 before the first filled period) (spec section 2.4).

    Args:
        data: ``(T, C, H, W)``.
        dates: ``(T,)`` ``datetime64[D]``.
        mode: ``none`` returns the inputs with their day offsets.
        reference_date: ``MM-DD`` for the offsets.

    Returns:
        ``(P, C, H, W)`` float32 means and ``(P,)`` float32 day offsets.
    """
    dates = np.asarray(dates, dtype="datetime64[D]")
    if mode == "none":
        return data.astype(np.float32, copy=False), day_offsets(dates, reference_date)
    if mode not in ("monthly", "semi-monthly"):
        raise ValueError(f"temporal mean must be none, monthly or semi-monthly, got {mode!r}")
    if len(dates) != data.shape[0]:
        raise ValueError(f"{data.shape[0]} images but {len(dates)} dates")
    months = dates.astype("datetime64[M]").astype(int) % 12  # 0..11
    if mode == "monthly":
        period = months
        num_periods, anchor_days = 12, [15]
    else:
        day = (dates - dates.astype("datetime64[M]")).astype(int) + 1
        period = months * 2 + (day > 15)
        num_periods, anchor_days = 24, [8, 23]
    year = int(str(dates[0])[:4]) if len(dates) else 2000
    out = np.zeros((num_periods, *data.shape[1:]), dtype=np.float32)
    offsets = np.zeros(num_periods, dtype=np.float32)
    previous_mean = np.zeros(data.shape[1:], dtype=np.float32)
    previous_offset = 0.0
    for p in range(num_periods):
        members = np.flatnonzero(period == p)
        if members.size:
            month, half = divmod(p, len(anchor_days))
            anchor = np.datetime64(f"{year:04d}-{month + 1:02d}-{anchor_days[half]:02d}")
            previous_mean = data[members].astype(np.float32).mean(axis=0)
            previous_offset = float(day_offsets(np.array([anchor]), reference_date)[0])
        out[p] = previous_mean
        offsets[p] = previous_offset
    return out, offsets
