"""Flips and rotations move the same ground to the same place in every modality and date."""

from __future__ import annotations

import itertools

import pytest
import torch

from flairkit.modalities import Modality, Task
from flairkit.sample import Sample
from flairkit.transforms.augment import FlipRotate, apply_flip_rotate

AERIAL_PX, S2_PX, SPOT_PX = 64, 2, 8
NUM_DATES = 3
#: One value per ground quadrant (row, col): the north-west one is the marker.
QUADRANT_VALUE = {(0, 0): 1, (0, 1): 2, (1, 0): 3, (1, 1): 4}


def quadrants(px: int) -> torch.Tensor:
    """(px, px) image whose four quadrants hold 1 (NW), 2 (NE), 3 (SW), 4 (SE)."""
    half = px // 2
    image = torch.empty(px, px)
    for (r, c), v in QUADRANT_VALUE.items():
        image[r * half : (r + 1) * half, c * half : (c + 1) * half] = v
    return image


def marked_sample() -> Sample:
    aerial = torch.stack([quadrants(AERIAL_PX) * (c + 1) for c in range(3)])  # (3, 64, 64)
    spot = quadrants(SPOT_PX)[None].repeat(4, 1, 1)
    # (T, C, 2, 2): date t and channel c scale the pattern, so dates stay distinguishable.
    s2 = torch.stack(
        [
            torch.stack([quadrants(S2_PX) * (10 * t + c + 1) for c in range(10)])
            for t in range(NUM_DATES)
        ]
    )
    s1 = s2[:, :2].clone()
    labels = {
        Task.COSIA: quadrants(AERIAL_PX).to(torch.uint8),
        Task.LPIS: (quadrants(AERIAL_PX) + 10).to(torch.uint8),
    }
    return Sample(
        "D006-2020_UU-S1-1_1-1",
        {
            Modality.AERIAL_RGBI: aerial,
            Modality.SPOT_RGBI: spot,
            Modality.SENTINEL2_TS: s2,
            Modality.SENTINEL1_ASC_TS: s1,
        },
        {
            Modality.SENTINEL2_TS: torch.tensor([-100.0, 0.0, 50.0]),
            Modality.SENTINEL1_ASC_TS: torch.tensor([-10.0, 10.0, 20.0]),
        },
        labels,
        (0.0, 0.0, 102.4, 102.4),
        "EPSG:2154",
    )


def expected_quadrant(hflip: bool, vflip: bool, k: int) -> tuple[int, int]:
    """Where the north-west quadrant goes: left-right flip, up-down flip, then k turns
    counter-clockwise (torch.rot90 from the row axis towards the column axis)."""
    r, c = 0, 0
    if hflip:
        c = 1 - c
    if vflip:
        r = 1 - r
    for _ in range(k):
        r, c = 1 - c, r
    return r, c


def quadrant_grid(image: torch.Tensor) -> torch.Tensor:
    """(2, 2) value of each quadrant of a (H, W) image made of constant quadrants."""
    h, w = image.shape[-2:]
    grid = image[..., :: h // 2, :: w // 2]
    # Each quadrant must still be constant after the transform.
    up = grid.repeat_interleave(h // 2, -2).repeat_interleave(w // 2, -1)
    torch.testing.assert_close(image, up.to(image.dtype))
    return grid


COMBINATIONS = list(itertools.product([False, True], [False, True], [0, 1, 2, 3]))


@pytest.mark.parametrize(("hflip", "vflip", "k"), COMBINATIONS)
def test_marker_ends_in_the_same_corner_everywhere(hflip: bool, vflip: bool, k: int) -> None:
    sample = marked_sample()
    out = apply_flip_rotate(sample, hflip, vflip, k)
    corner = expected_quadrant(hflip, vflip, k)
    reference = quadrant_grid(out.labels[Task.COSIA])
    assert int(reference[corner]) == 1  # the NW marker
    for m, x in out.inputs.items():
        assert x.shape == sample.inputs[m].shape
        grid = quadrant_grid(x)
        # Every channel of every date shows the label's quadrant layout, times its own factor.
        factor = quadrant_grid(sample.inputs[m])[..., :1, :1]
        torch.testing.assert_close(grid, reference.to(grid.dtype) * factor)
    torch.testing.assert_close(quadrant_grid(out.labels[Task.LPIS]), reference + 10)
    assert out.labels[Task.COSIA].dtype == torch.uint8


def test_every_date_is_transformed_identically() -> None:
    sample = marked_sample()
    out = apply_flip_rotate(sample, True, False, 1)
    s2 = out.inputs[Modality.SENTINEL2_TS]
    for t in range(NUM_DATES):
        for c in range(10):
            torch.testing.assert_close(s2[t, c] / (10 * t + c + 1), s2[0, 0])
    # Not the identity: the flip and rotation did move the marker.
    assert not torch.equal(s2, sample.inputs[Modality.SENTINEL2_TS])


def test_dates_and_metadata_unchanged() -> None:
    sample = marked_sample()
    out = apply_flip_rotate(sample, True, True, 3)
    assert out.dates.keys() == sample.dates.keys()
    for m in sample.dates:
        torch.testing.assert_close(out.dates[m], sample.dates[m])
    assert (out.patch_id, out.bounds, out.crs) == (sample.patch_id, sample.bounds, sample.crs)


def test_the_8_distinct_transforms() -> None:
    """16 (hflip, vflip, k) draws give the 8 symmetries of the square, each twice."""
    layouts = {}
    for hflip, vflip, k in COMBINATIONS:
        out = apply_flip_rotate(marked_sample(), hflip, vflip, k)
        key = tuple(quadrant_grid(out.labels[Task.COSIA]).flatten().tolist())
        layouts.setdefault(key, []).append((hflip, vflip, k))
    assert len(layouts) == 8
    assert all(len(v) == 2 for v in layouts.values())


def test_input_is_not_modified() -> None:
    sample = marked_sample()
    before = sample.inputs[Modality.AERIAL_RGBI].clone()
    apply_flip_rotate(sample, True, True, 1)
    torch.testing.assert_close(sample.inputs[Modality.AERIAL_RGBI], before)


def test_seeded_generator_is_deterministic() -> None:
    augment = FlipRotate()
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(1234)
        runs.append([augment(marked_sample(), generator) for _ in range(20)])
    draws = set()
    for a, b in zip(*runs, strict=True):
        for m in a.inputs:
            assert torch.equal(a.inputs[m], b.inputs[m])
        assert torch.equal(a.labels[Task.COSIA], b.labels[Task.COSIA])
        draws.add(tuple(quadrant_grid(a.labels[Task.COSIA]).flatten().tolist()))
    assert len(draws) >= 4  # random, not constant: 20 draws reach several symmetries
    generator = torch.Generator().manual_seed(1234)
    assert [augment.draw(generator) for _ in range(3)] == [
        augment.draw(g) for g in [torch.Generator().manual_seed(1234)] for _ in range(3)
    ]


def test_probabilities() -> None:
    generator = torch.Generator().manual_seed(0)
    assert all(FlipRotate(0, 0, 0).draw(generator) == (False, False, 0) for _ in range(50))
    always = [FlipRotate(1, 1, 1).draw(generator) for _ in range(50)]
    assert all(h and v and k in (1, 2, 3) for h, v, k in always)
    assert {k for _, _, k in always} == {1, 2, 3}
    sample = marked_sample()
    out = FlipRotate(1, 0, 0)(sample, generator)
    assert tuple(quadrant_grid(out.labels[Task.COSIA]).flatten().tolist()) == (2, 1, 4, 3)
