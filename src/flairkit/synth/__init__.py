"""Synthetic FLAIR-HUB dataset written in the official on-disk layout.

``make_synthetic_flairhub`` writes real GeoTIFFs, metadata GeoPackages and split CSVs with the
folder and file names, band counts, band order, dtypes and georeferencing of FLAIR-HUB
(``shared/flairhub-format.md`` sections 1-4), at any size that is a multiple of 16 aerial pixels.

The content is small but learnable:

* COSIA land cover is a warped Voronoi partition plus small objects (buildings, greenhouses,
  pools). Aerial colour and DEM object height depend on the COSIA class only.
* LPIS parcels are rectangles on the Sentinel pixel grid, labelled COSIA 9 or 10. All crop types
  share the aerial look of their COSIA class; only their phenology (a bell-shaped vegetation
  curve per crop) differs, and it drives the Sentinel-2 and Sentinel-1 time series.
* Sentinel-2 dates are clear, partly cloudy, fully cloudy or snowy. Clouds and snow raise the
  mask probabilities and brighten the reflectance; every ROI keeps a few clear dates.

Every random draw comes from a generator seeded by (seed, domain-year, ROI, patch, purpose), so
the output does not depend on iteration order and one seed always gives byte-identical rasters.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from shapely.geometry import box

from flairkit.modalities import (
    DEFAULT_CRS,
    HISTORICAL_YEAR,
    LPIS_NUM_CLASSES,
    METADATA_DIR,
    MODALITY_SPECS,
    PATCH_SIZE_M,
    SINGLE_DATE_GPKGS,
    SPLIT_GPKG,
    TEST_DOMAINS,
    TRAINVAL_DOMAINS,
    Modality,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Layout tables
# --------------------------------------------------------------------------------------------

#: Real domain-years (spec section 1.6): two train/val, then two test.
DEFAULT_DOMAINS = ("D006-2020", "D032-2019", "D012-2019", "D068-2021")
#: Folder of the split CSVs and their names per ``split_1`` value (spec section 1.4).
CSV_DIR = "csv"
CSV_NAMES = {
    "train": "FLAIR-HUB_TRAIN.csv",
    "valid": "FLAIR-HUB_VALID.csv",
    "test": "FLAIR-HUB_TEST.csv",
}
#: Split columns of ``GLOBAL_ALL_MTD_SPLIT.gpkg`` (spec section 1.5).
SPLIT_COLUMNS = ("split_1", "split_2", "split_3", "split_4", "split_5", "split_flairchallenge")
#: ``split_1`` value -> API split name.
_API_SPLIT = {"train": "train", "valid": "val", "test": "test"}
_CSV_DELIMITERS = (",", ";")

_DOMAIN_YEAR_RE = re.compile(r"^(D\d{3}(?:\d{3})?)-(\d{4})$")
_ROI_LETTERS = tuple("UNAFV")
_ROI_ORIGIN_X_M = (300_000, 1_000_000)
_ROI_ORIGIN_Y_M = (6_300_000, 7_000_000)

#: Modalities written as 512-style single-date rasters: strips, LZW. Time series use GDAL defaults.
_COMPRESSED = frozenset(
    {
        Modality.AERIAL_RGBI,
        Modality.AERIAL_PAN,
        Modality.DEM_ELEV,
        Modality.SPOT_RGBI,
        Modality.COSIA,
        Modality.LPIS,
    }
)
_DATE_FMT = "%Y%m%d"
_CRS = CRS.from_string(DEFAULT_CRS)

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
#: Level-1 -> level-2/3 tables: a fixed monotone spread over the valid ranges (the real
#: hierarchy is not public, spec section 4.2); background maps to the last class of each level.
_LPIS_L1_TO_L2 = np.round(np.arange(23) * (LPIS_NUM_CLASSES[2] - 1) / 22).astype(np.uint8)
_LPIS_L1_TO_L3 = np.round(np.arange(23) * (LPIS_NUM_CLASSES[3] - 1) / 22).astype(np.uint8)
_NUM_COSIA = len(_AERIAL_MEAN_RGBI)

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
#: S2 date states (cloud/snow) and their probabilities; snow only on winter dates.
_CLEAR, _PARTLY, _CLOUDY, _SNOW = range(4)
_STATE_PROBS = np.array([0.50, 0.27, 0.15, 0.08])
_MIN_CLEAR_DATES = 3
_WINTER_DOY = (75, 320)  # snow only before the first or after the second day of year


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
# Public API
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthSummary:
    """What ``make_synthetic_flairhub`` wrote.

    Attributes:
        root: dataset root folder.
        patch_ids: patch ids per API split name ("train", "val", "test"), following ``split_1``.
        num_files: files written (GeoTIFFs, GeoPackages and CSVs).
        px_by_modality: patch side in pixels per modality.
        domains: the domain-years written, e.g. ("D006-2020", ...).
        seed: the seed used.
    """

    root: Path
    patch_ids: Mapping[str, tuple[str, ...]]
    num_files: int
    px_by_modality: Mapping[Modality, int]
    domains: tuple[str, ...]
    seed: int

    @property
    def all_patch_ids(self) -> tuple[str, ...]:
        """Every patch id, train then val then test."""
        return tuple(p for ids in self.patch_ids.values() for p in ids)

    @property
    def gsd_m_by_modality(self) -> Mapping[Modality, float]:
        """Pixel size in metres per modality (the footprint is always ``PATCH_SIZE_M``)."""
        return MappingProxyType({m: PATCH_SIZE_M / px for m, px in self.px_by_modality.items()})


def synthetic_px_by_modality(aerial_px: int) -> dict[Modality, int]:
    """Patch side in pixels of every modality for a given aerial patch side.

    Aerial, DEM and labels use ``aerial_px``; PAN half of it; SPOT an eighth; Sentinel
    ``max(2, round(10 * aerial_px / 512))``, which gives the official 512/256/64/10 at 512.

    Args:
        aerial_px: aerial patch side in pixels, a positive multiple of 16.

    Returns:
        Pixels per side for each of the 10 modalities.

    Raises:
        ValueError: ``aerial_px`` is not a positive multiple of 16.
    """
    if aerial_px <= 0 or aerial_px % 16:
        raise ValueError(f"aerial_px must be a positive multiple of 16, got {aerial_px}")
    sentinel_px = max(2, round(10 * aerial_px / 512))
    px = {
        Modality.AERIAL_RGBI: aerial_px,
        Modality.AERIAL_PAN: aerial_px // 2,
        Modality.DEM_ELEV: aerial_px,
        Modality.SPOT_RGBI: aerial_px // 8,
        Modality.COSIA: aerial_px,
        Modality.LPIS: aerial_px,
    }
    for m in Modality:
        px.setdefault(m, sentinel_px)
    return px


def make_synthetic_flairhub(
    root: str | Path,
    *,
    seed: int = 0,
    aerial_px: int = 512,
    domains: Sequence[str] | None = None,
    num_rois: int = 2,
    patches_per_roi: tuple[int, int] = (2, 2),
    min_dates: int = 6,
    max_dates: int = 14,
    csv_delimiter: str = ",",
    progress: bool = False,
) -> SynthSummary:
    """Write a synthetic FLAIR-HUB dataset in the official layout.

    Args:
        root: output folder (created if missing; existing files of the same names are replaced).
        seed: non-negative seed; the same seed gives byte-identical rasters and equal tables.
        aerial_px: aerial patch side in pixels (multiple of 16); other sizes follow from it.
        domains: domain-years such as "D006-2020"; default ``DEFAULT_DOMAINS``.
        num_rois: ROIs per domain-year.
        patches_per_roi: (rows, cols) grid of patches in each ROI.
        min_dates: fewest Sentinel dates of a ROI time series.
        max_dates: most Sentinel dates of a ROI time series (at most 365).
        csv_delimiter: "," or ";" for the split CSVs.
        progress: show a tqdm bar over patches.

    Returns:
        A summary of what was written.

    Raises:
        ValueError: an argument is out of range or a domain-year is malformed.
    """
    root = Path(root)
    domain_years = _parse_domain_years(DEFAULT_DOMAINS if domains is None else domains)
    _validate_args(seed, num_rois, patches_per_roi, min_dates, max_dates, csv_delimiter)
    px_by_modality = synthetic_px_by_modality(aerial_px)
    num_rows, num_cols = patches_per_roi
    roi_names = _roi_names(seed, domain_years, num_rois)
    plans = {
        (dy, name): _plan_roi(seed, dy, name, min_dates, max_dates)
        for dy in domain_years
        for name in roi_names[dy]
    }
    refs = [
        _PatchRef(dy, name, row, col, plans[dy, name].origin_xy_m)
        for dy in domain_years
        for name in roi_names[dy]
        for row in range(1, num_rows + 1)
        for col in range(1, num_cols + 1)
    ]
    logger.info(
        "writing synthetic FLAIR-HUB to %s: %d domain-years, %d ROIs, %d patches, aerial %d px",
        root, len(domain_years), len(plans), len(refs), aerial_px,
    )  # fmt: skip
    num_files = 0
    with rasterio.Env():  # one GDAL environment for all rasters: cheaper than one per file
        for ref in _progress(refs, progress):
            plan = plans[ref.domain_year, ref.roi]
            num_files += _write_patch(root, ref, plan, seed, px_by_modality)
    splits = _assign_splits(refs, seed)
    num_files += _write_metadata(root, refs, plans, splits)
    num_files += _write_csvs(root, refs, splits, csv_delimiter)
    patch_ids = {
        api: tuple(r.patch_id for r in refs if splits[r.patch_id]["split_1"] == value)
        for value, api in _API_SPLIT.items()
    }
    logger.info("wrote %d files under %s", num_files, root)
    return SynthSummary(
        root=root,
        patch_ids=MappingProxyType(patch_ids),
        num_files=num_files,
        px_by_modality=MappingProxyType(px_by_modality),
        domains=tuple(dy.name for dy in domain_years),
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Identifiers, plans, random streams
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DomainYear:
    domain: str  # e.g. "D006"
    year: int

    @property
    def name(self) -> str:
        return f"{self.domain}-{self.year}"

    def folder(self, modality: Modality) -> str:
        """Folder name of a modality; the historical imagery uses the literal year 195X."""
        year = HISTORICAL_YEAR if modality is Modality.AERIAL_PAN else str(self.year)
        return f"{self.domain}-{year}_{modality.value}"


@dataclass(frozen=True)
class _PatchRef:
    domain_year: _DomainYear
    roi: str
    row: int  # 1-based, grows southwards
    col: int  # 1-based, grows eastwards
    roi_origin_xy_m: tuple[float, float]  # north-west corner of patch 1-1

    @property
    def patch_id(self) -> str:
        return f"{self.domain_year.name}_{self.roi}_{self.row}-{self.col}"

    @property
    def bounds_m(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in EPSG:2154 metres."""
        west = self.roi_origin_xy_m[0] + (self.col - 1) * PATCH_SIZE_M
        north = self.roi_origin_xy_m[1] - (self.row - 1) * PATCH_SIZE_M
        return west, north - PATCH_SIZE_M, west + PATCH_SIZE_M, north

    def relative_path(self, modality: Modality) -> PurePosixPath:
        """Path of a modality's file relative to the dataset root."""
        folder = self.domain_year.folder(modality)
        return PurePosixPath(folder, self.roi, f"{folder}_{self.roi}_{self.row}-{self.col}.tif")


@dataclass(frozen=True)
class _RoiPlan:
    """Everything shared by the patches of one ROI."""

    origin_xy_m: tuple[float, float]
    terrain: np.ndarray  # (1 + num_waves, 4): [base_m, gx, gy, 0], then [amp_m, kx, ky, phase]
    ts_dates: Mapping[Modality, tuple[date, ...]]
    s2_states: tuple[int, ...]  # one of _CLEAR, _PARTLY, _CLOUDY, _SNOW per S2 date
    single_dates: Mapping[Modality, str]  # "YYYYMMDD" for aerial, SPOT and historical
    phenology_shift_days: float


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (stable across runs)."""
    digest = hashlib.sha256("\x1f".join(map(str, keys)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest[:16])]))


def _parse_domain_years(domains: Sequence[str]) -> tuple[_DomainYear, ...]:
    if isinstance(domains, str) or not domains:
        raise ValueError(f"domains must be a non-empty list of strings, got {domains!r}")
    parsed = []
    for name in domains:
        match = _DOMAIN_YEAR_RE.match(name)
        if match is None:
            raise ValueError(f"domain-year {name!r} does not match 'Dxxx-YYYY' (e.g. 'D006-2020')")
        parsed.append(_DomainYear(match[1], int(match[2])))
        if match[1] not in TEST_DOMAINS | TRAINVAL_DOMAINS:
            logger.warning("domain %s is not a FLAIR-HUB domain; treated as train/val", match[1])
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"duplicate domain-years in {list(domains)}")
    return tuple(parsed)


def _validate_args(
    seed: int,
    num_rois: int,
    patches_per_roi: tuple[int, int],
    min_dates: int,
    max_dates: int,
    csv_delimiter: str,
) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_rois < 1:
        raise ValueError(f"num_rois must be >= 1, got {num_rois}")
    if len(patches_per_roi) != 2 or min(patches_per_roi) < 1:
        raise ValueError(f"patches_per_roi must be (rows, cols) >= 1, got {patches_per_roi}")
    if not 1 <= min_dates <= max_dates <= 365:
        raise ValueError(f"need 1 <= min_dates <= max_dates <= 365, got {min_dates}, {max_dates}")
    if csv_delimiter not in _CSV_DELIMITERS:
        raise ValueError(f"csv_delimiter must be one of {_CSV_DELIMITERS}, got {csv_delimiter!r}")


def _roi_names(
    seed: int, domain_years: Sequence[_DomainYear], num_rois: int
) -> dict[_DomainYear, tuple[str, ...]]:
    """ROI names, unique per domain so that survey years sharing a 195X folder never collide."""
    years_by_domain: dict[str, list[_DomainYear]] = {}
    for dy in domain_years:
        years_by_domain.setdefault(dy.domain, []).append(dy)
    names: dict[_DomainYear, tuple[str, ...]] = {}
    for domain, dys in years_by_domain.items():
        dys.sort(key=lambda d: d.year)
        pool = _unique_roi_names(_rng(seed, "roi-names", domain), num_rois * len(dys))
        for i, dy in enumerate(dys):
            names[dy] = tuple(pool[i * num_rois : (i + 1) * num_rois])
    return names


def _unique_roi_names(rng: np.random.Generator, count: int) -> list[str]:
    """Names like ``UU-S1-1`` or ``AF-S1-V18``: ``[UNAFV]{2}-S[12]-[UNAFV]?[0-9]+``."""
    names: list[str] = []
    max_number = 40
    while len(names) < count:
        letters = "".join(rng.choice(_ROI_LETTERS, size=2))
        session = "S1" if rng.random() < 0.8 else "S2"
        prefix = str(rng.choice(_ROI_LETTERS)) if rng.random() < 0.4 else ""
        name = f"{letters}-{session}-{prefix}{rng.integers(1, max_number)}"
        if name not in names:
            names.append(name)
        max_number += 1  # widens the space so that large requests always terminate quickly
    return names


def _plan_roi(seed: int, dy: _DomainYear, roi: str, min_dates: int, max_dates: int) -> _RoiPlan:
    rng = _rng(seed, dy.name, roi, "plan")
    origin = (
        float(rng.integers(*_ROI_ORIGIN_X_M)),
        float(rng.integers(*_ROI_ORIGIN_Y_M)),
    )
    base_m, gx, gy = rng.uniform(200, 800), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)
    num_waves = 3
    wavelength_m = rng.uniform(200, 1000, num_waves)
    angle = rng.uniform(0, np.pi, num_waves)
    waves = np.stack(
        [
            rng.uniform(1, 8, num_waves),
            2 * np.pi / wavelength_m * np.cos(angle),
            2 * np.pi / wavelength_m * np.sin(angle),
            rng.uniform(0, 2 * np.pi, num_waves),
        ],
        axis=1,
    )
    terrain = np.vstack([[base_m, gx, gy, 0.0], waves])
    ts_dates = {
        m: _draw_dates(_rng(seed, dy.name, roi, m.value, "dates"), dy.year, min_dates, max_dates)
        for m in (Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS, Modality.SENTINEL1_DESC_TS)
    }
    ts_dates[Modality.SENTINEL2_MSK] = ts_dates[Modality.SENTINEL2_TS]
    states = _draw_s2_states(_rng(seed, dy.name, roi, "s2-states"), ts_dates[Modality.SENTINEL2_TS])
    return _RoiPlan(
        origin_xy_m=origin,
        terrain=terrain,
        ts_dates=MappingProxyType(ts_dates),
        s2_states=states,
        single_dates=MappingProxyType(_draw_single_dates(rng, dy.year)),
        phenology_shift_days=float(rng.uniform(-8, 8)),
    )


def _draw_dates(
    rng: np.random.Generator, year: int, min_dates: int, max_dates: int
) -> tuple[date, ...]:
    """Distinct sorted days of ``year``; their number is uniform in [min_dates, max_dates]."""
    num_dates = int(rng.integers(min_dates, max_dates + 1))
    num_days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    offsets = np.sort(rng.choice(num_days, size=num_dates, replace=False))
    return tuple(date(year, 1, 1) + timedelta(days=int(d)) for d in offsets)


def _draw_s2_states(rng: np.random.Generator, dates: Sequence[date]) -> tuple[int, ...]:
    """Cloud/snow state per date; snow only in winter; at least a few clear dates."""
    states = rng.choice(len(_STATE_PROBS), size=len(dates), p=_STATE_PROBS)
    doy = np.array([d.timetuple().tm_yday for d in dates])
    is_winter = (doy < _WINTER_DOY[0]) | (doy > _WINTER_DOY[1])
    states[(states == _SNOW) & ~is_winter] = _PARTLY
    num_missing = min(_MIN_CLEAR_DATES, len(dates)) - int(np.sum(states == _CLEAR))
    if num_missing > 0:
        not_clear = np.flatnonzero(states != _CLEAR)
        states[rng.choice(not_clear, size=num_missing, replace=False)] = _CLEAR
    return tuple(int(s) for s in states)


def _draw_single_dates(rng: np.random.Generator, year: int) -> dict[Modality, str]:
    """Aerial (summer of the survey year), SPOT (that year or the one before), historical (195x).

    The historical day is sometimes "00", as in the real metadata (spec section 1.5).
    """
    aerial = date(year, 1, 1) + timedelta(days=int(rng.integers(120, 273)))
    spot = date(year - int(rng.integers(0, 2)), 1, 1) + timedelta(days=int(rng.integers(60, 300)))
    day = "00" if rng.random() < 0.3 else f"{rng.integers(1, 29):02d}"
    historical = f"{1950 + rng.integers(0, 10)}{rng.integers(4, 10):02d}{day}"
    return {
        Modality.AERIAL_RGBI: aerial.strftime(_DATE_FMT),
        Modality.SPOT_RGBI: spot.strftime(_DATE_FMT),
        Modality.AERIAL_PAN: historical,
    }


def _progress(refs: list[_PatchRef], enabled: bool) -> Iterable[_PatchRef]:
    if not enabled:
        return refs
    from tqdm.auto import tqdm  # optional dependency, only needed for the bar

    return tqdm(refs, desc="synthetic patches", unit="patch")


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
            covered = np.zeros(size * size, dtype=bool)
            covered[np.argsort(field)[-num_covered:]] = True
            covered = covered.reshape(size, size)
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


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_patch(
    root: Path, ref: _PatchRef, plan: _RoiPlan, seed: int, px_by_modality: Mapping[Modality, int]
) -> int:
    """Render and write the 10 files of one patch; return the number of files written."""
    keys = (seed, ref.domain_year.name, ref.roi, ref.row, ref.col)
    aerial_px = px_by_modality[Modality.AERIAL_RGBI]
    sentinel_px = px_by_modality[Modality.SENTINEL2_TS]
    scene = _make_scene(_rng(*keys, "scene"), aerial_px, sentinel_px)
    aerial = _render_aerial(_rng(*keys, "aerial"), scene.cosia)
    classes, fractions = _class_fractions(scene.spectral_class, sentinel_px)
    s2, s2_mask = _render_s2(_rng(*keys, "s2"), classes, fractions, plan)
    arrays = {
        Modality.AERIAL_RGBI: aerial,
        Modality.AERIAL_PAN: _render_pan(
            _rng(*keys, "pan"), aerial, px_by_modality[Modality.AERIAL_PAN]
        ),
        Modality.DEM_ELEV: _render_dem(_rng(*keys, "dem"), scene.cosia, ref, plan.terrain),
        Modality.SPOT_RGBI: _render_spot(
            _rng(*keys, "spot"), aerial, px_by_modality[Modality.SPOT_RGBI]
        ),
        Modality.SENTINEL2_TS: s2,
        Modality.SENTINEL2_MSK: s2_mask,
        Modality.SENTINEL1_ASC_TS: _render_s1(
            _rng(*keys, "s1-asc"), classes, fractions,
            plan.ts_dates[Modality.SENTINEL1_ASC_TS], plan, 0.0,
        ),
        Modality.SENTINEL1_DESC_TS: _render_s1(
            _rng(*keys, "s1-desc"), classes, fractions,
            plan.ts_dates[Modality.SENTINEL1_DESC_TS], plan, _S1_DESC_OFFSET_DB,
        ),
        Modality.COSIA: scene.cosia[None],
        Modality.LPIS: _render_lpis(scene.lpis_l1),
    }  # fmt: skip
    for modality, array in arrays.items():
        path = root / ref.relative_path(modality)
        _write_raster(path, array, ref.bounds_m, compress=modality in _COMPRESSED)
    return len(arrays)


def _write_raster(
    path: Path,
    array: np.ndarray,
    bounds_m: tuple[float, float, float, float],
    *,
    compress: bool,
) -> None:
    """Write a (C, H, W) array as a north-up GeoTIFF covering ``bounds_m`` in EPSG:2154."""
    count, height, width = array.shape
    west, _, _, north = bounds_m
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": array.dtype.name,
        "crs": _CRS,
        "transform": Affine(PATCH_SIZE_M / width, 0.0, west, 0.0, -PATCH_SIZE_M / height, north),
    }
    if compress:
        profile.update(tiled=False, compress="lzw")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def _assign_splits(refs: Sequence[_PatchRef], seed: int) -> dict[str, dict[str, str]]:
    """Split values ("train"/"valid"/"test") per patch id and split column.

    ``split_1`` is the official rule: test domains are test; inside each other domain-year about
    a quarter of the patches (at least one when there are two or more) is valid. The other
    columns put a random quarter of the domains in test and a random fifth of the rest in valid.
    """
    splits: dict[str, dict[str, str]] = {r.patch_id: {} for r in refs}
    by_domain_year: dict[str, list[str]] = {}
    for r in refs:
        by_domain_year.setdefault(r.domain_year.name, []).append(r.patch_id)
    for dy_name, ids in by_domain_year.items():
        domain = dy_name.split("-")[0]
        if domain in TEST_DOMAINS:
            values = ["test"] * len(ids)
        else:
            num_valid = max(1, round(0.25 * len(ids))) if len(ids) >= 2 else 0
            order = _rng(seed, "split_1", dy_name).permutation(len(ids))
            values = ["train"] * len(ids)
            for i in order[:num_valid]:
                values[i] = "valid"
        for pid, value in zip(ids, values, strict=True):
            splits[pid]["split_1"] = value
    for column in SPLIT_COLUMNS[1:]:
        for r in refs:
            if _rng(seed, column, r.domain_year.domain).random() < 0.25:
                value = "test"
            else:
                value = "valid" if _rng(seed, column, r.patch_id).random() < 0.2 else "train"
            splits[r.patch_id][column] = value
    return splits


def _write_gpkg(path: Path, columns: Mapping[str, list[str]], refs: Sequence[_PatchRef]) -> None:
    """One row per patch: the given string columns plus the footprint polygon, layer = stem."""
    frame = gpd.GeoDataFrame(
        dict(columns), geometry=[box(*r.bounds_m) for r in refs], crs=DEFAULT_CRS
    )
    path.unlink(missing_ok=True)
    frame.to_file(path, layer=path.stem, driver="GPKG", engine="pyogrio")


def _write_metadata(
    root: Path,
    refs: Sequence[_PatchRef],
    plans: Mapping[tuple[_DomainYear, str], _RoiPlan],
    splits: Mapping[str, Mapping[str, str]],
) -> int:
    """Write the GeoPackages of ``GLOBAL_ALL_MTD/``; return the number of files written."""
    meta_dir = root / METADATA_DIR
    meta_dir.mkdir(parents=True, exist_ok=True)
    ids = [r.patch_id for r in refs]
    ref_plans = [plans[r.domain_year, r.roi] for r in refs]
    num_files = 0
    for modality in (Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS, Modality.SENTINEL1_DESC_TS):
        dates_json = [_dates_json(p.ts_dates[modality]) for p in ref_plans]
        gpkg = MODALITY_SPECS[modality].dates_gpkg
        assert gpkg is not None  # every time-series modality has one (modalities.py)
        _write_gpkg(meta_dir / gpkg, {"patch_id": ids, "acquisition_dates": dates_json}, refs)
        num_files += 1
    for modality, gpkg in SINGLE_DATE_GPKGS.items():
        dates = [p.single_dates[modality] for p in ref_plans]
        _write_gpkg(meta_dir / gpkg, {"patch_id": ids, "date": dates}, refs)
        num_files += 1
    split_columns = {"patch_id": ids} | {c: [splits[pid][c] for pid in ids] for c in SPLIT_COLUMNS}
    _write_gpkg(meta_dir / SPLIT_GPKG, split_columns, refs)
    return num_files + 1


def _dates_json(dates: Sequence[date]) -> str:
    """``{"1": "YYYYMMDD", ...}`` in band order (spec section 1.5)."""
    return json.dumps({str(i): d.strftime(_DATE_FMT) for i, d in enumerate(dates, start=1)})


def _write_csvs(
    root: Path,
    refs: Sequence[_PatchRef],
    splits: Mapping[str, Mapping[str, str]],
    delimiter: str,
) -> int:
    """Write the three ``split_1`` CSVs; paths are relative to the CSV folder."""
    csv_dir = root / CSV_DIR
    csv_dir.mkdir(parents=True, exist_ok=True)
    modalities = sorted(Modality, key=lambda m: m.value)  # alphabetical, as spec section 1.4
    header = ["patch_id", *(m.value for m in modalities)]
    for value, name in CSV_NAMES.items():
        with (csv_dir / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            for r in refs:
                if splits[r.patch_id]["split_1"] == value:
                    paths = [str(PurePosixPath("..", r.relative_path(m))) for m in modalities]
                    writer.writerow([r.patch_id, *paths])
    return len(CSV_NAMES)
