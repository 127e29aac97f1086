"""PatchDataset: a reader plus a Preprocessor (plus augmentation in training), nothing else.

``PatchSizes`` is the contract between a model and the files it is fed: the patch side in pixels
of each input modality and of the label grid. A dataset given one checks every patch it reads
against it and names the file and the config key that sets the size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from flairkit.config import ModelConfig
from flairkit.data.packed import PackedReader
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import PatchRef, read_patch
from flairkit.io.raster import DataError
from flairkit.io.threads import default_num_threads, thread_pool
from flairkit.modalities import LABEL_MODALITIES, Modality
from flairkit.sample import RawSample, Sample
from flairkit.transforms.augment import FlipRotate, apply_flip_rotate
from flairkit.transforms.preprocess import Preprocessor


@dataclass(frozen=True)
class PatchSizes:
    """The patch sides in pixels a model takes (square patches).

    Attributes:
        img_sizes: per input modality (``model.img_sizes``); the Sentinel-2 mask follows
            Sentinel-2.
        out_px: the label grid (``model.out_px``).
    """

    img_sizes: Mapping[Modality, int]
    out_px: int

    @classmethod
    def of(cls, config: ModelConfig) -> PatchSizes:
        """The sizes a ModelConfig describes."""
        return cls(dict(config.img_sizes), config.out_px)

    def expected(self, modality: Modality) -> tuple[int, str] | None:
        """``(side, config key)`` for a file of this modality; None when the model sets none."""
        if modality is Modality.SENTINEL2_MSK:
            modality = Modality.SENTINEL2_TS  # the mask is read on the Sentinel-2 grid
        if modality in self.img_sizes:
            return self.img_sizes[modality], f"model.img_sizes.{modality.value}"
        if modality in LABEL_MODALITIES:
            return self.out_px, "model.out_px"
        return None

    def check(self, path: str | Path, modality: Modality, width: int, height: int) -> None:
        """Raise a DataError naming the file and the config key when the file is not the size.

        Raises:
            DataError: ``width`` or ``height`` differs from the modality's size.
        """
        expected = self.expected(modality)
        if expected is None or (width, height) == (expected[0], expected[0]):
            return
        side, key = expected
        raise DataError(
            f"{path}: {modality.value} patch is {width} x {height} px, the model takes "
            f"{side} x {side} px ({key}: {side}); set {key} to the data's size, or use "
            "patches of that size"
        )

    def check_sample(self, raw: RawSample) -> None:
        """Check every file of a patch read from disk.

        Raises:
            DataError: the first file whose size differs, with the config key.
        """
        for modality, georef in raw.georefs.items():
            path = raw.paths.get(modality, raw.patch_id)
            self.check(path, modality, georef.width, georef.height)


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
        sizes: the patch sizes of the model the samples feed: a patch of another size is a
            DataError naming its file and the config key (None: no check).
        packed: the reader of a packed dataset (``data.packed.PackedReader``): patches are read
            from its shards instead of the TIFFs (then ``dates`` is not needed).
    """

    def __init__(
        self,
        refs: Sequence[PatchRef],
        preprocess: Preprocessor,
        dates: DatesIndex | None = None,
        augment: FlipRotate | None = None,
        num_threads: int | None = None,
        sizes: PatchSizes | None = None,
        packed: PackedReader | None = None,
    ) -> None:
        self.refs = list(refs)
        self.packed = packed
        self.preprocess = preprocess
        self.dates = dates
        self.augment = augment
        self.num_threads = num_threads
        self.sizes = sizes
        self.modalities = preprocess.required_modalities

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, index: int, num_threads: int | None = None) -> Sample:
        if self.packed is not None:
            raw = self.packed.read(self.refs[index].patch_id, self.modalities)
        else:
            raw = read_patch(self.refs[index], self.modalities, self.dates, num_threads)
        if self.sizes is not None:
            self.sizes.check_sample(raw)
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
