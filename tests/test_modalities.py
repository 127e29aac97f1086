"""Modality tables: bands looked up by name."""

from __future__ import annotations

import pytest

from flairkit.modalities import Modality


def test_band_indices_by_name() -> None:
    assert Modality.AERIAL_RGBI.band_indices(("NIR", "R", "G")) == [3, 0, 1]
    assert Modality.AERIAL_RGBI.band_indices(["R", "G", "B"]) == [0, 1, 2]
    assert Modality.SENTINEL2_TS.band_indices(("B04", "B03", "B02")) == [2, 1, 0]
    assert Modality.SENTINEL1_DESC_TS.band_indices(("VH",)) == [1]
    assert Modality.LPIS.band_indices(("LEVEL3",)) == [2]
    assert Modality.SPOT_RGBI.band_indices(()) == []


def test_band_indices_unknown_band_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"SPOT_RGBI: unknown band\(s\) \['B08'\]; valid: \['R'"):
        Modality.SPOT_RGBI.band_indices(("R", "B08"))
