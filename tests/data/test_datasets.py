"""PatchDataset: batched concurrent fetch gives the same samples as one-by-one access."""

from __future__ import annotations

from pathlib import Path

import torch

from flairkit.config import preprocess_config_for
from flairkit.data.datasets import PatchDataset
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.modalities import Modality, Task
from flairkit.transforms.augment import FlipRotate
from flairkit.transforms.preprocess import Preprocessor

INPUTS = (Modality.AERIAL_RGBI, Modality.SENTINEL2_TS, Modality.DEM_ELEV)


def make_dataset(root: Path, augment: FlipRotate | None, num_threads: int | None) -> PatchDataset:
    catalog = Catalog.scan(root)
    preprocess = Preprocessor(preprocess_config_for(INPUTS, tasks=(Task.COSIA, Task.LPIS)))
    return PatchDataset(catalog.refs, preprocess, DatesIndex(root), augment, num_threads)


def assert_same(a, b) -> None:
    assert a.patch_id == b.patch_id
    for m in a.inputs:
        assert torch.equal(a.inputs[m], b.inputs[m]), (a.patch_id, m)
    for m in a.dates:
        assert torch.equal(a.dates[m], b.dates[m])
    for t in a.labels:
        assert torch.equal(a.labels[t], b.labels[t])


def test_getitems_equals_getitem_in_order(synthetic_root: Path) -> None:
    ds = make_dataset(synthetic_root, None, num_threads=3)
    indices = [5, 0, 3, 7, 1]
    batch = ds.__getitems__(indices)
    assert [s.patch_id for s in batch] == [ds.refs[i].patch_id for i in indices]
    for i, sample in zip(indices, batch, strict=True):
        assert_same(sample, ds[i])


def test_getitems_augmentation_is_deterministic_and_matches_serial(synthetic_root: Path) -> None:
    indices = list(range(8))
    threaded = make_dataset(synthetic_root, FlipRotate(), num_threads=4)
    serial = make_dataset(synthetic_root, FlipRotate(), num_threads=1)
    torch.manual_seed(123)
    a = threaded.__getitems__(indices)
    torch.manual_seed(123)
    b = serial.__getitems__(indices)
    torch.manual_seed(123)
    c = threaded.__getitems__(indices)
    for x, y, z in zip(a, b, c, strict=True):
        assert_same(x, y)
        assert_same(x, z)
    # the draws really augment: some sample differs from its un-augmented version
    plain = make_dataset(synthetic_root, None, num_threads=1)
    assert any(
        not torch.equal(s.labels[Task.COSIA], plain[i].labels[Task.COSIA]) for i, s in enumerate(a)
    )
