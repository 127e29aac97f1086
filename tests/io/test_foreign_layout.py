"""The reader on a dataset in the official layout that flairkit did not write.

Everything here is written with rasterio and geopandas straight from the specification
(shared/flairhub-format.md sections 1-3), making choices flairkit's generator does not make:
toy-dataset CSV names with ``;``, date keys from "0", band-interleaved tiled DEFLATE S2,
float32 S1 with a different date count per orbit, no SPOT/aerial date tables, a split
GeoPackage with only ``split_toy``, 32 px aerial and 2 px Sentinel patches.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine
from shapely.geometry import box

from flairkit.config import ModalityConfig, PreprocessConfig
from flairkit.data.datasets import PatchDataset
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import read_patch
from flairkit.modalities import Modality, Task
from flairkit.sample import collate
from flairkit.transforms.preprocess import Preprocessor

PATCH_M = 102.4
#: Patch side in pixels per folder suffix (aerial 32 px = 3.2 m, Sentinel 2 px = 51.2 m).
PX = {
    "AERIAL_RGBI": 32,
    "AERIAL-RLT_PAN": 16,
    "DEM_ELEV": 32,
    "SPOT_RGBI": 4,
    "SENTINEL2_TS": 2,
    "SENTINEL2_MSK-SC": 2,
    "SENTINEL1-ASC_TS": 2,
    "SENTINEL1-DESC_TS": 2,
    "AERIAL_LABEL-COSIA": 32,
    "ALL_LABEL-LPIS": 32,
}
#: (bands per date, dtype, rasterio creation options) per folder suffix.
FORMAT = {
    "AERIAL_RGBI": (
        4,
        "uint8",
        {"tiled": True, "blockxsize": 16, "blockysize": 16, "compress": "deflate"},
    ),
    "AERIAL-RLT_PAN": (1, "uint8", {}),
    "DEM_ELEV": (2, "float32", {"compress": "deflate", "predictor": 3}),
    "SPOT_RGBI": (4, "uint16", {"interleave": "band"}),
    "SENTINEL2_TS": (
        10,
        "uint16",
        {
            "interleave": "band",
            "tiled": True,
            "blockxsize": 16,
            "blockysize": 16,
            "compress": "deflate",
        },
    ),
    "SENTINEL2_MSK-SC": (2, "uint8", {"interleave": "pixel", "compress": "lzw"}),
    "SENTINEL1-ASC_TS": (2, "float32", {"interleave": "band"}),
    "SENTINEL1-DESC_TS": (2, "float32", {"interleave": "pixel"}),
    "AERIAL_LABEL-COSIA": (1, "uint8", {"compress": "lzw"}),
    "ALL_LABEL-LPIS": (3, "uint8", {"compress": "lzw", "interleave": "band"}),
}
TIME_SERIES = ("SENTINEL2_TS", "SENTINEL2_MSK-SC", "SENTINEL1-ASC_TS", "SENTINEL1-DESC_TS")
DATE_TABLES = {
    "SENTINEL2_TS": "GLOBAL_SENTINEL2_MTD_DATES.gpkg",
    "SENTINEL1-ASC_TS": "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg",
    "SENTINEL1-DESC_TS": "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg",
}
#: Patches: (domain-year, ROI, row-col, split_toy value, (x, y) of the north-west corner).
PATCHES = [
    ("D044-2020", "NF-S1-N14", "5-10", "train", (355_000.0, 6_690_000.0)),
    ("D044-2020", "NF-S1-N14", "5-11", "valid", (355_102.4, 6_690_000.0)),
    ("D085-2019", "UA-S1-U19", "10-22", "test", (330_000.0, 6_620_000.0)),
]
#: Sentinel dates per ROI (all patches of a ROI share them, spec section 1.5).
DATES = {
    "NF-S1-N14": {
        "SENTINEL2_TS": ["20200110", "20200302", "20200415", "20200601", "20200720", "20201125"],
        "SENTINEL1-ASC_TS": ["20200105", "20200203", "20200501", "20200815", "20201201"],
        "SENTINEL1-DESC_TS": ["20200111", "20200404", "20200909", "20201010"],
    },
    "UA-S1-U19": {
        "SENTINEL2_TS": ["20190214", "20190515", "20190812", "20191030"],
        "SENTINEL1-ASC_TS": ["20190301", "20190601", "20190901"],
        "SENTINEL1-DESC_TS": ["20190120", "20190720"],
    },
}
#: S2 dates each ROI's mask makes the benchmark filter drop (the others are clear).
CLOUDY = {"NF-S1-N14": {1: "cloud", 3: "snow", 4: "cloud"}, "UA-S1-U19": {2: "cloud"}}
KEPT = {"NF-S1-N14": [0, 2, 5], "UA-S1-U19": [0, 1, 3]}
CSV_NAMES = {
    "train": "FLAIR-HUB_TOY-DATASET_TRAIN.csv",
    "valid": "FLAIR-HUB_TOY-DATASET_VALID.csv",
    "test": "FLAIR-HUB_TOY-DATASET_TEST.csv",
}


@dataclass(frozen=True)
class Toy:
    root: Path
    arrays: dict[
        str, dict[str, np.ndarray]
    ]  # patch id -> folder suffix -> (bands, H, W) as written

    def series(self, patch_id: str, suffix: str) -> np.ndarray:
        """The written stack as (T, C, H, W)."""
        bands = FORMAT[suffix][0]
        array = self.arrays[patch_id][suffix]
        return array.reshape(-1, bands, *array.shape[1:])


def patch_id(domain_year: str, roi: str, rc: str) -> str:
    return f"{domain_year}_{roi}_{rc}"


def relpath(domain_year: str, suffix: str, roi: str, rc: str) -> str:
    if suffix == "AERIAL-RLT_PAN":
        domain_year = domain_year.split("-")[0] + "-195X"
    folder = f"{domain_year}_{suffix}"
    return f"{folder}/{roi}/{folder}_{roi}_{rc}.tif"


def make_array(rng: np.random.Generator, suffix: str, roi: str) -> np.ndarray:
    bands, dtype, _ = FORMAT[suffix]
    px = PX[suffix]
    if suffix in TIME_SERIES:
        key = "SENTINEL2_TS" if suffix == "SENTINEL2_MSK-SC" else suffix
        bands *= len(DATES[roi][key])
    shape = (bands, px, px)
    if suffix == "SENTINEL2_MSK-SC":
        mask = np.zeros((bands // 2, 2, px, px), np.uint8)
        mask[:, :, :, :] = rng.integers(0, 2, mask.shape)  # <= 1: clear
        for t, kind in CLOUDY[roi].items():
            if kind == "cloud":
                mask[t, 1, 0, 1] = 80  # one pixel of four: 25 % covered
            else:
                mask[t, 0] = 50
        return mask.reshape(shape)
    if suffix == "DEM_ELEV":
        dtm = 200 + rng.random((px, px), np.float32) * 50
        return np.stack([dtm + rng.random((px, px), np.float32) * 20, dtm]).astype(np.float32)
    if dtype == "float32":
        return rng.gamma(2.0, 0.05, shape).astype(np.float32)
    if suffix == "AERIAL_LABEL-COSIA":
        return rng.integers(0, 19, shape, dtype=np.uint8)
    if suffix == "ALL_LABEL-LPIS":
        return np.stack([rng.integers(0, n, (px, px), dtype=np.uint8) for n in (23, 31, 46)])
    high = 255 if dtype == "uint8" else 12_000
    return rng.integers(0, high, shape, endpoint=True).astype(dtype)


def write_tif(path: Path, array: np.ndarray, west: float, north: float, options: dict) -> None:
    count, height, width = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype.name,
        crs=CRS.from_epsg(2154),
        transform=Affine(PATCH_M / width, 0, west, 0, -PATCH_M / height, north),
        **options,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)


def write_gpkg(path: Path, columns: dict[str, list[str]], footprints: list[box]) -> None:
    frame = gpd.GeoDataFrame(columns, geometry=footprints, crs="EPSG:2154")
    frame.to_file(path, driver="GPKG", layer=path.stem)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    root = tmp_path_factory.mktemp("toy") / "FLAIR-HUB_TOY"
    rng = np.random.default_rng(2025)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    rows: dict[str, list[list[str]]] = {split: [] for split in CSV_NAMES}
    footprints = []
    for domain_year, roi, rc, split, (west, north) in PATCHES:
        pid = patch_id(domain_year, roi, rc)
        arrays[pid] = {}
        for suffix in PX:
            array = make_array(rng, suffix, roi)
            write_tif(
                root / relpath(domain_year, suffix, roi, rc), array, west, north, FORMAT[suffix][2]
            )
            arrays[pid][suffix] = array
        rows[split].append([pid, *(f"../{relpath(domain_year, s, roi, rc)}" for s in sorted(PX))])
        footprints.append(box(west, north - PATCH_M, west + PATCH_M, north))
    meta = root / "GLOBAL_ALL_MTD"
    meta.mkdir()
    ids = [patch_id(d, r, rc) for d, r, rc, *_ in PATCHES]
    for suffix, name in DATE_TABLES.items():
        texts = [
            json.dumps({str(i): d for i, d in enumerate(DATES[roi][suffix])})  # keys from "0"
            for _, roi, *_ in PATCHES
        ]
        write_gpkg(meta / name, {"patch_id": ids, "acquisition_dates": texts}, footprints)
    write_gpkg(
        meta / "GLOBAL_ALL_MTD_SPLIT.gpkg",
        {"patch_id": ids, "split_toy": [p[3] for p in PATCHES]},
        footprints,
    )
    (root / "csv").mkdir()
    for split, name in CSV_NAMES.items():
        with (root / "csv" / name).open("w", newline="") as f:
            writer = csv.writer(f, delimiter=";")
            writer.writerow(["patch_id", *sorted(PX)])
            writer.writerows(rows[split])
    return Toy(root, arrays)


def to_dates(texts: list[str]) -> np.ndarray:
    return np.array([f"{t[:4]}-{t[4:6]}-{t[6:]}" for t in texts], dtype="datetime64[D]")


def offsets_by_hand(texts: list[str]) -> list[float]:
    out = []
    for t in texts:
        d = date(int(t[:4]), int(t[4:6]), int(t[6:]))
        out.append(float((d - date(d.year, 5, 15)).days))
    return out


ALL_IDS = sorted(patch_id(d, r, rc) for d, r, rc, *_ in PATCHES)
SPLIT_OF = {patch_id(d, r, rc): {"valid": "val"}.get(s, s) for d, r, rc, s, _ in PATCHES}
ROI_OF = {patch_id(d, r, rc): r for d, r, rc, *_ in PATCHES}


# -- catalog --------------------------------------------------------------------------------


def test_scan_finds_every_patch_and_the_toy_split(toy: Toy) -> None:
    catalog = Catalog.scan(toy.root)  # "auto": this split table has split_toy only
    assert [r.patch_id for r in catalog] == ALL_IDS
    assert {r.patch_id: r.split for r in catalog} == SPLIT_OF
    assert [r.split for r in Catalog.scan(toy.root, split="split_toy")] == [
        SPLIT_OF[i] for i in ALL_IDS
    ]
    for ref in catalog:
        assert ref.modalities == frozenset(Modality)
        for suffix in PX:
            assert ref.path(Modality(suffix)).is_file()


def test_csv_lists_match_the_scan(
    toy: Toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # paths in the lists are relative to csv/, not to the CWD
    listed = Catalog.open(toy.root / "csv")
    scanned = Catalog.scan(toy.root, split=None)
    assert [r.patch_id for r in listed] == ALL_IDS
    assert {r.patch_id: r.split for r in listed} == SPLIT_OF
    assert listed.root is not None and os.path.samefile(listed.root, toy.root)
    for a, b in zip(listed, scanned, strict=True):
        assert a.modalities == b.modalities == frozenset(Modality)
        for m in Modality:
            assert os.path.samefile(a.path(m), b.path(m))
    one = Catalog.from_csv([toy.root / "csv" / CSV_NAMES["test"]])
    assert [(r.patch_id, r.split) for r in one] == [("D085-2019_UA-S1-U19_10-22", "test")]


# -- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", ALL_IDS)
def test_read_patch_returns_what_was_written(toy: Toy, pid: str) -> None:
    ref = Catalog.scan(toy.root).get(pid)
    raw = read_patch(ref, list(Modality), DatesIndex(toy.root))
    assert raw.patch_id == pid
    for suffix in PX:
        m = Modality(suffix)
        got = raw.arrays[m]
        expected = toy.series(pid, suffix) if suffix in TIME_SERIES else toy.arrays[pid][suffix]
        assert got.dtype == expected.dtype, suffix
        np.testing.assert_array_equal(got, expected, err_msg=suffix)
        assert raw.georefs[m].crs == "EPSG:2154"
        assert raw.georefs[m].width == PX[suffix]
    roi = ROI_OF[pid]
    for suffix in DATE_TABLES:
        np.testing.assert_array_equal(raw.dates[Modality(suffix)], to_dates(DATES[roi][suffix]))
    np.testing.assert_array_equal(
        raw.dates[Modality.SENTINEL2_MSK], to_dates(DATES[roi]["SENTINEL2_TS"])
    )
    _, _, _, _, (west, north) = next(p for p in PATCHES if patch_id(*p[:3]) == pid)
    for georef in raw.georefs.values():
        assert georef.bounds == pytest.approx((west, north - PATCH_M, west + PATCH_M, north))


PREPROCESS = PreprocessConfig(
    inputs={
        Modality.AERIAL_RGBI: ModalityConfig(bands=("NIR", "R", "G")),
        Modality.DEM_ELEV: ModalityConfig(),
        Modality.SENTINEL2_TS: ModalityConfig(norm="none"),
        Modality.SENTINEL1_ASC_TS: ModalityConfig(norm="none"),
        Modality.SENTINEL1_DESC_TS: ModalityConfig(norm="scaling", scale=2.0),
    },
    tasks=(Task.COSIA, Task.LPIS),
    lpis_level=2,
)


def expected_sample_values(toy: Toy, pid: str) -> dict[Modality, np.ndarray]:
    """Model inputs computed by hand from the written arrays and the spec's statistics."""
    aerial = toy.arrays[pid]["AERIAL_RGBI"].astype(np.float64)
    dem = toy.arrays[pid]["DEM_ELEV"].astype(np.float64)
    s2 = toy.series(pid, "SENTINEL2_TS")[KEPT[ROI_OF[pid]]]
    return {
        Modality.AERIAL_RGBI: np.stack(
            [
                (aerial[3] - 106.59) / 39.78,
                (aerial[0] - 105.66) / 52.23,
                (aerial[1] - 111.35) / 45.62,
            ]
        ),
        Modality.DEM_ELEV: np.stack(
            [(dem[0] - 311.06) / 537.55, (dem[0] - dem[1] - 311.06) / 537.55]
        ),
        Modality.SENTINEL2_TS: s2.astype(np.float64),
        Modality.SENTINEL1_ASC_TS: toy.series(pid, "SENTINEL1-ASC_TS").astype(np.float64),
        Modality.SENTINEL1_DESC_TS: toy.series(pid, "SENTINEL1-DESC_TS").astype(np.float64) / 2,
    }


@pytest.mark.parametrize("pid", ALL_IDS)
def test_preprocessor_on_foreign_files(toy: Toy, pid: str) -> None:
    preprocess = Preprocessor(PREPROCESS)
    ref = Catalog.scan(toy.root).get(pid)
    sample = preprocess(read_patch(ref, preprocess.required_modalities, DatesIndex(toy.root)))
    for m, expected in expected_sample_values(toy, pid).items():
        got = sample.inputs[m]
        assert got.dtype == torch.float32, m
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=m.value)
    roi = ROI_OF[pid]
    kept_s2 = [DATES[roi]["SENTINEL2_TS"][i] for i in KEPT[roi]]
    assert sample.dates[Modality.SENTINEL2_TS].tolist() == offsets_by_hand(kept_s2)
    for suffix in ("SENTINEL1-ASC_TS", "SENTINEL1-DESC_TS"):
        assert sample.dates[Modality(suffix)].tolist() == offsets_by_hand(DATES[roi][suffix])
    assert set(sample.dates) == {
        Modality.SENTINEL2_TS,
        Modality.SENTINEL1_ASC_TS,
        Modality.SENTINEL1_DESC_TS,
    }
    np.testing.assert_array_equal(
        sample.labels[Task.COSIA], toy.arrays[pid]["AERIAL_LABEL-COSIA"][0]
    )
    np.testing.assert_array_equal(sample.labels[Task.LPIS], toy.arrays[pid]["ALL_LABEL-LPIS"][1])
    _, _, _, _, (west, north) = next(p for p in PATCHES if patch_id(*p[:3]) == pid)
    assert sample.bounds == pytest.approx((west, north - PATCH_M, west + PATCH_M, north))
    assert sample.crs == "EPSG:2154"


def test_dataset_and_collate_on_foreign_files(toy: Toy) -> None:
    catalog = Catalog.open(toy.root / "csv")
    preprocess = Preprocessor(PREPROCESS)
    dataset = PatchDataset(catalog.refs, preprocess, DatesIndex(toy.root))
    assert len(dataset) == 3
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch.patch_ids == ALL_IDS
    # Every ROI keeps 3 S2 dates; S1-ASC has 5 and 3 dates, S1-DESC 4 and 2: padded to the longest.
    assert batch.inputs[Modality.SENTINEL2_TS].shape == (3, 3, 10, 2, 2)
    assert batch.inputs[Modality.SENTINEL1_ASC_TS].shape == (3, 5, 2, 2, 2)
    assert batch.inputs[Modality.SENTINEL1_DESC_TS].shape == (3, 4, 2, 2, 2)
    assert batch.inputs[Modality.AERIAL_RGBI].shape == (3, 3, 32, 32)
    assert batch.inputs[Modality.DEM_ELEV].shape == (3, 2, 32, 32)
    for i, pid in enumerate(ALL_IDS):
        roi = ROI_OF[pid]
        for m, expected in expected_sample_values(toy, pid).items():
            n = expected.shape[0] if m.spec.is_time_series else None
            got = batch.inputs[m][i, :n] if n is not None else batch.inputs[m][i]
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
            if n is not None:
                assert not batch.pad_masks[m][i, :n].any()
                assert batch.pad_masks[m][i, n:].all()
                assert (batch.inputs[m][i, n:] == 0).all()
                assert (batch.dates[m][i, n:] == 0).all()
        num_asc = len(DATES[roi]["SENTINEL1-ASC_TS"])
        assert batch.dates[Modality.SENTINEL1_ASC_TS][i, :num_asc].tolist() == offsets_by_hand(
            DATES[roi]["SENTINEL1-ASC_TS"]
        )
        assert batch.labels[Task.COSIA].dtype == torch.uint8  # as on disk (Batch docstring)
        np.testing.assert_array_equal(
            batch.labels[Task.LPIS][i].numpy(), toy.arrays[pid]["ALL_LABEL-LPIS"][1]
        )
