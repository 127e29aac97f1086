"""Rendering of every modality from a patch's scene and its ROI plan.

Aerial colour and DEM object height depend on the COSIA class only. All crop types share the
aerial look of their COSIA class; only their phenology (a bell-shaped vegetation curve per
crop) differs, and it drives the Sentinel-2 and Sentinel-1 time series. Sentinel-2 dates are
clear, partly cloudy, fully cloudy or snowy (``layout._RoiPlan.s2_states``); clouds and snow
raise the mask probabilities and brighten the reflectance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from flairkit.modalities import LPIS_NUM_CLASSES, PATCH_SIZE_M, Modality
from flairkit.synth.layout import _CLOUDY, _PARTLY, _SNOW, _PatchRef, _RoiPlan
from flairkit.synth.scene import CROP_TYPES, _area_matrix, _block_mean, _smooth_field

# --------------------------------------------------------------------------------------------
# Scene tables (COSIA class index = row)
# --------------------------------------------------------------------------------------------

#: Mean aerial digital numbers per COSIA class, (R, G, B, NIR).
_AERIAL_MEAN_RGBI = np.array(
    [
        (150, 140, 145, 110),  # 0 building
        (200, 205, 210, 170),  # 1 greenhouse
        (70, 170, 200, 60),  # 2 swimming pool
        (120, 118, 115, 90),  # 3 impervious surface
        (140, 130, 105, 120),  # 4 pervious surface
        (165, 140, 110, 135),  # 5 bare soil
        (40, 60, 75, 20),  # 6 water
        (240, 240, 245, 220),  # 7 snow
        (100, 135, 70, 190),  # 8 herbaceous vegetation
        (125, 150, 80, 175),  # 9 agricultural land
        (160, 125, 95, 115),  # 10 plowed land
        (115, 120, 80, 150),  # 11 vineyard
        (70, 105, 55, 200),  # 12 deciduous
        (45, 70, 45, 150),  # 13 coniferous
        (105, 115, 70, 165),  # 14 brushwood
        (130, 120, 90, 140),  # 15 clear cut
        (85, 110, 60, 175),  # 16 ligneous
        (60, 90, 50, 175),  # 17 mixed
        (128, 128, 128, 128),  # 18 undefined
    ],
    dtype=np.float32,
)
#: Object height above the terrain per COSIA class, (low, high) metres.
_HEIGHT_RANGE_M = np.array(
    [
        (6, 15), (3, 5), (0, 0), (0, 0.3), (0, 0.5), (0, 0.3), (0, 0), (0, 0.5), (0, 0.6),
        (0, 1), (0, 0.3), (1, 2), (10, 25), (12, 25), (1, 4), (0, 1.5), (5, 15), (8, 20), (0, 2),
    ],
    dtype=np.float32,
)  # fmt: skip
#: Level-1 -> level-2/3 tables: a fixed monotone spread over the valid ranges (the real
#: hierarchy is not public, spec section 4.2); background maps to the last class of each level.
_LPIS_L1_TO_L2 = np.round(np.arange(23) * (LPIS_NUM_CLASSES[2] - 1) / 22).astype(np.uint8)
_LPIS_L1_TO_L3 = np.round(np.arange(23) * (LPIS_NUM_CLASSES[3] - 1) / 22).astype(np.uint8)

#: Gains from aerial digital numbers to SPOT reflectance x 1e4, per band (R, G, B, NIR).
_SPOT_GAIN = np.array([4.0, 4.5, 4.5, 7.0], dtype=np.float32)

# --------------------------------------------------------------------------------------------
# Spectral tables: reflectance per S2 band (B02 B03 B04 B05 B06 B07 B08 B8A B11 B12)
# --------------------------------------------------------------------------------------------

_SPECTRA = {
    "vegetation": (0.03, 0.06, 0.03, 0.09, 0.22, 0.28, 0.32, 0.34, 0.17, 0.08),
    "soil": (0.07, 0.10, 0.13, 0.16, 0.19, 0.21, 0.23, 0.25, 0.32, 0.27),
    "urban": (0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.20, 0.18),
    "bright": (0.20, 0.21, 0.22, 0.23, 0.25, 0.26, 0.27, 0.28, 0.30, 0.27),
    "water": (0.05, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.01, 0.005, 0.003),
    "snow": (0.85, 0.83, 0.80, 0.78, 0.75, 0.72, 0.70, 0.68, 0.08, 0.06),
    "cloud": (0.42, 0.42, 0.43, 0.44, 0.45, 0.45, 0.46, 0.46, 0.35, 0.28),
}
_SPECTRA_ARR = {k: np.array(v, dtype=np.float32) for k, v in _SPECTRA.items()}
#: Sentinel-1 backscatter in dB, (VV at v=0, VV gain per unit vegetation, VH at v=0, VH gain).
_S1_DB = {
    "urban": (-6.0, 0.0, -13.0, 0.0),
    "water": (-20.0, 0.0, -27.0, 0.0),
    "snow": (-15.0, 0.0, -22.0, 0.0),
    "field": (-13.0, 5.0, -22.0, 8.0),
    "tree": (-8.0, 1.0, -14.0, 1.5),
}
_S1_DESC_OFFSET_DB = -0.5
_S1_LOOKS = 30  # gamma speckle shape: multi-looked 10 m pixels, about 18 % std
_S2_NOISE = 0.004  # reflectance


@dataclass(frozen=True)
class _Signature:
    """Temporal signature of a surface: background spectrum mixed with vegetation of cover v.

    v(doy) = v_min + (v_max - v_min) * exp(-0.5 * ((doy - peak_doy) / width_days) ** 2).
    """

    spectrum: str
    s1_kind: str
    v_min: float
    v_max: float
    peak_doy: float = 180.0
    width_days: float = 60.0

    def vegetation(self, doy: np.ndarray) -> np.ndarray:
        """Vegetation cover in [0, 1] for each day of year."""
        bell = np.exp(-0.5 * ((doy - self.peak_doy) / self.width_days) ** 2)
        return (self.v_min + (self.v_max - self.v_min) * bell).astype(np.float32)


_COSIA_SIGNATURES = (
    _Signature("urban", "urban", 0.0, 0.0),  # 0 building
    _Signature("bright", "urban", 0.0, 0.0),  # 1 greenhouse
    _Signature("water", "water", 0.0, 0.0),  # 2 swimming pool
    _Signature("urban", "urban", 0.0, 0.0),  # 3 impervious surface
    _Signature("soil", "field", 0.3, 0.3),  # 4 pervious surface
    _Signature("soil", "field", 0.05, 0.05),  # 5 bare soil
    _Signature("water", "water", 0.0, 0.0),  # 6 water
    _Signature("snow", "snow", 0.0, 0.0),  # 7 snow
    _Signature("soil", "field", 0.4, 0.75, 140, 90),  # 8 herbaceous vegetation
    _Signature("soil", "field", 0.1, 0.8, 150, 50),  # 9 agricultural land (outside parcels)
    _Signature("soil", "field", 0.1, 0.5, 170, 40),  # 10 plowed land (outside parcels)
    _Signature("soil", "field", 0.2, 0.6, 200, 50),  # 11 vineyard
    _Signature("soil", "tree", 0.25, 0.9, 185, 70),  # 12 deciduous
    _Signature("soil", "tree", 0.7, 0.7),  # 13 coniferous
    _Signature("soil", "field", 0.35, 0.65, 170, 80),  # 14 brushwood
    _Signature("soil", "field", 0.2, 0.4, 170, 60),  # 15 clear cut
    _Signature("soil", "tree", 0.4, 0.8, 180, 70),  # 16 ligneous
    _Signature("soil", "tree", 0.5, 0.85, 180, 80),  # 17 mixed
    _Signature("urban", "urban", 0.1, 0.1),  # 18 undefined
)
#: Crop phenology per LPIS level-1 code: peak day of year and width set the crop apart.
#: The crops of one aerial group (see _PARCEL_COSIA_TYPICAL) peak at least 35 days apart.
_CROP_SIGNATURES = {
    0: _Signature("soil", "field", 0.55, 0.8, 130, 90),  # grasses: green all year
    1: _Signature("soil", "field", 0.1, 0.9, 150, 30),  # wheat
    2: _Signature("soil", "field", 0.1, 0.85, 95, 25),  # barley
    3: _Signature("soil", "field", 0.05, 0.9, 220, 30),  # maize
    7: _Signature("soil", "field", 0.05, 0.8, 185, 22),  # sunflower
    8: _Signature("soil", "field", 0.15, 0.85, 75, 35),  # rapeseed
}
#: Spectral class index: COSIA class (0-18) outside parcels, 19 + CROP_TYPES index inside.
_SIGNATURES = _COSIA_SIGNATURES + tuple(_CROP_SIGNATURES[c] for c in CROP_TYPES)


# --------------------------------------------------------------------------------------------
# Mono-date rendering
# --------------------------------------------------------------------------------------------


def _render_aerial(rng: np.random.Generator, cosia: np.ndarray) -> np.ndarray:
    """(4, H, W) uint8 RGBI: class colour + mild texture + noise (independent of crop type)."""
    px = cosia.shape[0]
    mean = _AERIAL_MEAN_RGBI[cosia].transpose(2, 0, 1)  # (4, H, W)
    texture = (_smooth_field(rng, px, max(2, px // 8)) - 0.5) * 12
    noise = rng.standard_normal((4, px, px), dtype=np.float32) * 5
    image = mean + texture[None] * np.array([1, 1, 1, 1.5], dtype=np.float32)[:, None, None]
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def _render_dem(
    rng: np.random.Generator, cosia: np.ndarray, ref: _PatchRef, terrain: np.ndarray
) -> np.ndarray:
    """(2, H, W) float32: band 1 DSM, band 2 DTM, absolute metres; DSM - DTM >= 0."""
    px = cosia.shape[0]
    gsd_m = PATCH_SIZE_M / px
    # Pixel-centre offsets from the ROI origin (east, south), so terrain is continuous in a ROI.
    east_m = (ref.col - 1) * PATCH_SIZE_M + (np.arange(px) + 0.5) * gsd_m
    south_m = (ref.row - 1) * PATCH_SIZE_M + (np.arange(px) + 0.5) * gsd_m
    (base_m, gx, gy, _), waves = terrain[0], terrain[1:]
    dtm = base_m + gx * east_m[None, :] - gy * south_m[:, None]
    for amp_m, kx, ky, phase in waves:
        dtm = dtm + amp_m * np.sin(kx * east_m[None, :] - ky * south_m[:, None] + phase)
    low_m, high_m = _HEIGHT_RANGE_M[cosia, 0], _HEIGHT_RANGE_M[cosia, 1]
    height_m = low_m + (high_m - low_m) * _smooth_field(rng, px, max(2, px // 32))
    height_m += np.abs(rng.standard_normal((px, px), dtype=np.float32)) * 0.05
    return np.stack([dtm + height_m, dtm]).astype(np.float32)


def _render_pan(rng: np.random.Generator, aerial: np.ndarray, pan_px: int) -> np.ndarray:
    """(1, h, w) uint8: a grey, downsampled, slightly faded version of the aerial image."""
    rgb = aerial[:3].astype(np.float32)
    grey = 0.3 * rgb[0] + 0.59 * rgb[1] + 0.11 * rgb[2]
    small = _block_mean(grey, pan_px)
    small = 0.85 * small + 15 + rng.standard_normal(small.shape, dtype=np.float32) * 4
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)[None]


def _render_spot(rng: np.random.Generator, aerial: np.ndarray, spot_px: int) -> np.ndarray:
    """(4, h, w) uint16 RGBI reflectance x 1e4 from the block-averaged aerial image."""
    blocks = _block_mean(aerial, spot_px)  # (4, h, w)
    refl = blocks * _SPOT_GAIN[:, None, None]
    refl += rng.standard_normal(refl.shape, dtype=np.float32) * 15
    return np.clip(np.rint(refl), 1, 65535).astype(np.uint16)


def _render_lpis(lpis_l1: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8: levels 1, 2, 3."""
    return np.stack([lpis_l1, _LPIS_L1_TO_L2[lpis_l1], _LPIS_L1_TO_L3[lpis_l1]])


# --------------------------------------------------------------------------------------------
# Time series rendering
# --------------------------------------------------------------------------------------------


def _class_fractions(spectral: np.ndarray, sentinel_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes present and their area fraction in each Sentinel pixel, (K,) and (K, S, S)."""
    classes = np.unique(spectral)
    weights = _area_matrix(spectral.shape[0], sentinel_px)
    fractions = np.stack(
        [weights @ (spectral == k).astype(np.float32) @ weights.T for k in classes]
    )
    return classes, fractions


def _day_of_year(dates: Sequence[date], shift_days: float) -> np.ndarray:
    return np.array([d.timetuple().tm_yday for d in dates], dtype=np.float32) - shift_days


def _render_s2(
    rng: np.random.Generator,
    classes: np.ndarray,
    fractions: np.ndarray,
    plan: _RoiPlan,
) -> tuple[np.ndarray, np.ndarray]:
    """S2 (T*10, S, S) uint16 reflectance x 1e4 and its mask (T*2, S, S) uint8 (snow, cloud)."""
    dates = plan.ts_dates[Modality.SENTINEL2_TS]
    doy = _day_of_year(dates, plan.phenology_shift_days)
    signatures = np.stack([_reflectance(_SIGNATURES[k], doy) for k in classes])  # (K, T, 10)
    surface = np.einsum("kij,ktc->tcij", fractions, signatures)  # (T, 10, S, S)
    surface += rng.standard_normal(surface.shape, dtype=np.float32) * _S2_NOISE
    snow, cloud = _s2_masks(rng, plan.s2_states, fractions.shape[-1])  # (T, S, S) each
    snow_weight = (snow / 100)[:, None]
    cloud_weight = (cloud / 100 * 0.9)[:, None]
    surface = (1 - snow_weight) * surface + snow_weight * _SPECTRA_ARR["snow"][:, None, None]
    surface = (1 - cloud_weight) * surface + cloud_weight * _SPECTRA_ARR["cloud"][:, None, None]
    s2 = np.clip(np.rint(surface * 1e4), 1, 65535).astype(np.uint16)
    mask = np.stack([snow, cloud], axis=1)  # (T, 2, S, S)
    size = fractions.shape[-1]
    return s2.reshape(-1, size, size), mask.reshape(-1, size, size)


def _reflectance(signature: _Signature, doy: np.ndarray) -> np.ndarray:
    """(T, 10) S2 reflectance: background spectrum mixed with vegetation."""
    cover = signature.vegetation(doy)[:, None]
    return (1 - cover) * _SPECTRA_ARR[signature.spectrum] + cover * _SPECTRA_ARR["vegetation"]


def _s2_masks(
    rng: np.random.Generator, states: Sequence[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Snow and cloud probabilities (0-100), each (T, S, S) uint8.

    Partly cloudy and snowy dates cover at least 10 % of the pixels, so they always fail the
    benchmark filter (<= 5 % invalid pixels); clear dates are all zero, so they always pass.
    """
    snow = np.zeros((len(states), size, size), dtype=np.uint8)
    cloud = np.zeros_like(snow)
    min_cover = math.ceil(0.1 * size * size)
    for t, state in enumerate(states):
        if state == _CLOUDY:
            cloud[t] = rng.integers(75, 101, (size, size))
        elif state in (_PARTLY, _SNOW):
            num_covered = max(min_cover, round(rng.uniform(0.15, 0.8) * size * size))
            field = _smooth_field(rng, size, max(1, size // 4)).ravel()
            covered_flat = np.zeros(size * size, dtype=bool)
            covered_flat[np.argsort(field)[-num_covered:]] = True
            covered = covered_flat.reshape(size, size)
            target = cloud if state == _PARTLY else snow
            target[t] = np.where(covered, rng.integers(40, 101, (size, size)), 0)
            cloud[t] = np.maximum(cloud[t], rng.integers(0, 4, (size, size)) * ~covered)
    return snow, cloud


def _render_s1(
    rng: np.random.Generator,
    classes: np.ndarray,
    fractions: np.ndarray,
    dates: Sequence[date],
    plan: _RoiPlan,
    offset_db: float,
) -> np.ndarray:
    """(T*2, S, S) float32 linear sigma0 (VV, VH per date) with gamma speckle."""
    doy = _day_of_year(dates, plan.phenology_shift_days)
    linear = np.stack([_backscatter(_SIGNATURES[k], doy, offset_db) for k in classes])  # (K,T,2)
    sigma0 = np.einsum("kij,ktc->tcij", fractions, linear)  # (T, 2, S, S)
    speckle = rng.gamma(_S1_LOOKS, 1 / _S1_LOOKS, sigma0.shape).astype(np.float32)
    size = fractions.shape[-1]
    return (sigma0 * speckle).astype(np.float32).reshape(-1, size, size)


def _backscatter(signature: _Signature, doy: np.ndarray, offset_db: float) -> np.ndarray:
    """(T, 2) linear VV, VH backscatter of a surface."""
    vv0, vv_gain, vh0, vh_gain = _S1_DB[signature.s1_kind]
    cover = signature.vegetation(doy)
    db = np.stack([vv0 + vv_gain * cover, vh0 + vh_gain * cover], axis=1) + offset_db
    return (10 ** (db / 10)).astype(np.float32)
