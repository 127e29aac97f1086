"""Schemas of a training run (``flairkit fit | validate | test | predict``) and its YAML loader."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from flairkit.config.convert import (
    ConfigError,
    at_least,
    finite_at_least,
    from_dict,
    merge_sections,
    read_mapping,
    resolve_path,
    section,
    to_dict,
)
from flairkit.config.recipe import (
    ModelConfig,
    PreprocessConfig,
    preprocess_config_for,
    preset_config,
)
from flairkit.modalities import Task
from flairkit.model_ref import HUB_PREFIX

#: Classes the benchmark leaves out of its loss and scores (spec section 4): COSIA 15-18; for
#: LPIS the card removes two unnamed classes, 21 and 22 are the spec's (unverified) candidates.
DEFAULT_CLASS_WEIGHTS: dict[Task, dict[int, float]] = {
    Task.COSIA: {15: 0.0, 16: 0.0, 17: 0.0, 18: 0.0},
    Task.LPIS: {21: 0.0, 22: 0.0},
}


@dataclass(frozen=True)
class DataConfig:
    """Which patches, and how they are batched.

    Attributes:
        root: dataset root, a CSV list or a folder of CSV lists; or a packed dataset
            (``flairkit pack``): its folder or URL (``s3://``, ``gs://``, ``local:``...).
        split: split method (``auto``, ``card``, ``split_1`` ... or a file), see ``io.catalog``.
        departments: keep only these departments / domain-years.
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers per process.
        augment: flips and 90-degree rotations in training.
        max_patches: cap per split (quick experiments); None = all.
    """

    root: Path | str
    split: str = "auto"
    departments: tuple[str, ...] | None = None
    batch_size: int = 5
    num_workers: int = 0
    augment: bool = True
    max_patches: int | None = None

    def __post_init__(self) -> None:
        at_least("data.batch_size", self.batch_size, 1)
        at_least("data.num_workers", self.num_workers, 0)
        if self.max_patches is not None:
            at_least("data.max_patches", self.max_patches, 1)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights.

    Attributes:
        class_weights: per task, {class: weight}; 0 leaves the class out of loss and scores.
        task_weights: per task (default 1).
        aux_weight: weight of the auxiliary heads' losses. 0 (default): the heads exist (the
            published weights carry them) but are neither run nor trained in ``fit``, which is
            what the reference does in practice (its auxiliary loss is always 0) and trained
            better in ``bench/train_parity.py`` (LC-D-r18, 3 seeds: test mIoU 53.4 with 1.5).
    """

    class_weights: Mapping[Task, Mapping[int, float]] = field(
        default_factory=lambda: {t: dict(w) for t, w in DEFAULT_CLASS_WEIGHTS.items()}
    )
    task_weights: Mapping[Task, float] = field(default_factory=dict)
    aux_weight: float = 0.0

    def __post_init__(self) -> None:
        for task, weights in self.class_weights.items():
            for index, weight in weights.items():
                if not weight >= 0:  # also NaN
                    raise ConfigError(
                        f"loss.class_weights.{getattr(task, 'value', task)}.{index}: "
                        f"weight must be >= 0, got {weight}"
                    )
        for task, weight in self.task_weights.items():
            finite_at_least(f"loss.task_weights.{getattr(task, 'value', task)}", weight, 0)
        finite_at_least("loss.aux_weight", self.aux_weight, 0)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule; defaults are the benchmark's (spec section 6.2).

    Attributes:
        optimizer: ``adamw`` (the benchmark's), ``adam`` or ``sgd`` (momentum 0.9 and weight
            decay; the reference's SGD has neither).
        lr: (peak) learning rate.
        weight_decay: decoupled weight decay.
        scheduler: ``one_cycle`` (per step: cosine up to ``lr`` over ``warmup_fraction`` of
            the steps, then down to ``lr / div_factor / 1e4``); ``plateau`` (halve the lr after
            ``plateau_patience`` epochs without a lower validation loss, then wait 4 epochs);
            ``cycle_then_plateau`` (the one-cycle warm-up, then ``plateau``); ``none``.
        warmup_fraction: share of the steps spent warming up.
        div_factor: the lr starts at ``lr / div_factor``.
        plateau_patience: epochs without val-loss improvement before the lr halves.
    """

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.01
    scheduler: Literal["one_cycle", "plateau", "cycle_then_plateau", "none"] = "one_cycle"
    warmup_fraction: float = 0.2
    div_factor: float = 1000.0
    plateau_patience: int = 10

    def __post_init__(self) -> None:
        finite_at_least("optim.lr", self.lr, 0)
        finite_at_least("optim.weight_decay", self.weight_decay, 0)
        if not 0 <= self.warmup_fraction <= 1:  # also NaN
            raise ConfigError(
                f"optim.warmup_fraction: must be in [0, 1], got {self.warmup_fraction}"
            )
        if not (math.isfinite(self.div_factor) and self.div_factor > 0):
            raise ConfigError(f"optim.div_factor: must be positive, got {self.div_factor}")
        at_least("optim.plateau_patience", self.plateau_patience, 0)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        output_dir: run folder (checkpoints, logs, reports, predictions).
        max_epochs: epochs.
        seed: seeds Python, numpy and torch (and loader workers).
        accumulate_grad_batches: gradient accumulation.
        precision: ``32-true``, ``bf16-mixed`` or ``16-mixed``. bf16-mixed also runs on a CPU
            (slow without AVX512-BF16 or AMX); 16-mixed needs a GPU (on a CPU Lightning switches
            to bf16-mixed with a warning).
        accelerator: ``auto``, ``cpu``, ``gpu``.
        devices: ``auto`` or a count.
        num_nodes: machines (DDP).
        strategy: ``auto``, ``ddp``, ``ddp_spawn`` ...
        early_stopping_patience: epochs without val mIoU improvement; None disables it.
        limit_train_batches: Lightning's limit (fraction or count) for quick runs.
        limit_val_batches: likewise for validation.
        log_every_n_steps: logging period.
        progress_bar: show a progress bar.
        winograd: on a CPU in float32, train the 3x3 convolutions of 64 channels or more
            through Winograd F(4,3)/F(2,3) (``flairkit.models.winograd``): same results to
            ~1e-5 relative, a ResNet18 U-Net step ~17 % faster. Evaluation, prediction and maps
            always use the direct convolution. No effect on a GPU or under mixed precision.
        freeze_encoders_epochs: the encoders (image and time series) do not learn during the
            first N epochs (no gradient, no weight decay, norm statistics frozen), so that
            re-initialised heads adapt to a model given by ``model.init_from`` first. The
            U-TAE's class layer (last ``out_conv`` block) keeps learning: it is a head too.
            May reach ``max_epochs`` (heads only, for the whole run).
    """

    output_dir: Path = Path("runs/flairkit")
    max_epochs: int = 150
    seed: int = 2025
    accumulate_grad_batches: int = 1
    precision: Literal["32-true", "32", "bf16-mixed", "16-mixed"] = "32-true"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    early_stopping_patience: int | None = 20
    # int first: ``limit_train_batches: 3`` is 3 batches and ``1`` one batch (Lightning's count),
    # not 100 %; ``0.5`` is half of them.
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    log_every_n_steps: int = 10
    freeze_encoders_epochs: int = 0
    progress_bar: bool = True
    winograd: bool = True

    def __post_init__(self) -> None:
        at_least("train.max_epochs", self.max_epochs, 1)
        if not 0 <= self.seed < 2**32:  # what numpy and Lightning's seed_everything accept
            raise ConfigError(f"train.seed: must be in [0, 2**32), got {self.seed}")
        at_least("train.accumulate_grad_batches", self.accumulate_grad_batches, 1)
        at_least("train.num_nodes", self.num_nodes, 1)
        at_least("train.log_every_n_steps", self.log_every_n_steps, 1)
        at_least("train.freeze_encoders_epochs", self.freeze_encoders_epochs, 0)
        if self.early_stopping_patience is not None:
            at_least("train.early_stopping_patience", self.early_stopping_patience, 0)
        if isinstance(self.devices, int):
            if self.devices < 1 and self.devices != -1:
                raise ConfigError(
                    f"train.devices: must be a count >= 1, -1 (all) or 'auto', got {self.devices}"
                )
        elif not re.fullmatch(r"auto|-1|\d+(\s*,\s*\d+)*,?", self.devices.strip()):
            raise ConfigError(
                f"train.devices: expected a count, -1 (all), 'auto' or a list of device "
                f"indices like '0,1', got {self.devices!r}"
            )
        for key in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            lowest = 1 if key == "limit_train_batches" else 0  # no validation is allowed
            if isinstance(value, int):
                at_least(f"train.{key}", value, lowest)
            elif not (0 < value <= 1 if lowest else 0 <= value <= 1):
                raise ConfigError(
                    f"train.{key}: a fraction must be in {'(0' if lowest else '[0'}, 1], or give "
                    f"a count of batches (an integer), got {value}"
                )


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``flairkit fit | validate | test | predict`` run needs.

    Attributes:
        data: patches and batching.
        model: the network.
        preprocess: inputs and labels preparation (saved with the model).
        train: the loop.
        loss: loss weights.
        optim: optimiser and schedule.
        preset: benchmark preset the model came from (for published scores), if any.
    """

    data: DataConfig
    model: ModelConfig
    preprocess: PreprocessConfig
    train: TrainConfig = TrainConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    preset: str | None = None

    def __post_init__(self) -> None:
        # Weights for a task the model does not have are allowed (the defaults name both).
        for task, weights in self.loss.class_weights.items():
            num_classes = self.model.tasks.get(task)
            if num_classes is None:
                continue
            for index in weights:
                if not 0 <= index < num_classes:
                    raise ConfigError(
                        f"loss.class_weights.{task.value}.{index}: class {index} out of range "
                        f"(the task has {num_classes} classes)"
                    )


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(value: object) -> bool:
    """Whether a root is a URL (``s3://bucket/pack``, ``local:/folder``) rather than a path."""
    return isinstance(value, str) and (bool(_URL.match(value)) or value.startswith("local:"))


def load_run_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    model_default: Callable[[], ModelConfig] | None = None,
) -> RunConfig:
    """Read a run YAML (plus overrides) into a validated RunConfig.

    ``model.preset: LC-D`` fills the model's inputs, tasks, patch sizes and auxiliary heads
    from the benchmark preset; keys given next to it override those. ``preprocess`` defaults
    to the benchmark's preparation of the model's inputs and tasks. Relative paths are
    resolved against the YAML's folder.

    ``model_default`` gives the model of a config without a ``model`` section (``flairkit test
    --weights hf:...`` scores the model it names: the config then only says which data).

    Raises:
        ConfigError: with the dotted path of the bad key.
    """
    raw, base = read_mapping(path, overrides)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key; valid: {', '.join(sorted(known))}")
    data_raw = section(raw, "data")
    if "root" not in data_raw:
        raise ConfigError("data.root: missing (the dataset root)")
    root = data_raw["root"]
    data_raw["root"] = str(resolve_path(base, root)) if not is_url(root) else "."
    model_raw = section(raw, "model")
    preset = model_raw.pop("preset", None) or raw.get("preset")
    if preset is not None:
        aux = model_raw.pop("aux", True)
        preset_fields = to_dict(preset_config(str(preset), aux=bool(aux)))
        model_raw = {**preset_fields, **model_raw}
    if "pretrained_path" in model_raw and model_raw["pretrained_path"]:
        model_raw["pretrained_path"] = str(resolve_path(base, model_raw["pretrained_path"]))
    init_from = model_raw.get("init_from")
    if isinstance(init_from, str) and init_from and not init_from.startswith(HUB_PREFIX):
        model_raw["init_from"] = str(resolve_path(base, init_from))
    if not model_raw and preset is None and model_default is not None:
        model = model_default()
    else:
        model = from_dict(ModelConfig, model_raw, "model")
    pre_raw = section(raw, "preprocess")
    default_pre = to_dict(preprocess_config_for(list(model.inputs), tuple(model.tasks)))
    preprocess = from_dict(PreprocessConfig, merge_sections(default_pre, pre_raw), "preprocess")
    train_raw = section(raw, "train")
    if "output_dir" in train_raw:
        train_raw["output_dir"] = str(resolve_path(base, train_raw["output_dir"]))
    else:  # runs/<config name> in the working directory
        stem = Path(path).stem if path is not None else "flairkit"
        train_raw["output_dir"] = str((Path.cwd() / "runs" / stem).resolve())
    data = from_dict(DataConfig, data_raw, "data")
    if is_url(root):  # a URL stays a string (a Path would fold its "//")
        data = dataclasses.replace(data, root=root)
    return RunConfig(
        data=data,
        model=model,
        preprocess=preprocess,
        train=from_dict(TrainConfig, train_raw, "train"),
        loss=from_dict(LossConfig, section(raw, "loss"), "loss"),
        optim=from_dict(OptimConfig, section(raw, "optim"), "optim"),
        preset=str(preset).upper() if preset else None,
    )


def save_run_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to each run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    return path
