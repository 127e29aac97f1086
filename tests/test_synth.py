"""Tests of the synthetic FLAIR-HUB generator: layout, formats, georeferencing, determinism and
learnable content (shared/flairhub-format.md sections 1-4)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio

from flairkit.modalities import (
    DEFAULT_CRS,
    HISTORICAL_YEAR,
    METADATA_DIR,
    MODALITY_SPECS,
    PATCH_SIZE_M,
    SINGLE_DATE_GPKGS,
    SPLIT_GPKG,
    TEST_DOMAINS,
    Modality,
)
from flairkit.synth import (
    CSV_DIR,
    CSV_NAMES,
    SPLIT_COLUMNS,
    SynthSummary,
    make_synthetic_flairhub,
    synthetic_px_by_modality,
)

AERIAL_PX = 64
DOMAINS = ("D006-2020", "D032-2019", "D012-2019")
NUM_ROIS = 3
PATCHES_PER_ROI = (2, 2)

ROI_RE = re.compile(r"[UNAFV]{2}-S[12]-[UNAFV]?[0-9]+")
MODALITY_ALT = "|".join(re.escape(m.value) for m in Modality)
FOLDER_RE = re.compile(rf"(D\d{{3}}(?:\d{{3}})?)-(\d{{4}}|{HISTORICAL_YEAR})_({MODALITY_ALT})")
FILE_RE = re.compile(r"(?P<folder>.+)_(?P<roi>[^_]+)_(?P<row>[1-9]\d*)-(?P<col>[1-9]\d*)\.tif")
TS_DATES_GPKG = {
    m: MODALITY_SPECS[m].dates_gpkg for m in Modality if MODALITY_SPECS[m].is_time_series
}
#: (bands per date, dtype) of every modality; time series have T * bands.
EXPECTED_FORMAT = {
    Modality.AERIAL_RGBI: (4, "uint8"),
    Modality.AERIAL_PAN: (1, "uint8"),
    Modality.DEM_ELEV: (2, "float32"),
    Modality.SPOT_RGBI: (4, "uint16"),
    Modality.SENTINEL2_TS: (10, "uint16"),
    Modality.SENTINEL2_MSK: (2, "uint8"),
    Modality.SENTINEL1_ASC_TS: (2, "float32"),
    Modality.SENTINEL1_DESC_TS: (2, "float32"),
    Modality.COSIA: (1, "uint8"),
    Modality.LPIS: (3, "uint8"),
}
B04, B08 = 2, 6  # 0-based channel indices of red and NIR in the S2 date block
WHEAT, MAIZE = 1, 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return make_synthetic_flairhub(
        tmp_path_factory.mktemp("flairhub"),
        seed=0,
        aerial_px=AERIAL_PX,
        domains=DOMAINS,
        num_rois=NUM_ROIS,
        patches_per_roi=PATCHES_PER_ROI,
    )


@dataclass(frozen=True)
class FileInfo:
    count: int
    shape: tuple[int, int]
    dtypes: frozenset[str]
    compression: str | None
    is_tiled: bool
    crs: str
    transform: rasterio.Affine
    bounds: tuple[float, float, float, float]


@pytest.fixture(scope="module")
def file_info(dataset: SynthSummary) -> dict[tuple[str, Modality], FileInfo]:
    """Header of every raster, opened once for all the tests that need it."""
    info = {}
    with rasterio.Env():
        for patch_id, m in itertools.product(dataset.all_patch_ids, Modality):
            with rasterio.open(patch_path(dataset.root, patch_id, m)) as src:
                info[patch_id, m] = FileInfo(
                    count=src.count,
                    shape=(src.height, src.width),
                    dtypes=frozenset(src.dtypes),
                    compression=src.compression.value if src.compression else None,
                    is_tiled=src.block_shapes[0][1] != src.width,  # strips span the width
                    crs=src.crs.to_string(),
                    transform=src.transform,
                    bounds=tuple(src.bounds),
                )
    return info


# ---------------------------------------------------------------------------------------------
# helpers (independent of the generator's internals: they follow the spec's grammar)
# ---------------------------------------------------------------------------------------------


def patch_path(root: Path, patch_id: str, modality: Modality) -> Path:
    domain_year, roi, row_col = patch_id.split("_")
    domain, year = domain_year.split("-")
    if modality is Modality.AERIAL_PAN:
        year = HISTORICAL_YEAR
    folder = f"{domain}-{year}_{modality.value}"
    return root / folder / roi / f"{folder}_{roi}_{row_col}.tif"


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def read_gpkg(root: Path, name: str) -> gpd.GeoDataFrame:
    path = root / METADATA_DIR / name
    assert pyogrio.list_layers(path)[:, 0].tolist() == [path.stem]
    return gpd.read_file(path, engine="pyogrio")


def dates_by_patch(root: Path, modality: Modality) -> dict[str, list[str]]:
    frame = read_gpkg(root, TS_DATES_GPKG[modality])
    return {
        pid: list(json.loads(text).values())
        for pid, text in zip(frame["patch_id"], frame["acquisition_dates"], strict=True)
    }


def roi_of(patch_id: str) -> str:
    return patch_id.rsplit("_", 1)[0]


def passes_filter(mask: np.ndarray) -> np.ndarray:
    """(T*2, H, W) snow/cloud mask -> (T,) dates kept by the benchmark filter (spec 2.3)."""
    snow, cloud = mask[0::2], mask[1::2]
    valid = (snow <= 1) & (cloud <= 1)
    return valid.mean(axis=(1, 2)) >= 0.95


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.tif"))
    }


# ---------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------


def test_sizes_follow_aerial_px_and_match_official_at_512() -> None:
    official = synthetic_px_by_modality(512)
    assert official == {m: MODALITY_SPECS[m].native_px for m in Modality}
    small = synthetic_px_by_modality(AERIAL_PX)
    assert small[Modality.AERIAL_PAN] == 32 and small[Modality.SPOT_RGBI] == 8
    assert small[Modality.SENTINEL2_TS] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aerial_px": 100},
        {"domains": ["D6-2020"]},
        {"domains": ["D006-2020", "D006-2020"]},
        {"csv_delimiter": "\t"},
        {"min_dates": 10, "max_dates": 5},
        {"patches_per_roi": (0, 2)},
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_synthetic_flairhub(tmp_path, **({"aerial_px": 64} | kwargs))


def test_layout_matches_grammar(dataset: SynthSummary) -> None:
    root = dataset.root
    patch_ids = set(dataset.all_patch_ids)
    num_rows, num_cols = PATCHES_PER_ROI
    assert len(patch_ids) == len(DOMAINS) * NUM_ROIS * num_rows * num_cols
    expected_top = {METADATA_DIR, CSV_DIR}
    for dy in DOMAINS:
        domain = dy.split("-")[0]
        for m in Modality:
            year_dy = f"{domain}-{HISTORICAL_YEAR}" if m is Modality.AERIAL_PAN else dy
            expected_top.add(f"{year_dy}_{m.value}")
    assert {p.name for p in root.iterdir()} == expected_top

    files_per_patch: dict[str, set[Modality]] = defaultdict(set)
    for path in root.rglob("*.tif"):
        folder, roi, name = path.relative_to(root).parts
        folder_match = FOLDER_RE.fullmatch(folder)
        assert folder_match, folder
        domain, year, modality = folder_match[1], folder_match[2], Modality(folder_match[3])
        assert (year == HISTORICAL_YEAR) == (modality is Modality.AERIAL_PAN)
        assert ROI_RE.fullmatch(roi), roi
        file_match = FILE_RE.fullmatch(name)
        assert file_match and file_match["folder"] == folder and file_match["roi"] == roi
        assert len(name[: -len(".tif")].split("_")) == 5  # spec 1.2: DY, SENSOR, TYPE, ROI, RC
        dy = next(d for d in DOMAINS if d.startswith(domain + "-"))
        patch_id = f"{dy}_{roi}_{file_match['row']}-{file_match['col']}"
        assert patch_id in patch_ids
        files_per_patch[patch_id].add(modality)
    assert all(mods == set(Modality) for mods in files_per_patch.values())
    assert set(files_per_patch) == patch_ids
    assert dataset.num_files == 10 * len(patch_ids) + 7 + 3


# ---------------------------------------------------------------------------------------------
# rasters
# ---------------------------------------------------------------------------------------------


def test_band_counts_dtypes_shapes_and_ranges(
    dataset: SynthSummary, file_info: dict[tuple[str, Modality], FileInfo]
) -> None:
    root = dataset.root
    dates = {m: dates_by_patch(root, m) for m in TS_DATES_GPKG}
    compressed = {Modality.AERIAL_RGBI, Modality.AERIAL_PAN, Modality.DEM_ELEV,
                  Modality.SPOT_RGBI, Modality.COSIA, Modality.LPIS}  # fmt: skip
    for patch_id in dataset.all_patch_ids:
        for m, (num_bands, dtype) in EXPECTED_FORMAT.items():
            info = file_info[patch_id, m]
            px = dataset.px_by_modality[m]
            num_dates = len(dates[m][patch_id]) if m in dates else 1
            assert info.count == num_dates * num_bands
            assert info.shape == (px, px)
            assert info.dtypes == {dtype}
            assert info.compression == ("LZW" if m in compressed else None)
            assert not info.is_tiled
    # value ranges on one patch per domain
    for patch_id in dataset.all_patch_ids[:: NUM_ROIS * 4]:
        cosia = read(patch_path(root, patch_id, Modality.COSIA))
        assert cosia.max() <= 18
        lpis = read(patch_path(root, patch_id, Modality.LPIS))
        assert lpis[0].max() <= 22 and lpis[1].max() <= 30 and lpis[2].max() <= 45
        dsm, dtm = read(patch_path(root, patch_id, Modality.DEM_ELEV))
        assert np.all(dsm >= dtm) and 100 < dtm.min() and dtm.max() < 900
        s1 = read(patch_path(root, patch_id, Modality.SENTINEL1_ASC_TS))
        assert 0.0001 < s1.min() and s1.max() < 1.0
        mask = read(patch_path(root, patch_id, Modality.SENTINEL2_MSK))
        assert mask.max() <= 100
        spot = read(patch_path(root, patch_id, Modality.SPOT_RGBI))
        assert 100 < spot.mean() < 3000


def test_georeferencing_is_shared_by_all_modalities(
    dataset: SynthSummary, file_info: dict[tuple[str, Modality], FileInfo]
) -> None:
    root = dataset.root
    footprints = read_gpkg(root, SPLIT_GPKG).set_index("patch_id").geometry
    assert footprints.crs.to_epsg() == 2154
    bounds_by_patch = {}
    for patch_id in dataset.all_patch_ids:
        all_bounds = []
        for m in Modality:
            info = file_info[patch_id, m]
            assert info.crs == DEFAULT_CRS
            t = info.transform
            assert t.b == 0 and t.d == 0 and t.e < 0 < t.a
            all_bounds.append(info.bounds)
        bounds = np.array(all_bounds)
        np.testing.assert_allclose(bounds, bounds[:1].repeat(len(bounds), 0), atol=1e-6)
        west, south, east, north = bounds[0]
        assert east - west == pytest.approx(PATCH_SIZE_M) == north - south
        assert 300_000 <= west <= 1_100_000 and 6_200_000 <= south <= 7_000_000
        np.testing.assert_allclose(footprints[patch_id].bounds, bounds[0], atol=1e-6)
        bounds_by_patch[patch_id] = bounds[0]
    # (row, col) grid: columns go east, rows go south
    for patch_id, (west, _, _, north) in bounds_by_patch.items():
        roi, row_col = patch_id.rsplit("_", 1)
        row, col = map(int, row_col.split("-"))
        west0, _, _, north0 = bounds_by_patch[f"{roi}_1-1"]
        assert west == pytest.approx(west0 + (col - 1) * PATCH_SIZE_M)
        assert north == pytest.approx(north0 - (row - 1) * PATCH_SIZE_M)
    origins = {tuple(bounds_by_patch[f"{roi_of(p)}_1-1"][[0, 3]]) for p in bounds_by_patch}
    assert len(origins) == len(DOMAINS) * NUM_ROIS


# ---------------------------------------------------------------------------------------------
# dates and metadata
# ---------------------------------------------------------------------------------------------


def test_time_series_lengths_match_dates(
    dataset: SynthSummary, file_info: dict[tuple[str, Modality], FileInfo]
) -> None:
    root = dataset.root
    dates = {m: dates_by_patch(root, m) for m in TS_DATES_GPKG}
    assert dates[Modality.SENTINEL2_TS] == dates[Modality.SENTINEL2_MSK]
    for m, (num_bands, _) in EXPECTED_FORMAT.items():
        if m not in dates:
            continue
        lengths_by_roi = defaultdict(set)
        for patch_id, patch_dates in dates[m].items():
            assert file_info[patch_id, m].count == num_bands * len(patch_dates)
            year = int(patch_id[5:9])
            parsed = [datetime.strptime(d, "%Y%m%d").date() for d in patch_dates]
            assert parsed == sorted(set(parsed))
            assert all(d.year == year for d in parsed)
            assert 6 <= len(parsed) <= 14
            lengths_by_roi[roi_of(patch_id)].add(tuple(patch_dates))
        assert all(len(v) == 1 for v in lengths_by_roi.values())  # shared by a ROI's patches
        assert len({len(next(iter(v))) for v in lengths_by_roi.values()}) > 1  # T varies
    s1a = {roi_of(p): len(d) for p, d in dates[Modality.SENTINEL1_ASC_TS].items()}
    s1d = {roi_of(p): len(d) for p, d in dates[Modality.SENTINEL1_DESC_TS].items()}
    assert s1a != s1d  # orbits drawn independently


def test_json_keys_start_at_one(dataset: SynthSummary) -> None:
    frame = read_gpkg(dataset.root, TS_DATES_GPKG[Modality.SENTINEL2_TS])
    obj = json.loads(frame["acquisition_dates"].iloc[0])
    assert list(obj) == [str(i) for i in range(1, len(obj) + 1)]


def test_single_date_gpkgs(dataset: SynthSummary) -> None:
    for modality, name in SINGLE_DATE_GPKGS.items():
        frame = read_gpkg(dataset.root, name)
        assert list(frame.columns) == ["patch_id", "date", "geometry"]
        assert frame.crs.to_epsg() == 2154
        assert set(frame["patch_id"]) == set(dataset.all_patch_ids)
        for patch_id, value in zip(frame["patch_id"], frame["date"], strict=True):
            assert re.fullmatch(r"\d{8}", value)
            if modality is Modality.AERIAL_PAN:
                assert value.startswith("195") and 1 <= int(value[4:6]) <= 12
            else:
                parsed = datetime.strptime(value, "%Y%m%d").date()
                assert abs(parsed.year - int(patch_id[5:9])) <= 1


def test_split_1_follows_test_domains(dataset: SynthSummary) -> None:
    frame = read_gpkg(dataset.root, SPLIT_GPKG)
    assert list(frame.columns) == ["patch_id", *SPLIT_COLUMNS, "geometry"]
    for column in SPLIT_COLUMNS:
        assert set(frame[column]) <= {"train", "valid", "test"}
    domain = frame["patch_id"].str.split("-").str[0]
    is_test = frame["split_1"] == "test"
    assert (is_test == domain.isin(TEST_DOMAINS)).all()
    for d in set(domain[~is_test]):
        assert set(frame.loc[domain == d, "split_1"]) == {"train", "valid"}
    for api, value in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert set(dataset.patch_ids[api]) == set(frame.loc[frame["split_1"] == value, "patch_id"])


def check_csvs(root: Path, delimiter: str, patch_ids: dict[str, tuple[str, ...]]) -> None:
    csv_dir = root / CSV_DIR
    header = ["patch_id", *sorted(m.value for m in Modality)]
    assert header[1:4] == ["AERIAL-RLT_PAN", "AERIAL_LABEL-COSIA", "AERIAL_RGBI"]
    for split, api in (("train", "train"), ("valid", "val"), ("test", "test")):
        raw = (csv_dir / CSV_NAMES[split]).read_bytes()
        assert b"\r" not in raw
        rows = list(csv.reader(raw.decode().splitlines(), delimiter=delimiter))
        assert rows[0] == header
        assert [r[0] for r in rows[1:]] == list(patch_ids[api])
        for row in rows[1:]:
            for column, cell in zip(header[1:], row[1:], strict=True):
                assert cell.startswith("../")
                path = (csv_dir / cell).resolve()
                assert path.is_file()
                assert path == patch_path(root, row[0], Modality(column)).resolve()


def test_csv_paths_resolve(dataset: SynthSummary) -> None:
    check_csvs(dataset.root, ",", dataset.patch_ids)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"aerial_px": AERIAL_PX, "domains": ["D006-2020"], "num_rois": 1,
              "patches_per_roi": (1, 2), "csv_delimiter": ";"}  # fmt: skip
    first = make_synthetic_flairhub(tmp_path / "a", seed=7, **kwargs)
    second = make_synthetic_flairhub(tmp_path / "b", seed=7, **kwargs)
    other = make_synthetic_flairhub(tmp_path / "c", seed=8, **kwargs)
    assert first.patch_ids == second.patch_ids
    assert file_digests(first.root) == file_digests(second.root)
    for name in (*TS_DATES_GPKG.values(), *SINGLE_DATE_GPKGS.values(), SPLIT_GPKG):
        pd.testing.assert_frame_equal(read_gpkg(first.root, name), read_gpkg(second.root, name))
    for name in CSV_NAMES.values():
        assert (first.root / CSV_DIR / name).read_text() == (
            second.root / CSV_DIR / name
        ).read_text()
    check_csvs(first.root, ";", dict(first.patch_ids))

    assert file_digests(first.root).values() != file_digests(other.root).values()
    aerial_a = read(patch_path(first.root, first.all_patch_ids[0], Modality.AERIAL_RGBI))
    aerial_c = read(patch_path(other.root, other.all_patch_ids[0], Modality.AERIAL_RGBI))
    assert not np.array_equal(aerial_a, aerial_c)


# ---------------------------------------------------------------------------------------------
# learnable content
# ---------------------------------------------------------------------------------------------


def block_mean(array: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (size, size) mean over equal blocks (H divisible by size at 64 px)."""
    h = array.shape[0] // size
    return array.reshape(size, h, size, h).mean(axis=(1, 3))


def test_crops_look_alike_from_the_air_but_differ_in_s2(dataset: SynthSummary) -> None:
    root = dataset.root
    s2_dates = dates_by_patch(root, Modality.SENTINEL2_TS)
    colour_sum: dict[tuple[int, int], np.ndarray] = defaultdict(lambda: np.zeros(4))
    colour_count: dict[tuple[int, int], int] = defaultdict(int)
    ndvi_obs: dict[int, list[tuple[int, float]]] = defaultdict(list)  # crop -> (doy, ndvi)
    size = dataset.px_by_modality[Modality.SENTINEL2_TS]
    for patch_id in dataset.all_patch_ids:
        aerial = read(patch_path(root, patch_id, Modality.AERIAL_RGBI)).astype(float)
        cosia = read(patch_path(root, patch_id, Modality.COSIA))[0]
        crop = read(patch_path(root, patch_id, Modality.LPIS))[0]
        assert np.all(np.isin(cosia[crop != 22], (9, 10)))
        for c in np.unique(crop[crop != 22]):
            for k in (9, 10):
                sel = (crop == c) & (cosia == k)
                colour_sum[c, k] += aerial[:, sel].sum(axis=1)
                colour_count[c, k] += int(sel.sum())
        s2 = read(patch_path(root, patch_id, Modality.SENTINEL2_TS)).astype(float)
        s2 = s2.reshape(-1, 10, size, size)  # (T, C, S, S)
        mask = read(patch_path(root, patch_id, Modality.SENTINEL2_MSK))
        clear = (mask[0::2] <= 1) & (mask[1::2] <= 1)  # (T, S, S)
        ndvi = (s2[:, B08] - s2[:, B04]) / (s2[:, B08] + s2[:, B04])
        doys = [datetime.strptime(d, "%Y%m%d").timetuple().tm_yday for d in s2_dates[patch_id]]
        for c in (WHEAT, MAIZE):
            pure = block_mean((crop == c).astype(float), size) > 0.99
            for t, doy in enumerate(doys):
                ndvi_obs[c] += [(doy, v) for v in ndvi[t][pure & clear[t]]]

    # aerial: same COSIA class -> same colour whatever the crop
    means = {key: colour_sum[key] / n for key, n in colour_count.items() if n >= 1500}
    crops_9 = [c for (c, k) in means if k == 9]
    assert len(crops_9) >= 3
    spread = max(np.abs(means[a, 9] - means[b, 9]).max() for a in crops_9 for b in crops_9)
    assert spread < 4.0
    crops_10 = [c for (c, k) in means if k == 10]
    assert crops_10 and np.abs(means[crops_10[0], 10] - means[crops_9[0], 9]).max() > 20

    # S2: wheat greens up in spring, maize in summer
    def season_mean(c: int, lo: int, hi: int) -> float:
        values = [v for doy, v in ndvi_obs[c] if lo <= doy < hi]
        assert len(values) >= 3, (c, lo, hi)
        return float(np.mean(values))

    assert season_mean(WHEAT, 80, 160) - season_mean(MAIZE, 80, 160) > 0.2
    assert season_mean(MAIZE, 180, 250) - season_mean(WHEAT, 180, 250) > 0.2


def test_some_dates_cloudy_some_pass_the_filter(dataset: SynthSummary) -> None:
    root = dataset.root
    num_kept, num_dropped = 0, 0
    cloudy_blue, clear_blue = [], []
    for patch_id in dataset.all_patch_ids:
        mask = read(patch_path(root, patch_id, Modality.SENTINEL2_MSK))
        s2 = read(patch_path(root, patch_id, Modality.SENTINEL2_TS)).astype(float)
        kept = passes_filter(mask)
        assert kept.sum() >= 3
        num_kept += int(kept.sum())
        num_dropped += int((~kept).sum())
        blue = s2[0::10]  # B02 per date, (T, S, S)
        cloud, snow = mask[1::2], mask[0::2]
        cloudy_blue += blue[cloud >= 50].tolist()
        clear_blue += blue[(cloud == 0) & (snow == 0)].tolist()
    assert num_kept > 0 and num_dropped > 0
    assert np.mean(cloudy_blue) - np.mean(clear_blue) > 1000  # clouds are bright
