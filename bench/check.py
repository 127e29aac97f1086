"""Speed of `flairkit check`: header and deep checks on synthetic data, extrapolated to FLAIR-HUB.

Prints one JSON line. Writes two synthetic sets with the real band counts (80-100 dates per
Sentinel series; the real means are ~91 for S2 and ~94 per S1 orbit, spec section 1.6):
  header set: --patches patches at aerial 64 px (a header check's cost does not depend on the
              pixel count, only on the number of files and bands);
  deep set:   --deep-patches patches at the real sizes (aerial 512 px), for the deep check,
              whose cost is the decoding.
Each check runs with a thread pool and a process pool (1 worker and --workers workers), best of
--repeats runs. Also: CPU ms per file of the header check's direct TIFF-directory reader and of
a rasterio open of the same files. The whole check is timed (scan, tables, files, comparisons) and extrapolated
linearly to 241,100 patches (2,411,000 files). Files are in the page cache (just written): a
first read of the real data from disk adds the storage's latency.

Usage: python bench/check.py [--patches 400] [--deep-patches 24] [--workers N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REAL_PATCHES = 241_100


def _make(root: Path, num_patches: int, aerial_px: int) -> int:
    """Write a synthetic set of about ``num_patches`` patches; return the exact number."""
    from flairkit.synth import DEFAULT_DOMAINS, make_synthetic_flairhub

    per_roi = (5, 5) if aerial_px < 512 else (2, 3)
    per_domain = per_roi[0] * per_roi[1]
    domains = list(DEFAULT_DOMAINS) if num_patches >= 4 * per_domain else list(DEFAULT_DOMAINS[:2])
    num_rois = max(1, round(num_patches / (len(domains) * per_domain)))
    summary = make_synthetic_flairhub(
        root,
        seed=0,
        aerial_px=aerial_px,
        domains=domains,
        num_rois=num_rois,
        patches_per_roi=per_roi,
        min_dates=80,
        max_dates=100,
    )
    return len(summary.all_patch_ids)


def _time(root: Path, deep: bool, executor: str, workers: int, repeats: int) -> dict:
    from flairkit.check import check_dataset

    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = check_dataset(root, deep=deep, workers=workers, executor=executor)
        seconds = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"synthetic set not clean: {result.counts()}")
        best = seconds if best is None else min(best, seconds)
    assert best is not None
    per_patch = best / result.num_patches
    return {
        "executor": executor,
        "workers": workers,
        "seconds": round(best, 3),
        "files_per_s": round(result.num_files / best, 1),
        "extrapolated_minutes_241100": round(per_patch * REAL_PATCHES / 60, 1),
    }


def _reader_ms_per_file(root: Path, limit: int = 2000) -> dict:
    """CPU ms per file of the direct TIFF-directory reader and of a rasterio open, same files."""
    import rasterio

    from flairkit.check_files import _GDAL_ENV, _read_header_with_gdal, read_tiff_header

    paths = [str(p) for p in sorted(root.glob("D*/*/*.tif"))][:limit]
    out = {}
    with rasterio.Env(**_GDAL_ENV):
        for name, read in (("direct", read_tiff_header), ("rasterio", _read_header_with_gdal)):
            start = time.process_time()
            for path in paths:
                read(path)
            out[name] = round((time.process_time() - start) / len(paths) * 1e3, 3)
    return out


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=400, help="patches of the header set")
    parser.add_argument("--deep-patches", type=int, default=24, help="patches of the deep set")
    parser.add_argument("--workers", type=int, default=_usable_cpus(), help="pool size")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    pools = [("thread", 1), ("thread", args.workers), ("process", args.workers)]
    if args.workers == 1:
        pools = [("thread", 1), ("process", 1)]
    result: dict = {"bench": "check", "cpus": _usable_cpus(), "load_avg_1min_start": None}
    result["load_avg_1min_start"] = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        header_root, deep_root = Path(tmp, "header"), Path(tmp, "deep")
        num_header = _make(header_root, args.patches, aerial_px=64)
        num_deep = _make(deep_root, args.deep_patches, aerial_px=512)
        result["header"] = {
            "patches": num_header,
            "files": num_header * 10,
            "reader_cpu_ms_per_file": _reader_ms_per_file(header_root),
            "runs": [_time(header_root, False, e, w, args.repeats) for e, w in pools],
        }
        result["deep"] = {
            "patches": num_deep,
            "files": num_deep * 10,
            "runs": [_time(deep_root, True, e, w, args.repeats) for e, w in pools],
        }
    for mode in ("header", "deep"):
        fastest = min(result[mode]["runs"], key=lambda r: r["seconds"])
        result[mode]["fastest"] = f"{fastest['executor']} x{fastest['workers']}"
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
