"""Patch ids (spec section 1.3): one parser, parse_patch_id, for every department and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from flairkit.io.catalog import card_split
from flairkit.io.patches import (
    PatchRef,
    department_of,
    parse_patch_id,
    read_csv_lists,
    scan_root,
    standard_relpath,
)
from flairkit.io.raster import DataError
from flairkit.modalities import Modality, Task


@pytest.mark.parametrize(
    ("patch_id", "department"),
    [
        ("D006-2020_FF-S1-14_5-5", "D006"),
        ("D024047-2021_UU-S1-1_1-1", "D024047"),
        ("D059062-2021_AA-S1-V18_10-22", "D059062"),
        ("D012-2019_NF-S1-N14_25-3", "D012"),
    ],
)
def test_department_of_valid_ids(patch_id: str, department: str) -> None:
    assert department_of(patch_id) == department
    assert PatchRef(patch_id, "/data", frozenset()).domain == department


@pytest.mark.parametrize(
    "patch_id",
    [
        "",
        "D006",
        "patch-1",
        "D06-2020_FF-S1-14_5-5",  # 2-digit code
        "D0061-2020_FF-S1-14_5-5",  # not whole 3-digit codes
        "d006-2020_FF-S1-14_5-5",
        "D006-20_FF-S1-14_5-5",
        "D006-2020_FF-S1-14",  # no row-col
        "D006-2020_FF-S1-14_5",
        "D006-2020_FF_S1_5-5",  # underscores inside the ROI
        "D006-2020_FF-S1-14_5-5.tif",
        "D006-195X_FF-S1-14_5-5",  # historical year: only in file names
        " D006-2020_FF-S1-14_5-5",
    ],
)
def test_department_of_invalid_ids(patch_id: str) -> None:
    with pytest.raises(ValueError, match="is not <DOMAIN>-<YEAR>_<ROI>_<ROW>-<COL>") as info:
        department_of(patch_id)
    assert repr(patch_id) in str(info.value)


def test_parse_patch_id_parts() -> None:
    parts = parse_patch_id("D024047-2021_AA-S1-V18_10-22")
    assert (parts.domain, parts.year, parts.roi, parts.row_col) == (
        "D024047",
        "2021",
        "AA-S1-V18",
        "10-22",
    )
    assert (parts.row, parts.col) == (10, 22)
    assert parts.departments == ("024", "047")
    assert parts.domain_year == "D024047-2021"
    assert parts.zone_id == "D024047-2021_AA-S1-V18"
    historical = parse_patch_id("D006-195X_FF-S1-14_5-5", historical=True)
    assert historical.year == "195X" and historical.departments == ("006",)
    ref = PatchRef("D024047-2021_AA-S1-V18_10-22", "/data", frozenset())
    assert (ref.domain_year, ref.zone_id, ref.row_col, ref.year, ref.roi) == (
        "D024047-2021",
        "D024047-2021_AA-S1-V18",
        (10, 22),
        "2021",
        "AA-S1-V18",
    )


def test_row_col_kept_verbatim_in_paths() -> None:
    rel = standard_relpath("D006-2020_FF-S1-14_05-5", Modality.AERIAL_PAN)
    assert rel == "D006-195X_AERIAL-RLT_PAN/FF-S1-14/D006-195X_AERIAL-RLT_PAN_FF-S1-14_05-5.tif"
    with pytest.raises(ValueError, match="D06-2020"):
        standard_relpath("D06-2020_FF-S1-14_5-5", Modality.AERIAL_RGBI)


def test_card_split_of_merged_departments() -> None:
    assert card_split("D012-2019_UU-S1-1_1-1") == "test"
    assert card_split("D024047-2021_UU-S1-1_1-1") in ("train", "val")
    assert card_split("D999-2021_UU-S1-1_1-1") is None
    with pytest.raises(ValueError, match="not-an-id"):
        card_split("not-an-id")


def _touch(root: Path, folder: str, roi: str, name: str) -> None:
    path = root / folder / roi / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_scan_skips_files_whose_id_breaks_the_grammar(tmp_path: Path) -> None:
    rgbi, pan = "D006-2020_AERIAL_RGBI", "D006-195X_AERIAL-RLT_PAN"
    _touch(tmp_path, rgbi, "UU-S1-1", f"{rgbi}_UU-S1-1_1-1.tif")
    # In the right folder, but its own name has a 2-digit domain: not an official file.
    _touch(tmp_path, rgbi, "UU-S1-1", "D06-2020_AERIAL_RGBI_UU-S1-1_1-2.tif")
    _touch(tmp_path, pan, "UU-S1-1", f"{pan}_UU-S1-1_1-1.tif")
    _touch(tmp_path, pan, "UU-S1-1", "D06-195X_AERIAL-RLT_PAN_UU-S1-1_1-2.tif")
    refs = scan_root(tmp_path)
    assert [r.patch_id for r in refs] == ["D006-2020_UU-S1-1_1-1"]
    assert refs[0].modalities == {Modality.AERIAL_RGBI, Modality.AERIAL_PAN}
    assert refs[0].domain == "D006"


def test_csv_list_names_a_bad_patch_id(tmp_path: Path) -> None:
    csv = tmp_path / "TRAIN.csv"
    csv.write_text(f"patch_id,{Task.COSIA.value}\nD0061-2020_UU-S1-1_1-1,x.tif\n", encoding="utf-8")
    with pytest.raises(DataError, match="D0061-2020_UU-S1-1_1-1") as info:
        read_csv_lists([csv])
    assert str(csv) in str(info.value)
