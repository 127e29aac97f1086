"""The ``flairkit`` command: parse arguments, call one library function, report.

Subcommands:
  synth  write a synthetic dataset in the exact FLAIR-HUB layout
  info   summarise a dataset (patches per split, department, modality; missing files)
  show   describe one patch (shapes, dtypes, ranges, dates, cloud filter) and draw it
  check  verify every file of a dataset before a long run (headers, dates, splits; --deep: pixels)
  models list the 24 benchmark presets
  fit / validate / test / predict   train, score, predict patches from a run YAML
  map    map a large area with a trained model (class map COG, QGIS style, preview)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flairkit import __version__
from flairkit.config import ConfigError
from flairkit.io.raster import DataError
from flairkit.modalities import Modality

log = logging.getLogger("flairkit")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic FLAIR-HUB dataset in the real layout",
        description=(
            "Write a synthetic dataset in exactly the FLAIR-HUB layout: the ten modality folders "
            "per domain-year, EPSG:2154 GeoTIFFs with the real band counts and dtypes, the "
            "GLOBAL_ALL_MTD GeoPackages (dates, splits) and the CSV lists. Land cover is visible "
            "in the aerial image and the elevation; crop types differ only by their Sentinel "
            "time profiles. Deterministic for a seed."
        ),
    )
    p.add_argument("out", type=Path, help="output folder (the dataset root)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--aerial-px",
        type=int,
        default=512,
        help="aerial patch side in pixels; other modalities scale with it (default 512, as real)",
    )
    p.add_argument(
        "--domains",
        nargs="+",
        default=None,
        metavar="DOMAIN-YEAR",
        help="domain-years to write, e.g. D006-2020 D012-2019 (default: 2 train/val + 2 test)",
    )
    p.add_argument("--rois", type=int, default=2, help="ROIs per domain (default 2)")
    p.add_argument(
        "--patches-per-roi",
        type=int,
        nargs=2,
        default=(2, 2),
        metavar=("ROWS", "COLS"),
        help="patch grid per ROI (default 2 2)",
    )
    p.add_argument("--min-dates", type=int, default=6, help="fewest Sentinel dates per ROI")
    p.add_argument("--max-dates", type=int, default=14, help="most Sentinel dates per ROI")
    p.add_argument("--csv-delimiter", default=",", choices=[",", ";"], help="CSV list delimiter")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summarise a dataset: patches per split, department and modality, missing files",
        description=(
            "Index a FLAIR-HUB root (by scanning its folders, or from official CSV lists) and "
            "print patches per split, per domain-year and per modality, and which files are missing."
        ),
    )
    p.add_argument("root", type=Path, help="dataset root, a CSV list, or a folder of CSV lists")
    p.add_argument(
        "--split",
        default="auto",
        help="split method: auto (split_1 if GLOBAL_ALL_MTD_SPLIT.gpkg exists, else card), card, "
        "csv, split_1..split_5, split_flairchallenge, split_toy, or a .csv/.json file",
    )
    p.add_argument("--departments", nargs="+", help="keep only these departments / domain-years")
    p.add_argument("--years", nargs="+", help="keep only these survey years")
    p.add_argument("--modalities", nargs="+", help="keep only patches having all these modalities")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--progress", action="store_true", help="progress bar while scanning")


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="describe one patch and optionally draw it to a PNG",
        description=(
            "Read every modality of one patch and print its shape, dtype, value range and, for "
            "time series, acquisition dates as ISO dates with those kept and dropped by the "
            "benchmark's S2 cloud filter. --png draws all modalities side by side."
        ),
    )
    p.add_argument("root", type=Path, help="dataset root (or CSV list)")
    p.add_argument(
        "patch_id", nargs="?", help="patch id, e.g. D006-2020_UU-S1-1_1-1 (default: first)"
    )
    p.add_argument("--modalities", nargs="+", help="modalities to read (default: all present)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--png", type=Path, help="write a figure of the patch here")
    p.add_argument(
        "--config",
        type=Path,
        metavar="RUN.yaml",
        help="a run config: show its preprocess section's cloud filter, DEM channels, LPIS "
        "level and bands, what its model sees (default: the benchmark's)",
    )
    p.add_argument(
        "--lpis-level",
        type=int,
        choices=[1, 2, 3],
        help="LPIS level drawn (default: the config's preprocess.lpis_level, else 1)",
    )


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the 24 FLAIR-HUB benchmark presets with their parameter counts",
        description=(
            "List the benchmark presets LC-A ... LC-ALL and LPIS-A ... LPIS-K: inputs, task, "
            "flairkit's parameter count (the card's convention: fusion 1x1 convs excluded, one "
            "auxiliary decoder per input of multi-input models), the card's PARA column and the "
            "published OA / mIoU. Nothing is downloaded and no weights are allocated."
        ),
    )
    p.add_argument("ids", nargs="*", help="preset ids (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    helps = {
        "fit": "train a model (resumes from checkpoints/last.ckpt when present)",
        "validate": "score a trained model on the validation split",
        "test": "score a trained model on the test split; reports beside the published scores",
        "predict": "write one georeferenced class map per patch (optional probabilities)",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=(
                f"{text[0].upper()}{text[1:]}. The run is described by a YAML config "
                "(see configs/); KEY=VALUE arguments override it with dotted keys, e.g. "
                "train.max_epochs=3 data.batch_size=2."
            ),
        )
        p.add_argument("--config", "-c", type=Path, required=True, help="run YAML")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
        if name == "fit":
            p.add_argument(
                "--no-resume", action="store_true", help="start over even if a checkpoint exists"
            )
        else:
            p.add_argument(
                "--weights",
                help=(
                    "model: a flairkit .safetensors or fit .ckpt, a published FLAIR-HUB file, or "
                    "a hub id hf:IGNF/FLAIR-HUB_<ID>_...[@revision] (default: "
                    "<output_dir>/model.safetensors)"
                ),
            )
            p.add_argument(
                "--preset",
                help=(
                    "preset of a published FLAIR-HUB file whose name does not tell it "
                    "(e.g. LC-A; default: the config's model.preset)"
                ),
            )
        if name == "predict":
            p.add_argument("--split", default="test", help="split to predict (default test)")
            p.add_argument(
                "--out", type=Path, help="output folder (default: <output_dir>/predictions_<split>)"
            )
            p.add_argument(
                "--probabilities", action="store_true", help="also write uint8 class probabilities"
            )


def _add_map(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "map",
        help="map a large area with a trained model: class map COG, QGIS style, PNG preview",
        description=(
            "Map the area covered by one raster per input modality (see configs/zones/"
            "example.yaml): overlapping tiles are read and preprocessed as in training, blended "
            "without seams and written as Cloud-Optimized GeoTIFFs. An interrupted run resumes "
            "where it stopped. Several processes (torchrun, or --rank/--world-size for "
            "independent jobs, then --merge) split the rows."
        ),
    )
    p.add_argument("--config", "-c", type=Path, required=True, help="map YAML")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument(
        "--rank", type=int, help="this job's rank (default: RANK or SLURM_PROCID, else 0)"
    )
    p.add_argument(
        "--world-size",
        type=int,
        help="number of jobs (default: WORLD_SIZE or SLURM_NTASKS, else 1)",
    )
    p.add_argument(
        "--merge", action="store_true", help="merge the pieces written by --world-size jobs"
    )
    p.add_argument("--aoi", type=Path, help="area of interest: a vector file of polygons (any CRS)")
    p.add_argument("--aoi-where", help="SQL filter on the AOI's attributes, e.g. \"dep = '34'\"")
    p.add_argument(
        "--tile-size-m",
        type=float,
        help="write a tiled product: COG tiles of this side (map CRS units, e.g. 5000) "
        "aligned to its multiples, a .vrt mosaic (output.path), an index and a preview",
    )


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="verify a dataset before a long run: files, headers, dates, splits (--deep: pixels)",
        description=(
            "Open every file of a dataset (a root, a CSV list or a folder of lists) in parallel "
            "and check it against the FLAIR-HUB contract: exists, non-empty, a GeoTIFF; band "
            "count, dtype, size, CRS and footprint, also across a patch's modalities; each time "
            "series against its dates row; the split and dates GeoPackages and CSV lists parse. "
            "--deep also decodes every pixel: truncated or corrupt data, NaN/inf, labels and "
            "masks out of range. Prints a summary per problem kind, writes a JSON report and "
            "exits 1 when anything is wrong (0 when clean)."
        ),
    )
    p.add_argument("root", type=Path, help="dataset root, a CSV list, or a folder of CSV lists")
    p.add_argument("--deep", action="store_true", help="decode every file and check its values")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    p.add_argument(
        "--report",
        type=Path,
        default=Path("flairkit-check.json"),
        help="JSON report path (default ./flairkit-check.json; never overwrites another file)",
    )
    p.add_argument("--workers", type=int, help="parallel workers (default: the usable CPUs)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="no bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flairkit`` command."""
    parser = argparse.ArgumentParser(
        prog="flairkit",
        description=(
            "FLAIR-HUB toolkit: read the dataset, inspect patches, make synthetic data, "
            "list the benchmark models."
        ),
    )
    parser.add_argument("--version", action="version", version=f"flairkit {__version__}")
    parser.add_argument(
        "-v", "--verbose", "--debug", action="count", default=0,
        help="more logging; on an error, also print the traceback",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_info(sub)
    _add_show(sub)
    _add_models(sub)
    _add_run_commands(sub)
    _add_map(sub)
    _add_check(sub)
    _add_download(sub)
    _add_pack(sub)
    return parser


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="pack a dataset into LitData shards for streaming training (resumable, appendable)",
        description=(
            "Convert patches (a dataset root, a CSV list or a folder of lists) into LitData "
            "shards, one folder per split and domain-year, every modality in its native dtype "
            "with dates, georeferences, patch id, domain and split. Train on the result by "
            "giving it as data.root. An interrupted pack resumes; packing more domains into "
            "the same OUT appends them."
        ),
    )
    p.add_argument("source", type=Path, help="dataset root, CSV list or folder of lists")
    p.add_argument("out", help="the packed dataset's folder (local; copy it to a bucket after)")
    p.add_argument("--modalities", nargs="+", default=[], help="modalities to keep (default all)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split")
    p.add_argument("--departments", nargs="+", default=[], help="only these departments")
    p.add_argument("--years", nargs="+", default=[], help="only these years")
    p.add_argument("--workers", type=int, default=1, help="folders packed in parallel")
    p.add_argument(
        "--compression",
        help="zstd or zstd:LEVEL (1-22, default 3): each array compressed on its own "
        "(smaller shards, still one byte range per sample); default none",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="fetch FLAIR-HUB archives from the hub: a selection, verified, extracted, resumable",
        description=(
            "Download part of FLAIR-HUB from its Hugging Face repository: the archives of the "
            "selected departments/domain-years, years and modalities (or of a split), fetched "
            "in parallel, checked against the listing's sha256 and extracted atomically into "
            "OUT. Running it again resumes and skips what is complete. HF_ENDPOINT, HF_TOKEN "
            "and HF_HUB_OFFLINE are honoured."
        ),
    )
    p.add_argument("out", type=Path, help="dataset root to write (created if missing)")
    p.add_argument(
        "--departments", "--domains", nargs="+", default=[], metavar="D",
        help="departments (D004) and/or domain-years (D004-2021); default: all",
    )  # fmt: skip
    p.add_argument("--years", nargs="+", default=[], help="survey years, e.g. 2021")
    p.add_argument(
        "--modalities", nargs="+", default=[],
        help="modality folders (AERIAL_RGBI, SENTINEL2_TS, AERIAL_LABEL-COSIA, aliases); default: all",
    )  # fmt: skip
    p.add_argument(
        "--split", choices=["train", "val", "test"],
        help="only the domain-years a split needs (read from the split GeoPackage)",
    )  # fmt: skip
    p.add_argument("--split-column", default="split_1", help="split column (default split_1)")
    p.add_argument("--toy", action="store_true", help="the toy dataset (~750 MB) instead")
    p.add_argument("--toy-url", default=None, help="where the toy archive is (default: IGN's)")
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be fetched, fetch nothing"
    )
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument("--repo", default=None, help="dataset repository (default IGNF/FLAIR-HUB)")
    p.add_argument("--revision", default=None, help="branch, tag or commit of the repository")
    p.add_argument("--keep-archives", action="store_true", help="keep the zips after extraction")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_synth(args: argparse.Namespace) -> int:
    from flairkit.synth import make_synthetic_flairhub

    summary = make_synthetic_flairhub(
        args.out,
        seed=args.seed,
        aerial_px=args.aerial_px,
        domains=args.domains,
        num_rois=args.rois,
        patches_per_roi=tuple(args.patches_per_roi),
        min_dates=args.min_dates,
        max_dates=args.max_dates,
        csv_delimiter=args.csv_delimiter,
        progress=args.progress,
    )
    counts = ", ".join(f"{k} {len(v)}" for k, v in summary.patch_ids.items())
    print(f"wrote {summary.num_files} files to {args.out} ({counts} patches)")
    return 0


def _parse_modalities(names: Sequence[str] | None) -> list[Modality] | None:
    return None if names is None else [Modality.parse(n) for n in names]


def _run_info(args: argparse.Namespace) -> int:
    from flairkit.io.catalog import Catalog

    catalog = Catalog.open(args.root, split=args.split, progress=args.progress)
    catalog = catalog.filter(
        departments=args.departments,
        years=args.years,
        modalities=_parse_modalities(args.modalities),
    )
    summary = catalog.summary(progress=args.progress)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{summary['root']}: {summary['num_patches']} patches in {summary['num_domains']} domain-years"
    )
    print("per split:    " + ", ".join(f"{k} {v}" for k, v in summary["patches_per_split"].items()))
    print("per domain-year:")
    for domain, counts in summary["patches_per_domain"].items():
        print(f"  {domain:<16} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print("files per modality:")
    for m, n in summary["files_per_modality"].items():
        print(f"  {m:<20} {n}")
    missing = summary["missing_files"]
    if missing:
        print("missing files:")
        for m, e in missing.items():
            print(f"  {m:<20} {e['count']} patches, e.g. {', '.join(e['examples'][:3])}")
    else:
        print("missing files: none")
    if summary["file_problems"]:
        print("listed files absent or not a TIFF:")
        for m, e in summary["file_problems"].items():
            print(f"  {m:<20} {e['count']} files, e.g. {e['examples'][0]}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from flairkit.io.catalog import Catalog, file_problem
    from flairkit.io.dates import DatesIndex
    from flairkit.io.patches import read_patch
    from flairkit.show import (
        DISPLAY_ORDER,
        describe_patch,
        format_description,
        load_show_preprocessor,
        plot_patch,
    )

    preprocessor = load_show_preprocessor(args.config)  # a bad config fails before any read
    catalog = Catalog.open(args.root, split=None)
    if not catalog.refs:
        raise DataError(f"{args.root}: no patch found")
    ref = catalog.get(args.patch_id) if args.patch_id else catalog.refs[0]
    wanted = _parse_modalities(args.modalities)
    # Every modality not read is reported with its expected path (missing or not a TIFF);
    # one asked for by name must be there.
    problems = {
        m: file_problem(ref.path(m)) if m in ref.modalities else "missing"
        for m in (wanted or DISPLAY_ORDER)
    }
    for m in wanted or ():
        if problems[m]:
            raise DataError(f"{ref.path(m)}: {m.value} file of {ref.patch_id}: {problems[m]}")
    mods = [m for m, problem in problems.items() if problem is None]
    missing = {m: (ref.path(m), problem) for m, problem in problems.items() if problem}
    if not mods:
        m, (path, problem) = next(iter(missing.items()))
        raise DataError(f"{ref.patch_id}: no file can be read (e.g. {m.value}, {problem}: {path})")
    dates = (
        DatesIndex(catalog.root or args.root) if any(m.spec.is_time_series for m in mods) else None
    )
    raw = read_patch(ref, mods, dates)
    desc = describe_patch(raw, preprocessor, missing=missing)
    if args.png:
        png = plot_patch(raw, args.png, preprocessor=preprocessor, lpis_level=args.lpis_level)
        desc["png"] = str(png)
    if args.json:
        print(json.dumps(desc, indent=2))
    else:
        print(format_description(desc))
        if args.png:
            print(f"figure: {desc['png']}")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from flairkit.models.presets import describe_presets

    rows = describe_presets(args.ids or None, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    short = {m.value: (m.spec.aliases[0] if m.spec.aliases else m.value) for m in Modality}
    print(
        f"{'id':<7} {'task':<6} {'inputs':<34} {'params (M)':>10} {'card (M)':>9} {'diff':>7} {'OA':>5} {'mIoU':>5}"
    )
    for r in rows:
        inputs = "+".join(short[m] for m in r["inputs"])
        task = "COSIA" if r["task"] == "AERIAL_LABEL-COSIA" else "LPIS"
        print(
            f"{r['id']:<7} {task:<6} {inputs:<34} {r['params'] / 1e6:>10.3f} {r['card_para_m']:>9.1f} "
            f"{r['diff_to_card_pct']:>6.2f}% {r['card_oa']:>5.1f} {r['card_miou']:>5.1f}"
        )
    published = [(r["id"], repo) for r in rows for repo in r["published"]]
    if published:
        print("\npublished weights (IGN, Hugging Face):")
        for model_id, repo in published:
            print(f"  {model_id:<7} {repo}")
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    from flairkit.config import load_run_config
    from flairkit.training.run import fit

    cfg = load_run_config(args.config, args.overrides)
    result = fit(cfg, resume=not args.no_resume and "auto")
    for task, s in result.val_scores.items():
        print(f"val {task}: mIoU {s['miou']:.2f}  OA {s['oa']:.2f}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"model: {result.model_path}")
    return 0


def _model_of_weights(args: argparse.Namespace) -> Callable[[], Any] | None:
    """The model of ``--weights``, for a run config without a ``model`` section."""
    if not args.weights:
        return None

    def read() -> Any:
        from flairkit.checkpoint import read_model_recipe

        return read_model_recipe(args.weights, args.preset)[0]

    return read


def _run_evaluate(args: argparse.Namespace) -> int:
    from flairkit.config import load_run_config
    from flairkit.reports import format_summary
    from flairkit.training.run import evaluate

    cfg = load_run_config(args.config, args.overrides, _model_of_weights(args))
    split = "val" if args.command == "validate" else "test"
    results = evaluate(cfg, args.weights, split, args.preset)
    for task, r in results.items():
        print(f"{split} {task}: {format_summary(r['scores'], r['published'])}")
        for kind, path in r["paths"].items():
            print(f"  {kind}: {path}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from flairkit.config import load_run_config
    from flairkit.training.run import predict

    cfg = load_run_config(args.config, args.overrides, _model_of_weights(args))
    written = predict(cfg, args.weights, args.split, args.out, args.probabilities, args.preset)
    folder = written[0].parent.parent if written else args.out
    print(f"wrote {len(written)} class maps to {folder}")
    return 0


def _run_map(args: argparse.Namespace) -> int:
    from flairkit.config import load_zone_config
    from flairkit.inference.shard import rank_from_env
    from flairkit.inference.zonal import merge_zone, predict_zone
    from flairkit.io.writers import MapOutputs

    overrides = list(args.overrides)
    if args.aoi is not None:
        overrides.append(f"aoi.path={args.aoi.resolve()}")
    if args.aoi_where is not None:
        if args.aoi is None:
            raise ConfigError("--aoi-where needs --aoi")
        overrides.append(f"aoi.where={args.aoi_where}")
    if args.tile_size_m is not None:
        overrides.append(f"output.tile_size_m={args.tile_size_m}")
    cfg = load_zone_config(args.config, overrides)
    if cfg.output.tile_size_m is not None:
        return _run_product(cfg, args)
    outputs: MapOutputs | None  # None: this rank wrote its pieces, a --merge assembles them
    try:
        if args.merge:
            if args.world_size is None:
                raise ConfigError("--merge needs --world-size: the number of jobs that mapped")
            outputs = merge_zone(cfg, args.world_size)
        else:
            outputs = predict_zone(cfg, rank=args.rank, world_size=args.world_size)
    except FileExistsError as exc:  # output.on_existing: error
        raise ConfigError(f"{exc} (config key: output.on_existing)") from exc
    if outputs is None:
        world_size = args.world_size or rank_from_env()[1]
        print(f"pieces written; once every rank is done: flairkit map -c {args.config} --merge "
              f"--world-size {world_size}")  # fmt: skip
        return 0
    for kind, path in vars(outputs).items():
        if path is not None:
            print(f"{kind}: {path}")
    return 0


def _run_product(cfg: Any, args: argparse.Namespace) -> int:
    from flairkit.inference.product import predict_product

    if args.merge:
        raise ConfigError(
            "--merge: a tiled product needs no merge; rerun any rank to finish missing tiles"
        )
    try:
        summary = predict_product(cfg, rank=args.rank, world_size=args.world_size)
    except FileExistsError as exc:  # output.on_existing: error
        raise ConfigError(f"{exc} (config key: output.on_existing)") from exc
    print(
        f"{summary.computed} tiles computed, {summary.skipped} already done; "
        f"{summary.done} of {summary.total} tiles finished"
    )
    if summary.computed:
        print(
            f"{summary.km2:.3g} km² in {summary.seconds:.1f} s: {summary.km2_per_hour:.3g} km²/h, "
            f"{summary.px_per_s:.3g} px/s"
        )
    paths = summary.paths
    print(f"mosaic: {paths.vrt}\ntiles: {paths.tiles_dir}\nindex: {paths.index}")
    if summary.done == summary.total:
        print(f"preview: {paths.preview}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from flairkit.check import check_dataset, format_summary, prepare_report_path, write_report

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    report = prepare_report_path(args.report)  # before the scan: fail in seconds, not minutes
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = check_dataset(args.root, deep=args.deep, workers=args.workers, progress=progress)
    write_report(result, report)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_summary(result))
        print(f"report: {report}")
    return 0 if result.ok else 1


def _run_download(args: argparse.Namespace) -> int:
    from flairkit import download as dl

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (OUT is the dataset root to write)")
    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    progress = not args.no_progress and sys.stderr.isatty()
    if args.toy:
        if args.dry_run:
            print(f"would fetch the toy dataset from {args.toy_url or dl.TOY_URL} into {out}")
            return 0
        root = dl.download_toy(out, args.toy_url or dl.TOY_URL, progress)
        print(f"dataset root: {root}")
        return 0
    selection = dl.parse_selection(args.departments, args.years, args.modalities)
    listing = dl.list_archives(args.repo or dl.DATASET_REPO, args.revision)
    domains = None
    if args.split:
        if args.dry_run:
            print("(--split: the metadata archive is fetched to read the split)")
        metadata = dl.fetch_metadata(out, listing, progress)
        domains = dl.split_domains(metadata, args.split, args.split_column)
    chosen = dl.select(listing, selection, domains)
    if listing.metadata is not None and listing.metadata not in chosen:
        chosen.insert(0, listing.metadata)  # the split and dates GeoPackages: always
    complete = [a for a in chosen if dl.is_complete(out, a)]
    total = sum(a.size for a in chosen if a not in complete)
    print(
        f"{listing.repo_id}@{listing.commit[:12]}: {len(chosen)} archives selected, "
        f"{len(complete)} already complete, {dl.human_bytes(total)} to fetch"
    )
    if args.dry_run:
        for a in chosen:
            state = "complete" if a in complete else dl.human_bytes(a.size)
            print(f"  {a.path:<52} {state:>10}")
        return 0
    report = dl.download_archives(out, listing, chosen, args.workers, progress, args.keep_archives)
    print(
        f"fetched {len(report.fetched)} archives ({dl.human_bytes(report.bytes_fetched)}), "
        f"skipped {len(report.skipped)} complete"
        + (
            f", fetched again after a bad sha256: {len(report.refetched)}"
            if report.refetched
            else ""
        )
    )
    print(f"dataset root: {out}  (next: flairkit info {out}; flairkit check {out})")
    return 0


def _run_pack(args: argparse.Namespace) -> int:
    from flairkit.config.run import is_url
    from flairkit.data.packed import pack, parse_compression
    from flairkit.io.catalog import Catalog

    if args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if not args.source.exists():
        raise UserError(f"{args.source}: no such dataset root or list")
    if is_url(args.out):
        raise UserError(
            f"{args.out}: pack writes a local or shared folder; pack there, then copy the "
            "folder to the bucket (e.g. aws s3 sync OUT s3://bucket/pack) and train on its URL"
        )
    try:
        parse_compression(args.compression)
    except ValueError as exc:
        raise UserError(f"--{exc}") from exc
    modalities = [Modality.parse(m) for m in args.modalities]
    catalog = Catalog.open(args.source).filter(
        departments=args.departments or None,
        years=args.years or None,
        split=args.split,
    )
    if not catalog.refs:
        raise UserError(f"{args.source}: no patch matches the selection")
    progress = not args.no_progress and sys.stderr.isatty()
    summary = pack(
        catalog, args.out, modalities or None, args.workers, progress,
        compression=args.compression,
    )  # fmt: skip
    print(
        f"packed {summary.num_patches} patches into {len(summary.written)} folders "
        f"({len(summary.skipped)} already complete): {summary.root}"
    )
    return 0


_COMMANDS = {
    "synth": _run_synth,
    "info": _run_info,
    "show": _run_show,
    "models": _run_models,
    "fit": _run_fit,
    "validate": _run_evaluate,
    "test": _run_evaluate,
    "predict": _run_predict,
    "map": _run_map,
    "check": _run_check,
    "download": _run_download,
    "pack": _run_pack,
}


class UserError(Exception):
    """Bad input found by a command itself; exits 2 with the message."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a file, a config key): exit 2, one line, no traceback."""
    # (flairkit.models.official.WeightsError is a ValueError: importing it here would load torch
    # and timm for every command)
    errors: list[type[BaseException]] = [
        UserError,
        DataError,
        ConfigError,
        KeyError,
        ValueError,
        OSError,
    ]
    if "lightning" in sys.modules:  # a wrong accelerator, devices or strategy: Lightning's check
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        errors.append(MisconfigurationException)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    """The message of an exception on one line, naming the file of an OSError."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc.strerror):
        # "[Errno 13] Permission denied: 'x'" -> "x: permission denied"
        reason = exc.strerror or str(exc)
        return f"{exc.filename}: {reason[:1].lower()}{reason[1:]}"
    text = str(exc) or type(exc).__name__
    if "\nOriginal Traceback" in text:
        # Raised in a DataLoader worker: torch re-raises it with the worker's traceback as its
        # message. Keep the last line, the original "module.SomeError: message", minus the type.
        last = text.rstrip().splitlines()[-1]
        text = re.sub(r"^[A-Za-z_][\w.]*: ", "", last, count=1)
    return " ".join(text.split())  # several lines (GDAL, Lightning) fold into one


#: Subcommands that train or evaluate with Lightning, and what they need beyond the base install:
#: the ``train`` extra (``pip install 'flairkit[train]'``). Every other subcommand runs without it.
TRAINING_COMMANDS = frozenset({"fit", "validate", "test", "predict"})
TRAINING_EXTRA = ("lightning", "torchmetrics", "tensorboard")


def _missing_training_modules() -> list[str]:
    """The modules of the ``train`` extra that cannot be imported (without importing them)."""
    missing = []
    for name in TRAINING_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder refused it, or a broken half-import
            found = False
        if not found:
            missing.append(name)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Bad input (a file or config key): 2, with one line naming it on stderr. Interrupted
    (Ctrl-C, SIGINT): one line, 130. ``-v`` also prints the traceback of an error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Lightning gives its "lightning" logger a handler of its own: without this its messages
    # would also reach ours and print twice.
    logging.getLogger("lightning").propagate = False
    if args.command in TRAINING_COMMANDS and (missing := _missing_training_modules()):
        print(
            f"flairkit {args.command} needs the training extra: pip install 'flairkit[train]' "
            f"(missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(
            f"flairkit {args.command}: interrupted; what was written is kept "
            "(run the same command again to resume where it can)",
            file=sys.stderr,
        )
        return 130
    except _user_errors() as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"flairkit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
