"""Maps and non-finite input values: an error naming the raster, or ``nonfinite: zero``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from flairkit.checkpoint import save_model
from flairkit.config import ModelConfig, ZoneConfig, from_dict, preprocess_config_for
from flairkit.inference.zonal import predict_zone
from flairkit.io.raster import DataError
from flairkit.modalities import COSIA_CLASSES, Modality, Task
from flairkit.models.build import build_model
from flairkit.synth_zone import ZoneSummary, make_synthetic_zone

DEM = Modality.DEM_ELEV


@pytest.fixture(scope="module")
def nan_dem_zone(module_tmp: Path) -> tuple[ZoneSummary, Path, Path]:
    """A one-patch zone whose DEM mosaic holds NaN in its first rows, and a DEM-only model."""
    zone = make_synthetic_zone(
        module_tmp / "zone", seed=3, aerial_px=64, patches=(1, 1), modalities=[DEM]
    )
    dem = zone.sources[DEM].path
    with rasterio.open(dem) as src:
        profile, data = src.profile, src.read()
    data[:, :4] = np.nan
    nan_dem = module_tmp / "dem_nan.tif"
    with rasterio.open(nan_dem, "w", **profile) as dst:
        dst.write(data)
    torch.manual_seed(0)
    px = data.shape[-1]
    cfg = ModelConfig(
        inputs={DEM: 2},
        img_sizes={DEM: px},
        tasks={Task.COSIA: len(COSIA_CLASSES)},
        arch="resnet18-unet",
        out_px=px,
    )
    model = save_model(
        module_tmp / "dem.safetensors", build_model(cfg).eval(), cfg, preprocess_config_for([DEM])
    )
    return zone, nan_dem, model


def zone_config(model: Path, dem: Path, out: Path, **top):
    raw = {
        "model": str(model),
        "inputs": {DEM.value: {"path": str(dem)}},
        "output": {"path": str(out)},
        "runtime": {"batch_size": 1, "progress": False},
        **top,
    }
    return from_dict(ZoneConfig, raw)


def test_nan_in_a_map_input_is_an_error_naming_the_raster(nan_dem_zone, tmp_path: Path) -> None:
    _, nan_dem, model = nan_dem_zone
    out = tmp_path / "map" / "cosia.tif"
    with pytest.raises(DataError, match=rf"{nan_dem}.*NaN or infinite"):
        predict_zone(zone_config(model, nan_dem, out))
    assert not out.exists()


def test_nonfinite_zero_maps_the_raster_as_zeros(nan_dem_zone, tmp_path: Path) -> None:
    zone, nan_dem, model = nan_dem_zone
    # the same raster with the NaN already replaced by 0 gives the same map
    zeroed = tmp_path / "dem_zero.tif"
    with rasterio.open(nan_dem) as src:
        profile, data = src.profile, src.read()
    with rasterio.open(zeroed, "w", **profile) as dst:
        dst.write(np.nan_to_num(data, nan=0.0))
    maps = []
    for name, dem in (("zero", nan_dem), ("zeroed", zeroed)):
        out = tmp_path / name / "cosia.tif"
        predict_zone(zone_config(model, dem, out, nonfinite="zero"))
        with rasterio.open(out) as src:
            maps.append(src.read())
    assert maps[0].shape[-2:] == (64, 64)
    np.testing.assert_array_equal(maps[0], maps[1])
