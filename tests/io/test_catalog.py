"""Catalog: folder scan and CSV lists agree; splits, filters, summary (spec sections 1, 3.2)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pytest

from flairkit.io.catalog import Catalog, card_split, read_split_file
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import read_patch, standard_relpath
from flairkit.io.raster import DataError
from flairkit.modalities import METADATA_DIR, SPLIT_GPKG, Modality
from flairkit.synth import SynthSummary

API_SPLIT = {"train": "train", "valid": "val", "test": "test"}
ALL_MODALITIES = frozenset(Modality)


def csv_lists(root: Path) -> list[Path]:
    return sorted((root / "csv").glob("*.csv"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def rebase_rows(rows: list[dict[str, str]], old_dir: Path, new_dir: Path) -> list[dict[str, str]]:
    """Rewrite relative cells so they point at the same files from another folder."""
    out = []
    for row in rows:
        new = {"patch_id": row["patch_id"]}
        for key, cell in row.items():
            if key != "patch_id":
                new[key] = (
                    os.path.relpath(os.path.normpath(old_dir / cell), new_dir) if cell else ""
                )
        out.append(new)
    return out


@pytest.fixture(scope="module")
def scanned(synthetic_root: Path) -> Catalog:
    return Catalog.scan(synthetic_root)


# -- scan vs CSV --------------------------------------------------------------------------


def test_scan_finds_every_patch_with_all_modalities(
    scanned: Catalog, synthetic: SynthSummary
) -> None:
    assert [r.patch_id for r in scanned] == sorted(synthetic.all_patch_ids)
    assert len(scanned) == 32
    for ref in scanned:
        assert ref.modalities == ALL_MODALITIES
        for m in Modality:
            assert ref.path(m).is_file()


def test_scan_and_csv_agree(scanned: Catalog, synthetic_root: Path) -> None:
    listed = Catalog.from_csv(csv_lists(synthetic_root))
    assert [r.patch_id for r in listed] == [r.patch_id for r in scanned]
    for a, b in zip(scanned, listed, strict=True):
        assert a.modalities == b.modalities
        for m in Modality:
            assert os.path.samefile(a.path(m), b.path(m)), (a.patch_id, m)
        assert a.split == b.split  # split_1 (scan) and CSV file names (list) agree
    assert listed.root == synthetic_root


def test_csv_paths_follow_the_grammar(synthetic_root: Path) -> None:
    ref = Catalog.from_csv(csv_lists(synthetic_root)).refs[0]
    for m in Modality:
        assert ref.path(m) == synthetic_root / standard_relpath(ref.patch_id, m)
    assert ref.path(Modality.AERIAL_PAN).parts[-3].endswith("-195X_AERIAL-RLT_PAN")


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_delimiters_and_relative_paths_from_elsewhere(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delimiter: str
) -> None:
    """Relative cells resolve against the CSV's folder, whatever the working directory."""
    source = synthetic_root / "csv" / "FLAIR-HUB_VALID.csv"
    lists_dir = tmp_path / "lists" / "deeper"
    rows = rebase_rows(read_rows(source), source.parent, lists_dir)
    assert all(not Path(v).is_absolute() for r in rows for k, v in r.items() if k != "patch_id")
    target = write_rows(lists_dir / "MY_VALID.csv", rows, delimiter)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    catalog = Catalog.from_csv([target])
    assert [r.patch_id for r in catalog] == sorted(r["patch_id"] for r in rows)
    assert {r.split for r in catalog} == {"val"}
    for ref in catalog:
        assert ref.modalities == ALL_MODALITIES
        for m in Modality:
            assert os.path.samefile(ref.path(m), synthetic_root / standard_relpath(ref.patch_id, m))
    raw = read_patch(catalog.refs[0], [Modality.AERIAL_RGBI, Modality.COSIA])
    assert raw.arrays[Modality.AERIAL_RGBI].shape == (4, 64, 64)


def test_empty_cells_mean_missing_modality(synthetic_root: Path, tmp_path: Path) -> None:
    source = synthetic_root / "csv" / "FLAIR-HUB_TRAIN.csv"
    rows = read_rows(source)
    rows[0]["SPOT_RGBI"] = ""
    rows[1]["SENTINEL1-DESC_TS"] = ""
    rows[1]["DEM_ELEV"] = ""
    rows = rebase_rows(rows, source.parent, tmp_path)
    catalog = Catalog.from_csv([write_rows(tmp_path / "TRAIN.csv", rows, ";")])
    first, second = catalog.get(rows[0]["patch_id"]), catalog.get(rows[1]["patch_id"])
    assert first.modalities == ALL_MODALITIES - {Modality.SPOT_RGBI}
    assert second.modalities == ALL_MODALITIES - {Modality.SENTINEL1_DESC_TS, Modality.DEM_ELEV}
    missing = catalog.summary()["missing_files"]
    assert missing["SPOT_RGBI"] == {"count": 1, "examples": [rows[0]["patch_id"]]}
    assert missing["DEM_ELEV"]["count"] == 1
    assert set(missing) == {"SPOT_RGBI", "SENTINEL1-DESC_TS", "DEM_ELEV"}
    assert len(catalog.filter(modalities=[Modality.SPOT_RGBI])) == len(rows) - 1


def test_csv_paths_outside_the_layout(synthetic_root: Path, tmp_path: Path) -> None:
    """Cells may point anywhere (absolute paths, any file names): those paths are used as is."""
    ref = Catalog.scan(synthetic_root).refs[0]
    flat = tmp_path / "flat"
    flat.mkdir()
    row = {"patch_id": ref.patch_id}
    for m in Modality:
        target = flat / f"{m.name.lower()}.tif"
        shutil.copyfile(ref.path(m), target)
        row[m.value] = str(target)
    catalog = Catalog.from_csv([write_rows(tmp_path / "lists" / "TRAIN.csv", [row], ";")])
    listed = catalog.get(ref.patch_id)
    assert listed.modalities == ALL_MODALITIES
    for m in Modality:
        assert listed.path(m) == flat / f"{m.name.lower()}.tif"
    mods = [Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.COSIA]
    moved = read_patch(listed, mods, DatesIndex(synthetic_root))
    original = read_patch(ref, mods, DatesIndex(synthetic_root))
    for m in mods:
        np.testing.assert_array_equal(moved.arrays[m], original.arrays[m])


def test_csv_listing_a_patch_twice_is_an_error(synthetic_root: Path, tmp_path: Path) -> None:
    source = synthetic_root / "csv" / "FLAIR-HUB_TEST.csv"
    rows = rebase_rows(read_rows(source), source.parent, tmp_path)
    path = write_rows(tmp_path / "TEST.csv", rows + rows[:1])
    with pytest.raises(DataError, match=rows[0]["patch_id"]):
        Catalog.from_csv([path])


def test_open_dispatches_on_the_source(synthetic_root: Path) -> None:
    assert len(Catalog.open(synthetic_root)) == 32
    assert len(Catalog.open(synthetic_root / "csv")) == 32
    one = Catalog.open(synthetic_root / "csv" / "FLAIR-HUB_TEST.csv")
    assert len(one) == 16 and {r.split for r in one} == {"test"}


# -- splits -------------------------------------------------------------------------------


def test_auto_split_is_split_1_of_the_geopackage(scanned: Catalog, synthetic_root: Path) -> None:
    frame = pyogrio.read_dataframe(synthetic_root / METADATA_DIR / SPLIT_GPKG, read_geometry=False)
    table = dict(zip(frame["patch_id"], frame["split_1"], strict=True))
    assert {r.patch_id: r.split for r in scanned} == {k: API_SPLIT[v] for k, v in table.items()}
    other = Catalog.scan(synthetic_root, split="split_3")
    table3 = dict(zip(frame["patch_id"], frame["split_3"], strict=True))
    assert {r.patch_id: r.split for r in other} == {k: API_SPLIT[v] for k, v in table3.items()}


def test_split_counts_match_the_generator(scanned: Catalog, synthetic: SynthSummary) -> None:
    for split, ids in synthetic.patch_ids.items():
        assert sorted(r.patch_id for r in scanned.filter(split=split)) == sorted(ids)
    assert len(scanned.filter(split="valid")) == len(synthetic.patch_ids["val"]) == 4


def test_card_split(scanned: Catalog) -> None:
    card = scanned.with_split("card")
    for ref in card:
        if ref.domain in ("D012", "D068"):  # test departments of the dataset card
            assert ref.split == "test"
        else:
            assert ref.split in ("train", "val")
    assert card_split("D006-2020_UU-S1-1_1-1", 0.0) == "train"
    assert card_split("D006-2020_UU-S1-1_1-1", 1.0) == "val"
    assert card_split("D085-2019_UU-S1-1_1-1", 1.0) == "test"
    assert card_split("D999-2020_UU-S1-1_1-1") is None  # not a FLAIR-HUB department
    # Stable: a hash of the id, not a random draw.
    assert [r.split for r in scanned.with_split("card")] == [r.split for r in card]
    all_val = scanned.with_split("card", val_fraction=1.0)
    assert {r.split for r in all_val if r.domain in ("D006", "D032")} == {"val"}


def test_auto_split_without_geopackage_is_card(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns(SPLIT_GPKG))
    auto = Catalog.scan(root)
    assert [r.split for r in auto] == [r.split for r in Catalog.scan(root, split="card")]
    with pytest.raises(DataError, match=SPLIT_GPKG):
        Catalog.scan(root, split="split_1")


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_user_split_file(scanned: Catalog, tmp_path: Path, suffix: str) -> None:
    ids = [r.patch_id for r in scanned]
    wanted = {ids[0]: "test", ids[1]: "valid", ids[2]: "train"}
    path = tmp_path / f"my_split{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(wanted))
    else:
        path.write_text("patch_id,split\n" + "".join(f"{k},{v}\n" for k, v in wanted.items()))
    assert read_split_file(path) == {ids[0]: "test", ids[1]: "val", ids[2]: "train"}
    catalog = scanned.with_split(str(path))
    assert [r.split for r in catalog.refs[:3]] == ["test", "val", "train"]
    assert all(r.split is None for r in catalog.refs[3:])


def test_user_split_file_errors(tmp_path: Path) -> None:
    bad_value = tmp_path / "bad.json"
    bad_value.write_text(json.dumps({"D006-2020_UU-S1-1_1-1": "holdout"}))
    with pytest.raises(DataError, match="holdout"):
        read_split_file(bad_value)
    bad_columns = tmp_path / "bad.csv"
    bad_columns.write_text("id,fold\nD006-2020_UU-S1-1_1-1,train\n")
    with pytest.raises(DataError, match="patch_id"):
        read_split_file(bad_columns)
    with pytest.raises(DataError, match="missing"):
        read_split_file(tmp_path / "absent.json")


def test_unknown_split_method(scanned: Catalog) -> None:
    with pytest.raises(ValueError, match="split_9"):
        scanned.with_split("split_9")


def test_department_split(scanned: Catalog) -> None:
    catalog = scanned.with_department_split(train=["D006"], val=["D032-2019"], test=["D012"])
    by_domain = {}
    for ref in catalog:
        by_domain.setdefault(ref.domain, set()).add(ref.split)
    assert by_domain == {"D006": {"train"}, "D032": {"val"}, "D012": {"test"}, "D068": {None}}
    assert catalog.summary()["patches_per_split"] == {"none": 8, "test": 8, "train": 8, "val": 8}


# -- filters, get, summary ----------------------------------------------------------------


def test_filters(scanned: Catalog) -> None:
    assert {r.domain for r in scanned.filter(departments=["D006", "D012"])} == {"D006", "D012"}
    assert len(scanned.filter(departments=["D006", "D012"])) == 16
    assert len(scanned.filter(departments=["D068-2021"])) == 8
    assert len(scanned.filter(departments=["D068-2020"])) == 0
    assert {r.domain_year for r in scanned.filter(years=[2019])} == {"D032-2019", "D012-2019"}
    assert len(scanned.filter(years=["2020", 2021])) == 16
    assert len(scanned.filter(modalities=[Modality.SPOT_RGBI, Modality.LPIS])) == 32
    combined = scanned.filter(departments=["D006", "D032"], years=[2020], split="val")
    assert [r.patch_id for r in combined] == sorted(
        r.patch_id for r in scanned if r.domain == "D006" and r.split == "val"
    )
    assert len(combined) == 2
    ids = [r.patch_id for r in scanned.refs[5:8]]
    assert [r.patch_id for r in scanned.filter(patch_ids=ids)] == ids
    with pytest.raises(ValueError, match="unknown split"):
        scanned.filter(split="holdout")


def test_filter_on_missing_modality(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    victim = Catalog.scan(root).refs[3]
    victim.path(Modality.SENTINEL1_DESC_TS).unlink()
    catalog = Catalog.scan(root)
    assert catalog.get(victim.patch_id).modalities == ALL_MODALITIES - {Modality.SENTINEL1_DESC_TS}
    kept = catalog.filter(modalities=[Modality.SENTINEL1_DESC_TS])
    assert len(kept) == 31 and victim.patch_id not in {r.patch_id for r in kept}
    summary = catalog.summary()
    assert summary["missing_files"] == {
        "SENTINEL1-DESC_TS": {"count": 1, "examples": [victim.patch_id]}
    }
    assert summary["files_per_modality"]["SENTINEL1-DESC_TS"] == 31
    assert summary["files_per_modality"]["AERIAL_RGBI"] == 32
    with pytest.raises(DataError, match="SENTINEL1-DESC_TS"):
        read_patch(catalog.get(victim.patch_id), [Modality.SENTINEL1_DESC_TS], DatesIndex(root))


def test_summary_counts(scanned: Catalog) -> None:
    summary = scanned.summary()
    assert summary["num_patches"] == 32
    assert summary["num_domains"] == 4
    assert summary["patches_per_split"] == {"test": 16, "train": 12, "val": 4}
    assert summary["patches_per_domain"]["D012-2019"] == {"test": 8}
    assert summary["patches_per_domain"]["D006-2020"] == {"train": 6, "val": 2}
    assert summary["files_per_modality"] == {m.value: 32 for m in Modality}
    assert summary["missing_files"] == {}
    json.dumps(summary)  # the CLI prints it as JSON


def test_get_unknown_id_suggests_close_ids(scanned: Catalog) -> None:
    real = scanned.refs[0].patch_id
    typo = real[:-1] + ("9" if real[-1] != "9" else "8")
    with pytest.raises(KeyError) as info:
        scanned.get(typo)
    message = info.value.args[0]
    assert typo in message
    assert "did you mean" in message and real in message
    assert scanned.get(real) is scanned.refs[0]


def test_historical_file_is_attached(scanned: Catalog, synthetic_root: Path) -> None:
    ref = scanned.get(scanned.refs[0].patch_id)
    pan = ref.path(Modality.AERIAL_PAN)
    assert Modality.AERIAL_PAN in ref.modalities
    assert pan == synthetic_root / (
        f"{ref.domain}-195X_AERIAL-RLT_PAN/{ref.roi}/{ref.domain}-195X_AERIAL-RLT_PAN_"
        f"{ref.roi}_{ref.patch_id.rsplit('_', 1)[1]}.tif"
    )
    raw = read_patch(ref, [Modality.AERIAL_PAN, Modality.AERIAL_RGBI])
    assert raw.arrays[Modality.AERIAL_PAN].shape == (1, 32, 32)
    assert raw.georefs[Modality.AERIAL_PAN].bounds == pytest.approx(
        raw.georefs[Modality.AERIAL_RGBI].bounds
    )
    # No 195X folder entry is ever a patch of its own.
    assert not any("195X" in r.patch_id for r in scanned)


def test_historical_file_removed(synthetic_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    victim = Catalog.scan(root).refs[0]
    victim.path(Modality.AERIAL_PAN).unlink()
    catalog = Catalog.scan(root)
    assert Modality.AERIAL_PAN not in catalog.get(victim.patch_id).modalities
    assert sum(Modality.AERIAL_PAN in r.modalities for r in catalog) == 31


def test_patch_ref_properties(scanned: Catalog) -> None:
    ref = next(r for r in scanned if r.domain == "D012")
    assert ref.domain_year == "D012-2019"
    assert ref.year == "2019"
    assert ref.zone_id == f"D012-2019_{ref.roi}"
    row, col = ref.row_col
    assert ref.patch_id.endswith(f"_{row}-{col}")


def test_scan_of_a_folder_without_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="FLAIR-HUB root"):
        Catalog.scan(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        Catalog.scan(tmp_path / "absent")
