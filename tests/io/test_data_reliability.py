"""Bad data never passes silently (issue 11): non-finite values, missing or non-TIFF files in
`info` and `show`, malformed split files and CSV lists.

Every test damages a copy of the session's synthetic dataset (or a small file of its own).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from flairkit.cli import main
from flairkit.config import PreprocessConfig, from_dict, preprocess_config_for, to_dict
from flairkit.data.datasets import PatchDataset
from flairkit.inference.dataset import TileDataset
from flairkit.io.catalog import Catalog, read_split_file
from flairkit.io.dates import DatesIndex, read_dates_file
from flairkit.io.patches import read_csv_lists, read_patch
from flairkit.io.raster import DataError
from flairkit.io.windows import RasterSource, WindowReader
from flairkit.modalities import Modality, Task
from flairkit.sample import RawSample
from flairkit.transforms.preprocess import Preprocessor

L93 = "EPSG:2154"
#: A patch id that is not in the synthetic dataset.
STRANGER = "D099-2020_ZZ-S1-1_1-1"


@pytest.fixture
def root(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic dataset, free to damage."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "root"))


def first_train_row(root: Path) -> dict[str, str]:
    with (root / "csv" / "FLAIR-HUB_TRAIN.csv").open(newline="", encoding="utf-8") as f:
        return next(csv.DictReader(f))


def rewrite_tif(path: Path, edit, dtype: str | None = None) -> np.ndarray:
    """Read a GeoTIFF, change its pixels with ``edit(array)`` (in place), write it back."""
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    if dtype is not None:
        data = data.astype(dtype)
        profile.update(dtype=dtype, predictor=1)
    edit(data)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return data


def poison(data: np.ndarray) -> None:
    """Three non-finite values: NaN, +inf, -inf."""
    flat = data.reshape(-1)
    flat[0], flat[7], flat[-1] = np.nan, np.inf, -np.inf


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


# -- defect 2: non-finite values ---------------------------------------------------------------

AERIAL_DEM = preprocess_config_for([Modality.AERIAL_RGBI, Modality.DEM_ELEV], tasks=(Task.COSIA,))


def test_count_nonfinite() -> None:
    # New names are imported in their tests, so that on the code before them the other tests
    # of this module still run (and fail one by one).
    from flairkit.io.raster import count_nonfinite

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert count_nonfinite(values) == 0
    poison(values)
    assert count_nonfinite(values) == 3
    assert count_nonfinite(np.arange(5, dtype=np.uint16)) == 0
    assert count_nonfinite(np.array([np.nan], dtype=np.float64)) == 1


def test_nan_in_a_dem_is_an_error_naming_the_file(root: Path) -> None:
    ref = Catalog.scan(root).refs[0]
    dem = ref.path(Modality.DEM_ELEV)
    rewrite_tif(dem, poison)
    # The training path (PatchDataset = read_patch + Preprocessor) stops...
    dataset = PatchDataset([ref], Preprocessor(AERIAL_DEM), num_threads=1)
    with pytest.raises(DataError) as info:
        dataset[0]
    # ... with one message naming the file, the count, the modality, the patch and the fix.
    message = str(info.value)
    assert message.startswith(f"{dem}: 3 of {2 * 64 * 64} values are NaN or infinite")
    assert "DEM_ELEV" in message and ref.patch_id in message
    assert "preprocess.nonfinite: zero" in message
    raw = read_patch(ref, Preprocessor(AERIAL_DEM).required_modalities)
    assert raw.nonfinite == {Modality.DEM_ELEV: 3}  # uint8 files have no entry
    assert raw.paths[Modality.DEM_ELEV] == dem


def test_inf_in_a_float_sentinel2_series_is_an_error(root: Path) -> None:
    """Time series go through tifffile: the check covers that reader too."""
    ref = Catalog.scan(root).refs[1]
    s2 = ref.path(Modality.SENTINEL2_TS)

    def one_inf(data: np.ndarray) -> None:
        data.reshape(-1)[5] = np.inf

    rewrite_tif(s2, one_inf, dtype="float32")
    cfg = preprocess_config_for([Modality.SENTINEL2_TS], tasks=())
    raw = read_patch(ref, Preprocessor(cfg).required_modalities, DatesIndex(root))
    with pytest.raises(DataError, match=rf"^{s2}: 1 of \d+ values are NaN or infinite"):
        Preprocessor(cfg)(raw)
    assert raw.nonfinite[Modality.SENTINEL2_TS] == 1


def test_nonfinite_zero_replaces_them_before_normalisation(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref = Catalog.scan(root).refs[0]
    dem = ref.path(Modality.DEM_ELEV)
    rewrite_tif(dem, poison)
    zero = dataclasses.replace(AERIAL_DEM, nonfinite="zero")
    raw = read_patch(ref, Preprocessor(zero).required_modalities)
    with caplog.at_level(logging.WARNING, logger="flairkit.transforms.preprocess"):
        sample = Preprocessor(zero)(raw)
    assert [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()] == [
        f"{dem}: replaced 3 NaN or infinite values with 0 (DEM_ELEV of {ref.patch_id} at "
        + "(" + ", ".join(f"{v:.2f}" for v in raw.georefs[Modality.DEM_ELEV].bounds) + ")"
        + "; preprocess.nonfinite: zero)"
    ]  # fmt: skip
    assert raw.nonfinite[Modality.DEM_ELEV] == 3  # the count a caller can read
    assert np.isnan(raw.arrays[Modality.DEM_ELEV]).sum() == 1  # the input is not modified
    dem_in = sample.inputs[Modality.DEM_ELEV]
    assert bool(dem_in.isfinite().all())
    # Exactly what the same file with zeros in place of NaN/inf gives.
    zeros = np.nan_to_num(raw.arrays[Modality.DEM_ELEV], nan=0.0, posinf=0.0, neginf=0.0)
    clean = RawSample(
        raw.patch_id, {**raw.arrays, Modality.DEM_ELEV: zeros}, raw.dates, raw.georefs
    )
    expected = Preprocessor(zero)(clean).inputs[Modality.DEM_ELEV]
    assert expected.isfinite().all()
    np.testing.assert_array_equal(dem_in.numpy(), expected.numpy())


def test_preprocessor_counts_arrays_built_without_a_reader() -> None:
    """A RawSample made in code (no reader counts) is checked all the same."""
    dem = np.ones((2, 8, 8), np.float32)
    dem[1, 2, 3] = np.nan
    cfg = preprocess_config_for([Modality.DEM_ELEV], tasks=())
    with pytest.raises(DataError, match=r"^<DEM_ELEV array>: 1 of 128 values"):
        Preprocessor(cfg)(RawSample("D006-2020_AA-S1-1_1-1", {Modality.DEM_ELEV: dem}))


def test_nonfinite_config_values_and_old_model_files(tmp_path: Path) -> None:
    assert PreprocessConfig().nonfinite == "error"
    recipe = to_dict(AERIAL_DEM)
    assert recipe["nonfinite"] == "error"
    del recipe["nonfinite"]  # a model file written before the option
    assert from_dict(PreprocessConfig, recipe, "preprocess").nonfinite == "error"
    assert from_dict(PreprocessConfig, {**recipe, "nonfinite": "zero"}).nonfinite == "zero"
    with pytest.raises(ValueError, match="preprocess.nonfinite"):
        from_dict(PreprocessConfig, {**recipe, "nonfinite": "nan"}, "preprocess")
    # A map reloads the recipe saved in the model file: an old one reads as "error".
    import torch
    from safetensors.torch import save_file

    from flairkit.inference.predictor import load_zone_model

    model = {"inputs": {"AERIAL_RGBI": 3}, "img_sizes": {"AERIAL_RGBI": 64}, "tasks": {"COSIA": 19}}
    meta = {"flairkit_version": "0.1", "model": model, "preprocess": recipe}
    path = tmp_path / "old.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"flairkit": json.dumps(meta)})
    assert load_zone_model(path, with_network=False).preprocess.nonfinite == "error"


def write_dem_mosaic(path: Path, nodata: float | None = None) -> Path:
    """A 32 x 32 px float32 DEM at 1 m in Lambert-93 with 5 NaN pixels in its first row."""
    dem = np.stack([np.full((32, 32), 200.0, np.float32), np.full((32, 32), 190.0, np.float32)])
    dem[:, 0, :5] = np.nan
    profile = dict(
        driver="GTiff", width=32, height=32, count=2, dtype="float32", crs=L93,
        transform=Affine(1.0, 0.0, 651_200.0, 0.0, -1.0, 6_862_400.0),
    )  # fmt: skip
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dem)
    return path


def test_nan_in_a_map_input_is_an_error_naming_the_raster(tmp_path: Path) -> None:
    """`flairkit map` reads windows through TileDataset = WindowReader + the Preprocessor."""
    mosaic = write_dem_mosaic(tmp_path / "dem.tif")
    reader = WindowReader({Modality.DEM_ELEV: RasterSource(mosaic)}, {Modality.DEM_ELEV: 1.0})
    window = (651_200.0, 6_862_384.0, 651_216.0, 6_862_400.0)  # the NW 16 x 16 px
    cfg = preprocess_config_for([Modality.DEM_ELEV], tasks=())
    tiles = TileDataset(reader, Preprocessor(cfg), [window], L93, 16, Modality.DEM_ELEV)
    with pytest.raises(DataError, match=rf"^{mosaic}: 10 of 512 values are NaN or infinite"):
        tiles[0]
    raw = reader.read(window, L93, "tile-0")
    assert raw.paths == {Modality.DEM_ELEV: mosaic}
    assert raw.nonfinite == {Modality.DEM_ELEV: 10}  # 5 pixels x 2 bands
    zero = dataclasses.replace(cfg, nonfinite="zero")
    item = TileDataset(reader, Preprocessor(zero), [window], L93, 16, Modality.DEM_ELEV)[0]
    assert bool(item.sample.inputs[Modality.DEM_ELEV].isfinite().all())
    # A window without NaN reads as before.
    south = (651_200.0, 6_862_368.0, 651_216.0, 6_862_384.0)
    assert reader.read(south, L93).nonfinite == {Modality.DEM_ELEV: 0}
    assert TileDataset(reader, Preprocessor(cfg), [south], L93, 16, Modality.DEM_ELEV)[0].sample


def test_show_reports_nonfinite_values(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = Catalog.scan(root).refs[0]
    rewrite_tif(ref.path(Modality.DEM_ELEV), poison)
    code, out, _ = run_cli(
        ["show", str(root), ref.patch_id, "--json", "--modalities", "DEM"], capsys
    )
    assert code == 0
    dem = json.loads(out)["modalities"]["DEM_ELEV"]
    assert dem["nonfinite"] == 3
    assert dem["min"] is not None and np.isfinite(dem["min"]) and np.isfinite(dem["max"])
    code, out, _ = run_cli(["show", str(root), ref.patch_id, "--modalities", "DEM"], capsys)
    assert code == 0 and "(3 NaN or infinite values)" in out


# -- defect 8: info and show on missing, empty and non-TIFF files ------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "missing"),
        (b"", "empty (0 bytes)"),
        (b"hello, world\n", "not a TIFF (starts with b'hell')"),
        (b"II", "not a TIFF (starts with b'II')"),
        (b"II*\x00" + bytes(12), None),
        (b"MM\x00*" + bytes(12), None),
        (b"II+\x00" + bytes(12), None),  # BigTIFF
        (b"MM\x00+" + bytes(12), None),
    ],
)
def test_file_problem(tmp_path: Path, content: bytes | None, problem: str | None) -> None:
    from flairkit.io.catalog import file_problem

    path = tmp_path / "x.tif"
    if content is not None:
        path.write_bytes(content)
    assert file_problem(path) == problem


def test_file_problem_of_a_folder_and_a_fifo(tmp_path: Path) -> None:
    from flairkit.io.catalog import file_problem

    (tmp_path / "folder.tif").mkdir()
    assert file_problem(tmp_path / "folder.tif") == "not a regular file"
    assert file_problem(tmp_path / "not-a-dir.tif" / "x.tif") == "missing"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.tif")
        assert file_problem(tmp_path / "pipe.tif") == "not a regular file"  # and no hang


def test_info_on_a_csv_list_naming_a_missing_file(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = first_train_row(root)
    dem = Path(os.path.normpath(root / "csv" / row["DEM_ELEV"]))
    dem.unlink()
    listing = root / "csv" / "FLAIR-HUB_TRAIN.csv"
    summary = Catalog.open(listing).summary()
    assert summary["missing_files"] == {"DEM_ELEV": {"count": 1, "examples": [row["patch_id"]]}}
    assert summary["file_problems"] == {"DEM_ELEV": {"count": 1, "examples": [f"{dem}: missing"]}}
    assert summary["files_per_modality"]["DEM_ELEV"] == summary["num_patches"] - 1
    code, out, _ = run_cli(["info", str(listing)], capsys)
    assert code == 0
    assert "missing files: none" not in out
    assert f"{dem}: missing" in out


def test_info_does_not_count_empty_or_non_tiff_files(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = Catalog.scan(root).refs
    empty, text = refs[0].path(Modality.SPOT_RGBI), refs[1].path(Modality.AERIAL_RGBI)
    empty.write_bytes(b"")
    text.write_text("not an image\n")
    summary = Catalog.scan(root).summary()
    assert summary["files_per_modality"]["SPOT_RGBI"] == 31
    assert summary["files_per_modality"]["AERIAL_RGBI"] == 31
    assert summary["missing_files"] == {
        "AERIAL_RGBI": {"count": 1, "examples": [refs[1].patch_id]},
        "SPOT_RGBI": {"count": 1, "examples": [refs[0].patch_id]},
    }
    assert summary["file_problems"]["SPOT_RGBI"]["examples"] == [f"{empty}: empty (0 bytes)"]
    assert summary["file_problems"]["AERIAL_RGBI"]["examples"] == [
        f"{text}: not a TIFF (starts with b'not ')"
    ]
    code, out, _ = run_cli(["info", str(root), "--json"], capsys)
    assert code == 0 and json.loads(out)["file_problems"] == summary["file_problems"]
    assert Catalog.scan(root).summary(check_files=False)["missing_files"] == {}


def test_show_lists_a_missing_modality_with_its_path(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = Catalog.scan(root).refs[0]
    dem = ref.path(Modality.DEM_ELEV)
    dem.unlink()
    code, out, _ = run_cli(["show", str(root), ref.patch_id, "--json"], capsys)
    assert code == 0
    desc = json.loads(out)
    assert "DEM_ELEV" not in desc["modalities"]
    assert len(desc["modalities"]) == len(Modality) - 1
    assert desc["missing"] == {"DEM_ELEV": {"path": str(dem), "problem": "missing"}}
    code, out, _ = run_cli(["show", str(root), ref.patch_id], capsys)
    assert code == 0
    assert out.splitlines()[-1].split() == ["DEM_ELEV", "not", "read,", "missing:", str(dem)]
    # The same from a CSV list, which still names the file.
    listing = root / "csv" / "FLAIR-HUB_TRAIN.csv"
    row = first_train_row(root)
    listed = Path(os.path.normpath(listing.parent / row["DEM_ELEV"]))
    listed.unlink(missing_ok=True)
    code, out, _ = run_cli(["show", str(listing), row["patch_id"], "--json"], capsys)
    assert code == 0
    assert json.loads(out)["missing"]["DEM_ELEV"] == {"path": str(listed), "problem": "missing"}


@pytest.mark.parametrize("damage", ["delete", "empty"])
def test_show_of_a_requested_missing_modality_exits_2(
    root: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    ref = Catalog.scan(root).refs[0]
    dem = ref.path(Modality.DEM_ELEV)
    if damage == "delete":
        dem.unlink()
    else:
        dem.write_bytes(b"")
    code, _, err = run_cli(
        ["show", str(root), ref.patch_id, "--modalities", "AERIAL", "DEM"], capsys
    )
    assert_one_line_error(code, err, str(dem), "DEM_ELEV")


# -- defect 7: split files and CSV lists -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("trunc.json", b'{"D006-2020_AA-S1-1_1-1": ', "not valid JSON (Expecting value at line 1"),
        ("list.json", b'["D006-2020_AA-S1-1_1-1"]', "must be a JSON object"),
        ("number.json", b"42", "got a number (42)"),
        ("nested.json", b'{"train": ["D006-2020_AA-S1-1_1-1"]}', "got an array"),
        ("unknown.json", b'{"D006-2020_AA-S1-1_1-1": "holdout"}', "unknown split 'holdout'"),
        ("empty.json", b"", "split file is empty"),
        ("nothing.json", b"{}", "lists no patch"),
        ("latin1.json", '{"D006-2020_AA-S1-1_1-1": "tr\xe9in"}'.encode("latin-1"), "0xe9 at"),
        ("latin1.csv", "patch_id,split\nD006-2020_AA-S1-1_1-1,tr\xe9in\n".encode("latin-1"),
         "not UTF-8 text (byte 0xe9 at offset 39, line 2)"),
        ("binary.csv", bytes(range(256)) * 4, "not UTF-8 text (byte 0x80 at offset 128"),
        ("nul.csv", b"patch_id,split\n\x00\x00\n", "binary data (a NUL byte at offset 15)"),
        ("columns.csv", b"id,fold\nD006-2020_AA-S1-1_1-1,train\n", "needs columns patch_id"),
        ("header.csv", b"patch_id,split\n", "lists no patch"),
        ("twice.csv", b"patch_id,split\nD006-2020_AA-S1-1_1-1,train\nD006-2020_AA-S1-1_1-1,test\n",
         "given two splits, train and test"),
    ],
)  # fmt: skip
def test_bad_split_files_exit_2_naming_the_file(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    needle: str,
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_split_file(path)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)
    code, _, err = run_cli(["info", str(synthetic_root), "--split", str(path)], capsys)
    assert_one_line_error(code, err, str(path), needle)


def test_split_file_naming_unknown_patch_ids(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No id in common: an error (another dataset's split). Some unknown: a warning."""
    catalog = Catalog.scan(synthetic_root, split=None)
    stranger = tmp_path / "other.json"
    stranger.write_text(json.dumps({STRANGER: "train", "D099-2020_ZZ-S1-1_1-2": "test"}))
    with pytest.raises(DataError, match=rf"^{stranger}: none of its 2 patch ids is among the 32"):
        catalog.with_split(str(stranger))
    known = catalog.refs[0].patch_id
    mixed = tmp_path / "mixed.csv"
    mixed.write_text(f"patch_id,split\n{known},test\n{STRANGER},train\n")
    with caplog.at_level(logging.WARNING, logger="flairkit.io.catalog"):
        split = catalog.with_split(str(mixed))
    assert split.get(known).split == "test"
    assert sum(r.split is not None for r in split) == 1
    assert any(
        str(mixed) in r.getMessage() and "1 of its 2 patch ids" in r.getMessage()
        and STRANGER in r.getMessage()
        for r in caplog.records
    )  # fmt: skip


def test_split_file_applies_to_csv_lists(synthetic_root: Path, tmp_path: Path) -> None:
    """`--split FILE` (data.split) with CSV lists used to be ignored silently."""
    lists = synthetic_root / "csv"
    ids = [r.patch_id for r in Catalog.open(lists)]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({ids[0]: "test", ids[1]: "train"}))
    catalog = Catalog.open(lists, split=str(path))
    assert [r.split for r in catalog.refs[:2]] == ["test", "train"]
    assert all(r.split is None for r in catalog.refs[2:])
    assert Catalog.open(lists, split="auto").summary()["patches_per_split"] == {
        "test": 16, "train": 12, "val": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("latin1", "CSV list is not UTF-8 text (byte 0xe9 at offset"),
        ("binary", "CSV list is not UTF-8 text (byte 0x"),
        ("nul", "CSV list holds binary data (a NUL byte at offset 0)"),
        ("empty", "CSV list is empty (no header line)"),
        ("no_modality", "no modality column (columns: ['patch_id', 'split']"),
        ("no_patch_id", "no 'patch_id' column"),
    ],
)
def test_bad_csv_lists_exit_2_naming_the_file(
    root: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    listing = root / "csv" / "FLAIR-HUB_TRAIN.csv"
    text = listing.read_text(encoding="utf-8")
    header, first, *_ = text.splitlines()
    data = {
        "latin1": (text + first.replace("D006", "D\xe906") + "\n").encode("latin-1"),
        "binary": bytes(np.random.default_rng(0).integers(128, 256, 400, dtype=np.uint8)),
        "nul": b"\x00" * 64,
        "empty": b"",
        "no_modality": b"patch_id,split\nD006-2020_AA-S1-1_1-1,train\n",
        "no_patch_id": (header.replace("patch_id", "id") + "\n" + first + "\n").encode(),
    }[content]
    listing.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_csv_lists([listing])
    assert str(info.value).startswith(f"{listing}: ") and needle in str(info.value)
    for argv in (["info", str(listing)], ["info", str(root / "csv")], ["show", str(listing)]):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, str(listing), needle)


def test_csv_list_with_a_header_only_or_unknown_columns(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listing = root / "csv" / "FLAIR-HUB_TRAIN.csv"
    header, first, *_ = listing.read_text(encoding="utf-8").splitlines()
    listing.write_text(header + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="flairkit.io.patches"):
        assert read_csv_lists([listing]) == []
    assert f"{listing}: CSV list holds no patch" in caplog.text
    listing.write_text(f"{header},AERIAL_RGB\n{first},x.tif\n", encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flairkit.io.patches"):
        (ref,) = read_csv_lists([listing])
    assert "ignoring column(s) that name no modality: ['AERIAL_RGB']" in caplog.text
    assert ref.modalities == frozenset(Modality)
    # A BOM (Excel's UTF-8) and short rows are read, not rejected.
    listing.write_bytes(b"\xef\xbb\xbf" + f"{header}\n{first.split(',')[0]},\n".encode())
    (short,) = read_csv_lists([listing])
    assert short.modalities == frozenset()


def test_dates_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dates.txt"
    path.write_bytes("20210301\n# \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{path}: dates file is not UTF-8 text \(byte 0xe9"):
        read_dates_file(path)
