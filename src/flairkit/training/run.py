"""fit / validate / test / predict: a RunConfig in, checkpoints, reports and GeoTIFFs out.

Several processes (``train.devices`` > 1, ``strategy: ddp`` or ``ddp_spawn``): with
``ddp_spawn`` the stages run in worker processes and only the weights, the best checkpoint path
and the logged scalars come back to the caller. So whatever a stage produces is written by the
workers through the callbacks below (reports and validation scores by rank 0, once the
confusion matrices are summed over all processes; class maps by the rank that predicted them)
and the caller reads the files back. The same code then serves one process, ``ddp`` (every
process runs the caller's code) and ``ddp_spawn``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from flairkit.checkpoint import (
    NonFiniteWeightsError,
    init_from_reference,
    load_model,
    nonfinite_tensors,
    save_model,
)
from flairkit.config import (
    ConfigError,
    LossConfig,
    ModelConfig,
    PreprocessConfig,
    RunConfig,
    load_yaml,
    save_run_config,
)
from flairkit.data.datamodule import FlairDataModule
from flairkit.data.datasets import PatchSizes
from flairkit.data.packed import catalog_of_pack, is_packed, pack_of
from flairkit.io.catalog import GPKG_SPLIT_COLUMNS, Catalog
from flairkit.io.patches import PatchRef
from flairkit.io.raster import read_patch_px
from flairkit.io.writers import write_class_map
from flairkit.modalities import Modality, Task, class_table
from flairkit.model_ref import HUB_PREFIX, parse_model_ref
from flairkit.models.presets import get_preset
from flairkit.models.transfer import class_layer_test
from flairkit.models.winograd import use_winograd
from flairkit.presets import preset_model_fields
from flairkit.reports import report_paths, write_report
from flairkit.safe_load import CheckpointReadError, load_weights_only
from flairkit.training.task import NonFiniteLossError, SegmentationTask, ignored_classes
from flairkit.transforms.augment import FlipRotate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What ``fit`` wrote.

    Attributes:
        best_checkpoint: Lightning checkpoint with the best validation mIoU.
        last_checkpoint: checkpoint of the last epoch (resume point).
        model_path: ``model.safetensors``: best weights + recipe, for predict and maps.
        val_scores: validation scores of the best model per task.
        init_summary: what ``model.init_from`` loaded (None without it, or on a resume).
    """

    best_checkpoint: Path
    last_checkpoint: Path
    model_path: Path
    val_scores: dict[str, Any]
    init_summary: str | None = None


def make_catalog(cfg: RunConfig) -> Catalog:
    """The catalog of the run: root, split method, department filter, per-split cap."""
    if is_packed(cfg.data.root):  # flairkit pack output: the manifest lists patches and splits
        catalog = catalog_of_pack(cfg.data.root)
        split = cfg.data.split
        if split in GPKG_SPLIT_COLUMNS or split == "csv":
            raise ConfigError(
                f"data.split: {split} is read from the source dataset, not from a pack; a pack "
                "keeps the split it was packed with (auto), or give card or a split file"
            )
        if split != "auto":  # card or a user file: only the patch ids are needed
            catalog = catalog.with_split(split)
    else:
        catalog = Catalog.open(cfg.data.root, split=cfg.data.split)
    if cfg.data.departments:
        catalog = catalog.filter(departments=cfg.data.departments)
    if cfg.data.max_patches:
        refs = []
        for split in ("train", "val", "test"):
            refs += list(catalog.filter(split=split).refs[: cfg.data.max_patches])
        catalog = Catalog(tuple(sorted(refs, key=lambda r: r.patch_id)), catalog.root)
    return catalog


def make_datamodule(
    cfg: RunConfig, catalog: Catalog | None = None, preprocess: PreprocessConfig | None = None
) -> FlairDataModule:
    """The DataModule of a run."""
    return FlairDataModule(
        catalog or make_catalog(cfg),
        preprocess or cfg.preprocess,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        augment=FlipRotate() if cfg.data.augment else None,
        seed=cfg.train.seed,
    )


#: ``model.out_px`` when a config leaves it out: a config giving another value pins it.
DEFAULT_OUT_PX: int = cast(int, next(f.default for f in fields(ModelConfig) if f.name == "out_px"))


def model_sizes(cfg: RunConfig, catalog: Catalog) -> PatchSizes:
    """The patch sizes of a run's model, known before any pixel is read.

    - An input takes its ``model.img_sizes`` entry when the config gives it. A preset's size
      (the benchmark's 512 / 256 / 64 / 10 px, kept by a config that names the preset) is
      read from the header of the input's first training patch, so that a preset also trains
      on resampled patches (``configs/demo.yaml``).
    - The label grid is ``model.out_px`` when the config sets another value than the default
      512. Otherwise it follows from the input of finest native GSD through the modality
      tables (the input's GSD over the labels', at native resolution): 64 px aerial or DEM
      patches give a 64 px grid, 64 px SPOT patches 512 px. Where that is no whole number of
      pixels (Sentinel alone on resampled patches) the first training label's header decides.

    Only headers are read (``io.raster.read_patch_px``), and only where the config leaves a size
    open; ``check_patch_headers`` then checks the first training patch against the result.

    Raises:
        ValueError: the train split is empty and a size has to be read from it.
        DataError: a file whose header is needed is missing or unreadable.
    """

    def header_px(modality: Modality) -> int:
        width, _ = _patch_px(catalog, _first_patch(catalog), modality)
        return width

    preset_px = preset_model_fields(cfg.preset)["img_sizes"] if cfg.preset else {}
    img_sizes = {}
    for m in cfg.model.inputs:
        px = cfg.model.img_sizes[m]
        img_sizes[m] = header_px(m) if preset_px.get(m) == px else px
    if cfg.model.out_px != DEFAULT_OUT_PX:
        return PatchSizes(img_sizes, cfg.model.out_px)
    label = next(iter(cfg.model.tasks)).modality
    finest = min(img_sizes, key=lambda m: m.spec.native_gsd_m)
    out_px = img_sizes[finest] * finest.spec.native_gsd_m / label.spec.native_gsd_m
    if abs(out_px - round(out_px)) < 1e-6 and round(out_px) > 0:
        return PatchSizes(img_sizes, round(out_px))
    return PatchSizes(img_sizes, header_px(label))


def _patch_px(catalog: Catalog, ref: PatchRef, modality: Modality) -> tuple[int, int]:
    """A patch file's (width, height): its TIFF header, or a packed dataset's manifest."""
    packed = pack_of(catalog)
    if packed is not None:
        return packed.patch_px(ref.patch_id, modality)
    return read_patch_px(ref.path(modality), modality)


def _first_patch(catalog: Catalog, split: str = "train") -> PatchRef:
    refs = catalog.filter(split=split).refs
    if not refs:
        raise ValueError(f"the {split} split holds no patch")
    return refs[0]


def check_patch_headers(cfg: RunConfig, catalog: Catalog, sizes: PatchSizes) -> None:
    """The first training patch's inputs and labels have the model's sizes (headers only).

    Every patch is checked again when the datasets read it; this fails before anything is
    built or written.

    Raises:
        ValueError: the train split is empty.
        DataError: a file is missing, unreadable, or of another size than the model's (the
            message names the file and the config key).
    """
    ref = _first_patch(catalog)
    labels = [t.modality for t in cfg.model.tasks]
    for modality in [*cfg.model.inputs, *labels]:
        width, height = _patch_px(catalog, ref, modality)
        sizes.check(ref.path(modality), modality, width, height)


def _trainer(
    cfg: RunConfig, stage: str, resuming: bool = False, extra_callbacks: list | None = None
) -> L.Trainer:
    out = cfg.train.output_dir
    resume_path = Path(out) / "checkpoints" / "last.ckpt" if resuming else None
    callbacks: list[L.Callback] = [_PatchSizeContract(), *(extra_callbacks or [])]
    loggers: list[Any] = []
    if stage == "fit":
        from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

        checkpoints = out / "checkpoints"
        callbacks.append(
            _RunCheckpoint(
                dirpath=checkpoints,
                filename="best-{epoch:03d}",
                monitor="val_miou",
                mode="max",
                save_top_k=1,
            )
        )
        # Lightning's save_last only refreshes last.ckpt when a top-k file is written; a
        # resume point must be written after every epoch, so it gets its own callback. Always
        # last.ckpt, never last-v1.ckpt: the resume point is found by that name (a fit with
        # --no-resume starts over and replaces it).
        callbacks.append(
            _RunCheckpoint(
                dirpath=checkpoints, filename="last", save_top_k=1, enable_version_counter=False
            )
        )
        if cfg.train.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(
                    monitor="val_miou", mode="max", patience=cfg.train.early_stopping_patience
                )
            )
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        from lightning.pytorch.loggers import TensorBoardLogger

        csv_logger = _ResumableCSVLogger(out, name="logs", version="", resuming=resuming)
        if resuming:
            callbacks.append(_TrimResumedMetrics(csv_logger))
        loggers = [
            csv_logger,
            TensorBoardLogger(out, name="tensorboard", version=""),
        ]
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=cfg.train.max_epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=cfg.train.precision,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        log_every_n_steps=cfg.train.log_every_n_steps,
        enable_progress_bar=cfg.train.progress_bar,
        enable_model_summary=stage == "fit",
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[SafeCheckpointIO(resume_path)],
        deterministic="warn",
        # A sanity pass before a resumed epoch would draw from the restored RNG and change
        # the data order: skip it when resuming.
        num_sanity_val_steps=0 if resuming else 2,
    )
    if stage == "fit" and _some_parameters_get_no_gradient(cfg):
        from lightning.pytorch.strategies import DDPStrategy

        if isinstance(trainer.strategy, DDPStrategy):
            # DDP refuses parameters without a gradient unless told to look for unused ones.
            # Set on the strategy Lightning chose (also for "auto" on several devices);
            # Lightning keeps DDP's arguments in _ddp_kwargs (no public setter).
            trainer.strategy._ddp_kwargs["find_unused_parameters"] = True
    return trainer


def _some_parameters_get_no_gradient(cfg: RunConfig) -> bool:
    """Frozen encoders, auxiliary heads whose loss is off (``loss.aux_weight`` 0), or the
    classifier of a U-TAE fused with image encoders that feeds no applied auxiliary head."""
    if cfg.train.freeze_encoders_epochs:
        return True
    applied = set(cfg.model.aux_heads) if cfg.loss.aux_weight > 0 else set()
    if set(cfg.model.aux_heads) - applied:
        return True
    series = [m for m in cfg.model.inputs if m.spec.is_time_series]
    has_images = len(series) < len(cfg.model.inputs)
    return has_images and any(m not in applied for m in series)


def fit(cfg: RunConfig, resume: bool | str = "auto", callbacks: list | None = None) -> FitResult:
    """Train, keeping the best (val mIoU) and last checkpoints; export the best model.

    Args:
        cfg: the run.
        resume: ``auto`` continues from ``checkpoints/last.ckpt`` when present; True requires
            it; False starts over.
        callbacks: extra Lightning callbacks.
    """
    check_accelerator(cfg.train.accelerator)
    out = Path(cfg.train.output_dir)
    last = out / "checkpoints" / "last.ckpt"
    if resume is True and not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume")
    resuming = bool(resume) and last.is_file()
    if resuming:
        _check_resumable(cfg, out / "config.yaml")
        # Before the data is opened: a damaged or unsafe last.ckpt is what to report. Mapped,
        # not read: Lightning reads it (through SafeCheckpointIO) when it restores the state.
        resume_point = SafeCheckpointIO.read_resume_point(last, mmap=True)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    catalog = make_catalog(cfg)
    # The model is described before any data is read: sizes from the config (headers only
    # where it leaves one open); every patch read later is checked against them.
    sizes = model_sizes(cfg, catalog)
    check_patch_headers(cfg, catalog, sizes)
    cfg = replace(cfg, model=replace(cfg.model, img_sizes=sizes.img_sizes, out_px=sizes.out_px))
    datamodule = make_datamodule(cfg, catalog)
    task = SegmentationTask(cfg.model, cfg.preprocess, cfg.loss, cfg.optim)
    if resuming:  # before config.yaml is replaced: the run's recipe must stay the checkpoint's
        _check_resume_fits(last, resume_point, task)
        del resume_point
    init_summary = None
    if cfg.model.init_from and not resuming:  # a resumed run takes its weights from last.ckpt
        report = init_from_reference(task.model, cfg.model.init_from, cfg.model.init_strict)
        init_summary = f"model.init_from {cfg.model.init_from}: {report.summary()}"
        log.info("%s", init_summary)
        if getattr(rank_zero_only, "rank", 0) == 0:  # (set by Lightning on the function)
            print(init_summary, file=sys.stderr, flush=True)
    if cfg.train.freeze_encoders_epochs:
        callbacks = [*(callbacks or []), FreezeEncoders(cfg.train.freeze_encoders_epochs)]
    out.mkdir(parents=True, exist_ok=True)  # once the config and the data are known good
    save_run_config(cfg, out / "config.yaml")
    if cfg.train.winograd:  # CPU float32 training only; see TrainConfig
        log.info("Winograd for %d 3x3 convolutions on CPU", use_winograd(task.model))
    val_path = out / "val_scores.json"
    callbacks = [*(callbacks or []), _ValScoresWriter(val_path)]
    trainer = _trainer(cfg, "fit", resuming, callbacks)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resuming else None)
    except (NonFiniteLossError, NonFiniteWeightsError) as exc:
        kept = (
            f"{last} keeps the last complete epoch: resume from it once the cause is fixed"
            if last.is_file()
            else "no epoch was completed"
        )
        raise type(exc)(f"{exc}. Nothing was exported; {kept}") from exc
    checkpoint_cb = trainer.checkpoint_callback  # the best-model _RunCheckpoint, added first
    best_path = checkpoint_cb.best_model_path if isinstance(checkpoint_cb, ModelCheckpoint) else ""
    best = Path(best_path) if best_path else last
    model_path = out / "model.safetensors"
    if trainer.is_global_zero:  # with strategy ddp every process runs this code
        # save_model refuses weights holding NaN or inf (the best callback never picks them)
        best_model = load_model(best)[0] if best.is_file() else task.model
        save_model(
            model_path,
            best_model,
            cfg.model,
            cfg.preprocess,
            extra={
                "preset": cfg.preset,
                "loss": {t.value: list(ignored_classes(cfg.loss, t)) for t in cfg.model.tasks},
            },
        )
    val = json.loads(val_path.read_text()) if val_path.is_file() else {}
    return FitResult(best, last, model_path, val, init_summary)


def check_accelerator(name: str) -> None:
    """Fail early, naming ``train.accelerator``, when the accelerator is unknown or absent.

    Lightning's own check comes later (after the data is opened) and, for ``tpu`` without
    torch_xla, raises an ImportError.

    Raises:
        ConfigError: an unknown name, or an accelerator this machine does not have.
    """
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if name == "auto":
        return
    registered = sorted(AcceleratorRegistry.available_accelerators())
    valid = ["auto", "gpu", *registered]
    if name not in valid:
        raise ConfigError(f"train.accelerator: unknown {name!r}; valid: {', '.join(valid)}")

    def available(key: str) -> bool:
        try:
            return bool(AcceleratorRegistry[key]["accelerator"].is_available())
        except Exception:  # a backend whose library is missing or broken
            return False

    if not any(available(k) for k in (("cuda", "mps") if name == "gpu" else (name,))):
        usable = ["auto", *(k for k in registered if available(k))]
        raise ConfigError(
            f"train.accelerator: {name!r} is not available on this machine; "
            f"available: {', '.join(usable)}"
        )


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, reading through ``safe_load.load_weights_only``.

    Lightning's resume calls ``torch.load`` without ``weights_only``, which torch then
    resolves from the environment (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes it unpickle
    anything, running the code a poisoned ``last.ckpt`` holds). Here the flag is always set,
    and a damaged or foreign file is an error naming it.

    Args:
        resume_path: the checkpoint a fit resumes from: it must hold what a resume needs.
            Lightning reads other files through here too (with ``ddp_spawn``, the weights the
            workers send back), which hold only a state dict.
    """

    #: What resuming a fit needs from a checkpoint (Lightning's own errors do not name the file).
    RESUME_KEYS = ("state_dict", "epoch", "global_step", "optimizer_states", "loops")

    def __init__(self, resume_path: str | Path | None = None) -> None:
        super().__init__()
        self.resume_path = Path(resume_path).absolute() if resume_path is not None else None

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint at ``path``, read weights-only whatever ``weights_only`` says.

        Raises:
            CheckpointReadError: damaged, not a torch pickle, unsafe to unpickle, or not a
                checkpoint written by ``flairkit fit``.
        """
        resuming = self.resume_path is not None and Path(path).absolute() == self.resume_path
        if not resuming:
            return load_weights_only(path, map_location or "cpu")
        return self.read_resume_point(path, map_location or "cpu")

    @classmethod
    def read_resume_point(cls, path: Any, map_location: Any = "cpu", mmap: bool = False) -> dict:
        """A checkpoint to resume from, checked to hold what resuming needs.

        Raises:
            CheckpointReadError: unreadable, unsafe, or not a ``flairkit fit`` checkpoint.
        """
        hint = "restore it, or start over with --no-resume (which replaces it)"
        # torch maps only its zip format; an older or foreign file is read (and refused) whole
        mmap = mmap and zipfile.is_zipfile(path)
        try:
            checkpoint = load_weights_only(path, map_location, mmap=mmap)
        except CheckpointReadError as exc:
            raise CheckpointReadError(f"{exc}; cannot resume from it: {hint}") from exc
        missing = [
            k for k in cls.RESUME_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint
        ]
        if missing:
            raise CheckpointReadError(
                f"{path}: not a checkpoint written by flairkit fit (no {', '.join(missing)}); "
                f"cannot resume from it: {hint}"
            )
        return checkpoint


def _check_resume_fits(path: Path, checkpoint: dict, task: SegmentationTask) -> None:
    """The checkpoint to resume from holds the weights of this config's model.

    Lightning's strict load would fail later with a multi-line RuntimeError; a changed
    ``model.*`` key (arch, inputs, classes) is the usual cause.
    """
    from flairkit.models.official import state_mismatch

    mismatch = state_mismatch(task.state_dict(), checkpoint["state_dict"], "checkpoint")
    if mismatch:
        raise ConfigError(
            f"{path}: was written for another model than this config describes ({mismatch}); "
            "keep the run's model.* keys, or start over with --no-resume or another "
            "train.output_dir"
        )


class _RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, for a run folder that may be copied or moved, or diverge.

    A copied or moved run resumes as it would in place. Lightning keeps the bookkeeping of a
    checkpoint (best and last paths, scores) only when the folder stored in it is the current
    one; otherwise it keeps the stored folder's paths, so last.ckpt no longer matched the path
    it replaces and went to last-v1.ckpt, while every later resume started again from the
    stale last.ckpt (and the best score was forgotten). Paths in the stored folder are mapped
    to the current folder.

    Weights holding NaN or inf, or a non-finite monitored score, never become the best; the
    last checkpoint refuses them (an error), so last.ckpt stays the last good epoch.
    """

    @property
    def state_key(self) -> str:
        """Lightning's key for a ModelCheckpoint: checkpoints written before stay resumable."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the bookkeeping, mapping paths of a moved run folder to the current one."""
        stored = state_dict.get("dirpath")
        if stored and self.dirpath and Path(stored) != Path(self.dirpath):
            state_dict = _moved_state(state_dict, Path(stored), Path(self.dirpath))
        super().load_state_dict(state_dict)

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        """Lightning's test, after refusing a non-finite score or non-finite weights."""
        if current is not None and not bool(torch.isfinite(current)):
            return False
        if nonfinite_tensors(trainer.lightning_module.state_dict()):
            return False
        return super().check_monitor_top_k(trainer, current)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = nonfinite_tensors(trainer.lightning_module.state_dict())
        if bad:
            raise NonFiniteWeightsError(
                f"{filepath}: not written: after epoch {trainer.current_epoch} {len(bad)} "
                f"weight tensors hold NaN or infinite values (e.g. {bad[0]}); the training "
                "diverged"
            )
        super()._save_checkpoint(trainer, filepath)


def _moved_state(state: dict[str, Any], stored: Path, current: Path) -> dict[str, Any]:
    """A ModelCheckpoint state with the paths inside ``stored`` moved to ``current``."""

    def move(path: Any) -> Any:
        if path and Path(path).parent == stored:
            return str(current / Path(path).name)
        return path

    out = dict(state, dirpath=str(current))
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in out:
            out[key] = move(out[key])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in out["best_k_models"].items()}
    return out


class _ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, continuing ``logs/metrics.csv`` when a run is resumed.

    Lightning's writer takes an existing metrics file for the leftover of an unrelated
    experiment and deletes it when it starts (``_ExperimentWriter._check_log_dir_exists``),
    then writes a fresh file. Our run directory is one run, resumed in place after a kill:
    that deleted the rows of every epoch before the kill. When resuming, the file is kept,
    trimmed to the rows the checkpoint covers (``_TrimResumedMetrics``), and the new rows are
    appended to it (the writer rewrites the file under the union of the columns when the new
    part logs others). A fresh fit (no checkpoint, or ``resume=False``) starts a new file, as
    before.
    """

    def __init__(self, *args: Any, resuming: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resuming = resuming

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _ContinuingWriter if self._resuming else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        # set only here, to an ExperimentWriter (Lightning types it as the writer's base class)
        return cast(ExperimentWriter, self._experiment)

    def trim_to(self, epoch: int, step: int) -> None:
        """Drop the rows logged after the resume point (epoch ``epoch``, logging step ``step``)."""
        if isinstance(self.experiment, _ContinuingWriter):
            self.experiment.trim_to(epoch, step)


class _ContinuingWriter(ExperimentWriter):
    """An ExperimentWriter that appends to an existing metrics file instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                # the columns already written: new ones widen the header (see save)
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's deletes metrics.csv here (and warns it will): keep it

    def trim_to(self, epoch: int, step: int) -> None:
        """Keep the rows logged before the resume point, drop those of the interrupted part.

        Lightning logs each row with the count of batches stepped so far (``step``), and the
        rows of ``self.log`` with the current epoch. The resumed trainer logs from ``step``
        on: rows at later steps come from the killed run past the checkpoint, and so do those
        at ``step`` itself except the epoch-end rows of the epochs before ``epoch``.
        """
        self.save()  # nothing logged yet, in practice
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            fieldnames, rows = reader.fieldnames or [], list(reader)

        def before(row: dict[str, str]) -> bool:
            s = int(float(row["step"]))
            e = row.get("epoch") or ""
            return s < step or (s == step and bool(e) and int(float(e)) < epoch)

        kept = [row for row in rows if before(row)]
        if len(kept) == len(rows):
            return
        tmp = self.metrics_file_path + ".tmp"
        with self._fs.open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)
        self._fs.mv(tmp, self.metrics_file_path)  # a kill now leaves one file or the other


class _TrimResumedMetrics(L.Callback):
    """At the start of a resumed fit (state restored, nothing logged yet), trims metrics.csv."""

    def __init__(self, logger: _ResumableCSVLogger) -> None:
        self.logger = logger

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            # the step the logger connector and LearningRateMonitor log rows with
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            self.logger.trim_to(trainer.current_epoch, step)


class _PatchSizeContract(L.Callback):
    """Gives the run's datasets the model's patch sizes, in each process, once they are built.

    Lightning sets the DataModule up before the callbacks, and builds the loaders (and their
    worker processes) after: every patch any loader reads is then checked against the model
    (``PatchSizes``), for fit as for test and predict with a loaded model.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, FlairDataModule) or not isinstance(
            pl_module, SegmentationTask
        ):
            return
        sizes = PatchSizes.of(pl_module.model_config)
        for dataset in datamodule.datasets.values():
            dataset.sizes = sizes


class FreezeEncoders(L.Callback):
    """The encoders (``model.encoders``, ``model.temporal``) do not learn in the first epochs.

    Frozen parameters get no gradient, so AdamW neither steps nor decays them, and their
    modules run in eval mode (norm statistics unchanged). The U-TAE's class layer (the last
    block of its ``out_conv``, which ``model.init_from`` re-initialises like a head) keeps
    learning: in a time-series-only model it is the only class layer, and freezing it too
    left nothing to train. The state follows from the epoch number alone, so a resumed run
    freezes exactly as an uninterrupted one.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._learning: list[torch.nn.Module] = []  # the class layers, found once per epoch

    def _encoders(self, pl_module: L.LightningModule) -> list[torch.nn.Module]:
        model = cast(SegmentationTask, pl_module).model
        return [*model.encoders.values(), *model.temporal.values()]

    def _class_layers(self, pl_module: L.LightningModule) -> list[torch.nn.Module]:
        """The encoders' modules that hold class-layer parameters (U-TAE ``out_conv``)."""
        model = cast(SegmentationTask, pl_module).model
        is_class_layer = class_layer_test(model)
        return [
            module
            for name, module in model.named_modules()
            if name.split(".")[0] in ("encoders", "temporal")
            and any(
                is_class_layer(f"{name}.{p}") for p, _ in module.named_parameters(recurse=False)
            )
        ]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for module in self._encoders(pl_module):
            module.requires_grad_(not frozen)
        self._learning = self._class_layers(pl_module)
        for module in self._learning:
            module.requires_grad_(True)
        if trainer.current_epoch == self.epochs and self.epochs:
            log.info("encoders unfrozen at epoch %d", self.epochs)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Every batch, from the epoch alone: Lightning gives each module back the mode it had
        # before validation, so encoders left in eval mode at the end of the frozen epochs
        # would stay so in an uninterrupted run but not in a resumed one.
        frozen = trainer.current_epoch < self.epochs
        for module in self._encoders(pl_module):
            module.train(not frozen)
        for module in self._learning:
            module.train()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for module in self._encoders(pl_module):
            module.requires_grad_(True)


class _ValScoresWriter(L.Callback):
    """Writes the scores of each validation epoch (summed over all processes) on rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        val = {t.value: s for t, s in getattr(pl_module, "last_val_scores", {}).items()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(val, indent=2))
        os.replace(tmp, self.path)  # readers never see a half-written file


class _ReportWriter(L.Callback):
    """Writes the test reports on rank 0 once the test matrices are summed over all processes.

    ``on_test_end`` runs after ``SegmentationTask.on_test_epoch_end``, which syncs the matrices.
    """

    def __init__(
        self,
        out_dir: Path,
        loss: LossConfig,
        lpis_level: int,
        published: dict[str, Any] | None,
        title: str,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.loss = loss
        self.lpis_level = lpis_level
        self.published = published
        self.title = title

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            if trainer.is_global_zero and isinstance(pl_module, SegmentationTask):
                for t, (matrix, groups) in pl_module.last_test_matrices.items():
                    write_report(
                        self.out_dir,
                        t,
                        matrix,
                        groups,
                        ignored_classes(self.loss, t),
                        self.published,
                        title=self.title,
                        level=self.lpis_level if t is Task.LPIS else 1,
                    )
        finally:  # with strategy ddp, the other processes read the reports next
            trainer.strategy.barrier("flairkit_reports")


def _check_resumable(cfg: RunConfig, previous_path: Path) -> None:
    """A one-cycle schedule is fixed by the step count: resuming with other epochs cannot work."""
    if not previous_path.is_file() or cfg.optim.scheduler not in (
        "one_cycle",
        "cycle_then_plateau",
    ):
        return
    previous = load_yaml(previous_path)
    train = previous.get("train") if isinstance(previous, dict) else None
    before = train.get("max_epochs") if isinstance(train, dict) else None
    if before is not None and before != cfg.train.max_epochs:
        raise ValueError(
            f"{previous_path.parent}: the run was started with train.max_epochs={before}; its "
            f"one-cycle schedule cannot be resumed with {cfg.train.max_epochs}. Keep {before}, "
            "or start over with --no-resume (or another train.output_dir)"
        )


def _weights_for(cfg: RunConfig, weights: str | Path | None) -> str | Path:
    """The model reference to score: ``--weights`` (a file or a hub id), else the run's model."""
    if weights:
        if not str(weights).strip().startswith(HUB_PREFIX) and not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: no trained model (model file not found)")
        return weights
    path = Path(cfg.train.output_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model (run flairkit fit, or give --weights)")
    return path


def _inference_task(
    cfg: RunConfig, weights: str | Path | None, preset: str | None = None
) -> SegmentationTask:
    """The task around the network of a model reference, loaded once by ``checkpoint.load_model``.

    A published FLAIR-HUB file whose name does not tell its preset takes ``preset``, else the
    run's ``model.preset``.
    """
    network, preprocess = load_model(_weights_for(cfg, weights), preset or cfg.preset)
    return SegmentationTask.from_network(network, preprocess, cfg.loss, cfg.optim)


def evaluate(
    cfg: RunConfig,
    weights: str | Path | None = None,
    split: str = "test",
    preset: str | None = None,
) -> dict[str, Any]:
    """Score a trained model on a split; write JSON, Markdown and PNG reports per task.

    Returns:
        Per task: scores, per-department scores, report paths, and the published scores of the
        preset if the run has one.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    check_accelerator(cfg.train.accelerator)
    task = _inference_task(cfg, weights, preset)
    preprocess = task.preprocess_config
    datamodule = make_datamodule(cfg, preprocess=preprocess)
    # The loaders are built by the trainer, in each process, so that they split the set
    # across processes without repeating samples (see FlairDataModule).
    datamodule.test_split = split
    published = None
    model_id = preset or cfg.preset or (parse_model_ref(weights).preset if weights else None)
    if model_id:
        card = get_preset(model_id)
        published = {"model_id": card.model_id, "oa": card.card_oa, "miou": card.card_miou}
    out_dir = Path(cfg.train.output_dir) / f"report_{split}"
    writer = _ReportWriter(
        out_dir, cfg.loss, preprocess.lpis_level, published, f"{model_id or 'flairkit'} {split}"
    )
    trainer = _trainer(cfg, "test", extra_callbacks=[writer])
    trainer.test(task, datamodule=datamodule, verbose=False)
    results: dict[str, Any] = {}
    for t in task.tasks:
        paths = report_paths(out_dir, t)
        payload = json.loads(paths["json"].read_text())
        results[t.value] = {
            "scores": payload["scores"],
            "paths": {k: str(v) for k, v in paths.items()},
            "published": published,
        }
    return results


def predict(
    cfg: RunConfig,
    weights: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    probabilities: bool = False,
    preset: str | None = None,
) -> list[Path]:
    """Write one georeferenced class map per patch and task (and optional probabilities)."""
    check_accelerator(cfg.train.accelerator)
    task = _inference_task(cfg, weights, preset)
    preprocess = task.preprocess_config
    catalog = make_catalog(cfg)
    datamodule = FlairDataModule(
        catalog, preprocess, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
        augment=None, predict_split=split,
    )  # fmt: skip
    out_dir = Path(out_dir or Path(cfg.train.output_dir) / f"predictions_{split}")
    writer = _MapWriter(out_dir, preprocess.lpis_level, probabilities)
    trainer = _trainer(cfg, "predict", extra_callbacks=[writer])
    # Each process writes the maps of its own patches: nothing to send back.
    trainer.predict(task, datamodule=datamodule, return_predictions=False)
    written = [
        _map_path(out_dir, t, ref.patch_id)
        for ref in catalog.filter(split=split).refs
        for t in task.tasks
    ]
    missing = [p for p in written if not p.is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} class maps were not written, e.g. {missing[0]}")
    return written


def _map_path(out_dir: Path, task: Task, patch_id: str) -> Path:
    return out_dir / task.value / f"PRED_{patch_id}.tif"


class _MapWriter(BasePredictionWriter):
    """Writes the class maps of each predicted batch, in the process that predicted it."""

    def __init__(self, out_dir: Path, lpis_level: int, probabilities: bool) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.lpis_level = lpis_level
        self.probabilities = probabilities

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for t, probs in prediction["probs"].items():
            classes = class_table(t, self.lpis_level)
            for i, patch_id in enumerate(prediction["patch_ids"]):
                write_class_map(
                    _map_path(self.out_dir, t, patch_id),
                    probs[i].argmax(0).numpy().astype("uint8"),
                    prediction["bounds"][i],
                    prediction["crs"][i],
                    classes,
                    probs[i].numpy() if self.probabilities else None,
                )

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("flairkit_maps")  # with ddp, every process checks all maps next
