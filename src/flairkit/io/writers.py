"""GeoTIFF writers for predictions: class maps with the official colour table, probabilities.

``write_class_map`` writes one patch in one go. ``StreamingMapWriter`` writes large maps row
block by row block into Cloud-Optimized GeoTIFFs, with a QGIS style and a PNG preview
(``io.sidecars``), and resumes after an interruption.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rasterio.windows import Window

from flairkit.io.raster import DataError
from flairkit.io.sidecars import write_preview_png, write_qml
from flairkit.modalities import ClassInfo, hex_to_rgb
from flairkit.sample import Georef

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
#: Dataset tag holding the settings fingerprint, in the partial files and the final class map.
FINGERPRINT_TAG = "FLAIRKIT_FINGERPRINT"
#: Progress record format: 2 = one immutable file per block row in ``<stem>.partial/``.
#: Format 1 (one ``<stem>.partial.tif`` updated in place) is no longer resumed (see
#: ``StreamingMapWriter``): such a map starts again.
_PROGRESS_FORMAT = 2
#: Files a writer puts in its partial folder (the only ones it ever deletes there).
_PARTIAL_FILE = re.compile(r"rows-\d{8}(_proba)?\.tif|(classes|proba)\.vrt")


class ResumeMismatchError(ValueError):
    """Existing partial or finished outputs were made with other settings than this run's."""


class MapWriteError(OSError):
    """A file of a map could not be written (disk full, read-only folder, ...); names the file.

    ``errno`` is the failure's (``ENOSPC``...) when known; the message is ``strerror``.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


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


def _tmp_cog(path: Path) -> Path:
    return path.with_name(f"{path.stem}.cog-tmp.tif")


def map_written_paths(class_path: str | Path) -> tuple[list[Path], list[Path]]:
    """Every path a ``StreamingMapWriter`` at ``class_path`` may write or delete.

    Whatever ``write_proba``: the files of both cases. Used to refuse an output path whose
    files would replace a map's own inputs.

    Args:
        class_path: the class map ``.tif``.

    Returns:
        ``(files, folders)``: the files, and the folders whose content it writes and deletes.
    """
    p = Path(class_path)
    outputs = map_output_paths(p, write_proba=True)
    assert outputs.proba_path is not None
    files = [outputs.class_path, outputs.qml_path, outputs.preview_path, outputs.proba_path]
    progress = p.with_name(f"{p.stem}.progress.json")
    files += [progress, progress.with_name(progress.name + ".tmp")]
    for final in (outputs.class_path, outputs.proba_path):
        tmp = _tmp_cog(final)
        # GDAL's COG driver builds the overviews in "<file>.ovr.tmp" (and ".msk.ovr.tmp").
        files += [tmp, Path(f"{tmp}.ovr.tmp"), Path(f"{tmp}.msk.ovr.tmp")]
    # Format 1 partial files, deleted when found.
    files += [p.with_name(f"{p.stem}.partial.tif"), p.with_name(f"{p.stem}_proba.partial.tif")]
    return files, [p.with_name(f"{p.stem}.partial")]


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint's canonical JSON (sorted keys; non-JSON values as ``str``)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalise(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON, so that comparisons see what was stored."""
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries, on POSIX) to disk."""
    if os.name != "posix" and path.is_dir():  # pragma: no cover - folders cannot be opened
        return
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
    _fsync(path.parent)  # the rename itself


def _read_progress(path: Path) -> dict[str, Any] | None:
    """The progress record, or None when it is garbled (it is then ignored: the map restarts).

    Raises:
        DataError: the record cannot be read (permissions, I/O error).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the progress record ({e.strerror or e})") from e
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s: garbled progress record (%s); the map starts again", path, e)
        return None
    if not isinstance(record, dict):
        log.warning("%s: garbled progress record; the map starts again", path)
        return None
    return record


def _mismatch_message(what: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    diffs = "; ".join(f"{k}: stored {stored.get(k)!r}, now {current.get(k)!r}" for k in keys[:5])
    return (
        f"{what} was made with other settings ({diffs or 'fingerprint differs'}); "
        f"delete it or pass on_existing='overwrite' to start again"
    )


def _reason(exc: BaseException) -> str:
    """The most telling message of an I/O failure: GDAL's own (in the chain) before rasterio's."""
    messages = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)
        if text and "See previous exception" not in text:
            messages.append(" ".join(text.split()))
        e = e.__cause__ or e.__context__
    return "; ".join(dict.fromkeys(messages[::-1])) or type(exc).__name__


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn a failed write into a ``MapWriteError`` naming ``path`` (one line, resumable)."""
    try:
        yield
    except MapWriteError:
        raise
    except (OSError, rasterio.errors.RasterioError, CPLE_BaseError) as exc:
        err = exc.errno if isinstance(exc, OSError) else None
        raise MapWriteError(
            err,
            f"{path}: cannot write {what} ({_reason(exc)}); free space or fix the folder, then "
            f"run the same command again: the map resumes from the last complete block row",
        ) from exc


def _cog_copy(
    src_path: Path, dst_path: Path, block_px: int, compress: str, resampling: str
) -> None:
    """Convert a raster (here a VRT of the block rows) to a COG with overviews (GDAL streams it).

    ``dst_path`` is removed first: GDAL would open an existing one to delete it with the
    files it names.
    """
    dst_path.unlink(missing_ok=True)
    rasterio.shutil.copy(
        src_path, dst_path, driver="COG", blocksize=block_px, compress=compress,
        overview_resampling=resampling, overviews="AUTO", bigtiff="IF_SAFER",
    )  # fmt: skip


class StreamingMapWriter:
    """Write a class map (and optionally probabilities) row block by row block, resumably.

    Rows arrive top to bottom through ``write_rows``. Each complete block row (``block_px``
    rows, full width) is written as files of its own in the partial folder
    ``<stem>.partial/`` (``rows-<first row>.tif``, ``rows-<first row>_proba.tif``), closed,
    fsynced, and only then recorded in ``<stem>.progress.json`` (atomic replace, with the
    settings fingerprint and each block row's file sizes). ``finish`` assembles the block rows
    (a VRT) into COGs, writes the ``.qml`` style and the PNG preview, and removes the partial
    folder and the record. Memory: ``(1 + K) * block_px * width`` bytes of pending rows.

    **Why one file per block row.** A recorded block row's files are written once and never
    opened for writing again, so no failure can damage them: a full disk, a read-only folder,
    a crash or a SIGKILL at any point (even inside GDAL, even between the data and the record)
    leaves at worst an incomplete file *after* the recorded rows, which the next run writes
    again. (Format 1 updated one tiled GeoTIFF in place: a write that failed for lack of space
    could leave its TIFF directory half rewritten, and the recorded rows unreadable.)

    Resuming (``on_existing="resume"``): a progress record with the same fingerprint is
    checked block row by block row, in order: each recorded file must exist with its recorded
    size and open as a raster of the expected shape. ``resume_row`` is the end of the last
    intact block row (a multiple of ``block_px``): a file damaged or removed since it was
    recorded costs that block row and the ones after it, never more, and never an
    ``overwrite``. Rows from ``resume_row`` on are written again, and the final files are the
    same bytes as an uninterrupted run's. A garbled record, or one of format 1, restarts the
    map at row 0 (with a warning). A finished class map whose ``FLAIRKIT_FINGERPRINT`` tag
    matches makes the writer finished from the start (``resume_row == height``); ``finish``
    interrupted midway is simply run again.

    The class map is uint8 with the class colour table, class names as band tags and nodata
    255. The probabilities file has one uint8 band per class (``round(p * 255)``), named after
    the classes, and no nodata value (0 is a valid probability): no-data pixels are 0 in every
    band and 255 in the class map.

    Args:
        class_path: final class map ``.tif``; the other paths derive from it
            (``map_output_paths``, ``map_written_paths``).
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
        IsADirectoryError: ``class_path`` is a folder.
        MapWriteError: a file cannot be written (the message names it).
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
        self.partial_dir = self.outputs.class_path.with_name(f"{stem}.partial")
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
        self._segments: list[dict[str, Any]] = []  # recorded block rows: row, rows, bytes
        self._rows_in_file = 0  # rows in block-row files, a multiple of block_px
        self._next_row = 0  # rows received
        self._is_finished = False
        path = self.outputs.class_path
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR,
                "is a folder; give the class map's file name (e.g. map.tif)",
                str(path),
            )
        with _writing(path.parent, "the output folder"):
            path.parent.mkdir(parents=True, exist_ok=True)
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
        """The files this writer may have left (outputs, record, temporaries, format 1)."""
        files, _ = map_written_paths(self.outputs.class_path)
        o = self.outputs
        if o.proba_path is None:  # a proba file of another run is not this writer's
            files = [p for p in files if p != map_output_paths(o.class_path, True).proba_path]
        return files

    def _partial_files(self) -> list[Path]:
        if not self.partial_dir.is_dir():
            return []
        return sorted(p for p in self.partial_dir.iterdir() if _PARTIAL_FILE.fullmatch(p.name))

    def _remove_partial(self) -> None:
        """Delete the partial folder's files (only the writer's own) and the folder if empty."""
        for p in self._partial_files():
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is in it, kept
            self.partial_dir.rmdir()

    def _start(self, on_existing: str) -> None:
        existing = [p for p in self._all_paths() if p.exists()] + self._partial_files()
        if on_existing == "error" and existing:
            raise FileExistsError(f"{existing[0]} exists; pass on_existing='resume' or 'overwrite'")
        if on_existing == "overwrite":
            for p in existing:
                p.unlink(missing_ok=True)
            self._remove_partial()
        elif self.outputs.class_path.exists():
            self._check_finished()
            return
        elif self.progress_path.exists() and self._resume():
            return
        self._create()

    def _check_finished(self) -> None:
        """Accept a finished class map made with the same fingerprint; clean leftovers."""
        path = self.outputs.class_path
        try:
            with rasterio.open(path) as src:
                digest = src.tags().get(FINGERPRINT_TAG)
        except rasterio.errors.RasterioError as exc:
            raise ResumeMismatchError(
                f"{path}: exists and is not a finished map ({_reason(exc)}); choose another "
                f"output path, or pass on_existing='overwrite' to replace it"
            ) from exc
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
        self._remove_partial()
        self.progress_path.unlink(missing_ok=True)
        self._next_row = self._rows_in_file = self.georef.height
        self._is_finished = True
        log.info("%s already finished with the same settings", path)

    def _resume(self) -> bool:
        """Continue after the last intact recorded block row; False to start again at row 0."""
        record = _read_progress(self.progress_path)
        if record is None:
            return False
        if record.get("format") != _PROGRESS_FORMAT:
            log.warning(
                "%s: progress record of format %r (an older flairkit); the map starts again",
                self.progress_path, record.get("format"),
            )  # fmt: skip
            return False
        if record.get("fingerprint") != self.fingerprint:
            raise ResumeMismatchError(
                _mismatch_message(
                    f"{self.progress_path} (partial map)",
                    _flatten(record.get("fingerprint", {})),
                    _flatten(self.fingerprint),
                )
            )
        self._segments = self._intact_segments(record.get("segments") or [])
        self._rows_in_file = self._next_row = sum(s["rows"] for s in self._segments)
        with _writing(self.partial_dir, "the partial folder"):
            self.partial_dir.mkdir(exist_ok=True)  # removed meanwhile: nothing was kept
        if self._rows_in_file != record.get("rows_done"):
            self._record()  # the record now says what is really on disk
        log.info(
            "%s: resuming at row %d of %d", self.partial_dir, self._rows_in_file, self.georef.height
        )  # fmt: skip
        return True

    def _intact_segments(self, recorded: Sequence[Any]) -> list[dict[str, Any]]:
        """The recorded block rows, in order, up to the first one whose files are not intact."""
        intact: list[dict[str, Any]] = []
        row = 0
        for seg in recorded:
            rows = min(self.block_px, self.georef.height - row)
            paths = self._segment_paths(row)
            ok = (
                isinstance(seg, dict)
                and seg.get("row") == row
                and seg.get("rows") == rows > 0
                and isinstance(seg.get("bytes"), list)
                and len(seg["bytes"]) == len(paths)
            )
            problem = None if ok else "recorded out of order"
            for path, size in zip(paths, seg["bytes"] if ok else [], strict=True):
                problem = self._segment_problem(path, size, rows)
                if problem:
                    break
            if problem:
                log.warning(
                    "%s: block row at row %d %s; rows from %d on are computed again",
                    self.partial_dir, row, problem, row,
                )  # fmt: skip
                break
            intact.append({"row": row, "rows": rows, "bytes": list(seg["bytes"])})
            row += rows
        return intact

    def _segment_problem(self, path: Path, size: Any, rows: int) -> str | None:
        """Why a recorded block-row file is not usable, or None when it is intact.

        Block-row files are never written again once recorded, so their size and header tell
        whether anything happened to them since (truncated, replaced, deleted).
        """
        try:
            actual = path.stat().st_size
        except OSError:
            return f"file {path.name} is missing"
        if actual != size:
            return f"file {path.name} has {actual} bytes, {size} were recorded"
        count = self.num_classes if path.name.endswith("_proba.tif") else 1
        try:
            with rasterio.open(path) as src:
                shape = (src.count, src.height, src.width, src.dtypes[0])
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            return f"file {path.name} cannot be opened ({_reason(exc)})"
        if shape != (count, rows, self.georef.width, "uint8"):
            return f"file {path.name} is {shape}, not {(count, rows, self.georef.width, 'uint8')}"
        return None

    # -- block-row files -------------------------------------------------------------------

    def _segment_paths(self, row: int) -> list[Path]:
        name = f"rows-{row:08d}"
        paths = [self.partial_dir / f"{name}.tif"]
        if self.write_proba:
            paths.append(self.partial_dir / f"{name}_proba.tif")
        return paths

    def _profile(self, count: int, rows: int) -> dict[str, Any]:
        g = self.georef
        a, b, c, d, e, f = g.transform
        return dict(
            driver="GTiff", width=g.width, height=rows, count=count, dtype="uint8", crs=g.crs,
            transform=Affine(a, b, c + b * self._rows_in_file, d, e, f + e * self._rows_in_file),
            tiled=True, blockxsize=self.block_px, blockysize=self.block_px, compress="ZSTD",
            interleave="pixel", bigtiff="IF_SAFER",
        )  # fmt: skip

    def _create(self) -> None:
        """Start from row 0: an empty partial folder, then record 0 rows done."""
        outputs = set(vars(map_output_paths(self.outputs.class_path, True)).values())
        for p in self._all_paths():
            if p not in outputs and p != self.progress_path and os.path.lexists(p):
                p.unlink()  # leftovers: temporaries, format 1 partial files
        self._remove_partial()
        with _writing(self.partial_dir, "the partial folder"):
            self.partial_dir.mkdir(exist_ok=True)
        self._segments = []
        self._rows_in_file = self._next_row = 0
        self._record()

    def _record(self) -> None:
        record = {
            "format": _PROGRESS_FORMAT,
            "rows_done": self._rows_in_file,
            "height": self.georef.height,
            "fingerprint": self.fingerprint,
            "digest": self.digest,
            "segments": self._segments,
        }
        with _writing(self.progress_path, "the progress record"):
            _write_progress(self.progress_path, record)

    def _checkpoint(self) -> None:
        """Make the new block-row files' names durable, then record the rows they hold."""
        with _writing(self.partial_dir, "the partial folder"):
            _fsync(self.partial_dir)
        self._record()

    def close(self) -> None:
        """Nothing stays open between writes; kept for the context manager. Idempotent."""

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
            MapWriteError: a block-row file or the record cannot be written (the rows recorded
                before stay intact: the map resumes from them).
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
        """Write the pending block row as new files (fsynced); recorded by ``_checkpoint``."""
        paths = self._segment_paths(self._rows_in_file)
        sizes = []
        with _writing(paths[0], "a block row of the class map"):
            classes = self._pending_classes[None, :block_rows]
            profile = self._profile(1, block_rows)
            sizes.append(_write_segment(paths[0], profile, classes, self._tag_classes))
        if self._pending_proba is not None:
            with _writing(paths[1], "a block row of the probabilities"):
                proba = self._pending_proba[:, :block_rows]
                profile = self._profile(self.num_classes, block_rows)
                sizes.append(_write_segment(paths[1], profile, proba, self._tag_proba))
        self._segments.append({"row": self._rows_in_file, "rows": block_rows, "bytes": sizes})
        self._rows_in_file += block_rows

    def _tag_classes(self, dst: Any) -> None:
        dst.nodata = NODATA_CLASS
        dst.write_colormap(1, {c.value: (*hex_to_rgb(c.colour), 255) for c in self.class_table})
        dst.update_tags(**{FINGERPRINT_TAG: self.digest})
        dst.update_tags(1, **{f"CLASS_{c.value}": c.name for c in self.class_table})

    def _tag_proba(self, dst: Any) -> None:
        dst.update_tags(**{FINGERPRINT_TAG: self.digest})
        for i, c in enumerate(self.class_table, start=1):
            dst.set_band_description(i, c.name)

    def _write_vrt(self, proba: bool) -> Path:
        """A VRT stacking the recorded block rows (metadata from the first block row's file)."""
        vrt = self.partial_dir / ("proba.vrt" if proba else "classes.vrt")
        first = self._segment_paths(0)[1 if proba else 0]
        # GDAL describes the first block row (colours, tags, names) in memory; the XML is then
        # edited and written by Python, whose write errors are never silent.
        with MemoryFile(ext=".vrt") as mem:
            rasterio.shutil.copy(first, mem.name, driver="VRT")
            root = ET.fromstring(bytes(mem.getbuffer()))
        root.set("rasterYSize", str(self.georef.height))
        for md in root.findall("Metadata"):
            if md.get("domain") == "IMAGE_STRUCTURE":  # the block rows' layout, not the map's
                root.remove(md)
        width = str(self.georef.width)
        for band in root.findall("VRTRasterBand"):
            for child in list(band):
                if child.tag.endswith("Source"):
                    band.remove(child)
            for seg in self._segments:
                path = self._segment_paths(seg["row"])[1 if proba else 0]
                rows = str(seg["rows"])
                source = ET.SubElement(band, "SimpleSource")
                ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = path.name
                ET.SubElement(source, "SourceBand").text = band.get("band")
                ET.SubElement(
                    source, "SourceProperties", RasterXSize=width, RasterYSize=rows,
                    DataType="Byte", BlockXSize=str(self.block_px), BlockYSize=str(self.block_px),
                )  # fmt: skip
                ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=width, ySize=rows)
                ET.SubElement(
                    source, "DstRect", xOff="0", yOff=str(seg["row"]), xSize=width, ySize=rows
                )
        _write_bytes(vrt, ET.tostring(root))
        return vrt

    def finish(self) -> MapOutputs:
        """Convert to COGs, write the QGIS style and the preview, remove the partial files.

        Safe to call again after an interruption (and on an already finished writer: missing
        style or preview files are written again).

        Returns:
            The output paths.

        Raises:
            RuntimeError: if rows are missing.
            MapWriteError: an output cannot be written (run again: only ``finish`` is redone).
        """
        o = self.outputs
        if self._is_finished:
            if not o.qml_path.exists():
                with _writing(o.qml_path, "the QGIS style"):
                    write_qml(o.qml_path, self.class_table)
            if not o.preview_path.exists():
                with _writing(o.preview_path, "the preview"):
                    write_preview_png(
                        o.class_path, o.preview_path, self.class_table, self.preview_max_px
                    )
            return o
        if self._next_row < self.georef.height or self._rows_in_file < self.georef.height:
            raise RuntimeError(
                f"{self.partial_dir}: only {self._next_row} of {self.georef.height} rows written"
            )
        if o.proba_path is not None:
            tmp = _tmp_cog(o.proba_path)
            with _writing(tmp, "the probabilities COG"):
                vrt = self._write_vrt(proba=True)
                _cog_copy(vrt, tmp, self.cog_block_px, self.compress, "AVERAGE")
                _verify_copy(vrt, tmp, self.cog_block_px)
                _fsync(tmp)
                os.replace(tmp, o.proba_path)
        tmp = _tmp_cog(o.class_path)
        with _writing(tmp, "the class map COG"):
            # MODE keeps overview pixels real classes (and ignores nodata).
            vrt = self._write_vrt(proba=False)
            _cog_copy(vrt, tmp, self.cog_block_px, self.compress, "MODE")
            _verify_copy(vrt, tmp, self.cog_block_px)
        with _writing(o.qml_path, "the QGIS style"):
            write_qml(o.qml_path, self.class_table)
        with _writing(o.preview_path, "the preview"):
            write_preview_png(tmp, o.preview_path, self.class_table, self.preview_max_px)
        # The class map appears last: its presence means every other output is complete.
        with _writing(o.class_path, "the class map"):
            _fsync(tmp)
            os.replace(tmp, o.class_path)
            _fsync(o.class_path.parent)
        self._remove_partial()
        self.progress_path.unlink(missing_ok=True)
        self._is_finished = True
        log.info("wrote %s", o.class_path)
        return o


def _write_segment(path: Path, profile: Mapping[str, Any], data: np.ndarray, tag: Any) -> int:
    """Write one block-row file: encoded in memory by GDAL, written and fsynced by Python.

    GDAL reports no error when the last write of a file fails as it closes (rasterio ignores
    the status of ``GDALClose``): with a full disk, a file written straight by GDAL could be
    cut short without a word. Encoding in memory and writing the bytes from Python makes any
    failure an ``OSError``.

    Returns:
        The file's size in bytes.
    """
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            tag(dst)
        payload = bytes(mem.getbuffer())
    _write_bytes(path, payload)
    return len(payload)


def _write_bytes(path: Path, payload: bytes) -> None:
    """Write a new file and fsync it (tests replace this function to inject write failures)."""
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _verify_copy(src_path: Path, dst_path: Path, block_px: int) -> None:
    """Check that ``dst_path`` holds the pixels of ``src_path``, block by block.

    GDAL writes a COG's last blocks and its directory as it closes the file, and a failure
    there is not reported (see ``_write_segment``): a full disk could leave a COG whose last
    blocks are missing or zero. Decoding it again costs a fraction of its encoding.

    Raises:
        OSError: the file differs from its source, or cannot be read back.
    """
    with rasterio.open(src_path) as src, rasterio.open(dst_path) as dst:
        shape = (src.count, src.height, src.width)
        needs_overviews = max(shape[1:]) > block_px  # overviews="AUTO": until one block
        if (dst.count, dst.height, dst.width) != shape or needs_overviews > bool(dst.overviews(1)):
            raise OSError(f"{dst_path}: incomplete after writing (expected {shape} with overviews)")
        for row in range(0, src.height, block_px):
            for col in range(0, src.width, block_px):
                window = Window(
                    col, row, min(block_px, src.width - col), min(block_px, src.height - row)
                )
                if not np.array_equal(src.read(window=window), dst.read(window=window)):
                    raise OSError(
                        f"{dst_path}: block at row {row}, column {col} differs from the block "
                        "rows after writing"
                    )


def _flatten(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """One level of ``user`` keys lifted to the top, for readable mismatch messages."""
    flat = {k: v for k, v in fingerprint.items() if k != "user"}
    flat.update({f"user.{k}": v for k, v in dict(fingerprint.get("user", {})).items()})
    return flat
