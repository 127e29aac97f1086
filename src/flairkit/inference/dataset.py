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

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from flairkit.data.sample import Batch, Sample, collate
from flairkit.io.windows import WindowReader
from flairkit.modalities import Modality
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
) -> Iterator[TileBatch]:
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
    items = _prefetch(dataset.__getitem__, len(dataset), num_threads, depth)
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


def loader_batches(
    dataset: Dataset[TileItem], batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[TileBatch]:
    """Batches from a DataLoader with worker processes (sequential order, no shuffling).

    Args:
        dataset: the tiles.
        batch_size: items per batch.
        num_workers: worker processes (at least 1).
        pin_memory: page-lock batches for faster host-to-GPU copies.

    Yields:
        ``TileBatch`` objects covering the dataset in order.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_tiles,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=2,
    )
    yield from loader
