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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

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


def is_packed(root: str | Path) -> bool:
    """Whether a folder is a packed dataset (holds ``flairkit_pack.json``)."""
    return (Path(root) / MANIFEST).is_file()


def _encode(raw: RawSample, ref: PatchRef, modalities: Sequence[Modality]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "patch_id": ref.patch_id,
        "split": ref.split or _NONE_SPLIT,
        "domain": ref.patch_id.split("_", 1)[0],
    }
    for m in modalities:
        present = m in raw.arrays
        item[m.value] = np.ascontiguousarray(raw.arrays[m]) if present else np.zeros(0, np.uint8)
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
        if array is None or array.size == 0:
            raise DataError(f"{where}: patch {patch_id} has no {m.value} in the pack")
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
    chunk_bytes: str,
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

    def item(index: int) -> dict[str, Any]:
        ref = refs[index]
        raw = read_patch(ref, [m for m in modalities if m in ref.modalities], dates, num_threads=1)
        return _encode(raw, ref, modalities)

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
    return key, [r.patch_id for r in refs], has, px


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The pack manifest; an empty one for a new folder.

    Raises:
        DataError: a damaged manifest or one of another format version.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT_VERSION, "modalities": None, "groups": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not a readable pack manifest ({exc})") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: pack format {manifest.get('format')}, expected {FORMAT_VERSION}")
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
) -> PackSummary:
    """Pack a catalog's patches into LitData shards under ``out`` (see the module docstring).

    Args:
        catalog: the patches (with their splits); its root holds the date tables.
        out: the packed dataset's folder (created; an existing pack is resumed or appended to).
        modalities: what to keep; default every modality the catalog has.
        workers: folders packed in parallel, one process each.
        progress: a tqdm bar over folders.
        chunk_bytes: LitData chunk size.

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
    manifest["modalities"] = names
    groups: dict[str, list[PatchRef]] = {}
    for ref in catalog.refs:
        groups.setdefault(_group_key(ref), []).append(ref)
    done = [k for k in groups if k in manifest["groups"]]
    todo = [k for k in sorted(groups) if k not in manifest["groups"]]
    written = []
    bar = tqdm(total=len(todo), desc="pack", unit="folder", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [
            pool.submit(_pack_group, str(catalog.root), k, groups[k], mods, str(out), chunk_bytes)
            for k in todo
        ]
        for future in as_completed(futures):
            key, ids, has, px = future.result()
            manifest["groups"][key] = {"patch_ids": ids, "modalities": has, "px": px}
            _write_manifest(out, manifest)  # recorded once its folder is complete
            written.append(key)
            bar.update(1)
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
        self.root = Path(root)
        manifest = read_manifest(self.root)
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
            PatchRef(pid, str(self.root), self.modalities[pid], self.splits[pid])
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
        if key not in self._open:
            import litdata

            self._open[key] = litdata.StreamingDataset(str(self.root / key))
        return self._open[key]

    def read(self, patch_id: str, modalities: Iterable[Modality]) -> RawSample:
        """A packed patch, as ``read_patch`` gives it from the TIFFs.

        Raises:
            DataError: the patch or a modality is not in the pack.
        """
        if patch_id not in self.where:
            raise DataError(f"{self.root}: patch {patch_id} is not in the pack")
        key, index = self.where[patch_id]
        item = self._dataset(key)[index]
        if item["patch_id"] != patch_id:
            raise DataError(
                f"{self.root / key}: item {index} is {item['patch_id']}, the manifest says {patch_id}"
            )
        return decode(item, modalities, str(self.root / key))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # each process opens its own
        return state


def open_pack(root: str | Path) -> PackedReader:
    """The reader of a packed dataset, its manifest parsed once per process and version (a
    full FLAIR-HUB manifest lists 241,100 patches); a pack appended to is read again."""
    path = Path(root)
    manifest = path / MANIFEST
    return _open_pack(path, manifest.stat().st_mtime_ns if manifest.is_file() else 0)


@lru_cache(maxsize=4)
def _open_pack(root: Path, version: int) -> PackedReader:
    return PackedReader(root)


def catalog_of_pack(root: str | Path, departments: Iterable[str] | None = None) -> Catalog:
    """A Catalog of a packed dataset's patches, from its manifest alone."""
    refs = open_pack(Path(root)).refs()
    if departments:
        wanted = set(departments)
        refs = [r for r in refs if department_of(r.patch_id) in wanted]
    return Catalog(tuple(refs), Path(root))
