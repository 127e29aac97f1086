"""Layout of the synthetic dataset: names, patch ids and paths, per-ROI plans, random streams.

Domain-years and ROI names, the patch grid of a ROI and each patch's footprint and file paths
(``_PatchRef``), what the patches of one ROI share (``_RoiPlan``: origin, terrain, Sentinel
dates and S2 cloud/snow states, single dates), the seeded random streams (``_rng``) and the
split columns.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import PurePosixPath
from types import MappingProxyType

import numpy as np

from flairkit.io.patches import department_of
from flairkit.modalities import (
    HISTORICAL_YEAR,
    PATCH_SIZE_M,
    TEST_DOMAINS,
    TRAINVAL_DOMAINS,
    Modality,
)

logger = logging.getLogger("flairkit.synth")  # the package's logger, as before the split

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
_DATE_FMT = "%Y%m%d"

#: S2 date states (cloud/snow) and their probabilities; snow only on winter dates.
_CLEAR, _PARTLY, _CLOUDY, _SNOW = range(4)
_STATE_PROBS = np.array([0.50, 0.27, 0.15, 0.08])
_MIN_CLEAR_DATES = 3
_WINTER_DOY = (75, 320)  # snow only before the first or after the second day of year


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
        domain = department_of(ids[0])
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
