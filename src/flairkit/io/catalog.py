"""A catalog of FLAIR-HUB patches: index, splits, filters and a summary.

Splits:
- ``split_1`` ... ``split_5``, ``split_flairchallenge``, ``split_toy``: the columns of
  ``GLOBAL_ALL_MTD/GLOBAL_ALL_MTD_SPLIT.gpkg`` (``valid`` is read as ``val``).
- ``card``: the dataset card's department lists (test departments -> test); inside the
  train/val departments a patch goes to val with probability ``val_fraction``, decided by a
  hash of its id, so the assignment is stable across machines and runs.
- ``csv``: the split of the CSV list each patch came from.
- a user file (``.csv`` with ``patch_id,split`` or ``.json`` ``{patch_id: split}``), or
  department lists given in code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flairkit.io.patches import PatchRef, department_of, read_csv_lists, scan_root
from flairkit.io.raster import DataError, read_text_file
from flairkit.modalities import (
    METADATA_DIR,
    SPLIT_ALIASES,
    SPLIT_GPKG,
    SPLITS,
    TEST_DOMAINS,
    TRAINVAL_DOMAINS,
    Modality,
)

log = logging.getLogger(__name__)

GPKG_SPLIT_COLUMNS = (
    "split_1",
    "split_2",
    "split_3",
    "split_4",
    "split_5",
    "split_flairchallenge",
    "split_toy",
)


@dataclass(frozen=True)
class Catalog:
    """An immutable list of patches with the root they came from.

    Attributes:
        refs: the patches, sorted by id.
        root: dataset root (for metadata), if known.
    """

    refs: tuple[PatchRef, ...]
    root: Path | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def scan(cls, root: str | Path, split: str | None = "auto", progress: bool = False) -> Catalog:
        """Index a root by its folders, then assign a split.

        Args:
            root: dataset root.
            split: a split method (module docstring); ``auto`` = ``split_1`` from the split
                GeoPackage when it exists (``split_toy`` if that is its only official
                column), else ``card``; ``None`` leaves splits unset.
            progress: progress bar while scanning.
        """
        catalog = cls(tuple(scan_root(root, progress)), Path(root))
        return catalog.with_split(split) if split else catalog

    @classmethod
    def from_csv(cls, csv_paths: Sequence[str | Path], root: str | Path | None = None) -> Catalog:
        """Index from official CSV lists; the split comes from each file's name."""
        refs = read_csv_lists(csv_paths, root)
        seen: dict[str, PatchRef] = {}
        for ref in refs:
            if ref.patch_id in seen:
                raise DataError(
                    f"patch {ref.patch_id} is listed twice in {list(map(str, csv_paths))}"
                )
            seen[ref.patch_id] = ref
        base = Path(root) if root else (Path(refs[0].root) if refs else None)
        return cls(tuple(sorted(refs, key=lambda r: r.patch_id)), base)

    @classmethod
    def open(
        cls, source: str | Path, split: str | None = "auto", progress: bool = False
    ) -> Catalog:
        """A root folder (scanned), a CSV file, or a folder of CSV lists.

        For CSV lists the split is the list's (``auto``, ``csv`` or ``None``) unless another
        method is given.
        """
        source = Path(source)
        if source.is_file() and source.suffix.lower() == ".csv":
            catalog = cls.from_csv([source])
        elif source.is_dir() and not any(source.glob("D*_*")) and list(source.glob("*.csv")):
            catalog = cls.from_csv(sorted(source.glob("*.csv")))
        else:
            return cls.scan(source, split, progress)
        # CSV lists carry their own split ("auto" = "csv"); any other method replaces it.
        if split is None or split in ("auto", "csv"):
            return catalog
        return catalog.with_split(split)

    # -- splits -------------------------------------------------------------------------
    def with_split(self, method: str, val_fraction: float = 0.25) -> Catalog:
        """Assign every patch a split (see the module docstring for the methods).

        Raises:
            DataError: the split GeoPackage or user file is missing or incomplete.
            ValueError: unknown method.
        """
        if method == "auto":
            method = self._auto_split_method()
        if method == "csv":
            return self
        mapping: Mapping[str, str | None]
        if method == "card":
            mapping = {r.patch_id: card_split(r.patch_id, val_fraction) for r in self.refs}
        elif method in GPKG_SPLIT_COLUMNS:
            mapping = self._gpkg_splits(method)
        elif Path(method).suffix.lower() in (".csv", ".json"):
            from_file = read_split_file(method)
            self._check_split_ids(method, from_file)
            mapping = from_file
        else:
            raise ValueError(
                f"unknown split {method!r}; use auto, card, csv, {', '.join(GPKG_SPLIT_COLUMNS)} "
                "or a .csv/.json file"
            )
        return Catalog(tuple(r.with_split(mapping.get(r.patch_id)) for r in self.refs), self.root)

    def _check_split_ids(self, path: str, mapping: Mapping[str, str]) -> None:
        """A user split naming no patch of the catalog is an error; some unknown ids, a warning.

        A split file may cover more than the patches at hand (a download of some
        departments), so unknown ids alone are not an error; not one id in common means the
        file belongs to another dataset (or has mangled ids).
        """
        ids = {r.patch_id for r in self.refs}
        unknown = [k for k in mapping if k not in ids]
        if not unknown:
            return
        examples = ", ".join(unknown[:3])
        if len(unknown) == len(mapping):
            raise DataError(
                f"{path}: none of its {len(mapping)} patch ids is among the {len(ids)} patches "
                f"of {self.root} (e.g. {examples}); is it the split of another dataset?"
            )
        log.warning(
            "%s: %d of its %d patch ids are not in %s and are ignored (e.g. %s)",
            path, len(unknown), len(mapping), self.root, examples,
        )  # fmt: skip

    def with_department_split(
        self, train: Iterable[str], val: Iterable[str] = (), test: Iterable[str] = ()
    ) -> Catalog:
        """Assign splits by department (``D006`` or ``D006-2020``); others get no split."""
        lookup: dict[str, str] = {}
        for split, names in (("train", train), ("val", val), ("test", test)):
            for name in names:
                lookup[name] = split
        return Catalog(
            tuple(r.with_split(lookup.get(r.domain_year, lookup.get(r.domain))) for r in self.refs),
            self.root,
        )

    def _auto_split_method(self) -> str:
        """``split_1`` if the split GeoPackage has it, else ``split_toy``, else ``card``.

        The toy archive's split table holds ``split_toy`` (spec section 1.5), possibly alone.
        """
        gpkg = self.split_gpkg_path
        if gpkg is None or not gpkg.is_file():
            return "card"
        import pyogrio

        try:
            fields = set(pyogrio.read_info(gpkg)["fields"])
        except Exception as exc:
            raise DataError(f"{gpkg}: cannot read split table ({exc})") from exc
        for column in ("split_1", "split_toy"):
            if column in fields:
                return column
        log.warning("%s has neither split_1 nor split_toy; using the card split", gpkg)
        return "card"

    @property
    def split_gpkg_path(self) -> Path | None:
        """Where the official split table would be."""
        return self.root / METADATA_DIR / SPLIT_GPKG if self.root else None

    def _gpkg_splits(self, column: str) -> dict[str, str | None]:
        import pyogrio

        path = self.split_gpkg_path
        if path is None or not path.is_file():
            raise DataError(f"{path}: split GeoPackage is missing (needed for split {column!r})")
        try:
            frame = pyogrio.read_dataframe(path, read_geometry=False)
        except Exception as exc:
            raise DataError(f"{path}: cannot read split table ({exc})") from exc
        if column not in frame.columns or "patch_id" not in frame.columns:
            have = [c for c in frame.columns if c.startswith("split")]
            raise DataError(f"{path}: no column {column!r} (split columns: {have})")
        mapping: dict[str, str | None] = {}
        for patch_id, value in zip(frame["patch_id"].astype(str), frame[column], strict=True):
            split = SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None
            if split is None and value not in (None, ""):
                raise DataError(f"{path}: {patch_id}: unknown {column} value {value!r}")
            mapping[patch_id] = split
        return mapping

    # -- filters ------------------------------------------------------------------------
    def filter(
        self,
        departments: Iterable[str] | None = None,
        years: Iterable[str | int] | None = None,
        modalities: Iterable[Modality] | None = None,
        split: str | None = None,
        patch_ids: Iterable[str] | None = None,
    ) -> Catalog:
        """Keep the patches that match every given criterion.

        Args:
            departments: ``D006`` or domain-years ``D006-2020``.
            years: survey years.
            modalities: patches must have a file for each.
            split: ``train``, ``val``/``valid`` or ``test``.
            patch_ids: explicit ids.
        """
        refs: Iterable[PatchRef] = self.refs
        if departments is not None:
            wanted = set(departments)
            refs = [r for r in refs if r.domain in wanted or r.domain_year in wanted]
        if years is not None:
            wanted_years = {str(y) for y in years}
            refs = [r for r in refs if r.year in wanted_years]
        if modalities is not None:
            need = frozenset(modalities)
            refs = [r for r in refs if need <= r.modalities]
        if split is not None:
            name = SPLIT_ALIASES.get(split, split)
            if name not in SPLITS:
                raise ValueError(f"unknown split {split!r}; use train, val or test")
            refs = [r for r in refs if r.split == name]
        if patch_ids is not None:
            ids = set(patch_ids)
            refs = [r for r in refs if r.patch_id in ids]
        return Catalog(tuple(refs), self.root)

    def get(self, patch_id: str) -> PatchRef:
        """The patch with this id.

        Raises:
            KeyError: unknown id; the message suggests close ids.
        """
        for ref in self.refs:
            if ref.patch_id == patch_id:
                return ref
        import difflib

        close = difflib.get_close_matches(patch_id, [r.patch_id for r in self.refs], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown patch id {patch_id!r} in {self.root}{hint}")

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[PatchRef]:
        return iter(self.refs)

    # -- summary ------------------------------------------------------------------------
    def summary(self, check_files: bool = True, progress: bool = False) -> dict[str, Any]:
        """Counts per split, department and modality, and the missing files.

        Args:
            check_files: test every listed file with ``file_problem`` (its first 4 bytes; no
                raster is opened). Without it a file counts as present when the scan found
                it or a CSV list names it.
            progress: progress bar while testing the files.

        Returns:
            A JSON-ready dict. ``files_per_modality`` counts usable files; ``missing_files``
            the patches without one (not listed, absent, or unusable) per modality;
            ``file_problems`` the listed or scanned files that are absent or unusable, with
            examples ``"<path>: <problem>"``.
        """
        problems = self._file_problems(progress) if check_files else {}
        per_split = Counter(r.split or "none" for r in self.refs)
        per_domain: dict[str, Counter] = {}
        per_modality: Counter[str] = Counter()
        missing: dict[str, list[str]] = {}
        bad: dict[str, list[str]] = {}
        for i, r in enumerate(self.refs):
            per_domain.setdefault(r.domain_year, Counter())[r.split or "none"] += 1
            for m in Modality:
                problem = problems.get((i, m)) if m in r.modalities else None
                if m in r.modalities and problem is None:
                    per_modality[m.value] += 1
                    continue
                missing.setdefault(m.value, []).append(r.patch_id)
                if problem is not None:
                    bad.setdefault(m.value, []).append(f"{r.path(m)}: {problem}")
        return {
            "root": str(self.root) if self.root else None,
            "num_patches": len(self.refs),
            "num_domains": len(per_domain),
            "patches_per_split": dict(sorted(per_split.items())),
            "patches_per_domain": {
                d: dict(sorted(c.items())) for d, c in sorted(per_domain.items())
            },
            "files_per_modality": {m.value: per_modality.get(m.value, 0) for m in Modality},
            "missing_files": {
                m: {"count": len(ids), "examples": ids[:5]} for m, ids in missing.items()
            },
            "file_problems": {
                m: {"count": len(items), "examples": items[:5]} for m, items in bad.items()
            },
        }

    def _file_problems(self, progress: bool = False) -> dict[tuple[int, Modality], str]:
        """``file_problem`` of every listed file, keyed by (patch index, modality).

        Threads overlap the opens (on network storage each is a round trip); 241,100
        patches hold about 2.4 million files.
        """
        jobs = [(i, m) for i, r in enumerate(self.refs) for m in r.modalities]
        if not jobs:
            return {}

        def check(chunk: list[tuple[int, Modality]]) -> list[str | None]:
            return [file_problem(self.refs[i].path_str(m)) for i, m in chunk]

        size = 2048
        chunks = [jobs[k : k + size] for k in range(0, len(jobs), size)]
        with ThreadPoolExecutor(_CHECK_THREADS, thread_name_prefix="flairkit-check") as pool:
            results = []
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(jobs), desc="checking files", unit="file")
            for chunk, found in zip(chunks, pool.map(check, chunks), strict=True):
                results.append(found)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        return {
            job: problem
            for chunk, found in zip(chunks, results, strict=True)
            for job, problem in zip(chunk, found, strict=True)
            if problem is not None
        }


#: First bytes of a TIFF: little/big-endian classic TIFF, then BigTIFF.
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Threads testing files in ``Catalog.summary``: opens are I/O-bound, and on network storage
#: a round trip each.
_CHECK_THREADS = 8


def file_problem(path: str | Path) -> str | None:
    """Why a dataset file cannot be a GeoTIFF, from its type, size and first 4 bytes.

    A cheap presence test (4 system calls, no raster opened): it finds absent, empty, non-TIFF
    files and folders, not truncated or corrupt TIFFs (``read_geotiff`` names those).

    Returns:
        ``None`` for a non-empty regular file starting with a TIFF signature, else the problem:
        ``missing``, ``not a regular file``, ``empty (0 bytes)``, ``not a TIFF (...)`` or an
        OS error.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        return f"cannot open ({exc.strerror or exc})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size == 0:
            return "empty (0 bytes)"
        head = os.read(fd, 4)
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    finally:
        os.close(fd)
    if head not in TIFF_MAGICS:
        return f"not a TIFF (starts with {head!r})"
    return None


def card_split(patch_id: str, val_fraction: float = 0.25) -> str | None:
    """Split of a patch by the dataset card's department lists (None: unknown department)."""
    domain = department_of(patch_id)
    if domain in TEST_DOMAINS:
        return "test"
    if domain not in TRAINVAL_DOMAINS:
        return None
    digest = hashlib.blake2b(patch_id.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "val" if u < val_fraction else "train"


def read_split_file(path: str | Path) -> dict[str, str]:
    """A user split: CSV ``patch_id,split`` (header required) or JSON ``{patch_id: split}``.

    Raises:
        DataError: missing, empty, non-UTF-8 or unparseable file, wrong columns or JSON
            structure, an unknown split value, or a patch given two different splits.
    """
    path = Path(path)
    text = read_text_file(path, "split file")
    if not text.strip():
        raise DataError(f"{path}: split file is empty")
    pairs = _json_split_pairs(path, text) if path.suffix.lower() == ".json" else None
    if pairs is None:
        pairs = _csv_split_pairs(path, text)
    if not pairs:
        raise DataError(f"{path}: split file lists no patch")
    out: dict[str, str] = {}
    for patch_id, value in pairs:
        if not isinstance(value, str):
            raise DataError(
                f"{path}: {patch_id}: split must be a string (train, val or test), got "
                f"{_json_kind(value)}; the file maps each patch id to its split"
            )
        split = SPLIT_ALIASES.get(value.strip().lower())
        if split is None:
            raise DataError(f"{path}: {patch_id}: unknown split {value!r} (use train, val, test)")
        key = str(patch_id).strip()
        if out.get(key, split) != split:
            raise DataError(f"{path}: {key} is given two splits, {out[key]} and {split}")
        out[key] = split
    return out


def _json_split_pairs(path: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: split file is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f'{path}: split file must be a JSON object {{"<patch_id>": "train|val|test", ...}}, '
            f"got {_json_kind(data)}"
        )
    return list(data.items())


def _csv_split_pairs(path: Path, text: str) -> list[tuple[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=None, engine="python", dtype=str, keep_default_na=False
        )
    except Exception as exc:  # pandas raises several types (ParserError, EmptyDataError, csv.Error)
        raise DataError(f"{path}: cannot read split CSV ({' '.join(str(exc).split())})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if not {"patch_id", "split"} <= set(frame.columns):
        raise DataError(f"{path}: needs columns patch_id and split, has {list(frame.columns)}")
    frame = frame.fillna("")
    return list(zip(frame["patch_id"], frame["split"], strict=True))


def _json_kind(value: Any) -> str:
    """How JSON names the type of a decoded value."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "true/false"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"a number ({value})"
    return kinds.get(type(value), type(value).__name__)
