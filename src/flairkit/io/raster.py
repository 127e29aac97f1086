"""Read one FLAIR-HUB GeoTIFF into a numpy array, checked against its modality's spec.

Two back-ends:
- rasterio/GDAL for the mono-temporal rasters (fast C decoders for every compression);
- tifffile for the time-series stacks. GDAL creates one band object per band on open and reads
  the stack band by band through its block cache, which for a 10 x 10 px file with ~1,000
  bands costs ~70 ms; tifffile decodes the same strips in one pass in ~3 ms (bench/loading.py).
  Any file tifffile cannot decode exactly (unknown compression, point-registered georeference,
  unusual geokeys) falls back to rasterio, so the fast path never changes a result.
"""

from __future__ import annotations

import codecs
import functools
import logging
import os
from pathlib import Path

import numpy as np
import rasterio
import tifffile
from rasterio.errors import RasterioIOError

from flairkit.modalities import Modality
from flairkit.sample import Georef

log = logging.getLogger(__name__)

# GeoTIFF tag and geokey numbers (GeoTIFF 1.1 specification).
_TAG_PIXEL_SCALE = 33550
_TAG_TIEPOINT = 33922
_TAG_TRANSFORMATION = 34264
_TAG_GEOKEYS = 34735
_KEY_MODEL_TYPE = 1024  # 1 = projected, 2 = geographic
_KEY_RASTER_TYPE = 1025  # 1 = PixelIsArea, 2 = PixelIsPoint
_KEY_GEOGRAPHIC_TYPE = 2048
_KEY_PROJECTED_TYPE = 3072
_USER_DEFINED = 32767


class DataError(ValueError):
    """A dataset file or table is missing or wrong; the message names it and the problem."""


def count_nonfinite(data: np.ndarray) -> int:
    """How many values of an array are NaN or infinite (0 for integer arrays, at no cost).

    One vectorised ``isfinite`` pass on float arrays (about 0.1 ms for a 512 x 512 x 2
    float32 DEM); the exact count is taken only when something is found.
    """
    if data.dtype.kind not in "fc":
        return 0
    finite = np.isfinite(data)
    if finite.all():
        return 0
    return int(finite.size - np.count_nonzero(finite))


def read_text_file(path: str | Path, what: str) -> str:
    """The text of a small UTF-8 file (a leading BOM is dropped), or a DataError naming it.

    Args:
        path: the file.
        what: what it is, for messages (``"CSV list"``, ``"split file"``).

    Raises:
        DataError: the file is missing, unreadable, not UTF-8 (the message gives the first
            bad byte, its offset and line) or binary (a NUL byte).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} is missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # Excel writes one
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[offset]:02x} at offset "
            f"{offset}, line {line}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        offset = data.index(b"\x00")
        raise DataError(f"{path}: {what} holds binary data (a NUL byte at offset {offset})")
    return text


def _crs_string(crs: rasterio.crs.CRS | None) -> str | None:
    if crs is None:
        return None
    return _crs_string_from_wkt(crs.to_wkt())


@functools.lru_cache(maxsize=64)
def _crs_string_from_wkt(wkt: str) -> str:
    # EPSG identification queries the PROJ database (~70 us); a dataset has a handful of CRSs.
    epsg = rasterio.crs.CRS.from_wkt(wkt).to_epsg(confidence_threshold=70)
    return f"EPSG:{epsg}" if epsg else wkt


def _read_with_rasterio(path: Path) -> tuple[np.ndarray, Georef]:
    with rasterio.open(path) as src:
        georef = Georef(_crs_string(src.crs), tuple(src.transform)[:6], src.width, src.height)
        return src.read(), georef


def _tifffile_georef(page: tifffile.TiffPage, width: int, height: int) -> Georef | None:
    """Georeference from GeoTIFF tags, or None when only GDAL can interpret them."""
    tags = page.tags
    keys = tags.get(_TAG_GEOKEYS)
    if keys is None:
        return None
    geokeys = _parse_geokeys(keys.value)
    if geokeys.get(_KEY_RASTER_TYPE, 1) != 1:
        return None  # PixelIsPoint: GDAL applies a half-pixel shift; let it.
    model_type = geokeys.get(_KEY_MODEL_TYPE)
    if model_type == 1:
        code = geokeys.get(_KEY_PROJECTED_TYPE)
    elif model_type == 2:
        code = geokeys.get(_KEY_GEOGRAPHIC_TYPE)
    else:
        return None
    if not code or code == _USER_DEFINED:
        return None
    if (matrix := tags.get(_TAG_TRANSFORMATION)) is not None:
        m = matrix.value
        if m[1] != 0 or m[4] != 0:
            return None
        transform = (m[0], 0.0, m[3], 0.0, m[5], m[7])
    else:
        scale, tie = tags.get(_TAG_PIXEL_SCALE), tags.get(_TAG_TIEPOINT)
        if scale is None or tie is None or len(tie.value) != 6:
            return None
        sx, sy = scale.value[0], scale.value[1]
        i, j, _, x, y, _ = tie.value
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    a, b, c, d, e, f = (float(v) for v in transform)
    return Georef(f"EPSG:{int(code)}", (a, b, c, d, e, f), width, height)


def _parse_geokeys(values: tuple[int, ...]) -> dict[int, int]:
    """Short-valued geokeys of a GeoKeyDirectory (keys stored in other tags are skipped)."""
    out: dict[int, int] = {}
    num_keys = values[3]
    for k in range(num_keys):
        key, location, _, value = values[4 + 4 * k : 8 + 4 * k]
        if location == 0:
            out[key] = value
    return out


def _read_with_tifffile(path: Path) -> tuple[np.ndarray, Georef] | None:
    """Decode a whole single-image TIFF as (bands, H, W), or None if rasterio must do it."""
    size = os.path.getsize(path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if len(tif.series) != 1 or page.is_tiled and page.imagedepth > 1:
            return None
        # tifffile pads short strips with zeros; GDAL fails on them. A strip past the end of
        # the file is a truncated file, not zeros.
        if (
            page.dataoffsets
            and max(o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
            > size
        ):
            raise DataError(f"{path}: truncated file ({size} bytes, strips run past the end)")
        height, width = page.imagelength, page.imagewidth
        georef = _tifffile_georef(page, width, height)
        if georef is None:
            return None
        data = page.asarray()
    if data.ndim == 2:
        data = data[None]
    elif page.planarconfig == 1:  # contiguous (pixel-interleaved): (H, W, S) -> (S, H, W)
        data = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    return data, georef


def read_patch_px(path: str | Path, modality: Modality) -> tuple[int, int]:
    """Width and height in pixels of a modality's GeoTIFF, from its header (no pixel is read).

    What ``flairkit fit`` sizes a model with when the config leaves a size open, and what
    checks a patch against the model before any batch is read.

    Args:
        path: the GeoTIFF.
        modality: what the file holds (named in messages).

    Returns:
        ``(width, height)``.

    Raises:
        DataError: the file is missing or not a readable GeoTIFF.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {modality.value} file is missing")
    try:
        with rasterio.open(path) as src:
            return int(src.width), int(src.height)
    except RasterioIOError as exc:
        raise DataError(f"{path}: unreadable GeoTIFF ({exc})") from exc


def read_geotiff(path: str | Path, modality: Modality) -> tuple[np.ndarray, Georef]:
    """Read every band of a modality's GeoTIFF and check it against the modality's spec.

    Args:
        path: the GeoTIFF.
        modality: what the file should hold (band count, dtype).

    Returns:
        ``(array, georef)``: mono-temporal files give ``(C, H, W)``; time series
        ``(T, C, H, W)`` with T = band count / C (date-major layout, spec section 2.2).
        The dtype is the file's.

    Raises:
        DataError: missing, unreadable or truncated file, wrong band count or dtype.
    """
    path = Path(path)
    spec = modality.spec
    if not path.is_file():
        raise DataError(f"{path}: {modality.value} file is missing")
    result: tuple[np.ndarray, Georef] | None = None
    try:
        if spec.is_time_series:
            try:
                result = _read_with_tifffile(path)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - any tifffile failure: let GDAL decide
                log.debug("tifffile could not read %s (%s); using rasterio", path, exc)
        if result is None:
            result = _read_with_rasterio(path)
    except RasterioIOError as exc:
        raise DataError(f"{path}: unreadable or truncated GeoTIFF ({exc})") from exc
    data, georef = result
    _check_array(path, modality, data)
    if spec.is_time_series:
        data = data.reshape(data.shape[0] // spec.num_bands, spec.num_bands, *data.shape[1:])
    return data, georef


def _check_array(path: Path, modality: Modality, data: np.ndarray) -> None:
    spec = modality.spec
    count = data.shape[0]
    if spec.is_time_series:
        if count == 0 or count % spec.num_bands:
            raise DataError(
                f"{path}: {count} bands is not a multiple of {spec.num_bands} "
                f"({modality.value} stores {', '.join(spec.bands)} per date)"
            )
    elif count != spec.num_bands:
        raise DataError(
            f"{path}: {count} bands, expected {spec.num_bands} for {modality.value} "
            f"({', '.join(spec.bands)})"
        )
    if not spec.accepts_dtype(data.dtype):
        expected = " or ".join(spec.dtypes) if spec.dtypes else "a numeric type"
        raise DataError(f"{path}: dtype {data.dtype}, expected {expected} for {modality.value}")
