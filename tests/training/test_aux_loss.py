"""The auxiliary heads' loss is off by default: the heads exist but are neither run nor trained.

``bench/train_parity.py`` measured flairkit's one deliberate difference from the reference that
trained worse: applying the auxiliary loss (weight 1.5) on LC-D-r18 (aerial + Sentinel-2 fusion).
Over 3 seeds the test mIoU was 53.4 with it and 59.5 without it; the official code scores 57.4,
and its auxiliary loss is always 0 (it looks the logits up under the wrong key). The shipped
configs and ``LossConfig`` therefore default to ``aux_weight: 0``. The published models keep
their auxiliary heads, so these stay in the network. A weight above 0 trains them again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flairkit.config import LossConfig, ModelConfig, PreprocessConfig, load_run_config
from flairkit.modalities import Modality, Task
from flairkit.models.presets import PRESETS, get_preset
from flairkit.sample import Batch
from flairkit.training.losses import weighted_cross_entropy
from flairkit.training.run import _some_parameters_get_no_gradient
from flairkit.training.task import SegmentationTask

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
AERIAL, S2 = Modality.AERIAL_RGBI, Modality.SENTINEL2_TS
FUSION = [m for m in sorted(PRESETS) if len(get_preset(m).inputs) > 1]


def _fusion_task(aux_weight: float | None) -> SegmentationTask:
    """A small aerial + S2 model with one auxiliary head per input, as the fusion presets."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        inputs={AERIAL: 3, S2: 10},
        img_sizes={AERIAL: 32, S2: 2},
        tasks={Task.COSIA: 19},
        arch="resnet18-unet",
        aux_heads=(AERIAL, S2),
        out_px=32,
    )
    loss = LossConfig() if aux_weight is None else LossConfig(aux_weight=aux_weight)
    return SegmentationTask(cfg, PreprocessConfig(inputs=dict(cfg.inputs)), loss)


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        inputs={AERIAL: torch.randn(2, 3, 32, 32, generator=g),
                S2: torch.randn(2, 4, 10, 2, 2, generator=g)},
        dates={S2: torch.tensor([[10.0, 60, 120, 200]]).repeat(2, 1)},
        pad_masks={S2: torch.zeros(2, 4, dtype=torch.bool)},
        labels={Task.COSIA: torch.randint(0, 15, (2, 32, 32), generator=g, dtype=torch.uint8)},
        patch_ids=["D006-2020_AA-S1-01_1-1", "D006-2020_AA-S1-01_1-2"],
        bounds=[None, None],
        crs=[None, None],
    )  # fmt: skip


def _step(task: SegmentationTask) -> tuple[float, float, int]:
    """One training step's loss, its main cross-entropy, and how often an aux head ran."""
    calls = []
    for head in task.model.aux_heads.values():
        head.register_forward_hook(lambda *_: calls.append(1))
    task.train()
    batch = _batch()
    torch.manual_seed(2)  # the same dropout draws in both forwards
    loss = task.training_step(batch, 0)
    loss.backward()
    with torch.no_grad():
        torch.manual_seed(2)
        logits = task.model(batch)[Task.COSIA]
        main = weighted_cross_entropy(
            logits, batch.labels[Task.COSIA], task.criterion.class_weights(Task.COSIA)
        )
    return float(loss.detach()), float(main), len(calls)


def test_shipped_configs_and_the_loss_config_leave_the_aux_loss_off() -> None:
    assert LossConfig().aux_weight == 0.0
    assert FUSION  # the presets with an auxiliary head per input
    for model_id in FUSION:
        cfg = load_run_config(CONFIGS / f"{model_id}.yaml")
        assert cfg.loss.aux_weight == 0.0, model_id
        # The heads stay: the published weights carry them.
        assert set(cfg.model.aux_heads) == set(cfg.model.inputs), model_id


pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def test_by_default_aux_heads_are_not_run_and_get_no_gradient() -> None:
    task = _fusion_task(None)
    before = {k: p.detach().clone() for k, p in task.model.aux_heads.named_parameters()}
    loss, main, calls = _step(task)
    assert calls == 0
    assert loss == pytest.approx(main, rel=1e-5)  # the main cross-entropy alone
    assert all(p.grad is None for p in task.model.aux_heads.parameters())
    main_head = [p for p in task.model.heads.parameters()]
    assert main_head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in main_head)
    # An optimiser step (AdamW with weight decay, as fit's) leaves the heads as they were.
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-2, weight_decay=0.01)
    optimizer.step()
    after = dict(task.model.aux_heads.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_positive_aux_weight_runs_and_trains_the_heads() -> None:
    task = _fusion_task(1.5)
    loss, main, calls = _step(task)
    assert calls == 2  # one head per input
    assert loss > main + 0.5  # + 1.5 x the mean of two cross-entropies of ~log(19)
    grads = [p.grad for p in task.model.aux_heads.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("config", "overrides", "unused"),
    [
        ("LC-D", [], True),  # aux heads off, and the U-TAE's classifier feeds only its head
        ("LC-D", ["loss.aux_weight=1.5"], False),
        ("LC-D", ["loss.aux_weight=1.5", "model.aux_heads=[AERIAL_RGBI]"], True),
        ("LC-D", ["model.aux=false"], True),  # the fused U-TAE's classifier
        ("LC-A", [], False),
        ("LPIS-F", [], False),  # S2 alone: its classifier is the output
        ("LC-A", ["train.freeze_encoders_epochs=2"], True),
    ],
)
def test_ddp_is_told_about_parameters_without_gradient(
    config: str, overrides: list[str], unused: bool
) -> None:
    cfg = load_run_config(CONFIGS / f"{config}.yaml", overrides)
    assert _some_parameters_get_no_gradient(cfg) is unused


def test_forward_all_runs_the_aux_heads_only_when_asked() -> None:
    task = _fusion_task(None)
    out = task.model.forward_all(_batch())
    assert set(out.aux) == {(AERIAL, Task.COSIA), (S2, Task.COSIA)}
    assert task.model.forward_all(_batch(), aux=False).aux == {}
