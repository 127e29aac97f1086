"""Blending: cosine windows, seamless tile-by-tile = whole-image results, bounded row buffer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from flairkit.inference.stitch import (
    RowBlender,
    RowBlock,
    axis_weights,
    blend_weights,
    edge_ramp,
    quantise_block,
)
from flairkit.inference.tiling import TileGrid, make_tile_grid
from flairkit.io.writers import StreamingMapWriter
from flairkit.modalities import COSIA_CLASSES
from flairkit.sample import Georef

K = 5


def run_tiled(grid: TileGrid, predict, num_classes: int, **blender_kwargs) -> np.ndarray:
    """Blend ``predict(tile)`` over the grid; check the blocks are contiguous; return (K, H, W)."""
    blender = RowBlender(grid, num_classes, **blender_kwargs)
    out = np.full((num_classes, grid.height_px, grid.width_px), np.nan, np.float32)
    next_row = blender.start_row
    for tile in blender.remaining_tiles():
        for block in blender.add(tile, predict(tile)):
            assert block.row_start == next_row
            out[:, block.row_start : block.row_stop] = block.probs
            next_row = block.row_stop
    assert blender.is_done and next_row == grid.height_px
    return out


def toy_model(seed: int = 0) -> nn.Module:
    """Translation-equivariant CNN: three 3x3 convs with zero padding (receptive radius 3 px)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, K, 3, padding=1),
        nn.Softmax(dim=1),
    )
    return net.eval()


def model_probs(net: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(image)[None])[0].numpy()  # (K, H, W)


@pytest.fixture(scope="module")
def scene() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A toy model, a 150 x 173 image (not a multiple of any stride) and its whole-image probs."""
    net = toy_model()
    image = np.random.default_rng(0).normal(size=(3, 150, 173)).astype(np.float32)
    return net, image, model_probs(net, image)


_TILE_CACHE: dict[tuple[int, int, int, int, int], np.ndarray] = {}


def tile_predictor(net: nn.Module, image: np.ndarray):
    """Model output for a tile's window; memoised (the model is deterministic) to keep tests fast."""

    def predict(tile):
        key = (id(image), tile.row_off, tile.col_off, tile.height, tile.width)
        if key not in _TILE_CACHE:
            window = image[:, tile.row_off : tile.row_stop, tile.col_off : tile.col_stop]
            _TILE_CACHE[key] = model_probs(net, np.ascontiguousarray(window))
        return _TILE_CACHE[key]

    return predict


# --- weights ---------------------------------------------------------------------------------


def test_edge_ramp_values() -> None:
    ramp = edge_ramp(16, overlap_px=8, margin_px=2)
    assert np.array_equal(ramp[:2], [0, 0])
    assert np.all(np.diff(ramp) >= 0)
    assert np.array_equal(ramp[6:], np.ones(10))  # past overlap - margin: full weight
    assert ramp[2] == pytest.approx(np.sin(np.pi / 2 * 0.5 / 4) ** 2)
    assert np.array_equal(edge_ramp(16, overlap_px=0, margin_px=5), np.ones(16))  # no neighbour


@pytest.mark.parametrize(("overlap", "margin"), [(8, 0), (8, 2), (9, 3), (8, 4), (16, 4)])
def test_neighbour_ramps_sum_to_one_across_overlap(overlap, margin) -> None:
    tile = 32
    left_tile = axis_weights(tile, 0, overlap, margin)
    right_tile = axis_weights(tile, overlap, 0, margin)
    total = left_tile[tile - overlap :] + right_tile[:overlap]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # Weighted average of a constant is that constant, whatever the weights.
    values = (left_tile[tile - overlap :] * 0.3 + right_tile[:overlap] * 0.3) / total
    np.testing.assert_allclose(values, 0.3, atol=1e-6)


def test_blend_weights_symmetric_one_in_centre_border_edges_one() -> None:
    w = blend_weights(32, 8, 8, 8, 8, margin_px=2)
    assert w.shape == (32, 32) and w.dtype == np.float32
    assert np.array_equal(w, w.T)
    assert np.array_equal(w, w[::-1]) and np.array_equal(w, w[:, ::-1])
    assert np.all(w[8:24, 8:24] == 1.0)
    assert np.all(w[:2] == 0) and np.all(w[:, -2:] == 0)
    corner = blend_weights(32, top_px=0, bottom_px=8, left_px=0, right_px=8, margin_px=2)
    assert np.all(corner[0, :24] == 1.0)  # top edge on the raster border keeps weight 1
    assert np.all(corner[:24, 0] == 1.0)
    assert np.all(corner[-2:] == 0)


def test_margin_larger_than_half_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="margin_px"):
        blend_weights(32, 8, 8, 8, 8, margin_px=5)
    with pytest.raises(ValueError, match="more than half the overlap"):
        RowBlender(make_tile_grid(64, 64, 32, 8), K, margin_px=5)


def test_grid_weights_partition_unity_and_never_zero() -> None:
    grid = make_tile_grid(100, 100, 32, 8)  # last tiles shifted: overlaps 8 and 12
    total = np.zeros((100, 100))
    for t in grid:
        total[t.row_off : t.row_stop, t.col_off : t.col_stop] += blend_weights(
            32, *t.overlaps_px, margin_px=2
        )
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


# --- blending ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tile_px", "overlap_px"), [(48, 16), (48, 24), (40, 12)])
def test_tiled_blend_equals_whole_image(scene, tile_px, overlap_px) -> None:
    """The acceptance test: no seams. With a margin >= the receptive radius (3 px), every
    weighted pixel sees exactly what the whole-image pass sees, so blending changes nothing."""
    net, image, expected = scene
    grid = make_tile_grid(150, 173, tile_px, overlap_px)
    assert 150 % grid.stride_px and 173 % grid.stride_px
    steps = np.diff(grid.col_offsets)
    assert len(set(steps.tolist())) == 2  # includes a shifted last tile
    blended = run_tiled(grid, tile_predictor(net, image), K)  # default margin: overlap // 4
    assert np.abs(blended - expected).max() < 1e-5


def test_hard_cropped_tiles_show_seams(scene) -> None:
    """Control: without overlap the same model differs at tile edges (so the test above can fail)."""
    net, image, expected = scene
    grid = make_tile_grid(150, 173, 48, 0)
    diff = np.abs(run_tiled(grid, tile_predictor(net, image), K) - expected).max(axis=0)
    assert diff.max() > 1e-2
    near_edge = np.zeros(diff.shape, bool)  # within the receptive radius of an inner tile edge
    for t in grid:
        for edge in (t.row_off, t.row_stop):
            if 0 < edge < grid.height_px:
                near_edge[edge - 3 : edge + 3] = True
        for edge in (t.col_off, t.col_stop):
            if 0 < edge < grid.width_px:
                near_edge[:, edge - 3 : edge + 3] = True
    assert diff[~near_edge].max() < 1e-5  # the seams are exactly at the tile edges


def test_constant_prediction_stays_constant() -> None:
    grid = make_tile_grid(70, 90, 32, 12)
    const = np.full((K, 32, 32), 0.2, np.float32)
    out = run_tiled(grid, lambda t: const, K, margin_px=0)
    np.testing.assert_allclose(out, 0.2, atol=1e-6)


def test_buffer_depends_on_width_and_tile_not_height() -> None:
    def nbytes(height: int, width: int, tile: int) -> int:
        return RowBlender(make_tile_grid(height, width, tile, tile // 4), 19).nbytes

    assert nbytes(300, 500, 64) == nbytes(30000, 500, 64)
    expected = (19 * 64 * 500 + 64 * 500 + 19 * 64 * 64) * 4  # sums + totals + tile scratch
    assert nbytes(300, 500, 64) == expected
    assert nbytes(300, 1000, 64) > nbytes(300, 500, 64)


def test_tiles_out_of_order_or_wrong_shape_raise() -> None:
    grid = make_tile_grid(64, 64, 32, 8)
    blender = RowBlender(grid, K)
    probs = np.zeros((K, 32, 32), np.float32)
    with pytest.raises(ValueError, match="grid order: expected tile 0, got tile 1"):
        blender.add(grid[1], probs)
    with pytest.raises(ValueError, match="shape"):
        blender.add(grid[0], np.zeros((K, 16, 16), np.float32))
    with pytest.raises(ValueError, match="does not belong"):
        blender.add(make_tile_grid(64, 64, 32, 4)[0], probs)


def test_small_raster_tile_is_cropped() -> None:
    grid = make_tile_grid(20, 25, 32, 8)
    probs = np.random.default_rng(1).random((K, 32, 32)).astype(np.float32)
    blender = RowBlender(grid, K)
    (block,) = blender.add(grid[0], probs)
    assert (block.row_start, block.row_stop) == (0, 20)
    assert np.array_equal(block.probs, probs[:, :20, :25])
    assert blender.nbytes == (K * 20 * 25 + 20 * 25 + K * 32 * 32) * 4


def test_no_data_pixels_come_out_invalid() -> None:
    grid = make_tile_grid(40, 40, 32, 8)
    mask = np.ones((40, 40), bool)
    mask[5:15, 20:30] = False  # no input data there, seen the same by every tile
    blender = RowBlender(grid, K)
    blocks: list[RowBlock] = []
    for t in grid:
        valid = mask[t.row_off : t.row_stop, t.col_off : t.col_stop]
        # probs are views into the blender's buffer, valid until the next add: copied
        blocks += [
            RowBlock(b.row_start, b.row_stop, b.probs.copy(), b.valid)
            for b in blender.add(t, np.full((K, 32, 32), 0.2, np.float32), valid)
        ]
    valid = np.concatenate([b.valid for b in blocks])
    probs = np.concatenate([b.probs for b in blocks], axis=1)
    assert np.array_equal(valid, mask)
    assert np.all(probs[:, ~mask] == 0)
    classes, proba = quantise_block(RowBlock(0, 40, probs, valid))
    assert np.all(classes[~mask] == 255) and np.all(classes[mask] == 0)
    assert np.all(proba[:, mask] == 51) and np.all(proba[:, ~mask] == 0)  # round(0.2 * 255)


def test_tile_without_data_can_be_skipped() -> None:
    grid = make_tile_grid(32, 64, 32, 0)
    blender = RowBlender(grid, K)
    assert blender.add(grid[0], np.full((K, 32, 32), 0.2, np.float32)) == []
    (block,) = blender.add(grid[1], None)
    assert block.valid[:, :32].all() and not block.valid[:, 32:].any()


def test_quantise_block_argmax_and_rounding() -> None:
    probs = np.array([[[0.1, 0.5]], [[0.9, 0.5]]], np.float32)  # (K=2, 1, 2)
    classes, proba = quantise_block(RowBlock(0, 1, probs, np.ones((1, 2), bool)))
    assert classes.tolist() == [[1, 0]]  # tie -> first class
    assert proba.tolist() == [[[26, 128]], [[230, 128]]]
    assert classes.dtype == proba.dtype == np.uint8


@pytest.mark.parametrize("start_row", [0, 30, 48, 100, 149, 150])
def test_resume_from_row_is_bit_identical(scene, start_row) -> None:
    net, image, _ = scene
    grid = make_tile_grid(150, 173, 48, 16)
    predict = tile_predictor(net, image)
    full = run_tiled(grid, predict, K)
    blender = RowBlender(grid, K, start_row=start_row)
    assert blender.remaining_tiles() == grid.tiles[grid.first_tile_for_row(start_row) :]
    if grid[0].row_stop <= start_row:  # a tile entirely above start_row is ignored
        assert blender.add(grid[0], None) == []
        assert blender.remaining_tiles() == grid.tiles[grid.first_tile_for_row(start_row) :]
    resumed = run_tiled(grid, predict, K, start_row=start_row)
    assert np.array_equal(resumed[:, start_row:], full[:, start_row:])
    assert np.isnan(resumed[:, :start_row]).all()  # nothing emitted above start_row


# --- end to end: grid -> blender -> writer, interrupted and resumed ------------------------------


def run_map(path, grid: TileGrid, predict, fail_after_tiles: int | None = None) -> list[int]:
    """Map the grid into ``path``; raise after ``fail_after_tiles`` tiles; return tiles computed."""
    georef = Georef(
        "EPSG:2154", (0.2, 0.0, 600000.0, 0.0, -0.2, 6800000.0), grid.width_px, grid.height_px
    )
    settings = {"tile_px": grid.tile_px, "overlap_px": grid.overlap_px, "model": "toy-0"}
    writer = StreamingMapWriter(
        path,
        georef,
        COSIA_CLASSES[:K],
        write_proba=True,
        fingerprint=settings,
        block_px=32,
        cog_block_px=128,
    )
    blender = RowBlender(grid, K, start_row=writer.resume_row)
    computed = []
    with writer:
        for tile in blender.remaining_tiles():
            if len(computed) == fail_after_tiles:
                raise KeyboardInterrupt
            computed.append(tile.index)
            for block in blender.add(tile, predict(tile)):
                writer.write_rows(block.row_start, *quantise_block(block))
    writer.finish()
    return computed


def test_interrupted_map_resumes_without_recomputing_and_byte_identical(scene, tmp_path) -> None:
    net, image, _ = scene
    grid = make_tile_grid(150, 173, 48, 16)
    predict = tile_predictor(net, image)
    assert run_map(tmp_path / "ref" / "map.tif", grid, predict) == list(range(len(grid)))
    path = tmp_path / "resumed" / "map.tif"
    with pytest.raises(KeyboardInterrupt):
        run_map(path, grid, predict, fail_after_tiles=14)  # bands of 5 tiles: 2.8 bands
    progress = json.loads((path.parent / "map.progress.json").read_text())
    assert progress["rows_done"] == 64  # bands 0-1 finished rows [0, 64): two 32-row blocks
    computed = run_map(path, grid, predict)
    # Band 1 (rows [32, 80)) is the first to touch row 64: band 0 is not recomputed.
    assert computed == list(range(grid.first_tile_for_row(64), len(grid)))
    assert computed[0] == 5
    for name in ("map.tif", "map_proba.tif", "map.qml", "map_preview.png"):
        assert (path.parent / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
