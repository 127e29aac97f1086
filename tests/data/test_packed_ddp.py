"""Packed data over several processes and from a URL: the training order, exact evaluation,
resume after a kill.

The 2-process runs use gloo on CPU (``ddp_spawn``), about 60 s on 2 busy cores, mostly the
workers importing torch and Lightning. The pack is read through LitData's ``local:`` URL
scheme, which makes LitData treat a folder as remote storage (as for ``s3://``): fetched
through its downloader into its cache folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import yaml

from flairkit.config import ConfigError, RunConfig, load_run_config
from flairkit.data.datamodule import EpochShuffleSampler, rank_counts
from flairkit.data.packed import catalog_of_pack, is_packed, open_pack, pack
from flairkit.io.catalog import Catalog
from flairkit.io.raster import DataError
from flairkit.modalities import Modality
from flairkit.synth import SynthSummary
from flairkit.training.run import FitResult, evaluate, fit, make_catalog

PX = 64


# --------------------------------------------------------------------------------------------
# The sampler alone: every rank's indices, without processes.


def epoch_indices(n: int, world: int, batch: int, drop_last: bool, seed: int, epoch: int):
    ranks = []
    for rank in range(world):
        sampler = EpochShuffleSampler(range(n), world, rank, seed, batch, drop_last)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
        assert len(sampler) == len(ranks[-1])
    return ranks


@pytest.mark.parametrize("n", [4, 7, 8, 9, 13, 24])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_sample_at_most_once_and_the_same_batch_count_on_every_rank(
    n: int, world: int, batch: int, drop_last: bool
) -> None:
    if n < world:
        pytest.skip("fewer samples than processes is an error of the DataModule")
    ranks = epoch_indices(n, world, batch, drop_last, seed=5, epoch=0)
    seen = [i for r in ranks for i in r]
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(n))  # never twice
    batches = {-(-len(r) // batch) for r in ranks}
    assert len(batches) == 1  # every rank steps as often: no all-reduce left waiting
    left_out = n - len(seen)
    if drop_last and n // world >= batch:
        assert all(len(r) % batch == 0 for r in ranks)  # only full batches
        assert left_out < world * batch  # as one process leaves out fewer than a batch
    elif n % world == 0 or (n // world) % batch:
        assert left_out == 0  # every sample exactly once
    else:  # the extra samples would have been a batch of their own
        assert left_out == n % world


def test_the_order_is_seeded_and_changes_every_epoch() -> None:
    a = epoch_indices(40, 2, 4, True, seed=3, epoch=0)
    assert a == epoch_indices(40, 2, 4, True, seed=3, epoch=0)  # deterministic
    assert sorted(a[0] + a[1]) == list(range(40))
    b = epoch_indices(40, 2, 4, True, seed=3, epoch=1)
    assert sorted(b[0] + b[1]) == list(range(40)) and b != a
    assert epoch_indices(40, 2, 4, True, seed=4, epoch=0) != a
    assert rank_counts(41, 2, 4, True) == [20, 20] and rank_counts(43, 2, 4, False) == [22, 21]
    # 21 + 20 would give rank 0 a sixth batch of one sample
    assert rank_counts(41, 2, 4, False) == [20, 20] and rank_counts(41, 2, 5, False) == [20, 20]
    assert rank_counts(3, 2, 4, True) == [2, 1]  # fewer than a batch per rank: all kept


# --------------------------------------------------------------------------------------------
# 2 processes on a pack read from a URL.

#: A user split: 8 training patches (2 steps of 2 x 2 per epoch: all 8 seen), odd val and test.
TEST_IDS = [
    "D012-2019_FF-S1-34_1-1",
    "D068-2021_UA-S1-32_1-1",
    "D068-2021_UA-S1-32_1-2",
    "D068-2021_UU-S1-A40_1-1",
    "D068-2021_UU-S1-A40_2-2",
]


@pytest.fixture(scope="module")
def url(synthetic: SynthSummary, module_tmp: Path) -> str:
    """The session dataset packed (aerial + COSIA), given as a ``local:`` URL."""
    catalog = Catalog.open(synthetic.root)
    folder = module_tmp / "packed"
    pack(catalog, folder, [Modality.AERIAL_RGBI, Modality.COSIA], progress=False)
    return f"local:{folder}"


@pytest.fixture(scope="module")
def split_file(synthetic: SynthSummary, module_tmp: Path) -> Path:
    official = Catalog.open(synthetic.root)
    train = [r.patch_id for r in official.filter(split="train").refs][:8]
    val = [r.patch_id for r in official.filter(split="val").refs][:3]
    mapping = {**dict.fromkeys(train, "train"), **dict.fromkeys(val, "val")}
    mapping.update(dict.fromkeys(TEST_IDS, "test"))
    path = module_tmp / "split.json"
    path.write_text(json.dumps(mapping))
    return path


class OrderProbe(L.Callback):
    """Writes, in each worker and epoch, the training indices its sampler gives."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sampler = trainer.train_dataloader.sampler
        record = {
            "world": dist.get_world_size(),
            "sampler": type(sampler).__name__,
            "indices": list(sampler),
            "ids": [trainer.train_dataloader.dataset.refs[i].patch_id for i in sampler],
        }
        name = f"order_e{trainer.current_epoch}_r{trainer.global_rank}.json"
        (self.folder / name).write_text(json.dumps(record))


def make_config(
    root: str | Path, split: Path | None, out: Path, devices: int, **train
) -> RunConfig:  # fmt: skip
    data = {"root": str(root), "batch_size": 2}
    if split is not None:
        data["split"] = str(split)
    raw = {
        "data": data,
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "img_sizes": {"AERIAL_RGBI": PX},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
            "out_px": PX,
        },
        "train": {
            "output_dir": str(out),
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp_spawn" if devices > 1 else "auto",
            "progress_bar": False,
            "seed": 11,
            **train,
        },
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


def test_a_url_root_stays_a_url_and_reads_the_pack(url: str, synthetic: SynthSummary) -> None:
    cfg = make_config(url, None, Path("/tmp/unused"), 1)
    assert cfg.data.root == url and is_packed(url)
    catalog = make_catalog(cfg)
    assert catalog.root is None and {r.root for r in catalog.refs} == {url}
    local = catalog_of_pack(url.removeprefix("local:"))
    assert [r.patch_id for r in catalog.refs] == [r.patch_id for r in local.refs]
    a = open_pack(url).read(TEST_IDS[0], [Modality.AERIAL_RGBI])
    b = open_pack(local.root).read(TEST_IDS[0], [Modality.AERIAL_RGBI])
    assert (a.arrays[Modality.AERIAL_RGBI] == b.arrays[Modality.AERIAL_RGBI]).all()
    assert a.georefs == b.georefs
    # a split read from the source's GeoPackage cannot apply to a pack; a split file can
    with pytest.raises(ConfigError, match="^data.split: split_1 is read from the source"):
        make_catalog(replace(cfg, data=replace(cfg.data, split="split_1")))
    card = make_catalog(replace(cfg, data=replace(cfg.data, split="card")))
    assert {r.split for r in card.refs} == {"train", "val", "test"}


@pytest.fixture(scope="module")
def fitted(url: str, split_file: Path, module_tmp: Path) -> tuple[RunConfig, FitResult]:
    out = module_tmp / "fit"
    cfg = make_config(url, split_file, out, devices=2)
    out.mkdir()
    return cfg, fit(cfg, callbacks=[OrderProbe(out)])


def test_two_processes_see_every_training_patch_once_per_epoch(
    fitted: tuple[RunConfig, FitResult], split_file: Path
) -> None:
    cfg, _ = fitted
    out = cfg.train.output_dir
    train_ids = sorted(k for k, v in json.loads(split_file.read_text()).items() if v == "train")
    orders = []
    for epoch in (0, 1):
        ranks = [json.loads((out / f"order_e{epoch}_r{r}.json").read_text()) for r in (0, 1)]
        assert {(r["world"], r["sampler"]) for r in ranks} == {(2, "EpochShuffleSampler")}
        assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == train_ids  # each exactly once
        # the seeded permutation of the run's seed and this epoch, cut in two
        assert [r["indices"] for r in ranks] == epoch_indices(8, 2, 2, True, seed=11, epoch=epoch)
        orders.append(ranks[0]["indices"] + ranks[1]["indices"])
    assert orders[0] != orders[1]


def test_evaluation_on_two_processes_equals_one(
    fitted: tuple[RunConfig, FitResult], url: str, split_file: Path, synthetic: SynthSummary
) -> None:
    cfg, result = fitted
    reports = {}
    for name, root, devices in (("url2", url, 2), ("url1", url, 1)):
        out = cfg.train.output_dir.parent / name
        evaluate(make_config(root, split_file, out, devices), result.model_path, "test")
        reports[name] = json.loads((out / "report_test" / "metrics_cosia.json").read_text())
    one, two = reports["url1"], reports["url2"]
    assert sum(map(sum, one["confusion_matrix"])) == len(TEST_IDS) * PX * PX  # none repeated
    assert two["confusion_matrix"] == one["confusion_matrix"]
    assert two["per_group_confusion_matrices"] == one["per_group_confusion_matrices"]
    assert two["scores"] == one["scores"]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from flairkit.config import load_run_config
    from flairkit.training.run import fit

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1 and trainer.global_step == 3 + 1:
                os.kill(os.getpid(), signal.SIGKILL)

    fit(load_run_config(sys.argv[1]), callbacks=[Kill()])
    """
)


def test_a_fit_on_a_pack_killed_mid_epoch_resumes_bit_identically(url: str, tmp_path: Path) -> None:
    train = dict(max_epochs=3, limit_train_batches=3, limit_val_batches=1)

    def last(name: str) -> dict:
        path = tmp_path / name / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)

    fit(make_config(url, None, tmp_path / "a", 1, **train))
    a = last("a")
    config_b = make_config(url, None, tmp_path / "b", 1, **train)
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / "b.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert last("b")["epoch"] == 0  # killed in the second epoch: the first is on disk
    fit(config_b)
    b = last("b")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 9
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_a_chunk_another_process_is_fetching_is_waited_for(url: str, monkeypatch) -> None:
    """LitData's whole-chunk fetch (local:, azure://, hf://) fails at once in a second process
    while the first holds the chunk's lock; the reader waits for the file instead."""
    reader = open_pack(url)
    key, index = reader.where[TEST_IDS[0]]
    real = reader._dataset(key)
    calls = []

    class Racing:
        def __getitem__(self, i: int) -> dict:
            calls.append(i)
            if len(calls) < 3:
                raise FileNotFoundError(2, "No such file or directory", "/cache/chunk-0-0.bin")
            return real[i]

    monkeypatch.setitem(reader._open, key, Racing())
    monkeypatch.setattr("flairkit.data.packed._CHUNK_WAITS", (0.0, 0.0, 0.0, None))
    raw = reader.read(TEST_IDS[0], [Modality.AERIAL_RGBI])
    assert calls == [index] * 3 and raw.patch_id == TEST_IDS[0]

    class Missing:  # a file missing from the storage itself: no local name, no retry
        def __getitem__(self, i: int) -> dict:
            raise FileNotFoundError("The provided remote_path doesn't exist: x/chunk-0-0.bin")

    monkeypatch.setitem(reader._open, key, Missing())
    with pytest.raises(DataError, match=rf"{key}: item {index}: The provided remote_path"):
        reader.read(TEST_IDS[0], [Modality.AERIAL_RGBI])
