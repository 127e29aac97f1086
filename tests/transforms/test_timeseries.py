"""S2 snow/cloud date filter and temporal averaging (spec sections 2.3 and 2.4)."""

from __future__ import annotations

import numpy as np
import pytest

from flairkit.config import CloudFilterConfig, ModalityConfig, PreprocessConfig
from flairkit.io.dates import day_offsets
from flairkit.modalities import Modality
from flairkit.sample import RawSample
from flairkit.transforms.preprocess import Preprocessor
from flairkit.transforms.timeseries import clear_fraction, cloud_filter, temporal_average

SNOW, CLOUD = 0, 1


def mask_with(num_dates: int, px: int = 10) -> np.ndarray:
    """(T, 2, px, px) all-clear S2 mask, channel 0 snow, channel 1 cloud."""
    return np.zeros((num_dates, 2, px, px), np.uint8)


def cover(mask: np.ndarray, t: int, channel: int, num_pixels: int, value: int = 60, start: int = 0):
    """Set ``num_pixels`` pixels of date t (in raster order from ``start``) to ``value``."""
    flat = mask[t, channel].reshape(-1)
    flat[start : start + num_pixels] = value


# -- cloud_filter ---------------------------------------------------------------------------


def test_keeps_exactly_the_dates_meeting_the_rule() -> None:
    mask = mask_with(8)
    cover(mask, 1, CLOUD, 5)  # 95 % clear: kept (boundary)
    cover(mask, 2, CLOUD, 6)  # 94 %: dropped
    cover(mask, 3, SNOW, 5)  # 95 %: kept
    cover(mask, 4, SNOW, 1, value=1)
    mask[4, CLOUD] = 1  # probability 1 everywhere is still clear (<= 1)
    cover(mask, 5, CLOUD, 3)
    cover(mask, 5, SNOW, 3, start=50)  # 3 + 3 different pixels: 94 %: dropped
    cover(mask, 6, CLOUD, 3)
    cover(mask, 6, SNOW, 3)  # the same 3 pixels: 97 %: kept
    mask[7, CLOUD] = 2  # 2 % cloud probability everywhere: not clear
    kept = cloud_filter(mask)
    assert kept.dtype == np.int64
    assert kept.tolist() == [0, 1, 3, 4, 6]
    np.testing.assert_allclose(clear_fraction(mask), [1.0, 0.95, 0.94, 0.95, 1.0, 0.94, 0.97, 0.0])


@pytest.mark.parametrize(
    ("px", "covered", "kept"), [(20, 20, True), (20, 21, False), (10, 5, True)]
)
def test_exactly_95_percent_is_kept(px: int, covered: int, kept: bool) -> None:
    mask = mask_with(2, px)
    cover(mask, 1, CLOUD, covered)
    assert cloud_filter(mask).tolist() == ([0, 1] if kept else [0])


def test_thresholds_are_parameters() -> None:
    mask = mask_with(3)
    mask[1, CLOUD] = 20
    cover(mask, 2, CLOUD, 30)
    assert cloud_filter(mask).tolist() == [0]
    assert cloud_filter(mask, max_cloud=20).tolist() == [0, 1]
    assert cloud_filter(mask, max_cover_fraction=0.3).tolist() == [0, 2]


def test_snow_only_fallback_when_every_date_is_cloudy() -> None:
    mask = mask_with(5)
    mask[:, CLOUD] = 90  # every date cloudy
    cover(mask, 1, SNOW, 40)  # date 1 is also snowy
    cover(mask, 3, SNOW, 5)  # date 3: 95 % free of snow: passes the snow-only test
    assert cloud_filter(mask).tolist() == [0, 2, 3, 4]


def test_final_fallback_keeps_the_least_covered_dates_in_time_order() -> None:
    mask = mask_with(6)
    mask[:, SNOW] = 80
    mask[:, CLOUD] = 80
    # Clear pixels per date: 10, 30, 0, 50, 20, 40 (%): best are dates 3, 5, 1.
    for t, clear in enumerate([10, 30, 0, 50, 20, 40]):
        cover(mask, t, SNOW, clear, value=0)
        cover(mask, t, CLOUD, clear, value=0)
    assert cloud_filter(mask, fallback_num_dates=3).tolist() == [1, 3, 5]
    assert cloud_filter(mask, fallback_num_dates=2).tolist() == [3, 5]
    assert cloud_filter(mask, fallback_num_dates=1).tolist() == [3]
    assert cloud_filter(mask, fallback_num_dates=10).tolist() == [0, 1, 2, 3, 4, 5]


def test_no_dates_and_bad_shapes() -> None:
    assert cloud_filter(mask_with(0)).tolist() == []
    with pytest.raises(ValueError, match="T, 2, H, W"):
        cloud_filter(np.zeros((3, 1, 4, 4), np.uint8))


def s2_sample(mask: np.ndarray) -> RawSample:
    num_dates = mask.shape[0]
    rng = np.random.default_rng(3)
    dates = np.datetime64("2021-01-05") + np.arange(num_dates) * 40
    arrays = {
        Modality.SENTINEL2_TS: rng.integers(0, 10_000, (num_dates, 10, 10, 10)).astype(np.uint16),
        Modality.SENTINEL2_MSK: mask,
        Modality.COSIA: np.zeros((1, 10, 10), np.uint8),
    }
    return RawSample("D006-2020_UU-S1-1_1-1", arrays, {Modality.SENTINEL2_TS: dates})


S2_ONLY = PreprocessConfig(inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="none")})


def test_preprocessor_filters_images_and_dates_together() -> None:
    mask = mask_with(5)
    cover(mask, 1, CLOUD, 50)
    cover(mask, 4, SNOW, 10)
    raw = s2_sample(mask)
    sample = Preprocessor(S2_ONLY)(raw)
    kept = [0, 2, 3]
    np.testing.assert_array_equal(
        sample.inputs[Modality.SENTINEL2_TS].numpy(), raw.arrays[Modality.SENTINEL2_TS][kept]
    )
    np.testing.assert_array_equal(
        sample.dates[Modality.SENTINEL2_TS].numpy(),
        day_offsets(raw.dates[Modality.SENTINEL2_TS][kept]),
    )
    unfiltered = PreprocessConfig(
        inputs=S2_ONLY.inputs, cloud_filter=CloudFilterConfig(enabled=False)
    )
    assert Preprocessor(unfiltered)(raw).inputs[Modality.SENTINEL2_TS].shape[0] == 5


@pytest.mark.parametrize("snowy", [False, True])
def test_all_cloudy_patch_goes_through_the_preprocessor(snowy: bool) -> None:
    mask = mask_with(6)
    mask[:, CLOUD] = 100
    if snowy:  # cloudy and snowy: the final fallback keeps the 3 least-covered dates
        mask[:, SNOW] = 100
        for t, clear in enumerate([0, 12, 3, 0, 30, 7]):
            cover(mask, t, CLOUD, clear, value=0)
            cover(mask, t, SNOW, clear, value=0)
        kept = [1, 4, 5]
    else:  # cloudy only: the snow-only test keeps every date
        kept = [0, 1, 2, 3, 4, 5]
    raw = s2_sample(mask)
    sample = Preprocessor(S2_ONLY)(raw)
    np.testing.assert_array_equal(
        sample.inputs[Modality.SENTINEL2_TS].numpy(), raw.arrays[Modality.SENTINEL2_TS][kept]
    )
    np.testing.assert_array_equal(
        sample.dates[Modality.SENTINEL2_TS].numpy(),
        day_offsets(raw.dates[Modality.SENTINEL2_TS][kept]),
    )


def test_preprocessor_needs_the_mask_when_filtering() -> None:
    raw = s2_sample(mask_with(3))
    del raw.arrays[Modality.SENTINEL2_MSK]
    with pytest.raises(ValueError, match="SENTINEL2_MSK-SC"):
        Preprocessor(S2_ONLY)(raw)


# -- temporal_average -----------------------------------------------------------------------


def series(values: list[float]) -> np.ndarray:
    """(T, 2, 1, 1): channel 0 the value, channel 1 ten times it."""
    v = np.array(values, np.float32)
    return np.stack([v, 10 * v], axis=1)[:, :, None, None]


def test_monthly_means_offsets_and_gap_filling() -> None:
    dates = np.array(
        ["2021-01-05", "2021-01-20", "2021-03-10", "2021-06-01", "2021-06-30"],
        dtype="datetime64[D]",
    )
    data = series([1, 3, 8, 10, 20]).astype(np.uint16)
    means, offsets = temporal_average(data, dates, "monthly")
    assert means.shape == (12, 2, 1, 1) and means.dtype == np.float32
    assert offsets.shape == (12,) and offsets.dtype == np.float32
    expected = [2, 2, 8, 8, 8, 15, 15, 15, 15, 15, 15, 15]  # Feb, Apr-May, Jul-Dec copy
    np.testing.assert_allclose(means[:, 0, 0, 0], expected)
    np.testing.assert_allclose(means[:, 1, 0, 0], np.array(expected) * 10)
    # Day 15 of the month minus 15 May 2021 (not a leap year).
    jan, mar, jun = -120, -61, 31
    assert offsets.tolist() == [jan, jan, mar, mar, mar, jun, jun, jun, jun, jun, jun, jun]


def test_monthly_offsets_in_a_leap_year() -> None:
    dates = np.array(["2020-01-31", "2020-02-29", "2020-12-01"], dtype="datetime64[D]")
    _, offsets = temporal_average(series([1, 2, 3]), dates, "monthly")
    assert offsets[0] == -121  # 15 Jan 2020 -> 15 May 2020: 121 days (29 February)
    assert offsets[1] == -90
    assert offsets[11] == 214


def test_leading_empty_periods_are_zeros_at_offset_zero() -> None:
    dates = np.array(["2021-03-02", "2021-03-28", "2021-05-15"], dtype="datetime64[D]")
    means, offsets = temporal_average(series([4, 6, 9]), dates, "monthly")
    np.testing.assert_array_equal(means[:2], 0)
    assert offsets[:2].tolist() == [0, 0]
    np.testing.assert_allclose(means[2:5, 0, 0, 0], [5, 5, 9])
    assert offsets[2:5].tolist() == [-61, -61, 0]


def test_semi_monthly() -> None:
    dates = np.array(
        ["2021-01-05", "2021-01-15", "2021-01-16", "2021-06-01", "2021-06-30"],
        dtype="datetime64[D]",
    )
    means, offsets = temporal_average(series([2, 4, 7, 10, 20]), dates, "semi-monthly")
    assert means.shape == (24, 2, 1, 1)
    got = means[:, 0, 0, 0]
    # Days 1-15 -> first half (day 8), 16-end -> second half (day 23).
    np.testing.assert_allclose(got[:3], [3, 7, 7])
    np.testing.assert_allclose(got[10:13], [10, 20, 20])
    np.testing.assert_allclose(got[23], 20)
    assert offsets[0] == -127  # 8 Jan 2021 - 15 May 2021
    assert offsets[1] == -112  # 23 Jan
    assert offsets[2] == -112  # empty: repeats
    assert offsets[10] == 24  # 8 Jun
    assert offsets[11] == 39  # 23 Jun
    assert offsets[23] == 39


def test_none_returns_the_inputs() -> None:
    dates = np.array(["2021-03-01", "2021-05-15"], dtype="datetime64[D]")
    values, offsets = temporal_average(series([1, 2]), dates, "none")
    np.testing.assert_array_equal(values, series([1, 2]))
    assert offsets.tolist() == [-75, 0]
    with pytest.raises(ValueError, match="weekly"):
        temporal_average(series([1, 2]), dates, "weekly")  # type: ignore[arg-type]


def test_preprocessor_averages_after_filtering() -> None:
    mask = mask_with(5)
    cover(mask, 2, CLOUD, 50)  # date 2 dropped before averaging
    raw = s2_sample(mask)  # dates 5 Jan, 14 Feb, 26 Mar, 5 May, 14 Jun 2021
    config = PreprocessConfig(
        inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="none", temporal_mean="monthly")}
    )
    sample = Preprocessor(config)(raw)
    s2 = raw.arrays[Modality.SENTINEL2_TS].astype(np.float32)
    got = sample.inputs[Modality.SENTINEL2_TS].numpy()
    assert got.shape == (12, 10, 10, 10)
    np.testing.assert_allclose(got[0], s2[0])
    np.testing.assert_allclose(got[2], s2[1])  # March is empty after filtering: February copied
    np.testing.assert_allclose(got[4], s2[3])
    assert sample.dates[Modality.SENTINEL2_TS].tolist()[:6] == [-120, -89, -89, -89, 0, 31]
