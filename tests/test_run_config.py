"""Run configs: every error names the dotted path of the bad key and what is wrong with it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from flairkit.config import (
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_run_config,
)
from flairkit.modalities import Modality, Task

#: The smallest run config that loads; data.root need not exist.
BASE: dict[str, Any] = {
    "data": {"root": "/data/FLAIR-HUB"},
    "model": {
        "inputs": {"AERIAL_RGBI": 3},
        "img_sizes": {"AERIAL_RGBI": 64},
        "tasks": {"AERIAL_LABEL-COSIA": 19},
        "arch": "resnet18-unet",
    },
}


def write(tmp_path: Path, config: Any = None, **sections: Any) -> Path:
    """Write BASE (or ``config``) with ``sections`` merged in at the top level to run.yaml."""
    data = copy.deepcopy(BASE if config is None else config)
    data.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    """The message of the ConfigError that loading raises."""
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    return str(info.value)


def test_base_config_loads(tmp_path: Path) -> None:
    cfg = load_run_config(write(tmp_path))
    assert cfg.data.root == Path("/data/FLAIR-HUB")
    assert cfg.model.inputs == {Modality.AERIAL_RGBI: 3}
    assert cfg.model.tasks == {Task.COSIA: 19}
    assert cfg.preprocess.tasks == (Task.COSIA,)


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, train={"max_epoch": 3}))
    assert message.startswith("train.max_epoch: unknown key"), message
    valid = message.split("valid:", 1)[1]
    assert "max_epochs" in valid and "seed" in valid and "output_dir" in valid


def test_unknown_key_nested_in_a_section(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, preprocess={"cloud_filter": {"max_clouds": 2}}))
    assert message.startswith("preprocess.cloud_filter.max_clouds: unknown key"), message
    assert "max_cloud," in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, trainer={"max_epochs": 3}))
    assert message.startswith("trainer: unknown key"), message
    for section in ("data", "model", "train", "loss", "optim", "preprocess"):
        assert section in message.split("valid:", 1)[1]


@pytest.mark.parametrize(
    ("sections", "start", "detail"),
    [
        ({"train": {"max_epochs": "three"}}, "train.max_epochs", "expected int, got 'three'"),
        ({"train": {"max_epochs": 2.5}}, "train.max_epochs", "expected int, got 2.5"),
        ({"train": {"max_epochs": True}}, "train.max_epochs", "expected int, got True"),
        ({"train": {"progress_bar": "yes"}}, "train.progress_bar", "expected bool, got 'yes'"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "expected float, got 'fast'"),
        ({"optim": {"lr": False}}, "optim.lr", "expected float, got False"),
        ({"data": {"root": "/d", "batch_size": "5"}}, "data.batch_size", "expected int"),
        ({"data": {"root": "/d", "departments": "D004"}}, "data.departments", "expected a list"),
        ({"loss": {"aux_weight": [1]}}, "loss.aux_weight", "expected float"),
    ],
    ids=[
        "str",
        "float",
        "bool",
        "str-for-bool",
        "str-for-float",
        "bool-for-float",
        "str-int",
        "str-list",
        "list-float",
    ],
)
def test_wrong_type(tmp_path: Path, sections: dict, start: str, detail: str) -> None:
    message = error_of(write(tmp_path, **sections))
    assert message.startswith(f"{start}: "), message
    assert detail in message


def test_int_is_accepted_where_float_is_expected(tmp_path: Path) -> None:
    cfg = load_run_config(write(tmp_path, optim={"lr": 1}))
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float


def test_literal_value_not_allowed(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, optim={"scheduler": "cosine"}))
    assert message.startswith("optim.scheduler: 'cosine' is not one of"), message
    for allowed in ("one_cycle", "plateau", "cycle_then_plateau", "none"):
        assert f"'{allowed}'" in message


@pytest.mark.parametrize(
    "data", [{"split": "split_1"}, None], ids=["section-without-root", "no-section"]
)
def test_missing_data_root(tmp_path: Path, data: dict | None) -> None:
    config = copy.deepcopy(BASE)
    if data is None:
        del config["data"]
    else:
        config["data"] = data
    assert error_of(write(tmp_path, config)).startswith("data.root: missing")


@pytest.mark.parametrize("section", ["data", "model", "train", "loss", "optim", "preprocess"])
def test_a_section_that_is_not_a_mapping(tmp_path: Path, section: str) -> None:
    message = error_of(write(tmp_path, **{section: ["max_epochs", 3]}))
    assert message.startswith(f"{section}: expected a mapping, got list"), message


def test_an_empty_section_takes_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE) + "train:\noptim:\n", encoding="utf-8")
    cfg = load_run_config(path)
    assert cfg.train.max_epochs == TrainConfig().max_epochs
    assert load_run_config(path, ["train.max_epochs=4"]).train.max_epochs == 4


def test_unknown_modality(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["model"]["inputs"] = {"AERIAL_RGBI": 3, "HYPERSPECTRAL": 100}
    message = error_of(write(tmp_path, config))
    assert message.startswith("model.inputs.HYPERSPECTRAL: unknown modality 'HYPERSPECTRAL'")
    assert "valid:" in message and "SENTINEL2_TS" in message


def test_unknown_task(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["model"]["tasks"] = {"AERIAL_LABEL-COSIA": 19, "BUILDINGS": 2}
    message = error_of(write(tmp_path, config))
    assert message.startswith("model.tasks.BUILDINGS: unknown task 'BUILDINGS'"), message
    assert "AERIAL_LABEL-COSIA" in message and "ALL_LABEL-LPIS" in message


def test_tasks_by_enum_name(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["model"]["tasks"] = {"cosia": 19, "LPIS": 23}
    cfg = load_run_config(write(tmp_path, config, loss={"class_weights": {"LPIS": {21: 0.0}}}))
    assert cfg.model.tasks == {Task.COSIA: 19, Task.LPIS: 23}
    assert cfg.loss.class_weights == {Task.LPIS: {21: 0.0}}


# --- overrides -----------------------------------------------------------------------------------


def test_override_applies_and_is_parsed_as_yaml(tmp_path: Path) -> None:
    cfg = load_run_config(
        write(tmp_path, train={"max_epochs": 10}),
        ["train.max_epochs=3", "optim.lr=1e-3", "data.augment=false", "train.seed=7"],
    )
    assert cfg.train.max_epochs == 3 and type(cfg.train.max_epochs) is int
    assert cfg.optim.lr == 0.001
    assert cfg.data.augment is False
    assert cfg.train.seed == 7


@pytest.mark.parametrize(
    ("text", "value"), [("1e-4", 1e-4), ("2E-3", 2e-3), ("5.0e-5", 5e-5), ("3e2", 300.0)]
)
def test_exponent_without_a_dot_is_a_float(tmp_path: Path, text: str, value: float) -> None:
    """YAML 1.1 reads ``1e-4`` as a string; configs and overrides read it as a number."""
    assert load_run_config(write(tmp_path), [f"optim.lr={text}"]).optim.lr == value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE) + f"optim:\n  lr: {text}\n", encoding="utf-8")
    assert load_run_config(path).optim.lr == value
    # A quoted value stays a string.
    message = error_of(write(tmp_path), [f"optim.lr='{text}'"])
    assert message == f"optim.lr: expected float, got '{text}'"


def test_override_value_of_the_wrong_type(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["train.max_epochs=three"])
    assert message.startswith("train.max_epochs: expected int, got 'three'"), message


def test_override_without_equals_sign(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["train.max_epochs"])
    assert message.startswith("override 'train.max_epochs': expected key=value"), message


def test_override_through_a_value_that_is_not_a_section(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["data.root.sub=3"])
    assert message == "override 'data.root.sub=3': root is not a section"


def test_override_with_invalid_yaml_value(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["data.departments=[D004,"])
    assert message.startswith("override 'data.departments=[D004,': invalid YAML value"), message


def test_override_of_an_unknown_key(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["train.max_epoch=3"])
    assert message.startswith("train.max_epoch: unknown key"), message


def test_apply_overrides_leaves_its_input_alone() -> None:
    data = {"train": {"max_epochs": 10}}
    out = apply_overrides(data, ["train.max_epochs=2", "optim.lr=0.1"])
    assert out == {"train": {"max_epochs": 2}, "optim": {"lr": 0.1}}
    assert data == {"train": {"max_epochs": 10}}


# --- files ---------------------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "run.yaml"
    message = error_of(path)
    assert message == f"{path}: config file not found"


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data: {root: /x\nmodel: [\n", encoding="utf-8")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid YAML"), message


@pytest.mark.parametrize("overrides", [None, ["train.max_epochs=3"]])
def test_top_level_that_is_not_a_mapping(tmp_path: Path, overrides: list[str] | None) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("- data\n- model\n", encoding="utf-8")
    message = error_of(path, overrides)
    assert message == f"{path}: expected a mapping at the top level"


def test_relative_paths_resolve_against_the_yaml_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "configs" / "mine"
    folder.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = copy.deepcopy(BASE)
    config["data"]["root"] = "../data/FLAIR-HUB"
    path = write(folder, config, train={"output_dir": "runs/a"})
    cfg = load_run_config(path)
    assert cfg.data.root == tmp_path / "configs" / "data" / "FLAIR-HUB"
    assert cfg.train.output_dir == folder / "runs" / "a"
    # An absolute path stays; without output_dir a run goes to runs/<config name> in the cwd.
    config["data"]["root"] = str(tmp_path / "abs")
    cfg = load_run_config(write(folder, config))
    assert cfg.data.root == tmp_path / "abs"
    assert cfg.train.output_dir == elsewhere.resolve() / "runs" / "run"


# --- class weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [19, 25, -1])
def test_class_weight_out_of_range(tmp_path: Path, index: int) -> None:
    loss = {"class_weights": {"AERIAL_LABEL-COSIA": {15: 0.0, index: 0.0}}}
    message = error_of(write(tmp_path, loss=loss))
    assert message == (
        f"loss.class_weights.AERIAL_LABEL-COSIA.{index}: class {index} out of range "
        "(the task has 19 classes)"
    )


def test_class_weight_out_of_range_through_an_override(tmp_path: Path) -> None:
    message = error_of(write(tmp_path), ["loss.class_weights.AERIAL_LABEL-COSIA={0: 1.0, 40: 0}"])
    assert message.startswith("loss.class_weights.AERIAL_LABEL-COSIA.40: class 40 out of range")


def test_class_weight_range_follows_the_task_class_count(tmp_path: Path) -> None:
    config = copy.deepcopy(BASE)
    config["model"]["tasks"] = {"AERIAL_LABEL-COSIA": 19, "ALL_LABEL-LPIS": 23}
    ok = {"AERIAL_LABEL-COSIA": {18: 0.0}, "ALL_LABEL-LPIS": {22: 0.0}}
    cfg = load_run_config(write(tmp_path, config, loss={"class_weights": ok}))
    assert cfg.loss.class_weights == {Task.COSIA: {18: 0.0}, Task.LPIS: {22: 0.0}}
    # LPIS class 22 is valid, COSIA class 22 is not.
    bad = {"AERIAL_LABEL-COSIA": {22: 0.0}, "ALL_LABEL-LPIS": {22: 0.0}}
    message = error_of(write(tmp_path, config, loss={"class_weights": bad}))
    assert message.startswith("loss.class_weights.AERIAL_LABEL-COSIA.22: class 22 out of range")
    config["model"]["tasks"]["ALL_LABEL-LPIS"] = 10
    message = error_of(write(tmp_path, config, loss={"class_weights": ok}))
    assert message == (
        "loss.class_weights.ALL_LABEL-LPIS.22: class 22 out of range (the task has 10 classes)"
    )


def test_class_weights_of_a_task_the_model_lacks_are_allowed(tmp_path: Path) -> None:
    cfg = load_run_config(write(tmp_path))  # the defaults name COSIA and LPIS
    assert cfg.model.tasks == {Task.COSIA: 19}
    assert cfg.loss.class_weights[Task.LPIS] == {21: 0.0, 22: 0.0}
    loss = {"class_weights": {"ALL_LABEL-LPIS": {99: 0.0}}}
    assert load_run_config(write(tmp_path, loss=loss)).loss.class_weights == {Task.LPIS: {99: 0.0}}


@pytest.mark.parametrize("weight", [-1.0, -1, float("nan")], ids=["float", "int", "nan"])
def test_class_weight_negative(tmp_path: Path, weight: float) -> None:
    loss = {"class_weights": {"AERIAL_LABEL-COSIA": {3: weight}}}
    message = error_of(write(tmp_path, loss=loss))
    expected = f"loss.class_weights.AERIAL_LABEL-COSIA.3: weight must be >= 0, got {float(weight)}"
    assert message == expected


def test_class_weight_key_must_be_an_int(tmp_path: Path) -> None:
    loss = {"class_weights": {"AERIAL_LABEL-COSIA": {"three": 0.0}}}
    message = error_of(write(tmp_path, loss=loss))
    assert message.startswith("loss.class_weights.AERIAL_LABEL-COSIA.three: expected int")


def test_class_weight_checks_hold_without_yaml() -> None:
    """The checks live in the dataclasses, so a config built in code gets them too."""
    with pytest.raises(ConfigError, match=r"^loss\.class_weights\.ALL_LABEL-LPIS\.0: weight"):
        LossConfig(class_weights={Task.LPIS: {0: -0.5}})
    model = from_dict(ModelConfig, BASE["model"], "model")
    with pytest.raises(ConfigError, match=r"AERIAL_LABEL-COSIA\.19: class 19 out of range"):
        RunConfig(
            data=DataConfig(root=Path("/d")),
            model=model,
            preprocess=PreprocessConfig(),
            loss=LossConfig(class_weights={Task.COSIA: {19: 0.0}}),
        )
    ok = RunConfig(data=DataConfig(root=Path("/d")), model=model, preprocess=PreprocessConfig())
    assert ok.loss == LossConfig()
