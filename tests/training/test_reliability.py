"""fit under bad conditions: non-finite losses and weights, poisoned or damaged checkpoints,
copied run folders, out-of-range config values (issue 11, defects 2, 3, 6 and 7)."""

from __future__ import annotations

import math
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from test_fit import write_config  # tests/training is on sys.path

from flairkit.checkpoint import save_model
from flairkit.cli import main
from flairkit.config import ConfigError, ModelConfig, load_run_config, preprocess_config_for
from flairkit.data.datasets import PatchDataset
from flairkit.io.catalog import Catalog
from flairkit.modalities import Modality, Task
from flairkit.models.build import build_model
from flairkit.training.run import fit

# (the names added by the fixes are imported in the tests that use them, so that the other
# tests of this module run, and fail, on the code before the fixes)

AERIAL = Modality.AERIAL_RGBI
#: 2 training batches of 2 patches and 1 validation batch per epoch; the plateau schedule
#: (patience 0) changes the lr between epochs, so its state must survive a resume too.
TRAIN = dict(limit_train_batches=2, limit_val_batches=1, seed=7, early_stopping_patience=None)
OPTIM = {"scheduler": "plateau", "plateau_patience": 0}


def run_yaml(tmp: Path, root: Path, name: str, **train) -> Path:
    return write_config(tmp / f"{name}.yaml", root, tmp / name, optim=OPTIM, **{**TRAIN, **train})


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("flairkit ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run_a(synthetic_root: Path, module_tmp: Path) -> Path:
    """A run folder after one epoch (read-only: tests copy it)."""
    fit(load_run_config(run_yaml(module_tmp, synthetic_root, "run_A", max_epochs=1)))
    return module_tmp / "run_A"


def copy_run(run: Path, dst: Path, root: Path, **train) -> Path:
    """Copy a run folder (as ``cp -r``) and write a config for the copy; returns the config."""
    shutil.copytree(run, dst)
    return run_yaml(dst.parent, root, dst.name, **train)


# -- defect 6: a copied or moved run folder resumes as in place -----------------------------------


def test_copied_run_folder_resumes_like_the_original(
    run_a: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    a_last = (run_a / "checkpoints" / "last.ckpt").read_bytes()
    config_b = copy_run(run_a, tmp_path / "run_B", synthetic_root, max_epochs=2)
    run_b = tmp_path / "run_B"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(load_run_config(config_b))
    # Lightning's warning when it drops the bookkeeping of a checkpoint from another folder
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert load(run_b / "checkpoints" / "last.ckpt")["epoch"] == 1
    fit(load_run_config(config_b, ["train.max_epochs=3"]))
    last_b = load(run_b / "checkpoints" / "last.ckpt")
    assert last_b["epoch"] == 2 and last_b["global_step"] == 6
    files = checkpoint_files(run_b)
    assert len(files) == 2 and files[0].startswith("best-epoch=") and files[1] == "last.ckpt"
    # the bookkeeping names run_B's files, never run_A's
    states = [s for s in last_b["callbacks"].values() if "dirpath" in s]
    assert len(states) == 2
    for state in states:
        assert state["dirpath"] == str((run_b / "checkpoints").resolve())
        assert str(run_a) not in str(state)
        assert Path(state["best_model_path"]).name in files
    # the original is untouched
    assert (run_a / "checkpoints" / "last.ckpt").read_bytes() == a_last
    # the same weights, schedule and optimiser state as one uninterrupted 3-epoch run
    fit(load_run_config(run_yaml(tmp_path, synthetic_root, "run_C", max_epochs=3)))
    last_c = load(tmp_path / "run_C" / "checkpoints" / "last.ckpt")
    shutil.rmtree(tmp_path / "run_C")  # ~350 MB of checkpoints: keep the disk peak low
    shutil.rmtree(run_b)
    assert last_c["epoch"] == 2 and last_c["global_step"] == 6
    for key, value in last_c["state_dict"].items():
        assert torch.equal(value, last_b["state_dict"][key]), key
    assert last_c["flairkit_plateau"] == last_b["flairkit_plateau"]
    lrs = [[g["lr"] for g in c["optimizer_states"][0]["param_groups"]] for c in (last_b, last_c)]
    assert lrs[0] == lrs[1]


def test_moved_state_keeps_the_best_score(run_a: Path, tmp_path: Path) -> None:
    """The best callback's score and file survive a move: a worse epoch does not replace it."""
    from flairkit.training.run import _RunCheckpoint

    state = next(
        s for k, s in load(run_a / "checkpoints" / "last.ckpt")["callbacks"].items()
        if "val_miou" in k
    )  # fmt: skip
    moved = tmp_path / "elsewhere" / "checkpoints"
    moved.mkdir(parents=True)
    callback = _RunCheckpoint(dirpath=moved, monitor="val_miou", mode="max", save_top_k=1)
    callback.load_state_dict(dict(state))
    assert callback.best_model_score == state["best_model_score"]
    assert callback.best_model_path == str(moved.resolve() / Path(state["best_model_path"]).name)
    assert list(callback.best_k_models) == [callback.best_model_path]


# -- defect 2: non-finite losses and weights ----------------------------------------------------


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> dict:
    """While ``poison["on"]``, every training sample gets a NaN pixel after it is read."""
    state = {"on": True}
    load_sample = PatchDataset._load

    def poisoned(self, index: int, num_threads: int | None = None):
        sample = load_sample(self, index, num_threads)
        if state["on"] and self.augment is not None:  # the training set
            sample.inputs[AERIAL][0, 0, 0] = math.nan
        return sample

    monkeypatch.setattr(PatchDataset, "_load", poisoned)
    return state


class BatchIds(L.Callback):
    def __init__(self) -> None:
        self.ids: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self.ids.append(list(batch.patch_ids))


def test_nan_loss_from_the_start_exits_2_and_exports_nothing(
    synthetic_root: Path, tmp_path: Path, poison: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run_yaml(tmp_path, synthetic_root, "run", max_epochs=1)
    assert main(["fit", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert "training loss is nan at epoch 0, batch 0" in line
    named = re.search(r"patches (.+?):", line)[1].split(", ")
    train_ids = {r.patch_id for r in Catalog.open(synthetic_root).filter(split="train").refs}
    assert len(named) == 2 and set(named) <= train_ids
    assert "no epoch was completed" in line
    out = tmp_path / "run"
    assert not (out / "model.safetensors").exists()
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_nan_loss_keeps_the_last_good_epoch_and_resumes_once_fixed(
    run_a: Path, synthetic_root: Path, tmp_path: Path, poison: dict
) -> None:
    config = copy_run(run_a, tmp_path / "run", synthetic_root, max_epochs=2)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in [*(run / "checkpoints").iterdir()]}
    model_before = (run / "model.safetensors").read_bytes()
    recorder = BatchIds()
    # a ValueError: the command line exits 2 with one line
    with pytest.raises(ValueError, match="training loss is nan") as raised:
        fit(load_run_config(config), callbacks=[recorder])
    assert type(raised.value).__name__ == "NonFiniteLossError"
    message = str(raised.value)
    assert f"in the batch of patches {', '.join(recorder.ids[-1])}:" in message
    assert "at epoch 1, batch 0" in message
    assert f"{run / 'checkpoints' / 'last.ckpt'} keeps the last complete epoch" in message
    # nothing written: last.ckpt is epoch 0, the best file and the model are the same bytes
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / "model.safetensors").read_bytes() == model_before
    # the data fixed, the run resumes from epoch 0's state
    poison["on"] = False
    fit(load_run_config(config))
    assert load(run / "checkpoints" / "last.ckpt")["epoch"] == 1
    shutil.rmtree(run)


class BreakWeights(L.Callback):
    """After the validation of ``epoch``, puts a NaN in one weight (as a diverged step would)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: D102
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                next(pl_module.model.parameters()).view(-1)[0] = math.nan


def test_nonfinite_weights_are_never_saved_as_best_last_or_model(
    run_a: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    config = copy_run(run_a, tmp_path / "run", synthetic_root, max_epochs=2)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    model_before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match=r"after epoch 1 1 weight tensors hold NaN"):
        fit(load_run_config(config), callbacks=[BreakWeights(epoch=1)])
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
    assert (run / "model.safetensors").read_bytes() == model_before
    shutil.rmtree(run)


def _stub_trainer(module: torch.nn.Module) -> SimpleNamespace:
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(lightning_module=module, strategy=strategy)


def test_a_nan_score_or_nan_weights_never_rank_as_best(tmp_path: Path) -> None:
    from flairkit.training.run import _RunCheckpoint

    callback = _RunCheckpoint(dirpath=tmp_path, monitor="val_miou", mode="max", save_top_k=1)
    good, broken = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        broken.weight[0, 0] = math.inf
    # no best yet: Lightning would keep anything, even a NaN score (stored as -inf)
    assert callback.check_monitor_top_k(_stub_trainer(good), torch.tensor(12.5))
    assert not callback.check_monitor_top_k(_stub_trainer(good), torch.tensor(math.nan))
    assert not callback.check_monitor_top_k(_stub_trainer(broken), torch.tensor(12.5))


def test_save_model_refuses_nonfinite_weights_and_keeps_the_file(tmp_path: Path) -> None:
    cfg = ModelConfig(
        inputs={AERIAL: 3}, img_sizes={AERIAL: 32}, tasks={Task.COSIA: 19},
        arch="resnet18-unet", out_px=32,
    )  # fmt: skip
    model = build_model(cfg)
    path = save_model(tmp_path / "model.safetensors", model, cfg, preprocess_config_for([AERIAL]))
    good = path.read_bytes()
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = math.nan
    with pytest.raises(ValueError, match=r"model.safetensors: not written: 1 of"):
        save_model(path, model, cfg, preprocess_config_for([AERIAL]))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# -- defect 3: checkpoints are read weights-only, whatever the environment -------------------------


class _Poison:
    """A pickle that, when unpickled by code that allows it, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_poisoned(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {}, "epoch": 0, "global_step": 0, "optimizer_states": [], "loops": {}}
    torch.save({**state, "hyper_parameters": _Poison(marker)}, path)
    return path


def test_poisoned_file_is_refused_with_the_unsafe_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flairkit.safe_load import CheckpointReadError, load_weights_only
    from flairkit.training.run import SafeCheckpointIO

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = write_poisoned(tmp_path / "last.ckpt", marker)
    with pytest.raises(CheckpointReadError, match=rf"{re.escape(str(path))}: refused"):
        load_weights_only(path)
    # Lightning's resume goes through the same reader, whatever weights_only it passes
    for weights_only in (None, False):
        with pytest.raises(CheckpointReadError, match="refused"):
            SafeCheckpointIO(path).load_checkpoint(path, weights_only=weights_only)
        with pytest.raises(CheckpointReadError, match="refused"):  # any file Lightning reads
            SafeCheckpointIO().load_checkpoint(path, weights_only=weights_only)
    assert not marker.exists()


def test_resume_from_a_poisoned_last_ckpt_exits_2_and_runs_nothing(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    last = write_poisoned(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    content = last.read_bytes()
    config = run_yaml(tmp_path, synthetic_root, "run", max_epochs=1)
    assert main(["fit", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert f"{last}: refused" in line and "weights_only=False" not in line
    assert not marker.exists()
    assert last.read_bytes() == content


# -- defect 7: damaged checkpoints and bad config values: exit 2, one line naming them ------------


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "empty", "not-a-fit-checkpoint"])
def test_damaged_last_ckpt_exits_2_naming_it(
    damage: str, run_a: Path, synthetic_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    if damage == "random-bytes":
        last.write_bytes(np.random.default_rng(1).bytes(10_000))
    elif damage == "truncated":
        good = (run_a / "checkpoints" / "last.ckpt").read_bytes()
        last.write_bytes(good[: len(good) // 2])
    elif damage == "not-a-fit-checkpoint":
        torch.save({"state_dict": {}}, last)
    else:
        last.write_bytes(b"")
    content = last.read_bytes()
    config = run_yaml(tmp_path, synthetic_root, "run", max_epochs=1)
    assert main(["fit", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert f"{last}: " in line and "--no-resume" in line
    assert last.read_bytes() == content


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.max_epochs=-3", "train.max_epochs"),
        ("train.max_epochs=0", "train.max_epochs"),
        ("data.batch_size=-4", "data.batch_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.max_patches=0", "data.max_patches"),
        ("train.accumulate_grad_batches=0", "train.accumulate_grad_batches"),
        ("train.devices=0", "train.devices"),
        ("train.devices=many", "train.devices"),
        ("train.num_nodes=0", "train.num_nodes"),
        ("train.limit_train_batches=0", "train.limit_train_batches"),
        ("train.limit_train_batches=1.5", "train.limit_train_batches"),
        ("train.limit_val_batches=-1", "train.limit_val_batches"),
        ("train.log_every_n_steps=0", "train.log_every_n_steps"),
        ("train.seed=-1", "train.seed"),
        ("train.early_stopping_patience=-2", "train.early_stopping_patience"),
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
        ("optim.warmup_fraction=1.5", "optim.warmup_fraction"),
        ("optim.div_factor=0", "optim.div_factor"),
        ("optim.plateau_patience=-1", "optim.plateau_patience"),
        ("loss.aux_weight=-1", "loss.aux_weight"),
        ("loss.task_weights={COSIA: .inf}", "loss.task_weights.AERIAL_LABEL-COSIA"),
    ],
)
def test_out_of_range_values_are_refused_at_load_naming_the_key(
    override: str, key: str, synthetic_root: Path, tmp_path: Path
) -> None:
    config = run_yaml(tmp_path, synthetic_root, "run")
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
        load_run_config(config, [override])


def test_batch_limits_count_batches_when_given_an_integer(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """``limit_train_batches: 1`` is one batch (Lightning's count), not 100 % of them."""
    config = run_yaml(tmp_path, synthetic_root, "run")
    train = load_run_config(config, ["train.limit_train_batches=1"]).train
    assert train.limit_train_batches == 1 and isinstance(train.limit_train_batches, int)
    train = load_run_config(config, ["train.limit_val_batches=0.5"]).train
    assert train.limit_val_batches == 0.5


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.max_epochs=-3", "train.max_epochs"),
        ("data.batch_size=-4", "data.batch_size"),
        ("train.accelerator=tpu", "train.accelerator"),
        ("train.accelerator=quantum", "train.accelerator"),
    ],
)
def test_command_line_refuses_bad_values_before_creating_the_run_folder(
    override: str, key: str, synthetic_root: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = run_yaml(tmp_path, synthetic_root, "run")
    assert main(["fit", "--config", str(config), override]) == 2
    assert error_line(capsys).startswith(f"flairkit fit: error: {key}: ")
    assert not (tmp_path / "run").exists()
