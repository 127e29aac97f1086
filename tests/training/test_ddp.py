"""fit / evaluate / predict on 2 CPU processes (ddp_spawn, gloo): every patch counted once.

About 75 s on 2 busy cores, mostly the workers importing torch and Lightning; the 2-process
predict adds a third launch and is marked slow (``-m slow``).

A user split keeps the run small and makes the val and test sets odd (3 and 5 patches), so a
sampler that pads to a multiple of the world size would count one patch twice. With batches
of 2, the test ranks run 2 and 1 batches. The test patches come from two departments and
rank 1 sees only one of them, so the per-department matrices are merged from different group
sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import yaml

from flairkit.config import RunConfig, load_run_config
from flairkit.io.catalog import Catalog
from flairkit.training.run import FitResult, evaluate, fit, predict

PX = 64
#: Catalog order; rank 0 gets 0, 2, 4 (D012, D068, D068), rank 1 gets 1, 3 (D068, D068).
TEST_IDS = [
    "D012-2019_FF-S1-34_1-1",
    "D068-2021_UA-S1-32_1-1",
    "D068-2021_UA-S1-32_1-2",
    "D068-2021_UU-S1-A40_1-1",
    "D068-2021_UU-S1-A40_2-2",
]


class SamplerProbe(L.Callback):
    """Records, in each worker, the samplers Lightning ends up using (module level: picklable)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train = trainer.train_dataloader.sampler
        val = trainer.val_dataloaders.sampler
        record = {
            "backend": dist.get_backend(),
            "world": dist.get_world_size(),
            "train": type(train).__name__,
            "train_shuffle": train.shuffle,
            "train_seed": train.seed,
            "train_indices": list(train),
            "val": type(val).__name__,
            "val_indices": list(val),
        }
        (self.folder / f"samplers_rank{trainer.global_rank}.json").write_text(json.dumps(record))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # this rank's validation loss sum and sample count
            loss = pl_module._val_loss.tolist()
            (self.folder / f"val_loss_rank{trainer.global_rank}.json").write_text(json.dumps(loss))


@pytest.fixture(scope="module")
def split_file(synthetic_root: Path, module_tmp: Path) -> Path:
    official = Catalog.scan(synthetic_root)
    train = [r.patch_id for r in official.filter(split="train").refs][:4]
    val = [r.patch_id for r in official.filter(split="val").refs][:3]
    assert {p.split("-", 1)[0] for p in val} == {"D006", "D032"}
    assert set(TEST_IDS) <= {r.patch_id for r in official.filter(split="test").refs}
    mapping = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val")}
    mapping.update(dict.fromkeys(TEST_IDS, "test"))
    path = module_tmp / "split.json"
    path.write_text(json.dumps(mapping))
    return path


def make_config(root: Path, split: Path, out: Path, devices: int) -> RunConfig:
    raw = {
        "data": {"root": str(root), "split": str(split), "batch_size": 2},
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "img_sizes": {"AERIAL_RGBI": PX},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
            "out_px": PX,
        },
        "train": {
            "output_dir": str(out),
            "max_epochs": 1,
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp_spawn" if devices > 1 else "auto",
            "progress_bar": False,
        },
        # stepped on the validation loss summed over the processes
        "optim": {"scheduler": "plateau"},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


@pytest.fixture(scope="module")
def fitted(synthetic_root: Path, split_file: Path, module_tmp: Path) -> tuple[RunConfig, FitResult]:
    out = module_tmp / "fit"
    cfg = make_config(synthetic_root, split_file, out, devices=2)
    out.mkdir()
    return cfg, fit(cfg, callbacks=[SamplerProbe(out)])


def test_fit_on_two_processes(fitted: tuple[RunConfig, FitResult]) -> None:
    cfg, result = fitted
    out = cfg.train.output_dir
    assert result.model_path == out / "model.safetensors" and result.model_path.is_file()
    assert result.best_checkpoint.is_file()
    # The validation scores are computed in the workers and come back through a file.
    assert set(result.val_scores) == {"AERIAL_LABEL-COSIA"}
    assert json.loads((out / "val_scores.json").read_text()) == result.val_scores

    ranks = [json.loads((out / f"samplers_rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert (r["backend"], r["world"]) == ("gloo", 2)
        # Training gets ours: seeded, shuffled, no sample repeated to even out the ranks ...
        assert r["train"] == "EpochShuffleSampler"
        assert r["train_shuffle"] and r["train_seed"] == cfg.train.seed
        # ... validation gets ours: 3 patches split 2 + 1, none repeated.
        assert r["val"] == "UnrepeatedDistributedSampler"
    assert sorted(ranks[0]["train_indices"] + ranks[1]["train_indices"]) == [0, 1, 2, 3]
    assert ranks[0]["val_indices"] == [0, 2] and ranks[1]["val_indices"] == [1]

    # The plateau scheduler saw the mean validation loss of the 3 patches, not of one rank's.
    sums = [json.loads((out / f"val_loss_rank{r}.json").read_text()) for r in (0, 1)]
    assert [n for _, n in sums] == [2, 1]
    plateau = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)[
        "flairkit_plateau"
    ]
    assert plateau["last_epoch"] == 1
    assert plateau["best"] == pytest.approx((sums[0][0] + sums[1][0]) / 3, rel=1e-12)


def test_evaluate_on_two_processes_is_exact(
    fitted: tuple[RunConfig, FitResult], synthetic_root: Path, split_file: Path
) -> None:
    cfg, result = fitted
    reports = {}
    for devices in (1, 2):
        out = cfg.train.output_dir.parent / f"eval{devices}"
        run = make_config(synthetic_root, split_file, out, devices)
        scores = evaluate(run, result.model_path, "test")["AERIAL_LABEL-COSIA"]["scores"]
        reports[devices] = json.loads((out / "report_test" / "metrics_cosia.json").read_text())
        assert reports[devices]["scores"] == scores

    one, two = reports[1], reports[2]
    # Every test pixel once: no patch repeated to even out the ranks.
    assert sum(map(sum, one["confusion_matrix"])) == len(TEST_IDS) * PX * PX
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert set(two["per_group_confusion_matrices"]) == {"D012", "D068"}
    assert two["per_group_confusion_matrices"] == one["per_group_confusion_matrices"]
    assert two["scores"] == one["scores"] and two["per_group"] == one["per_group"]


@pytest.mark.parametrize(
    "devices", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["1proc", "2proc"]
)
def test_predict_writes_every_map(
    fitted: tuple[RunConfig, FitResult], synthetic_root: Path, split_file: Path, devices: int
) -> None:
    cfg, result = fitted
    out = cfg.train.output_dir.parent / f"predict{devices}"
    run = make_config(synthetic_root, split_file, out, devices)
    written = predict(run, result.model_path, "test")
    # Each rank writes the maps of its own patches: with ddp_spawn, only rank 0's predictions
    # would come back to the caller.
    folder = out / "predictions_test" / "AERIAL_LABEL-COSIA"
    assert written == [folder / f"PRED_{p}.tif" for p in TEST_IDS]
    assert all(p.is_file() for p in written)
