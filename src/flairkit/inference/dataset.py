"""TileDataset: a window reader plus the training Preprocessor, one map tile per item.

An item is the preprocessed inputs of one tile and the tile's validity on the output grid
(where the reference input has data). A tile whose reference input has no data at all is not
preprocessed (``TileItem.sample`` is None): the map skips the model for it.

Tiles are read ahead while the model runs, in order, either by threads of the main process
(``prefetch_batches``; GDAL and numpy release the GIL, and threads cost no extra memory for a
copy of torch) or by DataLoader worker processes (``loader_batches``, for GPU machines with
cores to spare). Both yield the same ``TileBatch`` objects in grid order.
"""

from __future__ import annotations

import pickle
import signal
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flairkit.io.windows import WindowReader
from flairkit.modalities import Modality
from flairkit.sample import Batch, Sample, collate
from flairkit.transforms.preprocess import Preprocessor

Bounds = tuple[float, float, float, float]


@dataclass
class TileItem:
    """One tile, ready for the model.

    Attributes:
        position: index of the tile in the dataset's list (the caller maps it to its tile).
        sample: preprocessed inputs, or None when the reference input has no data in the tile.
        valid: ``(tile_px, tile_px)`` bool on the output grid, True where the reference input
            has data.
    """

    position: int
    sample: Sample | None
    valid: np.ndarray


@dataclass
class TileBatch:
    """Consecutive tiles and the model batch of those that have data.

    Attributes:
        items: the tiles, in order.
        batch: the collated samples of the items whose ``sample`` is not None (same order), or
            None when no item has data.
    """

    items: list[TileItem]
    batch: Batch | None

    def pin_memory(self) -> TileBatch:
        """Page-lock the model inputs (DataLoader calls this with ``pin_memory=True``)."""
        return TileBatch(self.items, self.batch.pin_memory() if self.batch is not None else None)


def collate_tiles(items: Sequence[TileItem]) -> TileBatch:
    """Group tiles; the samples of those with data become one Batch (time series padded)."""
    samples = [item.sample for item in items if item.sample is not None]
    # The samples travel in the Batch only: the items keep their masks, not a second reference.
    stripped = [TileItem(item.position, None, item.valid) for item in items]
    return TileBatch(stripped, collate(samples) if samples else None)


def nearest_mask(mask: np.ndarray, size_px: int) -> np.ndarray:
    """Resize a square-ish bool mask to ``(size_px, size_px)`` by nearest neighbour (pixel centres).

    Args:
        mask: ``(H, W)`` bool.
        size_px: output side.

    Returns:
        ``(size_px, size_px)`` bool; ``mask`` itself when it already has that shape.
    """
    if mask.shape == (size_px, size_px):
        return mask
    rows = ((np.arange(size_px) + 0.5) * mask.shape[0] / size_px).astype(np.intp)
    cols = ((np.arange(size_px) + 0.5) * mask.shape[1] / size_px).astype(np.intp)
    return mask[np.ix_(rows, cols)]


class TileDataset(Dataset[TileItem]):
    """Windows of large rasters, read and preprocessed on access.

    Pure per item: nothing carries over from one tile to the next (the Preprocessor is a pure
    function, the reader opens per-thread, per-process handles), so items can be loaded in any
    thread or worker process.

    Args:
        reader: the input rasters.
        preprocess: the model's Preprocessor (built from its PreprocessConfig without tasks).
        bounds: footprint of each tile in ``crs``, in the order the map needs them.
        crs: CRS of the output grid.
        tile_px: tile side on the output grid.
        reference: the modality whose validity is the map's (the finest input).
    """

    def __init__(
        self,
        reader: WindowReader,
        preprocess: Preprocessor,
        bounds: Sequence[Bounds],
        crs: str,
        tile_px: int,
        reference: Modality,
    ) -> None:
        self.reader = reader
        self.preprocess = preprocess
        self.bounds = list(bounds)
        self.crs = crs
        self.tile_px = tile_px
        self.reference = reference
        self.modalities = preprocess.required_modalities

    def __len__(self) -> int:
        return len(self.bounds)

    def __getitem__(self, position: int) -> TileItem:
        raw, valid = self.reader.read_with_validity(
            self.bounds[position], self.crs, f"tile-{position}", self.modalities
        )
        mask = nearest_mask(valid[self.reference], self.tile_px)
        if not mask.any():
            return TileItem(position, None, mask)
        return TileItem(position, self.preprocess(raw), mask)


def prefetch_batches(
    dataset: Dataset[TileItem], batch_size: int, num_threads: int, depth: int | None = None
) -> Generator[TileBatch, None, None]:
    """Load items in threads, ahead of their use, and yield them as batches, in order.

    Args:
        dataset: the tiles.
        batch_size: items per batch (the last batch may be smaller).
        num_threads: loader threads.
        depth: items loaded ahead; default a batch and one more item.

    Yields:
        ``TileBatch`` objects covering the dataset in order.
    """
    depth = depth or batch_size + 1
    # torch's Dataset declares no __len__; map-style datasets (all of ours) have one
    items = _prefetch(dataset.__getitem__, len(dataset), num_threads, depth)  # type: ignore[arg-type]
    group: list[TileItem] = []
    for item in items:
        group.append(item)
        if len(group) == batch_size:
            yield collate_tiles(group)
            group = []
    if group:
        yield collate_tiles(group)


def _prefetch(
    load: Callable[[int], TileItem], count: int, num_threads: int, depth: int
) -> Iterator[TileItem]:
    """``load(0), load(1), ...`` computed up to ``depth`` items ahead by a private thread pool."""
    pool = ThreadPoolExecutor(num_threads, thread_name_prefix="flairkit-tiles")
    pending: deque[Future[TileItem]] = deque()
    try:
        next_index = 0
        while next_index < min(depth, count):
            pending.append(pool.submit(load, next_index))
            next_index += 1
        while pending:
            item = pending.popleft().result()
            if next_index < count:
                pending.append(pool.submit(load, next_index))
                next_index += 1
            yield item
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


class _Failed:
    """An exception raised in a worker, sent back as data (DataLoader would wrap it otherwise).

    DataLoader re-raises a worker's exception with the worker's whole traceback in its message;
    a bad input would then print a traceback instead of one line naming the file.
    """

    def __init__(self, error: Exception) -> None:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an exception that cannot travel: its message does
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.error = error


class _CatchingDataset(Dataset["TileItem | _Failed"]):
    """A dataset whose items are ``_Failed`` instead of raising (for worker processes)."""

    def __init__(self, dataset: Dataset[TileItem]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, position: int) -> TileItem | _Failed:
        try:
            return self.dataset[position]
        except Exception as exc:
            return _Failed(exc)


def _collate_or_fail(items: Sequence[TileItem | _Failed]) -> TileBatch | _Failed:
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed if failed is not None else collate_tiles(items)  # type: ignore[arg-type]


def _quiet_worker(worker_id: int) -> None:
    """Ctrl-C is the main process's to handle: a worker ignores SIGINT (no traceback of its own)
    and stops when the main process shuts the loader down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_workers(loader: DataLoader) -> Iterator[TileBatch]:
    """``iter(loader)`` (it forks the workers), a Ctrl-C meanwhile raised once they are started.

    A KeyboardInterrupt raised in the middle of a fork is lost: Python's at-fork hooks swallow
    it, and one raised in ``logging``'s hook leaves that module's lock taken, so the next log
    call (in the blend thread) waits forever. While the workers start, SIGINT is only noted.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        return iter(loader)
    interrupted: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        batches = iter(loader)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted and callable(previous):
        try:
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
        except BaseException:
            del batches  # the workers stop
            raise
    return batches


def loader_batches(
    dataset: Dataset[TileItem], batch_size: int, num_workers: int, pin_memory: bool
) -> Generator[TileBatch, None, None]:
    """Batches from a DataLoader with worker processes (sequential order, no shuffling).

    Workers ignore SIGINT (the main process stops them); an exception in a worker is raised
    here as itself, with its own message (not DataLoader's copy of the worker's traceback).

    Args:
        dataset: the tiles.
        batch_size: items per batch.
        num_workers: worker processes (at least 1).
        pin_memory: page-lock batches for faster host-to-GPU copies.

    Yields:
        ``TileBatch`` objects covering the dataset in order.
    """
    loader = DataLoader(
        _CatchingDataset(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_or_fail,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=2,
        worker_init_fn=_quiet_worker,
    )
    batches = _start_workers(loader)
    try:
        for batch in batches:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch
    finally:
        # The last reference: the workers stop now, even while an exception (whose traceback
        # holds this frame) is still propagating.
        del batches
