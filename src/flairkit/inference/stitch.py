"""Blend overlapping tile predictions into finished row blocks, holding only the rows in flight.

Each tile's probabilities are weighted by a separable raised-cosine window (``blend_weights``)
and summed; a pixel's result is the weighted sum divided by its total weight. Along one axis,
the ramps of two neighbours over their shared overlap add up to exactly 1 (sin^2 + cos^2), so
a constant prediction stays constant and there is no seam. The outermost ``margin_px`` pixels of
an edge that has a neighbour get weight 0: a CNN's zero padding spoils them, and the neighbour
sees the same pixels from its inside.

``RowBlender`` keeps the weighted sums of one tile height of rows (``K x tile_px x width``
float32, plus the weight totals): memory depends on the tile size and the raster width, never
on the raster height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flairkit.inference.tiling import Tile, TileGrid
from flairkit.io.writers import NODATA_CLASS


def edge_ramp(length_px: int, overlap_px: int, margin_px: int = 0) -> np.ndarray:
    """Weights rising from a tile edge across the overlap with its neighbour.

    Index 0 is the pixel on the edge. The first ``margin_px`` pixels get 0, the next
    ``overlap_px - 2 * margin_px`` pixels rise as ``sin^2`` from ~0 to ~1, the rest get 1.
    Two neighbours' ramps over their shared overlap add up to 1 exactly (in exact arithmetic):
    where one is in its margin the other is at 1, and in between ``sin^2(x) + cos^2(x) = 1``.

    Args:
        length_px: length of the returned profile (the tile side).
        overlap_px: pixels shared with the neighbour; 0 means no neighbour (all weights 1).
        margin_px: zero-weight pixels at the edge, ``2 * margin_px <= overlap_px``.

    Returns:
        (length_px,) float32 weights in [0, 1].

    Raises:
        ValueError: if the margin does not fit twice in the overlap (some pixels would then get
            weight 0 from both neighbours).
    """
    weights = np.ones(length_px, dtype=np.float64)
    if overlap_px == 0:
        return weights.astype(np.float32)
    if margin_px < 0 or 2 * margin_px > overlap_px:
        raise ValueError(
            f"margin_px must be in [0, overlap/2] so every pixel keeps a positive weight; "
            f"got margin {margin_px} px for an overlap of {overlap_px} px"
        )
    ramp_px = overlap_px - 2 * margin_px
    weights[: min(margin_px, length_px)] = 0.0
    d = np.arange(ramp_px, dtype=np.float64)
    ramp = np.sin(0.5 * math.pi * (d + 0.5) / ramp_px) ** 2 if ramp_px else d
    stop = min(margin_px + ramp_px, length_px)
    weights[margin_px:stop] = ramp[: stop - margin_px]
    return weights.astype(np.float32)


def axis_weights(length_px: int, before_px: int, after_px: int, margin_px: int = 0) -> np.ndarray:
    """Weights along one axis of a tile: the product of the ramps from both edges.

    Args:
        length_px: tile side.
        before_px: overlap with the neighbour before (above or left); 0 on the raster border.
        after_px: overlap with the neighbour after (below or right); 0 on the raster border.
        margin_px: zero-weight pixels on each edge that has a neighbour.

    Returns:
        (length_px,) float32.
    """
    before = edge_ramp(length_px, before_px, margin_px)
    after = edge_ramp(length_px, after_px, margin_px)[::-1]
    return before * after


def blend_weights(
    tile_px: int,
    top_px: int = 0,
    bottom_px: int = 0,
    left_px: int = 0,
    right_px: int = 0,
    margin_px: int = 0,
) -> np.ndarray:
    """Raised-cosine blending window of one tile.

    1 in the centre and along raster borders (overlap 0: nothing to blend with), ramping to ~0
    across the overlap towards every edge that has a neighbour, with ``margin_px`` zero pixels
    on those edges. Separable: ``outer(rows, cols)``, so the 1-D partition of unity carries over
    to the 2-D grid.

    Args:
        tile_px: tile side.
        top_px: overlap with the tile above (0: none).
        bottom_px: overlap with the tile below.
        left_px: overlap with the tile on the left.
        right_px: overlap with the tile on the right.
        margin_px: zero-weight pixels on each edge that has a neighbour.

    Returns:
        (tile_px, tile_px) float32.

    Raises:
        ValueError: if ``2 * margin_px`` exceeds a non-zero overlap.
    """
    rows = axis_weights(tile_px, top_px, bottom_px, margin_px)
    cols = axis_weights(tile_px, left_px, right_px, margin_px)
    return np.outer(rows, cols)


def default_margin_px(overlap_px: int) -> int:
    """Zero-weight margin used when none is given: a quarter of the overlap.

    A quarter leaves half the overlap for a smooth ramp while discarding the pixels a CNN's
    zero padding affects most (a 3x3 conv stack of depth d spoils d pixels).
    """
    return overlap_px // 4


@dataclass(frozen=True, eq=False)
class RowBlock:
    """Finished rows of the blended map.

    Attributes:
        row_start: first row in the raster.
        row_stop: one past the last row.
        probs: (K, rows, width) float32 blended probabilities; 0 where ``valid`` is False.
        valid: (rows, width) bool, False where no tile had data (total weight 0).
    """

    row_start: int
    row_stop: int
    probs: np.ndarray
    valid: np.ndarray


class RowBlender:
    """Accumulate weighted tile probabilities and emit rows as soon as no tile touches them.

    Tiles must be added in grid order (``grid.tiles``), each exactly once. After the last tile
    of a band, ``add`` returns the rows that band finished. The buffer holds ``min(tile_px,
    height_px)`` rows of the full width.

    With ``start_row > 0`` (resume), the tiles entirely above ``start_row`` are not needed
    (``remaining_tiles``; adding them is a no-op) and no row above ``start_row`` is emitted.
    Rows at or below ``start_row`` get the same contributions, summed in the same order, as in
    a run from row 0, so their values are bit-identical provided the model is deterministic.

    Args:
        grid: the tile grid.
        num_classes: K, the number of probability channels.
        margin_px: zero-weight margin on edges with a neighbour; ``None`` uses
            ``default_margin_px(grid.overlap_px)``.
        start_row: first row to emit, ``0 <= start_row <= grid.height_px``.

    Raises:
        ValueError: for a bad ``start_row`` or a margin that does not fit the overlap.
    """

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        *,
        margin_px: int | None = None,
        start_row: int = 0,
    ) -> None:
        if not 0 <= start_row <= grid.height_px:
            raise ValueError(f"start_row must be in [0, {grid.height_px}], got {start_row}")
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.grid = grid
        self.num_classes = num_classes
        self.margin_px = default_margin_px(grid.overlap_px) if margin_px is None else margin_px
        if 2 * self.margin_px > grid.overlap_px and grid.overlap_px > 0:
            raise ValueError(
                f"margin_px {self.margin_px} is more than half the overlap {grid.overlap_px} px: "
                f"some pixels would get weight 0 from every tile"
            )
        self.start_row = start_row
        self._first_tile = grid.first_tile_for_row(start_row)
        self._next_tile = self._first_tile
        self._buffer_rows = min(grid.tile_px, grid.height_px)
        # Row offset of buffer row 0: the first row of the band being blended.
        self._base_row = 0
        if self._first_tile < len(grid):
            self._base_row = grid.row_offsets[grid[self._first_tile].grid_row]
        # Weighted sums (K, R, W) and weight totals (R, W) of the R = buffer rows in flight.
        self._sums = np.zeros((num_classes, self._buffer_rows, grid.width_px), np.float32)
        self._weights = np.zeros((self._buffer_rows, grid.width_px), np.float32)
        self._scratch = np.empty((num_classes, grid.tile_px, grid.tile_px), np.float32)
        self._window_cache: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._pending_shift = 0  # rows to drop from the buffer top before the next tile

    @property
    def nbytes(self) -> int:
        """Bytes held by the blender's arrays (row buffer, weight totals, one tile of scratch)."""
        return self._sums.nbytes + self._weights.nbytes + self._scratch.nbytes

    @property
    def is_done(self) -> bool:
        """True once every needed tile has been added (all rows emitted)."""
        return self._next_tile >= len(self.grid)

    def remaining_tiles(self) -> tuple[Tile, ...]:
        """The tiles still to add, in the order ``add`` expects them."""
        return self.grid.tiles[self._next_tile :]

    def _window(self, tile: Tile) -> np.ndarray:
        key = tile.overlaps_px
        if key not in self._window_cache:
            self._window_cache[key] = blend_weights(self.grid.tile_px, *key, self.margin_px)
        return self._window_cache[key]

    def add(
        self, tile: Tile, probs: np.ndarray | None, valid: np.ndarray | None = None
    ) -> list[RowBlock]:
        """Blend one tile and return the row blocks it finished (empty list or one block).

        Args:
            tile: the next tile of the grid (``remaining_tiles()[0]``); tiles above
                ``start_row`` are accepted and ignored.
            probs: (K, tile_px, tile_px) probabilities (softmax output), or ``None`` when the
                tile has no data at all (it then contributes nothing, as ``valid`` all False).
                Parts beyond the raster are cropped.
            valid: (tile_px, tile_px) bool, False where the input had no data; ``None`` means
                all valid. Pixels that are invalid in every tile come out with ``valid`` False.

        Returns:
            Finished row blocks, top to bottom. Their ``probs`` are views into the blender's
            buffer, valid until the next ``add``: copy them to keep them.

        Raises:
            ValueError: if the tile is out of order, belongs to another grid, or an array has
                the wrong shape.
        """
        if tile.index < self._first_tile:
            return []
        if tile.index != self._next_tile:
            raise ValueError(
                f"tiles must arrive in grid order: expected tile {self._next_tile}, "
                f"got tile {tile.index} (grid of {len(self.grid)} tiles)"
            )
        if self.grid[tile.index] != tile:
            raise ValueError(f"tile {tile} does not belong to this grid")
        self._apply_shift()
        t = self.grid.tile_px
        if probs is not None:
            if probs.shape != (self.num_classes, t, t):
                raise ValueError(
                    f"probs for tile {tile.index} must have shape {(self.num_classes, t, t)}, got {probs.shape}"
                )
            self._accumulate(tile, probs, valid)
        self._next_tile += 1
        if tile.grid_col + 1 < self.grid.tiles_per_band:
            return []
        return self._finish_band(tile.grid_row)

    def _accumulate(self, tile: Tile, probs: np.ndarray, valid: np.ndarray | None) -> None:
        t = self.grid.tile_px
        weights = self._window(tile)  # (T, T)
        if valid is not None:
            if valid.shape != (t, t):
                raise ValueError(
                    f"valid for tile {tile.index} must have shape {(t, t)}, got {valid.shape}"
                )
            weights = weights * valid
        rows = len(self.grid.rows_in_raster(tile))
        cols = len(self.grid.cols_in_raster(tile))
        r0 = tile.row_off - self._base_row
        c0 = tile.col_off
        weights = weights[:rows, :cols]
        scratch = self._scratch[:, :rows, :cols]
        np.multiply(probs[:, :rows, :cols], weights, out=scratch)
        self._sums[:, r0 : r0 + rows, c0 : c0 + cols] += scratch
        self._weights[r0 : r0 + rows, c0 : c0 + cols] += weights

    def _finish_band(self, grid_row: int) -> list[RowBlock]:
        """Emit the rows band ``grid_row`` finished; the buffer shifts at the next ``add``.

        The block's probabilities are normalised in place in the buffer and returned as a view
        (no (K, stride, W) copy: 139 MB per band on a 4096 px wide map), so the shift that makes
        room for the next band waits until the caller has used the block.
        """
        stop = self.grid.band_stop(grid_row)
        start = max(self._base_row, self.start_row)
        blocks = []
        if stop > start:
            lo, hi = start - self._base_row, stop - self._base_row
            totals = self._weights[lo:hi]
            valid = totals > 0
            probs = self._sums[:, lo:hi]
            np.divide(probs, totals, out=probs, where=valid)
            if not valid.all():
                probs[:, ~valid] = 0.0  # weight 0 everywhere: no data (and no NaN let through)
            blocks.append(RowBlock(start, stop, probs, valid))
        if grid_row + 1 < self.grid.num_bands:
            self._pending_shift = self.grid.row_offsets[grid_row + 1] - self._base_row
        return blocks

    def _apply_shift(self) -> None:
        """Move the rows the next band shares with the finished one to the top; clear the rest."""
        shift, self._pending_shift = self._pending_shift, 0
        if shift == 0:
            return
        keep = self._buffer_rows - shift
        # numpy copes with the overlap of source and destination when keep > shift
        self._sums[:, :keep] = self._sums[:, shift:]
        self._sums[:, keep:] = 0.0
        self._weights[:keep] = self._weights[shift:]
        self._weights[keep:] = 0.0
        self._base_row += shift


def quantise_block(block: RowBlock) -> tuple[np.ndarray, np.ndarray]:
    """Class map and uint8 probabilities of a row block.

    Args:
        block: blended rows.

    Returns:
        ``(classes, proba)``: (rows, W) uint8 argmax (first class on ties), ``NODATA_CLASS``
        where ``block.valid`` is False; (K, rows, W) uint8 ``round(p * 255)``, 0 where invalid.
    """
    classes = np.argmax(block.probs, axis=0).astype(np.uint8)
    classes[~block.valid] = NODATA_CLASS
    proba = np.rint(np.clip(block.probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    return classes, proba
