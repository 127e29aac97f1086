"""Frozen configuration dataclasses and the only code that turns YAML/dicts into them.

Errors name the dotted path of the bad key (``preprocess.inputs.SENTINEL2_TS.norm: ...``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from flairkit.modalities import (
    DEFAULT_BANDS,
    DEFAULT_REFERENCE_DATE,
    Modality,
    Task,
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


Norm = Literal["custom", "scaling", "none"]
TemporalMean = Literal["none", "monthly", "semi-monthly"]
DemMode = Literal["stack", "height", "raw"]
NonFinite = Literal["error", "zero"]


@dataclass(frozen=True)
class ModalityConfig:
    """How one input modality is prepared.

    Attributes:
        bands: band names to keep, in this order (``None``: all, file order). Not used for the
            DEM, whose channels come from ``PreprocessConfig.dem``.
        norm: ``custom`` (x - mean) / std; ``scaling`` x / scale; ``none``.
        mean: per kept band; ``None`` takes the published value of each band by name.
        std: per kept band, likewise.
        scale: divisor for ``scaling``; ``None`` takes the dtype's maximum (255 for uint8).
        temporal_mean: time series only: ``none``, ``monthly`` or ``semi-monthly``.
    """

    bands: tuple[str, ...] | None = None
    norm: Norm = "custom"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    temporal_mean: TemporalMean = "none"


@dataclass(frozen=True)
class CloudFilterConfig:
    """Sentinel-2 snow/cloud date filter; defaults are the benchmark's (spec section 2.3).

    Attributes:
        enabled: filter at all.
        max_cloud: a pixel is clear if its cloud probability (0-100) is at most this...
        max_snow: ...and its snow probability at most this.
        max_cover_fraction: a date is kept if at most this fraction of pixels is not clear.
        fallback_num_dates: when no date passes even on snow alone, keep this many least-covered dates.
    """

    enabled: bool = True
    max_cloud: float = 1.0
    max_snow: float = 1.0
    max_cover_fraction: float = 0.05
    fallback_num_dates: int = 3


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything between the files and the model input; saved with every model.

    Attributes:
        inputs: the input modalities and how each is prepared.
        tasks: which labels to produce.
        lpis_level: LPIS nomenclature level (1, 2 or 3).
        dem: ``stack`` = [DSM, DSM - DTM], ``height`` = [DSM - DTM], ``raw`` = [DSM, DTM].
        cloud_filter: the S2 date filter.
        reference_date: ``MM-DD`` origin of the day offsets.
        nonfinite: what a NaN or infinite value in an input file (or the S2 mask) does:
            ``error`` (default) stops with a DataError naming the file and the count;
            ``zero`` replaces each such value with 0 before normalisation and logs a warning
            per file with the count (``RawSample.nonfinite`` holds the counts). Model files
            written before this option read as ``error``.
    """

    inputs: Mapping[Modality, ModalityConfig] = field(
        default_factory=lambda: {
            Modality.AERIAL_RGBI: default_modality_config(Modality.AERIAL_RGBI)
        }
    )
    tasks: tuple[Task, ...] = (Task.COSIA,)
    lpis_level: int = 1
    dem: DemMode = "stack"
    cloud_filter: CloudFilterConfig = CloudFilterConfig()
    reference_date: str = DEFAULT_REFERENCE_DATE
    nonfinite: NonFinite = "error"

    def __post_init__(self) -> None:
        if self.lpis_level not in (1, 2, 3):
            raise ConfigError(f"lpis_level: must be 1, 2 or 3, got {self.lpis_level}")
        if self.nonfinite not in get_args(NonFinite):
            raise ConfigError(f"nonfinite: must be 'error' or 'zero', got {self.nonfinite!r}")
        for m in self.inputs:
            if not m.spec.is_input:
                raise ConfigError(f"inputs.{m.value}: not a model input")


@dataclass(frozen=True)
class UTAEConfig:
    """U-TAE hyper-parameters; defaults are the FLAIR-HUB training config (spec section 6.1).

    When the model also has a mono-temporal encoder, the widths are rewritten to match its
    stages and the summed class count is appended to ``out_conv`` (``models.utae`` helpers).
    """

    encoder_widths: tuple[int, ...] = (64, 64, 64, 128)
    decoder_widths: tuple[int, ...] = (32, 32, 64, 128)
    out_conv: tuple[int, ...] = (32, 19)
    str_conv_k: int = 3
    str_conv_s: int = 1
    str_conv_p: int = 1
    agg_mode: Literal["att_group", "att_mean", "mean"] = "att_group"
    encoder_norm: Literal["group", "batch", "instance"] = "group"
    n_head: int = 16
    d_model: int = 256
    d_k: int = 4
    padding_mode: Literal["reflect", "zeros", "replicate", "circular"] = "reflect"


@dataclass(frozen=True)
class ModelConfig:
    """What ``build_model`` builds; saved with every checkpoint.

    Attributes:
        inputs: input channels per modality (e.g. AERIAL_RGBI: 3 for NIR, R, G).
        img_sizes: patch side in pixels per input modality (Swin is built for it).
        tasks: classes per task.
        arch: ``<timm encoder>-<decoder>`` for the mono-temporal branches.
        utae: U-TAE settings for the time series.
        aux_heads: modalities that get an auxiliary head per task (own loss).
        modality_dropout: probability of dropping each modality's features in training.
        pretrained_path: local weights file for the mono-temporal backbones (never downloaded).
        new_channels_init: how channels beyond RGB are initialised from pretrained RGB weights.
        out_px: side of the output (label) grid in pixels for a patch (512 at 0.2 m).
    """

    inputs: Mapping[Modality, int]
    img_sizes: Mapping[Modality, int]
    tasks: Mapping[Task, int]
    arch: str = "swin_base_patch4_window12_384-upernet"
    utae: UTAEConfig = UTAEConfig()
    aux_heads: tuple[Modality, ...] = ()
    modality_dropout: float = 0.0
    pretrained_path: Path | None = None
    new_channels_init: str = "mean"
    out_px: int = 512

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("model.inputs: at least one input modality is needed")
        if not self.tasks:
            raise ConfigError("model.tasks: at least one task is needed")
        missing = [m.value for m in self.inputs if m not in self.img_sizes]
        if missing:
            raise ConfigError(f"model.img_sizes: missing for {missing}")
        unknown = [m.value for m in self.aux_heads if m not in self.inputs]
        if unknown:
            raise ConfigError(f"model.aux_heads: {unknown} are not inputs")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ConfigError(
                f"model.modality_dropout: must be in [0, 1), got {self.modality_dropout}"
            )
        if "-" not in self.arch:
            raise ConfigError(f"model.arch: expected '<encoder>-<decoder>', got {self.arch!r}")


def default_modality_config(modality: Modality) -> ModalityConfig:
    """The benchmark's preparation of a modality (spec section 5.1)."""
    if modality.spec.is_time_series:
        return ModalityConfig(norm="none")  # the benchmark feeds raw S1/S2 to U-TAE
    return ModalityConfig(bands=DEFAULT_BANDS.get(modality))


def preprocess_config_for(
    modalities: list[Modality] | tuple[Modality, ...],
    tasks: tuple[Task, ...] = (Task.COSIA,),
    **kwargs: Any,
) -> PreprocessConfig:
    """A PreprocessConfig with the benchmark defaults for these inputs."""
    return PreprocessConfig(
        inputs={m: default_modality_config(m) for m in modalities}, tasks=tasks, **kwargs
    )


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build a (nested) frozen dataclass from plain data, checking every key and type.

    Raises:
        ConfigError: an unknown key, a missing required key or a wrong type, with its dotted path.
    """
    return _convert(cls, data, path)


def _convert(tp: Any, value: Any, path: str) -> Any:
    where = path or "<root>"
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(
                f"{_join(path, sorted(map(str, unknown))[0])}: unknown key; valid: {', '.join(sorted(names))}"
            )
        kwargs = {k: _convert(hints[k], v, _join(path, k)) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} matches no allowed type"
        )
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(tp)))}"
            )
        return value
    if origin in (tuple,):
        args = get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin in (Mapping, dict, typing.Mapping) or tp is dict:
        key_tp, value_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {
            _convert(key_tp, k, _join(path, str(k))): _convert(value_tp, v, _join(path, str(k)))
            for k, v in value.items()
        }
    if tp is Task:
        return parse_task(value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp.parse(value) if hasattr(tp, "parse") else tp(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str | Path):
        return Path(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``: a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (``1e-4`` is a float, as in YAML 1.2).

    Raises:
        ConfigError: the file is missing or not valid YAML.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return _parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc


# --- training runs -----------------------------------------------------------------------------

#: Classes the benchmark leaves out of its loss and scores (spec section 4): COSIA 15-18; for
#: LPIS the card removes two unnamed classes, 21 and 22 are the spec's (unverified) candidates.
DEFAULT_CLASS_WEIGHTS: dict[Task, dict[int, float]] = {
    Task.COSIA: {15: 0.0, 16: 0.0, 17: 0.0, 18: 0.0},
    Task.LPIS: {21: 0.0, 22: 0.0},
}


def _at_least(key: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise ConfigError(f"{key}: must be at least {lowest}, got {value}")


def _finite_at_least(key: str, value: float, lowest: float) -> None:
    if not (math.isfinite(value) and value >= lowest):
        raise ConfigError(f"{key}: must be a finite number >= {lowest:g}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """Which patches, and how they are batched.

    Attributes:
        root: dataset root, a CSV list or a folder of CSV lists.
        split: split method (``auto``, ``card``, ``split_1`` ... or a file), see ``io.catalog``.
        departments: keep only these departments / domain-years.
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers per process.
        augment: flips and 90-degree rotations in training.
        max_patches: cap per split (quick experiments); None = all.
    """

    root: Path
    split: str = "auto"
    departments: tuple[str, ...] | None = None
    batch_size: int = 5
    num_workers: int = 0
    augment: bool = True
    max_patches: int | None = None

    def __post_init__(self) -> None:
        _at_least("data.batch_size", self.batch_size, 1)
        _at_least("data.num_workers", self.num_workers, 0)
        if self.max_patches is not None:
            _at_least("data.max_patches", self.max_patches, 1)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights.

    Attributes:
        class_weights: per task, {class: weight}; 0 leaves the class out of loss and scores.
        task_weights: per task (default 1).
        aux_weight: weight of the auxiliary heads' losses.
    """

    class_weights: Mapping[Task, Mapping[int, float]] = field(
        default_factory=lambda: {t: dict(w) for t, w in DEFAULT_CLASS_WEIGHTS.items()}
    )
    task_weights: Mapping[Task, float] = field(default_factory=dict)
    aux_weight: float = 1.5

    def __post_init__(self) -> None:
        for task, weights in self.class_weights.items():
            for index, weight in weights.items():
                if not weight >= 0:  # also NaN
                    raise ConfigError(
                        f"loss.class_weights.{getattr(task, 'value', task)}.{index}: "
                        f"weight must be >= 0, got {weight}"
                    )
        for task, weight in self.task_weights.items():
            _finite_at_least(f"loss.task_weights.{getattr(task, 'value', task)}", weight, 0)
        _finite_at_least("loss.aux_weight", self.aux_weight, 0)


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
        _finite_at_least("optim.lr", self.lr, 0)
        _finite_at_least("optim.weight_decay", self.weight_decay, 0)
        if not 0 <= self.warmup_fraction <= 1:  # also NaN
            raise ConfigError(
                f"optim.warmup_fraction: must be in [0, 1], got {self.warmup_fraction}"
            )
        if not (math.isfinite(self.div_factor) and self.div_factor > 0):
            raise ConfigError(f"optim.div_factor: must be positive, got {self.div_factor}")
        _at_least("optim.plateau_patience", self.plateau_patience, 0)


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
    progress_bar: bool = True
    winograd: bool = True

    def __post_init__(self) -> None:
        _at_least("train.max_epochs", self.max_epochs, 1)
        if not 0 <= self.seed < 2**32:  # what numpy and Lightning's seed_everything accept
            raise ConfigError(f"train.seed: must be in [0, 2**32), got {self.seed}")
        _at_least("train.accumulate_grad_batches", self.accumulate_grad_batches, 1)
        _at_least("train.num_nodes", self.num_nodes, 1)
        _at_least("train.log_every_n_steps", self.log_every_n_steps, 1)
        if self.early_stopping_patience is not None:
            _at_least("train.early_stopping_patience", self.early_stopping_patience, 0)
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
                _at_least(f"train.{key}", value, lowest)
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


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML, as ``load_yaml`` does).

    Raises:
        ConfigError: an override without ``=``, through a key that is not a section, or with
            a value that is not valid YAML; or overrides of data that is not a mapping.
    """
    out = copy.deepcopy(data) if data else {}
    if overrides and not isinstance(out, dict):
        raise ConfigError(f"overrides need a mapping at the top level, got {type(out).__name__}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_epochs=3")
        key, _, text = item.partition("=")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # absent, or an empty section (``train:``)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = _parse_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: invalid YAML value ({exc})") from exc
    return out


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML (plus overrides) into a validated RunConfig.

    ``model.preset: LC-D`` fills the model's inputs, tasks, patch sizes and auxiliary heads
    from the benchmark preset; keys given next to it override those. ``preprocess`` defaults
    to the benchmark's preparation of the model's inputs and tasks. Relative paths are
    resolved against the YAML's folder.

    Raises:
        ConfigError: with the dotted path of the bad key.
    """
    raw = load_yaml(path) if path is not None else {}
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw or {}, overrides or [])
    base = Path(path).parent if path is not None else Path.cwd()
    raw = dict(raw)
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key; valid: {', '.join(sorted(known))}")
    data_raw = _section(raw, "data")
    if "root" not in data_raw:
        raise ConfigError("data.root: missing (the dataset root)")
    data_raw["root"] = str(_resolve(base, data_raw["root"]))
    model_raw = _section(raw, "model")
    preset = model_raw.pop("preset", None) or raw.get("preset")
    if preset is not None:
        from flairkit.models.presets import preset_config

        aux = model_raw.pop("aux", True)
        preset_fields = to_dict(preset_config(str(preset), aux=bool(aux)))
        model_raw = {**preset_fields, **model_raw}
    if "pretrained_path" in model_raw and model_raw["pretrained_path"]:
        model_raw["pretrained_path"] = str(_resolve(base, model_raw["pretrained_path"]))
    model = from_dict(ModelConfig, model_raw, "model")
    pre_raw = _section(raw, "preprocess")
    default_pre = to_dict(preprocess_config_for(list(model.inputs), tuple(model.tasks)))
    preprocess = from_dict(PreprocessConfig, _merge(default_pre, pre_raw), "preprocess")
    train_raw = _section(raw, "train")
    if "output_dir" in train_raw:
        train_raw["output_dir"] = str(_resolve(base, train_raw["output_dir"]))
    else:  # runs/<config name> in the working directory
        stem = Path(path).stem if path is not None else "flairkit"
        train_raw["output_dir"] = str((Path.cwd() / "runs" / stem).resolve())
    return RunConfig(
        data=from_dict(DataConfig, data_raw, "data"),
        model=model,
        preprocess=preprocess,
        train=from_dict(TrainConfig, train_raw, "train"),
        loss=from_dict(LossConfig, _section(raw, "loss"), "loss"),
        optim=from_dict(OptimConfig, _section(raw, "optim"), "optim"),
        preset=str(preset).upper() if preset else None,
    )


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A top-level section as a new dict; an absent or empty (``train:``) section is {}."""
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _resolve(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _merge(base: Any, update: Any) -> Any:
    """Recursive dict merge: ``update`` wins; ``inputs`` of preprocess are replaced per modality."""
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return update


def save_run_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (next to each run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
    return path


# --- large-area maps (flairkit map) --------------------------------------------------------------


@dataclass(frozen=True)
class ZoneInputConfig:
    """One input raster of a map.

    Attributes:
        path: the raster (any GDAL format with a CRS); time series hold ``T * C`` bands,
            date-major, as in the dataset files.
        dates: acquisition dates of a time series, one per date-block of bands
            (``io.windows.read_dates_file`` formats); required for S2 and S1.
        mask: Sentinel-2 only: the snow/cloud probability stack (``SENTINEL2_MSK-SC``, 2 bands
            per date, the S2 dates), needed when the model's preprocessing filters clouds.
        gsd_m: pixel size the model reads this input at; default the model's training GSD
            (102.4 m / its patch side in pixels).
    """

    path: Path
    dates: Path | None = None
    mask: Path | None = None
    gsd_m: float | None = None


@dataclass(frozen=True)
class ZoneGridConfig:
    """The output grid; every field defaults to the reference (finest, usually aerial) input.

    Attributes:
        gsd_m: output pixel size; default the model's label GSD (102.4 m / ``model.out_px``).
        bounds: ``[left, bottom, right, top]`` in ``crs``; default the reference input's extent.
            When ``crs`` and ``gsd_m`` match the reference input, the bounds are widened to its
            pixel grid so that its pixels are read exactly (no resampling).
        crs: CRS of the map, e.g. ``EPSG:2154``; default the reference input's.
    """

    gsd_m: float | None = None
    bounds: tuple[float, float, float, float] | None = None
    crs: str | None = None


@dataclass(frozen=True)
class ZoneTilingConfig:
    """How the grid is cut into model inputs (all in output pixels).

    Attributes:
        tile_px: tile side; default the model's patch (``model.out_px``, 512 px for FLAIR-HUB
            models). Larger tiles recompute less of the overlap but hold more activations.
        overlap_px: overlap between neighbouring tiles; default ``tile_px // 8``.
        margin_px: pixels along an inner tile edge given weight 0 in the blend; default a
            quarter of the overlap.
    """

    tile_px: int | None = None
    overlap_px: int | None = None
    margin_px: int | None = None


@dataclass(frozen=True)
class ZoneOutputConfig:
    """What is written.

    Attributes:
        path: the class map ``.tif`` (a COG); ``<stem>.qml``, ``<stem>_preview.png`` and, with
            ``write_proba``, ``<stem>_proba.tif`` are written beside it.
        write_proba: also write per-class probabilities (uint8, ``round(p * 255)``).
        on_existing: ``resume`` (continue an interrupted map, keep a finished one made with
            the same settings), ``overwrite`` or ``error``.
    """

    path: Path
    write_proba: bool = False
    on_existing: Literal["resume", "overwrite", "error"] = "resume"


@dataclass(frozen=True)
class ZoneRuntimeConfig:
    """Speed and resources; none of these change the map (beyond float rounding).

    Attributes:
        batch_size: tiles per forward pass; default 1 on a CPU (a larger batch is no faster
            there and holds more activations) and 8 on a GPU.
        num_workers: DataLoader worker processes that read and preprocess tiles; 0 reads in
            ``read_threads`` threads of the main process (lighter; enough for a CPU run).
        read_threads: reader threads when ``num_workers`` is 0.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on GPUs that support it, else fp16; fp32 on CPU),
            ``fp32``, ``bf16`` or ``fp16`` (GPU only).
        torch_threads: intra-op threads for the model on CPU; default torch's.
        channels_last: run convolutions in NHWC memory order (faster with oneDNN and cuDNN).
        fold_batchnorm: fold eval-mode BatchNorms into the convolutions before them (about
            12 % faster on a CPU; equal up to float rounding).
        blend_memory_mb: budget for the blending buffer; a map wider than the budget allows is
            computed in vertical strips, merged at the end.
        progress: show a progress bar (tiles/s and ETA).
    """

    batch_size: int | None = None
    num_workers: int = 0
    read_threads: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    torch_threads: int | None = None
    channels_last: bool = True
    fold_batchnorm: bool = True
    blend_memory_mb: float = 320.0
    progress: bool = True


@dataclass(frozen=True)
class ZoneConfig:
    """Everything ``flairkit map`` needs: a model file, its input rasters, and what to write.

    The model file (``.safetensors`` from ``flairkit fit``, or a fit ``.ckpt``) carries its
    ModelConfig and PreprocessConfig, so inputs are prepared exactly as in training.

    Attributes:
        model: the model file.
        inputs: one raster per input modality the model uses.
        output: the class map and its options.
        grid: the output grid (default: the reference input's grid at the model's GSD).
        tiling: tile, overlap and margin sizes.
        runtime: batching, device, precision, threads.
        task: which head to map when the model has several (``COSIA`` or ``LPIS``).
        nonfinite: what a NaN or infinite input value does: ``error`` or ``zero`` (see
            ``PreprocessConfig.nonfinite``); default (None) the model file's setting. ``zero``
            maps rasters that use NaN as nodata with a model trained under ``error``.
    """

    model: Path
    inputs: Mapping[Modality, ZoneInputConfig]
    output: ZoneOutputConfig
    grid: ZoneGridConfig = ZoneGridConfig()
    tiling: ZoneTilingConfig = ZoneTilingConfig()
    runtime: ZoneRuntimeConfig = ZoneRuntimeConfig()
    task: Task | None = None
    nonfinite: NonFinite | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs: at least one input raster is needed")
        for m, cfg in self.inputs.items():
            where = f"inputs.{m.value}"
            if not m.spec.is_input:
                hint = " (give the S2 mask as inputs.SENTINEL2_TS.mask)" * (
                    m is Modality.SENTINEL2_MSK
                )
                raise ConfigError(f"{where}: not a model input{hint}")
            if cfg.mask is not None and m is not Modality.SENTINEL2_TS:
                raise ConfigError(f"{where}.mask: only SENTINEL2_TS has a snow/cloud mask")
            if cfg.dates is not None and not m.spec.is_time_series:
                raise ConfigError(f"{where}.dates: {m.value} is not a time series")
            if cfg.gsd_m is not None and not cfg.gsd_m > 0:
                raise ConfigError(f"{where}.gsd_m: must be positive, got {cfg.gsd_m}")
        g = self.grid
        if g.gsd_m is not None and not g.gsd_m > 0:
            raise ConfigError(f"grid.gsd_m: must be positive, got {g.gsd_m}")
        if g.bounds is not None and not (g.bounds[2] > g.bounds[0] and g.bounds[3] > g.bounds[1]):
            raise ConfigError(
                f"grid.bounds: expected [left, bottom, right, top] with left < right and "
                f"bottom < top, got {list(g.bounds)}"
            )
        t = self.tiling
        if t.tile_px is not None and t.tile_px < 16:
            raise ConfigError(f"tiling.tile_px: must be at least 16, got {t.tile_px}")
        if t.overlap_px is not None and t.overlap_px < 0:
            raise ConfigError(f"tiling.overlap_px: must be >= 0, got {t.overlap_px}")
        if t.margin_px is not None and t.margin_px < 0:
            raise ConfigError(f"tiling.margin_px: must be >= 0, got {t.margin_px}")
        r = self.runtime
        for key in ("batch_size", "read_threads"):
            if getattr(r, key) is not None and getattr(r, key) < 1:
                raise ConfigError(f"runtime.{key}: must be at least 1, got {getattr(r, key)}")
        if r.num_workers < 0:
            raise ConfigError(f"runtime.num_workers: must be >= 0, got {r.num_workers}")
        if r.torch_threads is not None and r.torch_threads < 1:
            raise ConfigError(f"runtime.torch_threads: must be at least 1, got {r.torch_threads}")
        if not r.blend_memory_mb > 0:
            raise ConfigError(f"runtime.blend_memory_mb: must be positive, got {r.blend_memory_mb}")


def parse_task(value: Any, where: str = "task") -> Task:
    """A task by enum name or official value, case-insensitive (``COSIA``, ``ALL_LABEL-LPIS``).

    Raises:
        ConfigError: no task has that name.
    """
    if isinstance(value, Task):
        return value
    key = str(value).strip().upper()
    for t in Task:
        if key in (t.name, t.value.upper()):
            return t
    valid = ", ".join(f"{t.name} ({t.value})" for t in Task)
    raise ConfigError(f"{where}: unknown task {value!r}; valid: {valid}")


def load_zone_config(path: str | Path | None, overrides: list[str] | None = None) -> ZoneConfig:
    """Read a map YAML (plus ``dotted.key=value`` overrides) into a validated ZoneConfig.

    An input may be given as a bare path (``AERIAL_RGBI: ortho.tif``); modality keys accept
    aliases (``AERIAL``, ``S2``). Relative paths are resolved against the YAML's folder.

    Raises:
        ConfigError: with the dotted path of the bad key.
    """
    raw = load_yaml(path) if path is not None else {}
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw or {}, overrides or [])
    base = Path(path).parent if path is not None else Path.cwd()
    raw = dict(raw)
    for key in ("model", "inputs", "output"):
        if not raw.get(key):
            raise ConfigError(f"{key}: missing")
    raw["model"] = str(_resolve(base, raw["model"]))
    if not isinstance(raw["inputs"], Mapping):
        raise ConfigError(f"inputs: expected a mapping, got {type(raw['inputs']).__name__}")
    inputs = {}
    for name, value in raw["inputs"].items():
        entry = {"path": value} if isinstance(value, str) else dict(value or {})
        for key in ("path", "dates", "mask"):
            if entry.get(key):
                entry[key] = str(_resolve(base, entry[key]))
        if "path" not in entry:
            raise ConfigError(f"inputs.{name}.path: missing")
        inputs[name] = entry
    raw["inputs"] = inputs
    output = raw["output"]
    output = {"path": output} if isinstance(output, str) else dict(output)
    if output.get("path"):
        output["path"] = str(_resolve(base, output["path"]))
    raw["output"] = output
    if raw.get("task") is not None:
        raw["task"] = parse_task(raw["task"])
    return from_dict(ZoneConfig, raw, "")
