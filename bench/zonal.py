"""Large-area maps: output pixels/s and peak RSS of ``predict_zone``, as one JSON line.

Synthetic rasters (``make_large_aerial_raster``, ``make_large_sentinel2``: 0.2 m aerial RGBI,
10.24 m Sentinel-2 with 20 dates and its snow/cloud mask) and random-init models, written once in
a temporary folder. Each configuration runs ``predict_zone`` end to end (reading, model, blending,
writing the class map COG with its style and preview; no probabilities) in a fresh process, so
its peak RSS (``ru_maxrss``) is its own. The model is loaded before the clock starts (``load_s``,
reported beside: imports, building, weights):

  resnet18_4096   ResNet18 U-Net, aerial (NIR, R, G) -> COSIA, 4096^2 px, default tiling
  tiny_4096       a tiny CNN (two convolutions) in place of the network, 4096^2 px: the cost and
                  memory of everything but the model
  tiny_16384      the same on 16384^2 px (16 x the area): peak RSS must stay within 10 % of
                  tiny_4096 (the blending buffer is bounded by strips, the GDAL cache is capped)
  aerial_s2_2048  ResNet18 U-Net + U-TAE, aerial + Sentinel-2 (cloud filter on), 2048^2 px of
                  the 4096^2 raster
  resnet18_4096_overlap32  the same with ``tiling.overlap_px=32`` (default 64 = tile / 8): on
                  large areas 1.14 px computed per output px instead of 1.31, for a little more
                  edge effect (random-init ResNet18 U-Net, 1536^2 px: argmax differs from one
                  whole-image pass on 0.023 % of the pixels, 0.006 % with the default); at
                  4096^2 both need 9 x 9 tiles, so the same time
  resnet18_network  the ResNet18 U-Net alone on random 512 px tiles, as predict_zone runs it
                  (BatchNorm folded, NHWC, batch 1): the model's px/s on this machine, to compare
                  the map's px/s with (at 4096^2 the map computes 81 tiles of 512 px, 1.27 px
                  per output px; the official tiling, 2048 px tiles with 512 px margins, 4)

Tiled products (``output.tile_size_m``, ``inference.product``) from inputs as they come: the
8192^2 px aerial raster cut into 16 ortho tiles of 2048^2 px (a folder), Sentinel-2 as one file
per date (20 dates, UTM 31N, with one mask file per date), 1 km tiles (5000 px) on the
Lambert-93 grid of multiples of 1 km (2 x 2 tiles: 10^8 px, 2/3 of them with data), the tiny
network with the LC-D recipe (aerial + S2: both are read, cloud-filtered and normalised) on
256 px windows:

  product_tiny_s2_8192        the tiled product, one process
  single_tiny_s2_8192         the single-zone map of the same area from the same inputs
  product_tiny_s2_8192_2proc  the tiled product, 2 processes (ranks 0 and 1 at once): px/s
                              over the wall time of both
  product_tiny_s2_8192_1tile  the tiled product of one of the 4 tiles: peak RSS must not grow
                              from 1 tile to 4 (memory is one tile's, whatever the area)

The figures depend on the CPU and on what else runs on it: each row gives ``matmul_gflops``
(fp32 matmul throughput measured just before) and the load average before and after.

Usage: python bench/zonal.py [--only resnet18_4096 tiny_4096 ...] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from _common import run_isolated  # bench/ is on sys.path when run as a script
from train import matmul_gflops

#: name -> (model file, raster side in px, map side in px, tiny network)
CONFIGS: dict[str, tuple[str, int, int, bool]] = {
    "resnet18_4096": ("aerial", 4096, 4096, False),
    "resnet18_4096_overlap32": ("aerial", 4096, 4096, False),
    "tiny_4096": ("aerial", 4096, 4096, True),
    "tiny_16384": ("aerial", 16384, 16384, True),
    "aerial_s2_2048": ("aerial_s2", 4096, 2048, False),
    "resnet18_network": ("aerial", 4096, 0, False),
    "product_tiny_s2_8192": ("aerial_s2", 8192, 8192, True),
    "single_tiny_s2_8192": ("aerial_s2", 8192, 8192, True),
    "product_tiny_s2_8192_2proc": ("aerial_s2", 8192, 8192, True),
    "product_tiny_s2_8192_1tile": ("aerial_s2", 8192, 8192, True),
}
#: The tiled-product rows: 1 km tiles, 256 px windows.
PRODUCT_TILE_M = 1000.0
#: The official FLAIR-HUB zonal code on a 2-core CPU, ResNet18 U-Net, 4096^2 aerial raster,
#: tile 2048, margin 512 (figures given in the issue, not measured here).
OFFICIAL = {"px_per_s": 99_000, "peak_rss_mb": 3700}
TARGET = {"px_per_s": 300_000, "peak_rss_mb": 1500}
#: Configurations that change the default tiling: name -> tiling section of the zone config.
TILING = {"resnet18_4096_overlap32": {"overlap_px": 32}}
DIR_ENV = "FLAIRKIT_BENCH_ZONAL_DIR"


def prepare(data_dir: Path, names: list[str]) -> None:
    """Write the rasters and model files the configurations need (skipped when present)."""
    import torch

    from flairkit.checkpoint import save_model
    from flairkit.config import preprocess_config_for
    from flairkit.models.build import build_model
    from flairkit.models.presets import preset_config
    from flairkit.synth_zone import make_large_aerial_raster, make_large_sentinel2

    data_dir.mkdir(parents=True, exist_ok=True)
    for size in sorted({CONFIGS[n][1] for n in names}):
        path = data_dir / f"aerial_{size}.tif"
        if not path.exists():
            georef = make_large_aerial_raster(path, size, seed=0)
            if size == 4096:
                make_large_sentinel2(data_dir / "s2", georef.bounds, num_dates=20, seed=0)
            if size == 8192 and any(n.startswith(("product", "single")) for n in names):
                make_large_sentinel2(data_dir / "s2_8192", georef.bounds, num_dates=20, seed=0)
                as_they_come(data_dir, path)
    models = {"aerial": ("LC-A", False), "aerial_s2": ("LC-D", True)}
    for name in sorted({CONFIGS[n][0] for n in names}):
        path = data_dir / f"{name}.safetensors"
        if path.exists():
            continue
        preset, _ = models[name]
        torch.manual_seed(0)
        cfg = preset_config(preset, aux=False, arch="resnet18-unet")
        save_model(path, build_model(cfg).eval(), cfg, preprocess_config_for(list(cfg.inputs)))


def as_they_come(data_dir: Path, aerial: Path) -> None:
    """The 8192^2 raster as 16 ortho tiles, its S2 stack and mask as per-date UTM files."""
    import numpy as np
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    from rasterio.windows import Window

    from flairkit.io.dates import read_dates_file

    tiles = data_dir / "ortho_8192"
    tiles.mkdir(exist_ok=True)
    with rasterio.open(aerial) as src:
        profile = {**src.profile, "driver": "GTiff"}
        step = src.width // 4
        for i in range(4):
            for j in range(4):
                window = Window(j * step, i * step, step, step)
                out = {**profile, "width": step, "height": step,
                       "transform": src.window_transform(window)}  # fmt: skip
                with rasterio.open(tiles / f"ortho_{i}_{j}.tif", "w", **out) as dst:
                    dst.write(src.read(window=window))
    s2 = data_dir / "s2_8192"
    dates = read_dates_file(s2 / "SENTINEL2_TS_dates.txt")
    for name, per_date, folder in (("SENTINEL2_TS", 10, "s2_dates"), ("SENTINEL2_MSK-SC", 2, "s2_masks")):  # fmt: skip
        out_dir = data_dir / folder
        out_dir.mkdir(exist_ok=True)
        with rasterio.open(s2 / f"{name}.tif") as src:
            stack = src.read()
            transform, width, height = calculate_default_transform(
                src.crs, "EPSG:32631", src.width, src.height, *src.bounds, resolution=10.0
            )
            for t, date in enumerate(dates):
                band = np.zeros((per_date, height, width), stack.dtype)
                reproject(
                    stack[t * per_date : (t + 1) * per_date], band, src_transform=src.transform,
                    src_crs=src.crs, dst_transform=transform, dst_crs="EPSG:32631",
                    resampling=Resampling.nearest,
                )  # fmt: skip
                day = str(date).replace("-", "")
                with rasterio.open(
                    out_dir / f"{name}_{day}.tif", "w", driver="GTiff", width=width,
                    height=height, count=per_date, dtype=stack.dtype, crs="EPSG:32631",
                    transform=transform, compress="deflate",
                ) as dst:  # fmt: skip
                    dst.write(band)


def run_product(name: str) -> dict:
    """A tiled product (or the single map of its area) of the 8192^2 inputs as they come."""
    import subprocess
    import sys

    import yaml

    from flairkit.config import load_zone_config
    from flairkit.inference.product import predict_product, snap_bounds
    from flairkit.inference.zonal import predict_zone
    from flairkit.io.mosaic import build_mosaic_vrt, collect_rasters

    data_dir = Path(os.environ[DIR_ENV])
    out_dir = Path(tempfile.mkdtemp(prefix=f"map_{name}_", dir=data_dir))
    vrt = build_mosaic_vrt(collect_rasters(data_dir / "ortho_8192"), out_dir / "extent.vrt")
    import rasterio

    with rasterio.open(vrt) as src:
        bounds = snap_bounds(tuple(src.bounds), PRODUCT_TILE_M)
    if name.endswith("1tile"):  # the north-west tile
        bounds = (bounds[0], bounds[3] - PRODUCT_TILE_M, bounds[0] + PRODUCT_TILE_M, bounds[3])
    product = name.startswith("product")
    raw = {
        "model": str(data_dir / "aerial_s2.safetensors"),
        "inputs": {
            "AERIAL_RGBI": str(data_dir / "ortho_8192"),
            "SENTINEL2_TS": {"path": str(data_dir / "s2_dates"), "mask": str(data_dir / "s2_masks")},
        },
        "output": {"path": str(out_dir / ("map.vrt" if product else "map.tif")),
                   "on_existing": "overwrite"},
        "grid": {"bounds": list(bounds)},
        "tiling": {"tile_px": 256},
        "runtime": {"progress": False},
    }  # fmt: skip
    if product:
        raw["output"]["tile_size_m"] = PRODUCT_TILE_M
    config_path = out_dir / "map.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_zone_config(config_path)
    gflops = matmul_gflops()
    load_before = os.getloadavg()[0]
    pixels = round((bounds[2] - bounds[0]) / 0.2) * round((bounds[3] - bounds[1]) / 0.2)
    start = time.perf_counter()
    if name.endswith("2proc"):
        env = {**os.environ, DIR_ENV: str(data_dir), "FLAIRKIT_BENCH_TINY": "1"}
        code = (
            f"import sys, dataclasses; sys.path.insert(0, {str(Path(__file__).parent)!r}); from zonal import tiny_model_of; "
            "from flairkit.config import load_zone_config; "
            "from flairkit.inference.product import predict_product; "
            f"cfg = load_zone_config({str(config_path)!r}); "
            "predict_product(cfg, model=tiny_model_of(cfg), rank=int(sys.argv[1]), world_size=2)"
        )
        procs = [subprocess.Popen([sys.executable, "-c", code, str(r)], env=env) for r in (0, 1)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"ranks exited {codes}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    else:
        model = tiny_model_of(config)
        start = time.perf_counter()
        if product:
            predict_product(config, model=model)
        else:
            predict_zone(config, model=model)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.perf_counter() - start
    km2 = pixels * 0.04 / 1e6
    return {
        "network": "tiny (LC-D recipe: aerial + S2 read)",
        "inputs": "16 ortho tiles + 20 per-date S2 files and masks (UTM 31N)",
        "map_px": pixels,
        "tile_size_m": PRODUCT_TILE_M if product else None,
        "seconds": round(elapsed, 1),
        "px_per_s": round(pixels / elapsed),
        "km2_per_h": round(km2 / elapsed * 3600, 1),
        "peak_rss_mb": round(rss, 1),
        "matmul_gflops": round(gflops, 1),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
    }


def tiny_model_of(config):
    """The config's model file (its recipe) with the tiny network in place of its own."""
    import dataclasses

    from flairkit.inference.predictor import load_zone_model

    model = load_zone_model(config.model)
    return dataclasses.replace(model, network=tiny_network(19))


def tiny_network(num_classes: int):
    """Two convolutions (3x3 then 1x1): the model costs almost nothing."""
    import torch
    from torch import nn

    from flairkit.modalities import Modality, Task

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)
            )

        def forward(self, batch, out_size):
            return {Task.COSIA: self.net(batch.inputs[Modality.AERIAL_RGBI])}

    torch.manual_seed(0)
    return Tiny().eval()


def run_network(steps: int = 4) -> dict:
    """Time the ResNet18 U-Net alone on 512 px tiles, prepared as predict_zone prepares it."""
    import torch

    from flairkit.inference.fold import fold_batchnorm
    from flairkit.inference.predictor import TilePredictor, inference_network, load_zone_model
    from flairkit.modalities import Modality, Task
    from flairkit.sample import Batch

    model = load_zone_model(Path(os.environ[DIR_ENV]) / "aerial.safetensors")
    network = inference_network(model.network, Task.COSIA)
    fold_batchnorm(network)
    predictor = TilePredictor(network, Task.COSIA, 512, torch.device("cpu"))
    x = torch.randn(1, 3, 512, 512)
    batch = Batch({Modality.AERIAL_RGBI: x}, {}, {}, {}, ["bench"], [None], [None])
    gflops = matmul_gflops()
    predictor(batch)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        predictor(batch)
    elapsed = time.perf_counter() - start
    return {
        "network": model.config.arch,
        "tile_px": 512,
        "px_per_s": round(steps * 512 * 512 / elapsed),
        "matmul_gflops": round(gflops, 1),
        "load_avg": round(os.getloadavg()[0], 2),
    }


def run_one(name: str) -> dict:
    """Map one configuration in this process; time it and report the peak RSS."""
    if name == "resnet18_network":
        return run_network()
    if name.startswith(("product", "single")):
        return run_product(name)
    import dataclasses

    import torch

    from flairkit.config import ZoneConfig, from_dict
    from flairkit.inference.predictor import load_zone_model
    from flairkit.inference.zonal import predict_zone

    data_dir = Path(os.environ[DIR_ENV])
    model_name, raster_px, map_px, tiny = CONFIGS[name]
    inputs = {"AERIAL_RGBI": {"path": str(data_dir / f"aerial_{raster_px}.tif")}}
    if model_name == "aerial_s2":
        s2 = data_dir / "s2"
        inputs["SENTINEL2_TS"] = {
            "path": str(s2 / "SENTINEL2_TS.tif"),
            "dates": str(s2 / "SENTINEL2_TS_dates.txt"),
            "mask": str(s2 / "SENTINEL2_MSK-SC.tif"),
        }
    out_dir = Path(tempfile.mkdtemp(prefix=f"map_{name}_", dir=data_dir))
    raw = {
        "model": str(data_dir / f"{model_name}.safetensors"),
        "inputs": inputs,
        "output": {"path": str(out_dir / "map.tif"), "on_existing": "overwrite"},
        "runtime": {"progress": False},
    }
    if name in TILING:
        raw["tiling"] = TILING[name]
    if map_px != raster_px:  # the north-west map_px x map_px of the raster
        import rasterio

        with rasterio.open(inputs["AERIAL_RGBI"]["path"]) as src:
            x0, y0, gsd = src.transform.c, src.transform.f, src.transform.a
        raw["grid"] = {"bounds": [x0, y0 - map_px * gsd, x0 + map_px * gsd, y0]}
    config = from_dict(ZoneConfig, raw)
    # The model is loaded (imports included) before the clock starts, and timed on its own:
    # px/s is the mapping's throughput, load_s a fixed cost per run.
    start = time.perf_counter()
    model = load_zone_model(config.model)
    load_s = time.perf_counter() - start
    if tiny:
        model = dataclasses.replace(model, network=tiny_network(19))
    gflops = matmul_gflops()
    load_before = os.getloadavg()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    outputs = predict_zone(config, model=model)
    elapsed = time.perf_counter() - start
    pixels = map_px * map_px
    return {
        "network": "tiny" if tiny else "resnet18-unet",
        "inputs": list(inputs),
        "map_px": map_px,
        "seconds": round(elapsed, 1),
        "px_per_s": round(pixels / elapsed),
        "load_s": round(load_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_map_mb": round(rss_before, 1),
        "class_map_mb": round(outputs.class_path.stat().st_size / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(gflops, 1),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument(
        "--dir", type=Path, help="keep rasters and models here (default: temporary)"
    )
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)  # run_isolated's
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return
    names = args.only or list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="flairkit_bench_zonal_") as tmp:
        data_dir = args.dir or Path(tmp)
        prepare(data_dir, names)
        os.environ[DIR_ENV] = str(data_dir)
        from flairkit.inference.zonal import GDAL_CACHE_BYTES

        result: dict = {
            "bench": "zonal",
            "device": "cpu",
            "cpus": os.cpu_count(),
            "gdal_cache_mb": GDAL_CACHE_BYTES // 2**20,
            "official_resnet18_4096": OFFICIAL,
            "target_resnet18_4096": TARGET,
        }
        for name in names:
            result[name] = run_isolated(__file__, name, 1)
    for name in ("resnet18_4096", "resnet18_4096_overlap32"):
        row = result.get(name, {})
        if "px_per_s" in row:
            row["meets_target"] = (
                row["px_per_s"] >= TARGET["px_per_s"]
                and row["peak_rss_mb"] <= TARGET["peak_rss_mb"]
            )
    r18 = result.get("resnet18_4096", {})
    if "px_per_s" in r18:
        network = result.get("resnet18_network", {})
        if "px_per_s" in network:
            # What the official tiling (4 px computed per output px) would give with this model
            # speed on this machine.
            r18["official_tiling_px_per_s_here"] = round(network["px_per_s"] / 4)
    small, large = result.get("tiny_4096", {}), result.get("tiny_16384", {})
    if "peak_rss_mb" in small and "peak_rss_mb" in large:
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        result["rss_16384_over_4096"] = round(ratio, 3)
        result["rss_flat"] = ratio <= 1.10
    print(json.dumps(result))


if __name__ == "__main__":
    main()
