"""Writing the synthetic dataset: each patch's ten GeoTIFFs, the metadata GeoPackages, the CSVs.

Single-date rasters are written like the real 512 px files (strips, LZW), time series with
GDAL defaults; every raster is a north-up EPSG:2154 GeoTIFF covering its patch footprint.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path, PurePosixPath

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from shapely.geometry import box

from flairkit.modalities import (
    DEFAULT_CRS,
    METADATA_DIR,
    MODALITY_SPECS,
    PATCH_SIZE_M,
    SINGLE_DATE_GPKGS,
    SPLIT_GPKG,
    Modality,
)
from flairkit.synth.layout import (
    _DATE_FMT,
    CSV_DIR,
    CSV_NAMES,
    SPLIT_COLUMNS,
    _DomainYear,
    _PatchRef,
    _rng,
    _RoiPlan,
)
from flairkit.synth.render import (
    _S1_DESC_OFFSET_DB,
    _class_fractions,
    _render_aerial,
    _render_dem,
    _render_lpis,
    _render_pan,
    _render_s1,
    _render_s2,
    _render_spot,
)
from flairkit.synth.scene import _make_scene

#: Modalities written as 512-style single-date rasters: strips, LZW. Time series use GDAL defaults.
_COMPRESSED = frozenset(
    {
        Modality.AERIAL_RGBI,
        Modality.AERIAL_PAN,
        Modality.DEM_ELEV,
        Modality.SPOT_RGBI,
        Modality.COSIA,
        Modality.LPIS,
    }
)
_CRS = CRS.from_string(DEFAULT_CRS)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_patch(
    root: Path, ref: _PatchRef, plan: _RoiPlan, seed: int, px_by_modality: Mapping[Modality, int]
) -> int:
    """Render and write the 10 files of one patch; return the number of files written."""
    keys = (seed, ref.domain_year.name, ref.roi, ref.row, ref.col)
    aerial_px = px_by_modality[Modality.AERIAL_RGBI]
    sentinel_px = px_by_modality[Modality.SENTINEL2_TS]
    scene = _make_scene(_rng(*keys, "scene"), aerial_px, sentinel_px)
    aerial = _render_aerial(_rng(*keys, "aerial"), scene.cosia)
    classes, fractions = _class_fractions(scene.spectral_class, sentinel_px)
    s2, s2_mask = _render_s2(_rng(*keys, "s2"), classes, fractions, plan)
    arrays = {
        Modality.AERIAL_RGBI: aerial,
        Modality.AERIAL_PAN: _render_pan(
            _rng(*keys, "pan"), aerial, px_by_modality[Modality.AERIAL_PAN]
        ),
        Modality.DEM_ELEV: _render_dem(_rng(*keys, "dem"), scene.cosia, ref, plan.terrain),
        Modality.SPOT_RGBI: _render_spot(
            _rng(*keys, "spot"), aerial, px_by_modality[Modality.SPOT_RGBI]
        ),
        Modality.SENTINEL2_TS: s2,
        Modality.SENTINEL2_MSK: s2_mask,
        Modality.SENTINEL1_ASC_TS: _render_s1(
            _rng(*keys, "s1-asc"), classes, fractions,
            plan.ts_dates[Modality.SENTINEL1_ASC_TS], plan, 0.0,
        ),
        Modality.SENTINEL1_DESC_TS: _render_s1(
            _rng(*keys, "s1-desc"), classes, fractions,
            plan.ts_dates[Modality.SENTINEL1_DESC_TS], plan, _S1_DESC_OFFSET_DB,
        ),
        Modality.COSIA: scene.cosia[None],
        Modality.LPIS: _render_lpis(scene.lpis_l1),
    }  # fmt: skip
    for modality, array in arrays.items():
        path = root / ref.relative_path(modality)
        _write_raster(path, array, ref.bounds_m, compress=modality in _COMPRESSED)
    return len(arrays)


def _write_raster(
    path: Path,
    array: np.ndarray,
    bounds_m: tuple[float, float, float, float],
    *,
    compress: bool,
) -> None:
    """Write a (C, H, W) array as a north-up GeoTIFF covering ``bounds_m`` in EPSG:2154."""
    count, height, width = array.shape
    west, _, _, north = bounds_m
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": array.dtype.name,
        "crs": _CRS,
        "transform": Affine(PATCH_SIZE_M / width, 0.0, west, 0.0, -PATCH_SIZE_M / height, north),
    }
    if compress:
        profile.update(tiled=False, compress="lzw")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _write_gpkg(path: Path, columns: Mapping[str, list[str]], refs: Sequence[_PatchRef]) -> None:
    """One row per patch: the given string columns plus the footprint polygon, layer = stem."""
    frame = gpd.GeoDataFrame(
        dict(columns), geometry=[box(*r.bounds_m) for r in refs], crs=DEFAULT_CRS
    )
    path.unlink(missing_ok=True)
    frame.to_file(path, layer=path.stem, driver="GPKG", engine="pyogrio")


def _write_metadata(
    root: Path,
    refs: Sequence[_PatchRef],
    plans: Mapping[tuple[_DomainYear, str], _RoiPlan],
    splits: Mapping[str, Mapping[str, str]],
) -> int:
    """Write the GeoPackages of ``GLOBAL_ALL_MTD/``; return the number of files written."""
    meta_dir = root / METADATA_DIR
    meta_dir.mkdir(parents=True, exist_ok=True)
    ids = [r.patch_id for r in refs]
    ref_plans = [plans[r.domain_year, r.roi] for r in refs]
    num_files = 0
    for modality in (Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS, Modality.SENTINEL1_DESC_TS):
        dates_json = [_dates_json(p.ts_dates[modality]) for p in ref_plans]
        gpkg = MODALITY_SPECS[modality].dates_gpkg
        assert gpkg is not None  # every time-series modality has one (modalities.py)
        _write_gpkg(meta_dir / gpkg, {"patch_id": ids, "acquisition_dates": dates_json}, refs)
        num_files += 1
    for modality, gpkg in SINGLE_DATE_GPKGS.items():
        dates = [p.single_dates[modality] for p in ref_plans]
        _write_gpkg(meta_dir / gpkg, {"patch_id": ids, "date": dates}, refs)
        num_files += 1
    split_columns = {"patch_id": ids} | {c: [splits[pid][c] for pid in ids] for c in SPLIT_COLUMNS}
    _write_gpkg(meta_dir / SPLIT_GPKG, split_columns, refs)
    return num_files + 1


def _dates_json(dates: Sequence[date]) -> str:
    """``{"1": "YYYYMMDD", ...}`` in band order (spec section 1.5)."""
    return json.dumps({str(i): d.strftime(_DATE_FMT) for i, d in enumerate(dates, start=1)})


def _write_csvs(
    root: Path,
    refs: Sequence[_PatchRef],
    splits: Mapping[str, Mapping[str, str]],
    delimiter: str,
) -> int:
    """Write the three ``split_1`` CSVs; paths are relative to the CSV folder."""
    csv_dir = root / CSV_DIR
    csv_dir.mkdir(parents=True, exist_ok=True)
    modalities = sorted(Modality, key=lambda m: m.value)  # alphabetical, as spec section 1.4
    header = ["patch_id", *(m.value for m in modalities)]
    for value, name in CSV_NAMES.items():
        with (csv_dir / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            for r in refs:
                if splits[r.patch_id]["split_1"] == value:
                    paths = [str(PurePosixPath("..", r.relative_path(m))) for m in modalities]
                    writer.writerow([r.patch_id, *paths])
    return len(CSV_NAMES)
