"""Tile grid: full coverage with fixed-size tiles, shifted last tiles, order, map bounds."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from flairkit.inference.tiling import make_tile_grid, tile_offsets


def coverage(grid) -> np.ndarray:
    """How many tiles cover each pixel (cropped to the raster)."""
    count = np.zeros((grid.height_px, grid.width_px), np.int32)
    for t in grid:
        count[t.row_off : t.row_stop, t.col_off : t.col_stop] += 1
    return count


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(100, 100, 32, 8), (97, 131, 32, 8), (64, 64, 32, 0), (300, 50, 48, 24), (33, 33, 32, 16)],
)
def test_grid_covers_every_pixel_with_full_size_tiles(height, width, tile, overlap) -> None:
    grid = make_tile_grid(height, width, tile, overlap)
    assert coverage(grid).min() >= 1
    assert all(t.height == tile and t.width == tile for t in grid)
    # Raster larger than a tile: every tile lies inside it.
    assert all(t.row_stop <= height and t.col_stop <= width for t in grid)
    assert len(grid) == grid.num_bands * grid.tiles_per_band == len(list(grid))


def test_offsets_step_by_stride_and_last_is_shifted_back() -> None:
    assert tile_offsets(100, 32, 24) == (0, 24, 48, 68)  # 72 + 32 > 100: shifted to 68
    assert tile_offsets(96, 32, 32) == (0, 32, 64)  # exact fit, no shift
    assert tile_offsets(32, 32, 24) == (0,)
    grid = make_tile_grid(100, 100, 32, 8)
    assert grid.stride_px == 24
    last = grid[len(grid) - 1]
    assert (last.row_off, last.col_off, last.row_stop, last.col_stop) == (68, 68, 100, 100)


def test_neighbour_overlaps_per_side() -> None:
    grid = make_tile_grid(100, 100, 32, 8)
    first, second = grid[0], grid[1]
    assert first.overlaps_px == (0, 8, 0, 8)  # raster border: top, left have no neighbour
    assert second.overlap_left_px == 8
    # The shifted last tile shares 48 + 32 - 68 = 12 columns with its neighbour.
    last_in_band = grid[grid.tiles_per_band - 1]
    assert last_in_band.overlap_left_px == 12 and last_in_band.overlap_right_px == 0
    assert grid[grid.tiles_per_band - 2].overlap_right_px == 12


def test_small_raster_gets_one_tile_extending_beyond() -> None:
    grid = make_tile_grid(20, 50, 32, 8)
    assert grid.row_offsets == (0,)
    assert grid.col_offsets == (0, 18)
    assert all(t.row_stop == 32 > 20 for t in grid)
    assert coverage(grid).min() >= 1
    assert grid.rows_final_after(grid[len(grid) - 1]) == 20
    assert grid.rows_in_raster(grid[0]) == range(0, 20)  # rows 20-31 are padding
    assert grid.cols_in_raster(grid[0]) == range(0, 32)
    assert grid.cols_in_raster(grid[1]) == range(18, 50)


def test_tiles_are_row_major_band_by_band() -> None:
    grid = make_tile_grid(97, 131, 32, 8)
    keys = [(t.row_off, t.col_off) for t in grid]
    assert keys == sorted(keys)
    assert [t.index for t in grid] == list(range(len(grid)))
    assert all(t.grid_row * grid.tiles_per_band + t.grid_col == t.index for t in grid)


def test_rows_final_after_each_tile() -> None:
    grid = make_tile_grid(100, 100, 32, 8)  # bands at 0, 24, 48, 68
    n = grid.tiles_per_band
    assert grid.rows_final_after(grid[0]) == 0
    assert grid.rows_final_after(grid[n - 1]) == 24
    assert grid.rows_final_after(grid[2 * n - 1]) == 48
    assert grid.rows_final_after(grid[len(grid) - 1]) == 100
    # Definition check: no later tile touches a final row.
    for t in grid:
        final = grid.rows_final_after(t)
        assert all(u.row_off >= final for u in grid.tiles[t.index + 1 :])


def test_tiles_touching_row_and_resume_start() -> None:
    grid = make_tile_grid(100, 100, 32, 8)  # bands [0,32) [24,56) [48,80) [68,100)
    assert grid.bands_touching_row(0) == range(0, 1)
    assert grid.bands_touching_row(30) == range(0, 2)
    assert grid.bands_touching_row(70) == range(2, 4)
    for row in range(grid.height_px):
        expected = [t for t in grid if t.row_off <= row < t.row_stop]
        assert list(grid.tiles_touching_row(row)) == expected
        first = grid.first_tile_for_row(row)
        assert all(t.row_stop <= row for t in grid.tiles[:first])
        assert grid[first].row_stop > row
    assert grid.first_tile_for_row(100) == len(grid)
    with pytest.raises(IndexError, match="outside the raster"):
        grid.bands_touching_row(100)


def test_tile_bounds_in_map_coordinates() -> None:
    grid = make_tile_grid(100, 100, 32, 8)
    transform = Affine(0.2, 0.0, 600000.0, 0.0, -0.2, 6800000.0)
    t = grid[1]  # rows [0, 32), cols [24, 56)
    left, bottom, right, top = grid.tile_bounds(t, transform)
    assert (left, right) == pytest.approx((600000.0 + 24 * 0.2, 600000.0 + 56 * 0.2))
    assert (bottom, top) == pytest.approx((6800000.0 - 32 * 0.2, 6800000.0))
    # A 6-tuple (as in Georef.transform) gives the same.
    assert grid.tile_bounds(t, tuple(transform)[:6]) == (left, bottom, right, top)


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 10, 8, 0), "positive"), ((10, 10, 8, 8), "overlap_px"), ((10, 10, 0, 0), "tile_px")],
)
def test_bad_grid_arguments_raise(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_tile_grid(*args)
