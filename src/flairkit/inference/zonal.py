"""predict_zone: map any area with a flairkit model, tile by tile, in bounded memory.

The flow, for one process::

    rasters --WindowReader--> RawSample --Preprocessor--> Sample --collate--> Batch
        --model--> softmax (B, K, T, T) --RowBlender--> finished rows --StreamingMapWriter--> COG

* **Same preprocessing as training.** The model file carries its PreprocessConfig; tiles go
  through ``Preprocessor(replace(preprocess, tasks=()))`` (labels are never read), so a tile
  cut from a mosaic at a patch's footprint is the patch's Sample.
* **Bounded memory.** Inputs are read window by window; the blender holds the rows in flight
  (one tile height of the strip width); rows are written as soon as they are final. A map
  wider than ``runtime.blend_memory_mb`` allows is computed in column strips that are merged at
  the end (``shard``), so memory does not grow with the area.
* **Overlap of work.** Tiles are read and preprocessed ahead by threads (or DataLoader workers)
  while the model runs; blending and writing run in a second thread, so a GPU is fed while the
  CPU blends.
* **Resume.** The writer records the rows on disk; a new run with the same settings (the
  fingerprint: model file hash, task, tiling, grid, inputs) starts at that row and recomputes
  only the tiles touching it or below. Device, precision, batch size and threads are not part
  of it: a map may resume, or its pieces be merged, on another machine.
* **Scale-out.** Ranks (torchrun's ``RANK``/``WORLD_SIZE``, Slurm's, or explicit arguments)
  take contiguous row ranges; each writes its pieces; after a barrier (torch.distributed) or in
  a separate ``merge_zone`` call, the pieces are merged into the final map.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import queue
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from flairkit.config import ConfigError, ZoneConfig
from flairkit.inference.aoi import masked_writer, read_aoi, window_skipper
from flairkit.inference.dataset import TileBatch, TileDataset, loader_batches, prefetch_batches
from flairkit.inference.fold import fold_batchnorm
from flairkit.inference.plan import ZonePlan, plan_zone
from flairkit.inference.predictor import (
    TilePredictor,
    ZoneModel,
    inference_network,
    load_zone_model,
    resolve_batch_size,
    resolve_device,
    resolve_precision,
)
from flairkit.inference.shard import Piece, merge_pieces, piece_dir, plan_pieces, rank_from_env
from flairkit.inference.stitch import RowBlender, RowBlock, quantise_block
from flairkit.io.raster import DataError
from flairkit.io.writers import (
    NODATA_CLASS,
    MapOutputs,
    StreamingMapWriter,
    map_output_paths,
    map_written_paths,
)
from flairkit.memory import release_free_memory
from flairkit.model_ref import HUB_PREFIX
from flairkit.sample import Georef
from flairkit.transforms.preprocess import Preprocessor

log = logging.getLogger(__name__)

#: GDAL block cache while mapping: enough for the blocks under a few tiles; GDAL's default (5 %
#: of the RAM) would fill with every block read and make memory grow with the area.
GDAL_CACHE_BYTES = 64 * 2**20
#: Rows quantised at once: bounds the temporaries of ``quantise_block`` (about 3 float32 copies).
_QUANTISE_ROWS = 32
# glibc's mmap threshold is left at its default. Lowering it to 1 MiB (every tile's activations
# mapped and unmapped on their own) saved ~100 MB of peak RSS on a 4096^2 map but cost 13 % of
# the speed in page faults (ResNet18 U-Net, 2-core CPU: 244k -> 281k px/s without it); the
# growth of long maps is handled by ``release_free_memory`` after each band instead.


# -- running the model ------------------------------------------------------------------------


class _BlendThread(threading.Thread):
    """Blends predicted tiles and writes finished rows, behind a bounded queue.

    Items are ``(tiles, probs)``: the tiles of one batch and their ``(B, K, T, T)`` probabilities
    (rows for the tiles with data, in order), or None to stop.
    """

    def __init__(self, blend: Any, max_pending: int = 1) -> None:
        super().__init__(name="flairkit-blend", daemon=True)
        self.blend = blend
        self.queue: queue.Queue = queue.Queue(max_pending)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.blend(*item)
                except BaseException as exc:  # re-raised in the main thread
                    self.error = exc

    def put(self, item: Any) -> None:
        """Queue an item; re-raise a failure of the thread."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Blend what is queued and stop; re-raise a failure of the thread."""
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Blend what is queued and stop, ignoring a failure (the caller is failing anyway)."""
        self.queue.put(None)
        self.join()


def _classes(block: RowBlock) -> np.ndarray:
    """``quantise_block``'s class map alone: (rows, W) uint8 argmax, nodata where invalid.

    Without a probabilities file, quantising the K probability rows is a third of the blend
    thread's time for nothing.
    """
    classes = np.argmax(block.probs, axis=0).astype(np.uint8)
    classes[~block.valid] = NODATA_CLASS
    return classes


class _PieceWriter:
    """Crops the blender's row blocks to a piece and writes them, quantised in small chunks."""

    def __init__(self, piece: Piece, writer: StreamingMapWriter) -> None:
        self.piece = piece
        self.writer = writer
        self.cols = slice(piece.col_start - piece.col_offset, piece.col_stop - piece.col_offset)

    def write(self, block: RowBlock) -> None:
        start = max(block.row_start, self.piece.row_start)
        stop = min(block.row_stop, self.piece.row_stop)
        for row in range(start, stop, _QUANTISE_ROWS):
            end = min(row + _QUANTISE_ROWS, stop)
            rows = slice(row - block.row_start, end - block.row_start)
            chunk = RowBlock(
                row, end, block.probs[:, rows, self.cols], block.valid[rows, self.cols]
            )
            if self.writer.write_proba:
                self.writer.write_rows(row - self.piece.row_start, *quantise_block(chunk))
            else:
                self.writer.write_rows(row - self.piece.row_start, _classes(chunk))


def _batches(
    dataset: TileDataset, config: ZoneConfig, device: torch.device
) -> Generator[TileBatch, None, None]:
    r = config.runtime
    batch_size = resolve_batch_size(r.batch_size, device)
    if r.num_workers > 0:
        return loader_batches(dataset, batch_size, r.num_workers, device.type == "cuda")
    return prefetch_batches(dataset, batch_size, r.read_threads)


def map_piece(
    plan: ZonePlan,
    piece: Piece,
    writer: StreamingMapWriter,
    predictor: TilePredictor,
    config: ZoneConfig,
    progress: Any = None,
    skip: Callable[[tuple[float, float, float, float]], bool] | None = None,
) -> MapOutputs:
    """Compute one piece from the writer's resume row on, and finish its files.

    Args:
        plan: the map plan.
        piece: the rectangle to compute.
        writer: the piece's writer (its grid is the piece's).
        predictor: runs the model.
        config: the map config (runtime options).
        progress: a tqdm bar advanced by one per tile, or None.
        skip: tells, from a tile's bounds, that it need not be read nor run (it then
            contributes nothing, as a tile without data): tiles outside an area of interest.

    Returns:
        The piece's finished files.
    """
    if writer.is_finished:
        return writer.finish()
    start_row = piece.row_start + writer.resume_row
    blender = RowBlender(
        piece.grid, plan.num_classes, margin_px=plan.margin_px, start_row=start_row
    )
    needed = [t for t in blender.remaining_tiles() if t.grid_row < piece.band_stop]
    transform = piece.grid_transform(plan.georef)
    if plan.georef.crs is None:  # output_georef always gives the grid a CRS
        raise ValueError("the map grid has no CRS")
    bounds = [piece.grid.tile_bounds(t, transform) for t in needed]
    run = [i for i, b in enumerate(bounds) if skip is None or not skip(b)]
    tiles = [needed[i] for i in run]
    if progress is not None and len(run) < len(needed):
        progress.update(len(needed) - len(run))  # skipped: done at once
    dataset = TileDataset(
        plan.reader, Preprocessor(plan.preprocess), [bounds[i] for i in run],
        plan.georef.crs, piece.grid.tile_px, plan.reference,
    )  # fmt: skip
    rows_out = _PieceWriter(piece, writer)
    added = 0  # tiles of ``needed`` given to the blender (skipped ones as tiles without data)

    def add(tile: Any, probs: np.ndarray | None, valid: np.ndarray | None) -> None:
        for block in blender.add(tile, probs, valid):
            rows_out.write(block)
            release_free_memory()

    def blend_up_to(position: int) -> None:
        nonlocal added
        while added < position:  # skipped tiles before this one
            add(needed[added], None, None)
            added += 1

    def blend(batch: TileBatch | None, probs: np.ndarray | None) -> None:
        nonlocal added
        if batch is None:  # the end: the skipped tiles after the last one run
            blend_up_to(len(needed))
            return
        k = 0
        for item in batch.items:
            has_data = bool(item.valid.any())
            tile_probs = probs[k] if has_data and probs is not None else None
            k += has_data
            blend_up_to(run[item.position])
            add(tiles[item.position], tile_probs, item.valid)
            added += 1

    blend_thread = _BlendThread(blend)
    blend_thread.start()
    batches = _batches(dataset, config, predictor.device)
    try:
        for batch in batches:
            probs = predictor(batch.batch) if batch.batch is not None else None
            blend_thread.put((batch, probs))
            if progress is not None:
                progress.update(len(batch.items))
    except BaseException:
        # Blend and write what was predicted (rows it completes are saved for a resume), stop
        # the writing thread, then close the files.
        blend_thread.stop()
        writer.close()
        raise
    finally:
        batches.close()  # stops the reader threads or workers
    if len(tiles) < len(needed):
        blend_thread.put((None, None))
    try:
        blend_thread.close()
    finally:
        writer.close()
    return writer.finish()


# -- the entry points ---------------------------------------------------------------------------


def _protected_files(config: ZoneConfig) -> list[tuple[str, Path]]:
    """The files a map reads and must never change: ``(config key, path)``."""
    files = [] if config.model.startswith(HUB_PREFIX) else [("model", Path(config.model))]
    for m, cfg in config.inputs.items():
        for key in ("path", "dates", "mask"):
            value = getattr(cfg, key)
            if value is not None:
                files.append((f"inputs.{m.value}.{key}", Path(value)))
    return files


def _same_file(a: Path, b: Path) -> bool:
    """True when two paths name one file: same real path, or same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` lies in ``folder`` (real paths; a bind mount of it as well)."""
    real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    if real.is_relative_to(real_folder):
        return True
    if not folder.is_dir():
        return False
    return any(_same_file(parent, folder) for parent in real.parents if parent.is_dir())


def check_output_paths(config: ZoneConfig) -> None:
    """Refuse an output whose files would replace or delete a file the map reads.

    Every file a map may write or delete (the class map, its style, preview, probabilities,
    partial files, progress record and temporaries, and every rank's piece: see
    ``map_written_paths`` and ``piece_dir``) is compared with the model and every input
    (rasters, dates files, masks): same real path (symlinks, relative paths and ``..``
    resolved) or, for files that exist, same file (hard links). Called before anything is
    written or deleted, whatever ``output.on_existing``.

    Raises:
        ConfigError: a clash (the message names ``output.path`` and the file), or an output
            path that is a folder or lies under a file.
    """
    out = Path(config.output.path)
    if out.is_dir():
        raise ConfigError(
            f"output.path: {out} is a folder; give the class map's file name (e.g. {out}/map.tif)"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output.path: {out}: {parent} is a file, not a folder")
            break
    files, folders = map_written_paths(out)
    folders = [*folders, piece_dir(out)]
    for key, protected in _protected_files(config):
        clash = next((f for f in files if _same_file(f, protected)), None)
        if clash is None:
            clash = next((d for d in folders if _inside(protected, d)), None)
        if clash is not None:
            what = "is" if _same_file(clash, protected) else "holds"
            raise ConfigError(
                f"output.path: {out} would write or delete {clash}, which {what} the map's "
                f"{key} ({protected}); choose another output path"
            )


@contextlib.contextmanager
def _runtime(config: ZoneConfig) -> Iterator[None]:
    """Bounded GDAL cache and the configured torch threads."""
    threads = torch.get_num_threads()
    if config.runtime.torch_threads:
        torch.set_num_threads(config.runtime.torch_threads)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), warnings.catch_warnings():
            # rasterio silences this warning about the in-memory destination of a warp with
            # catch_warnings, which is not thread-safe: with several reader threads it leaks.
            # The destination always gets its transform, so the warning is spurious.
            warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
            yield
    finally:
        torch.set_num_threads(threads)


def _writer(
    path: Path,
    georef: Georef,
    plan: ZonePlan,
    config: ZoneConfig,
    extra: Mapping[str, Any] | None = None,
) -> StreamingMapWriter:
    return StreamingMapWriter(
        path, georef, plan.classes, write_proba=config.output.write_proba,
        fingerprint={**plan.fingerprint, **(extra or {})}, on_existing=config.output.on_existing,
    )  # fmt: skip


def _piece_path(config: ZoneConfig, piece: Piece) -> Path:
    return piece_dir(config.output.path) / f"{piece.name}.tif"


def _strip_width_px(plan: ZonePlan, budget_mb: float) -> int:
    """Sub-grid width whose blending buffers fit the budget.

    Per column the blender holds ``K x tile`` float32 sums and ``K x stride`` float32 finished
    rows when a band completes, plus one float32 weight per row.
    """
    g = plan.grid
    per_column = 4 * (plan.num_classes * (g.tile_px + g.stride_px) + g.tile_px)
    return max(2 * g.tile_px, int(budget_mb * 2**20 // per_column))


def _final_is_done(config: ZoneConfig, plan: ZonePlan) -> MapOutputs | None:
    """The finished outputs when the final map exists with this run's settings, else None.

    Raises:
        ResumeMismatchError: a finished map made with other settings (``on_existing=resume``).
    """
    path = config.output.path
    if config.output.on_existing == "overwrite" or not path.exists():
        return None
    writer = _writer(path, plan.georef, plan, config)
    return writer.finish() if writer.is_finished else None


def predict_zone(
    config: ZoneConfig,
    *,
    model: ZoneModel | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> MapOutputs | None:
    """Map the area of a ZoneConfig: class map COG (+ probabilities), QGIS style, preview.

    With several ranks (arguments, or torchrun/Slurm environment variables) each rank computes
    its rows; under an initialised (or initialisable: torchrun) ``torch.distributed`` group,
    rank 0 merges after a barrier and every rank returns the outputs. Ranks run as independent
    jobs return None; ``merge_zone`` then assembles the map.

    Args:
        config: what to map.
        model: the model (default: loaded from ``config.model``); tests and benchmarks may pass
            another network with the file's recipe.
        rank: this process's rank (default from the environment, else 0).
        world_size: number of ranks (default from the environment, else 1).

    Returns:
        The output paths, or None on a rank that leaves the merge to another job.

    Raises:
        ConfigError: a bad or incomplete config (the message names the key), an output path
            whose files would replace or delete an input or the model (``check_output_paths``).
        DataError: an unreadable, unreferenced or non-overlapping input, bad dates; an input
            that cannot be read midway (the message names the file).
        MapWriteError: an output file cannot be written (disk full, read-only folder); the
            same call again resumes from the last complete block row.
        ResumeMismatchError: existing outputs made with other settings.
    """
    check_output_paths(config)  # before anything is written or deleted
    env_rank, env_world = rank_from_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    owns_network = model is None  # a caller's network is copied before it is modified
    model = model or load_zone_model(config.model, preset=config.model_preset)
    device = resolve_device(config.runtime.device)
    precision = resolve_precision(config.runtime.precision, device)
    with _runtime(config):
        plan, aoi = _zone_plan(config, model)
        # Every rank checks, so that all of them return here or none (no rank left at a barrier).
        done = _final_is_done(config, plan)
        if done is not None:
            log.info("%s is already finished", done.class_path)
            return done
        width_px = _strip_width_px(plan, config.runtime.blend_memory_mb)
        layout = plan_pieces(plan.grid, world_size, width_px)
        if world_size == 1 and len(layout[0]) == 1:
            predictor = _predictor(config, plan, model, device, precision, owns_network)
            return _map_pieces(config, plan, predictor, layout[0], single=True, aoi=aoi)
        # Joined before the work, so that a bad rendezvous fails at once, not hours later.
        group = _process_group(world_size)
        try:
            if layout[rank]:
                predictor = _predictor(config, plan, model, device, precision, owns_network)
                _map_pieces(config, plan, predictor, layout[rank], single=False, aoi=aoi)
            return _gather(config, plan, layout, rank, group is not None)
        finally:
            if group == "ours":
                import torch.distributed as dist

                dist.destroy_process_group()


def _zone_plan(config: ZoneConfig, model: ZoneModel) -> tuple[ZonePlan, Any]:
    """The plan and the AOI (None without one): with an AOI and no ``grid.bounds``, the map
    covers the AOI's bounds within the reference input's extent.

    Raises:
        ConfigError: a bad AOI, or one that misses the inputs.
    """
    plan = plan_zone(config, model)
    if config.aoi is None:
        return plan, None
    assert plan.georef.crs is not None  # output_georef always gives a CRS
    aoi = read_aoi(config, plan.georef.crs)
    if config.grid.bounds is None:
        a, b = aoi.bounds, plan.georef.bounds
        bounds = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
        if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
            raise ConfigError(f"aoi.path: {config.aoi.path}: the AOI misses the inputs' extent")
        grid = dataclasses.replace(config.grid, bounds=bounds, crs=plan.georef.crs)
        plan = plan_zone(dataclasses.replace(config, grid=grid), model)
    plan.fingerprint = {**plan.fingerprint, "aoi": aoi.wkb_hex}
    return plan, aoi


def _gather(
    config: ZoneConfig,
    plan: ZonePlan,
    layout: Sequence[Sequence[Piece]],
    rank: int,
    synchronised: bool,
) -> MapOutputs | None:
    """After this rank's pieces: merge them all (alone, or rank 0 between two barriers)."""
    if not synchronised:
        if len(layout) == 1:
            return _merge(config, plan, layout)
        log.info(
            "rank %d of %d done; merge with merge_zone (flairkit map --merge) when all are",
            rank, len(layout),
        )  # fmt: skip
        return None
    import torch.distributed as dist

    dist.barrier()
    outputs = _merge(config, plan, layout) if rank == 0 else None
    dist.barrier()  # the other ranks return once the map exists
    return outputs or map_output_paths(config.output.path, config.output.write_proba)


def _process_group(world_size: int) -> str | None:
    """``"existing"`` or ``"ours"`` when ranks can synchronise through torch.distributed, else None."""
    import torch.distributed as dist

    if world_size == 1 or not dist.is_available():
        return None
    if dist.is_initialized():
        return "existing"
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    from datetime import timedelta

    # gloo: a barrier needs no GPU; ranks may finish hours apart on unequal areas.
    dist.init_process_group("gloo", timeout=timedelta(hours=48))
    return "ours"


def _predictor(
    config: ZoneConfig,
    plan: ZonePlan,
    model: ZoneModel,
    device: torch.device,
    precision: str,
    owns_network: bool,
) -> TilePredictor:
    """The network ready to map: pruned, optionally copied and BatchNorm-folded, on its device."""
    if model.network is None:
        raise ValueError("predict_zone needs a model with its network")
    r = config.runtime
    network = inference_network(model.network, plan.task)
    if not owns_network and (r.fold_batchnorm or r.channels_last or device.type != "cpu"):
        network = copy.deepcopy(network)
    if r.fold_batchnorm:
        log.debug("folded %d BatchNorm layers", fold_batchnorm(network))
    return TilePredictor(network, plan.task, plan.grid.tile_px, device, precision, r.channels_last)


def _map_pieces(
    config: ZoneConfig,
    plan: ZonePlan,
    predictor: TilePredictor,
    pieces: Sequence[Piece],
    single: bool,
    aoi: Any = None,
) -> MapOutputs | None:
    """Compute pieces (one piece straight into the final files when ``single``); with an
    AOI, windows that miss it are not run and pixels outside it are nodata."""
    writers = []
    for piece in pieces:
        georef = piece.georef(plan.georef)
        if single:
            writer = _writer(config.output.path, plan.georef, plan, config)
        else:
            extra = {"piece": [piece.row_start, piece.row_stop, piece.col_start, piece.col_stop]}
            path = _piece_path(config, piece)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = _writer(path, georef, plan, config, extra)
        writers.append(masked_writer(writer, aoi, georef))
    total = sum(_tiles_left(p, w) for p, w in zip(pieces, writers, strict=True))
    progress = _progress_bar(total, config.runtime.progress)
    started = time.perf_counter()
    outputs = None
    try:
        for piece, writer in zip(pieces, writers, strict=True):
            skip = window_skipper(aoi, piece.georef(plan.georef).bounds)
            outputs = map_piece(plan, piece, writer, predictor, config, progress, skip)
    finally:
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - started
    pixels = sum(p.height * p.width for p in pieces)
    log.info(
        "%d tiles in %.1f s (%.2f tiles/s, %.0f output px/s)",
        total, elapsed, total / max(elapsed, 1e-9), pixels / max(elapsed, 1e-9),
    )  # fmt: skip
    return outputs


def _tiles_left(piece: Piece, writer: StreamingMapWriter) -> int:
    if writer.is_finished:
        return 0
    first = piece.grid.first_tile_for_row(piece.row_start + writer.resume_row)
    return max(0, piece.band_stop * piece.grid.tiles_per_band - first)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tile", desc="map", smoothing=0.1)


def _merge(config: ZoneConfig, plan: ZonePlan, layout: Sequence[Sequence[Piece]]) -> MapOutputs:
    """Merge every rank's finished pieces into the final map, then remove the pieces."""
    pieces = [p for rank_pieces in layout for p in rank_pieces]
    outputs = []
    for piece in pieces:
        path = _piece_path(config, piece)
        if not path.exists():
            raise DataError(
                f"{path}: piece rows {piece.row_start}-{piece.row_stop}, columns "
                f"{piece.col_start}-{piece.col_stop} is not finished; run its rank again"
            )
        extra = {"piece": [piece.row_start, piece.row_stop, piece.col_start, piece.col_stop]}
        # A finished piece with matching settings opens as finished (nothing is created).
        piece_writer = StreamingMapWriter(
            path, piece.georef(plan.georef), plan.classes, write_proba=config.output.write_proba,
            fingerprint={**plan.fingerprint, **extra}, on_existing="resume",
        )  # fmt: skip
        outputs.append(piece_writer.finish())
    writer = _writer(config.output.path, plan.georef, plan, config)
    if not writer.is_finished:
        with writer:
            merge_pieces(pieces, outputs, writer)
    result = writer.finish()
    shutil.rmtree(piece_dir(config.output.path), ignore_errors=True)
    log.info("merged %d pieces into %s", len(pieces), result.class_path)
    return result


def merge_zone(
    config: ZoneConfig, world_size: int, *, model: ZoneModel | None = None
) -> MapOutputs:
    """Assemble the map from the pieces ranks wrote as independent jobs.

    Args:
        config: the map config the ranks ran with.
        world_size: the number of ranks they ran with.
        model: the model (default: the recipe of ``config.model``; no network is built).

    Returns:
        The output paths.

    Raises:
        DataError: a piece is missing or unfinished.
        ResumeMismatchError: a piece was made with other settings.
    """
    check_output_paths(config)  # before anything is written or deleted
    model = model or load_zone_model(config.model, with_network=False, preset=config.model_preset)
    with _runtime(config):
        plan, _ = _zone_plan(config, model)
        done = _final_is_done(config, plan)
        if done is not None:
            return done
        width_px = _strip_width_px(plan, config.runtime.blend_memory_mb)
        return _merge(config, plan, plan_pieces(plan.grid, world_size, width_px))
