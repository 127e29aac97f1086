"""Lightning DataModule over a Catalog: train / val / test / predict loaders.

Under several processes (DDP), Lightning gives each loader a ``DistributedSampler``, which pads
the dataset to a multiple of the world size by repeating samples: summed confusion matrices
would count those samples twice. The val / test / predict loaders therefore get an
``UnrepeatedDistributedSampler`` here (each sample on exactly one rank, ranks off by at most
one sample); Lightning leaves a loader alone when its sampler already is a
``DistributedSampler``. The training loader keeps Lightning's shuffled, seeded sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from flairkit.config import PreprocessConfig
from flairkit.data.datasets import PatchDataset
from flairkit.data.packed import PackedReader, is_packed
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.modalities import Modality
from flairkit.sample import collate
from flairkit.transforms.augment import FlipRotate
from flairkit.transforms.preprocess import Preprocessor

log = logging.getLogger(__name__)


class FlairDataModule(L.LightningDataModule):
    """Loaders for the splits of a catalog.

    Args:
        catalog: patches with their split (``Catalog.scan(root)`` uses the official split).
        preprocess: preparation of inputs and labels (shared by every split).
        batch_size: samples per batch.
        num_workers: loader processes; each opens its own files.
        augment: training augmentation (default: the benchmark's flips and rotations);
            ``None`` disables it.
        predict_split: split used by ``predict_dataloader``.
        drop_last: drop the last incomplete training batch (as the benchmark does: a batch of
            one sample breaks BatchNorm on 1x1 maps), unless the split is smaller than a batch.
        test_split: split used by ``test_dataloader`` (``val`` scores the validation set
            with the test loop).
    """

    def __init__(
        self,
        catalog: Catalog,
        preprocess: PreprocessConfig,
        batch_size: int = 4,
        num_workers: int = 0,
        augment: FlipRotate | None = FlipRotate(),
        predict_split: str = "test",
        drop_last: bool = True,
        test_split: str = "test",
    ) -> None:
        super().__init__()
        self.catalog = catalog
        self.preprocess_config = preprocess
        self.preprocessor = Preprocessor(preprocess)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.predict_split = predict_split
        self.drop_last = drop_last
        self.test_split = test_split
        self.dates: DatesIndex | None = None
        self.datasets: dict[str, PatchDataset] = {}

    def _needs_dates(self) -> list[Modality]:
        return [m for m in self.preprocessor.required_modalities if m.spec.is_time_series]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets; date tables are loaded here, once, before workers fork."""
        packed = (
            PackedReader(self.catalog.root)
            if self.catalog.root is not None and is_packed(self.catalog.root)
            else None
        )
        if packed is None and self.dates is None and self._needs_dates():
            if self.catalog.root is None:
                raise ValueError("time-series inputs need the dataset root for the date tables")
            ids = [r.patch_id for r in self.catalog.refs]
            self.dates = DatesIndex(self.catalog.root, patch_ids=ids).load(self._needs_dates())
        for split in ("train", "val", "test"):
            if split in self.datasets:
                continue
            refs = self.catalog.filter(split=split).refs
            augment = self.augment if split == "train" else None
            self.datasets[split] = PatchDataset(
                refs, self.preprocessor, self.dates, augment, packed=packed
            )
            log.info("%s: %d patches", split, len(refs))

    def _loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise ValueError(f"the {split} split of {self.catalog.root} holds no patch")
        # Training (shuffle) is left to Lightning, which injects a seeded DistributedSampler.
        sampler = None if shuffle else _unrepeated_sampler(dataset, split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=drop_last and len(dataset) > self.batch_size,  # never drop a whole split
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader("train", shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in catalog order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Batches of ``test_split``, in catalog order."""
        return self._loader(self.test_split, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_split``, in catalog order."""
        return self._loader(self.predict_split, shuffle=False)

    @property
    def splits(self) -> Sequence[str]:
        """Splits with at least one patch."""
        return [s for s in ("train", "val", "test") if self.catalog.filter(split=s).refs]


def _unrepeated_sampler(dataset: Dataset, split: str) -> UnrepeatedDistributedSampler | None:
    """Each sample on exactly one rank when several processes run; None for one process.

    The loaders are built by Lightning after it starts the process group, so the world size
    is known here.

    Raises:
        ValueError: fewer samples than processes: a rank without a batch would leave the
            others waiting in the epoch-end reductions.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    # torch's Dataset declares no __len__; map-style datasets (all of ours) have one
    num_samples = len(dataset)  # type: ignore[arg-type]
    if num_samples < world:
        raise ValueError(
            f"the {split} split holds {num_samples} patches for {world} processes: "
            "every process needs at least one (use fewer devices)"
        )
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
