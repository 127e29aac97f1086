"""predict_zone: patch/zone parity through the model, outputs, resume, errors, pieces, S2."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairkit.checkpoint import save_model
from flairkit.config import (
    ConfigError,
    ModelConfig,
    ZoneConfig,
    from_dict,
    load_zone_config,
    preprocess_config_for,
)
from flairkit.inference.fold import fold_batchnorm
from flairkit.inference.predictor import ZoneModel, load_zone_model
from flairkit.inference.shard import plan_pieces, split_columns, split_rows, strip_grid
from flairkit.inference.stitch import RowBlock, quantise_block
from flairkit.inference.tiling import make_tile_grid
from flairkit.inference.zonal import merge_zone, predict_zone
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import read_patch
from flairkit.io.raster import DataError
from flairkit.io.writers import NODATA_CLASS, ResumeMismatchError
from flairkit.modalities import COSIA_CLASSES, PATCH_SIZE_M, Modality, Task, hex_to_rgb
from flairkit.models.build import build_model
from flairkit.sample import Batch, collate
from flairkit.synth_zone import ZoneSummary
from flairkit.transforms.preprocess import Preprocessor

AERIAL, S2, S2_MASK = Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.SENTINEL2_MSK
K = len(COSIA_CLASSES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- models and configs -----------------------------------------------------------------------


def model_config(zone: ZoneSummary, with_s2: bool) -> ModelConfig:
    """A ResNet18 U-Net at the zone's patch sizes (aerial 256 px, S2 5 px)."""
    mods = [AERIAL, S2] if with_s2 else [AERIAL]
    px = zone.px_by_modality
    return ModelConfig(
        inputs={m: (3 if m is AERIAL else 10) for m in mods},
        img_sizes={m: px[m] for m in mods},
        tasks={Task.COSIA: K},
        arch="resnet18-unet",
        out_px=px[Modality.COSIA],
    )


def save_random_model(path: Path, zone: ZoneSummary, with_s2: bool) -> Path:
    torch.manual_seed(1 + with_s2)
    cfg = model_config(zone, with_s2)
    mods = list(cfg.inputs)
    return save_model(path, build_model(cfg).eval(), cfg, preprocess_config_for(mods))


@pytest.fixture(scope="module")
def aerial_model(module_tmp: Path, synthetic_zone: ZoneSummary) -> Path:
    return save_random_model(module_tmp / "aerial.safetensors", synthetic_zone, False)


@pytest.fixture(scope="module")
def s2_model(module_tmp: Path, synthetic_zone: ZoneSummary) -> Path:
    return save_random_model(module_tmp / "s2.safetensors", synthetic_zone, True)


def zone_inputs(zone: ZoneSummary, with_s2: bool) -> dict:
    inputs = {AERIAL.value: {"path": str(zone.sources[AERIAL].path)}}
    if with_s2:
        inputs[S2.value] = {
            "path": str(zone.sources[S2].path),
            "dates": str(zone.sources[S2].dates_path),
            "mask": str(zone.sources[S2_MASK].path),
        }
    return inputs


def zone_config(
    zone: ZoneSummary, model: Path, out: Path, with_s2: bool = False, **sections: dict
) -> ZoneConfig:
    """A map config of the synthetic zone; ``sections`` update the defaults per section."""
    raw = {
        "model": str(model),
        "inputs": zone_inputs(zone, with_s2),
        "output": {"path": str(out), "on_existing": "resume"},
        "tiling": {"tile_px": 256, "overlap_px": 64},
        # Exact float path (as the per-patch path): the CPU even where a GPU is present (the GPU
        # map has its own test), no NHWC, no BatchNorm folding.
        "runtime": {
            "device": "cpu",
            "batch_size": 1,
            "progress": False,
            "channels_last": False,
            "fold_batchnorm": False,
        },
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return from_dict(ZoneConfig, raw)


def read_map(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


class Pointwise(nn.Module):
    """Per-pixel model (a 1x1 conv on the aerial bands): a pixel's output ignores its context.

    Counts the samples it sees; raises after ``fail_after`` forward calls when set.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, K, kernel_size=1)
        self.samples = 0
        self.calls = 0
        self.fail_after = fail_after

    def forward(self, batch: Batch, out_size: tuple[int, int]) -> dict[Task, Tensor]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        x = batch.inputs[AERIAL]
        self.samples += x.shape[0]
        logits = self.conv(x) * 4.0
        if tuple(x.shape[-2:]) != tuple(out_size):  # as the real heads: resize to the label grid
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return {Task.COSIA: logits}


class SmallCNN(nn.Module):
    """Three 3x3 convolutions with zero padding: outputs near a tile edge depend on the tile."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(8, K, 3, padding=1),
        )  # fmt: skip

    def forward(self, batch: Batch, out_size: tuple[int, int]) -> dict[Task, Tensor]:
        return {Task.COSIA: self.net(batch.inputs[AERIAL])}


def pointwise_model(path: Path, **kwargs) -> tuple[ZoneModel, Pointwise]:
    """The recipe of a model file with a Pointwise network in place of its own."""
    net = Pointwise(**kwargs).eval()
    recipe = load_zone_model(path, with_network=False)
    return dataclasses.replace(recipe, network=net, digest="pointwise"), net


def small_cnn_model(path: Path) -> ZoneModel:
    """The recipe of a model file with a SmallCNN in place of its own network."""
    recipe = load_zone_model(path, with_network=False)
    return dataclasses.replace(recipe, network=SmallCNN().eval(), digest="small-cnn")


def patch_predictions(
    zone: ZoneSummary, network: nn.Module, with_s2: bool, patch_ids: tuple[str, ...] | None = None
) -> dict[str, tuple]:
    """Per-patch path: read_patch + Preprocessor (no labels) + model, quantised like the map."""
    mods = [AERIAL, S2] if with_s2 else [AERIAL]
    preprocess = Preprocessor(preprocess_config_for(mods, tasks=()))
    dates = DatesIndex(zone.dataset_root) if with_s2 else None
    out = {}
    for ref in zone.patch_refs():
        if patch_ids is not None and ref.patch_id not in patch_ids:
            continue
        sample = preprocess(read_patch(ref, preprocess.required_modalities, dates))
        with torch.inference_mode():
            logits = network(collate([sample]), (256, 256))[Task.COSIA]
            probs = torch.softmax(logits.float(), dim=1)[0].numpy()
        block = RowBlock(0, probs.shape[1], probs, np.ones(probs.shape[1:], bool))
        out[ref.patch_id] = quantise_block(block)
    return out


def patch_window(zone: ZoneSummary, patch_id: str, gsd_m: float) -> tuple[slice, slice]:
    """Rows and columns of a patch in a map of the zone at ``gsd_m``."""
    left, _, _, top = zone.patch_bounds[patch_id]
    z_left, _, _, z_top = zone.bounds
    r0, c0 = round((z_top - top) / gsd_m), round((left - z_left) / gsd_m)
    n = round(PATCH_SIZE_M / gsd_m)
    return slice(r0, r0 + n), slice(c0, c0 + n)


# -- parity with the patch path ---------------------------------------------------------------


def test_map_equals_patch_predictions_when_tiles_are_patches(
    synthetic_zone: ZoneSummary, s2_model: Path, tmp_path: Path
) -> None:
    """Aerial + S2 model (dates, cloud filter with the mask): a tile = a patch gives its pixels.

    The map covers the two eastern patches of the southern row (the grid does not start at the
    mosaics' corner), and the model is a ResNet18 U-Net fused with a U-TAE.
    """
    model = load_zone_model(s2_model)
    ids = synthetic_zone.patch_ids[4:6]
    expected = patch_predictions(synthetic_zone, model.network, with_s2=True, patch_ids=ids)
    # The patches predict differently, so a tile read or written at the wrong place fails.
    assert len({p.tobytes() for _, p in expected.values()}) == len(expected)
    first, last = (synthetic_zone.patch_bounds[p] for p in ids)
    bounds = [first[0], first[1], last[2], last[3]]
    cfg = zone_config(
        synthetic_zone, s2_model, tmp_path / "map.tif", with_s2=True, grid={"bounds": bounds},
        tiling={"tile_px": 256, "overlap_px": 0}, output={"write_proba": True},
    )  # fmt: skip
    out = predict_zone(cfg, model=model)
    classes, proba = read_map(out.class_path)[0], read_map(out.proba_path)
    assert classes.shape == (256, 512)
    for i, (patch_id, (want_classes, want_proba)) in enumerate(expected.items()):
        rows, cols = slice(0, 256), slice(256 * i, 256 * (i + 1))
        np.testing.assert_array_equal(classes[rows, cols], want_classes, err_msg=patch_id)
        np.testing.assert_array_equal(proba[:, rows, cols], want_proba, err_msg=patch_id)


@pytest.mark.parametrize("num_workers", [0, 1], ids=["threads", "dataloader"])
def test_pointwise_model_with_overlap_equals_patch_predictions(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path, num_workers: int
) -> None:
    """Overlapping tiles (not aligned with patches) blend back to each pixel's own prediction,
    whether tiles are read by threads or by DataLoader workers."""
    model, net = pointwise_model(aerial_model)
    expected = patch_predictions(synthetic_zone, net, with_s2=False)
    cfg = zone_config(
        synthetic_zone, aerial_model, tmp_path / "map.tif", tiling={"tile_px": 160, "overlap_px": 48},
        output={"write_proba": True}, runtime={"batch_size": 3, "num_workers": num_workers},
    )  # fmt: skip
    out = predict_zone(cfg, model=model)
    classes, proba = read_map(out.class_path)[0], read_map(out.proba_path)
    for patch_id, (want_classes, want_proba) in expected.items():
        rows, cols = patch_window(synthetic_zone, patch_id, PATCH_SIZE_M / 256)
        # Blending sums w * p over two to four tiles and divides by sum(w): equal up to float
        # rounding, so a quantised probability may move by one step at a .5 boundary.
        assert np.abs(proba[:, rows, cols].astype(int) - want_proba).max() <= 1, patch_id
        assert (classes[rows, cols] == want_classes).mean() > 0.999, patch_id


# -- outputs ------------------------------------------------------------------------------------


def test_outputs_are_cogs_with_colours_nodata_style_preview_and_proba(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    """A grid wider than the aerial: nodata there, tiles without data skipped."""
    left, bottom, right, top = synthetic_zone.bounds
    bounds = [left, bottom, right + PATCH_SIZE_M, top + PATCH_SIZE_M]  # one patch more E and N
    model, net = pointwise_model(aerial_model)
    cfg = zone_config(
        synthetic_zone, aerial_model, tmp_path / "maps" / "zone.tif", grid={"bounds": bounds},
        tiling={"tile_px": 256, "overlap_px": 0}, output={"write_proba": True},
    )  # fmt: skip
    out = predict_zone(cfg, model=model)
    assert sorted(p.name for p in out.class_path.parent.iterdir()) == [
        "zone.qml", "zone.tif", "zone_preview.png", "zone_proba.tif",
    ]  # fmt: skip
    assert net.samples == 6  # 12 tiles, of which the 6 outside the aerial raster are skipped
    with rasterio.open(out.class_path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (src.width, src.height) == (1024, 768)
        assert src.crs.to_string() == "EPSG:2154" and src.nodata == NODATA_CLASS
        assert src.transform.a == pytest.approx(0.4) and src.transform.c == pytest.approx(left)
        colours = src.colormap(1)
        assert all(colours[c.value] == (*hex_to_rgb(c.colour), 255) for c in COSIA_CLASSES)
        classes = src.read(1)
    assert np.all(classes[:256] == NODATA_CLASS) and np.all(classes[:, 768:] == NODATA_CLASS)
    inside = classes[256:, :768]
    assert not np.any(inside == NODATA_CLASS) and len(np.unique(inside)) > 1
    with rasterio.open(out.proba_path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.count == K and src.descriptions[0] == COSIA_CLASSES[0].name
        proba = src.read()
    assert np.all(proba[:, :256] == 0)
    assert np.all(np.abs(proba[:, 256:, :768].astype(int).sum(0) - 255) <= K)  # sums to ~1
    palette = ET.parse(out.qml_path).getroot().findall(".//paletteEntry")
    assert [e.get("label") for e in palette] == [c.name for c in COSIA_CLASSES]
    assert out.preview_path.read_bytes()[:8] == PNG_MAGIC


def test_grid_in_another_crs_and_resolution(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    """A UTM grid at 0.8 m: the aerial is reprojected on the fly; outside it is nodata."""
    model, _ = pointwise_model(aerial_model)
    cfg = zone_config(
        synthetic_zone, aerial_model, tmp_path / "utm.tif",
        grid={"crs": "EPSG:32631", "gsd_m": 0.8}, tiling={"tile_px": 128, "overlap_px": 16},
    )  # fmt: skip
    out = predict_zone(cfg, model=model)
    with rasterio.open(out.class_path) as src:
        assert src.crs.to_epsg() == 32631 and src.transform.a == pytest.approx(0.8)
        classes = src.read(1)
    h, w = classes.shape  # the UTM box around the Lambert-93 zone: about 384 x 256 px
    assert abs(w - 384) <= 8 and abs(h - 256) <= 8
    assert classes[h // 2, w // 2] != NODATA_CLASS  # the zone's middle has data
    assert (classes == NODATA_CLASS).any()  # corners of the rotated footprint do not


# -- resume -------------------------------------------------------------------------------------


def test_resume_recomputes_only_unfinished_tiles(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    """Interrupted after 25 of 40 tiles: the rerun skips the 16 tiles above the saved rows."""
    sections = dict(tiling={"tile_px": 128, "overlap_px": 32}, output={"write_proba": True})
    reference = tmp_path / "reference" / "map.tif"
    model, net = pointwise_model(aerial_model)
    out = predict_zone(
        zone_config(synthetic_zone, aerial_model, reference, **sections), model=model
    )
    assert net.samples == 40  # 5 bands (rows 0, 96, 192, 288, 384) x 8 tiles

    path = tmp_path / "resumed" / "map.tif"
    cfg = zone_config(synthetic_zone, aerial_model, path, **sections)
    failing, failing_net = pointwise_model(aerial_model, fail_after=25)
    with pytest.raises(RuntimeError, match="interrupted"):
        predict_zone(cfg, model=failing)
    assert not path.exists()  # the final map appears only when complete
    resumed, resumed_net = pointwise_model(aerial_model)
    out_resumed = predict_zone(cfg, model=resumed)
    # Rows 0-255 were on disk; the bands touching row 256 and below start at tile 16.
    assert resumed_net.samples == 24
    np.testing.assert_array_equal(read_map(out_resumed.class_path), read_map(out.class_path))
    np.testing.assert_array_equal(read_map(out_resumed.proba_path), read_map(out.proba_path))

    again, again_net = pointwise_model(aerial_model)
    assert predict_zone(cfg, model=again) == out_resumed
    assert again_net.samples == 0  # a finished map with the same settings is kept

    other = zone_config(synthetic_zone, aerial_model, path, tiling={"overlap_px": 64},
                        output={"write_proba": True})  # fmt: skip
    with pytest.raises(ResumeMismatchError, match="overwrite"):
        predict_zone(other, model=pointwise_model(aerial_model)[0])


# -- pieces: ranks and strips -----------------------------------------------------------------


@pytest.fixture(scope="module")
def one_rank_map(module_tmp: Path, synthetic_zone: ZoneSummary, aerial_model: Path) -> tuple:
    """Map of a small CNN in one piece (reference for the sharded runs)."""
    path = module_tmp / "one_rank" / "map.tif"
    cfg = zone_config(synthetic_zone, aerial_model, path, output={"write_proba": True})
    out = predict_zone(cfg, model=small_cnn_model(aerial_model))
    return read_map(out.class_path), read_map(out.proba_path)


def test_two_ranks_and_strips_merge_to_the_one_rank_map(
    synthetic_zone: ZoneSummary, aerial_model: Path, one_rank_map: tuple, tmp_path: Path
) -> None:
    """Two ranks run one after the other, each in 4 column strips, then merged: same bits.

    The model's outputs near tile edges depend on the tile (zero padding), so every pixel's
    blend of overlapping tiles must be the same sum as in the single run.
    """
    path = tmp_path / "map.tif"
    # A 10 MB blending budget cuts the 768 px wide map into strips of one or two tiles.
    cfg = zone_config(synthetic_zone, aerial_model, path, output={"write_proba": True},
                      runtime={"blend_memory_mb": 10.0})  # fmt: skip
    model = small_cnn_model(aerial_model)
    assert predict_zone(cfg, model=model, rank=1, world_size=2) is None
    assert predict_zone(cfg, model=model, rank=0, world_size=2) is None
    pieces = sorted(p.name for p in (tmp_path / "map.pieces").glob("*[0-9].tif"))
    strips = ("0-192", "192-384", "384-512", "512-768")  # cut on tile starts
    assert pieces == sorted(f"r{r}_c{c}.tif" for r in ("0-256", "256-512") for c in strips)
    out = merge_zone(cfg, world_size=2, model=model)
    assert not (tmp_path / "map.pieces").exists()
    np.testing.assert_array_equal(read_map(out.class_path), one_rank_map[0])
    np.testing.assert_array_equal(read_map(out.proba_path), one_rank_map[1])


def test_merge_names_the_missing_piece(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "map.tif")
    model = pointwise_model(aerial_model)[0]
    predict_zone(cfg, model=model, rank=0, world_size=2)
    with pytest.raises(DataError, match=r"r256-512_c0-768\.tif.*not finished"):
        merge_zone(cfg, world_size=2, model=model)


def test_split_rows_and_columns_cover_the_grid() -> None:
    grid = make_tile_grid(1000, 2300, 256, 64)
    rows = split_rows(grid, 3)
    assert rows[0][0] == 0 and rows[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))
    assert all(r0 in grid.row_offsets for r0, _ in rows)
    many = split_rows(grid, 10)  # more ranks than the 5 bands: some get no rows
    assert len(many) == 10 and sum(r1 > r0 for r0, r1 in many) == grid.num_bands == 5
    assert [r for r0, r1 in many if r1 > r0 for r in (r0, r1)][::2] == list(grid.row_offsets)
    strips = split_columns(grid, 900)
    assert len(strips) > 1 and strips[0][0] == 0 and strips[-1][1] == 2300
    for c0, c1 in strips:
        sub, x0 = strip_grid(grid, c0, c1)
        assert x0 <= c0 and x0 + sub.width_px >= c1  # the sub-grid covers the strip
        assert sub.width_px <= 900
    assert split_columns(grid, 10**6) == [(0, 2300)]
    assert [len(p) for p in plan_pieces(grid, 2, 900)] == [len(strips)] * 2


def test_batchnorm_folding_keeps_the_function(synthetic_zone: ZoneSummary) -> None:
    torch.manual_seed(0)
    network = build_model(model_config(synthetic_zone, with_s2=False)).eval()
    for bn in network.modules():  # non-trivial statistics, so a wrong fold shows
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    batch = Batch({AERIAL: x}, {}, {}, {}, ["a", "b"], [None] * 2, [None] * 2)
    with torch.inference_mode():
        before = network(batch, (64, 64))[Task.COSIA]
        # Encoder: stem + 2 per BasicBlock x 8 + 3 downsamples; decoder: 2 per block x 5.
        assert fold_batchnorm(network) == 1 + 16 + 3 + 10
        after = network(batch, (64, 64))[Task.COSIA]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_map_matches_the_cpu_map(
    synthetic_zone: ZoneSummary, aerial_model: Path, one_rank_map: tuple, tmp_path: Path
) -> None:
    """On a GPU (fp32, then bf16 autocast) the small CNN's map is the CPU map, up to rounding."""
    for precision, agreement in (("fp32", 0.999), ("bf16", 0.95)):
        cfg = zone_config(
            synthetic_zone, aerial_model, tmp_path / precision / "map.tif",
            output={"write_proba": True},
            runtime={"device": "cuda", "precision": precision, "batch_size": 4},
        )  # fmt: skip
        out = predict_zone(cfg, model=small_cnn_model(aerial_model))
        assert (read_map(out.class_path) == one_rank_map[0]).mean() > agreement, precision


def test_class_map_without_probabilities_is_the_quantised_argmax() -> None:
    from flairkit.inference.zonal import _classes

    probs = np.random.default_rng(0).random((K, 6, 7), dtype=np.float32)
    probs[:2, 0, 0] = 0.99  # a tie: the first class wins, as in quantise_block
    valid = np.ones((6, 7), bool)
    valid[5] = False
    block = RowBlock(0, 6, probs, valid)
    np.testing.assert_array_equal(_classes(block), quantise_block(block)[0])


# -- errors -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s2_recipe(s2_model: Path) -> ZoneModel:
    return load_zone_model(s2_model, with_network=False)


def test_missing_dates_file_input_and_mask_name_the_key(
    synthetic_zone: ZoneSummary, s2_model: Path, s2_recipe: ZoneModel, tmp_path: Path
) -> None:
    out = tmp_path / "map.tif"
    inputs = zone_inputs(synthetic_zone, with_s2=True)
    cases = [
        ({**inputs, S2.value: {**inputs[S2.value], "dates": str(tmp_path / "nope.txt")}},
         r"inputs\.SENTINEL2_TS\.dates: .*nope\.txt: dates file not found"),
        ({**inputs, S2.value: {k: v for k, v in inputs[S2.value].items() if k != "dates"}},
         r"inputs\.SENTINEL2_TS\.dates: missing"),
        ({AERIAL.value: inputs[AERIAL.value]}, r"inputs\.SENTINEL2_TS: missing; the model s2"),
        ({**inputs, S2.value: {k: v for k, v in inputs[S2.value].items() if k != "mask"}},
         r"inputs\.SENTINEL2_TS\.mask: missing"),
    ]  # fmt: skip
    for case_inputs, message in cases:
        cfg = from_dict(
            ZoneConfig,
            {"model": str(s2_model), "inputs": case_inputs, "output": {"path": str(out)}},
        )
        with pytest.raises(ConfigError, match=message):
            predict_zone(cfg, model=s2_recipe)
    assert not out.exists()


def test_input_without_crs_and_input_outside_the_grid(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    src_path = synthetic_zone.sources[AERIAL].path
    no_crs = tmp_path / "no_crs.tif"
    with rasterio.open(src_path) as src:
        profile = {**src.profile, "crs": None}
        with rasterio.open(no_crs, "w", **profile) as dst:
            dst.write(src.read())
    model = pointwise_model(aerial_model)[0]
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "a.tif")
    cfg = dataclasses.replace(
        cfg, inputs={AERIAL: dataclasses.replace(cfg.inputs[AERIAL], path=no_crs)}
    )
    with pytest.raises(DataError, match=r"no_crs\.tif: raster has no CRS"):
        predict_zone(cfg, model=model)
    left, bottom, right, top = synthetic_zone.bounds
    far = [left + 10_000, bottom, right + 10_000, top]
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "b.tif", grid={"bounds": far})
    with pytest.raises(
        DataError, match=r"AERIAL_RGBI\.tif: AERIAL_RGBI raster covers .* does not overlap"
    ):
        predict_zone(cfg, model=model)


def test_tiles_the_inputs_or_encoder_cannot_take_are_refused(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,
    s2_model: Path,
    s2_recipe: ZoneModel,
    tmp_path: Path,
) -> None:
    cfg = zone_config(
        synthetic_zone, s2_model, tmp_path / "a.tif", with_s2=True, tiling={"tile_px": 384}
    )
    with pytest.raises(
        ConfigError,
        match=r"tiling\.tile_px: 384 px of 0\.4 m is 7\.5 px of SENTINEL2_TS.*multiple of 256",
    ):
        predict_zone(cfg, model=s2_recipe)
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "b.tif", tiling={"tile_px": 240})
    with pytest.raises(ConfigError, match="not a multiple of its encoder's stride 32"):
        predict_zone(cfg, model=load_zone_model(aerial_model))
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "c.tif", tiling={"margin_px": 40})
    with pytest.raises(ConfigError, match=r"tiling\.margin_px: at most half the overlap"):
        predict_zone(cfg, model=pointwise_model(aerial_model)[0])


# -- config -------------------------------------------------------------------------------------


def test_zone_config_resolves_paths_aliases_and_task(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "zone.yaml"
    path.parent.mkdir()
    path.write_text(
        "model: ../models/m.safetensors\n"
        "task: cosia\n"
        "inputs:\n"
        "  AERIAL: mosaic/aerial.tif\n"
        "  S2: {path: s2.tif, dates: s2_dates.txt, mask: s2_mask.tif}\n"
        "output: {path: out/map.tif, write_proba: true}\n"
        "grid: {bounds: [0, 0, 100, 50], crs: 'EPSG:2154'}\n"
    )
    cfg = load_zone_config(path, ["runtime.batch_size=8", "tiling.tile_px=512"])
    base = path.parent.resolve()
    assert Path(cfg.model) == (tmp_path / "models" / "m.safetensors").resolve()  # a reference
    assert cfg.task is Task.COSIA
    assert cfg.inputs[AERIAL].path == base / "mosaic" / "aerial.tif"
    assert (
        cfg.inputs[S2].dates == base / "s2_dates.txt"
        and cfg.inputs[S2].mask == base / "s2_mask.tif"
    )
    assert cfg.output.path == base / "out" / "map.tif" and cfg.output.write_proba
    assert cfg.grid.bounds == (0.0, 0.0, 100.0, 50.0)
    assert cfg.runtime.batch_size == 8 and cfg.tiling.tile_px == 512


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs: {AERIAL: a.tif}\noutput: o.tif\n", "model: missing"),
        ("model: m\ninputs: {AERIAL: a.tif}\noutput: o.tif\nruntime: {batch_size: x}\n",
         r"runtime\.batch_size: expected int"),
        ("model: m\ninputs: {AERIAL: a.tif}\noutput: o.tif\ntiling: {tile_pixels: 3}\n",
         r"tiling\.tile_pixels: unknown key"),
        ("model: m\ninputs: {MASK: a.tif}\noutput: o.tif\n",
         r"inputs\.SENTINEL2_MSK-SC: not a model input \(give the S2 mask as inputs\.SENTINEL2_TS\.mask\)"),
        ("model: m\ninputs: {AERIAL: {path: a.tif, mask: m.tif}}\noutput: o.tif\n",
         r"inputs\.AERIAL_RGBI\.mask: only SENTINEL2_TS"),
        ("model: m\ninputs: {AERIAL: a.tif}\noutput: o.tif\ntask: roads\n", "task: unknown task 'roads'"),
        ("model: m\ninputs: {AERIAL: a.tif}\noutput: o.tif\ngrid: {bounds: [1, 0, 0, 1]}\n",
         r"grid\.bounds: expected \[left, bottom, right, top\]"),
    ],
)  # fmt: skip
def test_zone_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "zone.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_zone_config(path)


def test_example_config_loads() -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / "zones" / "example.yaml"
    cfg = load_zone_config(path)
    assert set(cfg.inputs) == {AERIAL, S2}
    assert cfg.inputs[S2].mask is not None and cfg.inputs[S2].mask.name == "SENTINEL2_MSK-SC.tif"
    assert Path(cfg.model).is_absolute() and cfg.output.path.name == "cosia.tif"


@pytest.mark.slow
def test_torchrun_two_processes_merge_after_a_barrier(
    synthetic_zone: ZoneSummary, aerial_model: Path, tmp_path: Path
) -> None:
    """``torchrun --nproc_per_node 2 -m flairkit.cli map``: rank 0 merges, same map as alone."""
    import subprocess
    import sys

    import yaml

    left, bottom, _, top = synthetic_zone.bounds
    raw = {
        "model": str(aerial_model),
        "inputs": zone_inputs(synthetic_zone, with_s2=False),
        "output": {"path": str(tmp_path / "ranks" / "map.tif")},
        "grid": {"bounds": [left, bottom, left + PATCH_SIZE_M, top]},
        "runtime": {"progress": False, "torch_threads": 1},
    }
    config = tmp_path / "zone.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "flairkit.cli", "map", "-c", str(config)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("class_path:") == 2  # every rank returns the outputs
    assert not (tmp_path / "ranks" / "map.pieces").exists()
    alone = from_dict(ZoneConfig, {**raw, "output": {"path": str(tmp_path / "alone" / "map.tif")}})
    out = predict_zone(alone)
    np.testing.assert_array_equal(
        read_map(tmp_path / "ranks" / "map.tif"), read_map(out.class_path)
    )
