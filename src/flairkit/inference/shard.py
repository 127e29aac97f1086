"""Cut a map into pieces (row ranges per rank, column strips per memory budget) and merge them.

A piece owns a rectangle of the output grid: rows ``[row_start, row_stop)``, columns
``[col_start, col_stop)``. It is computed with the tiles of the global grid that touch it and
blended exactly as in a single run, so the merged pieces are the map a single process makes:

* **Rows.** ``RowBlender(start_row=row_start)`` gives rows from ``row_start`` on the same sums
  as a run from row 0; the piece stops adding tiles after the last band touching
  ``row_stop - 1``. Row ranges start on band starts, so a boundary costs one band computed by
  both neighbours.
* **Columns.** A strip's blender runs on a sub-grid holding the global tiles that touch its
  columns, at their global offsets (shifted). A sub-grid's first and last tiles lose their
  outer neighbour, which changes their weights only in the overlap with that neighbour, i.e.
  outside the columns the strip owns. So owned pixels get the same contributions with the same
  weights in the same order: the same bits. Strips bound the blending buffer
  (``K x tile_px x strip width`` floats) whatever the map's width.

Ranks split the rows (``split_rows``); each rank's rows are cut into the same column strips
(``split_columns``). ``merge_pieces`` copies finished pieces into the final writer row block by
row block, so memory stays ``(1 + K) x block x width`` bytes.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from flairkit.inference.tiling import TileGrid
from flairkit.io.writers import MapOutputs, StreamingMapWriter
from flairkit.sample import Georef


@dataclass(frozen=True)
class Piece:
    """A rectangle of the output grid and the tiles that compute it.

    Attributes:
        row_start: first row owned.
        row_stop: one past the last row owned.
        col_start: first column owned (global grid).
        col_stop: one past the last column owned.
        grid: the tiles touching the piece: the global rows, and the columns from
            ``col_offset`` on (tile offsets shifted by ``-col_offset``).
        col_offset: global column of the sub-grid's column 0.
    """

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int
    grid: TileGrid
    col_offset: int = 0

    @property
    def height(self) -> int:
        """Rows owned."""
        return self.row_stop - self.row_start

    @property
    def width(self) -> int:
        """Columns owned."""
        return self.col_stop - self.col_start

    @property
    def name(self) -> str:
        """File-name-safe id, unique within a map (``r<rows>_c<cols>``)."""
        return f"r{self.row_start}-{self.row_stop}_c{self.col_start}-{self.col_stop}"

    @property
    def band_stop(self) -> int:
        """One past the last band the piece needs (the last band touching ``row_stop - 1``)."""
        return self.grid.bands_touching_row(self.row_stop - 1).stop

    def georef(self, full: Georef) -> Georef:
        """The piece's own grid: ``full`` cropped to the owned rectangle (north-up grids)."""
        a, b, c, d, e, f = full.transform
        return Georef(
            full.crs,
            (a, b, c + a * self.col_start, d, e, f + e * self.row_start),
            self.width,
            self.height,
        )

    def grid_transform(self, full: Georef) -> tuple[float, ...]:
        """Affine coefficients of the sub-grid (column 0 at ``col_offset``)."""
        a, b, c, d, e, f = full.transform
        return (a, b, c + a * self.col_offset, d, e, f)


def split_rows(grid: TileGrid, world_size: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per rank, starting on band starts, balanced by band count.

    Args:
        grid: the map's tile grid.
        world_size: number of ranks.

    Returns:
        ``world_size`` ranges ``(row_start, row_stop)`` covering the raster in order; a rank
        gets an empty range (``row_start == row_stop``) when there are fewer bands than ranks.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    bands = grid.num_bands
    cuts = [round(k * bands / world_size) for k in range(world_size + 1)]
    rows = [grid.row_offsets[b] if b < bands else grid.height_px for b in cuts]
    rows[0] = 0
    return list(zip(rows[:-1], rows[1:], strict=True))


def split_columns(grid: TileGrid, max_width_px: int) -> list[tuple[int, int]]:
    """Column strips whose sub-grids are at most ``max_width_px`` wide, cut on tile starts.

    A strip cut on tile starts spans its own width plus one tile in its sub-grid (the tile
    before its first cut overlaps it); snapping a cut to a tile start moves it by at most a
    stride. Strips of ``max_width_px - tile - stride`` columns therefore fit.

    Args:
        grid: the map's tile grid.
        max_width_px: largest sub-grid width (the blending buffer's width).

    Returns:
        ``(col_start, col_stop)`` per strip, covering the raster in order; one strip when the
        raster fits.
    """
    if grid.width_px <= max_width_px or grid.tiles_per_band == 1:
        return [(0, grid.width_px)]
    usable = max(grid.stride_px, max_width_px - grid.tile_px - grid.stride_px)
    num_strips = min(math.ceil(grid.width_px / usable), grid.tiles_per_band)
    offsets = grid.col_offsets
    cuts = [0]
    for k in range(1, num_strips):
        ideal = k * grid.width_px / num_strips
        j = min(range(1, len(offsets)), key=lambda i: abs(offsets[i] - ideal))
        if offsets[j] > cuts[-1]:
            cuts.append(offsets[j])
    cuts.append(grid.width_px)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def strip_grid(grid: TileGrid, col_start: int, col_stop: int) -> tuple[TileGrid, int]:
    """The global tiles touching columns ``[col_start, col_stop)``, as a grid of their own.

    Returns:
        ``(sub_grid, col_offset)``: the sub-grid's columns start at global column ``col_offset``.
    """
    if (col_start, col_stop) == (0, grid.width_px):
        return grid, 0
    offsets = grid.col_offsets
    first = bisect.bisect_right([o + grid.tile_px for o in offsets], col_start)
    last = bisect.bisect_left(offsets, col_stop) - 1
    x0 = offsets[first]
    width = min(offsets[last] + grid.tile_px, grid.width_px) - x0
    sub = TileGrid(
        height_px=grid.height_px,
        width_px=width,
        tile_px=grid.tile_px,
        overlap_px=grid.overlap_px,
        row_offsets=grid.row_offsets,
        col_offsets=tuple(o - x0 for o in offsets[first : last + 1]),
    )
    return sub, x0


def plan_pieces(grid: TileGrid, world_size: int, max_width_px: int) -> list[list[Piece]]:
    """The pieces of every rank: its row range cut into the column strips.

    Args:
        grid: the map's tile grid.
        world_size: number of ranks.
        max_width_px: target sub-grid width of a strip.

    Returns:
        Per rank, its pieces top-down then left to right (empty for a rank without rows).
    """
    strips = [(c0, c1, *strip_grid(grid, c0, c1)) for c0, c1 in split_columns(grid, max_width_px)]
    per_rank = []
    for r0, r1 in split_rows(grid, world_size):
        pieces = [Piece(r0, r1, c0, c1, sub, x0) for c0, c1, sub, x0 in strips] if r1 > r0 else []
        per_rank.append(pieces)
    return per_rank


def rank_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun (``RANK``, ``WORLD_SIZE``) or Slurm; ``(0, 1)`` alone."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and size_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[size_key])
    return 0, 1


def piece_dir(class_path: str | Path) -> Path:
    """Folder of the pieces of a map: ``<stem>.pieces`` beside the class map."""
    path = Path(class_path)
    return path.with_name(f"{path.stem}.pieces")


def merge_pieces(
    pieces: Sequence[Piece], outputs: Sequence[MapOutputs], writer: StreamingMapWriter
) -> None:
    """Copy finished pieces into ``writer`` from its resume row to the end, row block by block.

    Args:
        pieces: pieces covering the writer's grid without overlap.
        outputs: the finished files of each piece (same order).
        writer: the final map's writer (not finished).
    """
    height, width = writer.georef.height, writer.georef.width
    block = writer.block_px
    k = writer.num_classes
    handles = []
    try:
        for out in outputs:
            proba = rasterio.open(out.proba_path) if writer.write_proba else None
            handles.append((rasterio.open(out.class_path), proba))
        for row in range(writer.resume_row, height, block):
            rows = min(block, height - row)
            classes = np.empty((rows, width), np.uint8)
            proba = np.empty((k, rows, width), np.uint8) if writer.write_proba else None
            for piece, (class_src, proba_src) in zip(pieces, handles, strict=True):
                top, bottom = max(row, piece.row_start), min(row + rows, piece.row_stop)
                if bottom <= top:
                    continue
                window = Window(0, top - piece.row_start, piece.width, bottom - top)
                out_rows = slice(top - row, bottom - row)
                cols = slice(piece.col_start, piece.col_stop)
                classes[out_rows, cols] = class_src.read(1, window=window)
                if proba is not None and proba_src is not None:
                    proba[:, out_rows, cols] = proba_src.read(window=window)
            writer.write_rows(row, classes, proba)
    finally:
        for class_src, proba_src in handles:
            class_src.close()
            if proba_src is not None:
                proba_src.close()
