"""Areas of interest of maps: read them, skip the model windows that miss them, blank the
pixels outside them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flairkit.config import ConfigError, ZoneConfig
from flairkit.io.writers import NODATA_CLASS, StreamingMapWriter
from flairkit.sample import Georef

Bounds = tuple[float, float, float, float]


def read_aoi(config: ZoneConfig, crs: str) -> Any:
    """The AOI's polygons as one shapely geometry in ``crs`` (None without an AOI).

    Raises:
        ConfigError: a missing or unreadable file, a bad ``where``, nothing selected, or no
            polygon (the message names the ``aoi.*`` key).
    """
    aoi = config.aoi
    if aoi is None:
        return None
    import geopandas as gpd

    if not Path(aoi.path).is_file():
        raise ConfigError(f"aoi.path: {aoi.path}: vector file not found")
    try:
        frame = gpd.read_file(aoi.path, where=aoi.where, layer=aoi.layer, engine="pyogrio")
    except Exception as exc:  # pyogrio/GDAL errors: a bad filter, layer or file
        key = "aoi.where" if aoi.where and "where" in str(exc).lower() else "aoi.path"
        raise ConfigError(f"{key}: {aoi.path}: cannot read the AOI ({exc})") from exc
    if frame.empty:
        where = f" where {aoi.where}" if aoi.where else ""
        raise ConfigError(f"aoi.where: {aoi.path}: no feature{where}")
    if frame.crs is None:
        raise ConfigError(f"aoi.path: {aoi.path}: the layer has no CRS")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    polygons = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polygons.empty:
        raise ConfigError(f"aoi.path: {aoi.path}: no polygon among the features selected")
    return polygons.to_crs(crs).geometry.union_all()


def window_skipper(aoi: Any, bounds: Bounds | None = None) -> Callable[[Bounds], bool] | None:
    """``map_piece``'s ``skip``: True for a model window that misses the AOI (None when the AOI
    covers ``bounds``, the area mapped, or there is no AOI)."""
    if aoi is None:
        return None
    from shapely.geometry import box
    from shapely.prepared import prep

    if bounds is not None and aoi.contains(box(*bounds)):
        return None
    inside = prep(aoi)

    def skip(window: Bounds) -> bool:
        return not inside.intersects(box(*window))

    return skip


def masked_writer(writer: StreamingMapWriter, aoi: Any, georef: Georef) -> StreamingMapWriter:
    """``writer``, or a proxy of it that writes pixels outside the AOI as nodata (when the AOI
    does not cover its grid)."""
    from shapely.geometry import box

    if aoi is None or aoi.contains(box(*georef.bounds)):
        return writer
    return AoiWriter(writer, aoi, georef)  # type: ignore[return-value]  # a proxy of it


class AoiWriter:
    """A StreamingMapWriter whose rows outside the AOI become nodata as they are written."""

    def __init__(self, writer: StreamingMapWriter, aoi: Any, georef: Georef) -> None:
        self._writer = writer
        self._aoi = aoi
        self._georef = georef

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def write_rows(self, row: int, classes: np.ndarray, proba: np.ndarray | None = None) -> None:
        from rasterio.features import geometry_mask
        from rasterio.transform import Affine

        a, b, c, d, e, f = self._georef.transform
        transform = Affine(a, b, c, d, e, f + e * row)
        outside = geometry_mask([self._aoi], classes.shape, transform)  # True outside
        if outside.any():
            classes = np.where(outside, np.uint8(NODATA_CLASS), classes)
            if proba is not None:
                proba = np.where(outside[None], np.uint8(0), proba)
        self._writer.write_rows(row, classes, proba)
