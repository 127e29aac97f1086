"""MultiModalSegmenter: every preset's wiring, odd subsets, aux heads, modality dropout, goldens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from golden import assert_matches_golden, golden_inputs, golden_state_dict

from flairkit.config import ModelConfig
from flairkit.modalities import Modality, Task
from flairkit.models.build import build_model
from flairkit.models.official import WeightsError, load_published_weights
from flairkit.models.presets import PRESETS, get_preset, preset_config
from flairkit.sample import Batch

SMALL_SIZES = {
    Modality.AERIAL_RGBI: 64,
    Modality.DEM_ELEV: 64,
    Modality.AERIAL_PAN: 32,
    Modality.SPOT_RGBI: 32,
    Modality.SENTINEL2_TS: 4,
    Modality.SENTINEL1_ASC_TS: 4,
    Modality.SENTINEL1_DESC_TS: 4,
}


def small_config(inputs, tasks=None, aux=(), arch="resnet18-upernet", **kw) -> ModelConfig:
    channels = {Modality.AERIAL_RGBI: 3, Modality.DEM_ELEV: 2, Modality.AERIAL_PAN: 1,
                Modality.SPOT_RGBI: 3, Modality.SENTINEL2_TS: 10,
                Modality.SENTINEL1_ASC_TS: 2, Modality.SENTINEL1_DESC_TS: 2}  # fmt: skip
    return ModelConfig(
        inputs={m: channels[m] for m in inputs},
        img_sizes={m: SMALL_SIZES[m] for m in inputs},
        tasks=tasks or {Task.COSIA: 19},
        arch=arch,
        aux_heads=tuple(aux),
        **kw,
    )


def random_batch(cfg: ModelConfig, batch_size: int = 2, lengths=(5, 3)) -> Batch:
    g = torch.Generator().manual_seed(0)
    inputs, dates, masks = {}, {}, {}
    for m, c in cfg.inputs.items():
        px = cfg.img_sizes[m]
        if m.spec.is_time_series:
            t = max(lengths)
            inputs[m] = torch.randn(batch_size, t, c, px, px, generator=g)
            dates[m] = torch.arange(t, dtype=torch.float32).repeat(batch_size, 1) * 20 - 100
            masks[m] = torch.arange(t).repeat(batch_size, 1) >= torch.tensor(
                lengths[:batch_size]
            ).view(-1, 1)
        else:
            inputs[m] = torch.randn(batch_size, c, px, px, generator=g)
    ids = [str(i) for i in range(batch_size)]
    return Batch(inputs, dates, masks, {}, ids, [None] * batch_size, [None] * batch_size)


@pytest.mark.parametrize("model_id", list(PRESETS))
def test_every_preset_wiring_gives_logits_per_task(model_id: str) -> None:
    preset = get_preset(model_id)
    cfg = small_config(
        preset.inputs,
        {preset.task: 19 if preset.task is Task.COSIA else 23},
        aux=preset.inputs if len(preset.inputs) > 1 else (),
    )
    model = build_model(cfg, out_px=64)
    out = model.forward_all(random_batch(cfg))
    assert set(out.logits) == {preset.task}
    assert out.logits[preset.task].shape == (2, cfg.tasks[preset.task], 64, 64)
    expected_aux = {(m, preset.task) for m in cfg.aux_heads}
    assert set(out.aux) == expected_aux
    for logits in out.aux.values():
        assert logits.shape == (2, cfg.tasks[preset.task], 64, 64)


@pytest.mark.parametrize(
    "inputs",
    [
        (Modality.AERIAL_PAN, Modality.SENTINEL1_DESC_TS),
        (Modality.DEM_ELEV, Modality.SPOT_RGBI),
        (Modality.SENTINEL1_ASC_TS,),
        (Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS),
        (Modality.SPOT_RGBI, Modality.AERIAL_RGBI),  # order given does not matter
    ],
)
def test_odd_subsets_with_both_tasks(inputs) -> None:
    cfg = small_config(inputs, {Task.COSIA: 19, Task.LPIS: 23})
    model = build_model(cfg, out_px=48)
    logits = model(random_batch(cfg))
    assert logits[Task.COSIA].shape == (2, 19, 48, 48)
    assert logits[Task.LPIS].shape == (2, 23, 48, 48)
    loss = logits[Task.COSIA].mean() + logits[Task.LPIS].mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


def test_time_series_padding_does_not_change_the_prediction() -> None:
    cfg = small_config((Modality.AERIAL_RGBI, Modality.SENTINEL2_TS))
    model = build_model(cfg, out_px=32).eval()
    batch = random_batch(cfg, batch_size=1, lengths=(3,))
    padded = random_batch(cfg, batch_size=1, lengths=(3,))
    s2 = Modality.SENTINEL2_TS
    extra = torch.randn(1, 4, *batch.inputs[s2].shape[2:])  # 4 padded dates of garbage
    padded.inputs[s2] = torch.cat([batch.inputs[s2][:, :3], extra], dim=1)
    padded.dates[s2] = torch.cat([batch.dates[s2][:, :3], torch.full((1, 4), 999.0)], dim=1)
    padded.pad_masks[s2] = torch.tensor([[False] * 3 + [True] * 4])
    short = random_batch(cfg, batch_size=1, lengths=(3,))
    short.inputs[s2], short.dates[s2] = batch.inputs[s2][:, :3], batch.dates[s2][:, :3]
    short.pad_masks[s2] = torch.zeros(1, 3, dtype=torch.bool)
    with torch.no_grad():
        a, b = model(short)[Task.COSIA], model(padded)[Task.COSIA]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_modality_dropout_only_in_training_and_keeps_one_modality() -> None:
    cfg = small_config((Modality.AERIAL_RGBI, Modality.DEM_ELEV), modality_dropout=0.9)
    model = build_model(cfg, out_px=32)
    batch = random_batch(cfg, batch_size=8)
    feats = {m: model.encoders[m.value](batch.inputs[m]) for m in cfg.inputs}
    torch.manual_seed(0)
    dropped = model._drop_modalities(feats)
    zeroed = torch.stack(
        [
            torch.stack([f[i].abs().sum() == 0 for f in (dropped[m][0] for m in cfg.inputs)])
            for i in range(8)
        ]
    )
    assert zeroed.any()  # p = 0.9 drops something
    assert not zeroed.all(dim=1).any()  # never every modality of a sample
    model.eval()
    with torch.no_grad():
        a, b = model(batch)[Task.COSIA], model(batch)[Task.COSIA]
    torch.testing.assert_close(a, b)  # no dropout in eval


def test_aux_heads_see_one_modality_only() -> None:
    cfg = small_config(
        (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS),
        aux=(Modality.AERIAL_RGBI, Modality.SENTINEL2_TS),
    )
    model = build_model(cfg, out_px=32).eval()
    batch = random_batch(cfg)
    with torch.no_grad():
        out = model.forward_all(batch)
        batch.inputs[Modality.SENTINEL2_TS] = torch.randn_like(batch.inputs[Modality.SENTINEL2_TS])
        changed = model.forward_all(batch)
    aerial, s2 = (Modality.AERIAL_RGBI, Task.COSIA), (Modality.SENTINEL2_TS, Task.COSIA)
    torch.testing.assert_close(out.aux[aerial], changed.aux[aerial])  # aerial head ignores S2
    assert not torch.allclose(out.aux[s2], changed.aux[s2])
    assert not torch.allclose(out.logits[Task.COSIA], changed.logits[Task.COSIA])


def test_batch_of_one_trains() -> None:
    cfg = small_config((Modality.AERIAL_RGBI,))
    model = build_model(cfg, out_px=64).train()
    model(random_batch(cfg, batch_size=1))[Task.COSIA].mean().backward()


# --- the official function, through the published-weights path --------------------------------


def _save_published(model_id: str, path: Path) -> Path:
    """Golden weights written as a Lightning checkpoint would be: 'model.' prefix + criterion."""
    state = {f"model.{k}": v for k, v in golden_state_dict(model_id).items()}
    task = get_preset(model_id).task
    state[f"criterion.{task.value}.weight"] = torch.ones(19 if task is Task.COSIA else 23)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3}, path)
    return path


def _golden_logits(model_id: str, path: Path) -> torch.Tensor:
    preset = get_preset(model_id)
    model = build_model(preset_config(model_id)).eval()
    load_published_weights(model, path)
    inputs, dates = golden_inputs([m.value for m in preset.inputs])
    batch = Batch({Modality(k): v for k, v in inputs.items()},
                  {Modality(k): v for k, v in dates.items()}, {}, {}, ["golden"], [None], [None])  # fmt: skip
    with torch.no_grad():
        return model(batch)[preset.task]


@pytest.mark.parametrize(
    ("model_id", "suffix"),
    [("LC-A", ".safetensors"), ("LC-G", ".ckpt"), ("LC-D", ".ckpt"), ("LPIS-I", ".safetensors")],
)
def test_golden_logits_reproduced(model_id: str, suffix: str, tmp_path: Path) -> None:
    path = _save_published(model_id, tmp_path / f"{model_id}{suffix}")
    logits = _golden_logits(model_id, path)
    assert_matches_golden(logits, model_id, get_preset(model_id).task.value)


def test_published_file_with_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    state = golden_state_dict("LC-G")
    state.pop(next(k for k in state if k.endswith("in_conv.conv.conv.0.weight")))
    torch.save(state, tmp_path / "broken.pth")
    model = build_model(preset_config("LC-G"))
    with pytest.raises(WeightsError, match="missing"):
        load_published_weights(model, tmp_path / "broken.pth")


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.ckpt")
    model = build_model(preset_config("LC-G"))
    with pytest.raises(WeightsError, match="cannot read"):
        load_published_weights(model, tmp_path / "evil.ckpt")
