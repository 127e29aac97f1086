"""Fine-tuning from a model reference: ``model.init_from``, ``init_strict``, frozen encoders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import save_file

from flairkit.checkpoint import init_from_reference
from flairkit.cli import main
from flairkit.config import load_run_config, preset_config
from flairkit.modalities import Modality, Task
from flairkit.models.build import build_model
from flairkit.models.official import WeightsError, official_key
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.training.run import fit
from flairkit.training.task import SegmentationTask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
# found through sys.path at run time; skips this module without ../shared
from golden import golden_state_dict  # type: ignore[import-not-found]  # noqa: E402

COSIA = Task.COSIA


@pytest.fixture(scope="module")
def lc_a_file(module_tmp: Path) -> Path:
    """A published LC-A file (Swin-B UPerNet, ~360 MB): ``model.`` keys and a criterion."""
    state = {f"model.{k}": v.contiguous() for k, v in golden_state_dict("LC-A").items()}
    state[f"criterion.{COSIA.value}.weight"] = torch.ones(19)
    path = module_tmp / "FLAIR-HUB_LC-A_IR_swinbase-upernet.safetensors"
    save_file(state, str(path))
    return path


def _official(model: MultiModalSegmenter, key: str) -> str:
    return official_key(model, key, "upernet")


def test_lc_a_into_a_5_class_task_reinitialises_only_the_heads(lc_a_file: Path) -> None:
    torch.manual_seed(0)
    model = build_model(preset_config("LC-A", tasks={COSIA: 5}))
    report = init_from_reference(model, lc_a_file)
    heads = {f"heads.{COSIA.value}.head.weight", f"heads.{COSIA.value}.head.bias"}
    assert {r.split(":")[0] for r in report.reinitialised} == heads
    assert not report.resized and not report.skipped and not report.kept
    own = model.state_dict()
    published = golden_state_dict("LC-A")
    for key, value in published.items():
        target = _official(model, key)
        if target in heads or target not in own:  # (tensors the reference never runs)
            continue
        torch.testing.assert_close(own[target], value, rtol=0, atol=0)
    weight = own[f"heads.{COSIA.value}.head.weight"]
    assert weight.shape == (5, 64, 1, 1) and weight.abs().max() > 0
    limit = (6 / (64 + 5)) ** 0.5  # Xavier-uniform bound for 1x1 convs
    assert weight.abs().max() <= limit and not own[f"heads.{COSIA.value}.head.bias"].any()
    summary = report.summary()
    assert len(report.loaded) + 2 + len(report.ignored) == len(published)
    assert summary.startswith(f"{len(report.loaded)} tensors loaded; 2 re-initialised")
    assert "(19, 64, 1, 1) -> model (5, 64, 1, 1)" in summary


def test_swin_tables_of_another_window_are_resized(lc_a_file: Path) -> None:
    model = build_model(preset_config("LC-A", arch="swin_base_patch4_window7_224-upernet"))
    report = init_from_reference(model, lc_a_file)
    assert len(report.resized) == 24  # one table per Swin block (2 + 2 + 18 + 2)
    assert all("(529, " in r and "-> (169, " in r for r in report.resized)  # 23^2 -> 13^2
    assert not report.reinitialised and not report.skipped
    with torch.no_grad():  # the resized model runs
        x = torch.randn(1, 3, 512, 512)
        assert model.encoders["AERIAL_RGBI"](x)[-1].isfinite().all()


def test_what_does_not_fit_is_an_error_unless_not_strict(lc_a_file: Path, tmp_path: Path) -> None:
    state = {f"model.{k}": v.contiguous() for k, v in golden_state_dict("LC-A").items()}
    key = next(k for k in state if "decoder.fpn_bottleneck" in k and k.endswith("weight"))
    state[key] = state[key][:, :8].contiguous()  # a mid-decoder tensor of another shape
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    model = build_model(preset_config("LC-A"))
    with pytest.raises(WeightsError) as info:
        init_from_reference(model, bad)
    message = str(info.value)
    assert message.startswith(f"model.init_from: {bad}: 1 of wrong shape") and "\n" not in message
    assert "init_strict: false" in message
    report = init_from_reference(model, bad, strict=False)
    assert len(report.skipped) == 1 and len(report.kept) == 1  # skipped, the model's kept


def write_config(path: Path, root: Path, out: Path, **model: Any) -> Path:
    config = {
        "data": {"root": str(root), "batch_size": 2},
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "img_sizes": {"AERIAL_RGBI": 64},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
            **model,
        },
        "train": {"max_epochs": 2, "progress_bar": False, "output_dir": str(out),
                  "limit_train_batches": 2, "limit_val_batches": 1},
        "optim": {"lr": 0.01, "scheduler": "none"},
        # a 5-class task keeps no class out (the COSIA default leaves out 15-18)
        "loss": {"class_weights": {"AERIAL_LABEL-COSIA": {}}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def source_model(synthetic_root: Path, module_tmp: Path) -> Path:
    """A flairkit model file of a small U-Net (19 classes)."""
    config = write_config(module_tmp / "src.yaml", synthetic_root, module_tmp / "src")
    cfg = load_run_config(config, ["train.max_epochs=1", "train.limit_train_batches=1"])
    return fit(cfg).model_path


def test_fit_from_a_flairkit_model_with_frozen_encoders(
    source_model: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flairkit.checkpoint import load_model

    source, _ = load_model(source_model)
    config = write_config(tmp_path / "ft.yaml", synthetic_root, tmp_path / "ft",
                          tasks={"AERIAL_LABEL-COSIA": 5}, init_from=str(source_model))  # fmt: skip
    argv = ["fit", "--config", str(config), "train.freeze_encoders_epochs=1", "train.max_epochs=1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"model.init_from {source_model}: " in err and "2 re-initialised (class count)" in err
    tuned, _ = load_model(tmp_path / "ft" / "model.safetensors")
    src, new = source.state_dict(), tuned.state_dict()
    encoder = [k for k in new if k.startswith("encoders.")]
    assert encoder and all(torch.equal(new[k], src[k]) for k in encoder)  # frozen in epoch 0
    decoder = [
        k for k in new if k.startswith("heads.") and k in src and new[k].shape == src[k].shape
    ]
    assert any(not torch.equal(new[k], src[k]) for k in decoder)  # the decoder learnt
    assert new[f"heads.{COSIA.value}.head.weight"].shape[0] == 5
    # the exported model does not point at the file it started from
    assert tuned.config.init_from is None
    # past the frozen epochs the encoders learn; a resume does not load init_from again
    assert main([*argv[:3], "train.freeze_encoders_epochs=1", "train.max_epochs=2"]) == 0
    assert "model.init_from" not in capsys.readouterr().err
    resumed, _ = load_model(tmp_path / "ft" / "checkpoints" / "last.ckpt")
    later = resumed.state_dict()
    assert any(not torch.equal(later[k], src[k]) for k in encoder)


def test_init_from_a_hub_id(
    source_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from hub_server import StandInHub, serve  # type: ignore[import-not-found]  # (tests/ on sys.path)

    stand_in = StandInHub()
    stand_in.add("me/flairkit-unet", {"flairkit-unet.safetensors": source_model.read_bytes()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with serve(stand_in):
        monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
        cfg = load_run_config(None, [
            "data.root=x", "model.inputs.AERIAL_RGBI=3", "model.img_sizes.AERIAL_RGBI=64",
            "model.tasks.AERIAL_LABEL-COSIA=19", "model.arch=resnet18-unet",
            "model.init_from=hf:me/flairkit-unet",
        ])  # fmt: skip
        model = build_model(cfg.model)
        assert cfg.model.init_from is not None
        report = init_from_reference(model, cfg.model.init_from)
    assert report.loaded and not report.reinitialised and not report.kept


def test_bad_init_from_is_one_line_naming_the_key(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "bad.yaml", synthetic_root, tmp_path / "bad",
                          init_from=str(tmp_path / "absent.safetensors"))  # fmt: skip
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.init_from: " in err and "absent.safetensors: model file not found" in err
    assert not (tmp_path / "bad" / "checkpoints").exists()
    assert main(["fit", "--config", str(config), "model.init_from=hf:oops"]) == 2
    assert "model.init_from: hf:oops: expected hf:<org>/<repo>" in capsys.readouterr().err
    assert main(["fit", "--config", str(config), "train.freeze_encoders_epochs=-1"]) == 2
    assert "train.freeze_encoders_epochs" in capsys.readouterr().err


def test_the_modalities_of_a_published_file_are_checked(lc_a_file: Path) -> None:
    model = build_model(preset_config("LC-G"))  # S2 only: nothing of LC-A fits
    with pytest.raises(WeightsError, match=r"unknown keys"):
        init_from_reference(model, lc_a_file)
    assert Modality.SENTINEL2_TS in model.config.inputs


@pytest.fixture(scope="module")
def lc_g_ckpt(module_tmp: Path) -> Path:
    """A published LC-G file (U-TAE, Sentinel-2 only) as a Lightning checkpoint."""
    state = {f"model.{k}": v for k, v in golden_state_dict("LC-G").items()}
    state[f"criterion.{COSIA.value}.weight"] = torch.ones(19)
    path = module_tmp / "FLAIR-HUB_LC-G_utae.ckpt"
    torch.save({"state_dict": state, "epoch": 149}, path)
    return path


class _Snapshots(L.Callback):
    """The model's tensors when training starts and after the first epoch."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def _keep(self, name: str, pl_module: L.LightningModule) -> None:
        model = cast(SegmentationTask, pl_module).model
        self.states[name] = {k: v.clone() for k, v in model.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._keep("start", pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._keep("epoch 0", pl_module)


def lc_g_config(path: Path, root: Path, out: Path, init_from: Path, **train: Any) -> Path:
    config = {
        "preset": "LC-G",
        "data": {"root": str(root), "batch_size": 2},
        "model": {"tasks": {COSIA.value: 5}, "init_from": str(init_from)},
        "train": {"max_epochs": 2, "progress_bar": False, "output_dir": str(out),
                  "limit_train_batches": 1, "limit_val_batches": 1,
                  "freeze_encoders_epochs": 1, **train},
        # a strong weight decay: a frozen tensor it touched would differ from the file's
        "optim": {"lr": 0.01, "weight_decay": 0.5, "scheduler": "none"},
        "loss": {"class_weights": {COSIA.value: {}}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_from_a_published_utae_ckpt_trains_its_new_class_layer_first(
    lc_g_ckpt: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """LC-G (19 classes) into a 5-class task: FLAIR-HUB appends a 19 -> 5 block to the U-TAE's
    out_conv; it is the class layer re-initialised, and the only one a time-series-only model
    has, so it learns while the encoders are frozen (freezing it too left nothing to train)."""
    snapshots = _Snapshots()
    straight = fit(
        load_run_config(lc_g_config(tmp_path / "a.yaml", synthetic_root, tmp_path / "a", lc_g_ckpt)),
        callbacks=[snapshots],
    )  # fmt: skip
    new_block = "temporal.SENTINEL2_TS.out_conv.2."
    assert straight.init_summary == (
        f"model.init_from {lc_g_ckpt}: 158 tensors loaded; 7 re-initialised (class count): "
        f"{new_block}conv.weight: not in the file -> model (5, 19, 3, 3), "
        f"{new_block}conv.bias: not in the file -> model (5,), ... 5 more; "
        "4 unused by the model ignored"
    )
    assert straight.init_summary in capsys.readouterr().err
    start, first = snapshots.states["start"], snapshots.states["epoch 0"]
    model = build_model(preset_config("LC-G", tasks={COSIA: 5}))
    published = golden_state_dict("LC-G")
    mapped = {official_key(model, k, "upernet"): v for k, v in published.items()}
    assert set(start) - set(mapped) == {k for k in start if k.startswith(new_block)}
    for key, value in start.items():
        if key in mapped:  # every tensor of the file, as it is
            assert torch.equal(value, mapped[key]), key
    # epoch 0: the encoder is frozen (no step, no weight decay, norm statistics kept) ...
    for key, value in first.items():
        if not key.startswith(new_block):
            assert torch.equal(value, start[key]), key
    # ... while the new class layer learns
    assert not torch.equal(first[f"{new_block}conv.weight"], start[f"{new_block}conv.weight"])
    # epoch 1: everything learns
    last = torch.load(straight.last_checkpoint, map_location="cpu", weights_only=True)
    final = {k.removeprefix("model."): v for k, v in last["state_dict"].items()}
    frozen_then = "temporal.SENTINEL2_TS.in_conv.0.conv.weight"
    assert frozen_then in final and not torch.equal(final[frozen_then], first[frozen_then])
    # interrupted after epoch 0 and resumed: the same weights, init_from not read again
    config = lc_g_config(tmp_path / "b.yaml", synthetic_root, tmp_path / "b", lc_g_ckpt)
    assert main(["fit", "--config", str(config), "train.max_epochs=1"]) == 0
    capsys.readouterr()
    resumed = fit(load_run_config(config))
    assert resumed.init_summary is None and "model.init_from" not in capsys.readouterr().err
    again = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert again["epoch"] == last["epoch"] == 1
    for key, value in last["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key


@pytest.mark.parametrize("freeze", [0, 1])
def test_frozen_encoders_tell_ddp_to_expect_unused_parameters(freeze: int, tmp_path: Path) -> None:
    """Without it, DDP stopped the first frozen step: parameters not used in the loss."""
    from lightning.pytorch.strategies import DDPStrategy

    from flairkit.training.run import _trainer

    cfg = load_run_config(None, [
        "data.root=x", "model.inputs.AERIAL_RGBI=3", "model.tasks.AERIAL_LABEL-COSIA=19",
        "model.img_sizes.AERIAL_RGBI=64", "model.arch=resnet18-unet",
        f"train.output_dir={tmp_path}", "train.accelerator=cpu",
        "train.devices=2", "train.strategy=ddp_spawn", f"train.freeze_encoders_epochs={freeze}",
    ])  # fmt: skip
    strategy = _trainer(cfg, "fit").strategy
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs.get("find_unused_parameters", False) is bool(freeze)
