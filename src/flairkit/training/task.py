"""SegmentationTask: the LightningModule that trains, validates, tests and predicts.

Holds the model, the loss and one confusion matrix per task and stage. Validation mIoU is the
benchmark's (ignored classes dropped), not the reference's support-weighted Jaccard. RNG states
travel in the checkpoint so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from flairkit.config import LossConfig, ModelConfig, OptimConfig, PreprocessConfig, to_dict
from flairkit.io.patches import department_of
from flairkit.memory import reuse_freed_memory
from flairkit.metrics import ConfusionMatrix, scores
from flairkit.modalities import Task
from flairkit.models.build import build_model
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.sample import Batch
from flairkit.training.losses import MultiTaskLoss
from flairkit.training.schedules import PlateauAfterWarmup, WarmupThenHold


class NonFiniteLossError(ValueError):
    """The training loss is NaN or infinite: the run stops before the weights take that step."""


def ignored_classes(loss: LossConfig, task: Task) -> tuple[int, ...]:
    """Classes with weight 0 for a task: left out of the loss and of the scores."""
    return tuple(sorted(int(c) for c, w in loss.class_weights.get(task, {}).items() if w == 0))


class SegmentationTask(L.LightningModule):
    """Train and evaluate a MultiModalSegmenter.

    Args:
        model_config: the network.
        preprocess: the data preparation the model expects (saved with it).
        loss: loss weights.
        optim: optimiser and schedule.
        network: an already built network of ``model_config`` (e.g. from
            ``checkpoint.load_model``), wrapped as is; None builds a new one. See
            ``from_network``.

    Raises:
        ValueError: ``network`` was built from another config.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        preprocess: PreprocessConfig,
        loss: LossConfig = LossConfig(),
        optim: OptimConfig = OptimConfig(),
        network: MultiModalSegmenter | None = None,
    ) -> None:
        super().__init__()
        self.model_config = model_config
        self.preprocess_config = preprocess
        self.loss_config = loss
        self.optim_config = optim
        if network is not None and network.config != model_config:
            raise ValueError("SegmentationTask: the network was built from another ModelConfig")
        self.model = network if network is not None else build_model(model_config)
        self.criterion = MultiTaskLoss(
            model_config.tasks, loss.class_weights, loss.task_weights, loss.aux_weight
        )
        self.tasks = list(model_config.tasks)
        # Validation loss summed over the samples of the epoch, and their count (for plateau).
        self._val_loss = torch.zeros(2, dtype=torch.float64)
        self._plateau: PlateauAfterWarmup | None = None
        self._plateau_state: dict[str, Any] | None = None  # from a checkpoint, until built
        # Registered as modules so they follow the model to its device.
        self.matrices = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {t.name: ConfusionMatrix(model_config.tasks[t]) for t in self.tasks}
                )
                for stage in ("val", "test")
            }
        )
        self.save_hyperparameters(
            {
                "model": to_dict(model_config),
                "preprocess": to_dict(preprocess),
                "loss": to_dict(loss),
                "optim": to_dict(optim),
            }
        )

    @classmethod
    def from_network(
        cls,
        network: MultiModalSegmenter,
        preprocess: PreprocessConfig,
        loss: LossConfig = LossConfig(),
        optim: OptimConfig = OptimConfig(),
    ) -> SegmentationTask:
        """A task around a network already built and loaded (``checkpoint.load_model``).

        The network is wrapped, not copied or rebuilt: test and predict run the very module
        the model file was loaded into.
        """
        return cls(network.config, preprocess, loss, optim, network=network)

    @property
    def _aux_applied(self) -> bool:
        """Whether the auxiliary heads' losses count (``loss.aux_weight`` > 0): else they are
        not run, and the heads keep their weights (published files carry them)."""
        return self.criterion.aux_weight > 0

    # -- steps ------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[Task, Tensor]:
        """Logits per task."""
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One optimisation step's loss."""
        out = self.model.forward_all(batch, aux=self._aux_applied)
        loss, parts = self.criterion(out.logits, batch.labels, out.aux)
        self._stop_if_not_finite(loss, batch, batch_idx)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch))
        for name, value in parts.items():
            self.log(f"train_{name}", value, batch_size=len(batch))
        return loss

    def _stop_if_not_finite(self, loss: Tensor, batch: Batch, batch_idx: int) -> None:
        """Raise NonFiniteLossError, naming the batch's patches, when the loss is NaN or inf.

        Raised before the backward pass, so the weights never take a non-finite step and the
        last checkpoint (of the last complete epoch) stays a good resume point. With several
        processes all of them stop together (one alone would leave the others waiting).
        """
        bad = not bool(torch.isfinite(loss.detach()))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            bad_anywhere = trainer.strategy.reduce_boolean_decision(bad, all=False)
        else:
            bad_anywhere = bad
        if not bad_anywhere:
            return
        epoch = trainer.current_epoch if trainer is not None else "?"
        if bad:
            where = f"in the batch of patches {', '.join(batch.patch_ids)}"
            value = f"{float(loss.detach()):g}"
        else:
            where, value = "in another process's batch", "not finite"
        raise NonFiniteLossError(
            f"training loss is {value} at epoch {epoch}, batch {batch_idx}, {where}: look for "
            "NaN or infinite values in those patches' files, or lower optim.lr; training "
            "stopped before the weights took this step"
        )

    def _evaluate(self, batch: Batch, stage: str) -> Tensor:
        out = self.model.forward_all(batch, aux=self._aux_applied)
        loss, _ = self.criterion(out.logits, batch.labels, out.aux)
        groups = [department_of(pid) for pid in batch.patch_ids]
        for task in self.tasks:
            pred = out.logits[task].argmax(dim=1)
            self._matrix(stage, task).update(batch.labels[task], pred, groups)
        self.log(
            f"{stage}_loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=len(batch)
        )
        if stage == "val" and self._plateau is not None:
            self._val_loss += torch.tensor(
                [float(loss) * len(batch), len(batch)], dtype=torch.float64
            )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Loss and confusion matrices on a validation batch."""
        return self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Loss and confusion matrices on a test batch."""
        return self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Probabilities per task with the batch's ids and footprints."""
        logits = self.model(batch)
        return {
            "probs": {t: torch.softmax(x.float(), dim=1).cpu() for t, x in logits.items()},
            "patch_ids": batch.patch_ids,
            "bounds": batch.bounds,
            "crs": batch.crs,
        }

    def _matrix(self, stage: str, task: Task) -> ConfusionMatrix:
        """The confusion matrix of a stage (``val`` or ``test``) and task."""
        # nn.ModuleDict types its items as Module: __init__ fills them with ConfusionMatrix
        stage_matrices = cast(nn.ModuleDict, self.matrices[stage])
        return cast(ConfusionMatrix, stage_matrices[task.name])

    # -- epoch ends: exact scores over the whole set --------------------------------------------
    def _epoch_scores(self, stage: str) -> dict[Task, dict]:
        results = {}
        mious = []
        for task in self.tasks:
            matrix = self._matrix(stage, task)
            matrix.sync()
            result = scores(matrix.compute(), ignored=ignored_classes(self.loss_config, task))
            results[task] = result
            mious.append(result["miou"])
            self.log(f"{stage}_miou_{task.name}", result["miou"], sync_dist=False)
            self.log(f"{stage}_oa_{task.name}", result["oa"], sync_dist=False)
        self.log(f"{stage}_miou", float(np.mean(mious)), prog_bar=True, sync_dist=False)
        return results

    def on_validation_epoch_start(self) -> None:
        for task in self.tasks:
            self._matrix("val", task).reset()
        # A new tensor in each process: one made in __init__ would be shared by the processes
        # that ddp_spawn starts (torch.multiprocessing moves CPU tensors to shared memory).
        self._val_loss = torch.zeros(2, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        self.last_val_scores = self._epoch_scores("val")
        self._step_plateau()

    def _step_plateau(self) -> None:
        """Step the plateau scheduler on the epoch's validation loss (mean over all samples).

        Stepped here, as the reference does, and not by Lightning: Lightning steps epoch
        schedulers after the checkpoint of the epoch is written and skips that step when it
        resumes, so a resumed run would lag one epoch behind. Here the checkpoint written at
        the end of validation holds the plateau's state after this epoch.
        """
        if self._plateau is None or self.trainer.sanity_checking:
            return
        if self.trainer.state.fn != "fit":
            return
        total, count = self.trainer.strategy.reduce(  # in place: on a copy
            self._val_loss.to(self.device, copy=True), reduce_op="sum"
        ).tolist()
        if count > 0:
            self._plateau.step(total / count)

    def on_test_epoch_start(self) -> None:
        for task in self.tasks:
            self._matrix("test", task).reset()

    def on_test_epoch_end(self) -> None:
        self.last_test_scores = self._epoch_scores("test")
        self.last_test_matrices = {
            t: (
                self._matrix("test", t).compute().cpu(),
                self._matrix("test", t).compute_groups(),
            )
            for t in self.tasks
        }

    def setup(self, stage: str) -> None:
        """Allocator settings for the training process (see ``flairkit.memory``)."""
        reuse_freed_memory()

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW (or Adam/SGD) and the benchmark's schedules."""
        cfg = self.optim_config
        params = [p for p in self.parameters() if p.requires_grad]
        # Not fused=True: on CPU it changed the outcome of the fusion comparison
        # (tests/training/test_fusion_gain.py: the S2 branch never took over in 432 steps) for a
        # ~1 % faster step.
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9
            )
        if cfg.scheduler == "none":
            return optimizer
        # The reference's ReduceLROnPlateau: halve the lr after `plateau_patience` epochs
        # without a lower validation loss, then wait 4 epochs.
        # It is stepped by _step_plateau and saved by on_save_checkpoint, not by Lightning.
        plateau = dict(factor=0.5, patience=cfg.plateau_patience, cooldown=4, min_lr=1e-7)
        if cfg.scheduler == "plateau":
            self._plateau = self._restored(PlateauAfterWarmup(optimizer, None, **plateau))
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg.scheduler == "cycle_then_plateau":
            warmup = WarmupThenHold(optimizer, int(cfg.warmup_fraction * total), cfg.div_factor)
            self._plateau = self._restored(PlateauAfterWarmup(optimizer, warmup, **plateau))
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": warmup, "interval": "step"},
            }
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=total,
            pct_start=cfg.warmup_fraction,
            div_factor=cfg.div_factor,
            cycle_momentum=False,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": one_cycle, "interval": "step"},
        }

    def _restored(self, plateau: PlateauAfterWarmup) -> PlateauAfterWarmup:
        if self._plateau_state is not None:  # resuming: on_load_checkpoint came first
            plateau.load_state_dict(self._plateau_state)
            self._plateau_state = None
        return plateau

    # -- exact resume ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the RNG states: a resumed run then draws what the uninterrupted run would."""
        # legacy=True (the default): the tuple form, not the dict numpy's stubs also allow
        state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
        kind, keys, pos, has_gauss, cached = state
        # Plain types and tensors only: checkpoints load with torch.load(weights_only=True).
        checkpoint["flairkit_rng"] = {
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        if self._plateau is not None:
            checkpoint["flairkit_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the RNG states and plateau state saved by ``on_save_checkpoint``."""
        self._plateau_state = checkpoint.get("flairkit_plateau")
        state = checkpoint.get("flairkit_rng")
        if not state:
            return
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
