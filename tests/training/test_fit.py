"""fit / evaluate / predict end to end on the synthetic dataset; exact resume after a kill."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from flairkit.checkpoint import load_model
from flairkit.cli import main
from flairkit.config import load_run_config
from flairkit.io.catalog import Catalog
from flairkit.modalities import COSIA_CLASSES, Modality, Task, hex_to_rgb
from flairkit.models.presets import get_preset
from flairkit.reports import report_paths
from flairkit.training.run import _trainer, evaluate, fit, predict


def write_config(path: Path, root: Path, out: Path, optim: dict | None = None, **train) -> Path:
    config = {
        "data": {"root": str(root), "batch_size": 2},
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "img_sizes": {"AERIAL_RGBI": 64},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
        },
        "train": {"max_epochs": 1, "progress_bar": False, "output_dir": str(out), **train},
        "optim": {"lr": 0.001, **(optim or {})},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, module_tmp: Path):
    tmp = module_tmp
    cfg = load_run_config(
        write_config(tmp / "run.yaml", synthetic_root, tmp / "run", limit_train_batches=3)
    )
    return cfg, fit(cfg)


def test_fit_writes_checkpoints_logs_and_model(trained) -> None:
    cfg, result = trained
    out = cfg.train.output_dir
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert (out / "config.yaml").is_file() and (out / "logs" / "metrics.csv").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    model, preprocess = load_model(result.model_path)
    assert preprocess == cfg.preprocess
    assert model.config.img_sizes == {Modality.AERIAL_RGBI: 64} and model.config.out_px == 64
    assert 0.0 <= result.val_scores["AERIAL_LABEL-COSIA"]["miou"] <= 100.0
    # the exported weights are the best checkpoint's
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[f"model.{key}"])


def test_evaluate_writes_reports(trained) -> None:
    cfg, _ = trained
    results = evaluate(cfg, split="test")
    r = results["AERIAL_LABEL-COSIA"]
    assert r["scores"]["num_classes"] == 15  # 19 minus the 4 ignored classes
    for path in r["paths"].values():
        assert Path(path).is_file() and Path(path).stat().st_size > 0


def test_predict_writes_georeferenced_class_maps(trained, synthetic_root: Path) -> None:
    cfg, _ = trained
    written = predict(cfg, split="test", probabilities=True)
    catalog = Catalog.scan(synthetic_root).filter(split="test")
    assert len(written) == len(catalog)
    ref = catalog.refs[0]
    path = next(p for p in written if ref.patch_id in p.name)
    with rasterio.open(path) as pred, rasterio.open(ref.path(Modality.COSIA)) as label:
        assert pred.dtypes == ("uint8",) and pred.count == 1
        assert pred.crs == label.crs and np.allclose(pred.bounds, label.bounds)
        assert (pred.width, pred.height) == (label.width, label.height)
        assert pred.colormap(1)[0][:3] == hex_to_rgb(COSIA_CLASSES[0].colour)
        assert pred.read(1).max() < 19
    with rasterio.open(path.with_name(path.stem + "_proba.tif")) as proba:
        assert proba.count == 19 and proba.dtypes[0] == "uint8"
        total = proba.read().astype(int).sum(0)
        assert np.all(np.abs(total - 255) <= 19)  # quantised probabilities sum to ~1


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from flairkit.config import load_run_config
    from flairkit.training.run import fit

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 2 and trainer.global_step == 2 * 3 + 2:
                os.kill(os.getpid(), signal.SIGKILL)

    fit(load_run_config(sys.argv[1]), callbacks=[Kill()])
    """
)


@pytest.mark.parametrize(
    "optim",
    [{}, {"scheduler": "cycle_then_plateau", "warmup_fraction": 0.25, "plateau_patience": 0}],
    ids=["one_cycle", "cycle_then_plateau"],
)
def test_killed_run_resumes_to_the_same_weights(
    synthetic_root: Path, tmp_path: Path, optim: dict
) -> None:
    train = dict(max_epochs=4, limit_train_batches=3, limit_val_batches=2, seed=7)
    straight = load_run_config(
        write_config(tmp_path / "a.yaml", synthetic_root, tmp_path / "a", optim=optim, **train)
    )
    fit(straight)
    a = torch.load(
        tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    shutil.rmtree(tmp_path / "a")  # ~400 MB of checkpoints: keep the disk peak of the suite low
    config_b = write_config(
        tmp_path / "b.yaml", synthetic_root, tmp_path / "b", optim=optim, **train
    )
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(config_b)], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    last = torch.load(
        tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["epoch"] == 1  # killed in the third epoch (index 2): epochs 0 and 1 are on disk
    fit(load_run_config(config_b))  # resumes from last.ckpt
    b = torch.load(
        tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # the schedules too: learning rates, the warm-up's and the plateau's counters
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert a.get("flairkit_plateau") == b.get("flairkit_plateau")
    assert ("flairkit_plateau" in a) == bool(optim)
    lrs = [[g["lr"] for g in c["optimizer_states"][0]["param_groups"]] for c in (a, b)]
    assert lrs[0] == lrs[1]


def test_resumed_run_keeps_the_metrics_of_the_epochs_before_the_kill(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """metrics.csv of a killed and resumed run reads as one uninterrupted run."""
    train = dict(
        max_epochs=4, limit_train_batches=3, limit_val_batches=2, seed=7, log_every_n_steps=1
    )
    config = write_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "run", **train)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(config)], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    metrics = tmp_path / "run" / "logs" / "metrics.csv"
    with metrics.open(newline="") as f:
        before = list(csv.DictReader(f))
    # killed after two batches of epoch 2 (index 2), whose rows reached the file
    assert {r["epoch"] for r in before if r["train_loss"]} == {"0", "1", "2"}
    fit(load_run_config(config))  # resumes from last.ckpt, at epoch 2
    with metrics.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    assert header == sorted(set().union(*(r.keys() for r in rows)))
    # each epoch validated once, in order; each step trained and logged once, in order
    assert [int(r["epoch"]) for r in rows if r["val_miou"]] == [0, 1, 2, 3]
    trained = [(int(r["epoch"]), int(r["step"])) for r in rows if r["train_loss"]]
    assert trained == [(e, s) for e in range(4) for s in range(3 * e, 3 * e + 3)]
    lr = [int(r["step"]) for r in rows if any(v for k, v in r.items() if k.startswith("lr-"))]
    assert lr == list(range(12))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    # the rows of the epochs the checkpoint covered are the ones written before the kill
    kept = [r for r in before if r["epoch"] in ("0", "1")]
    assert [r for r in rows if r["epoch"] in ("0", "1")] == kept


# -- the loop's options and the command line ---------------------------------------------------


def test_gradient_accumulation_steps_once_per_two_batches(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command line: 4 batches, accumulated by 2, are 2 optimiser steps."""
    path = write_config(tmp_path / "run.yaml", synthetic_root, tmp_path / "run", max_epochs=1)
    code = main(
        ["fit", "--config", str(path), "train.accumulate_grad_batches=2",
         "train.limit_train_batches=4", "train.limit_val_batches=1", "train.log_every_n_steps=1"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "val AERIAL_LABEL-COSIA: mIoU " in printed
    assert f"model: {tmp_path / 'run' / 'model.safetensors'}" in printed
    last = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["global_step"] == 2
    steps = {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert steps == {2}  # AdamW stepped twice
    with (tmp_path / "run" / "logs" / "metrics.csv").open(newline="") as f:
        lrs = [r for r in csv.DictReader(f) if r.get("lr-AdamW")]
    assert {r["step"] for r in lrs} == {"0", "1"}  # logged by batch, at the optimiser's step


def test_early_stopping_ends_at_the_first_epoch_without_better_val_miou(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Patience 1: the run stops after the first epoch whose val mIoU is not above the best."""
    train = dict(
        max_epochs=5, limit_train_batches=1, limit_val_batches=2, early_stopping_patience=1
    )
    # lr 0: the weights do not move, the val mIoU does not improve
    path = write_config(
        tmp_path / "run.yaml", synthetic_root, tmp_path / "run",
        optim={"lr": 0.0, "scheduler": "none"}, **train,
    )  # fmt: skip
    fit(load_run_config(path))
    with (tmp_path / "run" / "logs" / "metrics.csv").open(newline="") as f:
        mious = [float(r["val_miou"]) for r in csv.DictReader(f) if r["val_miou"]]
    first_flat = next(e for e in range(1, len(mious)) if mious[e] <= max(mious[:e]))
    assert len(mious) == first_flat + 1 < 5
    last = torch.load(
        tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert last["epoch"] == first_flat


def test_resume_refuses_another_schedule_length(trained, tmp_path: Path) -> None:
    cfg, _ = trained
    with pytest.raises(ValueError, match=r"train.max_epochs=1.*cannot be resumed with 2"):
        fit(replace(cfg, train=replace(cfg.train, max_epochs=2)))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(replace(cfg, train=replace(cfg.train, output_dir=tmp_path / "new")), resume=True)
    # the command line says so, with exit code 2
    saved = cfg.train.output_dir / "config.yaml"
    assert main(["fit", "--config", str(saved), "train.max_epochs=2"]) == 2
    assert main(["fit", "--config", str(saved), "train.max_epoch=2"]) == 2


def test_command_line_errors_name_the_key(trained, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = trained
    saved = str(cfg.train.output_dir / "config.yaml")
    assert main(["test", "--config", saved, "optim.lrr=1"]) == 2
    assert "optim.lrr: unknown key" in capsys.readouterr().err
    assert main(["fit", "--config", saved, "train.max_epochs=2"]) == 2
    assert "train.max_epochs=1" in capsys.readouterr().err
    assert main(["test", "--config", saved, "--weights", "/nonexistent.safetensors"]) == 2
    assert "/nonexistent.safetensors: no trained model" in capsys.readouterr().err


def test_command_line_test_prints_the_published_scores_beside_ours(
    trained, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = trained
    saved = str(cfg.train.output_dir / "config.yaml")
    assert main(["test", "--config", saved, "preset=LC-A"]) == 0
    out = capsys.readouterr().out
    preset = get_preset("LC-A")
    line = next(x for x in out.splitlines() if x.startswith("test AERIAL_LABEL-COSIA: "))
    assert f"(published LC-A {preset.card_miou:.2f})" in line
    assert f"(published LC-A {preset.card_oa:.2f})" in line
    paths = report_paths(cfg.train.output_dir / "report_test", Task.COSIA)
    scores = json.loads(paths["json"].read_text())["scores"]
    assert f"mIoU {scores['miou']:.2f} (published" in line
    for kind, path in paths.items():
        assert f"  {kind}: {path}" in out and path.is_file()
    assert main(["validate", "--config", saved]) == 0
    assert capsys.readouterr().out.startswith("val AERIAL_LABEL-COSIA: mIoU ")
    assert main(["predict", "--config", saved, "--split", "val"]) == 0
    written = capsys.readouterr().out.strip()
    count = len(Catalog.scan(cfg.data.root).filter(split="val"))
    assert written == f"wrote {count} class maps to {cfg.train.output_dir / 'predictions_val'}"


@pytest.mark.parametrize("shown", [True, False])
def test_progress_bar_follows_the_config(trained, shown: bool) -> None:
    cfg, _ = trained
    cfg = replace(cfg, train=replace(cfg.train, progress_bar=shown))
    for stage in ("fit", "test", "predict"):
        assert (_trainer(cfg, stage).progress_bar_callback is not None) is shown
