"""Check a map config against its model and inputs; derive the grid, the tiles, the fingerprint.

Everything here happens before a pixel is computed, so a bad config fails in a second with the
dotted key to fix: a missing input, dates file or mask; a tile the inputs or the encoder cannot
take; an input without CRS or outside the grid (from the window reader).

The output grid defaults to the reference input's (the finest input, aerial when present) at
the model's label GSD (102.4 m over ``ModelConfig.out_px``); every input is read at the GSD the
model was trained at (102.4 m over its ``img_sizes`` entry) unless the config overrides it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_bounds

from flairkit.config import ConfigError, ModelConfig, PreprocessConfig, ZoneConfig, ZoneGridConfig
from flairkit.inference.predictor import ZoneModel
from flairkit.inference.stitch import default_margin_px
from flairkit.inference.tiling import TileGrid, make_tile_grid
from flairkit.io.windows import RasterSource, WindowReader
from flairkit.modalities import PATCH_SIZE_M, ClassInfo, Modality, Task, class_table
from flairkit.model_ref import model_name
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.sample import Georef
from flairkit.transforms.preprocess import Preprocessor

log = logging.getLogger(__name__)


def choose_task(requested: Task | None, tasks: Sequence[Task]) -> Task:
    """The task to map: the requested one, or the model's only one.

    Raises:
        ConfigError: the model lacks the requested task, or has several and none was chosen.
    """
    names = ", ".join(t.name for t in tasks)
    if requested is not None:
        if requested not in tasks:
            raise ConfigError(f"task: the model has no {requested.name} head (it has {names})")
        return requested
    if len(tasks) > 1:
        raise ConfigError(f"task: the model has several heads ({names}); choose one")
    return tasks[0]


def classes_for(task: Task, num_classes: int, lpis_level: int) -> tuple[ClassInfo, ...]:
    """The class table of a task, cut or extended to the model's class count."""
    table = class_table(task, lpis_level)
    if len(table) != num_classes:
        log.warning(
            "the model has %d %s classes, the nomenclature %d: classes beyond it are grey",
            num_classes, task.name, len(table),
        )  # fmt: skip
        extra = [ClassInfo(i, f"class {i}", "#808080") for i in range(len(table), num_classes)]
        table = (*table[:num_classes], *extra)
    return tuple(table)


@dataclass
class ZonePlan:
    """What a map run derives from its config and model before computing anything.

    Attributes:
        task: the mapped task.
        classes: its class table (K entries).
        preprocess: the model's PreprocessConfig without tasks.
        reader: the input rasters.
        reference: the finest input: its grid is the default output grid, its validity the map's.
        georef: the output grid.
        grid: the tile grid over it.
        margin_px: zero-weight margin of the blend.
        fingerprint: settings a resumed run must share.
    """

    task: Task
    classes: tuple[ClassInfo, ...]
    preprocess: PreprocessConfig
    reader: WindowReader
    reference: Modality
    georef: Georef
    grid: TileGrid
    margin_px: int
    fingerprint: dict[str, Any]

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.classes)


def training_gsd_m(model_config: ModelConfig, modality: Modality) -> float:
    """GSD a model was trained at for a modality: a 102.4 m patch over its ``img_sizes`` pixels."""
    return PATCH_SIZE_M / model_config.img_sizes[modality]


def zone_sources(
    config: ZoneConfig, model_config: ModelConfig, preprocess: PreprocessConfig
) -> tuple[dict[Modality, RasterSource], dict[Modality, float]]:
    """The rasters to read and their read GSDs; every input the model needs must be configured.

    Raises:
        ConfigError: a missing input, dates file or mask (the message names the config key).
    """
    sources: dict[Modality, RasterSource] = {}
    gsd_m: dict[Modality, float] = {}
    masks: dict[Modality, Path] = {}
    needed = list(model_config.inputs)
    for m in needed:
        where = f"inputs.{m.value}"
        cfg = config.inputs.get(m)
        if cfg is None:
            have = ", ".join(x.value for x in config.inputs) or "none"
            raise ConfigError(
                f"{where}: missing; the model {model_name(config.model)} needs {m.value} "
                f"(inputs configured: {have})"
            )
        path, dates, mask = resolve_input(config, m)
        if m.spec.is_time_series:
            if dates is None:
                raise ConfigError(f"{where}.dates: missing; {m.value} is a time series")
            if not dates.is_file():
                raise ConfigError(f"{where}.dates: {dates}: dates file not found")
        sources[m] = RasterSource(path, dates if m.spec.is_time_series else None)
        gsd_m[m] = cfg.gsd_m or training_gsd_m(model_config, m)
        if mask is not None:
            masks[m] = mask
    s2 = config.inputs.get(Modality.SENTINEL2_TS)
    if Modality.SENTINEL2_MSK in Preprocessor(preprocess).required_modalities:
        where = f"inputs.{Modality.SENTINEL2_TS.value}.mask"
        if s2 is None or Modality.SENTINEL2_TS not in masks:
            raise ConfigError(
                f"{where}: missing; the model filters cloudy Sentinel-2 dates with the "
                f"snow/cloud mask ({Modality.SENTINEL2_MSK.value}, 2 bands per date)"
            )
        mask_path = masks[Modality.SENTINEL2_TS]
        if not mask_path.is_file():
            raise ConfigError(f"{where}: {mask_path}: raster not found")
        sources[Modality.SENTINEL2_MSK] = RasterSource(mask_path)
        gsd_m[Modality.SENTINEL2_MSK] = gsd_m[Modality.SENTINEL2_TS]
    unused = [m.value for m in config.inputs if m not in needed]
    if unused:
        log.warning("inputs %s are not used by the model; ignored", ", ".join(unused))
    return sources, gsd_m


_LIST_SUFFIXES = (".txt", ".lst", ".csv")


def inputs_dir(config: ZoneConfig) -> Path:
    """Where the VRTs of inputs given as tiles or per-date files go: ``<stem>.inputs/``."""
    out = Path(config.output.path)
    return out.with_name(f"{out.stem}.inputs")


def resolve_input(config: ZoneConfig, modality: Modality) -> tuple[Path, Path | None, Path | None]:
    """``(raster, dates file, mask)`` of an input as configured, or as VRTs built from tiles
    and per-date files (``io.mosaic``), without copying a pixel.

    - A raster file is read as it is (with ``dates`` and ``mask`` as configured).
    - A folder, glob or list file (``.txt``/``.lst``) of rasters is mosaicked
      (``<stem>.inputs/<MODALITY>.vrt``).
    - For a time series, a folder, glob or list of per-date rasters (the date in each file
      name: ``io.mosaic.read_date_series``) or a CSV ``date,path[,mask_path]`` is stacked
      date by date, with its dates file and, from ``mask`` (a folder of per-date masks) or the
      CSV, its mask stack.

    Raises:
        ConfigError: a path that does not exist (naming the key), ``dates`` given with
            per-date files.
        DataError: tiles or dates that do not fit together (naming the files).
    """
    from flairkit.io.mosaic import (
        build_mosaic_vrt,
        build_series_vrt,
        collect_rasters,
        read_date_series,
    )

    cfg = config.inputs[modality]
    where = f"inputs.{modality.value}"
    path = cfg.path
    text = str(path)
    pattern = any(ch in text for ch in "*?[")
    if path.is_file() and path.suffix.lower() not in _LIST_SUFFIXES:
        return path, cfg.dates, cfg.mask
    if not pattern and not path.exists():
        raise ConfigError(f"{where}.path: {path}: raster not found")
    work = inputs_dir(config)
    work.mkdir(parents=True, exist_ok=True)
    if not modality.spec.is_time_series:
        return build_mosaic_vrt(collect_rasters(path), work / f"{modality.value}.vrt"), None, None
    if cfg.dates is not None:
        raise ConfigError(
            f"{where}.dates: per-date files carry their dates in their names (or the CSV); "
            "leave dates out"
        )
    if cfg.mask is not None and not (cfg.mask.exists() or any(c in str(cfg.mask) for c in "*?[")):
        raise ConfigError(f"{where}.mask: {cfg.mask}: not found")
    series = read_date_series(path, cfg.mask)
    stack, dates, mask = build_series_vrt(series, modality.spec.num_bands, work, modality.value)
    return stack, dates, mask


def _identity(config: ZoneConfig, source: RasterSource, gsd_m: float) -> dict[str, Any]:
    """What a resumed map checks of an input: its path, size and dates file; for VRTs built
    from tiles or per-date files (``resolve_input``), their content (the sources' paths and
    dates), so that two outputs of the same inputs share a fingerprint wherever their
    ``.inputs`` folder lies."""
    import hashlib

    path, dates = source.path, source.dates_path
    if path.parent.resolve() == inputs_dir(config).resolve():
        digest = hashlib.sha256(path.read_bytes())
        if dates is not None:
            digest.update(dates.read_bytes())
        return {"built_sha256": digest.hexdigest(), "gsd_m": gsd_m}
    return {
        "path": str(path.resolve()),
        "bytes": path.stat().st_size,
        "dates": str(dates.resolve()) if dates else None,
        "gsd_m": gsd_m,
    }


def _crs(value: str | None, where: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise ConfigError(f"{where}: invalid CRS {value!r} ({exc})") from exc


def output_georef(
    reader: WindowReader, reference: Modality, grid: ZoneGridConfig, gsd_m: float
) -> Georef:
    """The output grid: the reference input's extent and CRS unless the config says otherwise.

    With the reference's CRS and pixel size, the bounds are widened to the reference's pixel
    grid, so its windows are read exactly (no resampling).

    Raises:
        ConfigError: an invalid ``grid.crs``.
    """
    ref = reader.georef(reference)
    ref_crs = _crs(ref.crs, f"inputs.{reference.value}")
    crs = _crs(grid.crs, "grid.crs") if grid.crs else ref_crs
    same_crs = crs == ref_crs
    if grid.bounds is not None:
        left, bottom, right, top = grid.bounds
    elif same_crs:
        left, bottom, right, top = ref.bounds
    else:
        left, bottom, right, top = transform_bounds(ref_crs, crs, *ref.bounds, densify_pts=21)
    a, b, c, d, e, f = ref.transform
    north_up = b == 0 and d == 0 and a > 0 and e < 0
    if (
        same_crs
        and north_up
        and math.isclose(a, gsd_m, rel_tol=1e-9)
        and math.isclose(-e, gsd_m, rel_tol=1e-9)
    ):
        eps = 1e-6
        left = c + math.floor((left - c) / a + eps) * a
        right = c + math.ceil((right - c) / a - eps) * a
        top = f + math.floor((top - f) / e + eps) * e
        bottom = f + math.ceil((bottom - f) / e - eps) * e
    width = max(1, math.ceil((right - left) / gsd_m - 1e-6))
    height = max(1, math.ceil((top - bottom) / gsd_m - 1e-6))
    return Georef(crs.to_string(), (gsd_m, 0.0, left, 0.0, -gsd_m, top), width, height)


def _required_multiple(ratios: Mapping[Modality, Fraction]) -> int:
    """Smallest tile side (output px) that is a whole number of pixels of every input."""
    return math.lcm(*(r.denominator for r in ratios.values()))


def resolve_tiling(
    config: ZoneConfig, model: ZoneModel, gsd_m: Mapping[Modality, float], out_gsd_m: float
) -> tuple[int, int, int]:
    """``(tile_px, overlap_px, margin_px)``: configured or default, checked against the model.

    Raises:
        ConfigError: a tile that is not a whole number of pixels of every input, that a
            fixed-size encoder cannot take, or that a convolutional encoder cannot divide; an
            overlap or margin that does not fit.
    """
    inputs = [m for m in model.config.inputs]
    ratios = {m: Fraction(out_gsd_m / gsd_m[m]).limit_denominator(10_000) for m in inputs}
    encoders: dict[Modality, Any] = {}  # the network's encoder modules
    if isinstance(model.network, MultiModalSegmenter):
        encoders = {Modality(k): e for k, e in model.network.encoders.items()}
    sized = {m: e.img_size for m, e in encoders.items() if getattr(e, "img_size", None)}
    multiple = _required_multiple(ratios)
    t = config.tiling
    tile_px = t.tile_px
    if tile_px is None:
        # The training patch: what a fixed-size encoder needs, and for a CNN the size whose
        # activations (about 0.2 GB for a ResNet18 U-Net at 512 px) fit a 1.5 GB budget.
        tile_px = model.config.out_px
        tile_px = max(multiple, tile_px // multiple * multiple)
    for m in inputs:
        window = tile_px * ratios[m]
        if window.denominator != 1:
            raise ConfigError(
                f"tiling.tile_px: {tile_px} px of {out_gsd_m:g} m is {float(window):g} px of "
                f"{m.value} at {gsd_m[m]:g} m; use a multiple of {multiple} px"
            )
        window_px = int(window)
        if m in sized:
            expected = sized[m] if isinstance(sized[m], int) else sized[m][0]
            if window_px != expected:
                raise ConfigError(
                    f"tiling.tile_px: the {m.value} encoder is built for {expected} px inputs; "
                    f"{tile_px} px gives {window_px} px (use tile_px "
                    f"{expected * gsd_m[m] / out_gsd_m:g})"
                )
        elif m in encoders:
            stride = max(encoders[m].strides)
            if window_px % stride:
                raise ConfigError(
                    f"tiling.tile_px: {tile_px} px gives {window_px} px of {m.value}, not a "
                    f"multiple of its encoder's stride {stride}"
                )
    overlap_px = t.overlap_px if t.overlap_px is not None else tile_px // 8
    if overlap_px >= tile_px:
        raise ConfigError(
            f"tiling.overlap_px: must be smaller than tile_px {tile_px}, got {overlap_px}"
        )
    margin_px = t.margin_px if t.margin_px is not None else default_margin_px(overlap_px)
    if overlap_px and 2 * margin_px > overlap_px:
        raise ConfigError(
            f"tiling.margin_px: at most half the overlap ({overlap_px // 2} px), got {margin_px}"
        )
    return tile_px, overlap_px, margin_px


def plan_zone(config: ZoneConfig, model: ZoneModel) -> ZonePlan:
    """Check a config against its model and inputs; derive the grid, tiles and fingerprint.

    Args:
        config: the map config.
        model: the model (its network is used for encoder size checks when present).

    Returns:
        The plan.

    Raises:
        ConfigError: a missing input, dates file or mask; a bad grid or tiling.
        DataError: an unreadable input, one without CRS or not overlapping the grid, bad
            dates (the message names the file).
    """
    task = choose_task(config.task, list(model.config.tasks))
    preprocess = dataclasses.replace(model.preprocess, tasks=())
    if config.nonfinite is not None:
        preprocess = dataclasses.replace(preprocess, nonfinite=config.nonfinite)
    sources, gsd_m = zone_sources(config, model.config, preprocess)
    reader = WindowReader(sources, gsd_m=gsd_m, num_threads=min(4, len(sources)))
    reference = reader.reference_modality
    out_gsd = config.grid.gsd_m or PATCH_SIZE_M / model.config.out_px
    georef = output_georef(reader, reference, config.grid, out_gsd)
    reader.check_overlap(georef.bounds, georef.crs, list(model.config.inputs))
    tile_px, overlap_px, margin_px = resolve_tiling(config, model, gsd_m, out_gsd)
    grid = make_tile_grid(georef.height, georef.width, tile_px, overlap_px)
    fingerprint = {
        "model_sha256": model.digest,
        "task": task.value,
        "nonfinite": preprocess.nonfinite,
        "tile_px": tile_px,
        "overlap_px": overlap_px,
        "margin_px": margin_px,
        "inputs": {m.value: _identity(config, s, gsd_m[m]) for m, s in sources.items()},
    }
    classes = classes_for(task, model.config.tasks[task], preprocess.lpis_level)
    log.info(
        "map %d x %d px at %g m (%s), %d tiles of %d px (overlap %d, margin %d), reference %s",
        georef.width, georef.height, out_gsd, georef.crs, len(grid), tile_px, overlap_px,
        margin_px, reference.value,
    )  # fmt: skip
    return ZonePlan(
        task, classes, preprocess, reader, reference, georef, grid, margin_px, fingerprint
    )
