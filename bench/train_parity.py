"""Learning parity: flairkit vs the unmodified official FLAIR-HUB code, same data, same recipe.

Prints one JSON line. For each preset, seed and tool it trains from scratch on the same synthetic
learnable set, keeps the best checkpoint by validation score, predicts the validation and the test
split and scores both tools' predictions the same way: a confusion matrix of the predicted map
against the label file's first band (values outside the class range dropped), scored by
``flairkit.metrics.scores`` with the classes of weight 0 left out (LPIS 21, 22; COSIA 15-18: the
benchmark's formula). Rows also give the loss curve's key points (mean train loss of the first,
middle and last epoch) and the epoch of the kept checkpoint; the summary gives per preset the
means and standard deviations over seeds, flairkit / official for test mIoU and OA, and whether
flairkit's mean is at least the official's within one (official) standard deviation.

Presets (``--presets``):
  LPIS-F    U-TAE on Sentinel-2 alone, LPIS level 1; real patch sizes (S2 10 px).
  LC-A-r18  aerial alone (NIR, R, G), COSIA, the small ResNet-18 U-Net (``arch:
            resnet18-unet`` in both tools) instead of Swin-B; 128-px patches (25.6 m).
  LC-D-r18  aerial + Sentinel-2 with the benchmark's fusion, COSIA, ResNet-18 U-Net + U-TAE;
            128-px patches (S2 2 px). One auxiliary head per input, as the published LC-D;
            neither tool trains them (flairkit's loss.aux_weight 0; the official auxiliary
            loss is always 0).
The 128-px data keeps a 40-epoch CPU run in minutes (a 512-px ResNet-18 step costs ~15 s here).

Data (``flairkit synth --seed 0``, real layout; COSIA visible in the aerial image, crop types
only in their Sentinel-2 phenology): domain-years D006-2020 and D012-2019, 5 ROIs of 2 x 4
patches each, at 512 px (``data/``) or 128 px (``data128/``). Train: the 32 patches of the first
four D006-2020 ROIs; val: the 8 of its fifth ROI; test: 8 patches of D012-2019 (another
department-year). The lists are written as official CSV lists (absolute paths) both tools read.

Recipe (both tools): ``--epochs`` epochs (40), batch 8, AdamW lr 5e-3, weight decay 0.01, betas
(0.9, 0.999), one-cycle per step with 10 % warm-up and lr / 1000 at the start, the weight-0
classes above, no augmentation, no modality dropout, no early stopping (patience = epochs), fp32
on the CPU, the S2 cloud/snow date filter with the benchmark thresholds, raw (unnormalised) S2,
the aerial normalisation of the benchmark. Each run in a fresh subprocess.

How each tool is run:
  flairkit  ``flairkit.training.run.fit`` / ``evaluate`` on ``configs/<preset>.yaml`` with
            dotted overrides (data.root = the CSV folder, data.split = csv, arch, patch sizes);
            val and test scores are its own confusion matrices scored by ``flairkit.metrics``.
  official  the functions ``flair_hub.main.main`` calls (``get_datasets``, ``build_data_module``,
            ``training_stage``) on a config assembled from the repository's
            ``configs/train/*.yaml`` with only keys changed (inputs, aux_loss, arch, labels,
            weights, paths, hyperparameters, CPU); the best checkpoint is the one
            ``training_stage`` returns (its own criterion: the support-weighted Jaccard index
            over all classes); predictions come from its ``SegmentationTask.predict_step`` over
            its own predict loader, once with the val list, once with the test list. smp's
            ``create_model`` is wrapped so it never downloads ImageNet weights (random init, as
            flairkit's). Nothing of the official code is modified. Its imports need, outside
            the venv, segmentation-models-pytorch 0.4.0 and what the official modules import
            that the venv lacks; on 2026-12-04 this sufficed: ``.venv/bin/pip install --target
            /tmp/smp040 --no-deps segmentation-models-pytorch==0.4.0 efficientnet-pytorch
            pretrainedmodels scikit-image lazy_loader scikit-learn scipy joblib threadpoolctl
            cloudpickle narwhals pyarrow`` (the official subprocess gets ``--smp-path``, default
            /tmp/smp040, and ``--official-src`` on its PYTHONPATH).

A/B switches (one difference at a time; each adds a suffix to the run's name):
  --official-monitor val_loss   the official checkpoint criterion becomes the validation loss
  --flairkit-set KEY=VALUE ...  dotted overrides of the flairkit runs (loss.aux_weight=1.5,
                                train.winograd=false, ...)
  --flairkit-variant reference-groupnorm
                                the L-TAE input GroupNorm counts padded dates, as the reference
  --flairkit-variant torch-init the decoders keep PyTorch's default initialisation
                                (flairkit's until 2026-12-04)
  --modality-dropout P          both tools configured with modality dropout P on every input

Usage:
  python bench/train_parity.py [--official-src /tmp/official/src] [--presets LPIS-F LC-A-r18
      LC-D-r18] [--seeds 1 2 3] [--epochs 40] [--workdir /tmp/train_parity] [--fresh] [A/B]
Without --official-src only flairkit runs. The official ``src`` folder comes from an
IGNF/FLAIR-HUB checkout (e.g. ``git -C <bare repo> archive HEAD src configs | tar -x -C
/tmp/official``). Each finished run saves its row as ``<workdir>/runs/<preset>_<tool>_s<seed>_
e<epochs>[suffix].json`` and a later call reuses it (``--fresh`` reruns); the logs sit beside it.

Measured on a 2-core CPU (often shared by two runs, so fit times are not comparable between
rows; ``bench/train.py`` times steps), 40 epochs, test mIoU / OA by the same formula; ``summary``
of the JSON line. 2026-12-04, both tools in one environment, seeds 1-3 (LC-D-r18: 1-6).
Package versions move a seed's numbers between days, so compare same-day rows:

| preset   | flairkit                          | official                          | f / o mIoU |
|----------|-----------------------------------|-----------------------------------|------------|
| LPIS-F   | 7.16 +- 5.16 / 40.5 +- 25.5       | 4.42 +- 3.93 / 28.1 +- 24.7       | 1.62       |
| LC-A-r18 | 65.06 +- 2.67 / 97.74 +- 0.58     | 66.05 +- 1.21 / 97.82 +- 0.32     | 0.99       |
| LC-D-r18 | 58.59 +- 5.02 / 95.56 +- 1.68     | 57.30 +- 3.78 / 95.35 +- 1.44     | 1.02       |

Per seed (val mIoU / OA, test mIoU / OA, kept epoch):

  LPIS-F    flairkit  8.98/52.5 10.09/56.6 30 · 8.35/47.9 10.19/53.7 31 · 6.23/44.0  1.21/11.1 10
            official  7.56/47.8  7.51/46.3 23 · 0.00/ 0.0  0.00/ 0.0  0 · 7.93/47.9  5.75/38.0 26
  LC-A-r18  flairkit  52.08/96.1 62.07/97.1 31 · 54.61/96.7 67.18/98.2 35 · 52.56/96.4 65.94/97.9 39
            official  53.14/96.1 64.84/97.5 39 · 53.25/95.9 66.05/97.8 39 · 54.59/96.3 67.25/98.2 35
  LC-D-r18  flairkit  49.58/95.1 58.34/95.5 37 · 50.20/95.4 59.48/96.1 37 · 49.93/95.2 62.81/97.0 39
                      53.63/96.2 64.89/97.4 37 · 46.44/93.9 54.61/94.4 33 · 44.62/93.1 51.41/92.9 29
            official  49.68/95.2 59.15/96.3 38 · 49.87/94.5 61.56/96.5 33 · 49.48/95.4 57.98/96.0 29
                      49.04/95.2 59.35/96.3 39 · 43.65/92.9 51.15/93.1 33 · 48.63/95.0 54.58/93.9 38
            last-epoch train loss: flairkit 0.107-0.151, official 0.140-0.174.

flairkit's decoders start as the reference's smp starts them since 2026-12-04
(``init_like_reference``). Before, with PyTorch's default initialisation (now
``--flairkit-variant torch-init``), LC-D-r18 over the same six seeds scored 53.78 +- 3.72 /
93.63 +- 1.60 (58.55, 58.03, 49.43, 53.27, 52.25, 51.17; last train loss 0.16-0.20), below the
official code on 5 of 6 seeds; LC-A-r18 scored 65.97 +- 1.82 / 97.90 (63.97, 67.52, 66.41), 0.9
above the new default, a third of the spread. The rows of 2026-12-03 (older packages): LPIS-F
flairkit 7.75 +- 3.80 / 46.7 +- 17.3, official 2.28 +- 2.22 / 16.7 +- 14.5; LC-A-r18 flairkit
65.84 +- 2.55 / 97.90 +- 0.45, official 65.62 +- 1.17 / 97.80 +- 0.23; official LC-D-r18 seeds
1-3: 53.01, 56.48, 62.72.

For scale on LPIS-F: only 6 of the 21 scored classes occur (mIoU at most 28.6), and always
predicting the most frequent one scores test 1.15 / 24.1 (val 1.10 / 23.0). The official code
keeps an early LPIS-F checkpoint although its loss keeps falling: it selects by torchmetrics'
support-weighted Jaccard over all 23 classes, where the background class 22 (half the pixels,
weight 0 in the loss) dominates; its seed-2 run keeps epoch 0, which predicts no scored class.
flairkit selects by the benchmark mIoU without 21 and 22. Train losses at the last epoch are
level (flairkit 1.06 / 1.00 / 1.06, official 1.02 / 0.99 / 1.04). A/B on 2026-12-03
(``--official-monitor val_loss``), seed 2: the official code then scores val 7.01 / 41.6, test
9.49 / 53.7, level with flairkit's 7.79 / 47.8, 9.76 / 53.1 (its "best epoch" column reads its
val_miou curve, not the kept checkpoint).

A/B of flairkit's deliberate differences (flairkit runs only, test mIoU / OA):
  --flairkit-variant reference-groupnorm, LPIS-F, seeds 1-3 (2026-12-03): 6.44/38.0, 8.77/48.5, 5.70/38.0,
      mean 6.97 +- 1.60 / 41.5 +- 6.1, against 7.75 +- 3.80 / 46.7 +- 17.3 with flairkit's
      masked statistics (kept).
  The auxiliary loss applied (weight 1.5, flairkit's default until 2026-12-04), LC-D-r18,
      seeds 1-3, PyTorch's decoder init: 59.24/96.3, 49.92/91.9, 50.99/92.6, mean 53.38 +- 5.10 / 93.57 +- 2.35.
      Without it: heads not built (--flairkit-set model.aux=false) 55.36/95.0, 63.49/96.9,
      59.70/96.2, mean 59.52 +- 4.07 / 96.05 +- 0.96; heads built but not trained (the
      default since, loss.aux_weight 0; other random init) 55.34 +- 5.12 / 94.42 +- 2.12 (the
      table). Six seeds without the loss average 57.43 against 53.38 with it, so it is off.
  --modality-dropout 0.2 (both tools; an A/B of the dropout rules, not of flairkit alone),
      LC-D-r18, seeds 1-3, val / test mIoU / OA and kept epoch:
        flairkit  34.48/88.8 41.22/89.3 36 · 40.22/90.6 46.45/90.9 28 · 41.23/91.3 47.84/91.1 38
        official  32.09/87.1 36.62/86.6 39 · 28.51/83.9 30.82/85.2 26 · 23.96/83.6 27.75/82.7 36
      test means 45.17 +- 3.49 / 90.43 +- 0.97 against 31.73 +- 4.50 / 84.83 +- 1.97 (ratio
      1.42): flairkit's per-sample zeroing at the configured rate beats the reference's
      whole-batch random maps at a rate drawn from U(0, 1) each step; kept.
  --flairkit-set train.winograd=false, LC-A-r18, seeds 1-3 (same session as the default's
      rerun 63.97/97.6, 67.52/98.2, 66.41/97.9): 64.29/97.6, 67.63/98.3, 66.89/98.0, mean
      66.27 +- 1.75 / 97.97 +- 0.34 against 65.97 +- 1.82 / 97.90 +- 0.31 with Winograd; a
      sixth of the seed spread, kept.
Earlier rows (same data): LPIS-F at 10 epochs (40 steps) left both tools near the constant
guess (flairkit test 3.52 +- 1.75 / 24.5 +- 8.6, official 3.36 +- 0.67 / 25.9 +- 1.8); at 20
epochs, seed 1: flairkit 7.91 / 43.9, official 4.68 / 30.5.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LPIS_TASK = "ALL_LABEL-LPIS"
COSIA_TASK = "AERIAL_LABEL-COSIA"
TRAIN_DOMAIN, TEST_DOMAIN = "D006-2020", "D012-2019"


@dataclass(frozen=True)
class Parity:
    """One benchmarked set-up: flairkit config + overrides, and the official keys to match.

    Attributes:
        config: flairkit preset config under ``configs/``.
        task, classes, ignored: the label set, its class count and the classes left out of the
            loss (weight 0) and of the scores (the benchmark's).
        inputs: the official ``modalities.inputs`` switched on (everything else off).
        aerial_px: aerial side of the synthetic patches (512 real; smaller keeps CPU runs short).
        arch: the image encoder-decoder (both tools' ``arch`` string), None without an image.
        aux: inputs with an auxiliary head (both tools build them; neither trains them by
            default: flairkit's ``loss.aux_weight`` is 0, the official code computes the loss
            as 0).
    """

    config: str
    task: str
    classes: int
    ignored: tuple[int, ...]
    inputs: tuple[str, ...]
    aerial_px: int = 512
    arch: str | None = None
    aux: tuple[str, ...] = ()


PARITIES: dict[str, Parity] = {
    "LPIS-F": Parity("LPIS-F", LPIS_TASK, 23, (21, 22), ("SENTINEL2_TS",)),
    # aerial only, small backbone: LC-A with a ResNet-18 U-Net, 128-px patches (25.6 m)
    "LC-A-r18": Parity(
        "LC-A", COSIA_TASK, 19, (15, 16, 17, 18), ("AERIAL_RGBI",), 128, "resnet18-unet"
    ),
    # aerial + Sentinel-2 with fusion: LC-D with a ResNet-18 U-Net; S2 is 2 px at 128 px
    "LC-D-r18": Parity(
        "LC-D",
        COSIA_TASK,
        19,
        (15, 16, 17, 18),
        ("AERIAL_RGBI", "SENTINEL2_TS"),
        128,
        "resnet18-unet",
        ("AERIAL_RGBI", "SENTINEL2_TS"),
    ),  # fmt: skip
}

#: The recipe shared by both tools (the issue's).
RECIPE: dict[str, Any] = {
    "batch_size": 8,
    "lr": 5e-3,
    "weight_decay": 0.01,
    "warmup_fraction": 0.1,
    "div_factor": 1000.0,
}


# -- data ------------------------------------------------------------------------------------
def data_dirs(workdir: Path, aerial_px: int) -> tuple[Path, Path]:
    """The dataset root and the CSV-list folder for patches of ``aerial_px``."""
    tag = "" if aerial_px == 512 else str(aerial_px)
    return workdir / f"data{tag}", workdir / f"lists{tag}"


def make_data(workdir: Path, aerial_px: int = 512) -> Path:
    """Synthesise the dataset once and write the three official CSV lists; returns their folder."""
    root, lists = data_dirs(workdir, aerial_px)
    if not (root / "GLOBAL_ALL_MTD").is_dir():
        cmd = [
            *[sys.executable, "-m", "flairkit.cli", "synth", str(root)],
            *["--seed", "0", "--domains", TRAIN_DOMAIN, TEST_DOMAIN],
            *["--aerial-px", str(aerial_px)],
            *["--rois", "5", "--patches-per-roi", "2", "4"],
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows: list[dict[str, str]] = []
    for path in sorted((root / "csv").glob("*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                row = {
                    k: (str((path.parent / v).resolve()) if k != "patch_id" and v else v)
                    for k, v in row.items()
                }
                rows.append(row)
    rows.sort(key=lambda r: r["patch_id"])

    def roi(r: dict[str, str]) -> str:
        return r["patch_id"].rsplit("_", 1)[0]

    train_rois = sorted({roi(r) for r in rows if r["patch_id"].startswith(TRAIN_DOMAIN)})
    test_rois = sorted({roi(r) for r in rows if r["patch_id"].startswith(TEST_DOMAIN)})
    splits = {
        "TRAIN": [r for r in rows if roi(r) in train_rois[:4]],
        "VALID": [r for r in rows if roi(r) == train_rois[4]],
        "TEST": [r for r in rows if roi(r) == test_rois[0]],
    }
    assert [len(v) for v in splits.values()] == [32, 8, 8], [len(v) for v in splits.values()]
    lists.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        with (lists / f"PARITY_{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(part[0]))
            writer.writeheader()
            writer.writerows(part)
    return lists


def score(matrix: Any, ignored: tuple[int, ...]) -> dict[str, float]:
    """The benchmark's mIoU and OA (x100) of a confusion matrix, ``ignored`` classes left out."""
    from flairkit.metrics import scores

    s = scores(matrix, ignored)
    return {"miou": round(s["miou"], 2), "oa": round(s["oa"], 2)}


def curve_points(losses: list[float]) -> dict[str, float | None]:
    """First, middle and last epoch's mean train loss."""
    if not losses:
        return {"first": None, "middle": None, "last": None}
    return {
        "first": round(losses[0], 4),
        "middle": round(losses[len(losses) // 2], 4),
        "last": round(losses[-1], 4),
    }


# -- flairkit --------------------------------------------------------------------------------
def reference_groupnorm() -> None:
    """A/B variant: the L-TAE input GroupNorm takes its statistics over padded dates too, as
    the reference's does (flairkit's leaves them out; the padded features are 0 in both)."""
    from flairkit.models import utae

    plain = utae.MaskedGroupNorm.forward

    def forward(self: Any, x: Any, pad_mask: Any = None) -> Any:
        return plain(self, x, None)

    utae.MaskedGroupNorm.forward = forward  # type: ignore[method-assign]


def torch_init() -> None:
    """A/B variant: the main decoders keep PyTorch's default initialisation (uniform within
    1 / sqrt(fan-in), BatchNorm 1 / 0), flairkit's default until 2026-12-04; it now starts them
    as the reference's segmentation-models-pytorch does (``init_like_reference``)."""
    from torch import nn

    from flairkit.training import task

    plain = task.build_model

    def build(*args: Any, **kwargs: Any) -> Any:
        model = plain(*args, **kwargs)
        for decoder in model.heads.values():
            for m in decoder.modules():
                if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
                    m.reset_parameters()
        return model

    task.build_model = build  # type: ignore[attr-defined]


#: ``--flairkit-variant``: code-level A/B switches (config-level ones go through --flairkit-set).
VARIANTS = {"reference-groupnorm": reference_groupnorm, "torch-init": torch_init}


def run_flairkit(
    parity: Parity,
    seed: int,
    epochs: int,
    lists: Path,
    out: Path,
    extra: list[str] | None = None,
    variant: str | None = None,
) -> dict:
    """Train and score one flairkit run in this process (``extra``: dotted overrides and
    ``variant``: a code switch of ``VARIANTS``, for A/B runs)."""
    import lightning as L
    import torch

    from flairkit.config import load_run_config
    from flairkit.modalities import Modality
    from flairkit.synth import synthetic_px_by_modality
    from flairkit.training.run import evaluate, fit

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if variant:
        VARIANTS[variant]()

    class EpochLoss(L.Callback):
        """Mean of the batch losses per training epoch (what the official code logs)."""

        def __init__(self) -> None:
            self.sums: list[float] = []
            self.counts: list[int] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.sums.append(0.0)
            self.counts.append(0)

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.sums[-1] += float(loss)
            self.counts[-1] += 1

    b = RECIPE
    overrides = [
        f"data.root={lists}",
        "data.split=csv",
        f"data.batch_size={b['batch_size']}",
        "data.num_workers=0",
        "data.augment=false",
        f"train.max_epochs={epochs}",
        f"train.early_stopping_patience={epochs}",
        f"train.seed={seed}",
        "train.accelerator=cpu",
        "train.devices=1",
        f"train.output_dir={out}",
        "optim.optimizer=adamw",
        f"optim.lr={b['lr']}",
        f"optim.weight_decay={b['weight_decay']}",
        "optim.scheduler=one_cycle",
        f"optim.warmup_fraction={b['warmup_fraction']}",
        f"optim.div_factor={b['div_factor']}",
    ]
    if parity.arch:
        overrides.append(f"model.arch={parity.arch}")
    px = synthetic_px_by_modality(parity.aerial_px)
    overrides += [f"model.img_sizes.{m}={px[Modality(m)]}" for m in parity.inputs]
    overrides += extra or []
    cfg = load_run_config(REPO / "configs" / f"{parity.config}.yaml", overrides)
    curve = EpochLoss()
    start = time.perf_counter()
    result = fit(cfg, resume=False, callbacks=[curve])
    fit_s = time.perf_counter() - start
    losses = [s / c for s, c in zip(curve.sums, curve.counts, strict=True) if c]
    row: dict[str, Any] = {"fit_s": round(fit_s, 1), "loss": curve_points(losses)}
    row["best_epoch"] = _best_epoch(result.best_checkpoint)
    for split in ("val", "test"):
        res = evaluate(cfg, result.model_path, split)
        s = res[parity.task]["scores"]
        row[split] = {"miou": round(s["miou"], 2), "oa": round(s["oa"], 2)}
    return row


def _best_epoch(path: Path) -> int | None:
    """The epoch in the name of flairkit's best checkpoint (``best-epoch=NNN.ckpt``)."""
    match = re.search(r"epoch=(\d+)", path.name)
    return int(match.group(1)) if match else None


# -- official --------------------------------------------------------------------------------
def official_config(
    parity: Parity,
    src: Path,
    seed: int,
    epochs: int,
    lists: Path,
    out: Path,
    monitor: str | None = None,
    dropout: float = 0.0,
) -> dict:
    """The repository's training configs with the recipe's keys set (nothing else changed);
    ``monitor`` ``val_loss`` makes its checkpoint criterion the validation loss and ``dropout``
    is every input's ``modality_dropout`` (A/B runs)."""
    import yaml

    config: dict[str, Any] = {}
    for part in ("modalities", "models", "supervision", "task"):
        with open(src.parent / "configs" / "train" / f"config_{part}.yaml") as f:
            config.update(yaml.safe_load(f))
    mods = config["modalities"]
    for key in mods["inputs"]:
        mods["inputs"][key] = key in parity.inputs
    for key in mods["aux_loss"]:
        mods["aux_loss"][key] = key in parity.aux
    for key in mods["modality_dropout"]:
        mods["modality_dropout"][key] = dropout if key in parity.inputs else 0
    mods["pre_processings"]["use_augmentation"] = False
    if parity.arch:
        config["models"]["monotemp_model"]["arch"] = parity.arch
    config["labels"] = [parity.task]
    labels = config["labels_configs"][parity.task]
    labels["value_weights"]["default_exceptions"] = {c: 0 for c in parity.ignored}
    config["paths"].update(
        out_folder=str(out.parent),
        out_model_name=out.name,
        train_csv=str(lists / "PARITY_TRAIN.csv"),
        val_csv=str(lists / "PARITY_VALID.csv"),
        test_csv=str(lists / "PARITY_TEST.csv"),
        global_mtd_folder=str(data_dirs(lists.parent, parity.aerial_px)[0] / "GLOBAL_ALL_MTD")
        + "/",
    )
    config["tasks"].update(train=True, predict=True, write_files=False, metrics_only=False)
    b = RECIPE
    config["hyperparams"].update(
        num_epochs=epochs,
        batch_size=b["batch_size"],
        seed=seed,
        learning_rate=b["lr"],
        optimizer="adamw",
        optim_weight_decay=b["weight_decay"],
        optim_betas=[0.9, 0.999],
        scheduler="one_cycle_lr",
        warmup_fraction=b["warmup_fraction"],
    )
    config["hardware"].update(accelerator="cpu", gpus_per_node=1, num_nodes=1, num_workers=0)
    config["saving"].update(
        ckpt_earlystopping_patience=epochs,
        cp_csv_and_conf_to_output=False,
        progress_rate=1000,  # its bar is always added; False for it is refused by Lightning
        ckpt_verbose=False,
    )
    if monitor == "val_loss":
        config["saving"].update(ckpt_monitor="val_loss", ckpt_monitor_mode="min")
    return config


def run_official(
    parity: Parity,
    seed: int,
    epochs: int,
    lists: Path,
    out: Path,
    src: Path,
    monitor: str | None = None,
    dropout: float = 0.0,
) -> dict:
    """Train with the official functions, predict val and test with its model, score here."""
    import numpy as np
    import rasterio

    # The official code and smp 0.4.0 live outside the venv (PYTHONPATH of this subprocess
    # only), so mypy cannot see them: hence the import-not-found ignores.
    import segmentation_models_pytorch as smp  # type: ignore[import-not-found]
    import torch

    sys.path.insert(0, str(src))
    from flair_hub.data.utils_data.paths import get_datasets  # type: ignore[import-not-found]
    from flair_hub.tasks.module_setup import (  # type: ignore[import-not-found]
        build_data_module,
        build_segmentation_module,
        get_input_img_sizes,
    )
    from flair_hub.tasks.stages import training_stage  # type: ignore[import-not-found]

    from flairkit.metrics import confusion_matrix

    create = smp.create_model

    def no_download(*args: Any, **kwargs: Any) -> Any:  # random init, as flairkit's
        kwargs["encoder_weights"] = None
        return create(*args, **kwargs)

    smp.create_model = no_download
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = official_config(parity, src, seed, epochs, lists, out, monitor, dropout)
    out.mkdir(parents=True, exist_ok=True)
    dict_train, dict_val, dict_test = get_datasets(config)
    dm = build_data_module(config, dict_train=dict_train, dict_val=dict_val, dict_test=dict_test)
    start = time.perf_counter()
    state = training_stage(config, dm, out)
    fit_s = time.perf_counter() - start
    row: dict[str, Any] = {"fit_s": round(fit_s, 1)}
    row["loss"], row["best_epoch"] = _official_curve(out)
    for split, paths in (("val", dict_val), ("test", dict_test)):
        split_dm = build_data_module(config, dict_train=None, dict_val=None, dict_test=paths)
        sizes = get_input_img_sizes(config, split_dm, stage="predict")
        module = build_segmentation_module(config, sizes, stage="predict")
        # strict=False as its predict_stage (the training module's loss weights are extra);
        # a missing model weight would make the scores meaningless: refuse it.
        missing = module.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise RuntimeError(f"best state lacks {len(missing)} model weights: {missing[:3]}")
        module.eval()
        matrix = torch.zeros(parity.classes, parity.classes, dtype=torch.long)
        label_paths = paths[parity.task]
        with torch.no_grad():
            for i, batch in enumerate(split_dm.predict_dataloader()):
                pred = module.predict_step(batch, i)[f"preds_{parity.task}"][0]
                with rasterio.open(label_paths[i]) as f:
                    target = torch.from_numpy(f.read(1).astype(np.int64))
                matrix += confusion_matrix(target, pred.long(), parity.classes)
        row[split] = score(matrix, parity.ignored)
    return row


def _official_curve(out: Path) -> tuple[dict, int | None]:
    """Per-epoch train loss from the official TensorBoard log; epoch of the best val_miou."""
    # tensorboard ships no type information (no py.typed, no stubs)
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    events = sorted(out.glob("tensorboard_logs_*/version_*"))
    if not events:
        return curve_points([]), None
    acc = EventAccumulator(str(events[-1]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    losses = [e.value for e in acc.Scalars("train_loss")] if "train_loss" in tags else []
    best = None
    if "val_miou" in tags:
        vals = [e.value for e in acc.Scalars("val_miou")][: len(losses) or None]
        best = int(max(range(len(vals)), key=lambda k: vals[k])) if vals else None
    return curve_points(losses), best


# -- driver ----------------------------------------------------------------------------------
def run_isolated(tool: str, preset: str, seed: int, args: argparse.Namespace, lists: Path) -> dict:
    """One run in a fresh subprocess; its last stdout line is the row."""
    name = f"{preset}_{tool}_s{seed}_e{args.epochs}"
    if tool == "official" and args.official_monitor:
        name += f"_m{args.official_monitor}"
    if tool == "flairkit" and args.flairkit_set:
        name += "_" + "_".join(re.sub(r"[^A-Za-z0-9.=-]", "", kv) for kv in args.flairkit_set)
    if tool == "flairkit" and args.flairkit_variant:
        name += f"_v{args.flairkit_variant}"
    if args.modality_dropout:
        name += f"_d{args.modality_dropout:g}"
    out = Path(args.workdir) / "runs" / name
    cmd = [
        *[sys.executable, __file__, "--one", tool, "--presets", preset],
        *["--seeds", str(seed), "--epochs", str(args.epochs), "--workdir", args.workdir],
        *["--out", str(out)],
    ]
    saved = out.parent / f"{out.name}.json"
    if saved.is_file() and not args.fresh:  # a finished run of the same recipe: reuse its row
        return dict(json.loads(saved.read_text()))
    env = dict(os.environ)
    for kv in args.flairkit_set if tool == "flairkit" else []:
        cmd += ["--flairkit-set", kv]
    if tool == "flairkit" and args.flairkit_variant:
        cmd += ["--flairkit-variant", args.flairkit_variant]
    if args.modality_dropout:
        cmd += ["--modality-dropout", str(args.modality_dropout)]
    if tool == "official":
        cmd += ["--official-src", args.official_src]
        if args.official_monitor:
            cmd += ["--official-monitor", args.official_monitor]
        extra = [p for p in (args.smp_path,) if p and Path(p).is_dir()]
        env["PYTHONPATH"] = os.pathsep.join(
            [*extra, args.official_src, *filter(None, [env.get("PYTHONPATH")])]
        )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = Path(args.workdir) / "runs" / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": f"exit {proc.returncode}, see {log}: {proc.stderr.strip()[-300:]}"}
    saved.write_text(lines[-1])
    return dict(json.loads(lines[-1]))


def mean_std(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return {"mean": round(m, 3), "std": round(math.sqrt(var), 3)}


def summarise(rows: list[dict]) -> dict:
    """Per preset: means over seeds per tool, and flairkit / official (per-seed ratios)."""
    out: dict[str, Any] = {}
    for preset in sorted({r["preset"] for r in rows}):
        mine = [r for r in rows if r["preset"] == preset and "error" not in r]
        entry: dict[str, Any] = {}
        for tool in ("flairkit", "official"):
            for split in ("val", "test"):
                for key in ("miou", "oa"):
                    vals = [r[split][key] for r in mine if r["tool"] == tool]
                    if vals:
                        entry[f"{tool}_{split}_{key}"] = mean_std(vals)
        for key in ("miou", "oa"):
            ratios = []
            for r in mine:
                if r["tool"] != "flairkit":
                    continue
                ref = [o for o in mine if o["tool"] == "official" and o["seed"] == r["seed"]]
                if ref and ref[0]["test"][key] > 0:
                    ratios.append(r["test"][key] / ref[0]["test"][key])
            if ratios:
                entry[f"ratio_test_{key}_per_seed"] = mean_std(ratios)
            f = entry.get(f"flairkit_test_{key}", {}).get("mean")
            o = entry.get(f"official_test_{key}", {}).get("mean")
            if f is not None and o:
                entry[f"ratio_test_{key}_of_means"] = round(f / o, 3)
                # the bar: flairkit's mean at least the official's, within one
                # standard deviation (the official's, over seeds) or better
                o_std = entry[f"official_test_{key}"]["std"] or 0.0
                entry[f"test_{key}_at_least_level"] = f >= o - o_std
        out[preset] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-src", help="IGNF/FLAIR-HUB src folder: also train it")
    parser.add_argument(
        "--official-monitor",
        choices=["val_loss"],
        help="A/B: the official checkpoint criterion becomes the validation loss",
    )
    parser.add_argument(
        "--flairkit-set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="A/B: dotted overrides for the flairkit runs only (e.g. loss.aux_weight=1.5)",
    )
    parser.add_argument(
        "--flairkit-variant",
        choices=sorted(VARIANTS),
        help="A/B: a code switch for the flairkit runs only",
    )
    parser.add_argument(
        "--modality-dropout",
        type=float,
        default=0.0,
        metavar="P",
        help="A/B: both tools configured with modality dropout P on every input (flairkit "
        "model.modality_dropout; the official modalities.modality_dropout)",
    )
    parser.add_argument("--smp-path", default="/tmp/smp040", help="smp 0.4.0 --target folder")
    parser.add_argument("--presets", nargs="+", default=["LPIS-F"], choices=sorted(PARITIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--workdir", default="/tmp/train_parity")
    parser.add_argument(
        "--fresh", action="store_true", help="rerun runs whose row is saved in --workdir/runs"
    )
    parser.add_argument("--one", choices=["flairkit", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.one:
        parity = PARITIES[args.presets[0]]
        lists = data_dirs(workdir, parity.aerial_px)[1]
        out = Path(args.out)
        if args.one == "flairkit":
            extra = list(args.flairkit_set)
            if args.modality_dropout:
                extra.append(f"model.modality_dropout={args.modality_dropout}")
            row = run_flairkit(
                parity, args.seeds[0], args.epochs, lists, out, extra, args.flairkit_variant
            )
        else:
            row = run_official(
                parity, args.seeds[0], args.epochs, lists, out, Path(args.official_src),
                args.official_monitor, args.modality_dropout,
            )  # fmt: skip
        print(json.dumps(row))
        return
    tools = ["flairkit"] + (["official"] if args.official_src else [])
    rows = []
    for preset in args.presets:
        lists = make_data(workdir, PARITIES[preset].aerial_px)
        for seed in args.seeds:
            for tool in tools:
                row = {"preset": preset, "seed": seed, "tool": tool}
                row.update(run_isolated(tool, preset, seed, args, lists))
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    recipe = {
        **RECIPE,
        "epochs": args.epochs,
        "flairkit_set": args.flairkit_set,
        "flairkit_variant": args.flairkit_variant,
        "modality_dropout": args.modality_dropout,
    }
    print(json.dumps({"recipe": recipe, "rows": rows, "summary": summarise(rows)}))


if __name__ == "__main__":
    main()
