"""Which checkpoint is kept: the benchmark's validation mIoU, not a background-led average.

``bench/train_parity.py`` found the learning-parity gap on LPIS-F in the checkpoint criterion,
not in the learning: the official code keeps the epoch with the best support-weighted Jaccard
over all 23 LPIS classes, where the background class 22 (about half the pixels, weight 0 in the
loss) dominates. An early model that paints everything background wins by that criterion, and
in one seed of three the official run kept its epoch-0 model, which predicts no scored class
(test mIoU 0). flairkit keeps the epoch with the best benchmark mIoU (classes of weight 0 left
out). These tests pin both halves: the score the checkpoint callback monitors, computed by the
real validation loop, and that ``fit`` keeps the best such epoch.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import MulticlassJaccardIndex

from flairkit.config import ModelConfig, PreprocessConfig, UTAEConfig, load_run_config
from flairkit.modalities import Modality, Task
from flairkit.models.segmenter import SegmenterOutput
from flairkit.sample import Batch
from flairkit.training.run import _trainer
from flairkit.training.task import SegmentationTask

S2 = Modality.SENTINEL2_TS
LPIS = Task.LPIS
PX = 8
BACKGROUND, WHEAT, MAIZE = 22, 1, 3


def _labels() -> torch.Tensor:
    """Two patches: background on the left three quarters (as on farmland, LPIS is mostly
    background), on the right wheat (top) and maize (bottom): 48, 8 and 8 pixels each."""
    y = torch.full((2, PX, PX), BACKGROUND, dtype=torch.uint8)
    y[:, : PX // 2, 6:] = WHEAT
    y[:, PX // 2 :, 6:] = MAIZE
    return y


def _batch() -> Batch:
    return Batch(
        inputs={S2: torch.zeros(2, 3, 10, 2, 2)},
        dates={S2: torch.arange(3, dtype=torch.float32).expand(2, 3).contiguous()},
        pad_masks={S2: torch.zeros(2, 3, dtype=torch.bool)},
        labels={LPIS: _labels()},
        patch_ids=["D006-2020_AA-S1-01_1-1", "D006-2020_AA-S1-01_1-2"],
        bounds=[None, None],
        crs=[None, None],
    )


def _epoch_predictions() -> dict[str, torch.Tensor]:
    """What two epochs' models predict on the batch.

    ``early``: everything background (a model of the first steps, before the crops are
    learnt). ``learnt``: every crop pixel right, half the background (columns 3-5) mistaken
    for wheat: better on every scored class and on half the background.
    """
    early = torch.full((2, PX, PX), BACKGROUND)
    learnt = _labels().long()
    learnt[:, :, 3:6] = WHEAT
    return {"early": early, "learnt": learnt}


class _Scripted(torch.nn.Module):
    """Stands in for the network: one-hot logits of fixed predictions."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = pred
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward_all(self, batch: Batch, aux: bool = True) -> SegmenterOutput:
        logits = torch.nn.functional.one_hot(self.pred, 23).permute(0, 3, 1, 2).float()
        return SegmenterOutput(logits={LPIS: logits * 10 + self.dummy})


def _validated_miou(pred: torch.Tensor) -> float:
    """``val_miou`` as the real validation loop logs it (what the checkpoint monitors)."""
    config = ModelConfig(
        inputs={S2: 10},
        img_sizes={S2: 2},
        tasks={LPIS: 23},
        utae=UTAEConfig(encoder_widths=(16, 16, 16, 16), decoder_widths=(16, 16, 16, 16)),
        out_px=PX,
    )
    task = SegmentationTask(config, PreprocessConfig())
    task.model = _Scripted(pred)  # type: ignore[assignment]
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    loader = torch.utils.data.DataLoader([_batch()], batch_size=None)
    trainer.validate(task, dataloaders=loader, verbose=False)
    return float(trainer.callback_metrics["val_miou"])


def test_val_miou_prefers_learnt_crops_where_the_weighted_jaccard_prefers_background() -> None:
    preds = _epoch_predictions()
    target = _labels().long()
    # The official criterion (torchmetrics' support-weighted Jaccard over all 23 classes)
    reference = MulticlassJaccardIndex(num_classes=23, average="weighted")
    ref = {k: float(reference(p, target)) for k, p in preds.items()}
    # early: background IoU 3/4 with weight 3/4, the crops 0
    assert ref["early"] == pytest.approx(0.75 * 0.75)
    # learnt: background 24/48 (weight 3/4), wheat 8/32 and maize 1 (weights 1/8)
    assert ref["learnt"] == pytest.approx(0.75 * 0.5 + 0.125 * 0.25 + 0.125 * 1)
    assert ref["early"] > ref["learnt"]  # it would keep the background-only model

    ours = {k: _validated_miou(p) for k, p in preds.items()}
    assert ours["early"] == 0.0  # background is not scored: no scored class is right
    # The benchmark drops the rows and columns of 21 and 22, so the background mistaken for
    # wheat does not count: wheat and maize IoU 1, the 19 other scored classes absent (0).
    assert ours["learnt"] == pytest.approx(100 * 2 / 21, abs=1e-4)


def test_fit_keeps_the_epoch_with_the_best_validation_miou(tmp_path: Path) -> None:
    cfg = load_run_config(
        Path(__file__).parents[2] / "configs" / "LPIS-F.yaml",
        ["data.root=/nowhere", f"train.output_dir={tmp_path}"],
    )
    trainer = _trainer(cfg, "fit")
    best = [
        c
        for c in trainer.callbacks  # type: ignore[attr-defined]
        if isinstance(c, ModelCheckpoint) and c.monitor is not None
    ]
    assert [(c.monitor, c.mode, c.save_top_k) for c in best] == [("val_miou", "max", 1)]
