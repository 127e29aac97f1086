"""Verify a FLAIR-HUB dataset before a long run: every file, header, dates row and split table.

``check_dataset(source)`` opens ``source`` as ``flairkit info`` does (a root, a CSV list or a
folder of CSV lists), inspects every referenced file in a pool of workers (``check_files.py``)
and returns a :class:`CheckResult`: one :class:`Problem` per thing found wrong. One bad file
never stops the scan. The header check reads each file's TIFF directory (GDAL opens the files
whose layout it leaves to GDAL); ``deep=True`` also decodes every pixel through GDAL (tifffile
for the time series).

What "right" means comes from ``modalities.py`` (band names, dtypes, GSD) and the on-disk
contract (``shared/flairhub-format.md``): every modality of a patch covers the same
102.4 m x 102.4 m square (section 2), a time series holds ``T x bands-per-date`` bands with T the
number of its dates (section 2.2), labels are COSIA 0..18 and LPIS level 1/2/3 0..22/0..30/0..45
with 0 a real class and no nodata value (section 4.3), the S2 mask holds probabilities 0..100
(section 2.1). Pixel sizes and CRS are compared with the dataset's own most common value per
modality (the official 512/256/64/10 px and EPSG:2154 for the real data; synthetic sets are
smaller), and a note says when that differs from the official value.

Problem kinds (stable identifiers of the JSON report):

=================  ===========================================================================
``missing``        a referenced or expected file does not exist (a CSV cell, or a modality
                   that other patches of the dataset have)
``empty``          the file has 0 bytes
``not_tiff``       the file is not a TIFF (or GDAL reads it as another format)
``unreadable``     a TIFF that GDAL cannot open (damaged header or directory)
``truncated``      data blocks run past the end of the file (from the TIFF directory's block
                   table; GDAL-read layouts: first and last block; ``deep``: every strip)
``undecodable``    ``deep``: a data block fails to decode (corrupt compressed data)
``band_count``     band count differs from the modality's (a time series: not a positive
                   multiple of the bands per date)
``dtype``          a data type the modality does not allow
``size``           width x height differ from the dataset's usual size for the modality
``crs``            no CRS, or not the dataset's CRS
``footprint``      the file does not cover 102.4 m x 102.4 m, or its bounds differ from the
                   patch's other modalities by more than one pixel of the coarser file
``dates_file``     a dates GeoPackage is missing or unreadable (needed by a time series)
``dates_invalid``  a dates row does not parse (JSON, ``YYYYMMDD``)
``dates_missing``  a time-series file whose patch has no row in its dates GeoPackage
``dates_mismatch`` band count differs from ``dates x bands per date``
``nonfinite``      ``deep``: NaN or infinite values in a float raster
``label_range``    ``deep``: label values outside the task's classes
``mask_range``     ``deep``: S2 mask values outside 0..100
``split_file``     the split GeoPackage is unreadable or holds unknown split values
``split_missing``  a patch absent from the split GeoPackage (no split: left out of training)
``csv_list``       a CSV list that does not parse, or a patch listed twice
=================  ===========================================================================
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flairkit import __version__
from flairkit.check_files import MODALITIES, Job, Outcome, error_reason, inspect_chunk
from flairkit.io.catalog import GPKG_SPLIT_COLUMNS, Catalog
from flairkit.io.dates import parse_acquisition_dates
from flairkit.io.patches import PatchRef, read_csv_lists
from flairkit.io.raster import DataError
from flairkit.modalities import DEFAULT_CRS, METADATA_DIR, SPLIT_ALIASES, SPLIT_GPKG, Modality

log = logging.getLogger(__name__)

#: Every problem kind, in report order, with what it means.
PROBLEM_KINDS: dict[str, str] = {
    "missing": "file does not exist",
    "empty": "file has 0 bytes",
    "not_tiff": "not a TIFF file",
    "unreadable": "TIFF that GDAL cannot open",
    "truncated": "data blocks run past the end of the file",
    "undecodable": "data block fails to decode",
    "band_count": "wrong band count",
    "dtype": "wrong data type",
    "size": "wrong size in pixels",
    "crs": "missing or different CRS",
    "footprint": "wrong or disagreeing footprint",
    "dates_file": "dates GeoPackage missing or unreadable",
    "dates_invalid": "dates row does not parse",
    "dates_missing": "no dates row for a time series",
    "dates_mismatch": "band count does not match the dates",
    "nonfinite": "NaN or infinite values",
    "label_range": "label values outside the classes",
    "mask_range": "S2 mask values outside 0..100",
    "split_file": "split GeoPackage unreadable or wrong",
    "split_missing": "patch absent from the split GeoPackage",
    "csv_list": "CSV list does not parse",
}
#: The report's marker: an existing file without it is never overwritten (it may be an input).
REPORT_TOOL = "flairkit check"
#: Pool kind. The header reader is Python (it holds the GIL), so threads share one core;
#: processes use them all (bench/check.py measures both).
DEFAULT_EXECUTOR = "process"
#: Patches per task: amortises the hand-off to a worker, keeps the progress bar moving.
_CHUNK_PATCHES = 8
#: Tasks queued per worker: enough to keep them busy, few enough to bound memory.
_TASKS_PER_WORKER = 4
#: Rows of a dates GeoPackage read at a time (a full S2 table is ~241,100 x 1.5 kB of JSON).
_DATES_BATCH_ROWS = 50_000
_MOD_INDEX = {m: i for i, m in enumerate(MODALITIES)}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset.

    Attributes:
        kind: a key of ``PROBLEM_KINDS``.
        path: the file at fault (a raster, a CSV list, a GeoPackage), if any.
        patch_id: the patch concerned, if any.
        modality: the modality's official key, if any.
        detail: what is wrong, with the numbers.
    """

    kind: str
    path: str | None
    patch_id: str | None
    modality: str | None
    detail: str


@dataclass(frozen=True)
class CheckResult:
    """What ``check_dataset`` found.

    Attributes:
        source: the ROOT given.
        root: the dataset root the patches live in (metadata is read there).
        deep: whether every pixel was decoded.
        num_patches: patches checked.
        num_files: files expected (present or not).
        problems: everything found wrong, sorted by kind (``PROBLEM_KINDS`` order) then path.
        expected: the size (px) per modality and the CRS the files were compared with.
        notes: remarks that are not problems (e.g. sizes that are not the official ones).
        seconds: wall time of the check.
        executor: ``process`` or ``thread``.
        workers: size of the pool.
    """

    source: str
    root: str | None
    deep: bool
    num_patches: int
    num_files: int
    problems: tuple[Problem, ...]
    expected: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    executor: str = DEFAULT_EXECUTOR
    workers: int = 1

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind, in ``PROBLEM_KINDS`` order (kinds with none left out)."""
        counter = Counter(p.kind for p in self.problems)
        return {k: counter[k] for k in PROBLEM_KINDS if counter[k]}

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        return {
            "tool": REPORT_TOOL,
            "flairkit_version": __version__,
            "source": self.source,
            "root": self.root,
            "deep": self.deep,
            "ok": self.ok,
            "num_patches": self.num_patches,
            "num_files": self.num_files,
            "seconds": round(self.seconds, 3),
            "executor": self.executor,
            "workers": self.workers,
            "counts": self.counts(),
            "expected": self.expected,
            "notes": list(self.notes),
            "problems": [asdict(p) for p in self.problems],
        }


def check_dataset(
    source: str | Path,
    *,
    deep: bool = False,
    workers: int | None = None,
    executor: str = DEFAULT_EXECUTOR,
    progress: bool = False,
) -> CheckResult:
    """Check every file and metadata table of a dataset.

    Args:
        source: a dataset root, a CSV list or a folder of CSV lists (as ``Catalog.open``).
        deep: also decode every file in full and check its values.
        workers: pool size; default the number of usable CPUs.
        executor: ``process`` or ``thread`` pool.
        progress: a tqdm bar (files, rate, ETA) on stderr.

    Returns:
        The problems found and what the files were compared with.

    Raises:
        DataError: ``source`` does not exist, is not a dataset, or holds no patch.
        ValueError: ``workers`` < 1 or an unknown executor.
    """
    start = time.perf_counter()
    if executor not in ("process", "thread"):
        raise ValueError(f"executor must be 'process' or 'thread', got {executor!r}")
    num_workers = workers if workers is not None else _usable_cpus()
    if num_workers < 1:
        raise ValueError(f"workers must be >= 1, got {num_workers}")
    source = Path(source)
    catalog, problems = _open_catalog(source, progress)
    refs = catalog.refs
    if not refs and not problems:
        raise DataError(f"{source}: no patch found")
    num_dates = np.full((len(refs), len(MODALITIES)), -1, dtype=np.int32)
    if catalog.root is not None:
        problems += _check_split_table(catalog.root, refs)
        problems += _read_dates(catalog.root, refs, num_dates)
    present = [m for m in MODALITIES if any(m in r.modalities for r in refs)]
    problems += _missing_modalities(refs, present)
    files = _FileTable(len(refs))
    num_files = sum(m in r.modalities for r in refs for m in present)
    jobs = _jobs(refs, present, num_dates)
    problems += _run(jobs, num_files, files, deep, num_workers, executor, progress)
    expected, notes, norm_problems = _compare_with_usual(refs, files)
    return CheckResult(
        source=str(source),
        root=str(catalog.root) if catalog.root is not None else None,
        deep=deep,
        num_patches=len(refs),
        num_files=len(refs) * len(present),
        problems=_sorted_unique(problems + norm_problems),
        expected=expected,
        notes=tuple(notes),
        seconds=time.perf_counter() - start,
        executor=executor,
        workers=num_workers,
    )


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _sorted_unique(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    order = {k: i for i, k in enumerate(PROBLEM_KINDS)}
    unique: dict[tuple[str, str | None, str | None], Problem] = {}
    for p in problems:
        unique.setdefault((p.kind, p.path, p.patch_id), p)
    return tuple(
        sorted(unique.values(), key=lambda p: (order[p.kind], p.path or "", p.patch_id or ""))
    )


# ----------------------------------------------------------------------------------------------
# Catalog and metadata tables
# ----------------------------------------------------------------------------------------------


def _open_catalog(source: Path, progress: bool) -> tuple[Catalog, list[Problem]]:
    """The catalog as ``Catalog.open`` builds it, but a bad CSV list is a problem, not a stop."""
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.is_file() and source.suffix.lower() == ".csv":
        return _catalog_from_lists([source])
    if source.is_dir() and not any(source.glob("D*_*")) and list(source.glob("*.csv")):
        return _catalog_from_lists(sorted(source.glob("*.csv")))
    catalog = Catalog.scan(source, split=None, progress=progress)
    # CSV lists kept inside a root (the synthetic sets have csv/) must parse and point at files
    # that exist.
    lists = sorted((source / "csv").glob("*.csv")) + sorted(source.glob("*.csv"))
    if not lists:
        return catalog, []
    listed, problems = _catalog_from_lists(lists)
    known = {r.path_str(m) for r in catalog.refs for m in r.modalities}
    for ref in listed.refs:
        for m in ref.modalities:
            path = ref.path_str(m)
            if path not in known and not os.path.exists(path):
                detail = "listed in a CSV list but absent"
                problems.append(Problem("missing", path, ref.patch_id, m.value, detail))
    return catalog, problems


def _catalog_from_lists(lists: Sequence[Path]) -> tuple[Catalog, list[Problem]]:
    """Parse each list on its own so that one bad list is reported and the others checked."""
    problems: list[Problem] = []
    refs: dict[str, PatchRef] = {}
    listed_in: dict[str, Path] = {}
    for csv_path in lists:
        try:
            parsed = read_csv_lists([csv_path])
        except (DataError, ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
            problems.append(
                Problem("csv_list", str(csv_path), None, None, error_reason(exc, csv_path))
            )
            continue
        for ref in parsed:
            if ref.patch_id in refs:
                detail = f"patch listed again (first in {listed_in[ref.patch_id]})"
                problems.append(Problem("csv_list", str(csv_path), ref.patch_id, None, detail))
                continue
            refs[ref.patch_id] = ref
            listed_in[ref.patch_id] = csv_path
    ordered = tuple(sorted(refs.values(), key=lambda r: r.patch_id))
    root = Path(ordered[0].root) if ordered else None
    return Catalog(ordered, root), problems


def _check_split_table(root: Path, refs: Sequence[PatchRef]) -> list[Problem]:
    """The split GeoPackage, where present: readable, known values, every patch listed."""
    path = root / METADATA_DIR / SPLIT_GPKG
    if not path.exists():
        return []
    import pyogrio

    def problem(detail: str, patch_id: str | None = None) -> Problem:
        return Problem("split_file", str(path), patch_id, None, detail)

    try:
        frame = pyogrio.read_dataframe(path, read_geometry=False)
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types for bad files
        return [problem(f"cannot read the split table ({error_reason(exc, path)})")]
    if "patch_id" not in frame.columns:
        return [problem(f"no 'patch_id' column (columns: {list(frame.columns)})")]
    columns = [c for c in GPKG_SPLIT_COLUMNS if c in frame.columns]
    if not columns:
        return [problem(f"no split column (expected one of {', '.join(GPKG_SPLIT_COLUMNS)})")]
    ids = frame["patch_id"].astype(str)
    problems = [problem("patch listed twice", pid) for pid in ids[ids.duplicated()].unique()]
    for column in columns:
        values = frame[column]
        text = values.astype(str).str.strip().str.lower()
        bad = (~(values.isna() | (text == "") | text.isin(list(SPLIT_ALIASES)))).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            problems.append(
                problem(
                    f"{column}: {int(bad.sum())} unknown values, e.g. {ids.iloc[first]}: "
                    f"{values.iloc[first]!r} (use train, valid, test)"
                )
            )
    listed = set(ids)
    problems.extend(
        Problem("split_missing", str(path), r.patch_id, None, "no row in the split table")
        for r in refs
        if r.patch_id not in listed
    )
    return problems


def _read_dates(root: Path, refs: Sequence[PatchRef], num_dates: np.ndarray) -> list[Problem]:
    """Fill ``num_dates[patch, modality]`` from the dates GeoPackages; return their problems.

    Rows are parsed once per distinct text: all patches of a ROI share their dates (spec
    section 1.5), so 241,100 rows hold a few thousand distinct series.
    """
    series = [m for m in MODALITIES if m.spec.is_time_series and m.spec.dates_gpkg]
    users: dict[str, list[Modality]] = {}
    for m in series:
        if any(m in r.modalities for r in refs):
            users.setdefault(str(m.spec.dates_gpkg), []).append(m)
    index = {r.patch_id: i for i, r in enumerate(refs)}
    problems: list[Problem] = []
    for name, mods in users.items():
        path = root / METADATA_DIR / name
        needed_by = f"needed by {', '.join(m.value for m in mods)}"
        parsed: dict[Any, int | str] = {}  # JSON text -> number of dates, or why it is bad
        seen = np.zeros(len(refs), dtype=bool)
        try:
            for ids, texts in _dates_rows(path):
                for pid, text in zip(ids, texts, strict=True):
                    i = index.get(pid)
                    if i is None or seen[i]:
                        continue
                    seen[i] = True
                    if text not in parsed:
                        try:
                            parsed[text] = len(parse_acquisition_dates(text, str(path)))
                        except DataError as exc:
                            parsed[text] = error_reason(exc, path)
                    outcome = parsed[text]
                    if isinstance(outcome, str):
                        problems.append(Problem("dates_invalid", str(path), pid, None, outcome))
                        continue
                    for m in mods:
                        num_dates[i, _MOD_INDEX[m]] = outcome
        except DataError as exc:
            detail = f"{error_reason(exc, path)} ({needed_by})"
            problems.append(Problem("dates_file", str(path), None, None, detail))
            continue
        for i in np.flatnonzero(~seen).tolist():
            ref = refs[i]
            for m in mods:
                if m in ref.modalities:
                    detail = f"patch {ref.patch_id} has no row in {path}"
                    problems.append(
                        Problem("dates_missing", ref.path_str(m), ref.patch_id, m.value, detail)
                    )
    return problems


def _dates_rows(path: Path) -> Iterator[tuple[list[str], list[Any]]]:
    """(patch ids, acquisition_dates texts) of a dates GeoPackage, a batch at a time.

    Raises:
        DataError: missing or unreadable file, or a column is missing.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing")
    import pyogrio

    try:
        total = pyogrio.read_info(path)["features"]
    except Exception as exc:  # noqa: BLE001 - pyogrio raises several types for bad files
        raise DataError(f"{path}: cannot read ({error_reason(exc, path)})") from exc
    for skip in range(0, max(total, 1), _DATES_BATCH_ROWS):
        try:
            frame = pyogrio.read_dataframe(
                path, read_geometry=False, skip_features=skip, max_features=_DATES_BATCH_ROWS
            )
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: cannot read ({error_reason(exc, path)})") from exc
        for column in ("patch_id", "acquisition_dates"):
            if column not in frame.columns:
                raise DataError(f"{path}: no {column!r} column")
        yield frame["patch_id"].astype(str).tolist(), frame["acquisition_dates"].tolist()


def _missing_modalities(refs: Sequence[PatchRef], present: Sequence[Modality]) -> list[Problem]:
    """A patch without a modality that other patches have: its file is missing."""
    problems = []
    for ref in refs:
        for m in present:
            if m not in ref.modalities:
                detail = f"no {m.value} file for this patch (other patches have one)"
                problems.append(Problem("missing", ref.path_str(m), ref.patch_id, m.value, detail))
    return problems


# ----------------------------------------------------------------------------------------------
# The pool
# ----------------------------------------------------------------------------------------------


def _jobs(
    refs: Sequence[PatchRef], present: Sequence[Modality], num_dates: np.ndarray
) -> Iterator[Job]:
    for i, ref in enumerate(refs):
        files = tuple(
            (_MOD_INDEX[m], ref.path_str(m), int(num_dates[i, _MOD_INDEX[m]]))
            for m in present
            if m in ref.modalities
        )
        yield i, ref.patch_id, files


class _FileTable:
    """Width, height and CRS of every file, as small arrays (patch x modality): 2.4 M files
    would take ~0.5 GB as Python tuples."""

    def __init__(self, num_patches: int) -> None:
        shape = (num_patches, len(MODALITIES))
        self.width = np.full(shape, -1, dtype=np.int32)
        self.height = np.full(shape, -1, dtype=np.int32)
        self.crs = np.full(shape, -1, dtype=np.int16)  # -1: no header; else index in labels
        self.crs_labels: list[str | None] = []

    def record(self, index: int, rows: Sequence[tuple[int, int, int, str | None]]) -> None:
        for mod_index, width, height, crs in rows:
            self.width[index, mod_index] = width
            self.height[index, mod_index] = height
            if crs not in self.crs_labels:
                self.crs_labels.append(crs)
            self.crs[index, mod_index] = self.crs_labels.index(crs)


def _run(
    jobs: Iterator[Job],
    num_files: int,
    files: _FileTable,
    deep: bool,
    workers: int,
    executor: str,
    progress: bool,
) -> list[Problem]:
    """Inspect every job's files in a pool; fill ``files``; return the problems found.

    Jobs are built as the pool asks for them and at most ``_TASKS_PER_WORKER`` chunks per
    worker wait in the queue: the 2.4 M paths of the real dataset never sit in memory at once.
    """
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    problems: list[Problem] = []
    bar = None
    pool: Executor
    if executor == "thread" or workers == 1:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="flairkit-check")
    else:
        pool = ProcessPoolExecutor(workers)
    in_flight: dict[Future[list[Outcome]], list[Job]] = {}

    def submit_next() -> None:
        chunk = list(itertools.islice(jobs, _CHUNK_PATCHES))
        if chunk:
            in_flight[pool.submit(inspect_chunk, chunk, deep)] = chunk

    try:
        with pool:
            for _ in range(workers * _TASKS_PER_WORKER):
                submit_next()
            # The bar's monitor thread starts after the pool has forked its workers.
            bar = _progress_bar(num_files, deep, progress)
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    chunk = in_flight.pop(future)
                    patch_ids = {job[0]: job[1] for job in chunk}
                    for index, rows, raw in future.result():
                        files.record(index, rows)
                        problems.extend(
                            Problem(kind, path, patch_ids[index], MODALITIES[m].value, detail)
                            for kind, path, m, detail in raw
                        )
                    if bar is not None:
                        bar.update(sum(len(job[2]) for job in chunk))
                    submit_next()
    finally:
        if bar is not None:
            bar.close()
    return problems


def _progress_bar(total: int, deep: bool, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    desc = "check --deep" if deep else "check"
    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr, smoothing=0.1)


# ----------------------------------------------------------------------------------------------
# Dataset-wide comparisons: size and CRS
# ----------------------------------------------------------------------------------------------


def _compare_with_usual(
    refs: Sequence[PatchRef], files: _FileTable
) -> tuple[dict[str, Any], list[str], list[Problem]]:
    """Sizes per modality and CRS against the dataset's most common (the official on a tie)."""
    expected: dict[str, Any] = {"px": {}, "crs": None}
    notes: list[str] = []
    problems: list[Problem] = []
    unofficial = []
    for j, m in enumerate(MODALITIES):
        rows = np.flatnonzero(files.width[:, j] >= 0)
        if not rows.size:
            continue
        sizes = Counter(
            zip(files.width[rows, j].tolist(), files.height[rows, j].tolist(), strict=True)
        )
        native = (m.spec.native_px, m.spec.native_px)
        usual = _most_common(sizes, native)
        expected["px"][m.value] = list(usual)
        if usual != native:
            unofficial.append(f"{m.value} {usual[0]} x {usual[1]} (official {native[0]})")
        bad = rows[(files.width[rows, j] != usual[0]) | (files.height[rows, j] != usual[1])]
        for i in bad:
            detail = f"{files.width[i, j]} x {files.height[i, j]} px, expected {usual[0]} x {usual[1]} px"
            problems.append(Problem("size", refs[i].path_str(m), refs[i].patch_id, m.value, detail))
    if unofficial:
        notes.append(
            "sizes checked against the dataset's usual size per modality, which is not the "
            f"official one: {', '.join(unofficial)} px"
        )
    labels = files.crs_labels
    per_label = np.bincount(files.crs[files.crs >= 0], minlength=len(labels))
    crs_counts = Counter(
        {label: int(n) for label, n in zip(labels, per_label, strict=True) if label}
    )
    if not crs_counts:
        return expected, notes, problems
    crs = _most_common(crs_counts, DEFAULT_CRS)
    expected["crs"] = crs
    if crs != DEFAULT_CRS:
        notes.append(f"the dataset's CRS is {crs}, not the official {DEFAULT_CRS}")
    for i, j in zip(*np.nonzero((files.crs >= 0) & (files.crs != labels.index(crs))), strict=True):
        label, m = labels[files.crs[i, j]], MODALITIES[j]
        detail = "no CRS" if label is None else f"{_short(label)}, expected {crs}"
        problems.append(Problem("crs", refs[i].path_str(m), refs[i].patch_id, m.value, detail))
    return expected, notes, problems


def _most_common(counts: Counter, preferred: Any) -> Any:
    top = max(counts.values())
    best = [value for value, n in counts.items() if n == top]
    return preferred if preferred in best else best[0]


def _short(crs: str) -> str:
    return crs if len(crs) <= 60 else crs[:57] + "..."


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def prepare_report_path(path: str | Path) -> Path:
    """Validate where the report goes, before any work: never over an input or a foreign file.

    Raises:
        DataError: the path is a folder, its folder is missing or read-only, or it exists and
            is not a previous ``flairkit check`` report (it might be an input).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a file name for the report")
    folder = path.parent
    if not folder.is_dir():
        raise DataError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DataError(f"{path}: folder {folder} is not writable")
    if path.exists() and not _is_report(path):
        raise DataError(
            f"{path}: exists and is not a flairkit check report; "
            "refusing to overwrite it (choose another --report)"
        )
    return path


def _is_report(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            head = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and head.get("tool") == REPORT_TOOL


def write_report(result: CheckResult, path: str | Path) -> Path:
    """Write the JSON report atomically: a temporary file in the same folder, then a rename.

    Raises:
        DataError: not a valid report destination (see ``prepare_report_path``).
        OSError: the file cannot be written.
    """
    path = prepare_report_path(path)
    handle = tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    )
    try:
        # mkstemp makes the file private (0600); give the report the mode a plain open() would
        os.chmod(handle.name, 0o666 & ~_umask())
        with handle:
            json.dump(result.to_dict(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it back at once
    os.umask(mask)
    return mask


def format_summary(result: CheckResult, examples: int = 3) -> str:
    """A few lines per problem kind: its count and examples with their detail."""
    mode = "deep check" if result.deep else "header check"
    lines = [
        f"{result.source}: {result.num_patches} patches, {result.num_files} files "
        f"({mode}, {result.seconds:.1f} s, {result.workers} {result.executor} workers)"
    ]
    lines.extend(f"note: {n}" for n in result.notes)
    if result.ok:
        lines.append("no problems found")
        return "\n".join(lines)
    counts = result.counts()
    lines.append(f"{len(result.problems)} problems of {len(counts)} kinds:")
    by_kind: dict[str, list[Problem]] = {}
    for p in result.problems:
        by_kind.setdefault(p.kind, []).append(p)
    for kind, count in counts.items():
        lines.append(f"  {kind} ({count}): {PROBLEM_KINDS[kind]}")
        for p in by_kind[kind][:examples]:
            lines.append(f"    {p.path or p.patch_id}: {p.detail}")
        if count > examples:
            lines.append(f"    ... and {count - examples} more")
    return "\n".join(lines)
