"""FlairDataModule over the synthetic catalog: batch layout, split coverage, worker parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flairkit.config import preprocess_config_for
from flairkit.data.datamodule import FlairDataModule
from flairkit.io.catalog import Catalog
from flairkit.modalities import Modality, Task
from flairkit.sample import Batch
from flairkit.synth import SynthSummary

INPUTS = (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS, Modality.DEM_ELEV)
TASKS = (Task.COSIA, Task.LPIS)


def make_module(root: Path, num_workers: int) -> FlairDataModule:
    return FlairDataModule(
        Catalog.scan(root),
        preprocess_config_for(INPUTS, tasks=TASKS),
        batch_size=2,
        num_workers=num_workers,
    )


@pytest.fixture(scope="module")
def module(synthetic_root: Path) -> FlairDataModule:
    dm = make_module(synthetic_root, 0)
    dm.setup("fit")
    return dm


def collect(loader) -> list[Batch]:
    return list(loader)


def test_train_batch_layout(module: FlairDataModule) -> None:
    batch = next(iter(module.train_dataloader()))
    assert isinstance(batch, Batch) and len(batch) == 2
    assert set(batch.inputs) == set(INPUTS)
    assert batch.inputs[Modality.AERIAL_RGBI].shape == (2, 3, 64, 64)  # NIR, R, G
    assert batch.inputs[Modality.DEM_ELEV].shape == (2, 2, 64, 64)  # DSM, DSM - DTM
    s2, s1 = batch.inputs[Modality.SENTINEL2_TS], batch.inputs[Modality.SENTINEL1_ASC_TS]
    assert s2.ndim == 5 and s2.shape[0] == 2 and s2.shape[2:] == (10, 2, 2)
    assert s1.ndim == 5 and s1.shape[0] == 2 and s1.shape[2:] == (2, 2, 2)
    for m in INPUTS:
        assert batch.inputs[m].dtype == torch.float32
        assert torch.isfinite(batch.inputs[m]).all()
    assert (
        set(batch.dates)
        == set(batch.pad_masks)
        == {Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS}
    )
    for m, dates in batch.dates.items():
        assert dates.shape == batch.pad_masks[m].shape == batch.inputs[m].shape[:2]
        assert dates.dtype == torch.float32 and batch.pad_masks[m].dtype == torch.bool
        assert (dates.abs() <= 366).all()
        assert not batch.pad_masks[m][:, 0].any()  # every sample keeps at least one date
    assert set(batch.labels) == set(TASKS)
    for task in TASKS:
        assert batch.labels[task].shape == (2, 64, 64)
        assert batch.labels[task].dtype == torch.uint8  # class indices as on disk
    assert int(batch.labels[Task.COSIA].max()) <= 18
    assert int(batch.labels[Task.LPIS].max()) <= 22
    train_ids = {r.patch_id for r in module.catalog.filter(split="train")}
    assert set(batch.patch_ids) <= train_ids


def test_loaders_cover_exactly_their_split(
    module: FlairDataModule, synthetic: SynthSummary
) -> None:
    train_ids = [p for b in module.train_dataloader() for p in b.patch_ids]
    assert sorted(train_ids) == sorted(synthetic.patch_ids["train"])
    for split, loader in (("val", module.val_dataloader()), ("test", module.test_dataloader())):
        ids = [p for b in loader for p in b.patch_ids]
        expected = sorted(r.patch_id for r in module.catalog.filter(split=split))
        assert ids == expected  # catalog order, each patch once
        assert sorted(ids) == sorted(synthetic.patch_ids[split])
    assert list(module.splits) == ["train", "val", "test"]
    predict = [p for b in module.predict_dataloader() for p in b.patch_ids]
    assert predict == sorted(synthetic.patch_ids["test"])


def test_val_is_not_augmented(module: FlairDataModule) -> None:
    """Validation samples are exactly the preprocessed patches."""
    dataset = module.datasets["val"]
    assert dataset.augment is None and module.datasets["train"].augment is not None
    batch = next(iter(module.val_dataloader()))
    sample = dataset[0]
    torch.testing.assert_close(
        batch.inputs[Modality.AERIAL_RGBI][0], sample.inputs[Modality.AERIAL_RGBI]
    )
    assert torch.equal(batch.labels[Task.COSIA][0], sample.labels[Task.COSIA])


def test_two_workers_give_the_same_val_batches(
    module: FlairDataModule, synthetic_root: Path
) -> None:
    parallel = make_module(synthetic_root, 2)
    single = collect(module.val_dataloader())
    multi = collect(parallel.val_dataloader())
    assert parallel.val_dataloader().num_workers == 2
    assert len(single) == len(multi) == 2
    for a, b in zip(single, multi, strict=True):
        assert a.patch_ids == b.patch_ids
        for m in a.inputs:
            assert torch.equal(a.inputs[m], b.inputs[m]), m
        for m in a.dates:
            assert torch.equal(a.dates[m], b.dates[m])
            assert torch.equal(a.pad_masks[m], b.pad_masks[m])
        for t in a.labels:
            assert torch.equal(a.labels[t], b.labels[t])
    train = next(iter(parallel.train_dataloader()))
    assert train.inputs[Modality.AERIAL_RGBI].shape == (2, 3, 64, 64)


def test_empty_split_is_an_error(synthetic_root: Path) -> None:
    catalog = Catalog.scan(synthetic_root).filter(split="train")
    dm = FlairDataModule(catalog, preprocess_config_for([Modality.AERIAL_RGBI]), batch_size=2)
    with pytest.raises(ValueError, match="test split"):
        dm.test_dataloader()
