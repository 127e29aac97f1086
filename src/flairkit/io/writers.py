"""GeoTIFF writers for predictions: class maps with the official colour table, probabilities.

``write_class_map`` writes one patch in one go. ``StreamingMapWriter`` writes large maps row
block by row block into Cloud-Optimized GeoTIFFs, with a QGIS style and a PNG preview, and
resumes after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.windows import Window

from flairkit.io.raster import DataError, Georef
from flairkit.modalities import ClassInfo, hex_to_rgb

log = logging.getLogger(__name__)


def write_class_map(
    path: str | Path,
    classes: np.ndarray,
    bounds: tuple[float, float, float, float],
    crs: str | None,
    class_table: Sequence[ClassInfo],
    probabilities: np.ndarray | None = None,
) -> Path:
    """Write a georeferenced uint8 class map (LZW, colour table) and optionally probabilities.

    Args:
        path: output ``.tif``.
        classes: (H, W) class indices.
        bounds: (left, bottom, right, top) of the footprint.
        crs: CRS of the footprint.
        class_table: classes with their colours (written as the GeoTIFF colour table).
        probabilities: (K, H, W) floats in [0, 1]; written beside as ``<stem>_proba.tif``, one
            uint8 band per class (round(p x 255)).

    Returns:
        The class-map path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = classes.shape
    transform = from_bounds(*bounds, width=width, height=height)
    profile = dict(
        driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
        transform=transform, compress="lzw", tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    if width % 16 or height % 16:
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes.astype(np.uint8), 1)
        dst.write_colormap(1, {c.value: (*hex_to_rgb(c.colour), 255) for c in class_table})
        dst.update_tags(1, **{f"CLASS_{c.value}": c.name for c in class_table})
    if probabilities is not None:
        proba_path = path.with_name(f"{path.stem}_proba.tif")
        quantised = np.clip(np.rint(probabilities * 255), 0, 255).astype(np.uint8)
        with rasterio.open(proba_path, "w", **{**profile, "count": quantised.shape[0]}) as dst:
            dst.write(quantised)
            for i, c in enumerate(class_table[: quantised.shape[0]], start=1):
                dst.set_band_description(i, c.name)
    return path


# --- Streaming map writer: class map (+ probabilities) as COGs, resumable ------------------------

#: Class value of pixels without data (the class map's GeoTIFF nodata).
NODATA_CLASS = 255
#: Dataset tag holding the settings fingerprint, in the partial file and the final class map.
FINGERPRINT_TAG = "FLAIRKIT_FINGERPRINT"
_PROGRESS_FORMAT = 1


class ResumeMismatchError(ValueError):
    """Existing partial or finished outputs were made with other settings than this run's."""


@dataclass(frozen=True)
class MapOutputs:
    """Files a finished ``StreamingMapWriter`` leaves.

    Attributes:
        class_path: class map COG (uint8, colour table, nodata 255).
        qml_path: QGIS style beside it (``<stem>.qml``, loaded automatically by QGIS).
        preview_path: small PNG in class colours (``<stem>_preview.png``).
        proba_path: probabilities COG (``<stem>_proba.tif``), or ``None``.
    """

    class_path: Path
    qml_path: Path
    preview_path: Path
    proba_path: Path | None


def map_output_paths(class_path: str | Path, write_proba: bool) -> MapOutputs:
    """Paths of the files written for a class map at ``class_path``.

    Args:
        class_path: the class map ``.tif``.
        write_proba: whether a probabilities file is written.

    Returns:
        The output paths (the files need not exist).
    """
    p = Path(class_path)
    return MapOutputs(
        class_path=p,
        qml_path=p.with_suffix(".qml"),
        preview_path=p.with_name(f"{p.stem}_preview.png"),
        proba_path=p.with_name(f"{p.stem}_proba.tif") if write_proba else None,
    )


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint's canonical JSON (sorted keys; non-JSON values as ``str``)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalise(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON, so that comparisons see what was stored."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_progress(path: Path, record: Mapping[str, Any]) -> None:
    """Replace the progress sidecar atomically (write a temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_progress(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable progress record ({e}); delete it to restart") from e
    if record.get("format") != _PROGRESS_FORMAT:
        raise DataError(
            f"{path}: unknown progress format {record.get('format')!r}; delete it to restart"
        )
    return record


def _mismatch_message(what: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    diffs = "; ".join(f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}" for k in keys[:5])
    return (
        f"{what} was made with other settings ({diffs or 'fingerprint differs'}); "
        f"delete it or pass on_existing='overwrite' to start again"
    )


def _cog_copy(
    src_path: Path, dst_path: Path, block_px: int, compress: str, resampling: str
) -> None:
    """Convert a tiled GeoTIFF to a Cloud-Optimized GeoTIFF with overviews (GDAL streams it)."""
    rasterio.shutil.copy(
        src_path, dst_path, driver="COG", blocksize=block_px, compress=compress,
        overview_resampling=resampling, overviews="AUTO", bigtiff="IF_SAFER",
    )  # fmt: skip


def _palette(class_table: Sequence[ClassInfo]) -> np.ndarray:
    """(256, 4) uint8 RGBA lookup table: class colours, transparent elsewhere (nodata)."""
    lut = np.zeros((256, 4), np.uint8)
    for c in class_table:
        lut[c.value] = (*hex_to_rgb(c.colour), 255)
    return lut


class StreamingMapWriter:
    """Write a class map (and optionally probabilities) row block by row block, resumably.

    Rows arrive top to bottom through ``write_rows``; complete block rows (``block_px`` rows,
    full width) go into tiled intermediate GeoTIFFs (``<stem>.partial.tif``,
    ``<stem>_proba.partial.tif``). After each write that completed a block row, the files are
    closed (GDAL flushes and writes the TIFF directory), fsynced, and only then is the number
    of rows on disk recorded in ``<stem>.progress.json`` (atomic replace), with the settings
    fingerprint. ``finish`` converts the files to COGs, writes the ``.qml`` style and the PNG
    preview, and removes the intermediates. Memory: ``(1 + K) * block_px * width`` bytes of
    pending rows.

    Resuming (``on_existing="resume"``): a progress record with the same fingerprint reopens the
    partial files in r+ mode and sets ``resume_row`` to the recorded row count (a multiple of
    ``block_px``); rows from there on are written again. An interruption at any point (even
    between the data flush and the record) thus leaves rows the record covers intact, and
    rewriting the rest gives the same final files as an uninterrupted run. A finished class
    map whose ``FLAIRKIT_FINGERPRINT`` tag matches makes the writer finished from the start
    (``resume_row == height``).

    The class map is uint8 with the class colour table, class names as band tags and nodata
    255. The probabilities file has one uint8 band per class (``round(p * 255)``), named after
    the classes, and no nodata value (0 is a valid probability): no-data pixels are 0 in every
    band and 255 in the class map.

    Args:
        class_path: final class map ``.tif``; the other paths derive from it
            (``map_output_paths``).
        georef: CRS, transform and size of the output grid.
        class_table: classes (values 0..254) with names and colours.
        write_proba: also write the probabilities file.
        fingerprint: JSON-able settings that must match to resume (model checksum, tile and
            overlap sizes, input paths...); the writer adds the grid, classes and its options.
        on_existing: ``"resume"`` (continue or keep matching outputs), ``"overwrite"``
            (delete them and start again) or ``"error"`` (refuse if any output exists).
        block_px: rows (and columns) of a block in the intermediate files, a multiple of 16.
        cog_block_px: block size of the COGs, a multiple of 16 >= 128 (overviews are made
            until one fits in a block).
        compress: COG compression.
        preview_max_px: longest side of the PNG preview.

    Raises:
        ResumeMismatchError: when resuming over outputs made with another fingerprint.
        FileExistsError: with ``on_existing="error"`` when an output or partial file exists.
        ValueError: for bad arguments.
    """

    def __init__(
        self,
        class_path: str | Path,
        georef: Georef,
        class_table: Sequence[ClassInfo],
        *,
        write_proba: bool = False,
        fingerprint: Mapping[str, Any] | None = None,
        on_existing: Literal["resume", "overwrite", "error"] = "resume",
        block_px: int = 256,
        cog_block_px: int = 512,
        compress: str = "DEFLATE",
        preview_max_px: int = 1024,
    ) -> None:
        if on_existing not in ("resume", "overwrite", "error"):
            raise ValueError(
                f"on_existing must be 'resume', 'overwrite' or 'error', got {on_existing!r}"
            )
        if block_px <= 0 or block_px % 16:
            raise ValueError(f"block_px must be a positive multiple of 16, got {block_px}")
        if cog_block_px < 128 or cog_block_px % 16:
            # GDAL's COG driver wants BLOCKSIZE >= 128 and TIFF tiles are multiples of 16.
            raise ValueError(f"cog_block_px must be a multiple of 16 >= 128, got {cog_block_px}")
        bad = [c.value for c in class_table if not 0 <= c.value < NODATA_CLASS]
        if bad:
            raise ValueError(
                f"class values must be in [0, {NODATA_CLASS - 1}] (255 is nodata), got {bad}"
            )
        # An affine.Affine has 9 coefficients; the grid needs its first 6.
        a, b, c, d, e, f = (float(v) for v in tuple(georef.transform)[:6])
        transform = (a, b, c, d, e, f)
        self.georef = Georef(georef.crs, transform, georef.width, georef.height)
        self.class_table = tuple(class_table)
        self.num_classes = len(self.class_table)
        self.write_proba = write_proba
        self.block_px = block_px
        self.cog_block_px = cog_block_px
        self.compress = compress
        self.preview_max_px = preview_max_px
        self.outputs = map_output_paths(class_path, write_proba)
        stem = self.outputs.class_path.stem
        self.partial_path = self.outputs.class_path.with_name(f"{stem}.partial.tif")
        self.proba_partial_path = self.outputs.class_path.with_name(f"{stem}_proba.partial.tif")
        self.progress_path = self.outputs.class_path.with_name(f"{stem}.progress.json")
        self.fingerprint = _normalise(
            {
                "user": dict(fingerprint or {}),
                "width": georef.width,
                "height": georef.height,
                "crs": georef.crs,
                "transform": list(transform),
                "classes": [[c.value, c.name, c.colour] for c in self.class_table],
                "write_proba": write_proba,
                "block_px": block_px,
                "cog_block_px": cog_block_px,
                "compress": compress,
            }
        )
        self.digest = fingerprint_digest(self.fingerprint)
        width = georef.width
        self._pending_classes = np.zeros((block_px, width), np.uint8)  # (rows, W)
        self._pending_proba = (
            np.zeros((self.num_classes, block_px, width), np.uint8) if write_proba else None
        )  # (K, rows, W)
        self._datasets: list[Any] = []
        self._rows_in_file = 0  # rows written to the partial files, a multiple of block_px
        self._next_row = 0  # rows received
        self._is_finished = False
        self.outputs.class_path.parent.mkdir(parents=True, exist_ok=True)
        self._start(on_existing)

    # -- state -----------------------------------------------------------------------------

    @property
    def resume_row(self) -> int:
        """Next row the writer expects.

        Right after construction: the row to resume from (0 for a fresh run, a multiple of
        ``block_px`` after an interruption, ``height`` when already finished).
        """
        return self._next_row

    @property
    def is_finished(self) -> bool:
        """True once the final files exist (``finish`` ran, now or in an earlier run)."""
        return self._is_finished

    def _all_paths(self) -> list[Path]:
        o = self.outputs
        paths = [o.class_path, o.qml_path, o.preview_path, o.proba_path, self.partial_path]
        paths += [self.proba_partial_path, self.progress_path, self._tmp_cog(o.class_path)]
        if o.proba_path is not None:
            paths.append(self._tmp_cog(o.proba_path))
        return [p for p in paths if p is not None]

    @staticmethod
    def _tmp_cog(path: Path) -> Path:
        return path.with_name(f"{path.stem}.cog-tmp.tif")

    def _start(self, on_existing: str) -> None:
        existing = [p for p in self._all_paths() if p.exists()]
        if on_existing == "error" and existing:
            raise FileExistsError(f"{existing[0]} exists; pass on_existing='resume' or 'overwrite'")
        if on_existing == "overwrite":
            for p in existing:
                p.unlink()
        elif self.outputs.class_path.exists():
            self._check_finished()
            return
        elif self.progress_path.exists() and self._resume():
            return
        self._create()

    def _check_finished(self) -> None:
        """Accept a finished class map made with the same fingerprint; clean leftovers."""
        path = self.outputs.class_path
        with rasterio.open(path) as src:
            digest = src.tags().get(FINGERPRINT_TAG)
        if digest != self.digest:
            raise ResumeMismatchError(
                f"{path}: finished map with fingerprint {digest!r}, this run's is {self.digest!r}; "
                f"delete it or pass on_existing='overwrite' to start again"
            )
        if self.outputs.proba_path is not None and not self.outputs.proba_path.exists():
            raise ResumeMismatchError(
                f"{self.outputs.proba_path} is missing beside the finished {path}; "
                f"delete {path} or pass on_existing='overwrite' to start again"
            )
        for p in (self.partial_path, self.proba_partial_path, self.progress_path):
            p.unlink(missing_ok=True)
        self._next_row = self._rows_in_file = self.georef.height
        self._is_finished = True
        log.info("%s already finished with the same settings", path)

    def _resume(self) -> bool:
        """Reopen the partial files at the recorded row; False when they cannot be used."""
        record = _read_progress(self.progress_path)
        if record.get("fingerprint") != self.fingerprint:
            raise ResumeMismatchError(
                _mismatch_message(
                    f"{self.progress_path} (partial map)",
                    _flatten(record.get("fingerprint", {})),
                    _flatten(self.fingerprint),
                )
            )
        rows_done = int(record["rows_done"])
        try:
            self._open()
        except (rasterio.errors.RasterioIOError, DataError) as e:
            log.warning(
                "%s: partial files unusable (%s); starting again from row 0", self.partial_path, e
            )
            self._close()
            return False
        self._rows_in_file = self._next_row = rows_done
        log.info("%s: resuming at row %d of %d", self.partial_path, rows_done, self.georef.height)
        return True

    # -- partial files ---------------------------------------------------------------------

    def _profile(self, count: int) -> dict[str, Any]:
        g = self.georef
        return dict(
            driver="GTiff", width=g.width, height=g.height, count=count, dtype="uint8",
            crs=g.crs, transform=Affine(*g.transform), tiled=True, blockxsize=self.block_px,
            blockysize=self.block_px, compress="ZSTD", interleave="pixel", bigtiff="IF_SAFER",
            # Blocks not yet written stay absent (offset 0) rather than being filled with
            # zeros at each close; they are appended when written.
            sparse_ok=True,
        )  # fmt: skip

    def _create(self) -> None:
        """Create empty partial files with all metadata, then record 0 rows done."""
        with rasterio.open(self.partial_path, "w", **self._profile(1), nodata=NODATA_CLASS) as dst:
            dst.write_colormap(1, {c.value: (*hex_to_rgb(c.colour), 255) for c in self.class_table})
            dst.update_tags(**{FINGERPRINT_TAG: self.digest})
            dst.update_tags(1, **{f"CLASS_{c.value}": c.name for c in self.class_table})
        if self.write_proba:
            with rasterio.open(
                self.proba_partial_path, "w", **self._profile(self.num_classes)
            ) as dst:
                dst.update_tags(**{FINGERPRINT_TAG: self.digest})
                for i, c in enumerate(self.class_table, start=1):
                    dst.set_band_description(i, c.name)
        self._rows_in_file = self._next_row = 0
        self._record()
        self._open()

    def _partial_paths(self) -> list[Path]:
        return [self.partial_path] + ([self.proba_partial_path] if self.write_proba else [])

    def _open(self) -> None:
        for path in self._partial_paths():
            dst = rasterio.open(path, "r+")
            self._datasets.append(dst)
            if (dst.width, dst.height) != (self.georef.width, self.georef.height):
                raise DataError(f"{path}: size {dst.width} x {dst.height} differs from the grid")

    def _close(self) -> None:
        while self._datasets:
            self._datasets.pop().close()

    def _record(self) -> None:
        record = {
            "format": _PROGRESS_FORMAT,
            "rows_done": self._rows_in_file,
            "height": self.georef.height,
            "fingerprint": self.fingerprint,
            "digest": self.digest,
        }
        _write_progress(self.progress_path, record)

    def _checkpoint(self) -> None:
        """Flush the partial files to disk, then record the rows they hold."""
        self._close()
        for path in self._partial_paths():
            _fsync(path)
        self._record()
        if self._rows_in_file < self.georef.height:
            self._open()

    def close(self) -> None:
        """Close the partial files (progress stays at the last checkpoint); idempotent."""
        self._close()

    def __enter__(self) -> StreamingMapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def write_rows(
        self, row_start: int, class_rows: np.ndarray, proba_rows: np.ndarray | None = None
    ) -> None:
        """Append rows ``[row_start, row_start + rows)``; rows already written are skipped.

        Args:
            row_start: first row of the block; at most ``resume_row`` (no gaps).
            class_rows: (rows, W) uint8 class values, 255 for nodata.
            proba_rows: (K, rows, W) uint8 probabilities; required iff ``write_proba``.

        Raises:
            ValueError: for a gap, rows beyond the raster, or arrays of the wrong shape or type.
            RuntimeError: if the writer is finished.
        """
        if self._is_finished:
            raise RuntimeError(f"{self.outputs.class_path} is finished; nothing more to write")
        self._check_rows(row_start, class_rows, proba_rows)
        num_rows = class_rows.shape[0]
        skip = self._next_row - row_start
        pos = max(skip, 0)
        rows_in_file = self._rows_in_file
        while pos < num_rows:
            fill = self._next_row - self._rows_in_file
            block_rows = min(self.block_px, self.georef.height - self._rows_in_file)
            take = min(block_rows - fill, num_rows - pos)
            self._pending_classes[fill : fill + take] = class_rows[pos : pos + take]
            if self._pending_proba is not None and proba_rows is not None:
                self._pending_proba[:, fill : fill + take] = proba_rows[:, pos : pos + take]
            self._next_row += take
            pos += take
            if self._next_row - self._rows_in_file == block_rows:
                self._write_block(block_rows)
        if self._rows_in_file > rows_in_file:
            self._checkpoint()

    def _check_rows(
        self, row_start: int, class_rows: np.ndarray, proba_rows: np.ndarray | None
    ) -> None:
        num_rows, width = class_rows.shape
        if class_rows.dtype != np.uint8:
            raise ValueError(f"class_rows must be uint8, got {class_rows.dtype}")
        if width != self.georef.width:
            raise ValueError(f"class_rows must have {self.georef.width} columns, got {width}")
        if row_start > self._next_row:
            raise ValueError(
                f"rows must be written in order: next row is {self._next_row}, got {row_start}"
            )
        if row_start < 0 or row_start + num_rows > self.georef.height:
            raise ValueError(
                f"rows [{row_start}, {row_start + num_rows}) outside the raster (height {self.georef.height})"
            )
        if self.write_proba:
            expected = (self.num_classes, num_rows, width)
            if proba_rows is None or proba_rows.shape != expected or proba_rows.dtype != np.uint8:
                got = None if proba_rows is None else (proba_rows.shape, proba_rows.dtype)
                raise ValueError(f"proba_rows must be uint8 of shape {expected}, got {got}")
        elif proba_rows is not None:
            raise ValueError("proba_rows given but the writer was made with write_proba=False")

    def _write_block(self, block_rows: int) -> None:
        window = Window(0, self._rows_in_file, self.georef.width, block_rows)
        self._datasets[0].write(self._pending_classes[:block_rows], 1, window=window)
        if self._pending_proba is not None:
            self._datasets[1].write(self._pending_proba[:, :block_rows], window=window)
        self._rows_in_file += block_rows

    def finish(self) -> MapOutputs:
        """Convert to COGs, write the QGIS style and the preview, remove the partial files.

        Safe to call again after an interruption (and on an already finished writer: missing
        style or preview files are written again).

        Returns:
            The output paths.

        Raises:
            RuntimeError: if rows are missing.
        """
        o = self.outputs
        if self._is_finished:
            if not o.qml_path.exists():
                write_qml(o.qml_path, self.class_table)
            if not o.preview_path.exists():
                write_preview_png(
                    o.class_path, o.preview_path, self.class_table, self.preview_max_px
                )
            return o
        if self._next_row < self.georef.height:
            raise RuntimeError(
                f"{self.partial_path}: only {self._next_row} of {self.georef.height} rows written"
            )
        self._close()
        if o.proba_path is not None:
            tmp = self._tmp_cog(o.proba_path)
            _cog_copy(self.proba_partial_path, tmp, self.cog_block_px, self.compress, "AVERAGE")
            os.replace(tmp, o.proba_path)
        tmp = self._tmp_cog(o.class_path)
        # MODE keeps overview pixels real classes (and ignores nodata).
        _cog_copy(self.partial_path, tmp, self.cog_block_px, self.compress, "MODE")
        write_qml(o.qml_path, self.class_table)
        write_preview_png(tmp, o.preview_path, self.class_table, self.preview_max_px)
        # The class map appears last: its presence means every other output is complete.
        _fsync(tmp)
        os.replace(tmp, o.class_path)
        for p in (self.partial_path, self.proba_partial_path, self.progress_path):
            p.unlink(missing_ok=True)
        self._is_finished = True
        log.info("wrote %s", o.class_path)
        return o


def _flatten(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """One level of ``user`` keys lifted to the top, for readable mismatch messages."""
    flat = {k: v for k, v in fingerprint.items() if k != "user"}
    flat.update({f"user.{k}": v for k, v in dict(fingerprint.get("user", {})).items()})
    return flat


# --- Sidecar files: QGIS style and PNG preview --------------------------------------------------

_QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def write_qml(path: str | Path, class_table: Sequence[ClassInfo], band: int = 1) -> Path:
    """Write a QGIS layer style (``.qml``) with a paletted renderer for a class map.

    QGIS loads ``<stem>.qml`` automatically when it opens ``<stem>.tif``.

    Args:
        path: output ``.qml``.
        class_table: classes; one palette entry each (value, colour, name as label).
        band: band of the raster the renderer reads.

    Returns:
        ``path``.
    """
    path = Path(path)
    root = ET.Element("qgis", version="3.28.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe, "rasterrenderer", type="paletted", band=str(band), opacity="1", alphaBand="-1",
        nodataColor="",
    )  # fmt: skip
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in class_table:
        ET.SubElement(
            palette, "paletteEntry", value=str(c.value), color=c.colour.lower(), alpha="255",
            label=c.name,
        )  # fmt: skip
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _QML_DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def preview_shape(height_px: int, width_px: int, max_px: int) -> tuple[int, int]:
    """Size of a preview whose longest side is at most ``max_px`` (never enlarged).

    Args:
        height_px: raster rows.
        width_px: raster columns.
        max_px: longest side allowed.

    Returns:
        ``(rows, cols)``, each at least 1.
    """
    scale = max(height_px, width_px) / max_px
    if scale <= 1:
        return height_px, width_px
    return (
        min(max_px, max(1, round(height_px / scale))),
        min(max_px, max(1, round(width_px / scale))),
    )


def write_preview_png(
    class_map_path: str | Path,
    png_path: str | Path,
    class_table: Sequence[ClassInfo],
    max_px: int = 1024,
) -> Path:
    """Write a PNG of a class map in class colours, longest side at most ``max_px``.

    Reads a decimated view (GDAL picks the closest overview), never the full raster; nodata
    and values outside the table are transparent.

    Args:
        class_map_path: class map GeoTIFF (ideally a COG with overviews).
        png_path: output ``.png``.
        class_table: classes and colours.
        max_px: longest side of the preview.

    Returns:
        ``png_path``.
    """
    from PIL import Image  # lazy: only previews need it

    png_path = Path(png_path)
    with rasterio.open(class_map_path) as src:
        shape = preview_shape(src.height, src.width, max_px)
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)  # (h, w)
    rgba = _palette(class_table)[classes]  # (h, w, 4)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # Pillow directly: matplotlib's imsave took 1.1 s more for a 1024^2 preview (import included).
    Image.fromarray(rgba, mode="RGBA").save(png_path, format="PNG", compress_level=1)
    return png_path
