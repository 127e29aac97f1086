"""fit / validate / test / predict: a RunConfig in, checkpoints, reports and GeoTIFFs out."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L

from flairkit.checkpoint import load_model, save_model
from flairkit.config import RunConfig, save_run_config
from flairkit.data.datamodule import FlairDataModule
from flairkit.io.catalog import Catalog
from flairkit.io.writers import write_class_map
from flairkit.metrics import scores
from flairkit.modalities import Task, class_table
from flairkit.models.presets import get_preset
from flairkit.reports import write_report
from flairkit.training.task import SegmentationTask, ignored_classes
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
    """

    best_checkpoint: Path
    last_checkpoint: Path
    model_path: Path
    val_scores: dict[str, Any]


def make_catalog(cfg: RunConfig) -> Catalog:
    """The catalog of the run: root, split method, department filter, per-split cap."""
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
    cfg: RunConfig, catalog: Catalog | None = None, preprocess=None
) -> FlairDataModule:
    """The DataModule of a run."""
    return FlairDataModule(
        catalog or make_catalog(cfg),
        preprocess or cfg.preprocess,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        augment=FlipRotate() if cfg.data.augment else None,
    )


def sizes_from_data(datamodule: FlairDataModule, split: str = "train") -> tuple[dict, int]:
    """Patch side in pixels of each input, and of the label grid, read from one sample."""
    datamodule.setup()
    dataset = datamodule.datasets[split]
    if len(dataset) == 0:
        raise ValueError(f"the {split} split holds no patch")
    sample = dataset._load(0)
    img_sizes = {m: int(x.shape[-1]) for m, x in sample.inputs.items()}
    label = next(iter(sample.labels.values()), None)
    out_px = int(label.shape[-1]) if label is not None else max(img_sizes.values())
    return img_sizes, out_px


def _trainer(cfg: RunConfig, stage: str, resuming: bool = False) -> L.Trainer:
    out = cfg.train.output_dir
    callbacks: list[L.Callback] = []
    loggers: list[Any] = []
    if stage == "fit":
        from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

        callbacks.append(
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="best-{epoch:03d}",
                monitor="val_miou",
                mode="max",
                save_top_k=1,
                save_last=True,
            )
        )
        if cfg.train.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(
                    monitor="val_miou", mode="max", patience=cfg.train.early_stopping_patience
                )
            )
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        loggers = [
            CSVLogger(out, name="logs", version=""),
            TensorBoardLogger(out, name="tensorboard", version=""),
        ]
    return L.Trainer(
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
        deterministic="warn",
        # A sanity pass before a resumed epoch would draw from the restored RNG and change
        # the data order: skip it when resuming.
        num_sanity_val_steps=0 if resuming else 2,
    )


def fit(cfg: RunConfig, resume: bool | str = "auto") -> FitResult:
    """Train, keeping the best (val mIoU) and last checkpoints; export the best model.

    Args:
        cfg: the run.
        resume: ``auto`` continues from ``checkpoints/last.ckpt`` when present; True requires
            it; False starts over.
    """
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    last = out / "checkpoints" / "last.ckpt"
    if resume is True and not last.is_file():
        raise FileNotFoundError(f"{last}: nothing to resume")
    resuming = bool(resume) and last.is_file()
    if resuming:
        _check_resumable(cfg, out / "config.yaml")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    datamodule = make_datamodule(cfg)
    img_sizes, out_px = sizes_from_data(datamodule)
    model_cfg = replace(
        cfg.model, img_sizes={m: img_sizes[m] for m in cfg.model.inputs}, out_px=out_px
    )
    cfg = replace(cfg, model=model_cfg)
    save_run_config(cfg, out / "config.yaml")
    task = SegmentationTask(cfg.model, cfg.preprocess, cfg.loss, cfg.optim)
    trainer = _trainer(cfg, "fit", resuming)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resuming else None)
    checkpoint_cb = trainer.checkpoint_callback
    best = Path(checkpoint_cb.best_model_path) if checkpoint_cb.best_model_path else last
    best_model = load_model(best)[0] if best.is_file() else task.model
    model_path = save_model(
        out / "model.safetensors",
        best_model,
        cfg.model,
        cfg.preprocess,
        extra={
            "preset": cfg.preset,
            "loss": {t.value: list(ignored_classes(cfg.loss, t)) for t in cfg.model.tasks},
        },
    )
    val = {t.value: s for t, s in getattr(task, "last_val_scores", {}).items()}
    (out / "val_scores.json").write_text(json.dumps(val, indent=2))
    return FitResult(best, last, model_path, val)


def _check_resumable(cfg: RunConfig, previous_path: Path) -> None:
    """A one-cycle schedule is fixed by the step count: resuming with other epochs cannot work."""
    if not previous_path.is_file() or cfg.optim.scheduler not in (
        "one_cycle",
        "cycle_then_plateau",
    ):
        return
    import yaml

    previous = yaml.safe_load(previous_path.read_text()) or {}
    before = (previous.get("train") or {}).get("max_epochs")
    if before is not None and before != cfg.train.max_epochs:
        raise ValueError(
            f"{previous_path.parent}: the run was started with train.max_epochs={before}; its "
            f"one-cycle schedule cannot be resumed with {cfg.train.max_epochs}. Keep {before}, "
            "or start over with --no-resume (or another train.output_dir)"
        )


def _weights_for(cfg: RunConfig, weights: str | Path | None) -> Path:
    path = Path(weights) if weights else Path(cfg.train.output_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model (run flairkit fit, or give --weights)")
    return path


def evaluate(
    cfg: RunConfig, weights: str | Path | None = None, split: str = "test"
) -> dict[str, Any]:
    """Score a trained model on a split; write JSON, Markdown and PNG reports per task.

    Returns:
        Per task: scores, per-department scores, report paths, and the published scores of the
        preset if the run has one.
    """
    model, preprocess = load_model(_weights_for(cfg, weights))
    task = SegmentationTask(model.config, preprocess, cfg.loss, cfg.optim)
    task.model.load_state_dict(model.state_dict())
    datamodule = make_datamodule(cfg, preprocess=preprocess)
    datamodule.setup()
    trainer = _trainer(cfg, "test")
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[split]()
    trainer.test(task, dataloaders=loader, verbose=False)
    published = None
    if cfg.preset:
        preset = get_preset(cfg.preset)
        published = {"model_id": preset.model_id, "oa": preset.card_oa, "miou": preset.card_miou}
    results: dict[str, Any] = {}
    out_dir = Path(cfg.train.output_dir) / f"report_{split}"
    for t, (matrix, groups) in task.last_test_matrices.items():
        ignored = ignored_classes(cfg.loss, t)
        names = [c.name for c in class_table(t, preprocess.lpis_level)]
        paths = write_report(
            out_dir,
            t,
            matrix,
            groups,
            ignored,
            published,
            title=f"{cfg.preset or 'flairkit'} {split}",
            level=preprocess.lpis_level if t is Task.LPIS else 1,
        )
        results[t.value] = {
            "scores": scores(matrix, ignored, names),
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
) -> list[Path]:
    """Write one georeferenced class map per patch and task (and optional probabilities)."""
    model, preprocess = load_model(_weights_for(cfg, weights))
    catalog = make_catalog(cfg)
    datamodule = FlairDataModule(
        catalog, preprocess, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
        augment=None, predict_split=split,
    )  # fmt: skip
    task = SegmentationTask(model.config, preprocess, cfg.loss, cfg.optim)
    task.model.load_state_dict(model.state_dict())
    trainer = _trainer(cfg, "predict")
    outputs = trainer.predict(task, datamodule=datamodule)
    out_dir = Path(out_dir or Path(cfg.train.output_dir) / f"predictions_{split}")
    written = []
    for batch_out in outputs or []:
        for t, probs in batch_out["probs"].items():
            classes = class_table(t, preprocess.lpis_level)
            for i, patch_id in enumerate(batch_out["patch_ids"]):
                path = out_dir / t.value / f"PRED_{patch_id}.tif"
                written.append(
                    write_class_map(
                        path,
                        probs[i].argmax(0).numpy().astype("uint8"),
                        batch_out["bounds"][i],
                        batch_out["crs"][i],
                        classes,
                        probs[i].numpy() if probabilities else None,
                    )
                )
    return written
