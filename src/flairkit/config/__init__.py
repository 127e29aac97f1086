"""Configuration: frozen dataclasses and the only code that turns YAML/dicts into them.

- ``convert``: plain data <-> dataclasses, YAML reading, ``dotted.key=value`` overrides; errors
  name the dotted path of the bad key.
- ``recipe``: ``ModelConfig`` and ``PreprocessConfig``, saved with every model file.
- ``run``: the schemas and loader of a training run (``RunConfig``).
- ``zone``: the schemas and loader of a large-area map (``ZoneConfig``).

Loads without torch: presets come from the plain tables in ``flairkit.presets``.
"""

from flairkit.config.convert import (
    ConfigError,
    apply_overrides,
    at_least,
    finite_at_least,
    from_dict,
    load_yaml,
    merge_sections,
    parse_task,
    read_mapping,
    resolve_path,
    section,
    to_dict,
)
from flairkit.config.recipe import (
    CloudFilterConfig,
    DemMode,
    ModalityConfig,
    ModelConfig,
    NonFinite,
    Norm,
    PreprocessConfig,
    TemporalMean,
    UTAEConfig,
    default_modality_config,
    preprocess_config_for,
    preset_config,
)
from flairkit.config.run import (
    DEFAULT_CLASS_WEIGHTS,
    DataConfig,
    LossConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
    save_run_config,
)
from flairkit.config.zone import (
    ZoneAoiConfig,
    ZoneConfig,
    ZoneGridConfig,
    ZoneInputConfig,
    ZoneOutputConfig,
    ZoneRuntimeConfig,
    ZoneTilingConfig,
    load_zone_config,
)

__all__ = [
    "CloudFilterConfig",
    "ConfigError",
    "DEFAULT_CLASS_WEIGHTS",
    "DataConfig",
    "DemMode",
    "LossConfig",
    "ModalityConfig",
    "ModelConfig",
    "NonFinite",
    "Norm",
    "OptimConfig",
    "PreprocessConfig",
    "RunConfig",
    "TemporalMean",
    "TrainConfig",
    "UTAEConfig",
    "ZoneConfig",
    "ZoneGridConfig",
    "ZoneInputConfig",
    "ZoneAoiConfig",
    "ZoneOutputConfig",
    "ZoneRuntimeConfig",
    "ZoneTilingConfig",
    "apply_overrides",
    "at_least",
    "default_modality_config",
    "finite_at_least",
    "from_dict",
    "load_run_config",
    "load_yaml",
    "load_zone_config",
    "merge_sections",
    "parse_task",
    "read_mapping",
    "preprocess_config_for",
    "preset_config",
    "resolve_path",
    "save_run_config",
    "section",
    "to_dict",
]
