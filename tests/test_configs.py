"""The shipped run configs (configs/*.yaml) load and describe the benchmark models."""

from __future__ import annotations

from pathlib import Path

import pytest

from flairkit.config import load_run_config
from flairkit.modalities import Task
from flairkit.models.presets import PRESETS, preset_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(CONFIG_DIR.glob("*.yaml"))
PRESET_YAML = [p for p in ALL_YAML if p.stem in PRESETS]

EXPECTED_WEIGHTS = {
    Task.COSIA: {15: 0.0, 16: 0.0, 17: 0.0, 18: 0.0},
    Task.LPIS: {21: 0.0, 22: 0.0},
}


def test_one_config_per_preset() -> None:
    assert sorted(p.stem for p in PRESET_YAML) == sorted(PRESETS)
    assert (CONFIG_DIR / "demo.yaml").is_file()
    assert (CONFIG_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.stem)
def test_config_loads_with_its_preset_model(path: Path) -> None:
    cfg = load_run_config(path)
    assert cfg.preset is not None
    expected = preset_config(cfg.preset)
    assert dict(cfg.model.inputs) == dict(expected.inputs)
    assert dict(cfg.model.tasks) == dict(expected.tasks)
    assert tuple(cfg.model.aux_heads) == tuple(expected.aux_heads)
    assert set(cfg.preprocess.inputs) == set(expected.inputs)
    assert tuple(cfg.preprocess.tasks) == tuple(expected.tasks)
    for task in cfg.model.tasks:
        assert dict(cfg.loss.class_weights[task]) == EXPECTED_WEIGHTS[task]


@pytest.mark.parametrize("path", PRESET_YAML, ids=lambda p: p.stem)
def test_preset_config_is_the_benchmark_recipe(path: Path) -> None:
    cfg = load_run_config(path)
    assert cfg.preset == path.stem
    assert cfg.model == preset_config(path.stem)  # nothing but the preset, default Swin-B UPerNet
    assert cfg.data.split == "split_1" and cfg.data.batch_size == 5 and cfg.data.num_workers == 4
    assert cfg.train.max_epochs == 150 and cfg.train.early_stopping_patience == 20
    assert cfg.train.seed == 2025 and cfg.train.precision == "32-true"
    o = cfg.optim
    assert (o.optimizer, o.lr, o.weight_decay, o.scheduler) == ("adamw", 5e-5, 0.01, "one_cycle")
    assert (o.warmup_fraction, o.div_factor) == (0.2, 1000.0)
    # a placeholder root (it need not exist to load); a run goes to runs/<name> by default
    assert cfg.data.root == Path("/data/FLAIR-HUB")
    assert cfg.train.output_dir.name == path.stem


def test_demo_paths_resolve_against_the_config_folder() -> None:
    cfg = load_run_config(CONFIG_DIR / "demo.yaml")
    build = (CONFIG_DIR.parent / "build" / "demo").resolve()
    assert cfg.data.root == build / "data"
    assert cfg.train.output_dir == build / "run"
    assert cfg.model.arch == "resnet18-unet"
    assert cfg.train.precision == "32-true"


def test_overrides_apply_to_a_preset_config() -> None:
    cfg = load_run_config(
        CONFIG_DIR / "LC-D.yaml",
        ["data.root=/elsewhere", "train.precision=bf16-mixed", "model.aux=false"],
    )
    assert cfg.data.root == Path("/elsewhere")
    assert cfg.train.precision == "bf16-mixed"
    assert cfg.model == preset_config("LC-D", aux=False)
