"""flairkit check: a clean synthetic copy passes; every damage of the catalogue is found with its
kind and file, and nothing else is reported (shared/flairhub-format.md sections 1.5, 2, 4)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import tifffile
from rasterio.crs import CRS
from rasterio.transform import Affine

from flairkit.check import PROBLEM_KINDS, CheckResult, Problem, check_dataset
from flairkit.check_files import _read_header_with_gdal, inspect_file, read_tiff_header
from flairkit.cli import main
from flairkit.io.catalog import Catalog
from flairkit.io.patches import PatchRef
from flairkit.modalities import METADATA_DIR, SPLIT_GPKG, Modality
from flairkit.synth import SynthSummary


@dataclass(frozen=True)
class Damage:
    """One damaged file: the problem kind expected, and whether the header check finds it."""

    name: str
    kind: str
    path: Path
    patch_id: str | None
    in_header_check: bool


def rewrite(path: Path, change: Callable[[dict, np.ndarray], tuple[dict, np.ndarray]]) -> None:
    """Rewrite a GeoTIFF with its own profile and data, one thing changed."""
    with rasterio.open(path) as src:
        profile, data = src.profile.copy(), src.read()
    profile, data = change(profile, data)
    profile.update(count=data.shape[0], dtype=data.dtype.name, height=data.shape[1])
    profile.update(width=data.shape[2])
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def rewrite_dates(
    root: Path, modality: Modality, change: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]
) -> None:
    path = root / METADATA_DIR / str(modality.spec.dates_gpkg)
    frame = change(gpd.read_file(path))
    path.unlink()
    frame.to_file(path, layer=path.stem, driver="GPKG")


def smaller(profile: dict, data: np.ndarray) -> tuple[dict, np.ndarray]:
    """Half the pixels over the same ground: only the pixel count is wrong."""
    t = profile["transform"]
    profile["transform"] = Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f)
    return profile, np.ascontiguousarray(data[:, ::2, ::2])


def set_pixel(value: float, band: int = 0) -> Callable:
    def change(profile: dict, data: np.ndarray) -> tuple[dict, np.ndarray]:
        data = data.copy()
        data[band, 0, 0] = value
        return profile, data

    return change


def build_damages(root: Path) -> list[Damage]:
    """Damage a copy of the synthetic dataset: one damage per patch, so none hides another."""
    refs = Catalog.scan(root, split=None).refs
    damages: list[Damage] = []

    def damage(
        name: str, kind: str, ref: PatchRef | None, modality: Modality | None,
        change: Callable[[Path], None], header: bool = True, path: Path | None = None,
    ) -> None:  # fmt: skip
        target = path if path is not None else refs_path(ref, modality)
        change(target)
        damages.append(Damage(name, kind, target, ref.patch_id if ref else None, header))

    def refs_path(ref: PatchRef | None, modality: Modality | None) -> Path:
        assert ref is not None and modality is not None
        return ref.path(modality)

    def truncate(fraction: float) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(p.read_bytes()[: int(p.stat().st_size * fraction)])

    def corrupt_first_strip(p: Path) -> None:
        rewrite(p, lambda prof, d: ({**prof, "compress": "deflate"}, d))
        offset = tifffile.TiffFile(p).pages.first.dataoffsets[0]
        raw = bytearray(p.read_bytes())
        raw[offset : offset + 2] = b"\x00\x00"  # the zlib stream header
        p.write_bytes(bytes(raw))

    it = iter(refs)
    damage("missing file", "missing", next(it), Modality.AERIAL_RGBI, lambda p: p.unlink())
    damage("zero-byte file", "empty", next(it), Modality.DEM_ELEV, lambda p: p.write_bytes(b""))
    damage("text file", "not_tiff", next(it), Modality.SPOT_RGBI, lambda p: p.write_text("hi\n"))
    damage(
        "folder in place of a file", "not_tiff", next(it), Modality.SENTINEL1_DESC_TS,
        lambda p: (p.unlink(), p.mkdir()),
    )  # fmt: skip
    damage("truncated data", "truncated", next(it), Modality.COSIA, truncate(0.6))
    damage(
        "garbage after the TIFF magic", "unreadable", next(it), Modality.LPIS,
        lambda p: p.write_bytes(b"II*\x00" + bytes(range(256)) * 4),
    )  # fmt: skip
    damage(
        "3 aerial bands", "band_count", next(it), Modality.AERIAL_RGBI,
        lambda p: rewrite(p, lambda prof, d: (prof, d[:3])),
    )  # fmt: skip
    damage(
        "int16 DEM", "dtype", next(it), Modality.DEM_ELEV,
        lambda p: rewrite(p, lambda prof, d: (prof, d.astype(np.int16))),
    )  # fmt: skip
    damage("half-size label", "size", next(it), Modality.COSIA, lambda p: rewrite(p, smaller))
    damage(
        "UTM CRS", "crs", next(it), Modality.SPOT_RGBI,
        lambda p: rewrite(p, lambda prof, d: ({**prof, "crs": CRS.from_epsg(32631)}, d)),
    )  # fmt: skip
    damage(
        "aerial shifted 10 m east", "footprint", next(it), Modality.AERIAL_RGBI,
        lambda p: rewrite(
            p, lambda prof, d: ({**prof, "transform": prof["transform"] @ Affine.translation(
                10 / prof["transform"].a, 0)}, d)
        ),
    )  # fmt: skip
    damage(
        "S2 with one date fewer than its dates row", "dates_mismatch", next(it),
        Modality.SENTINEL2_TS, lambda p: rewrite(p, lambda prof, d: (prof, d[:-10])),
    )  # fmt: skip
    ref = next(it)
    damage(
        "S1-ASC patch without a dates row", "dates_missing", ref, Modality.SENTINEL1_ASC_TS,
        lambda p: rewrite_dates(
            root, Modality.SENTINEL1_ASC_TS, lambda f: f[f["patch_id"] != ref.patch_id]
        ),
    )  # fmt: skip
    ref = next(it)
    desc_gpkg = root / METADATA_DIR / str(Modality.SENTINEL1_DESC_TS.spec.dates_gpkg)

    def bad_row(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        frame.loc[frame["patch_id"] == ref.patch_id, "acquisition_dates"] = '{"1": "2021-13-45"}'
        return frame

    damage(
        "unparsable dates row", "dates_invalid", ref, None,
        lambda p: rewrite_dates(root, Modality.SENTINEL1_DESC_TS, bad_row), path=desc_gpkg,
    )  # fmt: skip
    damage(
        "NaN in the DEM", "nonfinite", next(it), Modality.DEM_ELEV,
        lambda p: rewrite(p, set_pixel(np.nan, band=1)), header=False,
    )  # fmt: skip
    damage(
        "COSIA label 25", "label_range", next(it), Modality.COSIA,
        lambda p: rewrite(p, set_pixel(25)), header=False,
    )  # fmt: skip
    damage(
        "LPIS level-2 label 40", "label_range", next(it), Modality.LPIS,
        lambda p: rewrite(p, set_pixel(40, band=1)), header=False,
    )  # fmt: skip
    damage(
        "S2 mask value 200", "mask_range", next(it), Modality.SENTINEL2_MSK,
        lambda p: rewrite(p, set_pixel(200, band=3)), header=False,
    )  # fmt: skip
    damage(
        "corrupt deflate strip", "undecodable", next(it), Modality.COSIA,
        corrupt_first_strip, header=False,
    )  # fmt: skip
    damage(
        "non-UTF-8 CSV list", "csv_list", None, None,
        lambda p: p.write_bytes("patch_id,AERIAL_RGBI\nD006-2020_\xe9t\xe9_1-1,x\n".encode("latin-1")),
        path=root / "csv" / "FLAIR-HUB_VALID.csv",
    )  # fmt: skip
    damage(
        "split table overwritten with text", "split_file", None, None,
        lambda p: p.write_text("not a GeoPackage\n"), path=root / METADATA_DIR / SPLIT_GPKG,
    )  # fmt: skip
    # Label 0 is a real class (COSIA "building", spec section 4.3): never an error.
    rewrite(next(it).path(Modality.COSIA), set_pixel(0))
    return damages


@pytest.fixture(scope="module")
def damaged(
    synthetic: SynthSummary, module_tmp: Path
) -> tuple[list[Damage], CheckResult, CheckResult, CheckResult]:
    """The damaged copy checked three times: header (threads and processes) and deep."""
    root = module_tmp / "damaged"
    shutil.copytree(synthetic.root, root)
    damages = build_damages(root)
    header_threads = check_dataset(root, workers=2, executor="thread")
    header_processes = check_dataset(root, workers=2, executor="process")
    assert header_threads.problems == header_processes.problems
    deep = check_dataset(root, deep=True, workers=2)
    return damages, header_threads, deep, header_processes


@pytest.fixture(scope="module")
def damages(damaged: tuple) -> list[Damage]:
    return damaged[0]


def found(result: CheckResult, damage: Damage) -> list[Problem]:
    return [p for p in result.problems if p.path == str(damage.path) and p.kind == damage.kind]


def test_clean_copy_passes(synthetic: SynthSummary, tmp_path: Path) -> None:
    root = tmp_path / "clean"
    shutil.copytree(synthetic.root, root)
    result = check_dataset(root, deep=True, workers=2)
    assert result.problems == ()
    assert result.ok
    assert (result.num_patches, result.num_files) == (32, 320)
    assert result.expected["crs"] == "EPSG:2154"
    assert result.expected["px"]["AERIAL_RGBI"] == [64, 64]
    (note,) = result.notes  # synthetic sizes are not the official ones: said once
    assert "AERIAL_RGBI 64 x 64 (official 512)" in note


CATALOGUE = [
    "missing file", "zero-byte file", "text file", "folder in place of a file", "truncated data",
    "garbage after the TIFF magic", "3 aerial bands", "int16 DEM", "half-size label", "UTM CRS",
    "aerial shifted 10 m east", "S2 with one date fewer than its dates row",
    "S1-ASC patch without a dates row", "unparsable dates row", "NaN in the DEM",
    "COSIA label 25", "LPIS level-2 label 40", "S2 mask value 200", "corrupt deflate strip",
    "non-UTF-8 CSV list", "split table overwritten with text",
]  # fmt: skip


@pytest.mark.parametrize("name", CATALOGUE)
def test_damage_is_found(damaged: tuple, name: str) -> None:
    damages, header, deep, _ = damaged
    (damage,) = [d for d in damages if d.name == name]
    assert damage.kind in PROBLEM_KINDS
    problems = found(deep, damage)
    assert len(problems) == 1, deep.problems
    if damage.patch_id is not None:
        assert problems[0].patch_id == damage.patch_id
    assert problems[0].detail
    # Header-level damages are found without --deep; value damages only with it.
    assert bool(found(header, damage)) == damage.in_header_check


def test_catalogue_is_complete_and_nothing_else_is_reported(damaged: tuple) -> None:
    damages, header, deep, _ = damaged
    assert sorted(d.name for d in damages) == sorted(CATALOGUE)
    expected = {(d.kind, str(d.path)) for d in damages}
    assert {(p.kind, p.path) for p in deep.problems} == expected
    assert {(p.kind, p.path) for p in header.problems} == {
        (d.kind, str(d.path)) for d in damages if d.in_header_check
    }


def test_details_name_the_numbers(damaged: tuple) -> None:
    damages, _, deep, _ = damaged
    detail = {d.name: found(deep, d)[0].detail for d in damages}
    assert detail["3 aerial bands"] == "3 bands, expected 4 (R, G, B, NIR)"
    assert detail["int16 DEM"] == "int16, expected float32 or float64"
    assert detail["half-size label"] == "32 x 32 px, expected 64 x 64 px"
    assert detail["UTM CRS"] == "EPSG:32631, expected EPSG:2154"
    assert "differ by 10.00 m from" in detail["aerial shifted 10 m east"]
    assert detail["COSIA label 25"] == "1 pixels outside 0..18 (values 25)"
    assert detail["LPIS level-2 label 40"] == "level 2: 1 pixels outside 0..30 (values 40)"
    assert detail["NaN in the DEM"] == "1 NaN/inf values in DTM"
    # band 4 of the mask = date 2, channel 2 (cloud): date-major layout, spec section 2.2
    assert detail["S2 mask value 200"] == "date 2 CLOUD: 1 pixels outside 0..100 (values 200)"
    assert "dates table lists" in detail["S2 with one date fewer than its dates row"]


def test_split_and_list_tables(synthetic: SynthSummary, tmp_path: Path) -> None:
    """A patch missing from the split table, a patch listed twice, a missing dates table."""
    root = tmp_path / "copy"
    shutil.copytree(synthetic.root, root)
    split = root / METADATA_DIR / SPLIT_GPKG
    frame = gpd.read_file(split)
    dropped = frame["patch_id"].iloc[0]
    frame = frame.iloc[1:]
    split.unlink()
    frame.to_file(split, layer=split.stem, driver="GPKG")
    train, test = root / "csv" / "FLAIR-HUB_TRAIN.csv", root / "csv" / "FLAIR-HUB_TEST.csv"
    test.write_text(test.read_text() + train.read_text().splitlines()[1] + "\n")
    dates = root / METADATA_DIR / str(Modality.SENTINEL2_TS.spec.dates_gpkg)
    dates.unlink()
    result = check_dataset(root, workers=1, executor="thread")
    got = {(p.kind, p.path, p.patch_id) for p in result.problems}
    twice = train.read_text().splitlines()[1].split(",")[0]
    assert got == {
        ("split_missing", str(split), dropped),
        ("csv_list", str(train), twice),  # lists are read in name order: TEST, TRAIN, VALID
        ("dates_file", str(dates), None),
    }
    (listed,) = [p.detail for p in result.problems if p.kind == "csv_list"]
    assert listed == f"patch listed again (first in {test})"
    (message,) = [p.detail for p in result.problems if p.kind == "dates_file"]
    assert message == "missing (needed by SENTINEL2_TS, SENTINEL2_MSK-SC)"


def test_csv_list_root(synthetic: SynthSummary, tmp_path: Path) -> None:
    """ROOT as a folder of CSV lists: the listed files are checked; a missing one is found."""
    root = tmp_path / "copy"
    shutil.copytree(synthetic.root, root)
    ref = Catalog.from_csv([root / "csv" / "FLAIR-HUB_TEST.csv"]).refs[0]
    ref.path(Modality.DEM_ELEV).unlink()
    result = check_dataset(root / "csv", workers=1, executor="thread")
    assert result.num_patches == 32
    assert [(p.kind, p.path) for p in result.problems] == [
        ("missing", str(ref.path(Modality.DEM_ELEV)))
    ]


def test_cli(synthetic: SynthSummary, damaged: tuple, tmp_path: Path, capsys) -> None:
    damages, header, _, _ = damaged
    report = tmp_path / "report.json"
    assert main(["check", str(synthetic.root), "--report", str(report)]) == 0
    captured = capsys.readouterr()
    assert "32 patches, 320 files" in captured.out and "no problems found" in captured.out
    assert "file/s" not in captured.err  # stderr is not a terminal: no bar unless asked
    assert json.loads(report.read_text())["ok"] is True
    assert main(["check", str(synthetic.root), "--report", str(report), "--progress"]) == 0
    assert "320/320" in capsys.readouterr().err  # the bar: files done, rate, ETA

    damaged_root = damages[0].path.parents[2]
    assert main(["check", str(damaged_root), "--report", str(report), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert f"{len(header.problems)} problems of {len(header.counts())} kinds:" in out
    assert "  dtype (1): wrong data type" in out
    assert f"    {[d for d in damages if d.kind == 'dtype'][0].path}: int16, expected" in out
    written = json.loads(report.read_text())
    assert written["counts"] == header.counts() and written["ok"] is False
    assert not list(tmp_path.glob(".report.json.*"))  # the temporary file was renamed

    assert main(["check", str(damaged_root), "--json", "--report", str(report)]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"] == written["counts"]
    assert len(printed["problems"]) == len(header.problems)

    # Bad usage: exit 2, one line naming the file; an input is never overwritten.
    assert main(["check", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    csv_list = synthetic.root / "csv" / "FLAIR-HUB_TRAIN.csv"
    before = csv_list.read_bytes()
    assert main(["check", str(synthetic.root), "--report", str(csv_list)]) == 2
    err = capsys.readouterr().err
    assert f"{csv_list}: exists and is not a flairkit check report" in err
    assert csv_list.read_bytes() == before
    assert main(["check", str(synthetic.root), "--workers", "0"]) == 2


#: Creation options of the layouts the direct header reader must read as GDAL does.
LAYOUTS = {
    "strips": {},
    "band-interleaved": {"interleave": "band"},
    "tiled": {"tiled": True, "blockxsize": 16, "blockysize": 16},
    "deflate": {"compress": "deflate"},
    "bigtiff": {"bigtiff": "YES"},
    "big-endian": {"endianness": "BIG"},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_direct_header_reader_matches_gdal(tmp_path: Path, layout: str) -> None:
    transform = Affine(1.6, 0, 651_200.0, 0, -1.6, 6_862_400.0)
    for dtype, count in (("uint8", 4), ("float64", 2), ("int16", 1), ("uint16", 180)):
        path = tmp_path / f"{dtype}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=64, height=32, count=count, dtype=dtype,
            crs=CRS.from_epsg(2154), transform=transform, **LAYOUTS[layout],
        ) as dst:  # fmt: skip
            dst.write(np.ones((count, 32, 64), dtype))
        direct = read_tiff_header(str(path))
        gdal, _ = _read_header_with_gdal(str(path))
        assert direct.count == count and direct.dtype == dtype
        assert (direct.width, direct.height, direct.crs) == (64, 32, "EPSG:2154")
        assert direct.transform == gdal.transform == tuple(transform)[:6]
        assert gdal.data_end <= direct.data_end <= path.stat().st_size


def test_unusual_georeference_is_read_by_gdal(tmp_path: Path) -> None:
    """No CRS, or PixelIsPoint (GDAL shifts it by half a pixel): GDAL's reading is reported."""
    transform = Affine(0.2, 0, 651_200.0, 0, -0.2, 6_862_400.0)
    for name, extra in (("nocrs", {}), ("point", {"crs": CRS.from_epsg(2154)})):
        path = tmp_path / f"{name}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint8",
            transform=transform, **extra,
        ) as dst:  # fmt: skip
            dst.write(np.zeros((1, 512, 512), "uint8"))
            if name == "point":
                dst.update_tags(AREA_OR_POINT="Point")
        header, problems = inspect_file(str(path), Modality.COSIA, -1, deep=False)
        assert header == _read_header_with_gdal(str(path))[0]
        assert header is not None
        if name == "nocrs":
            assert header.crs is None
        else:
            assert problems == [] and header.crs == "EPSG:2154"
