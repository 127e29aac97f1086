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

Modules: ``layout`` (names, paths, per-ROI plans, random streams, splits), ``scene`` (COSIA and
LPIS of a patch), ``render`` (every modality from the scene), ``write`` (GeoTIFFs, GeoPackages,
CSVs); this package holds the public API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import rasterio

from flairkit.modalities import PATCH_SIZE_M, Modality
from flairkit.synth.layout import (
    _API_SPLIT,
    CSV_DIR,
    CSV_NAMES,
    DEFAULT_DOMAINS,
    SPLIT_COLUMNS,
    _assign_splits,
    _parse_domain_years,
    _PatchRef,
    _plan_roi,
    _roi_names,
    _validate_args,
)
from flairkit.synth.scene import CROP_TYPES, LPIS_BACKGROUND
from flairkit.synth.write import _write_csvs, _write_metadata, _write_patch

__all__ = [
    "CROP_TYPES",
    "CSV_DIR",
    "CSV_NAMES",
    "DEFAULT_DOMAINS",
    "LPIS_BACKGROUND",
    "SPLIT_COLUMNS",
    "SynthSummary",
    "make_synthetic_flairhub",
    "synthetic_px_by_modality",
]

logger = logging.getLogger(__name__)

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


def _progress(refs: list[_PatchRef], enabled: bool) -> Iterable[_PatchRef]:
    if not enabled:
        return refs
    from tqdm.auto import tqdm  # optional dependency, only needed for the bar

    return tqdm(refs, desc="synthetic patches", unit="patch")
