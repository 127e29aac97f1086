"""PatchDataset: a reader plus a Preprocessor (plus augmentation in training), nothing else."""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from flairkit.sample import Sample
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import PatchRef, read_patch
from flairkit.io.threads import default_num_threads, thread_pool
from flairkit.transforms.augment import FlipRotate, apply_flip_rotate
from flairkit.transforms.preprocess import Preprocessor


class PatchDataset(Dataset[Sample]):
    """Patches of the official layout, read and preprocessed on access.

    No file handle outlives a call, so the dataset is safe to copy into DataLoader workers
    (each worker opens its own files through GDAL). A DataLoader fetches a whole batch through
    ``__getitems__``, which reads its samples concurrently (the decode of one large aerial
    file cannot be split, but the files of several samples can be decoded side by side).

    Args:
        refs: the patches.
        preprocess: turns each RawSample into a Sample; decides which files are read.
        dates: acquisition-date tables (required for time-series inputs).
        augment: training-time augmentation, applied after preprocessing.
        num_threads: reader threads per process (default ``FLAIRKIT_READ_THREADS`` or 4).
    """

    def __init__(
        self,
        refs: Sequence[PatchRef],
        preprocess: Preprocessor,
        dates: DatesIndex | None = None,
        augment: FlipRotate | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.refs = list(refs)
        self.preprocess = preprocess
        self.dates = dates
        self.augment = augment
        self.num_threads = num_threads
        self.modalities = preprocess.required_modalities

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, index: int, num_threads: int | None = None) -> Sample:
        raw = read_patch(self.refs[index], self.modalities, self.dates, num_threads)
        return self.preprocess(raw)

    def __getitem__(self, index: int) -> Sample:
        sample = self._load(index, self.num_threads)
        return self.augment(sample) if self.augment is not None else sample

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Load several samples concurrently, in order (used by DataLoader for a batch)."""
        threads = self.num_threads or default_num_threads()
        if threads == 1 or len(indices) == 1:
            return [self[i] for i in indices]
        # Draw augmentations here, in index order, so results do not depend on thread timing.
        draws = [self.augment.draw() if self.augment is not None else None for _ in indices]

        def work(index: int, draw: tuple[bool, bool, int] | None) -> Sample:
            sample = self._load(index, num_threads=1)
            return apply_flip_rotate(sample, *draw) if draw is not None else sample

        return list(thread_pool("samples", threads).map(work, indices, draws))
