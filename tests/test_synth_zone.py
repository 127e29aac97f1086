"""Synthetic zone and large benchmark rasters: mosaics hold exactly the patch pixels, files are
tiled Lambert-93 GeoTIFFs, output is deterministic per seed, and writing is block by block."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flairkit.io.dates import DatesIndex, read_dates_file
from flairkit.io.windows import RasterSource, WindowReader
from flairkit.modalities import DEFAULT_CRS, PATCH_SIZE_M, Modality
from flairkit.synth_zone import (
    ZoneSummary,
    make_large_aerial_raster,
    make_large_sentinel2,
    make_synthetic_zone,
)


def test_mosaics_hold_the_patch_pixels(synthetic_zone: ZoneSummary) -> None:
    """Every modality: the mosaic window of each patch equals the patch file, bit for bit."""
    assert set(synthetic_zone.sources) == set(Modality)
    for modality, source in synthetic_zone.sources.items():
        px = synthetic_zone.px_by_modality[modality]
        with rasterio.open(source.path) as mosaic:
            for ref in synthetic_zone.patch_refs():
                row, col = ref.row_col
                window = ((row - 1) * px, row * px), ((col - 1) * px, col * px)
                with rasterio.open(ref.path(modality)) as patch:
                    assert mosaic.dtypes == patch.dtypes
                    np.testing.assert_array_equal(
                        mosaic.read(window=window), patch.read(), err_msg=f"{modality} {ref}"
                    )


def test_zone_geometry_and_format(synthetic_zone: ZoneSummary) -> None:
    rows, cols = synthetic_zone.grid
    assert (rows, cols) == (2, 3) and len(synthetic_zone.patch_ids) == 6
    left, bottom, right, top = synthetic_zone.bounds
    assert right - left == pytest.approx(cols * PATCH_SIZE_M)
    assert top - bottom == pytest.approx(rows * PATCH_SIZE_M)
    assert synthetic_zone.crs == DEFAULT_CRS
    # Patch ids are row-major and their footprints tile the zone.
    first, last = synthetic_zone.patch_ids[0], synthetic_zone.patch_ids[-1]
    assert first.endswith("_1-1") and last.endswith(f"_{rows}-{cols}")
    assert synthetic_zone.patch_bounds[first][::3] == pytest.approx((left, top))
    assert synthetic_zone.patch_bounds[last][1:3] == pytest.approx((bottom, right))
    for modality, source in synthetic_zone.sources.items():
        px = synthetic_zone.px_by_modality[modality]
        with rasterio.open(source.path) as src:
            assert (src.height, src.width) == (rows * px, cols * px)
            assert src.crs.to_epsg() == 2154
            assert is_tiled(src) and src.compression.name.lower() == "lzw"
            assert tuple(src.bounds) == pytest.approx(synthetic_zone.bounds)
    # Dates files hold the dataset's dates (shared by every patch of the ROI).
    dates = DatesIndex(synthetic_zone.dataset_root)
    for modality, source in synthetic_zone.sources.items():
        assert (source.dates_path is not None) == modality.spec.is_time_series
        if source.dates_path is not None:
            np.testing.assert_array_equal(
                read_dates_file(source.dates_path), dates.dates(modality, first)
            )


def is_tiled(src: rasterio.io.DatasetReader) -> bool:
    """Square blocks of a multiple of 16 px (strips are one row high or full width)."""
    block_h, block_w = src.block_shapes[0]
    return block_h == block_w and block_h % 16 == 0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zone_is_deterministic_per_seed(tmp_path: Path) -> None:
    kwargs = dict(aerial_px=32, patches=(1, 2), min_dates=2, max_dates=3,
                  modalities=(Modality.AERIAL_RGBI, Modality.SENTINEL2_TS))  # fmt: skip
    a = make_synthetic_zone(tmp_path / "a", seed=3, **kwargs)
    b = make_synthetic_zone(tmp_path / "b", seed=3, **kwargs)
    c = make_synthetic_zone(tmp_path / "c", seed=4, **kwargs)
    assert set(a.sources) == {Modality.AERIAL_RGBI, Modality.SENTINEL2_TS}
    for m in a.sources:
        assert _digest(a.sources[m].path) == _digest(b.sources[m].path)
    assert a.patch_ids == b.patch_ids and a.bounds == b.bounds
    assert _digest(a.sources[Modality.AERIAL_RGBI].path) != _digest(
        c.sources[Modality.AERIAL_RGBI].path
    )


def test_large_aerial_raster_is_written_block_by_block(tmp_path: Path) -> None:
    """2048^2 RGBI (16 MiB) written in 256 px blocks: numpy never holds a quarter of it."""
    size_px, block_px = 2048, 256
    tracemalloc.start()
    try:
        georef = make_large_aerial_raster(tmp_path / "a.tif", size_px, seed=1, block_px=block_px)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_bytes = 4 * size_px * size_px
    assert peak_bytes < full_bytes / 4
    assert (georef.width, georef.height, georef.crs) == (size_px, size_px, DEFAULT_CRS)
    with rasterio.open(tmp_path / "a.tif") as src:
        assert (src.count, src.width, src.height, src.dtypes[0]) == (4, 2048, 2048, "uint8")
        assert src.crs.to_epsg() == 2154 and is_tiled(src)
        assert tuple(src.bounds) == pytest.approx(georef.bounds)
        corner = src.read(window=((1792, 2048), (1792, 2048)))
    assert corner.std() > 5  # the last block was written, with texture
    make_large_aerial_raster(tmp_path / "b.tif", size_px, seed=1, block_px=block_px)
    assert _digest(tmp_path / "a.tif") == _digest(tmp_path / "b.tif")


def test_large_sentinel2_matches_the_aerial_extent(tmp_path: Path) -> None:
    georef = make_large_aerial_raster(tmp_path / "aerial.tif", 1024, block_px=512)
    sources = make_large_sentinel2(tmp_path / "s2", georef.bounds, num_dates=8, block_px=16)
    s2, mask = sources[Modality.SENTINEL2_TS], sources[Modality.SENTINEL2_MSK]
    with rasterio.open(s2.path) as src:
        assert (src.count, src.width, src.height) == (80, 20, 20)  # 204.8 m / 10.24 m
        assert tuple(src.bounds) == pytest.approx(georef.bounds)
    assert len(read_dates_file(s2.dates_path)) == 8
    reader = WindowReader({Modality.AERIAL_RGBI: RasterSource(tmp_path / "aerial.tif"), **sources})
    left, _, _, top = georef.bounds
    raw = reader.read((left, top - 102.4, left + 102.4, top), DEFAULT_CRS)
    assert raw.arrays[Modality.AERIAL_RGBI].shape == (4, 512, 512)
    assert raw.arrays[Modality.SENTINEL2_TS].shape == (8, 10, 10, 10)
    cloud = raw.arrays[Modality.SENTINEL2_MSK][:, 1]  # every fourth date is cloudy
    assert [bool((cloud[t] > 50).all()) for t in range(8)] == [t % 4 == 3 for t in range(8)]
    assert mask.dates_path == s2.dates_path
