"""Schemas of a large-area map (``flairkit map``) and its YAML loader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flairkit.config.convert import (
    ConfigError,
    from_dict,
    parse_task,
    read_mapping,
    resolve_path,
)
from flairkit.config.recipe import NonFinite
from flairkit.modalities import Modality, Task
from flairkit.model_ref import HUB_PREFIX, ModelRefError, parse_model_ref


@dataclass(frozen=True)
class ZoneInputConfig:
    """One input raster of a map.

    Attributes:
        path: the raster (any GDAL format with a CRS); time series hold ``T * C`` bands,
            date-major, as in the dataset files.
        dates: acquisition dates of a time series, one per date-block of bands
            (``io.dates.read_dates_file`` formats); required for S2 and S1.
        mask: Sentinel-2 only: the snow/cloud probability stack (``SENTINEL2_MSK-SC``, 2 bands
            per date, the S2 dates), needed when the model's preprocessing filters clouds.
        gsd_m: pixel size the model reads this input at; default the model's training GSD
            (102.4 m / its patch side in pixels).
    """

    path: Path
    dates: Path | None = None
    mask: Path | None = None
    gsd_m: float | None = None


@dataclass(frozen=True)
class ZoneGridConfig:
    """The output grid; every field defaults to the reference (finest, usually aerial) input.

    Attributes:
        gsd_m: output pixel size; default the model's label GSD (102.4 m / ``model.out_px``).
        bounds: ``[left, bottom, right, top]`` in ``crs``; default the reference input's extent.
            When ``crs`` and ``gsd_m`` match the reference input, the bounds are widened to its
            pixel grid so that its pixels are read exactly (no resampling).
        crs: CRS of the map, e.g. ``EPSG:2154``; default the reference input's.
    """

    gsd_m: float | None = None
    bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None


@dataclass(frozen=True)
class ZoneTilingConfig:
    """How the grid is cut into model inputs (all in output pixels).

    Attributes:
        tile_px: tile side; default the model's patch (``model.out_px``, 512 px for FLAIR-HUB
            models). Larger tiles recompute less of the overlap but hold more activations.
        overlap_px: overlap between neighbouring tiles; default ``tile_px // 8``.
        margin_px: pixels along an inner tile edge given weight 0 in the blend; default a
            quarter of the overlap.
    """

    tile_px: int | None = None
    overlap_px: int | None = None
    margin_px: int | None = None


@dataclass(frozen=True)
class ZoneOutputConfig:
    """What is written.

    Attributes:
        path: the class map ``.tif`` (a COG); ``<stem>.qml``, ``<stem>_preview.png`` and, with
            ``write_proba``, ``<stem>_proba.tif`` are written beside it.
        write_proba: also write per-class probabilities (uint8, ``round(p * 255)``).
        on_existing: ``resume`` (continue an interrupted map, keep a finished one made with
            the same settings), ``overwrite`` or ``error``.
        tile_size_m: a tiled product (``inference.product``): the map is cut into square COG
            tiles of this side (map CRS units, e.g. 5000 in Lambert-93), on the grid of its
            multiples; ``path`` then names the mosaic ``.vrt``, the tiles go to
            ``<stem>_tiles/`` beside it, with ``<stem>_index.gpkg`` and ``<stem>_preview.png``.
        vectors: with ``tile_size_m``, also each tile's class polygons (simplified by one
            pixel) as ``<tile>.gpkg`` beside its COG.
    """

    path: Path
    write_proba: bool = False
    on_existing: Literal["resume", "overwrite", "error"] = "resume"
    tile_size_m: float | None = None
    vectors: bool = False


@dataclass(frozen=True)
class ZoneAoiConfig:
    """The area of interest: only output tiles touching it are computed, pixels outside it
    are nodata.

    Attributes:
        path: a vector file (GeoPackage, GeoJSON, shapefile...) with polygons, in any CRS.
        where: an SQL filter on its attributes (e.g. ``code_insee = '34'``).
        layer: the layer of a multi-layer file; default the first.
    """

    path: Path
    where: str | None = None
    layer: str | None = None


@dataclass(frozen=True)
class ZoneRuntimeConfig:
    """Speed and resources; none of these change the map (beyond float rounding).

    Attributes:
        batch_size: tiles per forward pass; default 1 on a CPU (a larger batch is no faster
            there and holds more activations) and 8 on a GPU.
        num_workers: DataLoader worker processes that read and preprocess tiles; 0 reads in
            ``read_threads`` threads of the main process (lighter; enough for a CPU run).
        read_threads: reader threads when ``num_workers`` is 0.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on GPUs that support it, else fp16; fp32 on CPU),
            ``fp32``, ``bf16`` or ``fp16`` (GPU only).
        torch_threads: intra-op threads for the model on CPU; default torch's.
        channels_last: run convolutions in NHWC memory order (faster with oneDNN and cuDNN).
        fold_batchnorm: fold eval-mode BatchNorms into the convolutions before them (about
            12 % faster on a CPU; equal up to float rounding).
        blend_memory_mb: budget for the blending buffer; a map wider than the budget allows is
            computed in vertical strips, merged at the end.
        progress: show a progress bar (tiles/s and ETA).
    """

    batch_size: int | None = None
    num_workers: int = 0
    read_threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    torch_threads: int | None = None
    channels_last: bool = True
    fold_batchnorm: bool = True
    blend_memory_mb: float = 320.0
    progress: bool = True


@dataclass(frozen=True)
class ZoneConfig:
    """Everything ``flairkit map`` needs: a model, its input rasters, and what to write.

    A flairkit model file (``.safetensors`` from ``flairkit fit``, or a fit ``.ckpt``) carries
    its ModelConfig and PreprocessConfig, so inputs are prepared exactly as in training. A
    published FLAIR-HUB model (a file, or a hub id ``hf:IGNF/FLAIR-HUB_<ID>_...``) gets the
    benchmark's preparation of its preset (``checkpoint.published_recipe``).

    Attributes:
        model: the model reference: a file path, or ``hf:<org>/<repo>[@<revision>]``.
        inputs: one raster per input modality the model uses.
        output: the class map and its options.
        grid: the output grid (default: the reference input's grid at the model's GSD).
        tiling: tile, overlap and margin sizes.
        runtime: batching, device, precision, threads.
        task: which head to map when the model has several (``COSIA`` or ``LPIS``).
        nonfinite: what a NaN or infinite input value does: ``error`` or ``zero`` (see
            ``PreprocessConfig.nonfinite``); default (None) the model file's setting. ``zero``
            maps rasters that use NaN as nodata with a model trained under ``error``.
        model_preset: the preset of a published FLAIR-HUB file whose name does not tell it.
        aoi: the area of interest (a vector file): only output tiles touching it are
            computed, pixels outside it are nodata.
    """

    model: str
    inputs: Mapping[Modality, ZoneInputConfig]
    output: ZoneOutputConfig
    grid: ZoneGridConfig = ZoneGridConfig()
    tiling: ZoneTilingConfig = ZoneTilingConfig()
    runtime: ZoneRuntimeConfig = ZoneRuntimeConfig()
    task: Task | None = None
    nonfinite: NonFinite | None = None
    model_preset: str | None = None
    aoi: ZoneAoiConfig | None = None

    def __post_init__(self) -> None:
        try:
            parse_model_ref(self.model, self.model_preset)
        except ModelRefError as exc:
            raise ConfigError(f"model: {exc}") from exc
        if not self.inputs:
            raise ConfigError("inputs: at least one input raster is needed")
        for m, cfg in self.inputs.items():
            where = f"inputs.{m.value}"
            if not m.spec.is_input:
                hint = " (give the S2 mask as inputs.SENTINEL2_TS.mask)" * (
                    m is Modality.SENTINEL2_MSK
                )
                raise ConfigError(f"{where}: not a model input{hint}")
            if cfg.mask is not None and m is not Modality.SENTINEL2_TS:
                raise ConfigError(f"{where}.mask: only SENTINEL2_TS has a snow/cloud mask")
            if cfg.dates is not None and not m.spec.is_time_series:
                raise ConfigError(f"{where}.dates: {m.value} is not a time series")
            if cfg.gsd_m is not None and not cfg.gsd_m > 0:
                raise ConfigError(f"{where}.gsd_m: must be positive, got {cfg.gsd_m}")
        g = self.grid
        if g.gsd_m is not None and not g.gsd_m > 0:
            raise ConfigError(f"grid.gsd_m: must be positive, got {g.gsd_m}")
        if g.bounds is not None and not (g.bounds[2] > g.bounds[0] and g.bounds[3] > g.bounds[1]):
            raise ConfigError(
                f"grid.bounds: expected [left, bottom, right, top] with left < right and "
                f"bottom < top, got {list(g.bounds)}"
            )
        t = self.tiling
        if t.tile_px is not None and t.tile_px < 16:
            raise ConfigError(f"tiling.tile_px: must be at least 16, got {t.tile_px}")
        if t.overlap_px is not None and t.overlap_px < 0:
            raise ConfigError(f"tiling.overlap_px: must be >= 0, got {t.overlap_px}")
        if t.margin_px is not None and t.margin_px < 0:
            raise ConfigError(f"tiling.margin_px: must be >= 0, got {t.margin_px}")
        o = self.output
        if o.vectors and o.tile_size_m is None:
            raise ConfigError(
                "output.vectors: polygons are written per tile; set output.tile_size_m"
            )
        if o.tile_size_m is not None:
            if not o.tile_size_m > 0:
                raise ConfigError(f"output.tile_size_m: must be positive, got {o.tile_size_m}")
            if Path(o.path).suffix.lower() != ".vrt":
                raise ConfigError(
                    f"output.path: {o.path}: a tiled product (output.tile_size_m) is named by "
                    "its mosaic, a .vrt file (the tiles go to <stem>_tiles/ beside it)"
                )
        r = self.runtime
        for key in ("batch_size", "read_threads"):
            if getattr(r, key) is not None and getattr(r, key) < 1:
                raise ConfigError(f"runtime.{key}: must be at least 1, got {getattr(r, key)}")
        if r.num_workers < 0:
            raise ConfigError(f"runtime.num_workers: must be >= 0, got {r.num_workers}")
        if r.torch_threads is not None and r.torch_threads < 1:
            raise ConfigError(f"runtime.torch_threads: must be at least 1, got {r.torch_threads}")
        if not r.blend_memory_mb > 0:
            raise ConfigError(f"runtime.blend_memory_mb: must be positive, got {r.blend_memory_mb}")


def load_zone_config(path: str | Path | None, overrides: list[str] | None = None) -> ZoneConfig:
    """Read a map YAML (plus ``dotted.key=value`` overrides) into a validated ZoneConfig.

    An input may be given as a bare path (``AERIAL_RGBI: ortho.tif``); modality keys accept
    aliases (``AERIAL``, ``S2``). Relative paths are resolved against the YAML's folder.

    Raises:
        ConfigError: with the dotted path of the bad key.
    """
    raw, base = read_mapping(path, overrides)
    for key in ("model", "inputs", "output"):
        if not raw.get(key):
            raise ConfigError(f"{key}: missing")
    model = str(raw["model"]).strip()
    raw["model"] = model if model.startswith(HUB_PREFIX) else str(resolve_path(base, model))
    if not isinstance(raw["inputs"], Mapping):
        raise ConfigError(f"inputs: expected a mapping, got {type(raw['inputs']).__name__}")
    inputs = {}
    for name, value in raw["inputs"].items():
        entry = {"path": value} if isinstance(value, str) else dict(value or {})
        for key in ("path", "dates", "mask"):
            if entry.get(key):
                entry[key] = str(resolve_path(base, entry[key]))
        if "path" not in entry:
            raise ConfigError(f"inputs.{name}.path: missing")
        inputs[name] = entry
    raw["inputs"] = inputs
    output = raw["output"]
    output = {"path": output} if isinstance(output, str) else dict(output)
    if output.get("path"):
        output["path"] = str(resolve_path(base, output["path"]))
    raw["output"] = output
    aoi = raw.get("aoi")
    if aoi is not None:
        aoi = {"path": aoi} if isinstance(aoi, str) else dict(aoi)
        if aoi.get("path"):
            aoi["path"] = str(resolve_path(base, aoi["path"]))
        raw["aoi"] = aoi
    if raw.get("task") is not None:
        raw["task"] = parse_task(raw["task"])
    return from_dict(ZoneConfig, raw, "")
