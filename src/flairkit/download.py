"""``flairkit download``: the FLAIR-HUB archives a selection needs, fetched, verified, extracted.

The dataset repository (``IGNF/FLAIR-HUB``, a Hugging Face dataset) holds one zip per
domain-year and modality folder, ``data/<DOMAIN>-<YEAR>_<MODALITY>.zip`` (the historical
panchromatic one as ``<DOMAIN>-195X_AERIAL-RLT_PAN``), and the metadata GeoPackages in
``data/GLOBAL_ALL_MTD.zip`` (spec section 9). Each zip extracts to its folder under the root.

How a run goes:
1. The repository is listed once through ``huggingface_hub`` (sizes and LFS sha256, pinned to
   the commit the listing saw, so a run never mixes two versions of the dataset).
2. The selection (departments/domains, years, modalities, a split) picks archives; ``--split``
   reads the split GeoPackage of the metadata archive, fetched first.
3. Archives are fetched in parallel by ``hf_hub_download`` into ``OUT/.flairkit-download/``
   (the client resumes a partial file), their sha256 checked against the listing (a mismatch
   is fetched again once, then reported), and extracted to a temporary folder that is renamed
   into place: a folder of the root is either absent or complete.
4. A small JSON record per archive (``OUT/.flairkit-download/done/<name>.json``, written after
   the rename) marks it complete, so a rerun skips it; the zip, our own temporary, is then
   deleted unless ``keep_archives``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flairkit.hub import HubError, describe_hub_error, endpoint, hub_file
from flairkit.modalities import METADATA_DIR, SPLIT_ALIASES, SPLIT_GPKG, Modality

log = logging.getLogger(__name__)

DATASET_REPO = "IGNF/FLAIR-HUB"
METADATA_ARCHIVE = "data/GLOBAL_ALL_MTD.zip"
#: Where a run keeps its own files under OUT: fetched zips, temporary folders, records.
WORK_DIR = ".flairkit-download"
#: The toy archive is not on the hub (spec section 9).
TOY_URL = (
    "https://storage.gra.cloud.ovh.net/v1/AUTH_366279ce616242ebb14161b7991a8461/defi-ia/"
    "flair_hub/FLAIR-HUB_TOY_DATASET.zip"
)

_ARCHIVE = re.compile(
    r"data/(?P<department>D\d{3,6})-(?P<year>\d{4}|195X)_(?P<modality>[A-Z0-9_-]+)\.zip"
)


class DownloadError(ValueError):
    """A selection, listing or archive that cannot be used; one line naming it."""


@dataclass(frozen=True)
class Archive:
    """One zip of the dataset repository.

    Attributes:
        path: its path in the repository (``data/D004-2021_AERIAL_RGBI.zip``).
        size: bytes, from the listing.
        sha256: the LFS sha256 from the listing; None if the listing has none.
        department: ``D004``; None for the metadata archive.
        year: ``2021`` or ``195X``; None for the metadata archive.
        modality: the folder's modality; None for the metadata archive.
    """

    path: str
    size: int
    sha256: str | None
    department: str | None = None
    year: str | None = None
    modality: Modality | None = None

    @property
    def name(self) -> str:
        """The folder it extracts to: ``D004-2021_AERIAL_RGBI`` or ``GLOBAL_ALL_MTD``."""
        return self.path.rsplit("/", 1)[-1].removesuffix(".zip")

    @property
    def domain(self) -> str | None:
        return f"{self.department}-{self.year}" if self.department else None


@dataclass(frozen=True)
class Listing:
    """The archives of a repository at one commit."""

    repo_id: str
    commit: str
    archives: tuple[Archive, ...]
    metadata: Archive | None


def list_archives(repo_id: str = DATASET_REPO, revision: str | None = None) -> Listing:
    """List the dataset repository's archives with their sizes and sha256.

    Raises:
        HubError: the listing cannot be had (names the repository).
        DownloadError: the repository holds no archive of the dataset's naming.
    """
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint()).dataset_info(
            repo_id, revision=revision, files_metadata=True
        )
    except Exception as exc:  # every client error becomes one line
        at = f"@{revision}" if revision else ""
        raise describe_hub_error(exc, f"hf:dataset {repo_id}{at}") from exc
    archives, metadata = [], None
    for sibling in info.siblings or []:
        name = sibling.rfilename
        sha = sibling.lfs.sha256 if sibling.lfs is not None else None
        size = int(sibling.size or 0)
        if name == METADATA_ARCHIVE:
            metadata = Archive(name, size, sha)
            continue
        match = _ARCHIVE.fullmatch(name)
        if match is None:
            continue
        try:
            modality = Modality.parse(match["modality"])
        except ValueError:
            log.warning("%s: not a FLAIR-HUB modality folder; skipped", name)
            continue
        archives.append(Archive(name, size, sha, match["department"], match["year"], modality))
    if not archives and metadata is None:
        raise DownloadError(
            f"hf:dataset {repo_id}: no data/<DOMAIN>-<YEAR>_<MODALITY>.zip archive in the "
            "repository (is it the FLAIR-HUB dataset?)"
        )
    archives.sort(key=lambda a: a.path)
    return Listing(repo_id, str(info.sha or revision or "main"), tuple(archives), metadata)


@dataclass(frozen=True)
class Selection:
    """What to fetch. Places: an archive is kept if its department is listed or its
    domain-year is (no place given: all); years and modalities must also match when given.

    Attributes:
        departments: ``D004``...: every year of the department, and its 195X archive.
        domains: ``D004-2021``...: that domain-year, and the department's 195X archive.
        years: ``2021``...; a 195X archive comes with any selected year of its department.
        modalities: the folders' modalities.
    """

    departments: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    years: frozenset[str] = frozenset()
    modalities: frozenset[Modality] = frozenset()

    def matches(self, archive: Archive, years_of: Mapping[str, set[str]]) -> bool:
        """Whether the selection keeps an archive.

        Args:
            archive: a data archive (the metadata archive always matches).
            years_of: department -> its survey years in the listing (for the 195X archives).
        """
        department = archive.department
        if department is None:
            return True
        if self.modalities and archive.modality not in self.modalities:
            return False
        historical = archive.year == "195X"
        if self.departments or self.domains:
            domain_deps = {d.split("-")[0] for d in self.domains}
            if historical:
                if department not in self.departments | domain_deps:
                    return False
            elif department not in self.departments and archive.domain not in self.domains:
                return False
        if self.years:
            years = years_of.get(department, set()) if historical else {archive.year}
            if historical and self.domains and department not in self.departments:
                years = {d.split("-")[1] for d in self.domains if d.startswith(department + "-")}
            return bool(years & self.years)
        return True


def parse_selection(
    departments: Sequence[str] = (),
    years: Sequence[str] = (),
    modalities: Sequence[str] = (),
) -> Selection:
    """Check and normalise the command-line criteria.

    ``departments`` may mix departments (``D004``, ``4``, ``004``) and domain-years
    (``D004-2021``); values may also be comma-separated.

    Raises:
        DownloadError: a malformed department, year or an unknown modality (named).
    """
    deps, doms = set(), set()
    for raw in _split_items(departments):
        match = re.fullmatch(r"D?(\d{1,6})(?:-(\d{4}))?", raw.strip().upper())
        if match is None:
            raise DownloadError(
                f"--departments: {raw!r} is not a department (D004) or a domain-year (D004-2021)"
            )
        code = f"D{int(match[1]):03d}" if len(match[1]) <= 3 else f"D{match[1]}"
        if match[2]:
            doms.add(f"{code}-{match[2]}")
        else:
            deps.add(code)
    ys = set()
    for raw in _split_items(years):
        if not re.fullmatch(r"\d{4}", raw.strip()):
            raise DownloadError(f"--years: {raw!r} is not a year (e.g. 2021)")
        ys.add(raw.strip())
    mods = set()
    for raw in _split_items(modalities):
        try:
            mods.add(Modality.parse(raw))
        except ValueError as exc:
            raise DownloadError(f"--modalities: {exc}") from exc
    return Selection(frozenset(deps), frozenset(doms), frozenset(ys), frozenset(mods))


def _split_items(values: Sequence[str]) -> list[str]:
    return [item for value in values for item in value.split(",") if item.strip()]


def split_domains(metadata_dir: Path, split: str, column: str = "split_1") -> set[str]:
    """The domain-years whose patches the split GeoPackage puts in ``split``.

    Raises:
        DownloadError: the GeoPackage or its column is missing, or no patch is in the split.
    """
    import pyogrio

    from flairkit.io.patches import parse_patch_id

    wanted = SPLIT_ALIASES.get(split.strip().lower())
    if wanted is None:
        raise DownloadError(f"--split: {split!r} is not train, val or test")
    path = metadata_dir / SPLIT_GPKG
    if not path.is_file():
        raise DownloadError(f"{path}: the split GeoPackage is missing from the metadata archive")
    try:
        frame = pyogrio.read_dataframe(path, read_geometry=False, columns=["patch_id", column])
    except Exception as exc:
        raise DownloadError(f"{path}: cannot read column {column!r} ({exc})") from exc
    domains = set()
    for patch_id, value in zip(frame["patch_id"].astype(str), frame[column], strict=True):
        if value is not None and SPLIT_ALIASES.get(str(value).strip().lower()) == wanted:
            parts = parse_patch_id(patch_id)
            domains.add(f"{parts.domain}-{parts.year}")
    if not domains:
        raise DownloadError(f"{path}: no patch is in split {split!r} ({column})")
    return domains


def select(
    listing: Listing, selection: Selection, domains: set[str] | None = None
) -> list[Archive]:
    """The archives of a listing that the selection (and a split's domains) keep.

    Raises:
        DownloadError: nothing matches (the message says what the listing has).
    """
    years_of: dict[str, set[str]] = {}
    for a in listing.archives:
        if a.department and a.year and a.year != "195X":
            years_of.setdefault(a.department, set()).add(a.year)
    chosen = []
    for archive in listing.archives:
        if not selection.matches(archive, years_of):
            continue
        if domains is not None:
            if archive.year == "195X":
                if archive.department not in {d.split("-")[0] for d in domains}:
                    continue
            elif archive.domain not in domains:
                continue
        chosen.append(archive)
    if not chosen:
        departments = sorted({a.department for a in listing.archives if a.department})
        raise DownloadError(
            f"hf:dataset {listing.repo_id}: no archive matches the selection "
            f"({len(listing.archives)} archives, departments {_short(departments)})"
        )
    return chosen


def _short(items: Sequence[str], shown: int = 6) -> str:
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


# -- fetching and extracting -----------------------------------------------------------------


@dataclass
class DownloadReport:
    """What a run did (archive names)."""

    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    bytes_fetched: int = 0


def record_path(out: Path, archive: Archive) -> Path:
    return out / WORK_DIR / "done" / f"{archive.name}.json"


def is_complete(out: Path, archive: Archive) -> bool:
    """Extracted and recorded, with the sha256 the listing gives now."""
    path = record_path(out, archive)
    if not path.is_file() or not (out / archive.name).is_dir():
        return False
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return False
    return bool(record.get("sha256") == archive.sha256 and record.get("size") == archive.size)


def sha256_of(path: Path, chunk: int = 2**22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Cancelled(Exception):
    """Raised inside a transfer when the run is interrupted."""


class _Progress:
    """One byte counter shared by the threads, shown as a tqdm bar (bytes/s, ETA)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download",
            disable=not enabled, dynamic_ncols=True,
        )  # fmt: skip
        self.lock = threading.Lock()
        self.bytes = 0
        self.stop = threading.Event()

    def add(self, n: int) -> None:
        if self.stop.is_set():  # interrupted: abort the transfers in flight (they resume later)
            raise _Cancelled
        with self.lock:
            self.bytes += n
            self.bar.update(n)

    def tqdm_class(self) -> type:
        """A tqdm class for ``hf_hub_download`` that feeds this bar and draws nothing."""
        from tqdm.auto import tqdm

        progress = self

        class Feed(tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                progress.add(int(n or 0))
                return None

        return Feed


def fetch_archive(
    out: Path,
    listing: Listing,
    archive: Archive,
    progress: _Progress | None = None,
    force: bool = False,
) -> Path:
    """The verified zip of an archive under ``OUT/.flairkit-download/``.

    Raises:
        HubError: the file cannot be had.
        DownloadError: its sha256 differs from the listing's (the zip is removed).
    """
    kwargs: dict[str, Any] = {"local_dir": out / WORK_DIR, "force_download": force}
    if progress is not None:
        kwargs["tqdm_class"] = progress.tqdm_class()
    path = hub_file(listing.repo_id, archive.path, listing.commit, "dataset", **kwargs)
    if archive.sha256 is not None:
        actual = sha256_of(path)
        if actual != archive.sha256:
            path.unlink(missing_ok=True)  # our own temporary copy, never a user file
            raise DownloadError(
                f"{archive.path}: sha256 {actual[:12]}... differs from the listing's "
                f"{archive.sha256[:12]}... (damaged download or a changed file)"
            )
    return path


def extract_archive(out: Path, archive: Archive, zip_path: Path) -> int:
    """Extract a verified zip atomically: into a temporary folder, then renamed into place.

    Returns:
        The number of files extracted.

    Raises:
        DownloadError: a damaged zip, an entry outside its folder, or a folder already in
            ``out`` that differs from the archive (it is never replaced).
    """
    tmp = out / WORK_DIR / "tmp" / archive.name
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous run's half extraction, under our own work folder
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for m in members:
                parts = Path(m.filename).parts
                if m.filename.startswith("/") or ".." in parts or not parts:
                    raise DownloadError(f"{archive.path}: unsafe entry {m.filename!r}")
            zf.extractall(tmp)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive.path}: not a readable zip ({exc})") from exc
    for top in sorted(tmp.iterdir()):
        target = out / top.name
        if target.exists():
            if not _same_tree(top, target):
                raise DownloadError(
                    f"{target}: already exists and differs from {archive.path}; move it away "
                    "to extract the archive (flairkit never replaces a folder it did not write)"
                )
            continue  # renamed by an interrupted run before it could record it
        os.replace(top, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return len(members)


def _same_tree(a: Path, b: Path) -> bool:
    files_a = {p.relative_to(a): p.stat().st_size for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b): p.stat().st_size for p in b.rglob("*") if p.is_file()}
    return files_a == files_b


def _write_record(out: Path, listing: Listing, archive: Archive, files: int) -> None:
    path = record_path(out, archive)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "archive": archive.path, "repo": listing.repo_id, "commit": listing.commit,
        "sha256": archive.sha256, "size": archive.size, "files": files,
    }  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def download_archives(
    out: Path,
    listing: Listing,
    archives: Sequence[Archive],
    workers: int = 4,
    progress: bool = True,
    keep_archives: bool = False,
    on_done: Callable[[Archive], None] | None = None,
) -> DownloadReport:
    """Fetch, verify and extract archives in parallel; complete ones are skipped.

    Raises:
        DownloadError / HubError: the first archive that fails (the others in flight finish or
            are cancelled; everything complete stays recorded).
    """
    out.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    todo = []
    for archive in archives:
        if is_complete(out, archive):
            report.skipped.append(archive.name)
        else:
            todo.append(archive)
    bar = _Progress(sum(a.size for a in todo), progress and bool(todo))
    lock = threading.Lock()

    def one(archive: Archive) -> None:
        try:
            zip_path = fetch_archive(out, listing, archive, bar)
        except DownloadError as first:
            log.warning("%s; fetching it again", first)
            with lock:
                report.refetched.append(archive.name)
            zip_path = fetch_archive(out, listing, archive, bar, force=True)
        files = extract_archive(out, archive, zip_path)
        _write_record(out, listing, archive, files)
        if not keep_archives:
            zip_path.unlink(missing_ok=True)
        with lock:
            report.fetched.append(archive.name)
        if on_done is not None:
            on_done(archive)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="flairkit-dl")
    futures: list[Future[None]] = [pool.submit(one, a) for a in todo]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]  # checked not None just above
        for future in futures:
            future.result()
    finally:
        bar.stop.set()  # on an error or Ctrl-C, transfers in flight stop at their next block
        pool.shutdown(wait=True, cancel_futures=True)
        bar.bar.close()
    report.bytes_fetched = bar.bytes
    return report


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def fetch_metadata(out: Path, listing: Listing, progress: bool = False) -> Path:
    """The metadata archive, downloaded and extracted (once); returns ``OUT/GLOBAL_ALL_MTD``.

    Raises:
        DownloadError: the repository has no metadata archive.
    """
    if listing.metadata is None:
        raise DownloadError(f"hf:dataset {listing.repo_id}: no {METADATA_ARCHIVE} in the listing")
    download_archives(out, listing, [listing.metadata], workers=1, progress=progress)
    return out / METADATA_DIR


def download_toy(out: Path, url: str = TOY_URL, progress: bool = True) -> Path:
    """The toy dataset (not on the hub): fetched with byte-range resume, extracted atomically.

    Returns:
        The dataset root (the archive's top folder under ``out``).

    Raises:
        DownloadError: the URL cannot be fetched or the archive is damaged.
    """
    archive = Archive(url.rsplit("/", 1)[-1] or "toy.zip", 0, None)
    record = record_path(out, archive)
    if record.is_file():
        root = json.loads(record.read_text()).get("root")
        if root and (out / root).is_dir():
            return out / root
    zip_path = out / WORK_DIR / archive.path
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    part = zip_path.with_name(zip_path.name + ".part")
    _fetch_url(url, part, progress)
    os.replace(part, zip_path)
    tops = _zip_tops(zip_path, archive)
    files = extract_archive(out, archive, zip_path)
    root = tops[0] if len(tops) == 1 else "."
    record.parent.mkdir(parents=True, exist_ok=True)
    size = zip_path.stat().st_size  # no sha256 outside the hub listing: the size is recorded
    payload = {"archive": url, "size": size, "files": files, "root": root}
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, record)
    zip_path.unlink(missing_ok=True)
    return out / root


def _fetch_url(url: str, part: Path, progress: bool) -> None:
    """Fetch ``url`` into ``part``, asking only for the bytes a previous run did not get.

    Raises:
        DownloadError: the transfer failed or stopped short (what arrived is kept for the
            next run).
    """
    import http.client
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    bar = None
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:
                have = 0  # the server ignored the range: start over
            total = have + int(response.headers.get("Content-Length") or 0)
            bar = _Progress(total, progress)
            bar.add(have)
            with part.open("ab" if have else "wb") as f:
                while block := response.read(2**20):
                    f.write(block)
                    bar.add(len(block))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # nothing past what we have: the .part is whole (the zip check follows)
        raise DownloadError(f"{url}: cannot fetch the toy dataset (HTTP {exc.code})") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"{url}: cannot fetch the toy dataset ({exc}); run again to resume"
        ) from exc
    finally:
        if bar is not None:
            bar.bar.close()
    if total and part.stat().st_size != total:
        raise DownloadError(
            f"{url}: incomplete ({part.stat().st_size} of {total} bytes); run again to resume"
        )


def _zip_tops(zip_path: Path, archive: Archive) -> list[str]:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return sorted({Path(n).parts[0] for n in zf.namelist() if Path(n).parts})
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive.path}: not a readable zip ({exc})") from exc


__all__ = [
    "DATASET_REPO",
    "TOY_URL",
    "Archive",
    "DownloadError",
    "DownloadReport",
    "HubError",
    "Listing",
    "Selection",
    "download_archives",
    "download_toy",
    "extract_archive",
    "fetch_archive",
    "fetch_metadata",
    "human_bytes",
    "is_complete",
    "list_archives",
    "parse_selection",
    "select",
    "split_domains",
]
