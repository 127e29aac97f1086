"""Synthetic inputs for large-area inference: a mapped zone, and large rasters for benchmarks.

``make_synthetic_zone`` writes a synthetic FLAIR-HUB dataset of one domain-year and one ROI
(a contiguous grid of patches, so a model trained on synthetic patches recognises the zone) and,
from those patch files, one mosaic raster per modality with the dates files of the time series:
the inputs of ``flairkit map``. The mosaics hold exactly the patch pixels, so a window of a
mosaic at a patch's bounds equals the patch (the parity test of the window reader).

``make_large_aerial_raster`` and ``make_large_sentinel2`` write large rasters of simple
procedural content for throughput benchmarks.

Every raster is written block by block (a patch, or ``block_px`` rows and columns at a time),
never the whole raster in memory: tiled GeoTIFF, LZW, EPSG:2154.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import MappingProxyType

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from flairkit.io.dates import DatesIndex
from flairkit.io.patches import PatchRef, scan_root
from flairkit.io.raster import DataError
from flairkit.io.windows import RasterSource
from flairkit.modalities import DEFAULT_CRS, PATCH_SIZE_M, Modality
from flairkit.sample import Georef
from flairkit.synth import SynthSummary, make_synthetic_flairhub

log = logging.getLogger(__name__)

Bounds = tuple[float, float, float, float]

#: Every modality with a mosaic by default: the seven inputs, the S2 mask and both labels.
ZONE_MODALITIES: tuple[Modality, ...] = tuple(Modality)
#: Folders under the zone's output folder.
DATASET_DIR = "dataset"
MOSAIC_DIR = "mosaic"
#: Internal tile side of the written GeoTIFFs (GDAL needs a multiple of 16).
_TILE_PX = 256
#: Default north-west corner of the large benchmark rasters (Lambert-93 metres).
_LARGE_ORIGIN_XY_M = (650_000.0, 6_860_000.0)


@dataclass(frozen=True)
class ZoneSummary:
    """What ``make_synthetic_zone`` wrote.

    Attributes:
        root: the output folder.
        dataset: summary of the patch dataset under ``root / "dataset"`` (official layout).
        sources: mosaic raster (and dates file) per modality, ready for ``WindowReader``.
        bounds: (left, bottom, right, top) of the zone, in ``crs``.
        crs: ``"EPSG:2154"``.
        grid: (rows, cols) of patches.
        patch_ids: patch ids, row-major (north to south, west to east).
        patch_bounds: footprint of every patch, in ``crs``.
    """

    root: Path
    dataset: SynthSummary
    sources: Mapping[Modality, RasterSource]
    bounds: Bounds
    crs: str
    grid: tuple[int, int]
    patch_ids: tuple[str, ...]
    patch_bounds: Mapping[str, Bounds]

    @property
    def dataset_root(self) -> Path:
        """Root of the patch dataset."""
        return Path(self.dataset.root)

    @property
    def px_by_modality(self) -> Mapping[Modality, int]:
        """Patch side in pixels per modality."""
        return self.dataset.px_by_modality

    @property
    def gsd_m_by_modality(self) -> Mapping[Modality, float]:
        """Pixel size per modality (pass it to ``WindowReader(gsd_m=...)``)."""
        return self.dataset.gsd_m_by_modality

    def patch_refs(self) -> list[PatchRef]:
        """The patches, in ``patch_ids`` order, as ``read_patch`` takes them."""
        by_id = {r.patch_id: r for r in scan_root(self.dataset_root)}
        return [by_id[p] for p in self.patch_ids]


def make_synthetic_zone(
    out_dir: str | Path,
    *,
    seed: int = 0,
    aerial_px: int = 256,
    patches: tuple[int, int] = (2, 3),
    modalities: Iterable[Modality] = ZONE_MODALITIES,
    domain: str = "D006-2020",
    min_dates: int = 6,
    max_dates: int = 14,
) -> ZoneSummary:
    """Write a synthetic zone: patch files of one ROI and mosaic rasters of the same pixels.

    Args:
        out_dir: output folder; patches go to ``dataset/``, mosaics and dates to ``mosaic/``.
        seed: non-negative seed; the same seed gives byte-identical rasters.
        aerial_px: aerial patch side in pixels (multiple of 16); other modalities follow
            (``synth.synthetic_px_by_modality``).
        patches: (rows, cols) of patches in the zone.
        modalities: which mosaics to write (the patch dataset always has all ten).
        domain: domain-year of the zone, e.g. ``"D006-2020"``.
        min_dates: fewest Sentinel dates.
        max_dates: most Sentinel dates.

    Returns:
        Paths, bounds and patch ids of what was written.

    Raises:
        ValueError: an argument is out of range (see ``make_synthetic_flairhub``).
        DataError: the patches of the ROI do not share their dates (a generator bug).
    """
    out_dir = Path(out_dir)
    modalities = tuple(modalities)
    dataset = make_synthetic_flairhub(
        out_dir / DATASET_DIR, seed=seed, aerial_px=aerial_px, domains=(domain,), num_rois=1,
        patches_per_roi=patches, min_dates=min_dates, max_dates=max_dates,
    )  # fmt: skip
    refs = sorted(scan_root(dataset.root), key=lambda r: r.row_col)
    num_rows, num_cols = patches
    if len(refs) != num_rows * num_cols:
        raise DataError(
            f"{dataset.root}: expected {num_rows * num_cols} patches, found {len(refs)}"
        )
    with rasterio.open(refs[0].path(Modality.AERIAL_RGBI)) as src:
        west, north = src.transform.c, src.transform.f
    bounds = (west, north - num_rows * PATCH_SIZE_M, west + num_cols * PATCH_SIZE_M, north)
    mosaic_dir = out_dir / MOSAIC_DIR
    mosaic_dir.mkdir(parents=True, exist_ok=True)
    dates = _zone_dates(dataset.root, refs, modalities)
    sources: dict[Modality, RasterSource] = {}
    with rasterio.Env():
        for modality in modalities:
            path = mosaic_dir / f"{modality.value}.tif"
            _write_mosaic(path, refs, modality, dataset.px_by_modality[modality], (west, north),
                          patches)  # fmt: skip
            dates_path = None
            if modality.spec.is_time_series:
                dates_path = write_dates_file(mosaic_dir / f"{modality.value}_dates.txt",
                                              dates[modality])  # fmt: skip
            sources[modality] = RasterSource(path, dates_path)
    log.info("wrote a %dx%d-patch zone to %s", num_rows, num_cols, out_dir)
    patch_bounds = {}
    for r in refs:
        row, col = r.row_col
        left, top = west + (col - 1) * PATCH_SIZE_M, north - (row - 1) * PATCH_SIZE_M
        patch_bounds[r.patch_id] = (left, top - PATCH_SIZE_M, left + PATCH_SIZE_M, top)
    return ZoneSummary(
        root=out_dir,
        dataset=dataset,
        sources=MappingProxyType(sources),
        bounds=bounds,
        crs=DEFAULT_CRS,
        grid=(num_rows, num_cols),
        patch_ids=tuple(r.patch_id for r in refs),
        patch_bounds=MappingProxyType(patch_bounds),
    )


def write_dates_file(path: str | Path, dates: np.ndarray) -> Path:
    """Write dates as a text dates file, one ``YYYYMMDD`` per line (``read_dates_file`` format).

    Returns:
        The path written.
    """
    path = Path(path)
    lines = [str(d).replace("-", "") for d in np.asarray(dates, dtype="datetime64[D]")]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _zone_dates(
    root: Path, refs: list[PatchRef], modalities: tuple[Modality, ...]
) -> dict[Modality, np.ndarray]:
    """Dates of each time series, shared by every patch of the ROI."""
    index = DatesIndex(root)
    out = {}
    for m in modalities:
        if not m.spec.is_time_series:
            continue
        first = index.dates(m, refs[0].patch_id)
        for r in refs[1:]:
            if not np.array_equal(index.dates(m, r.patch_id), first):
                raise DataError(
                    f"{index.gpkg_path(m)}: {r.patch_id} and {refs[0].patch_id} have different "
                    f"{m.value} dates; one zone needs one date list"
                )
        out[m] = first
    return out


def _tiled_profile(
    width: int,
    height: int,
    count: int,
    dtype: str,
    transform: Affine,
    compress: str | None = "lzw",
) -> dict:
    """Profile of a tiled GeoTIFF in EPSG:2154 (LZW: readable by every GDAL build)."""
    tile = min(_TILE_PX, 16 * -(-max(width, height) // 16))
    profile = dict(
        driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=DEFAULT_CRS,
        transform=transform, tiled=True, blockxsize=tile, blockysize=tile,
    )  # fmt: skip
    if compress:
        profile.update(compress=compress, num_threads="ALL_CPUS")
    if compress == "zstd":
        profile.update(zstd_level=1)  # the default, 9, writes 3x slower for a few % smaller files
    return profile


def _write_mosaic(
    path: Path,
    refs: list[PatchRef],
    modality: Modality,
    px: int,
    origin_xy_m: tuple[float, float],
    grid: tuple[int, int],
) -> None:
    """Copy every patch file of a modality into its window of one mosaic, patch by patch."""
    num_rows, num_cols = grid
    gsd_m = PATCH_SIZE_M / px  # the value the patches were written with: grids coincide
    transform = Affine(gsd_m, 0.0, origin_xy_m[0], 0.0, -gsd_m, origin_xy_m[1])
    with rasterio.open(refs[0].path(modality)) as src:
        count, dtype = src.count, src.dtypes[0]
    profile = _tiled_profile(num_cols * px, num_rows * px, count, dtype, transform)
    with rasterio.open(path, "w", **profile) as dst:
        for ref in refs:  # row-major: tiles of one row of patches complete together
            row, col = ref.row_col
            with rasterio.open(ref.path(modality)) as src:
                data = src.read()
            dst.write(data, window=Window((col - 1) * px, (row - 1) * px, px, px))


# -- large benchmark rasters --------------------------------------------------------------------

#: Colours (R, G, B, NIR) of the procedural land-cover cells of the large aerial raster.
_LARGE_COLOURS = np.array(
    [
        (150, 140, 145, 110),  # roofs
        (120, 118, 115, 90),  # roads
        (100, 135, 70, 190),  # grass
        (125, 150, 80, 175),  # crops
        (160, 125, 95, 115),  # ploughed
        (70, 105, 55, 200),  # broadleaf
        (45, 70, 45, 150),  # conifers
        (40, 60, 75, 20),  # water
    ],
    dtype=np.uint8,
)
_LARGE_CELL_PX = 128


def make_large_aerial_raster(
    path: str | Path,
    size_px: int,
    *,
    seed: int = 0,
    block_px: int = 1024,
    gsd_m: float = 0.2,
    origin_xy_m: tuple[float, float] = _LARGE_ORIGIN_XY_M,
    compress: str | None = "zstd",
) -> Georef:
    """Write a square RGBI uint8 aerial raster of procedural content, block by block.

    The content is cells of ``_LARGE_CELL_PX`` pixels coloured by a random land-cover type plus
    a noise texture repeated every block: cheap to make, enough to exercise decoding and the
    model, not meant to be learnt. ZSTD is the default compression because it writes and
    decodes several times faster than LZW (16384^2: about 20 s to write against 40 s).

    Args:
        path: output GeoTIFF (tiled 256 px, LZW, EPSG:2154).
        size_px: side in pixels.
        seed: non-negative seed; the same seed gives the same pixels.
        block_px: side of the blocks computed and written at once (memory ~ 4 x block_px^2 B).
        gsd_m: pixel size in metres.
        origin_xy_m: north-west corner.
        compress: GDAL compression (``"zstd"``, ``"lzw"``, ``"deflate"``, ``None``).

    Returns:
        The georeference of the raster.

    Raises:
        ValueError: ``size_px`` or ``block_px`` is not positive.
    """
    if size_px < 1 or block_px < 1:
        raise ValueError(f"size_px and block_px must be positive, got {size_px}, {block_px}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_cells = -(-size_px // _LARGE_CELL_PX)
    cell_class = rng.integers(0, len(_LARGE_COLOURS), (num_cells, num_cells), dtype=np.uint8)
    texture = _texture(rng, block_px)
    transform = Affine(gsd_m, 0.0, origin_xy_m[0], 0.0, -gsd_m, origin_xy_m[1])
    profile = _tiled_profile(size_px, size_px, 4, "uint8", transform, compress)
    with rasterio.open(path, "w", **profile) as dst:
        for window in _blocks(size_px, size_px, block_px):
            dst.write(_aerial_block(cell_class, texture, window), window=window)
    log.info("wrote %s: %d x %d px aerial", path, size_px, size_px)
    return Georef(DEFAULT_CRS, tuple(transform)[:6], size_px, size_px)


def make_large_sentinel2(
    out_dir: str | Path,
    bounds: Bounds,
    *,
    num_dates: int = 20,
    seed: int = 0,
    gsd_m: float = 10.24,
    year: int = 2021,
    block_px: int = 256,
) -> dict[Modality, RasterSource]:
    """Write an S2 stack, its snow/cloud mask and dates file covering ``bounds``, block by block.

    Files: ``SENTINEL2_TS.tif`` (T x 10 bands uint16, date-major), ``SENTINEL2_MSK-SC.tif``
    (T x 2 bands uint8: snow, cloud), ``SENTINEL2_TS_dates.txt``. The grid starts at the
    north-west corner of ``bounds`` and covers it (the last pixel may extend past it). Values
    follow a seasonal vegetation curve per 10-pixel cell; every fourth date is cloudy.

    Args:
        out_dir: output folder.
        bounds: (left, bottom, right, top) to cover, Lambert-93 metres (e.g. the aerial's).
        num_dates: T, at most 365.
        seed: non-negative seed.
        gsd_m: pixel size in metres.
        year: acquisition year.
        block_px: side of the blocks written at once.

    Returns:
        ``{SENTINEL2_TS: RasterSource(stack, dates), SENTINEL2_MSK: RasterSource(mask, dates)}``.

    Raises:
        ValueError: ``num_dates`` out of 1..365 or empty bounds.
    """
    if not 1 <= num_dates <= 365:
        raise ValueError(f"num_dates must be in 1..365, got {num_dates}")
    left, bottom, right, top = bounds
    if not (right > left and top > bottom):
        raise ValueError(f"bounds {bounds!r} are empty or inverted")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = _cover_px(right - left, gsd_m), _cover_px(top - bottom, gsd_m)
    transform = Affine(gsd_m, 0.0, left, 0.0, -gsd_m, top)
    rng = np.random.default_rng(seed)
    step = 365 / num_dates
    days = np.floor(np.arange(num_dates) * step + rng.uniform(0, step, num_dates)).astype(int)
    dates = np.array([date(year, 1, 1) + timedelta(days=int(d)) for d in days], "datetime64[D]")
    vegetation = np.exp(-0.5 * ((days - 180) / 60) ** 2).astype(np.float32)  # (T,)
    cloudy = np.arange(num_dates) % 4 == 3
    soil = np.array([700, 1000, 1300, 1600, 1900, 2100, 2300, 2500, 3200, 2700], np.float32)
    leaf = np.array([300, 600, 300, 900, 2200, 2800, 3200, 3400, 1700, 800], np.float32)
    cover = rng.uniform(0.2, 1.0, (-(-height // 10), -(-width // 10))).astype(np.float32)
    stack_path, mask_path = out_dir / "SENTINEL2_TS.tif", out_dir / "SENTINEL2_MSK-SC.tif"
    dates_path = write_dates_file(out_dir / "SENTINEL2_TS_dates.txt", dates)
    stack_profile = _tiled_profile(width, height, num_dates * 10, "uint16", transform)
    mask_profile = _tiled_profile(width, height, num_dates * 2, "uint8", transform)
    with (
        rasterio.open(stack_path, "w", **stack_profile) as stack,
        rasterio.open(mask_path, "w", **mask_profile) as mask,
    ):
        for window in _blocks(width, height, block_px):
            rows = (window.row_off + np.arange(window.height)) // 10
            cols = (window.col_off + np.arange(window.width)) // 10
            v = vegetation[:, None, None] * cover[np.ix_(rows, cols)][None]  # (T, h, w)
            refl = soil[None, :, None, None] + (leaf - soil)[None, :, None, None] * v[:, None]
            refl[cloudy] = 4500.0
            stack.write(refl.astype(np.uint16).reshape(-1, window.height, window.width),
                        window=window)  # fmt: skip
            probs = np.zeros((num_dates, 2, window.height, window.width), np.uint8)
            probs[cloudy, 1] = 90
            mask.write(probs.reshape(-1, window.height, window.width), window=window)
    log.info("wrote %s: %d x %d px, %d dates", stack_path, width, height, num_dates)
    return {
        Modality.SENTINEL2_TS: RasterSource(stack_path, dates_path),
        Modality.SENTINEL2_MSK: RasterSource(mask_path, dates_path),
    }


def _texture(rng: np.random.Generator, block_px: int) -> np.ndarray:
    """(4, block_px, block_px) uint8 in [0, 16): 4 x 4 px grain plus fine per-pixel noise."""
    grain_px = -(-block_px // 4)
    coarse = rng.integers(0, 12, (4, grain_px, grain_px), dtype=np.uint8)
    coarse = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :block_px, :block_px]
    return coarse + rng.integers(0, 4, (4, block_px, block_px), dtype=np.uint8)


def _aerial_block(cell_class: np.ndarray, texture: np.ndarray, window: Window) -> np.ndarray:
    """(4, h, w) uint8 of one block: cell colours, repeated to pixels, plus the texture."""
    rows = (window.row_off + np.arange(window.height)) // _LARGE_CELL_PX
    cols = (window.col_off + np.arange(window.width)) // _LARGE_CELL_PX
    row_ids, row_counts = np.unique(rows, return_counts=True)
    col_ids, col_counts = np.unique(cols, return_counts=True)
    colour = _LARGE_COLOURS.T[:, cell_class[np.ix_(row_ids, col_ids)]]  # (4, cells, cells)
    block = np.repeat(np.repeat(colour, row_counts, axis=1), col_counts, axis=2)
    # Colours are at most 200 and the texture below 16: uint8 cannot overflow.
    block += texture[:, : window.height, : window.width]
    return block


def _blocks(width: int, height: int, block_px: int) -> Iterable[Window]:
    """Row-major windows of at most ``block_px`` side covering a raster."""
    for row in range(0, height, block_px):
        for col in range(0, width, block_px):
            yield Window(col, row, min(block_px, width - col), min(block_px, height - row))


def _cover_px(extent_m: float, gsd_m: float) -> int:
    """Pixels needed to cover an extent; a float error of a micro-pixel does not add one."""
    return max(1, int(np.ceil(extent_m / gsd_m - 1e-6)))
