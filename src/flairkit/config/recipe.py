"""What a model is and how its inputs are prepared: the schemas saved with every model file.

``ModelConfig`` (what ``build_model`` builds) and ``PreprocessConfig`` (files -> model input)
travel together in checkpoints, so zonal inference prepares inputs exactly as training did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from flairkit.config.convert import ConfigError
from flairkit.modalities import (
    DEFAULT_BANDS,
    DEFAULT_REFERENCE_DATE,
    Modality,
    Task,
)
from flairkit.model_ref import ModelRefError, parse_model_ref
from flairkit.presets import preset_model_fields

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
        init_from: ``fit`` starts from this model's weights (a model reference: a flairkit
            file, a published FLAIR-HUB file or ``hf:<org>/<repo>[@<revision>]``): what fits
            is loaded, heads of another class count are re-initialised, Swin position tables
            of another window are resized (``models.transfer``). Not kept in model files.
        init_strict: refuse (true) or skip and list (false) anything else of ``init_from``
            that does not fit.
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
    init_from: str | None = None
    init_strict: bool = True

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
        if self.init_from is not None:
            try:
                parse_model_ref(self.init_from)
            except ModelRefError as exc:
                raise ConfigError(f"model.init_from: {exc}") from exc


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


def preset_config(model_id: str, aux: bool = True, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a benchmark model (``flairkit.presets``).

    Args:
        model_id: e.g. ``LC-D``.
        aux: one auxiliary head per input for multi-input models, as the published weights
            and the card's counts have them (single-input models never have one).
        overrides: other ModelConfig fields (e.g. ``arch``).

    Raises:
        KeyError: unknown preset id.
    """
    fields: dict[str, Any] = preset_model_fields(model_id, aux=aux)
    fields.update(overrides)
    return ModelConfig(**fields)
