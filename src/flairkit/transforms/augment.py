"""Train-only geometric augmentation, identical for every modality of a sample.

Every modality covers the same 102.4 m footprint, so a flip or a 90-degree rotation of each
array about its own centre moves the same ground point to the same place whatever the
pixel size (0.2 m aerial, 10.24 m Sentinel). Applied to the last two axes, so every date of a
time series turns with the images and labels.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from flairkit.sample import Sample


@dataclass(frozen=True)
class FlipRotate:
    """Random horizontal/vertical flips and 90-degree rotations (the benchmark's recipe).

    Attributes:
        p_hflip: probability of a left-right flip.
        p_vflip: probability of an up-down flip.
        p_rot90: probability of a rotation by k x 90 degrees, k uniform in {1, 2, 3}.
    """

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5

    def draw(self, generator: torch.Generator | None = None) -> tuple[bool, bool, int]:
        """Draw (hflip, vflip, k) once for a sample."""
        u = torch.rand(3, generator=generator)
        k = int(torch.randint(1, 4, (1,), generator=generator)) if u[2] < self.p_rot90 else 0
        return bool(u[0] < self.p_hflip), bool(u[1] < self.p_vflip), k

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        """Augment one sample; the same draw applies to inputs, every date and labels."""
        hflip, vflip, k = self.draw(generator)
        return apply_flip_rotate(sample, hflip, vflip, k)


def _transform(x: torch.Tensor, hflip: bool, vflip: bool, k: int) -> torch.Tensor:
    if hflip:
        x = torch.flip(x, dims=(-1,))
    if vflip:
        x = torch.flip(x, dims=(-2,))
    if k:
        x = torch.rot90(x, k, dims=(-2, -1))
    return x.contiguous()


def apply_flip_rotate(sample: Sample, hflip: bool, vflip: bool, k: int) -> Sample:
    """Apply a given flip/rotation to every spatial tensor of a sample (dates unchanged)."""
    if not (hflip or vflip or k):
        return sample
    return replace(
        sample,
        inputs={m: _transform(x, hflip, vflip, k) for m, x in sample.inputs.items()},
        labels={t: _transform(y, hflip, vflip, k) for t, y in sample.labels.items()},
    )
