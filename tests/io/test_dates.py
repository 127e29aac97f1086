"""Acquisition dates: JSON tables -> dates in band order -> day offsets (spec sections 1.5, 3.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pytest

from flairkit.io.dates import DatesIndex, day_offsets, parse_acquisition_dates
from flairkit.io.raster import DataError
from flairkit.modalities import METADATA_DIR, Modality
from flairkit.synth import SynthSummary

TS_GPKGS = {
    Modality.SENTINEL2_TS: "GLOBAL_SENTINEL2_MTD_DATES.gpkg",
    Modality.SENTINEL1_ASC_TS: "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg",
    Modality.SENTINEL1_DESC_TS: "GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg",
}


def days(*iso: str) -> np.ndarray:
    return np.array(iso, dtype="datetime64[D]")


# -- parse_acquisition_dates ----------------------------------------------------------------


def test_keys_from_one() -> None:
    text = '{"1": "20210114", "2": "20210301", "3": "20211231"}'
    np.testing.assert_array_equal(
        parse_acquisition_dates(text), days("2021-01-14", "2021-03-01", "2021-12-31")
    )


def test_keys_from_zero() -> None:
    text = '{"0": "20200105", "1": "20200610", "2": "20201120"}'
    result = parse_acquisition_dates(text)
    assert result.dtype == np.dtype("datetime64[D]")
    np.testing.assert_array_equal(result, days("2020-01-05", "2020-06-10", "2020-11-20"))


def test_keys_in_numeric_not_text_order() -> None:
    """Band order follows the integer value of the key: "10" comes after "9", not after "1"."""
    values = {str(k): f"2021{k:02d}01" for k in range(1, 13)}  # key k -> 1st of month k
    shuffled = {
        k: values[k] for k in ["10", "9", "1", "12", "2", "11", "3", "4", "5", "6", "7", "8"]
    }
    text = json.dumps(shuffled)
    expected = np.array([f"2021-{k:02d}-01" for k in range(1, 13)], dtype="datetime64[D]")
    np.testing.assert_array_equal(parse_acquisition_dates(text), expected)


@pytest.mark.parametrize(
    "text", ['{"1": "2021-01-14"}', '{"1": "20211341"}', "not json", '{"a": "20210101"}']
)
def test_bad_dates_raise_data_error(text: str) -> None:
    with pytest.raises(DataError, match="table.gpkg"):
        parse_acquisition_dates(text, "table.gpkg")


# -- day_offsets ------------------------------------------------------------------------------


def test_day_offsets_spec_examples() -> None:
    offsets = day_offsets(days("2021-03-01", "2021-05-15", "2021-05-16"), "05-15")
    assert offsets.dtype == np.float32
    np.testing.assert_array_equal(offsets, [-75, 0, 1])


def test_day_offsets_use_each_dates_own_year() -> None:
    # 2020 is a leap year: 1 Jan 2020 is 135 days before 15 May 2020, 1 Jan 2021 is 134.
    # A date of 2022 is measured from 15 May 2022, not from the year of the other dates.
    offsets = day_offsets(days("2021-03-01", "2020-01-01", "2021-01-01", "2022-12-31"))
    np.testing.assert_array_equal(offsets, [-75, -135, -134, 230])


def test_day_offsets_other_reference_date() -> None:
    np.testing.assert_array_equal(day_offsets(days("2021-01-01", "2021-02-10"), "01-01"), [0, 40])


# -- DatesIndex -------------------------------------------------------------------------------


def gpkg_table(path: Path) -> dict[str, str]:
    frame = pyogrio.read_dataframe(path, read_geometry=False)
    return dict(zip(frame["patch_id"], frame["acquisition_dates"], strict=True))


@pytest.mark.parametrize("modality", list(TS_GPKGS))
def test_dates_equal_the_geopackage(synthetic: SynthSummary, modality: Modality) -> None:
    table = gpkg_table(synthetic.root / METADATA_DIR / TS_GPKGS[modality])
    index = DatesIndex(synthetic.root)
    assert index.gpkg_path(modality) == synthetic.root / METADATA_DIR / TS_GPKGS[modality]
    for patch_id in (synthetic.patch_ids["train"][0], synthetic.patch_ids["test"][-1]):
        stored = json.loads(table[patch_id])
        expected = [stored[k] for k in sorted(stored, key=int)]
        got = index.dates(modality, patch_id)
        assert [d.item().strftime("%Y%m%d") for d in got] == expected
        assert len(got) >= 4  # the fixture draws 4 to 9 dates


def test_s2_mask_uses_the_s2_dates(synthetic: SynthSummary) -> None:
    index = DatesIndex(synthetic.root)
    patch_id = synthetic.patch_ids["val"][0]
    np.testing.assert_array_equal(
        index.dates(Modality.SENTINEL2_MSK, patch_id), index.dates(Modality.SENTINEL2_TS, patch_id)
    )


def test_patch_ids_filter_keeps_only_those(synthetic: SynthSummary) -> None:
    kept = synthetic.patch_ids["train"][0]
    index = DatesIndex(synthetic.root, patch_ids=[kept])
    assert len(index.dates(Modality.SENTINEL2_TS, kept)) >= 4
    with pytest.raises(DataError, match=synthetic.patch_ids["test"][0]):
        index.dates(Modality.SENTINEL2_TS, synthetic.patch_ids["test"][0])


def test_unknown_patch_names_the_geopackage(synthetic: SynthSummary) -> None:
    index = DatesIndex(synthetic.root)
    with pytest.raises(DataError) as info:
        index.dates(Modality.SENTINEL1_ASC_TS, "D006-2020_XX-S1-99_9-9")
    message = str(info.value)
    assert "GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg" in message
    assert "D006-2020_XX-S1-99_9-9" in message


def test_missing_geopackage_is_named(synthetic: SynthSummary, tmp_path: Path) -> None:
    meta = tmp_path / METADATA_DIR
    shutil.copytree(synthetic.root / METADATA_DIR, meta)
    (meta / TS_GPKGS[Modality.SENTINEL2_TS]).unlink()
    index = DatesIndex(tmp_path)
    # S1 still works; S2 names the missing file.
    assert len(index.dates(Modality.SENTINEL1_ASC_TS, synthetic.patch_ids["train"][0])) >= 4
    with pytest.raises(DataError) as info:
        index.dates(Modality.SENTINEL2_TS, synthetic.patch_ids["train"][0])
    assert str(meta / TS_GPKGS[Modality.SENTINEL2_TS]) in str(info.value)
    assert "missing" in str(info.value)
