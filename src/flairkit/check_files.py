"""The per-file half of ``flairkit check``: read one patch's file headers (``deep``: decode).

The header check reads each file's TIFF directory itself (``read_tiff_header``, ~0.1 ms a
file) and opens it with rasterio/GDAL only when the layout is one it leaves to GDAL or the
directory is damaged; ``deep`` decodes every file (rasterio, or tifffile for the time series).
This runs in the check's worker processes or threads, so it imports only numpy, rasterio,
tifffile and the modality tables (no catalog, pandas or torch: a spawned worker starts fast).
Problems come back as ``(kind, detail)`` pairs whose kinds are documented in
``flairkit.check``; what needs the whole dataset (usual sizes, CRS) is decided there.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import rasterio
import tifffile

from flairkit.modalities import COSIA_CLASSES, LPIS_NUM_CLASSES, PATCH_SIZE_M, Modality

MODALITIES = tuple(Modality)

# A job: (patch index, patch id, ((modality index, path, number of dates or -1), ...)).
Job = tuple[int, str, tuple[tuple[int, str, int], ...]]
# What a worker sends back per patch: (patch index, headers, problems) with headers
# (modality index, width, height, CRS label or None) and problems (kind, path, modality
# index, detail).
HeaderRow = tuple[int, int, int, str | None]
RawProblem = tuple[str, str, int, str]
Outcome = tuple[int, list[HeaderRow], list[RawProblem]]

# Never write next to the inputs (PAM .aux.xml), and never list their folders on open: a ROI
# folder of the real dataset holds hundreds of files and GDAL would read it for every one.
_GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_PAM_ENABLED": "NO"}
# Below this, coordinates are equal (metres; float error of a 102.4 m footprint at 7e6 m).
_EPS_M = 1e-6


@dataclass(frozen=True)
class Header:
    """What the header check reads from one file."""

    count: int
    dtype: str
    width: int
    height: int
    crs: str | None
    transform: tuple[float, ...]
    data_end: int  # byte just past the furthest data block looked at

    @property
    def pixel_m(self) -> float:
        """The coarser of the pixel's two sides, in CRS units."""
        return max(abs(self.transform[0]), abs(self.transform[4]))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top)."""
        a, _, c, _, e, f = self.transform[:6]
        xs, ys = (c, c + a * self.width), (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)


def inspect_chunk(jobs: Sequence[Job], deep: bool) -> list[Outcome]:
    """Inspect the files of a few patches (the unit of work handed to a worker)."""
    out = []
    with rasterio.Env(**_GDAL_ENV):
        for index, _, files in jobs:
            rows: list[HeaderRow] = []
            problems: list[RawProblem] = []
            headers: dict[int, Header] = {}
            for mod_index, path, num_dates in files:
                try:
                    header, found = inspect_file(path, MODALITIES[mod_index], num_dates, deep)
                except Exception as exc:  # noqa: BLE001 - one odd file never stops the scan
                    reason = (
                        f"could not be checked ({type(exc).__name__}: {error_reason(exc, path)})"
                    )
                    header, found = None, [("unreadable", reason)]
                problems.extend((kind, path, mod_index, detail) for kind, detail in found)
                if header is not None:
                    rows.append((mod_index, header.width, header.height, header.crs))
                    headers[mod_index] = header
            paths = {mod_index: path for mod_index, path, _ in files}
            problems.extend(footprint_problems(headers, paths))
            out.append((index, rows, problems))
    return out


def inspect_file(
    path: str, modality: Modality, num_dates: int, deep: bool
) -> tuple[Header | None, list[tuple[str, str]]]:
    """The header of one file (None when it has none) and what is wrong with it.

    Args:
        path: the file.
        modality: what it should hold.
        num_dates: dates in the patch's dates row (time series), or -1 when unknown.
        deep: decode every pixel and check the values too.
    """
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, [("missing", "file does not exist")]
    except OSError as exc:
        return None, [("unreadable", f"cannot stat the file ({exc.strerror})")]
    if not stat.S_ISREG(info.st_mode):
        return None, [("not_tiff", "not a regular file")]
    size = info.st_size
    if size == 0:
        return None, [("empty", "0 bytes")]
    try:
        header = read_tiff_header(path)
    except _NotTiff:
        return None, [("not_tiff", f"not a TIFF file (starts with {_magic(path)!r})")]
    except (_LeftToGdal, OSError, ValueError, struct.error):
        header = None  # a layout the direct reader does not know, or a damaged directory
    if header is None:
        try:
            header, driver = _read_header_with_gdal(path)
        except Exception as exc:  # noqa: BLE001 - GDAL's errors come as several types
            return None, [("unreadable", f"GDAL cannot open it: {error_reason(exc, path)}")]
        if driver != "GTiff":
            return None, [("not_tiff", f"a {driver} file, not a GeoTIFF")]
    problems = header_problems(header, modality, num_dates)
    if header.data_end > size:
        detail = f"data blocks end at byte {header.data_end} but the file has {size} bytes"
        problems.append(("truncated", detail))
    elif deep:
        problems.extend(_deep_problems(path, modality, header, size))
    return header, problems


class _NotTiff(Exception):
    """The file does not start with a TIFF signature."""


class _LeftToGdal(Exception):
    """A layout the direct reader does not interpret: rasterio/GDAL reads that file."""


# TIFF 6.0 / BigTIFF / GeoTIFF 1.1 tags the header check needs.
_WIDTH, _HEIGHT, _BITS, _SAMPLES, _FORMAT = 256, 257, 258, 277, 339
_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS = 273, 279, 324, 325
_PIXEL_SCALE, _TIEPOINT, _MATRIX, _GEOKEYS = 33550, 33922, 34264, 34735
_NEEDED_TAGS = frozenset(
    (_WIDTH, _HEIGHT, _BITS, _SAMPLES, _FORMAT, _STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS,
     _TILE_COUNTS, _PIXEL_SCALE, _TIEPOINT, _MATRIX, _GEOKEYS)
)  # fmt: skip
# TIFF field type -> numpy type code (rationals never hold these tags: left to GDAL).
_FIELD_TYPES = {1: "u1", 3: "u2", 4: "u4", 6: "i1", 8: "i2", 9: "i4", 11: "f4", 12: "f8",
                16: "u8", 17: "i8", 18: "u8"}  # fmt: skip
# (SampleFormat, BitsPerSample) -> dtype name; SampleFormat 1 unsigned, 2 signed, 3 float.
_DTYPES = {(1, 8): "uint8", (1, 16): "uint16", (1, 32): "uint32", (1, 64): "uint64",
           (2, 8): "int8", (2, 16): "int16", (2, 32): "int32", (2, 64): "int64",
           (3, 32): "float32", (3, 64): "float64"}  # fmt: skip
# GeoKeys: model type (1 projected, 2 geographic), raster type (1 PixelIsArea), CRS codes.
_KEY_MODEL, _KEY_RASTER, _KEY_GEOGRAPHIC, _KEY_PROJECTED, _USER_DEFINED = (
    1024,
    1025,
    2048,
    3072,
    32767,
)
# GDAL writes the directory and its arrays at the start of the file: one read gets them.
_HEAD_BYTES = 64 * 1024
#: TIFF byte-order marks -> struct/numpy byte order.
_BYTE_ORDER: dict[bytes, Literal["<", ">"]] = {b"II": "<", b"MM": ">"}


def read_tiff_header(path: str) -> Header:
    """The header check's fields, read from the TIFF directory directly.

    GDAL spends ~1.4 ms opening a GeoTIFF, most of it looking EPSG:2154 up in the PROJ
    database; this reads the same fields in ~0.1 ms (one read of the file's first 64 kB),
    which takes the header check of 2.4 M files from hours to minutes (bench/check.py).
    Anything unusual (PixelIsPoint, user-defined or no CRS, rotation, mixed band types)
    raises ``_LeftToGdal``; ``tests/test_check.py`` compares the two readers file by file.

    Raises:
        _NotTiff: no TIFF signature.
        _LeftToGdal: a layout left to GDAL.
        OSError, ValueError, struct.error: a damaged directory (GDAL then decides).
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
        order = _BYTE_ORDER.get(head[:2])
        if order is None:
            raise _NotTiff()
        version = struct.unpack_from(order + "H", head, 2)[0]
        if version == 42:
            (ifd,) = struct.unpack_from(order + "I", head, 4)
            count_fmt, entry_fmt, entry_size, offset_fmt = "H", "HHI4s", 12, "I"
        elif version == 43:
            (ifd,) = struct.unpack_from(order + "Q", head, 8)
            count_fmt, entry_fmt, entry_size, offset_fmt = "Q", "HHQ8s", 20, "Q"
        else:
            raise _NotTiff()
        assert order is not None

        def read(offset: int, length: int) -> bytes:
            if offset + length <= len(head):
                return head[offset : offset + length]
            handle.seek(offset)
            data = handle.read(length)
            if len(data) != length:
                raise _LeftToGdal("directory runs past the end of the file")
            return data

        count_size = struct.calcsize(count_fmt)
        (num_entries,) = struct.unpack(order + count_fmt, read(ifd, count_size))
        entries = read(ifd + count_size, num_entries * entry_size)
        tags: dict[int, np.ndarray] = {}
        for k in range(num_entries):
            tag, field_type, count, inline = struct.unpack_from(
                order + entry_fmt, entries, k * entry_size
            )
            if tag not in _NEEDED_TAGS:
                continue
            if field_type not in _FIELD_TYPES:
                raise _LeftToGdal(f"tag {tag} has field type {field_type}")
            dtype = np.dtype(_FIELD_TYPES[field_type]).newbyteorder(order)
            length = count * dtype.itemsize
            if length <= len(inline):
                data = inline[:length]
            else:
                data = read(struct.unpack(order + offset_fmt, inline)[0], length)
            tags[tag] = np.frombuffer(data, dtype, count)
    return _header_from_tags(tags)


def _header_from_tags(tags: dict[int, np.ndarray]) -> Header:
    def first(tag: int, default: int) -> int:
        values = tags.get(tag)
        if values is not None and len(set(values.tolist())) > 1:
            raise _LeftToGdal(f"tag {tag} differs between bands")
        return int(values[0]) if values is not None and len(values) else default

    if _WIDTH not in tags or _HEIGHT not in tags:
        raise _LeftToGdal("no image size")
    dtype = _DTYPES.get((first(_FORMAT, 1), first(_BITS, 1)))
    if dtype is None:
        raise _LeftToGdal("sample type")
    offsets = tags.get(_STRIP_OFFSETS, tags.get(_TILE_OFFSETS))
    lengths = tags.get(_STRIP_COUNTS, tags.get(_TILE_COUNTS))
    if offsets is None or lengths is None or len(offsets) != len(lengths):
        raise _LeftToGdal("no data block table")
    ends = offsets.astype(np.uint64) + lengths.astype(np.uint64)
    used = lengths > 0  # sparse blocks have no bytes
    crs, transform = _georef_from_tags(tags)
    return Header(
        count=first(_SAMPLES, 1),
        dtype=dtype,
        width=int(tags[_WIDTH][0]),
        height=int(tags[_HEIGHT][0]),
        crs=crs,
        transform=transform,
        data_end=int(ends[used].max()) if used.any() else 0,
    )


def _georef_from_tags(tags: dict[int, np.ndarray]) -> tuple[str, tuple[float, ...]]:
    """``("EPSG:<code>", affine coefficients)`` from the GeoTIFF tags, as GDAL reads them."""
    keys = tags.get(_GEOKEYS)
    if keys is None or len(keys) < 4:
        raise _LeftToGdal("no GeoKey directory")
    table = keys[4 : 4 + 4 * int(keys[3])].astype(int).reshape(-1, 4)
    geokeys = {int(key): int(value) for key, location, _, value in table if location == 0}
    if geokeys.get(_KEY_RASTER, 1) != 1:
        raise _LeftToGdal("PixelIsPoint: GDAL shifts the grid by half a pixel")
    code = {1: geokeys.get(_KEY_PROJECTED), 2: geokeys.get(_KEY_GEOGRAPHIC)}.get(
        geokeys.get(_KEY_MODEL, 0)
    )
    if not code or code == _USER_DEFINED:
        raise _LeftToGdal("CRS not given by an EPSG code")
    if _MATRIX in tags:
        m = tags[_MATRIX]
        if len(m) != 16 or m[1] or m[4]:
            raise _LeftToGdal("rotated or sheared georeference")
        transform = (float(m[0]), 0.0, float(m[3]), 0.0, float(m[5]), float(m[7]))
    else:
        scale, tie = tags.get(_PIXEL_SCALE), tags.get(_TIEPOINT)
        if scale is None or tie is None or len(tie) != 6 or len(scale) < 2:
            raise _LeftToGdal("no single tie point and pixel scale")
        sx, sy = float(scale[0]), float(scale[1])
        i, j, _, x, y, _ = (float(v) for v in tie)
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    return f"EPSG:{code}", transform


def _read_header_with_gdal(path: str) -> tuple[Header, str]:
    with rasterio.open(path) as src:
        header = Header(
            src.count,
            src.dtypes[0] if src.count else "none",
            src.width,
            src.height,
            _crs_label(src.crs.to_wkt()) if src.crs else None,
            tuple(src.transform)[:6],
            _data_end(src),
        )
        return header, src.driver


def _data_end(src: Any) -> int:
    """End of the first and last data blocks: a file cut short loses its last block first.

    A cheap look (two tag reads) that finds the common truncation, a download or copy cut
    short; ``deep`` decodes every block.
    """
    if not src.count:
        return 0
    rows, cols = src.block_shapes[0]
    last = (math.ceil(src.width / cols) - 1, math.ceil(src.height / rows) - 1)
    end = 0
    for band, (x, y) in ((1, (0, 0)), (src.count, last)):
        offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
        length = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
        if offset and length:  # absent for sparse blocks
            end = max(end, int(offset) + int(length))
    return end


@functools.lru_cache(maxsize=64)
def _crs_label(wkt: str) -> str:
    # EPSG identification queries the PROJ database (~70 us); a dataset has a handful of CRSs.
    epsg = rasterio.crs.CRS.from_wkt(wkt).to_epsg(confidence_threshold=70)
    return f"EPSG:{epsg}" if epsg else wkt


def _magic(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError:
        return None


def error_reason(exc: BaseException, path: str | os.PathLike) -> str:
    """An error's message on one line, without the file's name (the problem names the file).

    rasterio's "Read failed. See previous exception" is replaced by that previous exception,
    GDAL's message; GDAL's advice to name a driver is dropped.
    """
    while "previous exception" in str(exc):
        previous = exc.__cause__ or exc.__context__
        if previous is None:
            break
        exc = previous
    text = str(exc).split("; It might help to specify the correct driver")[0]
    for name in (f"'{path}'", str(path), os.path.basename(path)):
        text = text.replace(name, "")
    text = " ".join(text.split()).strip(" :.;,")
    return text[:200] or type(exc).__name__


def header_problems(header: Header, modality: Modality, num_dates: int) -> list[tuple[str, str]]:
    """Band count, dates, dtype and footprint of one file against its modality's spec."""
    spec = modality.spec
    problems = []
    per_date = spec.num_bands
    if spec.is_time_series:
        if header.count == 0 or header.count % per_date:
            detail = (
                f"{header.count} bands is not a multiple of {per_date} "
                f"({modality.value} stores {', '.join(spec.bands)} per date)"
            )
            problems.append(("band_count", detail))
        elif num_dates >= 0 and header.count // per_date != num_dates:
            detail = (
                f"{header.count} bands = {header.count // per_date} dates x {per_date}, "
                f"but the dates table lists {num_dates} dates"
            )
            problems.append(("dates_mismatch", detail))
    elif header.count != per_date:
        detail = f"{header.count} bands, expected {per_date} ({', '.join(spec.bands)})"
        problems.append(("band_count", detail))
    if header.count and not spec.accepts_dtype(header.dtype):
        allowed = " or ".join(spec.dtypes) if spec.dtypes else "a numeric type"
        problems.append(("dtype", f"{header.dtype}, expected {allowed}"))
    a, b, _, d, e, _ = header.transform
    if b or d:
        problems.append(("footprint", "rotated or sheared georeference"))
    else:
        width_m, height_m = abs(a) * header.width, abs(e) * header.height
        # Half a pixel: off by a whole pixel is a wrong grid, not rounding.
        if abs(width_m - PATCH_SIZE_M) > abs(a) / 2 or abs(height_m - PATCH_SIZE_M) > abs(e) / 2:
            detail = (
                f"covers {width_m:.2f} m x {height_m:.2f} m, "
                f"expected {PATCH_SIZE_M} m x {PATCH_SIZE_M} m"
            )
            problems.append(("footprint", detail))
    return problems


def footprint_problems(headers: dict[int, Header], paths: dict[int, str]) -> list[RawProblem]:
    """Files of a patch whose bounds differ from the patch's by more than a coarse pixel.

    The patch's bounds are those of the file that agrees with most others at the finer pixel
    of each pair (ties: the finest file), so a single shifted file is the one reported, fine
    or coarse. Tolerance: one pixel of the coarser of the file and that reference. Files in
    another CRS than most of the patch's are left to the CRS check.
    """
    if len(headers) < 2:
        return []
    crs = Counter(h.crs for h in headers.values()).most_common(1)[0][0]
    items = [(i, h) for i, h in headers.items() if h.crs == crs and not h.transform[1]]
    if len(items) < 2:
        return []

    def gap(h1: Header, h2: Header) -> float:
        return max(abs(u - v) for u, v in zip(h1.bounds, h2.bounds, strict=True))

    def score(item: tuple[int, Header]) -> tuple[int, float]:
        h = item[1]
        agree = sum(gap(h, o) <= min(h.pixel_m, o.pixel_m) + _EPS_M for _, o in items)
        return agree, -h.pixel_m

    ref_index, ref = max(items, key=score)
    problems = []
    for i, h in items:
        tolerance = max(h.pixel_m, ref.pixel_m)
        distance = gap(h, ref)
        if distance > tolerance + _EPS_M:
            detail = (
                f"bounds {_fmt_bounds(h.bounds)} differ by {distance:.2f} m from "
                f"{MODALITIES[ref_index].value} {_fmt_bounds(ref.bounds)} "
                f"(tolerance {tolerance:g} m: one pixel of the coarser file)"
            )
            problems.append(("footprint", paths[i], i, detail))
    return problems


def _fmt_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in bounds) + ")"


# -- deep: decode every pixel and check the values ------------------------------------------


class _Truncated(Exception):
    pass


def _deep_problems(
    path: str, modality: Modality, header: Header, size: int
) -> list[tuple[str, str]]:
    try:
        data = _decode(path, header, modality.spec.is_time_series, size)
    except _Truncated as exc:
        return [("truncated", str(exc))]
    except Exception as exc:  # noqa: BLE001 - GDAL's errors come as several types
        return [("undecodable", f"cannot decode the data: {error_reason(exc, path)}")]
    return value_problems(data, modality)


def _decode(path: str, header: Header, is_time_series: bool, size: int) -> np.ndarray:
    """Every pixel as (bands, H, W)."""
    if is_time_series:
        # tifffile decodes a ~1,000-band stack ~30x faster than GDAL (io/raster.py).
        data = _decode_with_tifffile(path, header, size)
        if data is not None:
            return data
    with rasterio.open(path) as src:
        return src.read()


def _decode_with_tifffile(path: str, header: Header, size: int) -> np.ndarray | None:
    """(bands, H, W), or None when GDAL should decide (a layout tifffile reads differently)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            layout = (page.samplesperpixel, page.imagelength, page.imagewidth)
            if layout != (header.count, header.height, header.width) or page.imagedepth > 1:
                return None
            # tifffile pads a strip cut short with zeros where GDAL fails: check every strip.
            if page.dataoffsets:
                ends = zip(page.dataoffsets, page.databytecounts, strict=True)
                end = max(offset + length for offset, length in ends)
                if end > size:
                    raise _Truncated(f"data strips end at byte {end} but the file has {size} bytes")
            data = page.asarray()
            interleaved = page.planarconfig == 1
    except _Truncated:
        raise
    except Exception:  # noqa: BLE001 - anything tifffile cannot do, GDAL decides
        return None
    if data.ndim == 2:
        return data[None]
    return np.moveaxis(data, -1, 0) if interleaved else data  # (H, W, S) -> (S, H, W)


def _value_limits(modality: Modality, band: int) -> tuple[int, int, str] | None:
    """(lowest, highest, kind) allowed in a band (0-based), or None when any value goes.

    Label 0 is a class (COSIA building, LPIS grasses) and no label value means nodata
    (spec section 4.3); the S2 mask holds probabilities 0..100 (spec section 2.1).
    """
    if modality is Modality.COSIA:
        return 0, len(COSIA_CLASSES) - 1, "label_range"
    if modality is Modality.LPIS:
        return 0, LPIS_NUM_CLASSES.get(band + 1, 1) - 1, "label_range"
    if modality is Modality.SENTINEL2_MSK:
        return 0, 100, "mask_range"
    return None


def value_problems(data: np.ndarray, modality: Modality) -> list[tuple[str, str]]:
    """Non-finite floats, labels and mask values out of range in a decoded (bands, H, W)."""
    problems = []
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            bands = np.flatnonzero(bad.any(axis=(1, 2)))
            detail = f"{int(bad.sum())} NaN/inf values in {_band_names(modality, bands.tolist())}"
            problems.append(("nonfinite", detail))
    if _value_limits(modality, 0) is None:
        return problems
    by_kind: dict[str, list[str]] = {}
    for band in range(data.shape[0]):
        limits = _value_limits(modality, band)
        assert limits is not None  # a modality has limits on all its bands or on none
        lowest, highest, kind = limits
        values = data[band]
        if values.min() >= lowest and values.max() <= highest:  # NaN compares False: no alarm
            continue
        outside = values[(values < lowest) | (values > highest)]
        shown = ", ".join(f"{v:g}" for v in np.unique(outside)[:5])
        where = f"{_band_names(modality, [band])}: " if data.shape[0] > 1 else ""
        texts = by_kind.setdefault(kind, [])
        texts.append(f"{where}{outside.size} pixels outside {lowest}..{highest} (values {shown})")
        if len(texts) >= 3:  # a long series bad everywhere: three examples say it
            break
    problems.extend((kind, "; ".join(texts)) for kind, texts in by_kind.items())
    return problems


def _band_names(modality: Modality, bands: Sequence[int]) -> str:
    spec = modality.spec
    if modality is Modality.LPIS:
        names = [f"level {b + 1}" for b in bands]
    elif spec.is_time_series:
        names = [f"date {b // spec.num_bands + 1} {spec.bands[b % spec.num_bands]}" for b in bands]
    else:
        names = [spec.bands[b] if b < len(spec.bands) else f"band {b + 1}" for b in bands]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more
