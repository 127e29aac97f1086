"""One prediction stack: fit describes the model before reading data, patch sizes are a checked
contract, and test / predict wrap the network ``checkpoint.load_model`` loaded (loaded once).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from rasterio.transform import Affine

import flairkit.checkpoint as checkpoint_module
import flairkit.training.run as run_module
import flairkit.training.task as task_module
from flairkit.checkpoint import save_model
from flairkit.cli import main
from flairkit.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    load_run_config,
    preprocess_config_for,
)
from flairkit.data.datamodule import FlairDataModule
from flairkit.data.datasets import PatchDataset, PatchSizes
from flairkit.io.catalog import Catalog
from flairkit.io.raster import DataError, read_patch_px
from flairkit.modalities import Modality, Task
from flairkit.models.build import build_model
from flairkit.training.run import evaluate, fit, model_sizes, predict
from flairkit.training.task import SegmentationTask
from flairkit.transforms.preprocess import Preprocessor

AERIAL, S2, COSIA = Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.COSIA


def run_config(tmp: Path, root: Path, name: str, model: dict[str, Any], **train: Any) -> RunConfig:
    raw = {
        "data": {"root": str(root), "batch_size": 2},
        "model": {"tasks": {"AERIAL_LABEL-COSIA": 19}, "arch": "resnet18-unet", **model},
        "train": {
            "max_epochs": 1,
            "progress_bar": False,
            "accelerator": "cpu",
            "output_dir": str(tmp / name),
            **train,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


AERIAL_MODEL = {"inputs": {"AERIAL_RGBI": 3}, "img_sizes": {"AERIAL_RGBI": 64}}


class _Stop(Exception):
    """Raised where fit builds its model: what fit knew then is recorded."""


@pytest.fixture
def no_pixel_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Pixel reads and DataModule set-up fail; the model fit builds is recorded, then fit stops."""
    seen: dict[str, Any] = {}

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pixel data read before the model was described")

    def record(model_config: ModelConfig, *args: Any, **kwargs: Any) -> None:
        seen["model"] = model_config
        raise _Stop

    monkeypatch.setattr("flairkit.io.patches.read_geotiff", refuse)
    monkeypatch.setattr("flairkit.data.datasets.read_patch", refuse)
    monkeypatch.setattr(FlairDataModule, "setup", refuse)
    monkeypatch.setattr(run_module, "SegmentationTask", record)
    return seen


def test_fit_sizes_the_model_without_reading_pixels(
    synthetic_root: Path, tmp_path: Path, no_pixel_reads: dict[str, Any]
) -> None:
    # img_sizes from the config; out_px (left out) from the modality tables: aerial 64 -> 64
    cfg = run_config(tmp_path, synthetic_root, "aerial", AERIAL_MODEL)
    assert cfg.model.out_px == 512  # the schema's default
    with pytest.raises(_Stop):
        fit(cfg)
    model = no_pixel_reads["model"]
    assert dict(model.img_sizes) == {AERIAL: 64} and model.out_px == 64


def test_fit_reads_a_label_header_where_the_tables_cannot_tell(
    synthetic_root: Path, tmp_path: Path, no_pixel_reads: dict[str, Any]
) -> None:
    # Sentinel-2 alone at 2 px: 2 x 10.24 m / 0.2 m is no whole number of label pixels
    s2_only = {"inputs": {"SENTINEL2_TS": 10}, "img_sizes": {"SENTINEL2_TS": 2}}
    cfg = run_config(tmp_path, synthetic_root, "s2", s2_only)
    with pytest.raises(_Stop):
        fit(cfg)
    model = no_pixel_reads["model"]
    assert dict(model.img_sizes) == {S2: 2} and model.out_px == 64


def test_fit_reads_a_presets_sizes_from_the_headers(
    synthetic_root: Path, tmp_path: Path, no_pixel_reads: dict[str, Any]
) -> None:
    # as configs/demo.yaml: preset LC-D (512 px aerial, 10 px S2) with a small CNN, on 64 px data
    cfg = run_config(tmp_path, synthetic_root, "demo", {"preset": "LC-D"})
    assert dict(cfg.model.img_sizes) == {AERIAL: 512, S2: 10}
    with pytest.raises(_Stop):
        fit(cfg)
    model = no_pixel_reads["model"]
    assert dict(model.img_sizes) == {AERIAL: 64, S2: 2} and model.out_px == 64


def test_model_sizes_follow_the_tables_and_a_pinned_out_px(
    synthetic_root: Path, tmp_path: Path
) -> None:
    catalog = Catalog.scan(synthetic_root)
    spot = {"inputs": {"SPOT_RGBI": 3}, "img_sizes": {"SPOT_RGBI": 64}}
    assert model_sizes(run_config(tmp_path, synthetic_root, "spot", spot), catalog).out_px == 512
    pinned = {**AERIAL_MODEL, "out_px": 32}
    sizes = model_sizes(run_config(tmp_path, synthetic_root, "pinned", pinned), catalog)
    assert sizes == PatchSizes({AERIAL: 64}, 32)


def test_read_patch_px_reads_the_header(synthetic_root: Path, tmp_path: Path) -> None:
    ref = Catalog.scan(synthetic_root).refs[0]
    assert read_patch_px(ref.path(AERIAL), AERIAL) == (64, 64)
    assert read_patch_px(ref.path(S2), S2) == (2, 2)
    with pytest.raises(DataError, match=f"{tmp_path / 'no.tif'}: AERIAL_RGBI file is missing"):
        read_patch_px(tmp_path / "no.tif", AERIAL)
    (tmp_path / "text.tif").write_text("not a tiff")
    with pytest.raises(DataError, match="text.tif: unreadable GeoTIFF"):
        read_patch_px(tmp_path / "text.tif", AERIAL)


def test_a_config_size_the_data_lacks_fails_before_anything_is_written(
    synthetic_root: Path, tmp_path: Path
) -> None:
    cfg = run_config(tmp_path, synthetic_root, "wrong", {**AERIAL_MODEL, "out_px": 32})
    first = Catalog.scan(synthetic_root).filter(split="train").refs[0]
    message = (
        f"{first.path(COSIA)}: AERIAL_LABEL-COSIA patch is 64 x 64 px, the model takes "
        "32 x 32 px (model.out_px: 32)"
    )
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit(cfg)
    assert not cfg.train.output_dir.exists()


def test_dataset_names_the_file_and_key_of_a_patch_of_another_size(synthetic_root: Path) -> None:
    refs = Catalog.scan(synthetic_root).filter(split="train").refs[:1]
    preprocess = Preprocessor(preprocess_config_for([AERIAL]))
    ok = PatchDataset(refs, preprocess, sizes=PatchSizes({AERIAL: 64}, 64))
    assert ok[0].inputs[AERIAL].shape[-1] == 64
    bad = PatchDataset(refs, preprocess, sizes=PatchSizes({AERIAL: 48}, 64))
    with pytest.raises(DataError) as info:
        bad[0]
    text = str(info.value)
    assert text.startswith(f"{refs[0].path(AERIAL)}: AERIAL_RGBI patch is 64 x 64 px")
    assert "model.img_sizes.AERIAL_RGBI: 48" in text and "\n" not in text
    # the S2 mask is checked against Sentinel-2's size, labels against out_px
    sizes = PatchSizes({S2: 2}, 64)
    assert sizes.expected(Modality.SENTINEL2_MSK) == (2, "model.img_sizes.SENTINEL2_TS")
    assert sizes.expected(Modality.LPIS) == (64, "model.out_px")
    assert sizes.expected(AERIAL) is None


def halve(path: Path) -> None:
    """Rewrite a GeoTIFF at half its pixel count per side, over the same footprint."""
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    data = data[:, ::2, ::2]
    profile.update(
        width=data.shape[2], height=data.shape[1], transform=profile["transform"] @ Affine.scale(2)
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def halved_root(synthetic_root: Path, module_tmp: Path) -> tuple[Path, Path]:
    """A copy of the dataset whose first validation and test aerial patches are 32 px."""
    root = module_tmp / "halved"
    shutil.copytree(synthetic_root, root)
    catalog = Catalog.scan(root)
    paths = [catalog.filter(split=s).refs[0].path(AERIAL) for s in ("val", "test")]
    for path in paths:
        halve(path)
    return root, paths[0]


def test_fit_stops_on_a_later_patch_of_another_size(
    halved_root: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, val_path = halved_root
    cfg_path = tmp_path / "fit.yaml"
    run_config(tmp_path, root, "fit", AERIAL_MODEL)  # writes fit.yaml
    assert main(["fit", "--config", str(cfg_path)]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("flairkit ")]
    assert len(lines) == 1
    assert f"{val_path}: AERIAL_RGBI patch is 32 x 32 px, the model takes 64 x 64 px" in lines[0]
    assert "model.img_sizes.AERIAL_RGBI" in lines[0]


# -- test / predict: one loader, one network ----------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(synthetic_root: Path, module_tmp: Path) -> RunConfig:
    """A run folder holding a (random) model.safetensors, as fit exports it."""
    tmp = module_tmp / "saved"
    tmp.mkdir()
    cfg = run_config(tmp, synthetic_root, "run", {**AERIAL_MODEL, "out_px": 64})
    torch.manual_seed(0)
    save_model(
        cfg.train.output_dir / "model.safetensors",
        build_model(cfg.model),
        cfg.model,
        cfg.preprocess,
    )
    return cfg


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls of checkpoint.load_model (through training.run) and of build_model."""
    calls = {"load_model": 0, "build_model": 0}

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(run_module, "load_model", counted("load_model", run_module.load_model))
    build = counted("build_model", checkpoint_module.build_model)
    monkeypatch.setattr(checkpoint_module, "build_model", build)
    monkeypatch.setattr(task_module, "build_model", build)
    return calls


def test_evaluate_loads_and_builds_the_model_once(saved_run: RunConfig, counts: dict) -> None:
    results = evaluate(saved_run, split="test")
    assert results["AERIAL_LABEL-COSIA"]["scores"]["num_classes"] == 15
    assert counts == {"load_model": 1, "build_model": 1}


def test_predict_loads_once_and_predicts_as_before(
    saved_run: RunConfig, counts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = predict(saved_run, out_dir=tmp_path / "new", probabilities=True)
    assert counts == {"load_model": 1, "build_model": 1}

    def rebuilt(network: Any, preprocess: Any, loss: Any, optim: Any) -> SegmentationTask:
        # the code before: a second network of the same config, given the loaded weights
        task = SegmentationTask(network.config, preprocess, loss, optim)
        task.model.load_state_dict(network.state_dict())
        return task

    monkeypatch.setattr(SegmentationTask, "from_network", staticmethod(rebuilt))
    old = predict(saved_run, out_dir=tmp_path / "old", probabilities=True)
    assert counts == {"load_model": 2, "build_model": 3}
    assert [p.relative_to(tmp_path / "new") for p in new] == [
        p.relative_to(tmp_path / "old") for p in old
    ]
    for a, b in zip(new, old, strict=True):
        for suffix in ("", "_proba"):
            with (
                rasterio.open(a.with_name(a.stem + suffix + ".tif")) as x,
                rasterio.open(b.with_name(b.stem + suffix + ".tif")) as y,
            ):
                np.testing.assert_array_equal(x.read(), y.read())


def test_test_and_predict_check_patches_against_the_loaded_model(
    saved_run: RunConfig, halved_root: tuple[Path, Path]
) -> None:
    root, _ = halved_root
    test_path = Catalog.scan(root).filter(split="test").refs[0].path(AERIAL)
    cfg = RunConfig(
        data=DataConfig(root=root, batch_size=2),
        model=saved_run.model,
        preprocess=saved_run.preprocess,
        train=saved_run.train,
    )
    for run in (lambda: evaluate(cfg, split="test"), lambda: predict(cfg, split="test")):
        with pytest.raises(DataError, match="model.img_sizes.AERIAL_RGBI") as info:
            run()
        assert str(info.value).startswith(f"{test_path}: AERIAL_RGBI patch is 32 x 32 px")


def test_task_wraps_the_network_it_is_given(saved_run: RunConfig) -> None:
    network = build_model(saved_run.model)
    task = SegmentationTask.from_network(network, saved_run.preprocess)
    assert task.model is network and task.model_config == saved_run.model
    other = dataclasses.replace(saved_run.model, out_px=32)
    with pytest.raises(ValueError, match="another ModelConfig"):
        SegmentationTask(other, saved_run.preprocess, network=network)
    assert Task.COSIA in task.tasks
