"""RawSample -> Sample: the single preprocessing path for training and large-area maps.

The Preprocessor is built once from a PreprocessConfig (all lookups of band indices and
statistics happen there) and is then a pure function of its input.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch

from flairkit.config import CloudFilterConfig, ConfigError, ModalityConfig, PreprocessConfig
from flairkit.io.dates import day_offsets
from flairkit.io.raster import DataError, count_nonfinite
from flairkit.modalities import LABEL_MODALITIES, NORM_STATS, Modality, Task
from flairkit.sample import RawSample, Sample
from flairkit.transforms.timeseries import clear_fraction, filter_dates, temporal_average

log = logging.getLogger(__name__)

#: Channel names the DEM modes produce (spec section 2.5).
DEM_CHANNELS = {"stack": ("DSM", "HEIGHT"), "height": ("HEIGHT",), "raw": ("DSM", "DTM")}


@dataclass(frozen=True)
class _Plan:
    """Resolved per-modality work: which bands, and the affine normalisation to apply."""

    band_index: np.ndarray | None  # indices into the file's bands, None = all
    channels: tuple[str, ...]
    offset: np.ndarray | None  # (C,) subtract...
    inv_scale: np.ndarray | None  # (C,) ...then multiply
    scale_by_dtype: bool = False  # "scaling" without a scale: divide by the dtype's maximum


def output_channels(
    modality: Modality, cfg: ModalityConfig, dem_mode: str = "stack"
) -> tuple[str, ...]:
    """Names of the channels a modality feeds to the model, in order."""
    if modality is Modality.DEM_ELEV:
        return DEM_CHANNELS[dem_mode]
    return cfg.bands if cfg.bands is not None else modality.spec.bands


def _plan(modality: Modality, cfg: ModalityConfig, dem_mode: str) -> _Plan:
    where = f"preprocess.inputs.{modality.value}"
    spec = modality.spec
    channels = output_channels(modality, cfg, dem_mode)
    band_index = None
    if modality is not Modality.DEM_ELEV and cfg.bands is not None:
        unknown = [b for b in cfg.bands if b not in spec.bands]
        if unknown:
            raise ConfigError(
                f"{where}.bands: unknown band(s) {unknown}; valid: {list(spec.bands)}"
            )
        band_index = np.array(modality.band_indices(cfg.bands))
    offset = inv_scale = None
    if cfg.norm == "custom":
        mean, std = cfg.mean, cfg.std
        stats = NORM_STATS.get(modality, {})
        if mean is None or std is None:
            missing = [c for c in channels if c not in stats]
            if missing:
                raise ConfigError(
                    f"{where}: no published mean/std for {missing}; give mean and std, "
                    "or use norm: scaling / none"
                )
        mean = mean if mean is not None else tuple(stats[c][0] for c in channels)
        std = std if std is not None else tuple(stats[c][1] for c in channels)
        if len(mean) != len(channels) or len(std) != len(channels):
            raise ConfigError(
                f"{where}: {len(mean)} means and {len(std)} stds for {len(channels)} channels {channels}"
            )
        if any(s <= 0 for s in std):
            raise ConfigError(f"{where}.std: must be positive, got {std}")
        offset = np.asarray(mean, np.float32)
        inv_scale = 1.0 / np.asarray(std, np.float32)
    elif cfg.norm == "scaling" and cfg.scale is not None:
        if cfg.scale <= 0:
            raise ConfigError(f"{where}.scale: must be positive, got {cfg.scale}")
        offset = np.zeros(len(channels), np.float32)
        inv_scale = np.full(len(channels), 1.0 / cfg.scale, np.float32)
    if cfg.temporal_mean != "none" and not spec.is_time_series:
        raise ConfigError(f"{where}.temporal_mean: only for time series")
    scale_by_dtype = cfg.norm == "scaling" and cfg.scale is None
    return _Plan(band_index, channels, offset, inv_scale, scale_by_dtype)


def _dtype_max(dtype: np.dtype) -> float:
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


class Preprocessor:
    """Turn a RawSample into a model-ready Sample.

    Steps per input: the non-finite policy (``config.nonfinite``), band selection, DEM height,
    S2 cloud filter, temporal mean, normalisation, day offsets; per task: the label band (LPIS
    at the configured level) as class indices.

    Args:
        config: what to produce.

    Raises:
        ConfigError: unknown bands, missing statistics, inconsistent options.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self._plans = {m: _plan(m, c, config.dem) for m, c in config.inputs.items()}

    @property
    def required_modalities(self) -> tuple[Modality, ...]:
        """The files to read: inputs, the S2 mask when filtering clouds, and the labels."""
        mods = list(self.config.inputs)
        if Modality.SENTINEL2_TS in self.config.inputs and self.config.cloud_filter.enabled:
            mods.append(Modality.SENTINEL2_MSK)
        mods += [t.modality for t in self.config.tasks]
        return tuple(mods)

    def channels(self, modality: Modality) -> tuple[str, ...]:
        """Channel names a modality feeds the model."""
        return self._plans[modality].channels

    def kept_dates(self, raw: RawSample) -> np.ndarray:
        """Indices of the S2 dates the cloud filter keeps (all dates when it is off).

        Raises:
            ValueError: filtering is on but the sample has no S2 mask.
        """
        series = raw.arrays[Modality.SENTINEL2_TS]
        cfg: CloudFilterConfig = self.config.cloud_filter
        if not cfg.enabled:
            return np.arange(series.shape[0])
        return filter_dates(self._s2_mask(raw), cfg)

    def clear_fraction(self, raw: RawSample) -> np.ndarray:
        """Per S2 date, the fraction of pixels clear under the cloud filter's thresholds.

        A date is kept when at least ``1 - max_cover_fraction`` of it is clear (before the
        filter's fallback). Computed whether or not filtering is enabled.

        Raises:
            ValueError: the sample has no S2 mask.
        """
        cfg: CloudFilterConfig = self.config.cloud_filter
        return clear_fraction(self._s2_mask(raw), cfg.max_cloud, cfg.max_snow)

    def _s2_mask(self, raw: RawSample) -> np.ndarray:
        mask = raw.arrays.get(Modality.SENTINEL2_MSK)
        if mask is None:
            raise ValueError(
                f"{raw.patch_id}: S2 cloud filtering needs {Modality.SENTINEL2_MSK.value}; "
                "read it or set cloud_filter.enabled: false"
            )
        series = raw.arrays.get(Modality.SENTINEL2_TS)
        if series is not None and mask.shape[0] != series.shape[0]:
            raise ValueError(
                f"{raw.patch_id}: S2 has {series.shape[0]} dates but its mask has {mask.shape[0]}"
            )
        return mask

    def dem_channels(self, raw: RawSample) -> tuple[tuple[str, ...], np.ndarray]:
        """The DEM channels the model gets, before normalisation (``config.dem``).

        Returns:
            Their names (``DEM_CHANNELS``) and a (C, H, W) float32 array in metres.

        Raises:
            ValueError: the sample has no DEM.
        """
        data = raw.arrays.get(Modality.DEM_ELEV)
        if data is None:
            raise ValueError(f"{raw.patch_id}: {Modality.DEM_ELEV.value} was not read")
        return DEM_CHANNELS[self.config.dem], self._dem(data)

    def label(self, raw: RawSample, task: Task, lpis_level: int | None = None) -> np.ndarray:
        """A task's target as class indices, (H, W): the LPIS band at ``config.lpis_level``.

        Args:
            raw: the sample, with the task's label file read.
            task: which label.
            lpis_level: another LPIS level (1, 2 or 3) to read instead of the configured one.

        Returns:
            uint8, or int64 for a wider label dtype (torch lacks full uint16/uint32 support).

        Raises:
            ValueError: the label was not read, or the level is not 1, 2 or 3.
        """
        data = raw.arrays.get(task.modality)
        if data is None:
            raise ValueError(f"{raw.patch_id}: {task.modality.value} was not read")
        level = self.config.lpis_level if lpis_level is None else lpis_level
        if level not in (1, 2, 3):
            raise ValueError(f"LPIS level must be 1, 2 or 3, got {level}")
        band = level - 1 if task is Task.LPIS else 0
        label = np.ascontiguousarray(data[band])
        return label if label.dtype == np.uint8 else label.astype(np.int64)

    def __call__(self, raw: RawSample) -> Sample:
        """Preprocess one sample.

        Raises:
            DataError: an input (or the S2 mask) holds NaN or infinite values and
                ``config.nonfinite`` is ``error``; the message names the file and the count.
        """
        raw = self._handle_nonfinite(raw)
        inputs: dict[Modality, torch.Tensor] = {}
        dates: dict[Modality, torch.Tensor] = {}
        for modality, cfg in self.config.inputs.items():
            data = raw.arrays.get(modality)
            if data is None:
                raise ValueError(f"{raw.patch_id}: {modality.value} was not read")
            plan = self._plans[modality]
            if modality.spec.is_time_series:
                when = raw.dates[modality]
                if modality is Modality.SENTINEL2_TS:
                    keep = self.kept_dates(raw)
                    data, when = data[keep], when[keep]
                if cfg.temporal_mean != "none":
                    values, offsets = temporal_average(
                        data, when, cfg.temporal_mean, self.config.reference_date
                    )
                else:
                    values = data
                    offsets = day_offsets(when, self.config.reference_date)
                if plan.band_index is not None:
                    values = values[:, plan.band_index]
                inputs[modality] = torch.from_numpy(self._normalise(values, plan, axis=1))
                dates[modality] = torch.from_numpy(offsets)
            else:
                if modality is Modality.DEM_ELEV:
                    data = self._dem(data)
                elif plan.band_index is not None:
                    data = data[plan.band_index]
                inputs[modality] = torch.from_numpy(self._normalise(data, plan, axis=0))
        labels = {task: torch.from_numpy(self.label(raw, task)) for task in self.config.tasks}
        bounds, crs = self._footprint(raw)
        return Sample(raw.patch_id, inputs, dates, labels, bounds, crs)

    def _handle_nonfinite(self, raw: RawSample) -> RawSample:
        """Apply ``config.nonfinite`` to the float arrays this Preprocessor reads.

        Runs first, before any band arithmetic or normalisation could spread a NaN. The counts
        come from the reader (``RawSample.nonfinite``); an array without one is counted here.

        Returns:
            ``raw`` itself when every value is finite, else a copy whose non-finite values are
            0 (``zero``).
        """
        fixed: dict[Modality, np.ndarray] = {}
        for modality in self.required_modalities:
            data = raw.arrays.get(modality)
            if data is None or data.dtype.kind not in "fc":
                continue  # integer arrays cannot hold NaN or infinity
            count = raw.nonfinite.get(modality)
            if count is None:
                count = count_nonfinite(data)
            if not count:
                continue
            source = raw.paths.get(modality, f"<{modality.value} array>")
            where = f"{modality.value} of {raw.patch_id}"
            georef = raw.georefs.get(modality)
            if georef is not None:
                where += " at (" + ", ".join(f"{v:.2f}" for v in georef.bounds) + ")"
            if self.config.nonfinite == "error":
                raise DataError(
                    f"{source}: {count} of {data.size} values are NaN or infinite ({where}); "
                    "repair the file, or set preprocess.nonfinite: zero to replace them with 0"
                )
            log.warning(
                "%s: replaced %d NaN or infinite values with 0 (%s; preprocess.nonfinite: zero)",
                source, count, where,
            )  # fmt: skip
            fixed[modality] = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        if not fixed:
            return raw
        return dataclasses.replace(raw, arrays={**raw.arrays, **fixed})

    def _dem(self, dem: np.ndarray) -> np.ndarray:
        dsm, dtm = dem[0].astype(np.float32), dem[1].astype(np.float32)
        mode = self.config.dem
        if mode == "raw":
            return np.stack([dsm, dtm])
        height = dsm - dtm
        return np.stack([dsm, height]) if mode == "stack" else height[None]

    @staticmethod
    def _normalise(values: np.ndarray, plan: _Plan, axis: int) -> np.ndarray:
        """float32 copy of ``values``, normalised per channel along ``axis`` in one pass."""
        if plan.scale_by_dtype:
            return np.multiply(values, np.float32(1.0 / _dtype_max(values.dtype)), dtype=np.float32)
        if plan.offset is None or plan.inv_scale is None:
            return np.array(values, dtype=np.float32)
        shape = [1] * values.ndim
        shape[axis] = -1
        out = np.subtract(values, plan.offset.reshape(shape), dtype=np.float32)
        out *= plan.inv_scale.reshape(shape)
        return out

    @staticmethod
    def _footprint(raw: RawSample) -> tuple[tuple[float, float, float, float] | None, str | None]:
        for m in (*LABEL_MODALITIES, *raw.georefs):
            if m in raw.georefs:
                g = raw.georefs[m]
                return g.bounds, g.crs
        return None, None
