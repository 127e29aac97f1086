"""The Preprocessor's public views (used by `flairkit show`): kept S2 dates and their clear
fractions, DEM channels before normalisation, a task's label at an LPIS level."""

from __future__ import annotations

import numpy as np
import pytest

from flairkit.config import CloudFilterConfig, DemMode, ModalityConfig, PreprocessConfig
from flairkit.modalities import Modality, Task
from flairkit.sample import RawSample
from flairkit.transforms.preprocess import Preprocessor

PX = 8


def raw_sample() -> RawSample:
    rng = np.random.default_rng(3)
    dtm = rng.uniform(100, 400, (PX, PX)).astype(np.float32)
    mask = np.zeros((4, 2, 10, 10), np.uint8)
    mask[1, 1, :3] = 50  # date 1: 30 % of pixels cloudy at 50 %
    mask[2, 1, :1] = 5  # date 2: 10 % of pixels cloudy at 5 %
    mask[3, 0] = 100  # date 3: all snow
    dates = np.array(["2021-01-10", "2021-03-01", "2021-05-15", "2021-07-04"], "datetime64[D]")
    arrays: dict[Modality, np.ndarray] = {
        Modality.DEM_ELEV: np.stack([dtm + rng.uniform(0, 30, (PX, PX)).astype(np.float32), dtm]),
        Modality.SENTINEL2_TS: rng.integers(0, 10_000, (4, 10, 10, 10)).astype(np.uint16),
        Modality.SENTINEL2_MSK: mask,
        Modality.COSIA: rng.integers(0, 19, (1, PX, PX), dtype=np.uint8),
        Modality.LPIS: np.stack(
            [rng.integers(0, n, (PX, PX)).astype(np.uint16) for n in (23, 31, 46)]
        ),
    }
    return RawSample(
        "D006-2020_UU-S1-1_1-1",
        arrays,
        {Modality.SENTINEL2_TS: dates, Modality.SENTINEL2_MSK: dates},
        {},
    )


def test_kept_dates_and_clear_fraction_follow_the_thresholds() -> None:
    raw = raw_sample()
    default = Preprocessor(PreprocessConfig())
    np.testing.assert_array_equal(default.kept_dates(raw), [0])
    np.testing.assert_allclose(default.clear_fraction(raw), [1.0, 0.7, 0.9, 0.0])
    loose = Preprocessor(PreprocessConfig(cloud_filter=CloudFilterConfig(max_cloud=10)))
    np.testing.assert_array_equal(loose.kept_dates(raw), [0, 2])
    np.testing.assert_allclose(loose.clear_fraction(raw), [1.0, 0.7, 1.0, 0.0])
    off = Preprocessor(PreprocessConfig(cloud_filter=CloudFilterConfig(enabled=False)))
    np.testing.assert_array_equal(off.kept_dates(raw), [0, 1, 2, 3])
    # The dates kept are the dates the model gets.
    config = PreprocessConfig(
        inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="none")},
        tasks=(),
        cloud_filter=CloudFilterConfig(max_cloud=10),
    )
    sample = Preprocessor(config)(raw)
    np.testing.assert_array_equal(
        sample.inputs[Modality.SENTINEL2_TS].numpy(), raw.arrays[Modality.SENTINEL2_TS][[0, 2]]
    )


def test_clear_fraction_needs_the_mask() -> None:
    raw = raw_sample()
    arrays: dict[Modality, np.ndarray] = {
        m: a for m, a in raw.arrays.items() if m is not Modality.SENTINEL2_MSK
    }
    bare = RawSample(raw.patch_id, arrays, raw.dates, {})
    with pytest.raises(ValueError, match="SENTINEL2_MSK-SC"):
        Preprocessor(PreprocessConfig()).clear_fraction(bare)


@pytest.mark.parametrize(
    ("mode", "names"),
    [("stack", ("DSM", "HEIGHT")), ("height", ("HEIGHT",)), ("raw", ("DSM", "DTM"))],
)
def test_dem_channels_are_the_model_input_before_normalisation(
    mode: DemMode, names: tuple[str, ...]
) -> None:
    raw = raw_sample()
    dsm, dtm = raw.arrays[Modality.DEM_ELEV]
    expected = {"DSM": dsm, "DTM": dtm, "HEIGHT": dsm - dtm}
    config = PreprocessConfig(
        inputs={Modality.DEM_ELEV: ModalityConfig(norm="none")}, tasks=(), dem=mode
    )
    pre = Preprocessor(config)
    got_names, channels = pre.dem_channels(raw)
    assert got_names == names == pre.channels(Modality.DEM_ELEV)
    assert channels.dtype == np.float32 and channels.shape == (len(names), PX, PX)
    for name, channel in zip(names, channels, strict=True):
        np.testing.assert_array_equal(channel, expected[name])
    np.testing.assert_array_equal(pre(raw).inputs[Modality.DEM_ELEV].numpy(), channels)


def test_label_at_the_configured_or_given_lpis_level() -> None:
    raw = raw_sample()
    lpis = raw.arrays[Modality.LPIS]
    pre = Preprocessor(PreprocessConfig(tasks=(Task.COSIA, Task.LPIS), lpis_level=2))
    label = pre.label(raw, Task.LPIS)
    assert label.dtype == np.int64  # uint16 files: torch lacks full uint16 support
    np.testing.assert_array_equal(label, lpis[1])
    np.testing.assert_array_equal(pre.label(raw, Task.LPIS, 3), lpis[2])
    cosia = pre.label(raw, Task.COSIA, 3)  # the level only applies to LPIS
    assert cosia.dtype == np.uint8
    np.testing.assert_array_equal(cosia, raw.arrays[Modality.COSIA][0])
    with pytest.raises(ValueError, match="LPIS level must be 1, 2 or 3, got 4"):
        pre.label(raw, Task.LPIS, 4)
