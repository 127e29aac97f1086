"""Acquisition dates: the global metadata GeoPackages -> numpy dates -> day offsets.

The Sentinel date tables (spec section 1.5) hold one row per patch: ``patch_id`` and
``acquisition_dates``, a JSON object whose values are ``YYYYMMDD`` strings in band order.
Keys are string indices, observed from "1" but read here from whatever they start at.

Dates files (``RasterSource.dates_path`` of large-area maps, ``read_dates_file``) list one
acquisition date per date-block of bands, in band order: text with one ``YYYYMMDD`` or
``YYYY-MM-DD`` per line (blank and ``#`` lines ignored), or JSON (a list of such strings, or an
object ``{"1": "YYYYMMDD", ...}`` with keys sorted numerically).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from flairkit.io.raster import DataError, read_text_file
from flairkit.modalities import DEFAULT_REFERENCE_DATE, METADATA_DIR, Modality

log = logging.getLogger(__name__)

_ISO_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


def parse_yyyymmdd(values: Iterable[str], source: str = "") -> np.ndarray:
    """Parse ``YYYYMMDD`` strings into ``datetime64[D]``.

    A day ``00`` (seen in the historical-imagery table) becomes the 1st of the month.

    Raises:
        DataError: a value is not a valid ``YYYYMMDD`` date; the message names ``source``.
    """
    out = []
    for value in values:
        text = str(value).strip()
        if len(text) != 8 or not text.isdigit():
            raise DataError(f"{source}: {value!r} is not a YYYYMMDD date")
        day = text[6:] if text[6:] != "00" else "01"
        try:
            out.append(np.datetime64(f"{text[:4]}-{text[4:6]}-{day}", "D"))
        except ValueError as exc:
            raise DataError(f"{source}: {value!r} is not a valid date") from exc
    return np.array(out, dtype="datetime64[D]")


def parse_acquisition_dates(text: str, source: str = "") -> np.ndarray:
    """Parse one ``acquisition_dates`` JSON object into dates in band order.

    Keys are sorted numerically, so tables numbered from 0 or from 1 both work.
    """
    try:
        mapping = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: acquisition_dates is not JSON ({text!r:.80})") from exc
    if isinstance(mapping, list):
        return parse_yyyymmdd(mapping, source)
    if not isinstance(mapping, dict):
        raise DataError(f"{source}: acquisition_dates is not a JSON object")
    try:
        keys = sorted(mapping, key=int)
    except ValueError as exc:
        raise DataError(f"{source}: acquisition_dates keys are not integers") from exc
    return parse_yyyymmdd((mapping[k] for k in keys), source)


def read_dates_file(path: str | Path) -> np.ndarray:
    """Read a dates file: text (one date per line) or JSON (list, or ``{"1": date, ...}``).

    Dates are ``YYYYMMDD`` or ``YYYY-MM-DD``; in text files blank lines and ``#`` lines are
    skipped.

    Args:
        path: the dates file.

    Returns:
        ``datetime64[D]`` array in file order.

    Raises:
        DataError: the file is missing, empty, not UTF-8, not valid JSON, or holds an
            unparseable date; the message names the file (and the line, for text files).
    """
    text = read_text_file(path, "dates file")
    path = Path(path)
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        dates = _parse_json_dates(path, stripped)
    else:
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            value = line.strip()
            if value and not value.startswith("#"):
                values.append(parse_yyyymmdd([_compact(value)], f"{path} line {number}")[0])
        dates = np.array(values, dtype="datetime64[D]")
    if dates.size == 0:
        raise DataError(f"{path}: dates file holds no date")
    return dates


def _parse_json_dates(path: Path, text: str) -> np.ndarray:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: dates file is not valid JSON ({exc})") from exc
    if isinstance(data, dict):
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except ValueError as exc:
            raise DataError(f"{path}: JSON date keys are not integers") from exc
    if not isinstance(data, list):
        raise DataError(
            f"{path}: JSON dates must be a list or an object, got {type(data).__name__}"
        )
    return parse_yyyymmdd([_compact(str(v)) for v in data], str(path))


def _compact(value: str) -> str:
    """``YYYY-MM-DD`` -> ``YYYYMMDD``; anything else unchanged (checked by the parser)."""
    match = _ISO_DATE_RE.match(value.strip())
    return "".join(match.groups()) if match else value.strip()


def day_offsets(dates: np.ndarray, reference_date: str = DEFAULT_REFERENCE_DATE) -> np.ndarray:
    """Days from the reference day of each date's own year, as the benchmark computes them.

    ``reference_date`` is ``"MM-DD"``; with the default ``"05-15"``, 2021-03-01 gives -75
    (spec section 3.1).

    Returns:
        float32 array with the shape of ``dates``.
    """
    month, day = _parse_reference_date(reference_date)
    dates = np.asarray(dates, dtype="datetime64[D]")
    year_start = dates.astype("datetime64[Y]").astype("datetime64[M]")
    ref = (year_start + (month - 1)).astype("datetime64[D]") + (day - 1)
    return (dates - ref).astype(np.float32)


def _parse_reference_date(reference_date: str) -> tuple[int, int]:
    try:
        month_text, day_text = reference_date.split("-")
        month, day = int(month_text), int(day_text)
        np.datetime64(f"2001-{month:02d}-{day:02d}")
    except ValueError as exc:
        raise ValueError(f"reference date {reference_date!r} is not MM-DD") from exc
    return month, day


class DatesIndex:
    """Sentinel acquisition dates of a FLAIR-HUB root, loaded once per modality on demand.

    Only the raw JSON text is kept per patch (parsing 241,100 rows up front costs seconds and
    memory that a run on a few departments never needs); it is parsed on lookup.

    Args:
        root: dataset root (``GLOBAL_ALL_MTD/`` lives there), or ``None`` with ``metadata_dir``.
        metadata_dir: where the GeoPackages are, if not ``root / GLOBAL_ALL_MTD``.
        patch_ids: keep only these patches (saves memory on large tables).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        metadata_dir: str | Path | None = None,
        patch_ids: Iterable[str] | None = None,
    ) -> None:
        if metadata_dir is None:
            if root is None:
                raise ValueError("give a dataset root or a metadata_dir")
            metadata_dir = Path(root) / METADATA_DIR
        self.metadata_dir = Path(metadata_dir)
        self.patch_ids = frozenset(patch_ids) if patch_ids is not None else None
        self._tables: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()  # read_patch reads S2 and its mask in parallel threads

    def gpkg_path(self, modality: Modality) -> Path:
        """The GeoPackage holding a time-series modality's dates."""
        name = modality.spec.dates_gpkg
        if name is None:
            raise ValueError(f"{modality.value} has no acquisition-date table")
        return self.metadata_dir / name

    def load(self, modalities: Iterable[Modality]) -> DatesIndex:
        """Read the tables of these modalities now (e.g. before forking loader workers)."""
        for m in modalities:
            if m.spec.dates_gpkg:
                self._table(m)
        return self

    def _table(self, modality: Modality) -> dict[str, str]:
        path = self.gpkg_path(modality)
        key = path.name
        if key in self._tables:
            return self._tables[key]
        with self._lock:
            if key not in self._tables:
                self._tables[key] = self._read_table(path, modality)
        return self._tables[key]

    def _read_table(self, path: Path, modality: Modality) -> dict[str, str]:
        if not path.is_file():
            raise DataError(f"{path}: dates GeoPackage is missing (needed for {modality.value})")
        # Imported here: pyogrio pulls in pandas (~100 MB of RSS), which large-area maps and
        # anything reading the dates of a raster's own dates file never need.
        import pyogrio

        try:
            frame = pyogrio.read_dataframe(
                path, columns=["patch_id", "acquisition_dates"], read_geometry=False
            )
        except Exception as exc:  # pyogrio raises several types for bad files
            raise DataError(f"{path}: cannot read dates table ({exc})") from exc
        for column in ("patch_id", "acquisition_dates"):
            if column not in frame.columns:
                raise DataError(f"{path}: column {column!r} is missing")
        ids = frame["patch_id"].astype(str).to_numpy()
        texts = frame["acquisition_dates"].to_numpy()
        if self.patch_ids is not None:
            keep = np.fromiter((i in self.patch_ids for i in ids), bool, len(ids))
            ids, texts = ids[keep], texts[keep]
        log.debug("read %d date rows from %s", len(ids), path)
        return dict(zip(ids.tolist(), texts.tolist(), strict=True))

    def __getstate__(self) -> dict:
        # Locks do not pickle (DataLoader workers under "spawn"); each process gets its own.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def dates(self, modality: Modality, patch_id: str) -> np.ndarray:
        """Acquisition dates of a patch for a time-series modality, in band order.

        Raises:
            DataError: the table is missing or unreadable, or the patch is not in it.
        """
        table = self._table(modality)
        text = table.get(patch_id)
        if text is None:
            raise DataError(f"{self.gpkg_path(modality)}: patch {patch_id!r} is not in the table")
        return parse_acquisition_dates(text, f"{self.gpkg_path(modality)} [{patch_id}]")
