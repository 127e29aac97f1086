"""WindowReader: windows of large rasters -> RawSample, exact on the source grid, resampled
elsewhere, with validity, clear errors, and handles that survive threads, pickling and fork."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_bounds

from flairkit.config import preprocess_config_for
from flairkit.io.dates import DatesIndex, read_dates_file
from flairkit.io.patches import read_patch
from flairkit.io.raster import DataError
from flairkit.io.windows import RasterSource, WindowReader
from flairkit.modalities import PATCH_SIZE_M, Modality
from flairkit.synth_zone import ZoneSummary, write_dates_file
from flairkit.transforms.preprocess import Preprocessor

L93 = "EPSG:2154"
X0, Y0 = 651_200.0, 6_862_400.0  # Lambert-93 metres, near Paris
#: Every input of the parity test (S2 with its cloud filter, hence its mask).
PARITY_INPUTS = (
    Modality.AERIAL_RGBI,
    Modality.DEM_ELEV,
    Modality.SPOT_RGBI,
    Modality.AERIAL_PAN,
    Modality.SENTINEL2_TS,
    Modality.SENTINEL1_ASC_TS,
    Modality.SENTINEL1_DESC_TS,
)


def write_raster(
    path: Path,
    array: np.ndarray,
    transform: Affine,
    crs: str | None = L93,
    nodata: float | None = None,
) -> Path:
    """Write a (C, H, W) array as a tiled GeoTIFF."""
    count, height, width = array.shape
    profile = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=array.dtype.name,
        transform=transform, tiled=True, blockxsize=16, blockysize=16,
    )  # fmt: skip
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def zone_reader(zone: ZoneSummary, mods: tuple[Modality, ...] | None = None) -> WindowReader:
    sources = zone.sources if mods is None else {m: zone.sources[m] for m in mods}
    return WindowReader(sources, gsd_m=zone.gsd_m_by_modality)


def shifted(bounds: tuple[float, ...], dx_m: float, dy_m: float) -> tuple[float, ...]:
    left, bottom, right, top = bounds
    return left + dx_m, bottom + dy_m, right + dx_m, top + dy_m


# -- parity with the patch path ---------------------------------------------------------------


def test_tile_path_matches_patch_path(synthetic_zone: ZoneSummary) -> None:
    """The same pixels read as a patch and as a mosaic window give the same Sample."""
    preprocess = Preprocessor(preprocess_config_for(PARITY_INPUTS, tasks=()))
    assert Modality.SENTINEL2_MSK in preprocess.required_modalities  # cloud filter is on
    reader = zone_reader(synthetic_zone)
    dates = DatesIndex(synthetic_zone.dataset_root)
    kept_counts = set()
    for ref in synthetic_zone.patch_refs():
        raw_patch = read_patch(ref, preprocess.required_modalities, dates)
        bounds = synthetic_zone.patch_bounds[ref.patch_id]
        raw_tile = reader.read(bounds, synthetic_zone.crs, ref.patch_id,
                               preprocess.required_modalities)  # fmt: skip
        for m, array in raw_patch.arrays.items():  # raw pixels: bit for bit, same dtype
            assert raw_tile.arrays[m].dtype == array.dtype, m
            np.testing.assert_array_equal(raw_tile.arrays[m], array, err_msg=m.value)
        for m, when in raw_patch.dates.items():
            np.testing.assert_array_equal(raw_tile.dates[m], when)
        for m, georef in raw_patch.georefs.items():
            assert raw_tile.georefs[m].crs == georef.crs
            assert (raw_tile.georefs[m].width, raw_tile.georefs[m].height) == (
                georef.width, georef.height,
            )  # fmt: skip
            np.testing.assert_allclose(raw_tile.georefs[m].bounds, georef.bounds, atol=1e-6)
        patch, tile = preprocess(raw_patch), preprocess(raw_tile)
        assert patch.inputs.keys() == tile.inputs.keys() == set(PARITY_INPUTS)
        for m in patch.inputs:
            assert tile.inputs[m].shape == patch.inputs[m].shape, m
            assert torch.equal(tile.inputs[m], patch.inputs[m]), m
        for m in patch.dates:
            assert torch.equal(tile.dates[m], patch.dates[m]), m
        assert tile.crs == patch.crs
        np.testing.assert_allclose(tile.bounds, patch.bounds, atol=1e-6)
        kept_counts.add(tile.inputs[Modality.SENTINEL2_TS].shape[0])
    num_dates = len(read_dates_file(synthetic_zone.sources[Modality.SENTINEL2_TS].dates_path))
    assert max(kept_counts) < num_dates  # the filter dropped cloudy dates in every window


def test_aligned_window_across_patches_equals_mosaic_pixels(synthetic_zone: ZoneSummary) -> None:
    """A window straddling four patches, on the grid, is the exact block of the mosaic."""
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI, Modality.SPOT_RGBI))
    first = synthetic_zone.patch_bounds[synthetic_zone.patch_ids[0]]
    half = PATCH_SIZE_M / 2
    raw = reader.read(shifted(first, half, -half), synthetic_zone.crs)
    for m in (Modality.AERIAL_RGBI, Modality.SPOT_RGBI):
        px = synthetic_zone.px_by_modality[m]
        with rasterio.open(synthetic_zone.sources[m].path) as src:
            expected = src.read()[:, px // 2 : px // 2 + px, px // 2 : px // 2 + px]
        np.testing.assert_array_equal(raw.arrays[m], expected)


def test_default_gsd_is_native_and_reference_is_finest(synthetic_zone: ZoneSummary) -> None:
    """Without gsd_m, a 102.4 m window gives the dataset's 512 / 64 / 10 px."""
    mods = (Modality.AERIAL_RGBI, Modality.SPOT_RGBI, Modality.SENTINEL2_TS)
    reader = WindowReader({m: synthetic_zone.sources[m] for m in mods})
    bounds = synthetic_zone.patch_bounds[synthetic_zone.patch_ids[0]]
    shapes = {m: reader.window_shape(m, bounds) for m in mods}
    assert shapes == {m: (512, 512) if m is Modality.AERIAL_RGBI else
                      (64, 64) if m is Modality.SPOT_RGBI else (10, 10) for m in mods}  # fmt: skip
    raw = reader.read(bounds, L93)
    assert raw.arrays[Modality.AERIAL_RGBI].shape == (4, 512, 512)
    assert raw.arrays[Modality.SENTINEL2_TS].shape[1:] == (10, 10, 10)
    assert reader.reference_modality is Modality.AERIAL_RGBI
    assert reader.crs == L93


# -- resampling and reprojection --------------------------------------------------------------


def ramp(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A plane in Lambert-93 metres: bilinear resampling should reproduce it closely."""
    return (100 + 0.5 * (x - X0) + 0.25 * (y - Y0)).astype(np.float32)


def write_ramp_dem(path: Path, crs: str, bounds: tuple[float, ...], gsd_m: float) -> Path:
    """A DEM (DSM = ramp, DTM = ramp / 2) in ``crs``; values come from Lambert-93 coordinates."""
    left, bottom, right, top = bounds
    width, height = round((right - left) / gsd_m), round((top - bottom) / gsd_m)
    transform = Affine(gsd_m, 0, left, 0, -gsd_m, top)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = left + cols * gsd_m, top - rows * gsd_m
    if crs != L93:
        xs, ys = (np.reshape(v, xs.shape) for v in
                  transform_points(crs, L93, xs.ravel(), ys.ravel()))  # fmt: skip
    dsm = ramp(np.asarray(xs), np.asarray(ys))
    return write_raster(path, np.stack([dsm, dsm / 2]), transform, crs)


def window_centres(bounds: tuple[float, ...], px: int) -> tuple[np.ndarray, np.ndarray]:
    left, _, right, top = bounds
    step = (right - left) / px
    cols, rows = np.meshgrid(np.arange(px) + 0.5, np.arange(px) + 0.5)
    return left + cols * step, top - rows * step


WINDOW = (X0, Y0 - 64.0, X0 + 64.0, Y0)  # 64 m, read at 1 m: 64 x 64 px


@pytest.mark.parametrize("crs", ["EPSG:32631", "EPSG:3857"])
def test_source_in_another_crs_is_reprojected(tmp_path: Path, crs: str) -> None:
    """A DEM in UTM 31N or Web Mercator reads back close to the aligned Lambert-93 read."""
    margin = (WINDOW[0] - 10, WINDOW[1] - 10, WINDOW[2] + 10, WINDOW[3] + 10)
    src_bounds = transform_bounds(L93, crs, *margin)
    foreign = write_ramp_dem(tmp_path / "foreign.tif", crs, src_bounds, 0.8)
    aligned = write_ramp_dem(tmp_path / "l93.tif", L93, margin, 1.0)
    gsd = {Modality.DEM_ELEV: 1.0}
    raw, valid = WindowReader({Modality.DEM_ELEV: RasterSource(foreign)}, gsd).read_with_validity(
        WINDOW, L93
    )
    reference = WindowReader({Modality.DEM_ELEV: RasterSource(aligned)}, gsd).read(WINDOW, L93)
    got = raw.arrays[Modality.DEM_ELEV]
    assert got.shape == (2, 64, 64) and got.dtype == np.float32
    assert raw.georefs[Modality.DEM_ELEV].crs == L93
    np.testing.assert_allclose(raw.georefs[Modality.DEM_ELEV].bounds, WINDOW)
    assert valid[Modality.DEM_ELEV].all()
    expected = ramp(*window_centres(WINDOW, 64))
    np.testing.assert_array_equal(reference.arrays[Modality.DEM_ELEV][0], expected)  # exact
    np.testing.assert_allclose(got[0], expected, atol=0.05)  # bilinear, approx. transformer
    np.testing.assert_allclose(got[1], expected / 2, atol=0.05)
    assert np.abs(got[0] - expected).mean() < 0.02  # 0.014: under 0.03 px


@pytest.mark.parametrize("source_gsd_m", [0.5, 2.0])
def test_source_at_another_resolution_is_resampled(tmp_path: Path, source_gsd_m: float) -> None:
    """Finer (2x) or coarser sources give the window's shape and values close to the ramp."""
    margin = (WINDOW[0] - 8, WINDOW[1] - 8, WINDOW[2] + 8, WINDOW[3] + 8)
    path = write_ramp_dem(tmp_path / "dem.tif", L93, margin, source_gsd_m)
    reader = WindowReader({Modality.DEM_ELEV: RasterSource(path)}, {Modality.DEM_ELEV: 1.0})
    got = reader.read(WINDOW, L93).arrays[Modality.DEM_ELEV]
    assert got.shape == (2, 64, 64)
    np.testing.assert_allclose(got[0], ramp(*window_centres(WINDOW, 64)), atol=1e-3)


def test_integer_bands_resample_to_rounded_values(synthetic_zone: ZoneSummary) -> None:
    """An off-grid aerial window is bilinear: each value lies between its source neighbours."""
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI, Modality.COSIA))
    bounds = shifted(synthetic_zone.patch_bounds[synthetic_zone.patch_ids[0]], 20.2, -20.2)
    raw = reader.read(bounds, synthetic_zone.crs)  # half a pixel off the 0.4 m grid
    aerial = raw.arrays[Modality.AERIAL_RGBI]
    assert aerial.dtype == np.uint8 and aerial.shape == (4, 256, 256)
    with rasterio.open(synthetic_zone.sources[Modality.AERIAL_RGBI].path) as src:
        block = src.read()[:, 50:307, 50:307].astype(np.float32)  # source pixels under it
    expected = (block[:, :-1, :-1] + block[:, 1:, :-1] + block[:, :-1, 1:] + block[:, 1:, 1:]) / 4
    assert np.abs(aerial - expected).max() <= 1  # rounding only
    with rasterio.open(synthetic_zone.sources[Modality.COSIA].path) as src:
        classes = set(np.unique(src.read()))
    assert set(np.unique(raw.arrays[Modality.COSIA])) <= classes  # nearest: no new class


# -- extent, nodata, validity -----------------------------------------------------------------


def test_window_partly_outside_is_filled_and_invalid(synthetic_zone: ZoneSummary) -> None:
    """Pixels past the mosaic's west edge are 0 (no nodata declared) and not valid."""
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS))
    first = synthetic_zone.patch_bounds[synthetic_zone.patch_ids[0]]
    raw, valid = reader.read_with_validity(shifted(first, -PATCH_SIZE_M / 4, 0), L93)
    aerial, mask = raw.arrays[Modality.AERIAL_RGBI], valid[Modality.AERIAL_RGBI]
    assert not mask[:, :64].any() and mask[:, 64:].all()
    assert (aerial[:, :, :64] == 0).all()
    with rasterio.open(synthetic_zone.sources[Modality.AERIAL_RGBI].path) as src:
        np.testing.assert_array_equal(aerial[:, :, 64:], src.read()[:, :256, :192])
    # S2 (5 px of 20.48 m) is off its grid here: warped. Centres at 10.24 and 30.72 m from the
    # window's west side, edge at 25.6 m: column 0 has no data, column 1 has.
    s2_valid = valid[Modality.SENTINEL2_TS]
    assert s2_valid.shape == (5, 5) and not s2_valid[:, 0].any() and s2_valid[:, 1:].all()


def test_nodata_pixels_are_filled_and_reported(tmp_path: Path) -> None:
    """A source with nodata: outside pixels get it; inside pixels equal to it are invalid."""
    data = np.full((4, 32, 32), 100, np.uint8)
    data[:, :4, :4] = 255  # a nodata corner
    path = write_raster(tmp_path / "a.tif", data, Affine(0.2, 0, X0, 0, -0.2, Y0), nodata=255)
    reader = WindowReader({Modality.AERIAL_RGBI: RasterSource(path)})
    bounds = (X0 - 0.4, Y0 - 6.4, X0 + 6.0, Y0)  # 2 px west of the raster
    raw, valid = reader.read_with_validity(bounds, L93)
    aerial, mask = raw.arrays[Modality.AERIAL_RGBI], valid[Modality.AERIAL_RGBI]
    assert aerial.shape == (4, 32, 32)
    assert (aerial[:, :, :2] == 255).all() and not mask[:, :2].any()  # outside
    assert not mask[:4, 2:6].any() and mask[4:, 2:].all() and mask[:, 6:].all()
    shape = (16, 16)  # the same area on a 0.4 m output grid
    np.testing.assert_array_equal(reader.valid_mask(bounds, L93, shape), mask[::2, ::2])


def test_valid_mask_of_a_foreign_crs_source_follows_its_footprint(tmp_path: Path) -> None:
    """Warped path: pixels whose centre falls outside a UTM source are invalid."""
    half = (WINDOW[0] - 10, WINDOW[1] - 10, WINDOW[0] + 32, WINDOW[3] + 10)  # west half only
    path = write_ramp_dem(tmp_path / "utm.tif", "EPSG:32631",
                          transform_bounds(L93, "EPSG:32631", *half), 1.0)  # fmt: skip
    reader = WindowReader({Modality.DEM_ELEV: RasterSource(path)}, {Modality.DEM_ELEV: 1.0})
    _, valid = reader.read_with_validity(WINDOW, L93)
    mask = valid[Modality.DEM_ELEV]
    assert mask[:, :30].all() and not mask[:, 36:].any()  # the UTM edge is slanted in L93
    np.testing.assert_array_equal(reader.valid_mask(WINDOW, L93, (64, 64), [Modality.DEM_ELEV]),
                                  mask)  # fmt: skip


def test_no_overlap_raises_and_partial_overlap_warns(
    synthetic_zone: ZoneSummary, caplog: pytest.LogCaptureFixture
) -> None:
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS))
    reader.check_overlap(synthetic_zone.bounds, L93)
    far = shifted(synthetic_zone.bounds, 10_000, 0)
    with pytest.raises(DataError, match="does not overlap") as info:
        reader.check_overlap(far, L93)
    assert str(synthetic_zone.sources[Modality.AERIAL_RGBI].path) in str(info.value)
    with caplog.at_level("WARNING"):
        reader.check_overlap(shifted(synthetic_zone.bounds, 50, 0), L93)
    assert "covers only part" in caplog.text
    lonlat = transform_bounds(L93, "EPSG:4326", *synthetic_zone.bounds)
    reader.check_overlap(lonlat, "EPSG:4326")  # any CRS


# -- dates files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "20210110\n20210301\n20210515\n",
        "# S2 dates\n2021-01-10\n\n2021-03-01\n20210515",
        json.dumps(["20210110", "2021-03-01", "20210515"]),
        json.dumps({"2": "20210301", "1": "20210110", "3": "20210515"}),
    ],
    ids=["yyyymmdd", "iso-with-comments", "json-list", "json-object"],
)
def test_dates_file_formats(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dates.txt"
    path.write_text(text)
    expected = np.array(["2021-01-10", "2021-03-01", "2021-05-15"], dtype="datetime64[D]")
    np.testing.assert_array_equal(read_dates_file(path), expected)


def test_bad_date_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dates.txt"
    path.write_text("20210110\n2021-13-45\n")
    with pytest.raises(DataError, match=r"dates\.txt line 2"):
        read_dates_file(path)


# -- errors that name the file ----------------------------------------------------------------


def _ts_source(tmp_path: Path, num_bands: int, num_dates: int, **kw) -> RasterSource:
    data = np.ones((num_bands, 4, 4), np.uint16)
    path = write_raster(tmp_path / "s2.tif", data, Affine(10.24, 0, X0, 0, -10.24, Y0), **kw)
    dates = write_dates_file(tmp_path / "s2_dates.txt",
                             np.arange(num_dates) + np.datetime64("2021-01-01"))  # fmt: skip
    return RasterSource(path, dates)


def _case_no_crs(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2, crs=None)
    return {Modality.SENTINEL2_TS: src}, src.path


def _case_mono_band_count(tmp_path: Path) -> tuple[dict, Path]:
    path = write_raster(tmp_path / "a.tif", np.zeros((3, 8, 8), np.uint8),
                        Affine(0.2, 0, X0, 0, -0.2, Y0))  # fmt: skip
    return {Modality.AERIAL_RGBI: RasterSource(path)}, path


def _case_dtype(tmp_path: Path) -> tuple[dict, Path]:
    path = write_raster(tmp_path / "a.tif", np.zeros((4, 8, 8), np.uint16),
                        Affine(0.2, 0, X0, 0, -0.2, Y0))  # fmt: skip
    return {Modality.AERIAL_RGBI: RasterSource(path)}, path


def _case_ts_not_multiple(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 25, 2)
    return {Modality.SENTINEL2_TS: src}, src.path


def _case_dates_count(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 30, 2)
    return {Modality.SENTINEL2_TS: src}, src.path


def _case_mask_band_count(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2)
    mask = write_raster(tmp_path / "mask.tif", np.zeros((2, 4, 4), np.uint8),
                        Affine(10.24, 0, X0, 0, -10.24, Y0))  # fmt: skip
    return {Modality.SENTINEL2_TS: src, Modality.SENTINEL2_MSK: RasterSource(mask)}, mask


def _case_mask_dates_differ(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2)
    mask = write_raster(tmp_path / "mask.tif", np.zeros((2, 4, 4), np.uint8),
                        Affine(10.24, 0, X0, 0, -10.24, Y0))  # fmt: skip
    one_date = write_dates_file(tmp_path / "mask_dates.txt", np.array(["2021-01-01"], "M8[D]"))
    return {Modality.SENTINEL2_TS: src, Modality.SENTINEL2_MSK: RasterSource(mask, one_date)}, mask


def _case_no_dates_path(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2)
    return {Modality.SENTINEL2_TS: RasterSource(src.path)}, src.path


def _case_missing_dates_file(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2)
    missing = tmp_path / "nowhere.txt"
    return {Modality.SENTINEL2_TS: RasterSource(src.path, missing)}, missing


def _case_missing_raster(tmp_path: Path) -> tuple[dict, Path]:
    path = tmp_path / "missing.tif"
    return {Modality.AERIAL_RGBI: RasterSource(path)}, path


def _case_unparseable_dates(tmp_path: Path) -> tuple[dict, Path]:
    src = _ts_source(tmp_path, 20, 2)
    src.dates_path.write_text("20210101\nnot-a-date\n")
    return {Modality.SENTINEL2_TS: src}, src.dates_path


def _case_not_a_raster(tmp_path: Path) -> tuple[dict, Path]:
    path = tmp_path / "junk.tif"
    path.write_bytes(b"not a tiff")
    return {Modality.AERIAL_RGBI: RasterSource(path)}, path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (_case_no_crs, "no CRS"),
        (_case_mono_band_count, "3 bands, expected 4"),
        (_case_dtype, "dtype uint16"),
        (_case_ts_not_multiple, "not a multiple of 10"),
        (_case_dates_count, "lists 2 dates"),
        (_case_mask_band_count, "lists 2 dates"),
        (_case_mask_dates_differ, "differ from the 2 dates"),
        (_case_no_dates_path, "needs a dates file"),
        (_case_missing_dates_file, "dates file is missing"),
        (_case_missing_raster, "raster is missing"),
        (_case_unparseable_dates, "line 2"),
        (_case_not_a_raster, "cannot open"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[6:] or None,
)
def test_open_errors_name_the_file(tmp_path: Path, case, message: str) -> None:
    sources, culprit = case(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        WindowReader(sources)
    assert str(culprit) in str(info.value)


# -- time series, handles ---------------------------------------------------------------------


def test_long_time_series_window_and_mask_dates(tmp_path: Path) -> None:
    """A 100-date stack (1,000 bands) reads as (T, C, H, W) date-major; the mask borrows S2's
    dates."""
    num_dates = 100
    t, c = np.meshgrid(np.arange(num_dates), np.arange(10), indexing="ij")
    stack = np.broadcast_to((t * 10 + c).reshape(-1, 1, 1), (num_dates * 10, 20, 20))
    transform = Affine(10.24, 0, X0, 0, -10.24, Y0)
    s2 = write_raster(tmp_path / "s2.tif", stack.astype(np.uint16), transform)
    mask = write_raster(tmp_path / "m.tif", np.zeros((num_dates * 2, 20, 20), np.uint8), transform)
    dates = np.arange(num_dates) * 3 + np.datetime64("2021-01-01")
    dates_path = write_dates_file(tmp_path / "dates.txt", dates)
    reader = WindowReader({
        Modality.SENTINEL2_TS: RasterSource(s2, dates_path),
        Modality.SENTINEL2_MSK: RasterSource(mask),
    })  # fmt: skip
    bounds = (X0 + 5 * 10.24, Y0 - 15 * 10.24, X0 + 15 * 10.24, Y0 - 5 * 10.24)
    raw = reader.read(bounds, L93)
    series = raw.arrays[Modality.SENTINEL2_TS]
    assert series.shape == (num_dates, 10, 10, 10)
    np.testing.assert_array_equal(series[:, :, 0, 0], t * 10 + c)
    assert raw.arrays[Modality.SENTINEL2_MSK].shape == (num_dates, 2, 10, 10)
    np.testing.assert_array_equal(raw.dates[Modality.SENTINEL2_MSK], dates)


def _read_in_child(reader: WindowReader, bounds: tuple[float, ...]) -> np.ndarray:
    return reader.read(bounds, L93).arrays[Modality.AERIAL_RGBI]


def test_reader_is_safe_across_threads_pickle_and_fork(synthetic_zone: ZoneSummary) -> None:
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS))
    windows = [synthetic_zone.patch_bounds[p] for p in synthetic_zone.patch_ids] * 3
    serial = [reader.read(b, L93).arrays[Modality.AERIAL_RGBI] for b in windows]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda b: _read_in_child(reader, b), windows))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(_read_in_child(clone, windows[1]), serial[1])
    with multiprocessing.get_context("fork").Pool(1) as pool:  # handles open in the parent
        forked = pool.starmap(_read_in_child, [(reader, windows[2])])[0]
    np.testing.assert_array_equal(forked, serial[2])
    reader.close()
    np.testing.assert_array_equal(_read_in_child(reader, windows[0]), serial[0])  # reopens


def test_read_rejects_unknown_modality_and_bad_bounds(synthetic_zone: ZoneSummary) -> None:
    reader = zone_reader(synthetic_zone, (Modality.AERIAL_RGBI,))
    bounds = synthetic_zone.patch_bounds[synthetic_zone.patch_ids[0]]
    with pytest.raises(KeyError, match="no source raster for SPOT_RGBI"):
        reader.read(bounds, L93, modalities=[Modality.SPOT_RGBI])
    with pytest.raises(ValueError, match="empty or inverted"):
        reader.read((bounds[2], bounds[1], bounds[0], bounds[3]), L93)
