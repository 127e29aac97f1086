"""PatchDataset: a reader plus a Preprocessor (plus augmentation in training), nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from flairkit.data.sample import Sample
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import PatchRef, read_patch
from flairkit.transforms.augment import FlipRotate
from flairkit.transforms.preprocess import Preprocessor


class PatchDataset(Dataset[Sample]):
    """Patches of the official layout, read and preprocessed on access.

    No file handle outlives a ``__getitem__`` call, so the dataset is safe to copy into
    DataLoader workers (each worker opens its own files through GDAL).

    Args:
        refs: the patches.
        preprocess: turns each RawSample into a Sample; decides which files are read.
        dates: acquisition-date tables (required for time-series inputs).
        augment: training-time augmentation, applied after preprocessing.
    """

    def __init__(
        self,
        refs: Sequence[PatchRef],
        preprocess: Preprocessor,
        dates: DatesIndex | None = None,
        augment: FlipRotate | None = None,
    ) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.dates = dates
        self.augment = augment
        self.modalities = preprocess.required_modalities

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample:
        sample = self.preprocess(read_patch(self.refs[index], self.modalities, self.dates))
        return self.augment(sample) if self.augment is not None else sample
