"""Inputs "as they come" -> GDAL VRT files that ``WindowReader`` opens like any raster.

Mapping agencies hold orthophotos as thousands of tiles (GeoTIFF, JPEG-compressed GeoTIFF,
JPEG2000) and Sentinel-2/1 as one file per acquisition date. This module describes them as
GDAL virtual rasters (VRT: XML that points at the files, no pixel is copied):

* ``collect_rasters`` turns a file, a folder, a glob pattern or a list file into raster paths;
* ``build_mosaic_vrt`` mosaics tiles of one pixel grid into one raster (union extent);
* ``read_date_series`` pairs per-date files (and per-date masks) with their acquisition dates,
  parsed from the file names or read from a CSV;
* ``build_series_vrt`` stacks the dates into one raster, date-major (all bands of the first
  date, then the second ...), with its dates file and, with masks, a mask stack.

rasterio has no public ``buildvrt`` and GDAL's Python bindings (``osgeo``) are not a
dependency, so the VRT XML is written here, following GDAL's VRT format description: one
``SimpleSource`` per file and band, placed by ``SrcRect``/``DstRect``. Only tiles that share one
pixel grid are accepted (same CRS, band count, data type, nodata, north-up, same pixel size,
origins a whole number of pixels apart): a VRT then reads every pixel as it is in its tile,
with no resampling. Where tiles overlap, the one listed last wins. Pixels covered by no tile
read as the nodata value, or 0 when the tiles declare none.

Outputs are written atomically (a temporary file in the same folder, then a rename) and left
untouched when their content would not change, so that their modification time, and the
fingerprint of a map that reads them, stay the same when the same inputs are described again.

Acquisition dates in file names: the first match, in the name, of ``YYYYMMDD``,
``YYYY-MM-DD`` or ``YYYY_MM_DD`` (year 1900-2099, not preceded by a digit; the separated forms
not followed by a digit) whose value is a valid date. ``S2B_MSIL2A_20210614T103629_N0300.tif``
and ``T31TCJ_2021-06-14_B.tif`` are both dated 2021-06-14.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from flairkit.io.dates import parse_yyyymmdd
from flairkit.io.raster import DataError, read_text_file
from flairkit.io.threads import default_num_threads, thread_pool

#: Extensions of the rasters a folder contributes (compared case-insensitively).
RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2", ".vrt", ".img")
#: Extensions of list files (one raster path per line).
LIST_EXTENSIONS = (".txt", ".lst")

_GLOB_CHARS = frozenset("*?[")
_PIXEL_SIZE_RTOL = 1e-9
_GRID_TOL_PX = 1e-3
_DATE_IN_NAME_RE = re.compile(
    r"(?<!\d)(?:((?:19|20)\d{2})(\d{2})(\d{2})|((?:19|20)\d{2})([-_])(\d{2})\5(\d{2})(?!\d))"
)
_CSV_DATE_RE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
# numpy dtype name (as rasterio reports it) -> VRT dataType.
_VRT_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
    "complex64": "CFloat32",
    "complex128": "CFloat64",
}
# Colour interpretations kept in the VRT (rasterio name -> GDAL name); others are left out.
# Not alpha: a 4-band GeoTIFF is tagged RGBA by default (TIFF ExtraSamples), while in an RGBI
# orthophoto the 4th band is the near infrared, which GDAL would then treat as a transparency
# mask.
_COLOR_NAMES = {"gray": "Gray", "red": "Red", "green": "Green", "blue": "Blue"}


# --------------------------------------------------------------------------- file lists


def collect_rasters(spec: str | Path) -> list[Path]:
    """The raster files named by a file, a folder, a glob pattern or a list file.

    * an existing folder: its files with a raster extension (``.tif .tiff .jp2 .vrt .img``,
      any case; not recursive; names starting with ``.`` skipped, such as the ``._name.tif``
      files macOS leaves on external drives), sorted by name;
    * a list file (``.txt`` or ``.lst``): one path per line in file order, relative paths
      taken from the list file's folder, blank lines and lines starting with ``#`` skipped;
    * any other existing file: that raster;
    * a string holding ``*``, ``?`` or ``[`` that names no existing path: a glob pattern, its
      matching files sorted.

    Args:
        spec: the file, folder, pattern or list file.

    Returns:
        The raster paths (not opened: a file that is not a raster fails where it is read).

    Raises:
        DataError: nothing is found, the path does not exist, or a listed file is missing;
            the message names the spec (and the line, for list files).
    """
    path = Path(spec)
    if path.is_dir():
        found = sorted(
            (
                p
                for p in path.iterdir()
                if p.suffix.lower() in RASTER_EXTENSIONS
                and not p.name.startswith(".")
                and p.is_file()
            ),
            key=lambda p: p.name,
        )
        if not found:
            raise DataError(f"{path}: no raster ({' '.join(RASTER_EXTENSIONS)}) in the folder")
        return found
    if path.is_file():
        if path.suffix.lower() in LIST_EXTENSIONS:
            return _read_list_file(path)
        return [path]
    text = str(spec)
    if _GLOB_CHARS.intersection(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        found = [m for m in matches if m.is_file()]
        if not found:
            raise DataError(f"{text}: the pattern matches no file")
        return found
    raise DataError(f"{path}: no such file or folder")


def _read_list_file(path: Path) -> list[Path]:
    text = read_text_file(path, "raster list")
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        listed = Path(entry)
        if not listed.is_absolute():
            listed = path.parent / listed
        if not listed.is_file():
            raise DataError(f"{path} line {number}: {listed} is missing")
        found.append(listed)
    if not found:
        raise DataError(f"{path}: the raster list names no file")
    return found


# --------------------------------------------------------------------------- raster grids


@dataclass(frozen=True)
class _RasterInfo:
    """What a VRT needs to know about one file."""

    path: Path
    crs: rasterio.crs.CRS | None
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f
    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    colors: tuple[str, ...]
    blocks: tuple[tuple[int, int], ...]  # (rows, cols) per band

    @property
    def count(self) -> int:
        return len(self.dtypes)


def _raster_info(path: Path) -> _RasterInfo:
    try:
        with rasterio.open(path) as src:
            return _RasterInfo(
                path=path,
                crs=src.crs,
                transform=tuple(src.transform)[:6],
                width=src.width,
                height=src.height,
                dtypes=tuple(src.dtypes),
                nodata=tuple(src.nodatavals),
                colors=tuple(c.name for c in src.colorinterp),
                blocks=tuple(tuple(b) for b in src.block_shapes),
            )
    except RasterioError as exc:
        raise DataError(f"{path}: cannot open as a raster ({exc})") from exc


def _read_infos(paths: Sequence[Path]) -> list[_RasterInfo]:
    """Open every file (in reader threads: GDAL releases the GIL, and tiles may be many)."""
    if len(paths) < 8:
        return [_raster_info(p) for p in paths]
    pool = thread_pool("mosaic", default_num_threads())
    return list(pool.map(_raster_info, paths))


def _check_alone(info: _RasterInfo) -> None:
    """The checks one file needs on its own: georeferenced, north-up, a known data type."""
    if info.crs is None:
        raise DataError(f"{info.path}: the raster has no CRS")
    a, b, _, d, e, _ = info.transform
    if not (a > 0 and e < 0 and abs(b) <= _PIXEL_SIZE_RTOL * a and abs(d) <= _PIXEL_SIZE_RTOL * a):
        raise DataError(
            f"{info.path}: the raster is not north-up (geotransform a={a} b={b} d={d} e={e})"
        )
    for dtype in info.dtypes:
        if dtype not in _VRT_TYPES:
            raise DataError(f"{info.path}: data type {dtype} is not supported in a VRT here")


def _same_value(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return x == y or (math.isnan(x) and math.isnan(y))


def _types(info: _RasterInfo) -> str:
    return "/".join(dict.fromkeys(info.dtypes))


def _check_same_grid(ref: _RasterInfo, info: _RasterInfo) -> None:
    """DataError naming both files unless ``info`` lies on ``ref``'s pixel grid, alike."""
    _check_alone(info)
    pair = f"{info.path} does not match {ref.path}"
    if info.crs != ref.crs:
        raise DataError(f"{pair}: CRS {info.crs} vs {ref.crs}")
    if info.count != ref.count:
        raise DataError(f"{pair}: {info.count} bands vs {ref.count}")
    if info.dtypes != ref.dtypes:
        raise DataError(f"{pair}: data type {_types(info)} vs {_types(ref)}")
    for x, y in zip(info.nodata, ref.nodata, strict=False):
        if not _same_value(x, y):
            raise DataError(f"{pair}: nodata {x} vs {y}")
    a0, e0 = ref.transform[0], ref.transform[4]
    a, e = info.transform[0], info.transform[4]
    if abs(a - a0) > _PIXEL_SIZE_RTOL * abs(a0) or abs(e - e0) > _PIXEL_SIZE_RTOL * abs(e0):
        raise DataError(f"{pair}: pixel size {a} x {-e} vs {a0} x {-e0}")
    col = (info.transform[2] - ref.transform[2]) / a0
    row = (info.transform[5] - ref.transform[5]) / e0
    dx, dy = col - round(col), row - round(row)
    if abs(dx) > _GRID_TOL_PX or abs(dy) > _GRID_TOL_PX:
        # "+ 0.0" turns a rounded -0.0 into 0.0.
        raise DataError(
            f"{pair}: its origin is off the pixel grid by {round(dx, 3) + 0.0:+.3f} px in x "
            f"and {round(dy, 3) + 0.0:+.3f} px in y"
        )


def _offset(ref: _RasterInfo, info: _RasterInfo) -> tuple[int, int]:
    """(column, row) of ``info``'s top-left pixel on ``ref``'s grid (checked aligned)."""
    col = (info.transform[2] - ref.transform[2]) / ref.transform[0]
    row = (info.transform[5] - ref.transform[5]) / ref.transform[4]
    return round(col), round(row)


@dataclass(frozen=True)
class _Layout:
    """The union grid of aligned files: its size, geotransform and each file's offset."""

    width: int
    height: int
    geotransform: tuple[float, float, float, float, float, float]  # GDAL order
    offsets: tuple[tuple[int, int], ...]  # (column, row) of each file in the union


def _layout(infos: Sequence[_RasterInfo]) -> _Layout:
    ref = infos[0]
    raw = [_offset(ref, info) for info in infos]
    col0 = min(c for c, _ in raw)
    row0 = min(r for _, r in raw)
    width = max(c + info.width for (c, _), info in zip(raw, infos, strict=True)) - col0
    height = max(r + info.height for (_, r), info in zip(raw, infos, strict=True)) - row0
    a, _, c, _, e, f = ref.transform
    geotransform = (c + col0 * a, a, 0.0, f + row0 * e, 0.0, e)
    offsets = tuple((c - col0, r - row0) for c, r in raw)
    return _Layout(width, height, geotransform, offsets)


def _check_grid(infos: Sequence[_RasterInfo]) -> None:
    _check_alone(infos[0])
    for info in infos[1:]:
        _check_same_grid(infos[0], info)


# --------------------------------------------------------------------------- VRT XML


def _number(value: float) -> str:
    """A number as GDAL reads it back exactly (integers without a decimal point)."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


def _vrt_root(ref: _RasterInfo, layout: _Layout) -> ET.Element:
    root = ET.Element("VRTDataset", rasterXSize=str(layout.width), rasterYSize=str(layout.height))
    assert ref.crs is not None  # _check_alone
    # No dataAxisToSRSAxisMapping: GDAL then maps the geotransform's x to the easting or
    # longitude (traditional GIS order), as rasterio does, whatever the CRS's axis order.
    ET.SubElement(root, "SRS").text = ref.crs.to_wkt()
    geotransform = ET.SubElement(root, "GeoTransform")
    geotransform.text = ", ".join(repr(float(v)) for v in layout.geotransform)
    return root


def _add_band(
    root: ET.Element,
    number: int,
    sources: Sequence[tuple[_RasterInfo, int, tuple[int, int]]],
    color: str | None,
) -> None:
    """One VRT band from ``(file, band of the file, (column, row) in the VRT)`` sources."""
    info0, band0, _ = sources[0]
    band = ET.SubElement(
        root, "VRTRasterBand", dataType=_VRT_TYPES[info0.dtypes[band0 - 1]], band=str(number)
    )
    nodata = info0.nodata[band0 - 1]
    if nodata is not None:
        ET.SubElement(band, "NoDataValue").text = _number(nodata)
    if color is not None:
        ET.SubElement(band, "ColorInterp").text = color
    for info, index, (col, row) in sources:
        source = ET.SubElement(band, "SimpleSource")
        filename = ET.SubElement(source, "SourceFilename", relativeToVRT="0")
        filename.text = os.path.abspath(info.path)
        ET.SubElement(source, "SourceBand").text = str(index)
        block_rows, block_cols = info.blocks[index - 1]
        # Declared properties let GDAL defer opening a source until its pixels are read.
        ET.SubElement(
            source,
            "SourceProperties",
            RasterXSize=str(info.width),
            RasterYSize=str(info.height),
            DataType=_VRT_TYPES[info.dtypes[index - 1]],
            BlockXSize=str(block_cols),
            BlockYSize=str(block_rows),
        )
        w, h = str(info.width), str(info.height)
        ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=w, ySize=h)
        ET.SubElement(source, "DstRect", xOff=str(col), yOff=str(row), xSize=w, ySize=h)


def _vrt_text(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, unless the file already holds exactly it."""
    data = text.encode("utf-8")
    try:
        if path.is_file() and path.read_bytes() == data:
            return
    except OSError:
        pass  # unreadable: replaced below
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _refuse_self_reference(paths: Sequence[Path], out: Path) -> None:
    target = os.path.abspath(out)
    for p in paths:
        if os.path.abspath(p) == target:
            raise DataError(f"{out}: the VRT to write is one of its own inputs")


# --------------------------------------------------------------------------- mosaic


def build_mosaic_vrt(paths: Sequence[Path], out: Path) -> Path:
    """Write one VRT mosaicking tiles of one pixel grid (their union extent).

    Every tile is checked against the first: same CRS, band count, data type and nodata,
    north-up, same pixel size (relative tolerance 1e-9) and an origin on the first tile's
    pixel grid (within 1e-3 pixel). A single tile also gets a VRT, so that callers handle one
    kind of file. Bands keep the first tile's colour interpretation (gray, red, green, blue;
    not alpha, see ``_COLOR_NAMES``) and nodata value. The file is written atomically and
    not rewritten when unchanged.

    Args:
        paths: the tiles, in the order they are drawn (the last wins where tiles overlap).
        out: the ``.vrt`` to write (its folder is created if needed).

    Returns:
        ``out``.

    Raises:
        DataError: no tile, a tile that cannot be opened, is not georeferenced or not
            north-up, a tile that does not match the first (the message names both files),
            ``out`` among the tiles, or ``out`` not writable.
    """
    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise DataError(f"{out}: no tile to mosaic")
    _refuse_self_reference(paths, out)
    infos = _read_infos(paths)
    _check_grid(infos)
    layout = _layout(infos)
    ref = infos[0]
    root = _vrt_root(ref, layout)
    for index in range(1, ref.count + 1):
        sources = [(info, index, off) for info, off in zip(infos, layout.offsets, strict=True)]
        _add_band(root, index, sources, _COLOR_NAMES.get(ref.colors[index - 1]))
    _write_if_changed(out, _vrt_text(root))
    return out


# --------------------------------------------------------------------------- date series


@dataclass(frozen=True)
class DateSeries:
    """Per-date rasters of one time series, sorted by date.

    Attributes:
        dates: ``datetime64[D]``, strictly ascending.
        paths: the raster of each date.
        mask_paths: the mask of each date, or ``None``.
    """

    dates: np.ndarray
    paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...] | None = None

    def __post_init__(self) -> None:
        dates = np.asarray(self.dates, dtype="datetime64[D]")
        object.__setattr__(self, "dates", dates)
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        if self.mask_paths is not None:
            object.__setattr__(self, "mask_paths", tuple(Path(p) for p in self.mask_paths))
        if dates.ndim != 1 or len(dates) != len(self.paths) or len(dates) == 0:
            raise ValueError(f"{len(dates)} dates for {len(self.paths)} paths")
        if self.mask_paths is not None and len(self.mask_paths) != len(self.paths):
            raise ValueError(f"{len(self.mask_paths)} masks for {len(self.paths)} paths")
        if np.any(np.diff(dates) <= np.timedelta64(0, "D")):
            raise ValueError("dates must be strictly ascending")


def date_from_name(name: str) -> np.datetime64 | None:
    """The acquisition date in a file name (see the module docstring), or ``None``.

    Args:
        name: a file name (or any text).

    Returns:
        The first valid ``YYYYMMDD``, ``YYYY-MM-DD`` or ``YYYY_MM_DD`` date, as
        ``datetime64[D]``; ``None`` when there is none.
    """
    for match in _DATE_IN_NAME_RE.finditer(name):
        compact = match.group(1) is not None
        year, month, day = match.group(1, 2, 3) if compact else match.group(4, 6, 7)
        if day == "00":  # parse_yyyymmdd reads day 00 as the 1st; not in a name
            continue
        try:
            return parse_yyyymmdd([f"{year}{month}{day}"], name)[0]
        except DataError:
            continue
    return None


def read_date_series(spec: str | Path, mask_spec: str | Path | None = None) -> DateSeries:
    """Per-date rasters (and masks) with their dates, sorted by date.

    ``spec`` is either

    * a folder, glob pattern or list file of per-date rasters (as in ``collect_rasters``),
      each dated by its name (``date_from_name``); ``mask_spec``, if given, names per-date
      masks the same way, matched to the rasters by date; or
    * a CSV file (``.csv``) with the header ``date,path`` or ``date,path,mask_path``: dates
      ``YYYYMMDD`` or ``YYYY-MM-DD``, relative paths taken from the CSV's folder, blank lines
      skipped. ``mask_spec`` must then be ``None``.

    Args:
        spec: the rasters.
        mask_spec: the masks, for a spec that is not a CSV.

    Returns:
        The ``DateSeries``.

    Raises:
        DataError: no file, a file whose name holds no date, two files of one date, a date
            without its mask or a mask without its date, or a bad CSV (header, date, missing
            file); the message names the file.
        ValueError: a CSV ``spec`` with a ``mask_spec``.
    """
    if Path(spec).suffix.lower() == ".csv" and Path(spec).is_file():
        if mask_spec is not None:
            raise ValueError(f"{spec}: a CSV series carries its masks; give no mask_spec")
        return _read_series_csv(Path(spec))
    dated = _dated_files(spec, "raster")
    dates = sorted(dated)
    masks = None
    if mask_spec is not None:
        dated_masks = _dated_files(mask_spec, "mask")
        for date in dates:
            if date not in dated_masks:
                raise DataError(f"{dated[date]}: no mask of date {date} in {mask_spec}")
        for date, mask in dated_masks.items():
            if date not in dated:
                raise DataError(f"{mask}: no raster of the mask's date {date} in {spec}")
        masks = tuple(dated_masks[d] for d in dates)
    return DateSeries(np.array(dates, dtype="datetime64[D]"), tuple(dated[d] for d in dates), masks)


def _dated_files(spec: str | Path, what: str) -> dict[np.datetime64, Path]:
    dated: dict[np.datetime64, Path] = {}
    for path in collect_rasters(spec):
        date = date_from_name(path.name)
        if date is None:
            raise DataError(
                f"{path}: no date (YYYYMMDD, YYYY-MM-DD or YYYY_MM_DD) in the {what}'s name"
            )
        if date in dated:
            raise DataError(f"{path}: {what} of date {date}, as is {dated[date]}")
        dated[date] = path
    return dated


def _read_series_csv(path: Path) -> DateSeries:
    text = read_text_file(path, "date series CSV")
    rows = [
        (number, row)
        for number, row in enumerate(csv.reader(text.splitlines()), start=1)
        if any(cell.strip() for cell in row)
    ]
    if not rows:
        raise DataError(f"{path}: the CSV is empty")
    header = [cell.strip().lower() for cell in rows[0][1]]
    if header not in (["date", "path"], ["date", "path", "mask_path"]):
        raise DataError(
            f"{path}: the header must be 'date,path' or 'date,path,mask_path', got {','.join(header)!r}"
        )
    with_masks = len(header) == 3
    entries: dict[np.datetime64, tuple[Path, Path | None]] = {}
    for number, row in rows[1:]:
        where = f"{path} line {number}"
        cells = [cell.strip() for cell in row]
        if len(cells) != len(header) or not all(cells):
            raise DataError(f"{where}: expected {len(header)} non-empty values, got {row}")
        match = _CSV_DATE_RE.match(cells[0])
        if match is None:
            raise DataError(f"{where}: {cells[0]!r} is not a YYYYMMDD or YYYY-MM-DD date")
        date = parse_yyyymmdd(["".join(match.groups())], where)[0]
        if date in entries:
            raise DataError(f"{where}: date {date} is listed twice")
        files = [_csv_file(path, where, cell) for cell in cells[1:]]
        entries[date] = (files[0], files[1] if with_masks else None)
    if not entries:
        raise DataError(f"{path}: the CSV lists no date")
    dates = sorted(entries)
    masks = tuple(m for d in dates if (m := entries[d][1]) is not None) if with_masks else None
    return DateSeries(
        np.array(dates, dtype="datetime64[D]"), tuple(entries[d][0] for d in dates), masks
    )


def _csv_file(csv_path: Path, where: str, cell: str) -> Path:
    file = Path(cell)
    if not file.is_absolute():
        file = csv_path.parent / file
    if not file.is_file():
        raise DataError(f"{where}: {file} is missing")
    return file


def build_series_vrt(
    series: DateSeries, bands_per_date: int, out_dir: Path, name: str
) -> tuple[Path, Path, Path | None]:
    """Stack per-date rasters into one VRT, with its dates file and mask stack.

    Writes ``out_dir/<name>.vrt`` (``T * bands_per_date`` bands, date-major: all bands of the
    first date, then those of the second ...), ``out_dir/<name>_dates.txt`` (one ``YYYYMMDD``
    per date, in band order, as ``io.dates.read_dates_file`` reads) and, when the series has
    masks, ``out_dir/<name>_mask.vrt`` (2 bands per date, same order). The files of one stack
    must lie on one pixel grid (as in ``build_mosaic_vrt``; the stack covers the union of their
    extents), as must the masks among themselves. Files are written atomically and not
    rewritten when unchanged.

    Args:
        series: the dated files.
        bands_per_date: bands every date file must have.
        out_dir: the output folder (created if needed).
        name: the base name of the outputs.

    Returns:
        ``(stack VRT, dates file, mask VRT or None)``.

    Raises:
        DataError: a file that cannot be opened, has not ``bands_per_date`` bands (masks: 2),
            or does not match the first file of its stack (the message names both files),
            or an output that is also an input.
        ValueError: ``bands_per_date`` < 1, or ``name`` empty or holding a path separator.
    """
    if bands_per_date < 1:
        raise ValueError(f"bands_per_date must be >= 1, got {bands_per_date}")
    if not name or Path(name).name != name:
        raise ValueError(f"name must be a plain file name, got {name!r}")
    out_dir = Path(out_dir)
    stack_path = out_dir / f"{name}.vrt"
    dates_path = out_dir / f"{name}_dates.txt"
    mask_path = out_dir / f"{name}_mask.vrt" if series.mask_paths is not None else None
    inputs = list(series.paths) + list(series.mask_paths or ())
    for output in (stack_path, dates_path, mask_path):
        if output is not None:
            _refuse_self_reference(inputs, output)
    stack_text = _series_text(series.paths, bands_per_date, "raster")
    mask_text = (
        _series_text(series.mask_paths, 2, "mask") if series.mask_paths is not None else None
    )
    dates_text = "".join(f"{str(d).replace('-', '')}\n" for d in series.dates)
    _write_if_changed(stack_path, stack_text)
    _write_if_changed(dates_path, dates_text)
    if mask_path is not None and mask_text is not None:
        _write_if_changed(mask_path, mask_text)
    return stack_path, dates_path, mask_path


def _series_text(paths: Sequence[Path], bands: int, what: str) -> str:
    infos = _read_infos(paths)
    for info in infos:
        if info.count != bands:
            raise DataError(
                f"{info.path}: the {what} has {info.count} bands, expected {bands} per date"
            )
    _check_grid(infos)
    layout = _layout(infos)
    root = _vrt_root(infos[0], layout)
    number = 1
    for info, offset in zip(infos, layout.offsets, strict=True):
        for index in range(1, bands + 1):
            _add_band(root, number, [(info, index, offset)], None)
            number += 1
    return _vrt_text(root)
