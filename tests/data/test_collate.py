"""collate: zero-padding of time series, pad masks, stacked labels (spec section 2.6)."""

from __future__ import annotations

import pytest
import torch

from flairkit.modalities import Modality, Task
from flairkit.sample import Batch, Sample, collate

S2, S1 = Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS
AERIAL = Modality.AERIAL_RGBI


def make_sample(patch_id: str, num_s2: int, num_s1: int, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    return Sample(
        patch_id,
        {
            AERIAL: torch.rand(3, 8, 8, generator=g),
            S2: torch.rand(num_s2, 10, 2, 2, generator=g) + 1,  # never 0, unlike padding
            S1: torch.rand(num_s1, 2, 2, 2, generator=g) + 1,
        },
        {
            S2: torch.arange(1, num_s2 + 1, dtype=torch.float32) * -10,
            S1: torch.arange(1, num_s1 + 1, dtype=torch.float32) * 7,
        },
        {
            Task.COSIA: torch.randint(0, 19, (8, 8), generator=g).to(torch.uint8),
            Task.LPIS: torch.randint(0, 23, (8, 8), generator=g).to(torch.uint8),
        },
        (float(seed), 0.0, seed + 102.4, 102.4),
        "EPSG:2154",
    )


def test_pads_series_to_the_longest_with_zeros() -> None:
    a, b = make_sample("a", 3, 4, 0), make_sample("b", 5, 2, 1)
    batch = collate([a, b])
    assert isinstance(batch, Batch) and len(batch) == 2
    s2 = batch.inputs[S2]
    assert s2.shape == (2, 5, 10, 2, 2) and s2.dtype == torch.float32
    torch.testing.assert_close(s2[0, :3], a.inputs[S2])
    assert (s2[0, 3:] == 0).all()
    torch.testing.assert_close(s2[1], b.inputs[S2])
    assert batch.pad_masks[S2].dtype == torch.bool
    assert batch.pad_masks[S2].tolist() == [
        [False, False, False, True, True],
        [False, False, False, False, False],
    ]
    assert batch.dates[S2].tolist() == [[-10, -20, -30, 0, 0], [-10, -20, -30, -40, -50]]
    # Each series is padded on its own: S1 lengths 4 and 2 -> 4.
    assert batch.inputs[S1].shape == (2, 4, 2, 2, 2)
    assert batch.pad_masks[S1].tolist() == [[False] * 4, [False, False, True, True]]
    assert batch.dates[S1].tolist() == [[7, 14, 21, 28], [7, 14, 0, 0]]
    assert (batch.inputs[S1][1, 2:] == 0).all()
    # Padding is exactly where the values are zero (what U-TAE relies on).
    padded = (batch.inputs[S2] == 0).flatten(2).all(-1)
    assert torch.equal(padded, batch.pad_masks[S2])


def test_mono_temporal_inputs_and_labels_are_stacked() -> None:
    samples = [make_sample(str(i), 3, 3, i) for i in range(3)]
    batch = collate(samples)
    assert batch.inputs[AERIAL].shape == (3, 3, 8, 8)
    torch.testing.assert_close(batch.inputs[AERIAL][2], samples[2].inputs[AERIAL])
    assert AERIAL not in batch.dates and AERIAL not in batch.pad_masks
    for task in (Task.COSIA, Task.LPIS):
        labels = batch.labels[task]
        assert labels.shape == (3, 8, 8)
        assert labels.dtype == torch.uint8  # as on disk (Batch docstring); losses cast
        for i, s in enumerate(samples):
            assert torch.equal(labels[i], s.labels[task])
    assert batch.patch_ids == ["0", "1", "2"]
    assert batch.bounds == [s.bounds for s in samples]
    assert batch.crs == ["EPSG:2154"] * 3
    assert not batch.pad_masks[S2].any()


def test_int64_labels_stay_int64() -> None:
    samples = [make_sample(str(i), 2, 2, i) for i in range(2)]
    for s in samples:
        s.labels[Task.COSIA] = s.labels[Task.COSIA].long() + 1000
    labels = collate(samples).labels[Task.COSIA]
    assert labels.dtype == torch.int64
    assert int(labels.min()) >= 1000


def test_different_modalities_or_tasks_are_an_error() -> None:
    a, b = make_sample("a", 3, 3, 0), make_sample("b", 3, 3, 1)
    del b.inputs[S1]
    with pytest.raises(ValueError, match="different modalities"):
        collate([a, b])
    c = make_sample("c", 3, 3, 2)
    del c.labels[Task.LPIS]
    with pytest.raises(ValueError, match="different modalities or tasks"):
        collate([a, c])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_batch_to_moves_every_tensor() -> None:
    batch = collate([make_sample("a", 2, 3, 0), make_sample("b", 4, 1, 1)]).to("cpu")
    assert batch.inputs[S2].device.type == "cpu"
    assert batch.pad_masks[S1].shape == (2, 3)
