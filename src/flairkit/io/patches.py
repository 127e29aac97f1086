"""The official patch layout: folders or CSV lists -> PatchRef -> RawSample.

Layout (spec section 1): ``<root>/<DOMAIN>-<YEAR>_<MOD>/<ROI>/<DOMAIN>-<YEAR>_<MOD>_<ROI>_<ROW>-<COL>.tif``,
with ``195X`` in place of the year for the historical imagery. A scanned catalog stores
only which modalities each patch has and rebuilds paths from that grammar, so indexing
241,100 patches x 10 files stays small enough to copy into every loader worker.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flairkit.io.dates import DatesIndex
from flairkit.io.raster import DataError, count_nonfinite, read_geotiff, read_text_file
from flairkit.io.threads import default_num_threads, thread_pool
from flairkit.modalities import HISTORICAL_YEAR, Modality
from flairkit.sample import Georef, RawSample

log = logging.getLogger(__name__)

#: ``D`` and 3-digit département codes, several for merged départements (spec section 1.3).
_DOMAIN = r"D(?:\d{3})+"
_FOLDER_RE = re.compile(
    rf"^(?P<domain>{_DOMAIN})-(?P<year>\d{{4}}|195X)_(?P<mod>[A-Z0-9-]+_[A-Z0-9-]+)$"
)
_PATCH_ID_RE = re.compile(
    rf"^(?P<domain>{_DOMAIN})-(?P<year>\d{{4}}|195X)_(?P<roi>[^_]+)_(?P<rc>\d+-\d+)$"
)
_MODALITY_BY_KEY = {m.value: m for m in Modality}
# Shared instances: a catalog of 241,100 patches holds a handful of distinct modality sets.
_INTERNED: dict[frozenset[Modality], frozenset[Modality]] = {}


def _intern(mods: Iterable[Modality]) -> frozenset[Modality]:
    key = frozenset(mods)
    return _INTERNED.setdefault(key, key)


@dataclass(frozen=True, slots=True)
class PatchId:
    """The parts of a patch id ``<DOMAIN>-<YEAR>_<ROI>_<ROW>-<COL>`` (spec section 1.3).

    Attributes:
        domain: ``D`` and one 3-digit département code, or several concatenated for merged
            départements: ``D006``, ``D024047``.
        year: aerial survey year ``YYYY``, or ``195X`` in a historical file's name.
        roi: region of interest, e.g. ``FF-S1-14``.
        row_col: ``<ROW>-<COL>`` as written in the id (file names repeat it verbatim).
    """

    domain: str
    year: str
    roi: str
    row_col: str

    @property
    def row(self) -> int:
        """1-based row of the patch in its ROI."""
        return int(self.row_col.split("-", 1)[0])

    @property
    def col(self) -> int:
        """1-based column of the patch in its ROI."""
        return int(self.row_col.split("-", 1)[1])

    @property
    def departments(self) -> tuple[str, ...]:
        """The 3-digit département codes of the domain: ``("024", "047")`` for ``D024047``."""
        digits = self.domain[1:]
        return tuple(digits[i : i + 3] for i in range(0, len(digits), 3))

    @property
    def domain_year(self) -> str:
        """E.g. ``D006-2020``."""
        return f"{self.domain}-{self.year}"

    @property
    def zone_id(self) -> str:
        """``<DOMAIN>-<YEAR>_<ROI>``."""
        return f"{self.domain}-{self.year}_{self.roi}"


def parse_patch_id(patch_id: str, historical: bool = False) -> PatchId:
    """Split a patch id into its parts: the one place that reads the id grammar.

    Args:
        patch_id: ``<DOMAIN>-<YEAR>_<ROI>_<ROW>-<COL>``, e.g. ``D006-2020_FF-S1-14_5-5``.
        historical: also accept ``195X`` as the year (ids taken from historical file names).

    Raises:
        ValueError: the id breaks the grammar (the message quotes it).
    """
    match = _match_patch_id(patch_id, historical)
    return PatchId(match["domain"], match["year"], match["roi"], match["rc"])


def _match_patch_id(patch_id: str, historical: bool = False) -> re.Match[str]:
    """``parse_patch_id`` without building a PatchId: for paths of millions of files."""
    match = _PATCH_ID_RE.match(patch_id)
    if match is None or (match["year"] == HISTORICAL_YEAR and not historical):
        raise ValueError(
            f"patch id {patch_id!r} is not <DOMAIN>-<YEAR>_<ROI>_<ROW>-<COL> "
            "(DOMAIN is D and 3-digit département codes, e.g. D006-2020_FF-S1-14_5-5)"
        )
    return match


def department_of(patch_id: str) -> str:
    """The département (domain) code of a patch, e.g. ``D006`` or ``D024047``.

    Raises:
        ValueError: the id breaks the patch id grammar.
    """
    return _match_patch_id(patch_id)["domain"]


@dataclass(frozen=True, slots=True)
class PatchRef:
    """One patch: its id, where its files are, and its split.

    Attributes:
        patch_id: ``<DOMAIN>-<YEAR>_<ROI>_<ROW>-<COL>``.
        root: dataset root used to rebuild standard paths.
        modalities: modalities that have a file for this patch.
        split: ``train``, ``val``, ``test`` or ``None``.
        explicit_paths: paths that do not follow the layout grammar (from CSV lists).
    """

    patch_id: str
    root: str
    modalities: frozenset[Modality]
    split: str | None = None
    explicit_paths: tuple[tuple[Modality, str], ...] = field(default=(), compare=False)

    def _parts(self) -> PatchId:
        return parse_patch_id(self.patch_id)

    @property
    def domain(self) -> str:
        """Département code, e.g. ``D006`` or ``D024047``."""
        return department_of(self.patch_id)

    @property
    def year(self) -> str:
        """Aerial survey year, e.g. ``2020``."""
        return self._parts().year

    @property
    def domain_year(self) -> str:
        """E.g. ``D006-2020``."""
        return self._parts().domain_year

    @property
    def roi(self) -> str:
        """Region of interest, e.g. ``FF-S1-14``."""
        return self._parts().roi

    @property
    def zone_id(self) -> str:
        """``<DOMAIN>-<YEAR>_<ROI>``: patches of one zone share their Sentinel dates."""
        return self._parts().zone_id

    @property
    def row_col(self) -> tuple[int, int]:
        """1-based (row, col) of the patch in its ROI."""
        parts = self._parts()
        return parts.row, parts.col

    def path(self, modality: Modality) -> Path:
        """The file of a modality (whether or not it exists)."""
        return Path(self.path_str(modality))

    def path_str(self, modality: Modality) -> str:
        """``path`` as a string: a third of the cost, for loops over millions of files."""
        for m, p in self.explicit_paths:
            if m is modality:
                return p
        return os.path.join(self.root, standard_relpath(self.patch_id, modality))

    def with_split(self, split: str | None) -> PatchRef:
        """A copy with another split."""
        return PatchRef(self.patch_id, self.root, self.modalities, split, self.explicit_paths)


def standard_relpath(patch_id: str, modality: Modality) -> str:
    """Path of a patch's file relative to the root, following the official grammar."""
    match = _match_patch_id(patch_id)
    year = HISTORICAL_YEAR if modality is Modality.AERIAL_PAN else match["year"]
    folder = f"{match['domain']}-{year}_{modality.value}"
    return f"{folder}/{match['roi']}/{folder}_{match['roi']}_{match['rc']}.tif"


def parse_file_name(name: str) -> tuple[str, Modality] | None:
    """``(patch_id, modality)`` of an official file name, or None if it is not one.

    For the historical imagery the patch id carries ``195X``; callers match it to the survey year.
    """
    stem = name[:-4] if name.lower().endswith(".tif") else None
    if stem is None:
        return None
    parts = stem.split("_")
    if len(parts) != 5:
        return None
    domain_year, sensor, datatype, roi, rc = parts
    modality = _MODALITY_BY_KEY.get(f"{sensor}_{datatype}")
    if modality is None:
        return None
    return f"{domain_year}_{roi}_{rc}", modality


def scan_root(root: str | Path, progress: bool = False) -> list[PatchRef]:
    """Index a FLAIR-HUB root by walking its modality folders.

    Args:
        root: folder holding ``<DOMAIN>-<YEAR>_<MOD>/`` folders.
        progress: show a progress bar over folders.

    Returns:
        Patches sorted by id, split unset. A patch exists when any non-historical file does;
        a historical (``195X``) file is attached to every survey year of its domain.

    Raises:
        DataError: the root does not exist or holds no modality folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root is not a folder")
    folders = sorted(
        (e.name, m) for e in os.scandir(root) if e.is_dir() and (m := _FOLDER_RE.match(e.name))
    )
    folders = [(name, m) for name, m in folders if m["mod"] in _MODALITY_BY_KEY]
    if not folders:
        raise DataError(
            f"{root}: no <DOMAIN>-<YEAR>_<MODALITY> folder found; is this a FLAIR-HUB root?"
        )
    found: dict[str, set[Modality]] = {}
    historical: set[tuple[str, str, str]] = set()  # (domain, ROI, row-col) of each 195X file
    iterator: Iterable = folders
    if progress:
        from tqdm import tqdm

        iterator = tqdm(folders, desc="scanning", unit="folder")
    for name, match in iterator:
        modality = _MODALITY_BY_KEY[match["mod"]]
        for roi_entry in os.scandir(root / name):
            if not roi_entry.is_dir():
                continue
            for file_entry in os.scandir(roi_entry.path):
                parsed = parse_file_name(file_entry.name)
                if parsed is None or parsed[1] is not modality:
                    continue
                patch_id = parsed[0]
                try:
                    parts = parse_patch_id(patch_id, historical=modality is Modality.AERIAL_PAN)
                except ValueError:
                    log.debug("%s: not an official file name, skipped", file_entry.path)
                    continue
                if modality is Modality.AERIAL_PAN:
                    historical.add(_historical_key(parts))
                else:
                    found.setdefault(patch_id, set()).add(modality)
    refs = []
    for patch_id in sorted(found):
        mods = found[patch_id]
        if _historical_key(parse_patch_id(patch_id)) in historical:
            mods.add(Modality.AERIAL_PAN)
        refs.append(PatchRef(patch_id, str(root), _intern(mods)))
    log.info("scanned %s: %d patches in %d folders", root, len(refs), len(folders))
    return refs


def _historical_key(parts: PatchId) -> tuple[str, str, str]:
    """What a patch shares with its domain's historical (``195X``) file: all but the year."""
    return parts.domain, parts.roi, parts.row_col


def read_csv_lists(paths: Sequence[str | Path], root: str | Path | None = None) -> list[PatchRef]:
    """Read official CSV lists (``patch_id`` + one column per modality).

    ``,`` or ``;`` delimiters; relative paths resolve against the CSV's own folder; empty cells
    mean the modality is absent. The split comes from the file name (TRAIN, VALID/VAL, TEST).

    Args:
        paths: CSV files.
        root: dataset root for standard paths; default: inferred from the first listed file.

    Raises:
        DataError: a missing, empty, non-UTF-8 or unparseable CSV, no ``patch_id`` column or no
            modality column, a patch id that breaks the grammar. Unknown columns and a list
            without rows are logged as warnings.
    """
    import pandas as pd

    refs: list[PatchRef] = []
    for csv_path in map(Path, paths):
        text = read_text_file(csv_path, "CSV list")
        header = text.split("\n", 1)[0]
        if not header.strip():
            raise DataError(f"{csv_path}: CSV list is empty (no header line)")
        sep = ";" if header.count(";") > header.count(",") else ","
        try:
            frame = pd.read_csv(
                io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False
            )
        except Exception as exc:  # pandas raises several types (ParserError, EmptyDataError)
            raise DataError(f"{csv_path}: cannot read CSV ({' '.join(str(exc).split())})") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        if "patch_id" not in frame.columns:
            raise DataError(f"{csv_path}: no 'patch_id' column (columns: {list(frame.columns)})")
        columns = [(c, _MODALITY_BY_KEY[c]) for c in frame.columns if c in _MODALITY_BY_KEY]
        if not columns:
            raise DataError(
                f"{csv_path}: no modality column (columns: {list(frame.columns)}; a CSV list "
                f"has patch_id and some of {', '.join(_MODALITY_BY_KEY)})"
            )
        unknown = [c for c in frame.columns if c != "patch_id" and c not in _MODALITY_BY_KEY]
        if unknown:
            log.warning("%s: ignoring column(s) that name no modality: %s", csv_path, unknown)
        if frame.empty:
            log.warning("%s: CSV list holds no patch", csv_path)
        split = _split_from_name(csv_path.name)
        base = csv_path.parent
        # Short rows leave NaN cells even with keep_default_na=False: read them as empty.
        table = frame[["patch_id"] + [c for c, _ in columns]].fillna("").to_numpy()
        for patch_id, *cells in table:
            cell_by_mod = {m: cell for (_, m), cell in zip(columns, cells, strict=True)}
            refs.append(
                _ref_from_csv_row(patch_id.strip(), cell_by_mod, base, root, split, csv_path)
            )
    return refs


def _ref_from_csv_row(
    patch_id: str,
    cells: Mapping[Modality, str],
    base: Path,
    root: str | Path | None,
    split: str | None,
    csv_path: Path,
) -> PatchRef:
    try:
        parse_patch_id(patch_id)
    except ValueError as exc:
        raise DataError(f"{csv_path}: {exc}") from None
    # Plain string paths: pathlib costs ~1 ms a row here, minutes for the 241,100 rows.
    base_str = str(base)
    paths: dict[Modality, str] = {}
    for modality, cell in cells.items():
        cell = cell.strip()
        if cell and cell.lower() != "nan":
            paths[modality] = os.path.normpath(os.path.join(base_str, cell))  # as is if absolute
    if root is None and paths:
        first_mod, first_path = next(iter(paths.items()))
        root = _root_from_path(first_path, patch_id, first_mod)
    root_str = str(root or base)
    explicit = tuple(
        (m, p)
        for m, p in paths.items()
        if os.path.normpath(os.path.join(root_str, standard_relpath(patch_id, m))) != p
    )
    return PatchRef(patch_id, root_str, _intern(paths), split, explicit)


def _root_from_path(path: str, patch_id: str, modality: Modality) -> str:
    """The root a (normalised) path implies: what precedes the standard relative path."""
    rel = os.path.normpath(standard_relpath(patch_id, modality))
    if path.endswith(os.sep + rel):
        return path[: len(path) - len(rel) - 1] or os.sep
    return os.path.dirname(path)


def _split_from_name(name: str) -> str | None:
    upper = name.upper()
    for token, split in (("TRAIN", "train"), ("VALID", "val"), ("_VAL", "val"), ("TEST", "test")):
        if token in upper:
            return split
    return None


def read_patch(
    ref: PatchRef,
    modalities: Iterable[Modality],
    dates: DatesIndex | None = None,
    num_threads: int | None = None,
) -> RawSample:
    """Read the requested modalities of one patch at their native resolution.

    The files of a patch are read concurrently by a small thread pool: GDAL releases the GIL
    while it opens and decodes, so a loader with 0 workers still uses several cores, and on
    network storage the requests overlap.

    Args:
        ref: the patch.
        modalities: which files to read (inputs, S2 mask, labels).
        dates: acquisition-date tables; required when a time series is requested.
        num_threads: reader threads; default ``FLAIRKIT_READ_THREADS`` or 4. 1 reads serially.

    Returns:
        A RawSample in native dtype and on-disk band order.

    Raises:
        DataError: a file is missing or invalid, dates are missing or disagree with the band
            count, or the files do not cover the same footprint.
    """
    modalities = list(modalities)
    if dates is None and any(m.spec.is_time_series for m in modalities):
        raise ValueError(f"reading {[m.value for m in modalities]} needs a DatesIndex")
    threads = num_threads if num_threads is not None else default_num_threads()
    if threads > 1 and len(modalities) > 1:
        results = list(
            thread_pool("files", threads).map(lambda m: _read_one(ref, m, dates), modalities)
        )
    else:
        results = [_read_one(ref, m, dates) for m in modalities]
    arrays = {m: r[0] for m, r in zip(modalities, results, strict=True)}
    georefs = {m: r[1] for m, r in zip(modalities, results, strict=True)}
    sample_dates = {m: r[2] for m, r in zip(modalities, results, strict=True) if r[2] is not None}
    _check_footprints(ref, georefs)
    paths = {m: ref.path(m) for m in modalities}
    # Counted here, once per read, so that every consumer (the Preprocessor's nonfinite policy,
    # `flairkit show`) sees the same numbers; integer files cost nothing.
    nonfinite = {m: count_nonfinite(a) for m, a in arrays.items() if a.dtype.kind in "fc"}
    return RawSample(ref.patch_id, arrays, sample_dates, georefs, paths, nonfinite)


def _read_one(
    ref: PatchRef, modality: Modality, dates: DatesIndex | None
) -> tuple[np.ndarray, Georef, np.ndarray | None]:
    path = ref.path(modality)
    data, georef = read_geotiff(path, modality)
    when = None
    if modality.spec.is_time_series and dates is not None:
        when = dates.dates(modality, ref.patch_id)
        if len(when) != data.shape[0]:
            raise DataError(
                f"{path}: {data.shape[0]} dates in the file but {len(when)} in "
                f"{dates.gpkg_path(modality)} for {ref.patch_id}"
            )
    return data, georef, when


def _check_footprints(ref: PatchRef, georefs: Mapping[Modality, Georef]) -> None:
    """All modalities of a patch must cover the same ground (within a centimetre)."""
    items = list(georefs.items())
    if len(items) < 2:
        return
    first_mod, first = items[0]
    for modality, georef in items[1:]:
        if first.crs and georef.crs and first.crs != georef.crs:
            raise DataError(
                f"{ref.path(modality)}: CRS {georef.crs} differs from {first.crs} of {ref.path(first_mod)}"
            )
        if not np.allclose(georef.bounds, first.bounds, rtol=0, atol=0.01):
            raise DataError(
                f"{ref.path(modality)}: bounds {georef.bounds} differ from {first.bounds} "
                f"of {ref.path(first_mod)}"
            )


def iter_modalities(refs: Iterable[PatchRef]) -> Iterator[Modality]:
    """Every modality present in at least one of the patches."""
    seen: set[Modality] = set()
    for ref in refs:
        seen |= ref.modalities
    return iter(sorted(seen, key=list(Modality).index))
