"""Packed FLAIR-HUB: patches as LitData shards, read back as the same RawSamples.

``pack`` converts patches of a catalog into LitData optimized datasets (``litdata.optimize``;
read by ``litdata.StreamingDataset``), one per split and domain-year:
``OUT/<split>/<DOMAIN>-<YEAR>/`` (``index.json`` + ``chunk-*.bin``). A sample keeps every
packed modality in its native dtype and resolution, the Sentinel dates (days since
1970-01-01), each file's georeference, the patch id, domain and split. LPIS labels are stored as
on disk, so every nomenclature level is derived at read time as for TIFFs.

``OUT/flairkit_pack.json`` lists, per folder, the patch ids in shard order and the modalities
each patch has: splits, department/year/modality filters are answered from it without
reading a shard. Each folder is written to a temporary name and renamed when complete, then
recorded; an interrupted ``pack`` resumes with the folders not yet recorded, and packing more
domains into the same OUT appends folders.

Why one LitData dataset per split and domain-year: filters select whole folders (no payload
read), a new domain appends a folder, and a folder is the unit of resume.

A pack is read where it lies: a local (or shared) folder, or a URL LitData reaches
(``s3://``, ``gs://``, ``azure://``, ``hf://``, ``r2://``; ``local:/path`` makes LitData read a
folder as if it were remote). Patches are read by index (``StreamingDataset[i]``): on
``s3://``, ``r2://`` and ``gs://`` LitData fetches only that sample's bytes (one ranged
request), so a global shuffle costs one request per sample; on storage without ranged reads
it fetches whole chunks into its cache folder. The manifest is fetched once per process into
that folder (``LITDATA_CACHE_DIR``).

Why random access rather than LitData's own iteration: the training order, the validation
split over processes and the exact resume stay those of every other flairkit dataset
(``data.datamodule``), and a packed sample is the TIFF sample bit for bit, in the same order.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from flairkit.config.run import is_url
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import PatchRef, department_of, read_patch
from flairkit.io.raster import DataError, count_nonfinite, read_patch_px
from flairkit.modalities import Modality
from flairkit.sample import Georef, RawSample

MANIFEST = "flairkit_pack.json"
FORMAT_VERSION = 1
_EPOCH = np.datetime64("1970-01-01", "D")
_NONE_SPLIT = "unsplit"
#: Waits (s) for a chunk another process is fetching into LitData's cache: ~60 s in all.
_CHUNK_WAITS: tuple[float | None, ...] = (0.01, 0.05, 0.1, 0.25, *(0.5,) * 119, None)


def is_packed(root: str | Path) -> bool:
    """Whether ``root`` is a packed dataset: a folder holding ``flairkit_pack.json``, or a URL
    (only packs are read from URLs)."""
    if isinstance(root, str) and is_url(root):
        return True
    return (Path(root) / MANIFEST).is_file()


def _join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}" if is_url(root) else str(Path(root) / key)


def _fetch_manifest(url: str) -> Path:
    """The manifest of a pack at a URL, fetched into LitData's cache folder (with the
    downloader and credentials LitData uses for the shards).

    Raises:
        DataError: it cannot be fetched (naming the URL and the cause).
    """
    from litdata.streaming.downloader import get_downloader
    from litdata.utilities.dataset_utilities import get_default_cache_dir

    folder = Path(get_default_cache_dir()) / "flairkit-manifests"
    folder = folder / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    # a fresh name: LitData's downloaders keep a file already at the destination, and a
    # manifest read earlier may be out of date
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".fetch-")
    os.close(fd)
    os.unlink(tmp)
    try:
        get_downloader(url, str(folder), []).download_file(_join(url, MANIFEST), tmp)
    except Exception as exc:  # each storage client raises its own errors
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{_join(url, MANIFEST)}: cannot fetch the pack manifest ({exc})") from exc
    path = folder / MANIFEST
    os.replace(tmp, path)
    return path


def parse_compression(value: str | None) -> tuple[str, int] | None:
    """``zstd`` or ``zstd:<level>`` (1-22; default 3) as (codec, level); None for none.

    Raises:
        ValueError: another codec or level.
    """
    if value in (None, "", "none"):
        return None
    codec, _, level = str(value).partition(":")
    if codec != "zstd" or not (level == "" or (level.isdigit() and 1 <= int(level) <= 22)):
        raise ValueError(f"compression {value!r}: use zstd or zstd:<level 1-22>")
    return codec, int(level or 3)


def _zstd() -> Any:
    try:
        import zstd
    except ImportError as exc:
        raise DataError(
            "a zstd pack needs the zstd package (pip install 'flairkit[train]')"
        ) from exc
    return zstd


def _encode(
    raw: RawSample, ref: PatchRef, modalities: Sequence[Modality], level: int | None = None
) -> dict[str, Any]:
    """A LitData item; with ``level``, each array zstd-compressed on its own.

    Why per array and not LitData's chunk compression (``optimize(compression=...)``): a
    compressed chunk is fetched and decompressed whole, into the cache, before any sample of it
    is read, which defeats the random access by index the reader uses (and LitData's ranged
    reads on buckets). Compressed arrays keep one sample one byte range.
    """
    zstd = _zstd() if level is not None else None
    item: dict[str, Any] = {
        "patch_id": ref.patch_id,
        "split": ref.split or _NONE_SPLIT,
        "domain": ref.patch_id.split("_", 1)[0],
    }
    for m in modalities:
        present = m in raw.arrays
        array = np.ascontiguousarray(raw.arrays[m]) if present else np.zeros(0, np.uint8)
        if zstd is not None:
            item[f"{m.value}@array"] = json.dumps(
                [array.dtype.str, list(array.shape)] if present else None
            )
            array = np.frombuffer(zstd.compress(array.tobytes(), level), np.uint8)
        item[m.value] = array
        georef = raw.georefs.get(m)
        item[f"{m.value}@georef"] = json.dumps(
            None
            if georef is None
            else [georef.crs, list(georef.transform), georef.width, georef.height]
        )
        if m.spec.is_time_series:
            days = raw.dates.get(m)
            item[f"{m.value}@dates"] = (
                (days - _EPOCH).astype(np.int64) if days is not None else np.zeros(0, np.int64)
            )
    return item


def decode(item: dict[str, Any], modalities: Iterable[Modality], where: str) -> RawSample:
    """The RawSample of a packed item, with the modalities asked for.

    Raises:
        DataError: a modality asked for is not in the item (naming ``where`` and the patch).
    """
    patch_id = str(item["patch_id"])
    raw = RawSample(patch_id, {})
    for m in modalities:
        array = item.get(m.value)
        packed_as = json.loads(item.get(f"{m.value}@array", "null"))
        if array is None or array.size == 0 or (f"{m.value}@array" in item and not packed_as):
            raise DataError(f"{where}: patch {patch_id} has no {m.value} in the pack")
        if packed_as:
            dtype, shape = packed_as
            try:
                data = _zstd().decompress(array.tobytes())
            except Exception as exc:  # zstd.Error: a damaged chunk
                raise DataError(f"{where}: patch {patch_id}: {m.value} is damaged ({exc})") from exc
            array = np.frombuffer(data, np.dtype(dtype)).reshape(shape)
        raw.arrays[m] = array
        georef = json.loads(item[f"{m.value}@georef"])
        if georef is not None:
            crs, transform, width, height = georef
            raw.georefs[m] = Georef(crs, tuple(transform), width, height)
        if m.spec.is_time_series:
            raw.dates[m] = _EPOCH + item[f"{m.value}@dates"].astype("timedelta64[D]")
        raw.paths[m] = Path(f"{where}#{patch_id}/{m.value}")
        if array.dtype.kind in "fc":
            raw.nonfinite[m] = count_nonfinite(array)
    return raw


@dataclass(frozen=True)
class PackSummary:
    """What ``pack`` did: folders written now, folders already complete, patches written."""

    root: Path
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    num_patches: int


def _group_key(ref: PatchRef) -> str:
    return f"{ref.split or _NONE_SPLIT}/{ref.patch_id.split('_', 1)[0]}"


def _pack_group(
    source_root: str, key: str, refs: list[PatchRef], modalities: list[Modality], out: str,
    chunk_bytes: str, level: int | None,
) -> tuple[str, list[str], dict[str, list[str]], dict[str, list[int]]]:  # fmt: skip
    """Write one folder (in a worker process): to ``.tmp/<key>``, then renamed."""
    import litdata

    needs_dates = [m for m in modalities if m.spec.is_time_series]
    dates = (
        DatesIndex(source_root, patch_ids=[r.patch_id for r in refs]).load(needs_dates)
        if needs_dates
        else None
    )
    tmp = Path(out) / ".tmp" / key
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous run's half-written folder, ours
    tmp.parent.mkdir(parents=True, exist_ok=True)
    count = _count_path(Path(out), key)

    def item(index: int) -> dict[str, Any]:
        ref = refs[index]
        raw = read_patch(ref, [m for m in modalities if m in ref.modalities], dates, num_threads=1)
        encoded = _encode(raw, ref, modalities, level)
        count.write_text(str(index + 1))  # read by the progress bar of the parent process
        return encoded

    litdata.optimize(
        item, list(range(len(refs))), output_dir=str(tmp), chunk_bytes=chunk_bytes,
        num_workers=1, verbose=False, start_method="fork", mode="overwrite",
    )  # fmt: skip
    has = {r.patch_id: [m.value for m in modalities if m in r.modalities] for r in refs}
    first = refs[0]
    px = {
        m.value: list(read_patch_px(first.path(m), m)) for m in modalities if m in first.modalities
    }
    final = Path(out) / key
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if not (final / "index.json").is_file():
            raise DataError(f"{final}: exists and is not a pack folder; move it away to pack here")
        shutil.rmtree(final)  # renamed by an interrupted run before it was recorded: ours
    os.replace(tmp, final)
    count.unlink(missing_ok=True)
    return key, [r.patch_id for r in refs], has, px


def _count_path(out: Path, key: str) -> Path:
    """Where a folder's worker writes how many patches it has packed."""
    return out / ".tmp" / f"{key}.count"


def _packed_so_far(out: Path, keys: Iterable[str]) -> int:
    total = 0
    for key in keys:
        try:
            total += int(_count_path(out, key).read_text() or 0)
        except (OSError, ValueError):  # not started yet, or being rewritten
            pass
    return total


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The pack manifest (of a folder or a URL); an empty one for a new folder.

    Raises:
        DataError: a damaged manifest, one of another format version, or one that cannot be
            fetched from a URL.
    """
    url = isinstance(root, str) and is_url(root)
    path = _fetch_manifest(str(root)) if url else Path(root) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT_VERSION, "modalities": None, "groups": {}}
    where = _join(str(root), MANIFEST) if url else path
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{where}: not a readable pack manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{where}: pack format {found}, expected {FORMAT_VERSION}")
    return manifest


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    path = root / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def pack(
    catalog: Catalog,
    out: str | Path,
    modalities: Sequence[Modality] | None = None,
    workers: int = 1,
    progress: bool = True,
    chunk_bytes: str = "64MB",
    compression: str | None = None,
) -> PackSummary:
    """Pack a catalog's patches into LitData shards under ``out`` (see the module docstring).

    Args:
        catalog: the patches (with their splits); its root holds the date tables.
        out: the packed dataset's folder (created; an existing pack is resumed or appended to).
        modalities: what to keep; default every modality the catalog has.
        workers: folders packed in parallel, one process each.
        progress: a tqdm bar over folders.
        chunk_bytes: LitData chunk size.
        compression: ``zstd[:level]`` compresses every array on its own (``parse_compression``);
            a pack keeps the compression it was started with.

    Raises:
        DataError: a source file is missing or invalid (naming it), or ``out`` holds a pack of
            other modalities.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if catalog.root is None:
        raise DataError("pack needs a dataset root (for the date tables)")
    mods = list(modalities) if modalities else sorted(
        {m for r in catalog.refs for m in r.modalities}, key=lambda m: list(Modality).index(m)
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    names = [m.value for m in mods]
    if manifest["modalities"] not in (None, names):
        raise DataError(
            f"{out / MANIFEST}: this pack holds {manifest['modalities']}; pack {names} "
            "into another folder"
        )
    codec = parse_compression(compression)
    name = None if codec is None else f"{codec[0]}:{codec[1]}"
    if manifest["groups"] and manifest.get("compression") != name:
        raise DataError(
            f"{out / MANIFEST}: this pack is compressed as {manifest.get('compression')}; "
            f"pack with that compression, or {name} into another folder"
        )
    if codec is not None:
        _zstd()  # a missing package is one error now, not one per worker
    manifest["modalities"] = names
    manifest["compression"] = name
    groups: dict[str, list[PatchRef]] = {}
    for ref in catalog.refs:
        groups.setdefault(_group_key(ref), []).append(ref)
    done = [k for k in groups if k in manifest["groups"]]
    todo = [k for k in sorted(groups) if k not in manifest["groups"]]
    written: list[str] = []
    total = sum(len(groups[k]) for k in todo)
    bar = tqdm(total=total, desc="pack", unit="patch", disable=not progress)
    level = None if codec is None else codec[1]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(
                _pack_group, str(catalog.root), k, groups[k], mods, str(out), chunk_bytes, level
            ): k
            for k in todo
        }
        pending = set(futures)
        while pending:
            done_now, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done_now:
                key, ids, has, px = future.result()
                manifest["groups"][key] = {"patch_ids": ids, "modalities": has, "px": px}
                _write_manifest(out, manifest)  # recorded once its folder is complete
                written.append(key)
            finished = sum(len(groups[k]) for k in written)
            running = [futures[f] for f in pending]
            bar.update(finished + _packed_so_far(out, running) - bar.n)
            bar.set_postfix_str(f"{len(written)}/{len(todo)} folders", refresh=False)
    bar.close()
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    return PackSummary(out, tuple(sorted(written)), tuple(sorted(done)),
                       sum(len(groups[k]) for k in todo))  # fmt: skip


class PackedReader:
    """Read packed patches by id: the packed counterpart of ``io.patches.read_patch``.

    Each folder is opened lazily as a ``litdata.StreamingDataset`` (in the process that
    reads, so the reader is safe to copy into DataLoader workers).
    """

    def __init__(self, root: str | Path) -> None:
        #: the pack's folder or URL, as given
        self.root = root if isinstance(root, str) and is_url(root) else str(Path(root))
        manifest = read_manifest(root)
        if not manifest["groups"]:
            raise DataError(f"{self.root}: not a packed dataset (no {MANIFEST})")
        self.where: dict[str, tuple[str, int]] = {}
        self.modalities: dict[str, frozenset[Modality]] = {}
        self.splits: dict[str, str | None] = {}
        self.px: dict[str, dict[str, list[int]]] = {}
        for key, group in manifest["groups"].items():
            self.px[key] = group.get("px", {})
            split = key.split("/", 1)[0]
            for index, patch_id in enumerate(group["patch_ids"]):
                self.where[patch_id] = (key, index)
                self.modalities[patch_id] = frozenset(
                    Modality(v) for v in group["modalities"][patch_id]
                )
                self.splits[patch_id] = None if split == _NONE_SPLIT else split
        self._open: dict[str, Any] = {}

    def refs(self) -> list[PatchRef]:
        """The packed patches as PatchRefs (root: the pack), sorted by id."""
        return [
            PatchRef(pid, self.root, self.modalities[pid], self.splits[pid])
            for pid in sorted(self.where)
        ]

    def patch_px(self, patch_id: str, modality: Modality) -> tuple[int, int]:
        """(width, height) of a modality of a packed patch, from the manifest (its folder's
        first patch: every patch read is checked against the model's sizes anyway).

        Raises:
            DataError: the patch or modality is not in the pack.
        """
        key = self.where.get(patch_id, ("", 0))[0]
        px = self.px.get(key, {}).get(modality.value)
        if px is None:
            raise DataError(f"{self.root}: patch {patch_id} has no {modality.value} in the pack")
        return px[0], px[1]

    def _dataset(self, key: str) -> Any:
        with _OPEN_LOCK:
            if key not in self._open:
                self._open[key] = _open_streaming(_join(self.root, key))
        return self._open[key]

    def _item(self, key: str, index: int) -> dict[str, Any]:
        """Item ``index`` of a folder, waiting for a chunk another process is fetching.

        For storage without ranged reads (``local:``, ``azure://``, ``hf://``), LitData
        fetches a whole chunk into its cache under a file lock, and a second process (or
        thread) asking for the same chunk meanwhile does not wait for the lock: it fails to
        open the file not yet there. The file appears when the first fetch ends, so that
        error is retried for up to a minute (a missing remote file has no local name and
        is not retried).
        """
        dataset = self._dataset(key)
        for pause in _CHUNK_WAITS:
            try:
                return dataset[index]
            except FileNotFoundError as exc:
                if exc.filename is None or pause is None:
                    raise DataError(f"{_join(self.root, key)}: item {index}: {exc}") from exc
                time.sleep(pause)
        raise AssertionError("unreachable")  # the last wait is None

    def read(self, patch_id: str, modalities: Iterable[Modality]) -> RawSample:
        """A packed patch, as ``read_patch`` gives it from the TIFFs.

        Raises:
            DataError: the patch or a modality is not in the pack.
        """
        if patch_id not in self.where:
            raise DataError(f"{self.root}: patch {patch_id} is not in the pack")
        key, index = self.where[patch_id]
        item = self._item(key, index)
        if item["patch_id"] != patch_id:
            raise DataError(
                f"{_join(self.root, key)}: item {index} is {item['patch_id']}, "
                f"the manifest says {patch_id}"
            )
        return decode(item, modalities, _join(self.root, key))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # each process opens its own
        return state


def open_pack(root: str | Path) -> PackedReader:
    """The reader of a packed dataset, its manifest parsed once per process and version (a
    full FLAIR-HUB manifest lists 241,100 patches); a local pack appended to is read again, a
    URL's manifest is fetched once per process."""
    if isinstance(root, str) and is_url(root):
        return _open_pack(root, 0)
    manifest = Path(root) / MANIFEST
    return _open_pack(str(Path(root)), manifest.stat().st_mtime_ns if manifest.is_file() else 0)


@lru_cache(maxsize=4)
def _open_pack(root: str, version: int) -> PackedReader:
    return PackedReader(root)


def catalog_of_pack(root: str | Path, departments: Iterable[str] | None = None) -> Catalog:
    """A Catalog of a packed dataset's patches, from its manifest alone (the refs' root is the
    pack's folder or URL; the catalog's root is the folder, None for a URL)."""
    refs = open_pack(root).refs()
    if departments:
        wanted = set(departments)
        refs = [r for r in refs if department_of(r.patch_id) in wanted]
    local = not (isinstance(root, str) and is_url(root))
    return Catalog(tuple(refs), Path(root) if local else None)


def pack_of(catalog: Catalog) -> PackedReader | None:
    """The reader of the pack a catalog lists (``catalog_of_pack``); None for TIFFs."""
    root: str | Path | None = catalog.root
    if root is None and catalog.refs:
        root = catalog.refs[0].root
    return open_pack(root) if root is not None and is_packed(root) else None


#: Loader threads open pack folders lazily; one at a time (a module lock: readers are pickled).
_OPEN_LOCK = threading.Lock()


def _open_streaming(url: str, attempts: int = 3) -> Any:
    """``litdata.StreamingDataset(url)``, tolerant of litdata's cache clearing race.

    litdata clears a stale cache folder with ``shutil.rmtree`` and recreates it without a lock;
    two processes (DDP ranks on one node) opening the same pack at once can make one of them fail
    with "Directory not empty" (seen once in ``tests/data/test_packed_ddp.py``). The folder is
    consistent again once the other process is through, so the open is retried.
    """
    import litdata

    for attempt in range(attempts - 1):
        try:
            return litdata.StreamingDataset(url)
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
            time.sleep(0.2 * (attempt + 1))
    return litdata.StreamingDataset(url)
