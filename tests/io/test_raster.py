"""read_geotiff: exact values and georeference for every on-disk layout, clear errors on bad files
(shared/flairhub-format.md sections 2.1 and 2.2)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from flairkit.io.raster import DataError, read_geotiff
from flairkit.modalities import Modality

WEST, NORTH = 651_200.0, 6_862_400.0  # Lambert-93 metres
PATCH_M = 102.4

#: rasterio creation options of each layout under test.
LAYOUTS = {
    "pixel-raw": {"interleave": "pixel"},
    "band-raw": {"interleave": "band"},
    "pixel-lzw": {"interleave": "pixel", "compress": "lzw"},
    "band-lzw": {"interleave": "band", "compress": "lzw"},
    "band-deflate-pred2": {"interleave": "band", "compress": "deflate", "predictor": 2},
    "pixel-deflate-pred2": {"interleave": "pixel", "compress": "deflate", "predictor": 2},
    "band-tiled16": {"interleave": "band", "tiled": True, "blockxsize": 16, "blockysize": 16},
    "band-zstd": {"interleave": "band", "compress": "zstd"},
    "pixel-bigtiff-lzw": {"interleave": "pixel", "compress": "lzw", "bigtiff": "YES"},
    "pixel-tiled16-deflate": {
        "interleave": "pixel",
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
        "compress": "deflate",
    },
}


def write_tif(path: Path, array: np.ndarray, **options: object) -> Path:
    """Write a (bands, H, W) array as a north-up EPSG:2154 GeoTIFF covering one patch."""
    count, height, width = array.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": array.dtype.name,
        "crs": CRS.from_epsg(2154),
        "transform": Affine(PATCH_M / width, 0, WEST, 0, -PATCH_M / height, NORTH),
    }
    profile.update(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def random_bands(rng: np.random.Generator, count: int, px: int, dtype: str) -> np.ndarray:
    """Values that fill the dtype's range (floats: positive, S1-like and with exact bit noise)."""
    if np.dtype(dtype).kind == "f":
        return rng.gamma(2.0, 0.05, (count, px, px)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (count, px, px), endpoint=True, dtype=dtype)


def assert_same_as_rasterio(path: Path, modality: Modality, num_channels: int) -> np.ndarray:
    data, georef = read_geotiff(path, modality)
    with rasterio.open(path) as src:
        expected = src.read()
        bounds, crs = tuple(src.bounds), src.crs
    if modality.spec.is_time_series:
        expected = expected.reshape(-1, num_channels, *expected.shape[1:])
    assert data.dtype == expected.dtype
    assert data.shape == expected.shape
    np.testing.assert_array_equal(data, expected)
    assert georef.bounds == pytest.approx(bounds, abs=1e-6)
    assert georef.bounds == pytest.approx((WEST, NORTH - PATCH_M, WEST + PATCH_M, NORTH), abs=1e-6)
    assert georef.crs == "EPSG:2154" == f"EPSG:{crs.to_epsg()}"
    assert georef.width == georef.height == expected.shape[-1]
    return data


# (modality, channels per date, dtype, pixels per side)
TIME_SERIES_CASES = [
    (Modality.SENTINEL2_TS, 10, "uint16", 10),
    (Modality.SENTINEL2_TS, 10, "int16", 10),
    (Modality.SENTINEL2_MSK, 2, "uint8", 10),
    (Modality.SENTINEL1_ASC_TS, 2, "float32", 10),
    (Modality.SENTINEL1_DESC_TS, 2, "float32", 20),
]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    ("modality", "channels", "dtype", "px"),
    TIME_SERIES_CASES,
    ids=[f"{m.value}-{d}-{px}px" for m, _, d, px in TIME_SERIES_CASES],
)
def test_time_series_equals_rasterio(
    tmp_path: Path, layout: str, modality: Modality, channels: int, dtype: str, px: int
) -> None:
    num_dates = 7
    rng = np.random.default_rng(zlib.crc32(f"{layout}{modality.value}{dtype}".encode()))
    array = random_bands(rng, num_dates * channels, px, dtype)
    path = write_tif(tmp_path / "ts.tif", array, **LAYOUTS[layout])
    data = assert_same_as_rasterio(path, modality, channels)
    assert data.shape == (num_dates, channels, px, px)
    # Date-major layout: file band t*C + c (0-based) is date t, channel c (spec section 2.2).
    for t in range(num_dates):
        for c in range(channels):
            np.testing.assert_array_equal(data[t, c], array[t * channels + c])


def test_time_series_with_many_dates(tmp_path: Path) -> None:
    """A realistic ~90-date S2 stack (900 bands) stays exact."""
    rng = np.random.default_rng(1)
    array = random_bands(rng, 90 * 10, 10, "uint16")
    path = write_tif(tmp_path / "s2.tif", array, **LAYOUTS["band-deflate-pred2"])
    data = assert_same_as_rasterio(path, Modality.SENTINEL2_TS, 10)
    assert data.shape == (90, 10, 10, 10)
    np.testing.assert_array_equal(data[89, 9], array[899])


# (modality, bands, dtype, pixels per side)
MONO_CASES = [
    (Modality.AERIAL_RGBI, 4, "uint8", 48),
    (Modality.AERIAL_PAN, 1, "uint8", 24),
    (Modality.DEM_ELEV, 2, "float32", 48),
    (Modality.SPOT_RGBI, 4, "uint16", 8),
    (Modality.COSIA, 1, "uint8", 48),
    (Modality.LPIS, 3, "uint8", 48),
]


@pytest.mark.parametrize("layout", ["pixel-raw", "band-lzw", "band-deflate-pred2", "band-tiled16"])
@pytest.mark.parametrize(
    ("modality", "bands", "dtype", "px"), MONO_CASES, ids=[m.value for m, *_ in MONO_CASES]
)
def test_mono_temporal_equals_rasterio(
    tmp_path: Path, layout: str, modality: Modality, bands: int, dtype: str, px: int
) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{layout}{modality.value}".encode()))
    array = random_bands(rng, bands, px, dtype)
    path = write_tif(tmp_path / "mono.tif", array, **LAYOUTS[layout])
    data = assert_same_as_rasterio(path, modality, bands)
    assert data.shape == (bands, px, px)
    np.testing.assert_array_equal(data, array)


# -- bad input ------------------------------------------------------------------------------


def assert_data_error(path: Path, modality: Modality, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        read_geotiff(path, modality)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    assert_data_error(tmp_path / "nowhere" / "x.tif", Modality.AERIAL_RGBI, "missing")


@pytest.mark.parametrize(
    ("modality", "bands", "dtype", "px", "options"),
    [
        (Modality.SENTINEL2_TS, 60, "uint16", 10, {}),
        (Modality.SENTINEL2_TS, 60, "uint16", 10, {"compress": "deflate", "predictor": 2}),
        (Modality.SENTINEL1_ASC_TS, 40, "float32", 10, {"interleave": "pixel"}),
        (Modality.AERIAL_RGBI, 4, "uint8", 128, {}),
        (Modality.AERIAL_RGBI, 4, "uint8", 128, {"compress": "lzw"}),
        (Modality.DEM_ELEV, 2, "float32", 128, {"tiled": True, "blockxsize": 16, "blockysize": 16}),
    ],
    ids=["s2-raw", "s2-deflate", "s1-pixel", "aerial-raw", "aerial-lzw", "dem-tiled"],
)
def test_truncated_file(
    tmp_path: Path, modality: Modality, bands: int, dtype: str, px: int, options: dict
) -> None:
    rng = np.random.default_rng(0)
    path = write_tif(tmp_path / "cut.tif", random_bands(rng, bands, px, dtype), **options)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    assert_data_error(path, modality)


@pytest.mark.parametrize("modality", [Modality.AERIAL_RGBI, Modality.SENTINEL2_TS])
def test_text_file_renamed_tif(tmp_path: Path, modality: Modality) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("patch_id,AERIAL_RGBI\nthis is not a GeoTIFF\n")
    assert_data_error(path, modality)


@pytest.mark.parametrize(
    ("modality", "bands", "dtype", "fragments"),
    [
        (Modality.AERIAL_RGBI, 3, "uint8", ("3 bands", "expected 4")),
        (Modality.DEM_ELEV, 1, "float32", ("1 bands", "expected 2")),
        (Modality.LPIS, 1, "uint8", ("1 bands", "expected 3")),
        (Modality.SENTINEL2_TS, 25, "uint16", ("25 bands", "multiple of 10")),
        (Modality.SENTINEL1_ASC_TS, 7, "float32", ("7 bands", "multiple of 2")),
    ],
)
def test_wrong_band_count(
    tmp_path: Path, modality: Modality, bands: int, dtype: str, fragments: tuple[str, ...]
) -> None:
    path = write_tif(tmp_path / "bands.tif", np.ones((bands, 10, 10), dtype))
    assert_data_error(path, modality, *fragments)


@pytest.mark.parametrize(
    ("modality", "bands", "dtype"),
    [
        (Modality.AERIAL_RGBI, 4, "float32"),
        (Modality.AERIAL_PAN, 1, "uint16"),
        (Modality.DEM_ELEV, 2, "uint8"),
        (Modality.COSIA, 1, "float32"),
        (Modality.LPIS, 3, "float32"),
    ],
)
def test_wrong_dtype(tmp_path: Path, modality: Modality, bands: int, dtype: str) -> None:
    path = write_tif(tmp_path / "dtype.tif", np.ones((bands, 10, 10), dtype))
    assert_data_error(path, modality, f"dtype {dtype}")


# -- georeference edge cases: the fast time-series path must agree with GDAL ----------------


def georef_variant(path: Path, variant: str) -> Path:
    rng = np.random.default_rng(5)
    array = random_bands(rng, 3 * 10, 10, "uint16")
    if variant == "no-crs":
        profile = {"crs": None}
    elif variant == "wkt-crs":  # a Lambert-93 look-alike without an EPSG code
        profile = {
            "crs": CRS.from_proj4(
                "+proj=lcc +lat_1=49.5 +lat_2=44.5 +lat_0=46 +lon_0=3.5"
                " +x_0=700000 +y_0=6600000 +ellps=GRS80 +units=m"
            )
        }
    elif variant == "geographic":
        profile = {"crs": CRS.from_epsg(4326), "transform": Affine(0.001, 0, 2.0, 0, -0.001, 47.0)}
    else:
        profile = {}
    write_tif(path, array, **profile)
    if variant == "pixel-is-point":
        with rasterio.open(path, "r+") as dst:
            dst.update_tags(AREA_OR_POINT="Point")
    return path


@pytest.mark.parametrize("variant", ["plain", "no-crs", "wkt-crs", "geographic", "pixel-is-point"])
def test_time_series_georef_matches_gdal(tmp_path: Path, variant: str) -> None:
    path = georef_variant(tmp_path / "s2.tif", variant)
    data, georef = read_geotiff(path, Modality.SENTINEL2_TS)
    with rasterio.open(path) as src:
        expected = src.read().reshape(3, 10, 10, 10)
        assert georef.transform == pytest.approx(tuple(src.transform)[:6], abs=1e-9)
        assert georef.bounds == pytest.approx(tuple(src.bounds), abs=1e-9)
        if src.crs is None:
            assert georef.crs is None
        else:
            assert CRS.from_user_input(georef.crs) == src.crs
    np.testing.assert_array_equal(data, expected)
