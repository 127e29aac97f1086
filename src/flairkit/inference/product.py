"""A tiled map product: a large area as a grid of COG tiles, a VRT mosaic and an index.

``flairkit map`` with ``output.tile_size_m`` maps a department or a country. The area (the
AOI's bounds, ``grid.bounds`` or the reference input's extent) is widened to the multiples of
the tile size in the map CRS (a regular Lambert-93 grid for the usual 5 km tiles), and one
tile grid of model windows covers it, exactly the one a single map of that area would use.

* **Tiles are pieces of one map.** Each output tile is computed with the model windows of the
  global grid that touch it, blended with their global weights (``shard.Piece``), so the
  mosaic is, bit for bit, the single-zone map of the same area: no seam at tile borders. A
  tile costs about one model window of margin on each side.
* **Independent units.** A tile is written through a ``StreamingMapWriter`` (resumable block
  rows; the COG appears last, by rename); a finished tile with this run's settings is skipped.
  Ranks (``--rank/--world-size``, torchrun's or Slurm's variables, a Slurm job array's
  ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) take every ``world_size``-th tile, so
  a rerun of any rank, or of one process, finishes only what is missing.
* **AOI.** Only tiles touching the AOI are computed; within them, model windows that miss it
  are not run and pixels outside it are nodata.
* **The whole.** After its tiles, each process rewrites, under a file lock, the mosaic
  (``<stem>.vrt``, with its QGIS style), the GeoPackage index of every tile with its status
  (``done``, ``pending``, ``no data``: outside every input) and, once every tile is done, a
  PNG preview of the whole. The last process to finish leaves them complete.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flairkit.config import ConfigError, ZoneConfig
from flairkit.inference.aoi import masked_writer, read_aoi, window_skipper
from flairkit.inference.plan import ZonePlan, plan_zone
from flairkit.inference.predictor import (
    TilePredictor,
    ZoneModel,
    load_zone_model,
    resolve_device,
    resolve_precision,
)
from flairkit.inference.shard import Piece, merge_pieces, strip_grid
from flairkit.inference.zonal import (
    _predictor,
    _runtime,
    _strip_width_px,
    _writer,
    check_output_paths,
    map_piece,
)
from flairkit.io.writers import NODATA_CLASS, MapOutputs, StreamingMapWriter
from flairkit.sample import Georef

log = logging.getLogger(__name__)

#: Index statuses.
DONE, PENDING, NO_DATA = "done", "pending", "no data"


@dataclass(frozen=True)
class ProductTile:
    """One output tile: its name, extent (map CRS) and pixels of the global grid.

    Attributes:
        name: ``<stem>_<left>_<top>`` (metres of the map CRS, 7 digits).
        bounds: (left, bottom, right, top) of the tile cell.
        row_start, row_stop, col_start, col_stop: the pixels it owns in the global grid.
    """

    name: str
    bounds: tuple[float, float, float, float]
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def num_px(self) -> int:
        """Output pixels."""
        return (self.row_stop - self.row_start) * (self.col_stop - self.col_start)


@dataclass(frozen=True)
class ProductPaths:
    """Where a product lies: the mosaic, its tiles folder, index, preview and style."""

    vrt: Path
    tiles_dir: Path
    index: Path
    preview: Path
    qml: Path
    lock: Path

    @classmethod
    def of(cls, vrt: str | Path) -> ProductPaths:
        """The paths of a product named by its mosaic ``.vrt``."""
        vrt = Path(vrt)
        stem = vrt.with_suffix("")
        return cls(
            vrt, Path(f"{stem}_tiles"), Path(f"{stem}_index.gpkg"),
            Path(f"{stem}_preview.png"), vrt.with_suffix(".qml"), Path(f"{stem}.lock"),
        )  # fmt: skip

    def tile(self, tile: ProductTile) -> Path:
        """A tile's class map COG."""
        return self.tiles_dir / f"{tile.name}.tif"

    def vectors(self, tile: ProductTile) -> Path:
        """A tile's class polygons (``output.vectors``)."""
        return self.tiles_dir / f"{tile.name}.gpkg"


@dataclass(frozen=True)
class ProductSummary:
    """What a call did, and the product's state after it.

    Attributes:
        paths: the product's files.
        computed: tiles this call computed (finished now).
        skipped: this call's tiles found finished.
        total: tiles of the product (touching the AOI and some input).
        done: tiles finished now, over all ranks.
        seconds: time spent computing.
        num_px: output pixels this call computed.
        km2: their area.
    """

    paths: ProductPaths
    computed: int
    skipped: int
    total: int
    done: int
    seconds: float
    num_px: int
    km2: float

    @property
    def km2_per_hour(self) -> float:
        """Area mapped per hour by this call."""
        return self.km2 / max(self.seconds, 1e-9) * 3600

    @property
    def px_per_s(self) -> float:
        """Output pixels per second by this call."""
        return self.num_px / max(self.seconds, 1e-9)


def rank_of_job(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This job's ``(rank, world_size)``: the arguments, else torchrun's or Slurm's variables
    (a Slurm job array's task id and count first), else ``(0, 1)``.

    Raises:
        ValueError: a rank outside ``[0, world_size)``.
    """
    env: tuple[int, int] = (0, 1)
    keys = (
        ("RANK", "WORLD_SIZE"),
        ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
    )
    for rank_key, size_key in keys:
        if rank_key in os.environ and size_key in os.environ:
            env = int(os.environ[rank_key]), int(os.environ[size_key])
            if rank_key == "SLURM_ARRAY_TASK_ID":  # arrays may start at another id
                env = (env[0] - int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0)), env[1])
            break
    rank = env[0] if rank is None else rank
    world_size = env[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


# -- the area and its tiles -----------------------------------------------------------------


def snap_bounds(
    bounds: tuple[float, float, float, float], size: float
) -> tuple[float, float, float, float]:
    """Bounds widened to the multiples of ``size``."""
    left, bottom, right, top = bounds
    eps = 1e-9 * size
    return (
        math.floor(left / size + eps) * size,
        math.floor(bottom / size + eps) * size,
        math.ceil(right / size - eps) * size,
        math.ceil(top / size - eps) * size,
    )


def product_tiles(georef: Georef, size: float, stem: str) -> list[ProductTile]:
    """The tiles of a grid whose bounds are multiples of ``size`` (within a pixel), top-down,
    left to right.

    Tile edges fall on the nearest pixel edge, so the tiles share out every pixel once.
    """
    left, bottom, right, top = georef.bounds
    gsd = georef.transform[0]

    def edges(first: float, last: float, step: float, start: float, count: int) -> list[int]:
        """Pixel edges of the cells along one axis; the outer ones are the grid's own."""
        n = round((last - first) / step)
        cells = [first + k * step for k in range(n + 1)]
        px = [min(count, max(0, math.floor(abs(c - start) / gsd + 0.5))) for c in cells]
        px[0], px[-1] = 0, count
        return px

    # the grid's bounds are multiples of the size, widened by under a pixel to the
    # reference's pixel grid: the nearest multiples are the cells' edges
    x_first, x_last = round(left / size) * size, round(right / size) * size
    y_first, y_last = round(top / size) * size, round(bottom / size) * size
    cols = edges(x_first, x_last, size, left, georef.width)
    rows = edges(y_first, y_last, -size, top, georef.height)
    tiles = []
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            x0, y1 = x_first + j * size, y_first - i * size
            r0, r1, c0, c1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            if r1 > r0 and c1 > c0:
                name = f"{stem}_{round(x0):07d}_{round(y1):07d}"
                tiles.append(ProductTile(name, (x0, y1 - size, x0 + size, y1), r0, r1, c0, c1))
    return tiles


def product_plan(
    config: ZoneConfig, model: ZoneModel
) -> tuple[ZonePlan, list[ProductTile], Any, set[str]]:
    """The plan of the whole area, its tiles touching the AOI, the AOI, the tiles without data.

    Raises:
        ConfigError: a tile size that is not a whole number of output pixels, a bad AOI.
    """
    size = config.output.tile_size_m
    assert size is not None
    first = plan_zone(config, model)  # the map CRS and the reference extent
    crs = first.georef.crs
    assert crs is not None  # output_georef always gives a CRS
    aoi = read_aoi(config, crs)
    gsd = first.georef.transform[0]
    if abs(size / gsd - round(size / gsd)) > 1e-6:
        raise ConfigError(
            f"output.tile_size_m: {size:g} is not a whole number of {gsd:g} m output pixels"
        )
    area = config.grid.bounds or (aoi.bounds if aoi is not None else first.georef.bounds)
    snapped = snap_bounds(tuple(area), size)
    plan = plan_zone(replace(config, grid=replace(config.grid, bounds=snapped, crs=crs)), model)
    stem = Path(config.output.path).stem
    tiles = product_tiles(plan.georef, size, stem)
    from shapely.geometry import box

    if aoi is not None:
        tiles = [t for t in tiles if aoi.intersects(box(*t.bounds))]
    reference = box(*plan.reader.source_bounds(plan.reference, crs))
    no_data = {t.name for t in tiles if not reference.intersects(box(*t.bounds))}
    plan.fingerprint = {
        **plan.fingerprint,
        "tile_size_m": size,
        "aoi": None if aoi is None else aoi.wkb_hex,
    }
    return plan, tiles, aoi, no_data


# -- computing one tile --------------------------------------------------------------------


def _pieces(plan: ZonePlan, tile: ProductTile, width_px: int) -> list[Piece]:
    """The tile's rectangle as column strips whose sub-grids fit the blending budget."""
    g = plan.grid
    usable = max(g.stride_px, width_px - g.tile_px - g.stride_px)
    cuts = list(range(tile.col_start, tile.col_stop, usable)) + [tile.col_stop]
    return [
        Piece(tile.row_start, tile.row_stop, c0, c1, *strip_grid(g, c0, c1))
        for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True)
    ]


def _tile_writer(
    path: Path, georef: Georef, plan: ZonePlan, config: ZoneConfig, tile: ProductTile,
    aoi: Any, extra: dict[str, Any] | None = None,
) -> StreamingMapWriter:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _writer(path, georef, plan, config, {"tile": tile.name, **(extra or {})})
    return masked_writer(writer, aoi, georef)


def _map_tile(
    plan: ZonePlan, tile: ProductTile, paths: ProductPaths, predictor: TilePredictor,
    config: ZoneConfig, aoi: Any, progress: Any,
) -> MapOutputs:  # fmt: skip
    """Compute one tile (its strips, merged when there are several) into its COG."""
    pieces = _pieces(plan, tile, _strip_width_px(plan, config.runtime.blend_memory_mb))
    path = paths.tile(tile)
    tile_georef = pieces[0].georef(plan.georef)
    tile_georef = Georef(
        tile_georef.crs, tile_georef.transform, tile.col_stop - tile.col_start,
        tile.row_stop - tile.row_start,
    )  # fmt: skip
    skip = window_skipper(aoi, tile.bounds)
    if len(pieces) == 1:
        writer = _tile_writer(path, tile_georef, plan, config, tile, aoi)
        return map_piece(plan, pieces[0], writer, predictor, config, progress, skip)
    work = paths.tiles_dir / ".work" / tile.name
    outputs = []
    for piece in pieces:
        extra = {"piece": [piece.col_start, piece.col_stop]}
        writer = _tile_writer(
            work / f"{piece.name}.tif", piece.georef(plan.georef), plan, config, tile, aoi, extra
        )
        outputs.append(map_piece(plan, piece, writer, predictor, config, progress, skip))
    final = _writer(path, tile_georef, plan, config, {"tile": tile.name})
    if not final.is_finished:
        local = [
            replace(p, row_start=0, row_stop=p.height, col_start=p.col_start - tile.col_start,
                    col_stop=p.col_stop - tile.col_start)
            for p in pieces
        ]  # fmt: skip
        with final:
            merge_pieces(local, outputs, final)
    result = final.finish()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return result


class _Throughput:
    """A tqdm bar over model windows that also shows km^2/h and output px/s."""

    def __init__(self, total: int, enabled: bool, px_per_window: float, gsd_m: float) -> None:
        self.bar = None
        if enabled and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="window", desc="map", smoothing=0.1)
        self.px_per_window = px_per_window
        self.gsd_m = gsd_m
        self.start = time.perf_counter()
        self.windows = 0

    def update(self, n: int) -> None:
        self.windows += n
        if self.bar is None:
            return
        self.bar.update(n)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        px = self.windows * self.px_per_window
        km2_h = px * self.gsd_m**2 / 1e6 / seconds * 3600
        self.bar.set_postfix_str(f"{km2_h:.3g} km²/h, {px / seconds:.3g} px/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _windows_of(plan: ZonePlan, tile: ProductTile) -> int:
    """Model windows a tile runs (every window touching it)."""
    g = plan.grid
    bands = (
        g.bands_touching_row(tile.row_stop - 1).stop - g.bands_touching_row(tile.row_start).start
    )
    return bands * len(strip_grid(g, tile.col_start, tile.col_stop)[0].col_offsets)


# -- the whole ----------------------------------------------------------------------------


def predict_product(
    config: ZoneConfig,
    *,
    model: ZoneModel | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> ProductSummary:
    """Map the area of a ZoneConfig with ``output.tile_size_m`` as a tiled product.

    Args:
        config: what to map (``output.path``: the mosaic ``.vrt``).
        model: the model (default: loaded from ``config.model``).
        rank: this job's rank (default: ``rank_of_job``).
        world_size: number of jobs (default: ``rank_of_job``).

    Returns:
        What this call did and the product's state.

    Raises:
        ConfigError: a bad config (the message names the key).
        DataError: an unreadable or non-overlapping input.
        MapWriteError, ResumeMismatchError: as ``predict_zone``.
    """
    if config.output.tile_size_m is None:
        raise ConfigError("output.tile_size_m: a tiled product needs a tile size")
    rank, world_size = rank_of_job(rank, world_size)
    paths = ProductPaths.of(config.output.path)
    _check_product_paths(config, paths)
    if config.output.on_existing == "error" and (
        paths.vrt.exists() or (paths.tiles_dir.is_dir() and any(paths.tiles_dir.iterdir()))
    ):
        raise FileExistsError(f"{paths.vrt}: the product exists ({paths.tiles_dir})")
    owns_network = model is None
    model = model or load_zone_model(config.model, preset=config.model_preset)
    device = resolve_device(config.runtime.device)
    precision = resolve_precision(config.runtime.precision, device)
    with _runtime(config):
        plan, tiles, aoi, no_data = product_plan(config, model)
        mine = [t for i, t in enumerate(tiles) if i % world_size == rank and t.name not in no_data]
        todo = [t for t in mine if not _is_finished(plan, config, paths, t)]
        log.info(
            "product of %d tiles (%d without data); rank %d of %d: %d tiles, %d finished",
            len(tiles), len(no_data), rank, world_size, len(mine), len(mine) - len(todo),
        )  # fmt: skip
        gsd = plan.georef.transform[0]
        total = sum(_windows_of(plan, t) for t in todo)
        px = sum(t.num_px for t in todo)
        progress = _Throughput(total, config.runtime.progress, px / max(total, 1), gsd)
        started = time.perf_counter()
        try:
            if todo:
                predictor = _predictor(config, plan, model, device, precision, owns_network)
                for tile in todo:
                    _map_tile(plan, tile, paths, predictor, config, aoi, progress)
                    if config.output.vectors:
                        write_tile_vectors(paths.tile(tile), paths.vectors(tile), plan)
            if config.output.vectors:  # tiles finished by a run killed before their polygons
                for tile in mine:
                    if tile not in todo and not paths.vectors(tile).exists():
                        write_tile_vectors(paths.tile(tile), paths.vectors(tile), plan)
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        done = finalize_product(config, plan, tiles, no_data, paths)
    return ProductSummary(
        paths, len(todo), len(mine) - len(todo), len(tiles) - len(no_data), done, seconds, px,
        px * gsd**2 / 1e6,
    )  # fmt: skip


def _is_finished(
    plan: ZonePlan, config: ZoneConfig, paths: ProductPaths, tile: ProductTile,
    to_compute: bool = True,
) -> bool:  # fmt: skip
    """Whether a tile's COG is finished with this run's settings. ``to_compute``: whether the
    run should skip it (``on_existing: overwrite`` recomputes every tile once); the index
    asks with ``to_compute=False``, whatever ``on_existing`` says."""
    path = paths.tile(tile)
    if not path.exists():
        return False
    if to_compute and config.output.on_existing == "overwrite":
        return False
    if config.output.on_existing != "resume":  # read it as a resume would; never delete it
        config = replace(config, output=replace(config.output, on_existing="resume"))
    georef = Georef(
        plan.georef.crs,
        Piece(tile.row_start, tile.row_stop, tile.col_start, tile.col_stop, plan.grid)
        .georef(plan.georef).transform,
        tile.col_stop - tile.col_start, tile.row_stop - tile.row_start,
    )  # fmt: skip
    return _writer(path, georef, plan, config, {"tile": tile.name}).is_finished


def _check_product_paths(config: ZoneConfig, paths: ProductPaths) -> None:
    """The product's files never replace an input or the model (``check_output_paths`` for
    the mosaic, plus the tiles folder)."""
    check_output_paths(replace(config, output=replace(config.output, path=paths.vrt)))
    from flairkit.inference.zonal import _inside, _protected_files

    for key, protected in _protected_files(config):
        if _inside(protected, paths.tiles_dir):
            raise ConfigError(
                f"output.path: {paths.vrt} would write into {paths.tiles_dir}, which holds the "
                f"map's {key} ({protected}); choose another output path"
            )


def write_tile_vectors(class_path: Path, out: Path, plan: ZonePlan) -> Path:
    """A tile's class map as polygons (``rasterio.features.shapes``), one row per polygon with
    its class value and name, simplified by one pixel (topology kept per polygon), written to
    a GeoPackage atomically (layer ``classes``)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from shapely.geometry import shape

    with rasterio.open(class_path) as src:
        classes = src.read(1)
        transform, crs = src.transform, src.crs
    names = {c.value: c.name for c in plan.classes}
    values, geometries = [], []
    for geometry, value in shapes(classes, mask=classes != NODATA_CLASS, transform=transform):
        values.append(int(value))
        geometries.append(shape(geometry).simplify(abs(transform.a), preserve_topology=True))
    frame = gpd.GeoDataFrame(
        {"class": values, "name": [names.get(v, f"class {v}") for v in values]},
        geometry=geometries,
        crs=crs,
    )
    tmp = out.with_name(f".{out.stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    frame.to_file(tmp, layer="classes", driver="GPKG", engine="pyogrio")
    os.replace(tmp, out)
    return out


def finalize_product(
    config: ZoneConfig,
    plan: ZonePlan,
    tiles: Sequence[ProductTile],
    no_data: set[str],
    paths: ProductPaths,
) -> int:
    """Rewrite the mosaic, its style, the index and (when complete) the preview, under a lock.

    Returns:
        The number of finished tiles.
    """
    from filelock import FileLock

    paths.vrt.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.lock)):
        status = {}
        for tile in tiles:
            if tile.name in no_data:
                status[tile.name] = NO_DATA
            elif _is_finished(plan, config, paths, tile, to_compute=False):
                status[tile.name] = DONE
            else:
                status[tile.name] = PENDING
        done = [t for t in tiles if status[t.name] == DONE]
        complete = bool(done) and len(done) == len(tiles) - len(no_data)
        if done:
            from flairkit.io.mosaic import build_mosaic_vrt
            from flairkit.io.sidecars import write_qml

            build_mosaic_vrt([paths.tile(t) for t in done], paths.vrt)
            overview = _write_overview(paths, plan) if complete else None
            _style_vrt(paths.vrt, plan, overview)
            if not paths.qml.exists():
                write_qml(paths.qml, plan.classes)
        _write_index(plan, tiles, status, paths)
        if complete:
            from flairkit.io.sidecars import write_preview_png

            tmp = paths.preview.with_name(f".{paths.preview.name}.tmp")
            write_preview_png(paths.vrt, tmp, plan.classes, 1024)
            os.replace(tmp, paths.preview)
    return len(done)


#: Longest side of the mosaic's overview raster (``<stem>_overview.tif``) at most about this.
OVERVIEW_MAX_PX = 4096


def _write_overview(paths: ProductPaths, plan: ZonePlan) -> Path:
    """A reduced copy of the whole mosaic (``<stem>_overview.tif``: a power-of-2 reduction to
    at most ~4096 px a side, tiled, with its own overviews and the colour table), read block
    by block from the VRT, so from each tile's internal overviews: zoomed-out views of a
    department open without reading the tiles at full resolution. Written atomically."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from flairkit.modalities import hex_to_rgb

    out = paths.vrt.with_name(f"{paths.vrt.stem}_overview.tif")
    tmp = out.with_name(f".{out.name}.tmp")
    with rasterio.open(paths.vrt) as src:
        factor = 2
        while max(src.width, src.height) / factor > OVERVIEW_MAX_PX:
            factor *= 2
        width, height = math.ceil(src.width / factor), math.ceil(src.height / factor)
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
            "crs": src.crs, "transform": src.transform * src.transform.scale(factor, factor),
            "nodata": NODATA_CLASS, "tiled": True, "blockxsize": 256, "blockysize": 256,
            "compress": "deflate",
        }  # fmt: skip
        with rasterio.open(tmp, "w", **profile) as dst:
            block = 512
            for row in range(0, height, block):
                for col in range(0, width, block):
                    rows, cols = min(block, height - row), min(block, width - col)
                    window = Window(
                        col * factor, row * factor,
                        min(cols * factor, src.width - col * factor),
                        min(rows * factor, src.height - row * factor),
                    )  # fmt: skip
                    data = src.read(
                        1, window=window, out_shape=(rows, cols), resampling=Resampling.nearest
                    )
                    dst.write(data, 1, window=Window(col, row, cols, rows))
            dst.write_colormap(1, {c.value: (*hex_to_rgb(c.colour), 255) for c in plan.classes})
            levels = [2**k for k in range(1, 8) if max(width, height) / 2**k >= 256]
            if levels:
                dst.build_overviews(levels, Resampling.mode)
    os.replace(tmp, out)
    return out


def _style_vrt(vrt: Path, plan: ZonePlan, overview: Path | None) -> None:
    """Give the mosaic's band the class colour table and, once complete, the overview raster
    as its overview (GDAL VRT ``<Overview>``); rewritten atomically."""
    import xml.etree.ElementTree as ET

    from flairkit.modalities import hex_to_rgb

    tree = ET.parse(vrt)
    band = tree.getroot().find("VRTRasterBand")
    if band is None:
        return
    for tag in ("ColorInterp", "ColorTable", "Overview"):
        for element in band.findall(tag):
            band.remove(element)
    position = 0
    interp = ET.Element("ColorInterp")
    interp.text = "Palette"
    table = ET.Element("ColorTable")
    colours = {c.value: hex_to_rgb(c.colour) for c in plan.classes}
    for value in range(max(colours) + 1):
        r, g, b = colours.get(value, (0, 0, 0))
        ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(b), c4="255")
    for element in (interp, table):
        band.insert(position + (1 if band.find("NoDataValue") is not None else 0), element)
        position += 1
    if overview is not None:
        ov = ET.SubElement(band, "Overview")
        name = ET.SubElement(ov, "SourceFilename", relativeToVRT="1")
        name.text = overview.name
        ET.SubElement(ov, "SourceBand").text = "1"
    ET.indent(tree, "  ")
    tmp = vrt.with_name(f".{vrt.name}.tmp")
    tree.write(tmp, encoding="unicode")
    os.replace(tmp, vrt)


def _write_index(
    plan: ZonePlan, tiles: Sequence[ProductTile], status: dict[str, str], paths: ProductPaths
) -> None:
    """The GeoPackage of every tile: name, file, status, pixels, polygon (written atomically)."""
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {
            "name": [t.name for t in tiles],
            "path": [str(paths.tile(t).relative_to(paths.vrt.parent)) for t in tiles],
            "status": [status[t.name] for t in tiles],
            "row_off": [t.row_start for t in tiles],
            "col_off": [t.col_start for t in tiles],
            "width_px": [t.col_stop - t.col_start for t in tiles],
            "height_px": [t.row_stop - t.row_start for t in tiles],
        },
        geometry=[box(*t.bounds) for t in tiles],
        crs=plan.georef.crs,
    )
    tmp = paths.index.with_name(f".{paths.index.stem}.tmp.gpkg")
    tmp.unlink(missing_ok=True)
    frame.to_file(tmp, layer="tiles", driver="GPKG", engine="pyogrio")
    os.replace(tmp, paths.index)


def read_index(path: str | Path) -> Any:
    """The tiles of a product's index as a GeoDataFrame (name, path, status, geometry ...)."""
    import geopandas as gpd

    return gpd.read_file(path, layer="tiles", engine="pyogrio")
