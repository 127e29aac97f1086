"""Preprocessor: band selection, DEM channels, normalisation, labels, config errors
(spec sections 2.5, 4.2, 5.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flairkit.config import (
    CloudFilterConfig,
    ConfigError,
    ModalityConfig,
    PreprocessConfig,
    from_dict,
    preprocess_config_for,
)
from flairkit.modalities import Modality, Task
from flairkit.sample import Georef, RawSample, collate
from flairkit.transforms.preprocess import Preprocessor

#: Published statistics (spec section 5.1): aerial per band, DEM shared by every channel.
AERIAL_STATS = {"R": (105.66, 52.23), "G": (111.35, 45.62), "NIR": (106.59, 39.78)}
DEM_MEAN, DEM_STD = 311.06, 537.55
PX = 16
GEOREF = Georef("EPSG:2154", (6.4, 0.0, 600_000.0, 0.0, -6.4, 6_700_000.0), PX, PX)


def raw_sample(seed: int = 0, num_dates: int = 5) -> RawSample:
    rng = np.random.default_rng(seed)
    dtm = rng.uniform(100, 400, (PX, PX)).astype(np.float32)
    s2_dates = np.array(
        ["2021-01-10", "2021-03-01", "2021-05-15", "2021-07-04", "2021-12-31"][:num_dates],
        dtype="datetime64[D]",
    )
    arrays = {
        Modality.AERIAL_RGBI: rng.integers(0, 256, (4, PX, PX), dtype=np.uint8),
        Modality.DEM_ELEV: np.stack([dtm + rng.uniform(0, 30, (PX, PX)).astype(np.float32), dtm]),
        Modality.SPOT_RGBI: rng.integers(0, 5000, (4, 2, 2)).astype(np.uint16),
        Modality.SENTINEL2_TS: rng.integers(0, 10_000, (num_dates, 10, 2, 2)).astype(np.uint16),
        Modality.SENTINEL2_MSK: np.zeros((num_dates, 2, 2, 2), np.uint8),
        Modality.SENTINEL1_ASC_TS: rng.gamma(2, 0.05, (3, 2, 2, 2)).astype(np.float32),
        Modality.COSIA: rng.integers(0, 19, (1, PX, PX), dtype=np.uint8),
        Modality.LPIS: np.stack(
            [rng.integers(0, n, (PX, PX), dtype=np.uint8) for n in (23, 31, 46)]
        ),
    }
    dates = {
        Modality.SENTINEL2_TS: s2_dates,
        Modality.SENTINEL2_MSK: s2_dates,
        Modality.SENTINEL1_ASC_TS: np.array(
            ["2021-02-01", "2021-06-01", "2021-10-01"], dtype="datetime64[D]"
        ),
    }
    return RawSample("D006-2020_UU-S1-1_1-1", arrays, dates, {m: GEOREF for m in arrays})


def run(inputs: dict[Modality, ModalityConfig], raw: RawSample | None = None, **kwargs):
    config = PreprocessConfig(inputs=inputs, **kwargs)
    return Preprocessor(config)(raw or raw_sample())


# -- band selection and normalisation ---------------------------------------------------------


def test_aerial_bands_by_name_with_published_stats() -> None:
    raw = raw_sample()
    sample = run({Modality.AERIAL_RGBI: ModalityConfig(bands=("NIR", "R", "G"))}, raw)
    aerial = raw.arrays[Modality.AERIAL_RGBI].astype(np.float64)
    expected = np.stack(
        [
            (aerial[i] - AERIAL_STATS[n][0]) / AERIAL_STATS[n][1]
            for i, n in ((3, "NIR"), (0, "R"), (1, "G"))
        ]
    )
    got = sample.inputs[Modality.AERIAL_RGBI]
    assert got.dtype == torch.float32 and got.shape == (3, PX, PX)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-5)


def test_default_aerial_config_is_the_benchmarks() -> None:
    raw = raw_sample()
    default = preprocess_config_for([Modality.AERIAL_RGBI])
    explicit = run({Modality.AERIAL_RGBI: ModalityConfig(bands=("NIR", "R", "G"))}, raw)
    assert Preprocessor(default).channels(Modality.AERIAL_RGBI) == ("NIR", "R", "G")
    torch.testing.assert_close(
        Preprocessor(default)(raw).inputs[Modality.AERIAL_RGBI],
        explicit.inputs[Modality.AERIAL_RGBI],
    )


def test_custom_mean_and_std() -> None:
    raw = raw_sample()
    cfg = ModalityConfig(bands=("B", "G"), mean=(10.0, 20.0), std=(2.0, 4.0))
    got = run({Modality.AERIAL_RGBI: cfg}, raw).inputs[Modality.AERIAL_RGBI].numpy()
    aerial = raw.arrays[Modality.AERIAL_RGBI].astype(np.float64)
    np.testing.assert_allclose(got[0], (aerial[2] - 10) / 2, rtol=1e-6)
    np.testing.assert_allclose(got[1], (aerial[1] - 20) / 4, rtol=1e-6)


def test_spot_nir_r_g_uses_the_nir_statistics() -> None:
    """Spec section 10, contradiction 1: the LC-I card's NIR/R/G mapping."""
    raw = raw_sample()
    got = run({Modality.SPOT_RGBI: ModalityConfig(bands=("NIR", "R", "G"))}, raw)
    spot = raw.arrays[Modality.SPOT_RGBI].astype(np.float64)
    np.testing.assert_allclose(
        got.inputs[Modality.SPOT_RGBI][0].numpy(), (spot[3] - 1137.09) / 543.11, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("mode", "channels"),
    [("stack", ("DSM", "HEIGHT")), ("height", ("HEIGHT",)), ("raw", ("DSM", "DTM"))],
)
def test_dem_modes_raw_values(mode: str, channels: tuple[str, ...]) -> None:
    raw = raw_sample()
    dsm, dtm = raw.arrays[Modality.DEM_ELEV].astype(np.float64)
    by_name = {"DSM": dsm, "DTM": dtm, "HEIGHT": dsm - dtm}
    sample = run({Modality.DEM_ELEV: ModalityConfig(norm="none")}, raw, dem=mode)
    got = sample.inputs[Modality.DEM_ELEV].numpy()
    assert got.shape == (len(channels), PX, PX)
    for i, name in enumerate(channels):
        np.testing.assert_allclose(got[i], by_name[name], rtol=1e-6, atol=1e-4)
    if "HEIGHT" in channels:  # DSM - DTM, never negative on this data
        assert (sample.inputs[Modality.DEM_ELEV][channels.index("HEIGHT")] >= 0).all()


def test_dem_normalised_with_one_mean_for_every_channel() -> None:
    raw = raw_sample()
    dsm, dtm = raw.arrays[Modality.DEM_ELEV].astype(np.float64)
    got = run({Modality.DEM_ELEV: ModalityConfig()}, raw).inputs[Modality.DEM_ELEV].numpy()
    np.testing.assert_allclose(got[0], (dsm - DEM_MEAN) / DEM_STD, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], (dsm - dtm - DEM_MEAN) / DEM_STD, rtol=1e-5, atol=1e-6)


def test_scaling_by_dtype_maximum_and_by_explicit_scale() -> None:
    raw = raw_sample()
    sample = run(
        {
            Modality.AERIAL_RGBI: ModalityConfig(norm="scaling"),
            Modality.SPOT_RGBI: ModalityConfig(norm="scaling"),
            Modality.SENTINEL2_TS: ModalityConfig(norm="scaling", scale=10_000),
        },
        raw,
        cloud_filter=CloudFilterConfig(enabled=False),
    )
    np.testing.assert_allclose(
        sample.inputs[Modality.AERIAL_RGBI].numpy(),
        raw.arrays[Modality.AERIAL_RGBI] / 255.0,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        sample.inputs[Modality.SPOT_RGBI].numpy(),
        raw.arrays[Modality.SPOT_RGBI] / 65535.0,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        sample.inputs[Modality.SENTINEL2_TS].numpy(),
        raw.arrays[Modality.SENTINEL2_TS] / 10_000.0,
        rtol=1e-6,
    )
    assert float(sample.inputs[Modality.AERIAL_RGBI].max()) <= 1.0


def test_none_keeps_raw_values_as_float32() -> None:
    raw = raw_sample()
    sample = run(
        {
            Modality.SENTINEL2_TS: ModalityConfig(norm="none", bands=("B08", "B04")),
            Modality.SENTINEL1_ASC_TS: ModalityConfig(norm="none"),
            Modality.AERIAL_RGBI: ModalityConfig(norm="none"),
        },
        raw,
        cloud_filter=CloudFilterConfig(enabled=False),
    )
    s2 = sample.inputs[Modality.SENTINEL2_TS]
    assert s2.dtype == torch.float32 and s2.shape == (5, 2, 2, 2)
    np.testing.assert_array_equal(s2.numpy()[:, 0], raw.arrays[Modality.SENTINEL2_TS][:, 6])
    np.testing.assert_array_equal(s2.numpy()[:, 1], raw.arrays[Modality.SENTINEL2_TS][:, 2])
    np.testing.assert_array_equal(
        sample.inputs[Modality.SENTINEL1_ASC_TS].numpy(), raw.arrays[Modality.SENTINEL1_ASC_TS]
    )
    np.testing.assert_array_equal(
        sample.inputs[Modality.AERIAL_RGBI].numpy(), raw.arrays[Modality.AERIAL_RGBI]
    )
    # Day offsets from 05-15 of each date's year (spec section 3.1).
    assert sample.dates[Modality.SENTINEL2_TS].tolist() == [-125, -75, 0, 50, 230]
    assert sample.dates[Modality.SENTINEL1_ASC_TS].tolist() == [-103, 17, 139]
    assert Modality.AERIAL_RGBI not in sample.dates


def test_preprocessor_does_not_modify_its_input() -> None:
    raw = raw_sample()
    before = {m: a.copy() for m, a in raw.arrays.items()}
    run({Modality.AERIAL_RGBI: ModalityConfig(), Modality.DEM_ELEV: ModalityConfig()}, raw)
    for m, a in raw.arrays.items():
        np.testing.assert_array_equal(a, before[m])


def test_required_modalities() -> None:
    config = PreprocessConfig(
        inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="none")}, tasks=(Task.COSIA, Task.LPIS)
    )
    assert Preprocessor(config).required_modalities == (
        Modality.SENTINEL2_TS,
        Modality.SENTINEL2_MSK,
        Modality.COSIA,
        Modality.LPIS,
    )
    no_filter = PreprocessConfig(
        inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="none")},
        cloud_filter=CloudFilterConfig(enabled=False),
    )
    assert Modality.SENTINEL2_MSK not in Preprocessor(no_filter).required_modalities


# -- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 2, 3])
def test_lpis_level_picks_its_band(level: int) -> None:
    raw = raw_sample()
    sample = run(
        {Modality.AERIAL_RGBI: ModalityConfig()},
        raw,
        tasks=(Task.LPIS, Task.COSIA),
        lpis_level=level,
    )
    label = sample.labels[Task.LPIS]
    np.testing.assert_array_equal(label.numpy(), raw.arrays[Modality.LPIS][level - 1])
    np.testing.assert_array_equal(sample.labels[Task.COSIA].numpy(), raw.arrays[Modality.COSIA][0])


def test_labels_stay_integer_class_indices() -> None:
    raw = raw_sample()
    config = PreprocessConfig(
        inputs={Modality.AERIAL_RGBI: ModalityConfig()}, tasks=(Task.COSIA, Task.LPIS)
    )
    preprocess = Preprocessor(config)
    sample = preprocess(raw)
    assert sample.labels[Task.COSIA].dtype == torch.uint8
    assert sample.labels[Task.LPIS].dtype == torch.uint8
    batch = collate([sample, preprocess(raw_sample(seed=1))])
    for task in (Task.COSIA, Task.LPIS):
        assert not batch.labels[task].is_floating_point()
        assert batch.labels[task].shape == (2, PX, PX)
    np.testing.assert_array_equal(
        batch.labels[Task.COSIA][0].numpy(), raw.arrays[Modality.COSIA][0]
    )
    # Wider files (uint16 labels are accepted) become int64, which torch handles fully.
    wide = raw_sample()
    wide.arrays[Modality.COSIA] = wide.arrays[Modality.COSIA].astype(np.uint16) + 300
    label = preprocess(wide).labels[Task.COSIA]
    assert label.dtype == torch.int64
    assert label.min() >= 300


def test_bounds_and_crs_come_from_the_files() -> None:
    sample = run({Modality.AERIAL_RGBI: ModalityConfig()})
    assert sample.bounds == pytest.approx(GEOREF.bounds)
    assert sample.crs == "EPSG:2154"


# -- config errors --------------------------------------------------------------------------


def test_unknown_band_name() -> None:
    with pytest.raises(ConfigError) as info:
        Preprocessor(
            PreprocessConfig(inputs={Modality.AERIAL_RGBI: ModalityConfig(bands=("NIR", "SWIR"))})
        )
    message = str(info.value)
    assert "AERIAL_RGBI.bands" in message and "SWIR" in message and "NIR" in message


def test_custom_norm_without_stats() -> None:
    with pytest.raises(ConfigError) as info:
        Preprocessor(
            PreprocessConfig(inputs={Modality.SENTINEL2_TS: ModalityConfig(norm="custom")})
        )
    assert "SENTINEL2_TS" in str(info.value) and "B02" in str(info.value)


def test_stats_of_the_wrong_length() -> None:
    cfg = ModalityConfig(bands=("NIR", "R"), mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="3 means"):
        Preprocessor(PreprocessConfig(inputs={Modality.AERIAL_RGBI: cfg}))


def test_labels_are_not_inputs() -> None:
    with pytest.raises(ConfigError, match="AERIAL_LABEL-COSIA"):
        PreprocessConfig(inputs={Modality.COSIA: ModalityConfig()})


def test_from_dict_builds_the_config() -> None:
    config = from_dict(
        PreprocessConfig,
        {
            "inputs": {
                "AERIAL_RGBI": {"bands": ["NIR", "R", "G"]},
                "S2": {"norm": "none", "temporal_mean": "monthly"},
            },
            "tasks": ["AERIAL_LABEL-COSIA", "ALL_LABEL-LPIS"],
            "lpis_level": 2,
            "cloud_filter": {"max_cover_fraction": 0.1},
        },
    )
    assert config.inputs[Modality.AERIAL_RGBI].bands == ("NIR", "R", "G")
    assert config.inputs[Modality.SENTINEL2_TS].temporal_mean == "monthly"
    assert config.tasks == (Task.COSIA, Task.LPIS)
    assert config.cloud_filter == CloudFilterConfig(max_cover_fraction=0.1)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"inputs": {"SENTINEL2_TS": {"norm": "zscore"}}}, "inputs.SENTINEL2_TS.norm"),
        ({"inputs": {"AERIAL_RGBI": {"bandz": ["R"]}}}, "inputs.AERIAL_RGBI.bandz"),
        ({"inputs": {"AERIAL_RGBI": {"mean": [1, "x", 3]}}}, "inputs.AERIAL_RGBI.mean[1]"),
        ({"cloud_filter": {"max_cloud": "high"}}, "cloud_filter.max_cloud"),
        ({"dem_mode": "stack"}, "dem_mode"),
        ({"inputs": {"NOT_A_SENSOR": {}}}, "inputs.NOT_A_SENSOR"),
        ({"lpis_level": 4}, "lpis_level"),
    ],
)
def test_from_dict_errors_name_the_dotted_path(data: dict, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(PreprocessConfig, data)
    assert str(info.value).startswith(path), str(info.value)
