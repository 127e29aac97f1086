"""Tiled products (``output.tile_size_m``): the mosaic is the single-zone map, split over ranks.

The synthetic zone (aerial 0.4 m, 768 x 512 px) is cut into 100 m tiles (250 px) on the grid of
multiples of 100 m: 4 x 3 tiles, the outer ones partly beyond the rasters. An AOI polygon in
another CRS (WGS 84) leaves some tiles out and cuts others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
import yaml
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.features import geometry_mask, rasterize
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely.geometry import Polygon, box

from flairkit.checkpoint import save_model
from flairkit.cli import main
from flairkit.config import ModelConfig, ZoneConfig, from_dict, preprocess_config_for
from flairkit.inference.predictor import load_zone_model
from flairkit.inference.product import (
    DONE,
    ProductPaths,
    finalize_product,
    predict_product,
    product_plan,
    product_tiles,
    rank_of_job,
    read_index,
    snap_bounds,
)
from flairkit.inference.zonal import predict_zone
from flairkit.io.dates import read_dates_file
from flairkit.io.writers import NODATA_CLASS
from flairkit.modalities import COSIA_CLASSES, Modality, Task, hex_to_rgb
from flairkit.models.build import build_model
from flairkit.sample import Georef
from flairkit.synth_zone import ZoneSummary

AERIAL, S2, S2_MASK = Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.SENTINEL2_MSK
SIZE = 100.0


@pytest.fixture(scope="module")
def model(module_tmp: Path, synthetic_zone: ZoneSummary) -> Path:
    """A ResNet18 U-Net on aerial + Sentinel-2 (cloud filter on: it needs the masks)."""
    torch.manual_seed(3)
    px = synthetic_zone.px_by_modality
    cfg = ModelConfig(
        inputs={AERIAL: 3, S2: 10}, img_sizes={AERIAL: px[AERIAL], S2: px[S2]},
        tasks={Task.COSIA: len(COSIA_CLASSES)}, arch="resnet18-unet", out_px=px[Modality.COSIA],
    )  # fmt: skip
    path = module_tmp / "model.safetensors"
    return save_model(path, build_model(cfg).eval(), cfg, preprocess_config_for([AERIAL, S2]))


@pytest.fixture(scope="module")
def department(module_tmp: Path, synthetic_zone: ZoneSummary) -> dict:
    """The zone's inputs as they come: 16 ortho tiles (plain, JPEG-compressed GeoTIFF and
    JPEG2000), and Sentinel-2 as one file per date, with one mask file per date, in UTM 31N
    (EPSG:32631), the dates in the file names."""
    folder = module_tmp / "department"
    ortho = folder / "ortho"
    ortho.mkdir(parents=True)
    with rasterio.open(synthetic_zone.sources[AERIAL].path) as src:
        data, profile = src.read(), src.profile
    rows, cols = data.shape[1] // 4, data.shape[2] // 4
    for i in range(4):
        for j in range(4):
            part = data[:, i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            transform = profile["transform"] * rasterio.Affine.translation(j * cols, i * rows)
            kind = (i * 4 + j) % 3  # plain, JPEG in a TIFF (lossy), JPEG2000 (lossless)
            options = [
                {"driver": "GTiff", "compress": "deflate"},
                {"driver": "GTiff", "compress": "jpeg", "interleave": "band"},
                {"driver": "JP2OpenJPEG", "quality": 100, "reversible": True},
            ][kind]
            suffix = ".jp2" if kind == 2 else ".tif"
            path = ortho / f"ortho_{i}_{j}{suffix}"
            with rasterio.open(
                path, "w", width=cols, height=rows, count=4, dtype="uint8",
                crs=profile["crs"], transform=transform, **options,
            ) as dst:  # fmt: skip
                dst.write(part)
    s2 = synthetic_zone.sources[S2]
    dates = read_dates_file(s2.dates_path)
    series, masks = folder / "s2", folder / "s2_masks"
    series.mkdir(), masks.mkdir()
    for source, out, per_date, stem in (
        (s2.path, series, 10, "S2B_MSIL2A_{}T103629_N0500_R008_T31TCJ.tif"),
        (synthetic_zone.sources[S2_MASK].path, masks, 2, "MSK_{}.tif"),
    ):
        with rasterio.open(source) as src:
            stack = src.read()
            transform, crs = (
                calculate_default_transform(
                    src.crs, "EPSG:32631", src.width, src.height, *src.bounds, resolution=20.0
                )[0],
                "EPSG:32631",
            )
            width, height = calculate_default_transform(
                src.crs, "EPSG:32631", src.width, src.height, *src.bounds, resolution=20.0
            )[1:]
            for t, date in enumerate(dates):
                band = np.zeros((per_date, height, width), stack.dtype)
                reproject(
                    stack[t * per_date : (t + 1) * per_date], band, src_transform=src.transform,
                    src_crs=src.crs, dst_transform=transform, dst_crs=crs,
                    resampling=Resampling.nearest,
                )  # fmt: skip
                name = stem.format(str(date).replace("-", ""))
                with rasterio.open(
                    out / name, "w", driver="GTiff", width=width, height=height,
                    count=per_date, dtype=stack.dtype, crs=crs, transform=transform,
                ) as dst:  # fmt: skip
                    dst.write(band)
    return {
        AERIAL.value: {"path": str(ortho)},
        S2.value: {"path": str(series), "mask": str(masks)},
    }


@pytest.fixture(scope="module")
def aoi(module_tmp: Path, synthetic_zone: ZoneSummary) -> Path:
    """A pentagon over part of the zone, stored in WGS 84."""
    left, bottom, right, top = synthetic_zone.bounds
    w, h = right - left, top - bottom
    shape = Polygon(
        [
            (left + 0.05 * w, bottom + 0.1 * h), (left + 0.6 * w, bottom - 0.2 * h),
            (left + 0.7 * w, top - 0.3 * h), (left + 0.3 * w, top + 0.1 * h),
            (left + 0.02 * w, top - 0.4 * h),
        ]
    )  # fmt: skip
    path = module_tmp / "aoi.geojson"
    gpd.GeoDataFrame({"name": ["zone"]}, geometry=[shape], crs="EPSG:2154").to_crs(
        "EPSG:4326"
    ).to_file(path)
    return path


def config(inputs: dict, model: Path, out: Path, **extra: dict) -> ZoneConfig:
    raw: dict = {
        "model": str(model),
        "inputs": inputs,
        "output": {"path": str(out)},
        "tiling": {"tile_px": 256, "overlap_px": 64},
        "runtime": {"batch_size": 1, "progress": False, "channels_last": False,
                    "fold_batchnorm": False},
    }  # fmt: skip
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(ZoneConfig, raw)


def read(path: Path) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


@pytest.fixture(scope="module")
def single(module_tmp: Path, synthetic_zone: ZoneSummary, model: Path, department: dict) -> Path:
    """The single-zone map of the product's area (the zone widened to multiples of 100 m),
    from the same tiles and per-date files."""
    bounds = snap_bounds(synthetic_zone.bounds, SIZE)
    out = module_tmp / "single.tif"
    predict_zone(config(department, model, out, grid={"bounds": list(bounds)}))
    return out


@pytest.fixture(scope="module")
def product(module_tmp: Path, model: Path, aoi: Path, department: dict):
    out = module_tmp / "one" / "zone.vrt"
    output = {"tile_size_m": SIZE, "vectors": True}
    cfg = config(department, model, out, output=output, aoi={"path": str(aoi)})
    return cfg, predict_product(cfg)


@pytest.fixture(scope="module")
def single_of_aoi_area(module_tmp: Path, model: Path, aoi: Path, department: dict) -> Path:
    """The single-zone map of the area the product plans for an AOI: the AOI's bounds widened
    to multiples of 100 m. Its window grid is the product's; a map of another area lays its
    windows elsewhere, and a model's output depends on its window's context."""
    shape = gpd.read_file(aoi).to_crs("EPSG:2154").geometry.union_all()
    out = module_tmp / "single_aoi_area.tif"
    bounds = list(snap_bounds(shape.bounds, SIZE))
    predict_zone(config(department, model, out, grid={"bounds": bounds}))
    return out


def test_the_mosaic_is_the_single_map_inside_the_aoi_and_nodata_outside(
    product, single_of_aoi_area: Path, aoi: Path, synthetic_zone: ZoneSummary
) -> None:
    zone = synthetic_zone
    cfg, summary = product
    paths = summary.paths
    mosaic, transform = read(paths.vrt)
    full, full_transform = read(single_of_aoi_area)
    # the mosaic covers the tiles touching the AOI: a window of the single map
    col = round((transform.c - full_transform.c) / transform.a)
    row = round((transform.f - full_transform.f) / transform.e)
    assert transform.a == full_transform.a and col >= 0 and row >= 0
    window = full[row : row + mosaic.shape[0], col : col + mosaic.shape[1]]
    shape = gpd.read_file(aoi).to_crs("EPSG:2154").geometry.union_all()
    inside = geometry_mask([shape], mosaic.shape, transform, invert=True)
    assert 0.2 < inside.mean() < 0.9
    np.testing.assert_array_equal(mosaic[inside], window[inside])  # bit for bit
    assert (mosaic[~inside] == NODATA_CLASS).all()
    # real classes were compared: the AOI reaches beyond the rasters, where both are nodata
    data = inside & geometry_mask([box(*zone.bounds)], mosaic.shape, transform, invert=True)
    assert data.sum() > 0.5 * inside.sum() and (window[data] != NODATA_CLASS).all()
    assert (window[inside & ~data] == NODATA_CLASS).all()

    index = read_index(paths.index)
    assert list(index.columns[:3]) == ["name", "path", "status"]
    assert set(index.status) == {DONE} and len(index) == summary.total == summary.done
    assert all(index.geometry.intersects(shape))  # only tiles touching the AOI
    assert len(index) < 12  # of the 4 x 3 tiles of the area
    areas = np.zeros(2)  # of the polygons, of the classes
    for name, rel in zip(index.name, index.path, strict=True):
        with rasterio.open(paths.vrt.parent / rel) as tile:
            assert tile.profile["tiled"] and tile.nodata == NODATA_CLASS
            assert tile.colormap(1)[0][:3] == hex_to_rgb(COSIA_CLASSES[0].colour)
            assert tile.res == (0.4, 0.4) and tile.width <= 251
            left, top = tile.bounds.left, tile.bounds.top
            assert abs(left / SIZE - round(left / SIZE)) * SIZE < 0.4 and name.endswith(
                f"_{round(left / SIZE) * round(SIZE):07d}_{round(top / SIZE) * round(SIZE):07d}"
            )
            # the tile's polygons (simplified by a pixel): its classes
            classes = tile.read(1)
            polygons = gpd.read_file(paths.vrt.parent / Path(rel).with_suffix(".gpkg"))
            assert polygons.crs == tile.crs and set(polygons["class"]) == set(
                np.unique(classes[classes != NODATA_CLASS])
            )
            # burnt back onto the tile, the polygons (each simplified by a pixel) are its
            # classes but for pixels within 2 of a class edge or of the tile's
            burnt = rasterize(
                zip(polygons.geometry, polygons["class"], strict=True), out_shape=classes.shape,
                transform=tile.transform, fill=NODATA_CLASS, dtype="uint8",
            )  # fmt: skip
            near = sliding_window_view(np.pad(classes, 2, constant_values=NODATA_CLASS), (5, 5))
            interior = (near == classes[:, :, None, None]).all(axis=(2, 3))
            assert interior.mean() > 0.5
            np.testing.assert_array_equal(burnt[interior], classes[interior])
            areas += [polygons.area.sum(), (classes != NODATA_CLASS).sum() * 0.4**2]
            assert set(polygons.name) <= {c.name for c in COSIA_CLASSES}
    assert areas[0] == pytest.approx(areas[1], rel=0.01)
    assert paths.preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths.qml.is_file()
    with rasterio.open(paths.vrt) as src:  # the mosaic: class colours and a reduced copy
        assert src.colormap(1)[1][:3] == hex_to_rgb(COSIA_CLASSES[1].colour)
        assert src.overviews(1) == [2]
        with rasterio.open(paths.vrt.with_name("zone_overview.tif")) as ovr:
            overview = ovr.read(1)
        assert overview.shape == (-(-mosaic.shape[0] // 2), -(-mosaic.shape[1] // 2))
        # a reduced read of the mosaic is served by the overview
        np.testing.assert_array_equal(src.read(1, out_shape=overview.shape), overview)
    # the overview is a nearest-neighbour reduction of the mosaic (made per tile through the
    # tiles' own overviews: 251 px tiles shift the sampling phase of a few pixels)
    assert (overview == mosaic[::2, ::2]).mean() > 0.99
    assert (overview != NODATA_CLASS).mean() > 0.2
    assert summary.computed == summary.total and summary.km2_per_hour > 0
    # a rerun computes nothing
    again = predict_product(cfg)
    assert (again.computed, again.skipped) == (0, summary.total)
    # the index reads finished tiles as done whatever on_existing says (overwrite recomputes
    # them, error refuses to start)
    model = load_zone_model(cfg.model, with_network=False)
    for mode in ("overwrite", "error"):
        other = replace(cfg, output=replace(cfg.output, on_existing=mode))
        plan, tiles, _, no_data = product_plan(other, model)
        assert finalize_product(other, plan, tiles, no_data, paths) == summary.total
    with pytest.raises(FileExistsError, match="the product exists"):
        predict_product(replace(cfg, output=replace(cfg.output, on_existing="error")))


def test_two_jobs_write_the_same_bytes_and_a_killed_job_is_finished_by_a_rerun(
    product, module_tmp: Path, model: Path, aoi: Path, department: dict
) -> None:
    cfg_one, one = product
    out = module_tmp / "two" / "zone.vrt"
    raw = {
        "model": str(model),
        "inputs": department,
        "output": {"path": str(out), "tile_size_m": SIZE},
        "aoi": {"path": str(aoi)},
        "tiling": {"tile_px": 256, "overlap_px": 64},
        "runtime": {"batch_size": 1, "progress": False, "channels_last": False,
                    "fold_batchnorm": False},
    }  # fmt: skip
    path = module_tmp / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flairkit", "map", "-c", str(path), "--world-size", "2"]
    # both ranks at once; rank 1 is killed (SIGKILL) once its first tile is written
    names = list(read_index(one.paths.index).name)
    tiles = ProductPaths.of(out).tiles_dir
    rank1_tiles = [tiles / f"{n}.tif" for n in names[1::2]]
    rank1 = subprocess.Popen([*cmd, "--rank", "1"], env=env, stderr=subprocess.PIPE, text=True)
    rank0 = subprocess.Popen([*cmd, "--rank", "0"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while rank1.poll() is None and time.monotonic() < deadline:
        if any(p.exists() for p in rank1_tiles):
            rank1.kill()
            break
        time.sleep(0.02)
    assert rank1.wait() == -9, "rank 1 ended before it could be killed"
    assert rank0.wait() == 0, rank0.stderr.read()[-2000:] if rank0.stderr else ""
    index = read_index(ProductPaths.of(out).index)
    done = set(index.name[index.status == DONE])
    assert set(names[0::2]) <= done and 0 < len(done & set(names[1::2])) < len(names[1::2])
    # a rerun of the whole (one process) finishes only what is missing
    rerun = subprocess.run(cmd[:-2], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{one.total} of {one.total} tiles finished" in rerun.stdout
    files = sorted(p.name for p in one.paths.tiles_dir.glob("*.tif"))
    assert files == sorted(p.name for p in tiles.glob("*.tif")) and len(files) == one.total
    for name in files:
        assert (tiles / name).read_bytes() == (one.paths.tiles_dir / name).read_bytes(), name
    assert read(out)[0].tobytes() == read(one.paths.vrt)[0].tobytes()
    assert set(read_index(ProductPaths.of(out).index).status) == {DONE}


def test_tiles_share_out_the_pixels_and_ranks_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    georef = Georef("EPSG:2154", (0.4, 0, 881599.8, 0, -0.4, 6443200.2), 1001, 751)
    tiles = product_tiles(georef, SIZE, "z")
    assert len(tiles) == 4 * 3 and tiles[0].name == "z_0881600_6443200"
    covered = np.zeros((751, 1001), int)
    for t in tiles:
        covered[t.row_start : t.row_stop, t.col_start : t.col_stop] += 1
    assert (covered == 1).all()
    assert snap_bounds((881645.0, 6442944.2, 881952.2, 6443149.0), 100) == (
        881600, 6442900, 882000, 6443200,
    )  # fmt: skip
    assert box(*snap_bounds((0.5, 0.5, 99.5, 100.0), 100)).bounds == (0, 0, 100, 100)
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert rank_of_job(None, None) == (1, 3)
    assert rank_of_job(2, None) == (2, 3)
    with pytest.raises(ValueError, match="rank must be in"):
        rank_of_job(3, 3)


def test_bad_product_configs_are_one_line(
    tmp_path: Path, model: Path, department: dict, capsys
) -> None:
    raw = {
        "model": str(model),
        "inputs": department,
        "output": {"path": str(tmp_path / "p.tif")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["map", "-c", str(path), "--tile-size-m", "100"]) == 2
    assert "output.path:" in capsys.readouterr().err
    raw["output"] = {"path": str(tmp_path / "p.tif"), "vectors": True}
    path.write_text(yaml.safe_dump(raw))
    assert main(["map", "-c", str(path)]) == 2
    assert "output.vectors: polygons are written per tile" in capsys.readouterr().err
    raw["output"] = {"path": str(tmp_path / "p.vrt"), "tile_size_m": 100.1}
    path.write_text(yaml.safe_dump(raw))
    assert main(["map", "-c", str(path)]) == 2
    assert "output.tile_size_m: 100.1 is not a whole number of 0.4 m" in capsys.readouterr().err
    raw["output"]["tile_size_m"] = 100
    path.write_text(yaml.safe_dump(raw))
    assert main(["map", "-c", str(path), "--aoi", str(tmp_path / "none.gpkg")]) == 2
    err = capsys.readouterr().err
    assert "aoi.path:" in err and "none.gpkg: vector file not found" in err
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"dep": ["34"]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:2154").to_file(far)
    assert main(["map", "-c", str(path), "--aoi", str(far), "--aoi-where", "dep = '99'"]) == 2
    assert "aoi.where:" in capsys.readouterr().err
    assert not (tmp_path / "p_tiles").exists()


def test_a_single_map_with_an_aoi_covers_it_and_blanks_the_rest(
    module_tmp: Path, model: Path, aoi: Path, department: dict, single: Path,
    synthetic_zone: ZoneSummary,
) -> None:  # fmt: skip
    out = module_tmp / "aoi_map.tif"
    predict_zone(config(department, model, out, aoi={"path": str(aoi)}))
    mapped, transform = read(out)
    full, full_transform = read(single)
    shape = gpd.read_file(aoi).to_crs("EPSG:2154").geometry.union_all()
    left, bottom, right, top = shape.intersection(box(*synthetic_zone.bounds)).bounds
    assert abs(transform.c - left) <= 0.4 and abs(transform.f - top) <= 0.4  # the AOI's bounds
    assert abs(transform.c + transform.a * mapped.shape[1] - right) <= 0.4
    inside = geometry_mask([shape], mapped.shape, transform, invert=True)
    assert (mapped[~inside] == NODATA_CLASS).all() and (~inside).sum() > 1000
    assert (mapped[inside] != NODATA_CLASS).mean() > 0.95
    # on the grid of the single map (grid.bounds), the AOI only blanks and skips: the pixels
    # inside it are the single map's, bit for bit
    bounds = list(snap_bounds(synthetic_zone.bounds, SIZE))
    out = module_tmp / "aoi_grid.tif"
    predict_zone(config(department, model, out, aoi={"path": str(aoi)}, grid={"bounds": bounds}))
    mapped, transform = read(out)
    assert transform == full_transform and mapped.shape == full.shape
    inside = geometry_mask([shape], mapped.shape, transform, invert=True)
    np.testing.assert_array_equal(mapped[inside], full[inside])
    assert (mapped[~inside] == NODATA_CLASS).all()
