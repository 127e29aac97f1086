"""Loading throughput: flairkit's PatchDataset against reading the same files with rasterio alone.

Prints one JSON line. Generates a synthetic set at the real sizes (aerial 512 px, ~90 dates per
Sentinel series) unless --root is given, then measures, for
  (a) aerial + COSIA, and
  (b) all seven inputs + S2 masks + COSIA + LPIS,
samples/s and peak RSS through a DataLoader with 0 and 2 workers, and the rate of
`rasterio.open(path).read()` on the same files with no processing (the "ceiling"). The same
files are then packed (`flairkit pack`, LitData shards) and read again through the packed
reader ("packed_<w>_workers" rows); the pack's throughput, files and bytes before/after are
reported under "pack". The same for a pack with every array zstd-compressed ("pack_zstd",
"packed_zstd_<w>_workers"), and the plain pack given as a ``local:`` URL, read through LitData's
downloader and cache as a bucket would be ("packed_url_0_workers"). Packed rows give their
ratio to the TIFF loader ("ratio_to_tiff") and, with 0 workers, two rates on one thread, one
sample at a time: decoding alone ("decode_only_samples_per_s") and decoding + preprocessing
("one_thread_samples_per_s"); the difference is the cloud filter, normalisation and label
mapping (the loader itself reads a batch's samples on a few threads).
Each configuration runs in a fresh subprocess so its peak RSS is its own.

Usage: python bench/loading.py [--root DIR] [--passes 3] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "aerial_cosia": {"inputs": ["AERIAL_RGBI"], "tasks": ["AERIAL_LABEL-COSIA"]},
    "all": {
        "inputs": [
            "AERIAL_RGBI",
            "AERIAL-RLT_PAN",
            "DEM_ELEV",
            "SPOT_RGBI",
            "SENTINEL2_TS",
            "SENTINEL1-ASC_TS",
            "SENTINEL1-DESC_TS",
        ],
        "tasks": ["AERIAL_LABEL-COSIA", "ALL_LABEL-LPIS"],
    },
}


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: kilobytes


def _build(root: Path, config: dict, packed: Path | str | None = None):
    from flairkit.config import preprocess_config_for
    from flairkit.data.datasets import PatchDataset
    from flairkit.io.catalog import Catalog
    from flairkit.io.dates import DatesIndex
    from flairkit.modalities import Modality, Task
    from flairkit.transforms.preprocess import Preprocessor

    inputs = [Modality(m) for m in config["inputs"]]
    tasks = tuple(Task(t) for t in config["tasks"])
    preprocess = Preprocessor(preprocess_config_for(inputs, tasks))
    if packed is not None:
        from flairkit.data.packed import PackedReader, catalog_of_pack

        catalog = catalog_of_pack(packed)
        return catalog, PatchDataset(catalog.refs, preprocess, packed=PackedReader(packed))
    catalog = Catalog.scan(root)
    dates = None
    if any(m.spec.is_time_series for m in inputs):
        dates = DatesIndex(root).load(preprocess.required_modalities)
    return catalog, PatchDataset(catalog.refs, preprocess, dates)


def run_one(root: Path, name: str, mode: str, workers: int, passes: int) -> dict:
    """Measure one configuration in this process (``packed``: ``root`` is the pack)."""
    import rasterio
    from torch.utils.data import DataLoader

    from flairkit.sample import collate

    extra: dict = {}
    if mode in ("packed", "packed_zstd", "packed_url"):
        location = f"local:{root}" if mode == "packed_url" else root
        catalog, dataset = _build(root, CONFIGS[name], packed=location)
        if workers == 0:  # one thread, one sample at a time: decoding alone, then all
            ids = [r.patch_id for r in catalog.refs]

            def rate(work) -> float:
                for i, pid in enumerate(ids):
                    work(i, pid)
                start = time.perf_counter()
                for _ in range(passes):
                    for i, pid in enumerate(ids):
                        work(i, pid)
                return round(len(ids) * passes / (time.perf_counter() - start), 2)

            extra["decode_only_samples_per_s"] = rate(
                lambda i, pid: dataset.packed.read(pid, dataset.modalities)
            )
            extra["one_thread_samples_per_s"] = rate(lambda i, pid: dataset._load(i, 1))
    else:
        catalog, dataset = _build(root, CONFIGS[name])
    n = len(dataset)
    if mode == "rasterio":
        paths = [ref.path(m) for ref in catalog.refs for m in dataset.modalities]
        for p in paths:  # warm the page cache exactly as the flairkit run does
            with rasterio.open(p) as src:
                src.read()
        start = time.perf_counter()
        for _ in range(passes):
            for p in paths:
                with rasterio.open(p) as src:
                    src.read()
        seconds = time.perf_counter() - start
    else:
        loader = DataLoader(
            dataset,
            batch_size=4,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )
        for _ in loader:  # warm-up pass: page cache, worker start-up
            pass
        start = time.perf_counter()
        for _ in range(passes):
            for _batch in loader:
                pass
        seconds = time.perf_counter() - start
    return {
        "samples_per_s": round(n * passes / seconds, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_workers_mb": round(_peak_rss_mb(resource.RUSAGE_CHILDREN), 1) if workers else 0.0,
        "num_patches": n,
        **extra,
    }


def _make_root(tmp: Path, seed: int) -> Path:
    from flairkit.synth import make_synthetic_flairhub

    root = tmp / "flairhub"
    make_synthetic_flairhub(
        root,
        seed=seed,
        aerial_px=512,
        domains=["D006-2020", "D012-2019"],
        num_rois=2,
        patches_per_roi=(2, 3),
        min_dates=80,
        max_dates=100,
    )
    return root


def _files_and_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _pack(root: Path, out: Path, workers: int, compression: str | None = None) -> dict:
    from flairkit.data.packed import pack
    from flairkit.io.catalog import Catalog

    catalog = Catalog.scan(root)
    start = time.perf_counter()
    summary = pack(catalog, out, workers=workers, progress=False, compression=compression)
    seconds = time.perf_counter() - start
    before, after = _files_and_bytes(root), _files_and_bytes(out)
    return {
        "patches_per_s": round(summary.num_patches / seconds, 2),
        "workers": workers,
        "files_before": before[0], "files_after": after[0],
        "bytes_before": before[1], "bytes_after": after[1],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="existing dataset root (default: generate one)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the set")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--one", nargs=3, metavar=("CONFIG", "MODE", "WORKERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        name, mode, workers = args.one
        print(json.dumps(run_one(args.root, name, mode, int(workers), args.passes)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or _make_root(Path(tmp), seed=0)
        result: dict = {"bench": "loading", "passes": args.passes}
        packs = {"packed": Path(tmp) / "packed", "packed_zstd": Path(tmp) / "packed_zstd"}
        packs["packed_url"] = packs["packed"]
        result["pack"] = _pack(root, packs["packed"], max(args.workers))
        result["pack_zstd"] = _pack(root, packs["packed_zstd"], max(args.workers), "zstd")
        # the URL row's LitData cache: in the temporary folder, not ~/.lightning
        env = {**os.environ, "LITDATA_CACHE_DIR": str(Path(tmp) / "litdata-cache")}
        for name in CONFIGS:
            runs = [("rasterio", 0)] + [("flairkit", w) for w in args.workers]
            runs += [("packed", w) for w in args.workers]
            runs += [("packed_zstd", w) for w in args.workers] + [("packed_url", 0)]
            entry: dict = {}
            for mode, workers in runs:
                cmd = [sys.executable, __file__, "--root", str(root), "--passes", str(args.passes)]
                if mode in packs:
                    cmd[3] = str(packs[mode])
                out = subprocess.run(
                    [*cmd, "--one", name, mode, str(workers)],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
                key = "rasterio_alone" if mode == "rasterio" else f"{mode}_{workers}_workers"
                entry[key] = json.loads(out.stdout.strip().splitlines()[-1])
            ceiling = entry["rasterio_alone"]["samples_per_s"]
            for key, value in entry.items():
                if key != "rasterio_alone":
                    value["ratio_to_rasterio_alone"] = round(value["samples_per_s"] / ceiling, 3)
                if key.startswith("packed"):
                    workers = key.rsplit("_", 2)[-2]
                    tiff = entry[f"flairkit_{workers}_workers"]["samples_per_s"]
                    value["ratio_to_tiff"] = round(value["samples_per_s"] / tiff, 3)
            result[name] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
