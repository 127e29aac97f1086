"""Tile grid over an output raster: fixed-size overlapping tiles, row band by row band.

All positions are in pixels of the OUTPUT grid (the label GSD). Tiles have the fixed size the
model wants; neighbours overlap by ``overlap_px`` (more for the last tile of a band or column,
which is shifted back inside the raster). The stitcher (``stitch.RowBlender``) relies on two
facts this module guarantees:

- tiles come row band by row band (all tiles of one band share ``row_off``), left to right;
- band offsets increase, so once a band is done, every row above the next band's first row has
  received all its contributions (``TileGrid.rows_final_after``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Tile:
    """One model input window, in output-grid pixels.

    ``row_off + height`` may exceed the raster height when the raster is smaller than a tile
    (same for columns): the caller pads the input with nodata and the stitcher crops.

    Attributes:
        index: position in grid order (row-major: band by band, left to right).
        grid_row: band index (0 = top band).
        grid_col: column index within the band (0 = leftmost).
        row_off: first row.
        col_off: first column.
        height: rows (the grid's ``tile_px``).
        width: columns (the grid's ``tile_px``).
        overlap_top_px: rows shared with the tile above (0 on the raster's top border).
        overlap_bottom_px: rows shared with the tile below (0 on the bottom border).
        overlap_left_px: columns shared with the tile on the left (0 on the left border).
        overlap_right_px: columns shared with the tile on the right (0 on the right border).
    """

    index: int
    grid_row: int
    grid_col: int
    row_off: int
    col_off: int
    height: int
    width: int
    overlap_top_px: int = 0
    overlap_bottom_px: int = 0
    overlap_left_px: int = 0
    overlap_right_px: int = 0

    @property
    def row_stop(self) -> int:
        """One past the last row (may exceed the raster height, see the class docstring)."""
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        """One past the last column (may exceed the raster width)."""
        return self.col_off + self.width

    @property
    def overlaps_px(self) -> tuple[int, int, int, int]:
        """Overlaps with the neighbours as (top, bottom, left, right)."""
        return (
            self.overlap_top_px,
            self.overlap_bottom_px,
            self.overlap_left_px,
            self.overlap_right_px,
        )


def tile_offsets(length_px: int, tile_px: int, stride_px: int) -> tuple[int, ...]:
    """Offsets of the tiles along one axis: every ``stride_px``, the last shifted back inside.

    Args:
        length_px: raster length along the axis.
        tile_px: tile length.
        stride_px: distance between consecutive tile starts (``tile_px - overlap_px``).

    Returns:
        Increasing offsets; the tiles ``[off, off + tile_px)`` cover ``[0, length_px)``. A single
        offset 0 when ``length_px <= tile_px`` (that tile extends beyond the raster).
    """
    offsets = [0]
    while offsets[-1] + tile_px < length_px:
        # The tile that would cross the raster end is pulled back so that it ends on it.
        offsets.append(min(offsets[-1] + stride_px, length_px - tile_px))
    return tuple(offsets)


def _neighbour_overlaps(offsets: Sequence[int], tile_px: int) -> list[tuple[int, int]]:
    """(before, after) overlap of each tile with its neighbours along one axis."""
    out = []
    for i, off in enumerate(offsets):
        before = offsets[i - 1] + tile_px - off if i > 0 else 0
        after = off + tile_px - offsets[i + 1] if i + 1 < len(offsets) else 0
        out.append((before, after))
    return out


@dataclass(frozen=True)
class TileGrid:
    """Fixed-size overlapping tiles covering a ``height_px`` x ``width_px`` raster.

    Build it with ``make_tile_grid``. Iterating yields ``Tile`` objects in grid order.

    Attributes:
        height_px: raster rows.
        width_px: raster columns.
        tile_px: tile side (every tile is ``tile_px`` x ``tile_px``).
        overlap_px: nominal overlap between neighbours; the stride is ``tile_px - overlap_px``.
        row_offsets: first row of each band, increasing.
        col_offsets: first column of each tile in a band, increasing.
    """

    height_px: int
    width_px: int
    tile_px: int
    overlap_px: int
    row_offsets: tuple[int, ...] = field(repr=False)
    col_offsets: tuple[int, ...] = field(repr=False)

    @property
    def stride_px(self) -> int:
        """Distance between the starts of consecutive tiles (except before a shifted last)."""
        return self.tile_px - self.overlap_px

    @property
    def num_bands(self) -> int:
        """Number of row bands."""
        return len(self.row_offsets)

    @property
    def tiles_per_band(self) -> int:
        """Number of tiles in each band."""
        return len(self.col_offsets)

    @cached_property
    def tiles(self) -> tuple[Tile, ...]:
        """All tiles in grid order."""
        rows = _neighbour_overlaps(self.row_offsets, self.tile_px)
        cols = _neighbour_overlaps(self.col_offsets, self.tile_px)
        out: list[Tile] = []
        for r, (row_off, (top, bottom)) in enumerate(zip(self.row_offsets, rows, strict=True)):
            for c, (col_off, (left, right)) in enumerate(zip(self.col_offsets, cols, strict=True)):
                out.append(
                    Tile(
                        index=len(out),
                        grid_row=r,
                        grid_col=c,
                        row_off=row_off,
                        col_off=col_off,
                        height=self.tile_px,
                        width=self.tile_px,
                        overlap_top_px=top,
                        overlap_bottom_px=bottom,
                        overlap_left_px=left,
                        overlap_right_px=right,
                    )  # fmt: skip
                )
        return tuple(out)

    def __len__(self) -> int:
        return self.num_bands * self.tiles_per_band

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, index: int) -> Tile:
        return self.tiles[index]

    def rows_in_raster(self, tile: Tile) -> range:
        """Rows of ``tile`` that lie inside the raster (the rest is padding).

        Args:
            tile: a tile of this grid.

        Returns:
            Raster rows, ``range(tile.row_off, min(tile.row_stop, height_px))``.
        """
        return range(tile.row_off, min(tile.row_stop, self.height_px))

    def cols_in_raster(self, tile: Tile) -> range:
        """Columns of ``tile`` that lie inside the raster (the rest is padding).

        Args:
            tile: a tile of this grid.

        Returns:
            Raster columns, ``range(tile.col_off, min(tile.col_stop, width_px))``.
        """
        return range(tile.col_off, min(tile.col_stop, self.width_px))

    def band_stop(self, grid_row: int) -> int:
        """Rows ``[0, band_stop)`` are final once band ``grid_row`` has been blended.

        Args:
            grid_row: band index.

        Returns:
            The next band's first row, or the raster height after the last band.
        """
        if grid_row + 1 < self.num_bands:
            return self.row_offsets[grid_row + 1]
        return self.height_px

    def rows_final_after(self, tile: Tile) -> int:
        """Number of leading rows that no tile after ``tile`` (in grid order) touches.

        Args:
            tile: a tile of this grid.

        Returns:
            ``n`` such that rows ``[0, n)`` have received every contribution once all tiles up
            to and including ``tile`` have been added.
        """
        if tile.grid_col + 1 < self.tiles_per_band:
            return self.row_offsets[tile.grid_row]
        return self.band_stop(tile.grid_row)

    def bands_touching_row(self, row: int) -> range:
        """Indices of the bands whose tiles cover ``row``.

        Args:
            row: a row of the raster, ``0 <= row < height_px``.

        Returns:
            A (non-empty) range of band indices.

        Raises:
            IndexError: if ``row`` is outside the raster.
        """
        if not 0 <= row < self.height_px:
            raise IndexError(f"row {row} outside the raster (height {self.height_px} px)")
        stop = bisect.bisect_right(self.row_offsets, row)
        start = bisect.bisect_right(self.row_offsets, row - self.tile_px)
        return range(start, stop)

    def tiles_touching_row(self, row: int) -> tuple[Tile, ...]:
        """All tiles that cover ``row``, in grid order.

        Args:
            row: a row of the raster.

        Returns:
            The tiles of every band in ``bands_touching_row(row)``.
        """
        bands = self.bands_touching_row(row)
        n = self.tiles_per_band
        return self.tiles[bands.start * n : bands.stop * n]

    def first_tile_for_row(self, row: int) -> int:
        """Index of the first tile needed to produce rows ``[row, height_px)``.

        Tiles before it lie entirely above ``row``; resuming at ``row`` skips them.

        Args:
            row: first row still to produce, ``0 <= row <= height_px``.

        Returns:
            A tile index; ``len(self)`` when ``row == height_px`` (nothing left to do).

        Raises:
            IndexError: if ``row`` is outside ``[0, height_px]``.
        """
        if row == self.height_px:
            return len(self)
        return self.bands_touching_row(row).start * self.tiles_per_band

    def tile_bounds(
        self, tile: Tile, transform: Sequence[float]
    ) -> tuple[float, float, float, float]:
        """Footprint of a tile in map coordinates.

        Args:
            tile: a tile of this grid (the footprint of a tile extending beyond the raster
                extends beyond the raster's footprint too).
            transform: affine coefficients ``(a, b, c, d, e, f)`` of the output grid
                (``x = a*col + b*row + c``, ``y = d*col + e*row + f``); an ``affine.Affine``
                works too.

        Returns:
            ``(left, bottom, right, top)`` enclosing the tile's four corners.
        """
        a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
        corners = [
            (col, row) for row in (tile.row_off, tile.row_stop) for col in (tile.col_off, tile.col_stop)
        ]  # fmt: skip
        xs = [a * col + b * row + c for col, row in corners]
        ys = [d * col + e * row + f for col, row in corners]
        return min(xs), min(ys), max(xs), max(ys)


def make_tile_grid(height_px: int, width_px: int, tile_px: int, overlap_px: int) -> TileGrid:
    """Cover a raster with ``tile_px`` x ``tile_px`` tiles overlapping by at least ``overlap_px``.

    Tiles start every ``tile_px - overlap_px`` pixels; the last tile of a band (or column) is
    shifted back so that it ends on the raster border, overlapping its neighbour by more than
    ``overlap_px``. A raster smaller than a tile gets one tile along that axis, extending
    beyond the raster.

    Args:
        height_px: raster rows.
        width_px: raster columns.
        tile_px: tile side.
        overlap_px: overlap between neighbours, ``0 <= overlap_px < tile_px``.

    Returns:
        The grid.

    Raises:
        ValueError: for non-positive sizes or an overlap outside ``[0, tile_px)``.
    """
    if height_px <= 0 or width_px <= 0:
        raise ValueError(f"raster size must be positive, got {height_px} x {width_px} px")
    if tile_px <= 0:
        raise ValueError(f"tile_px must be positive, got {tile_px}")
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap_px must be in [0, tile_px={tile_px}), got {overlap_px}")
    stride_px = tile_px - overlap_px
    return TileGrid(
        height_px=height_px,
        width_px=width_px,
        tile_px=tile_px,
        overlap_px=overlap_px,
        row_offsets=tile_offsets(height_px, tile_px, stride_px),
        col_offsets=tile_offsets(width_px, tile_px, stride_px),
    )
