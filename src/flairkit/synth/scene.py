"""Scene of one patch: COSIA land cover and LPIS parcels at aerial resolution.

COSIA is a warped Voronoi partition plus small objects (buildings, greenhouses, pools); LPIS
parcels are rectangles on the Sentinel pixel grid with a crop type and a COSIA class (9 or 10).
Also the pure resampling helpers (area-weighted matrices, smooth random fields) that the
renderers share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flairkit.modalities import COSIA_CLASSES

# --------------------------------------------------------------------------------------------
# Scene tables
# --------------------------------------------------------------------------------------------

#: Classes of the Voronoi regions and their probabilities: mostly 0-14, rarely 15-18.
#: Classes 9 and 10 are reserved for LPIS parcels, 0-2 for small objects.
_REGION_CLASSES = np.array([3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 18])
_REGION_PROBS = np.array([12, 12, 5, 6, 1, 18, 6, 15, 8, 9, 2, 2, 2, 2]) / 100
_OBJECT_CLASSES = np.array([0, 1, 2])
_OBJECT_PROBS = np.array([0.8, 0.1, 0.1])
#: LPIS level-1 crop types drawn for parcels: grasses, wheat, barley, maize, sunflower, rapeseed.
CROP_TYPES = (0, 1, 2, 3, 7, 8)
#: COSIA class of a parcel: agricultural land (9) or plowed land (10) at the date of the aerial
#: survey. Winter cereals and grasses are mostly green then, spring-sown crops mostly bare, so the
#: aerial image tells the two groups apart (a model sees more than chance from the air alone),
#: while only the S2 phenology separates the crops within a group.
_PARCEL_COSIA = np.array([9, 10])
_PARCEL_COSIA_TYPICAL = {0: 9, 1: 9, 2: 9, 3: 10, 7: 10, 8: 10}
_PARCEL_COSIA_TYPICAL_PROB = 0.9
LPIS_BACKGROUND = 22
_NUM_COSIA = len(COSIA_CLASSES)  # 19: COSIA classes 0-18, the rows of the render tables


# --------------------------------------------------------------------------------------------
# Resampling helpers (pure)
# --------------------------------------------------------------------------------------------


def _area_matrix(src_px: int, dst_px: int) -> np.ndarray:
    """(dst_px, src_px) weights: dst pixel = area-weighted mean of the src pixels it covers."""
    ratio = src_px / dst_px
    lo = np.arange(dst_px)[:, None] * ratio
    j = np.arange(src_px)[None, :]
    overlap = np.clip(np.minimum(lo + ratio, j + 1) - np.maximum(lo, j), 0, None)
    return (overlap / ratio).astype(np.float32)


def _bilinear_matrix(dst_px: int, num_knots: int) -> np.ndarray:
    """(dst_px, num_knots) linear-interpolation weights from knots spanning the patch."""
    u = (np.arange(dst_px) + 0.5) / dst_px * (num_knots - 1)
    i0 = np.minimum(np.floor(u).astype(int), num_knots - 2)
    t = (u - i0).astype(np.float32)
    weights = np.zeros((dst_px, num_knots), dtype=np.float32)
    weights[np.arange(dst_px), i0] = 1 - t
    weights[np.arange(dst_px), i0 + 1] = t
    return weights


def _smooth_field(rng: np.random.Generator, px: int, num_cells: int) -> np.ndarray:
    """(px, px) smooth random field in [0, 1]: random knots on a grid, bilinear in between."""
    knots = rng.random((num_cells + 1, num_cells + 1), dtype=np.float32)
    weights = _bilinear_matrix(px, num_cells + 1)
    return weights @ knots @ weights.T


def _block_mean(array: np.ndarray, dst_px: int) -> np.ndarray:
    """Area-weighted downsampling of (..., H, W) to (..., dst_px, dst_px)."""
    weights = _area_matrix(array.shape[-1], dst_px)
    return weights @ array.astype(np.float32) @ weights.T


# --------------------------------------------------------------------------------------------
# Scene: COSIA and LPIS at aerial resolution
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scene:
    cosia: np.ndarray  # (H, W) uint8, 0-18
    lpis_l1: np.ndarray  # (H, W) uint8, crop code in parcels, LPIS_BACKGROUND elsewhere

    @property
    def spectral_class(self) -> np.ndarray:
        """(H, W) index into ``_SIGNATURES``: COSIA outside parcels, 19 + crop index inside."""
        crop_index = np.full(LPIS_BACKGROUND + 1, -1)
        crop_index[list(CROP_TYPES)] = np.arange(len(CROP_TYPES))
        in_parcel = self.lpis_l1 != LPIS_BACKGROUND
        return np.where(in_parcel, _NUM_COSIA + crop_index[self.lpis_l1], self.cosia)


def _make_scene(rng: np.random.Generator, aerial_px: int, sentinel_px: int) -> _Scene:
    cosia = _voronoi_regions(rng, aerial_px)
    _draw_objects(rng, cosia)
    parcel_grid, parcel_crop, parcel_cosia = _draw_parcels(rng, sentinel_px)
    # Parcels follow the Sentinel grid: each aerial pixel takes the cell holding its centre.
    cell = ((np.arange(aerial_px) + 0.5) * sentinel_px / aerial_px).astype(int)
    parcel = parcel_grid[np.ix_(cell, cell)]  # (H, W), -1 outside parcels
    in_parcel = parcel >= 0
    cosia[in_parcel] = parcel_cosia[parcel[in_parcel]]
    lpis_l1 = np.full((aerial_px, aerial_px), LPIS_BACKGROUND, dtype=np.uint8)
    lpis_l1[in_parcel] = parcel_crop[parcel[in_parcel]]
    return _Scene(cosia=cosia, lpis_l1=lpis_l1)


def _voronoi_regions(rng: np.random.Generator, px: int) -> np.ndarray:
    """(px, px) uint8 classes of a few Voronoi regions with warped (irregular) borders."""
    num_regions = int(rng.integers(4, 10))
    seeds = rng.random((num_regions, 2)) * px
    classes = rng.choice(_REGION_CLASSES, size=num_regions, p=_REGION_PROBS).astype(np.uint8)
    warp_px = px / 12
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32)
    yy += (_smooth_field(rng, px, 4) - 0.5) * 2 * warp_px
    xx += (_smooth_field(rng, px, 4) - 0.5) * 2 * warp_px
    best = np.full((px, px), np.inf, dtype=np.float32)
    region = np.zeros((px, px), dtype=np.intp)
    for i, (sy, sx) in enumerate(seeds):
        dist2 = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = dist2 < best
        best[closer] = dist2[closer]
        region[closer] = i
    return classes[region]


def _draw_objects(rng: np.random.Generator, cosia: np.ndarray) -> None:
    """Paint a few small rectangles (buildings, greenhouses, pools) into ``cosia`` in place."""
    px = cosia.shape[0]
    for _ in range(int(rng.integers(0, 7))):
        cls = rng.choice(_OBJECT_CLASSES, p=_OBJECT_PROBS)
        h, w = rng.integers(max(2, px // 32), max(3, px // 8), size=2)
        r0, c0 = rng.integers(0, px - h + 1), rng.integers(0, px - w + 1)
        cosia[r0 : r0 + h, c0 : c0 + w] = cls


def _draw_parcels(
    rng: np.random.Generator, sentinel_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rectangles of Sentinel cells, each a parcel with a crop type and a COSIA class.

    Returns:
        (S, S) parcel index per Sentinel cell (-1 outside), crop code and COSIA class per parcel.
    """
    grid = np.full((sentinel_px, sentinel_px), -1, dtype=np.int32)
    target_fraction = rng.uniform(0.25, 0.7)
    max_side = max(1, math.ceil(sentinel_px / 3))
    num_parcels = 0
    for _ in range(4 * sentinel_px**2):
        if num_parcels and np.mean(grid >= 0) >= target_fraction:
            break
        h, w = rng.integers(1, max_side + 1, size=2)
        r0, c0 = rng.integers(0, sentinel_px - h + 1), rng.integers(0, sentinel_px - w + 1)
        free = grid[r0 : r0 + h, c0 : c0 + w] == -1
        if free.any():
            grid[r0 : r0 + h, c0 : c0 + w][free] = num_parcels
            num_parcels += 1
    crops = rng.choice(np.array(CROP_TYPES, dtype=np.uint8), size=num_parcels)
    typical = np.array([_PARCEL_COSIA_TYPICAL[int(c)] for c in crops], dtype=np.uint8)
    other = np.where(typical == _PARCEL_COSIA[0], _PARCEL_COSIA[1], _PARCEL_COSIA[0])
    is_typical = rng.random(num_parcels) < _PARCEL_COSIA_TYPICAL_PROB
    cosia = np.where(is_typical, typical, other).astype(np.uint8)
    return grid, crops, cosia
