"""Lightning DataModule over a Catalog: train / val / test / predict loaders.

Under several processes (DDP), Lightning gives each loader a ``DistributedSampler``, which pads
the dataset to a multiple of the world size by repeating samples: summed confusion matrices
would count those samples twice. The val / test / predict loaders therefore get an
``UnrepeatedDistributedSampler`` here (each sample on exactly one rank, ranks off by at most
one sample), and the training loader an ``EpochShuffleSampler`` (a seeded permutation per
epoch, each sample on at most one rank, the same batch count on every rank); Lightning leaves
a loader alone when its sampler already is a ``DistributedSampler``. One process keeps
torch's shuffling, seeded by ``seed_everything``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence, Sized

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from flairkit.config import PreprocessConfig
from flairkit.data.datasets import PatchDataset
from flairkit.data.packed import PackedReader, pack_of
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
        seed: the training order's seed over several processes (``EpochShuffleSampler``).
        packed: the reader of a packed dataset (default: the one at the catalog's root, if it
            is a pack; ``data.packed.pack_of``).
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
        seed: int = 0,
        packed: PackedReader | None = None,
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
        self.seed = seed
        self.packed = packed if packed is not None else pack_of(catalog)
        self.dates: DatesIndex | None = None
        self.datasets: dict[str, PatchDataset] = {}

    def _needs_dates(self) -> list[Modality]:
        return [m for m in self.preprocessor.required_modalities if m.spec.is_time_series]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets; date tables are loaded here, once, before workers fork."""
        packed = self.packed
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
        drop = drop_last and len(dataset) > self.batch_size  # never drop a whole split
        sampler: DistributedSampler | None
        if shuffle:
            sampler = _training_sampler(dataset, self.batch_size, drop, self.seed)
            if sampler is not None:  # it drops what does not fit, evenly over the ranks
                shuffle, drop = False, False
        else:
            sampler = _unrepeated_sampler(dataset, split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=drop,
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


def _world() -> tuple[int, int]:
    """(world size, rank); (1, 0) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _training_sampler(
    dataset: PatchDataset, batch_size: int, drop_last: bool, seed: int
) -> EpochShuffleSampler | None:
    """Ours over several processes; None (torch's shuffling) for one.

    Raises:
        ValueError: fewer training samples than processes.
    """
    world, rank = _world()
    if world < 2:
        return None
    if len(dataset) < world:
        raise ValueError(
            f"the train split holds {len(dataset)} patches for {world} processes: "
            "every process needs at least one (use fewer devices)"
        )
    return EpochShuffleSampler(dataset, world, rank, seed, batch_size, drop_last)


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


class EpochShuffleSampler(DistributedSampler):
    """Training order over several processes: every sample at most once per epoch.

    torch's ``DistributedSampler`` (which Lightning injects) evens out the ranks by repeating
    samples, so some patches count twice in an epoch. Here the epoch's order is one seeded
    permutation of the whole split (``seed + epoch``: the same on every rank, another in each
    epoch), cut into consecutive parts, one per rank. Ranks must run the same number of
    batches (the gradient all-reduce waits for every rank), so the parts are as even as the
    batch count allows, and the few samples that do not fit are left out of this epoch only:

    - ``drop_last`` (the benchmark's training loader): each rank gets ``N // world`` samples,
      less the remainder of a batch; fewer than ``world * batch_size`` samples wait for the
      next epoch, as fewer than ``batch_size`` do in one process (a split of fewer than a
      batch per rank is kept whole, as below).
    - otherwise every sample is used, unless an even split would give one rank an extra batch
      of one sample: then the ``N % world`` samples at the end of the permutation wait.

    Lightning keeps a sampler that already is a ``DistributedSampler`` and calls ``set_epoch``
    on it at the start of every epoch (also a resumed one), so the order follows from the seed
    and the epoch number alone.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, seed: int, batch_size: int,
        drop_last: bool,
    ) -> None:  # fmt: skip
        super().__init__(
            dataset,  # type: ignore[arg-type]  # any sized dataset; torch annotates Dataset
            num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last,
        )  # fmt: skip
        self.batch_size = batch_size
        self.counts = rank_counts(len(dataset), num_replicas, batch_size, drop_last)
        self.num_samples = self.counts[rank]
        self.total_size = sum(self.counts)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()  # type: ignore[arg-type]
        start = sum(self.counts[: self.rank])
        return iter(order[start : start + self.counts[self.rank]])

    def __len__(self) -> int:
        return self.num_samples


def rank_counts(num_samples: int, world: int, batch_size: int, drop_last: bool) -> list[int]:
    """Samples per rank in a training epoch: as even as possible, the same number of batches
    on every rank, no sample twice (see ``EpochShuffleSampler``)."""
    base, extra = divmod(num_samples, world)
    if drop_last and base >= batch_size:
        return [base - base % batch_size] * world
    if extra and base % batch_size == 0:  # the extra sample would be a batch of its own
        return [base] * world
    return [base + 1] * extra + [base] * (world - extra)
