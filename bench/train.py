"""Training cost: seconds per optimisation step and samples/s on CPU, with peak RSS.

Prints one JSON line. A step is what a training loop does per batch: forward, MultiTaskLoss
(main and auxiliary heads, benchmark class weights), backward and an AdamW step. Random inputs at
the benchmark patch sizes (aerial 512 px, Sentinel-2 10 px with 12 dates) and random labels.

Configurations (batch 2 unless stated):
  a  ResNet18 U-Net, aerial alone (3 ch, 512 px, COSIA 19 classes)
  b  ResNet18 U-Net, aerial + Sentinel-2 (10 ch, 10 px, 12 dates), no auxiliary heads (the
     reference's default config, aux_loss off, which its timing used)
  c  the default Swin-B UPerNet, aerial alone (preset LC-A)
  c_batch1  the same at batch 1, to show that it trains (the official model crashes there)

Each configuration runs in a fresh subprocess so its peak RSS is its own; the first step is a
warm-up and is not timed. The step is set up as ``flairkit fit`` sets it up: glibc told to reuse
freed memory (``flairkit.memory``), 3x3 convolutions through Winograd (``train.winograd``;
``--no-winograd`` for the direct convolution). The figures depend on the CPU and on
what else runs on it: each row gives ``matmul_gflops``, the fp32 matmul throughput measured just
before, to compare machines.

The issue's official figures (2.9, 5.0, 14 s) come from another 2-core CPU. With
``--official-src PATH`` (the ``src`` folder of an IGNF/FLAIR-HUB checkout, and
segmentation-models-pytorch 0.4.0 + pytorch_lightning importable, e.g. through PYTHONPATH) each
row also times the unmodified official ``FLAIR_HUB_Model`` on this machine, same batch and step
(random init: smp is stopped from downloading ImageNet weights), and compares the ratio
flairkit / official with the issue's target ratio (2.0 / 2.9, 3.5 / 5.0, 1). On the 2-core CPU
of 2026-11-27 (matmul ~66 GFLOP/s) the official code took 5.44, 7.35 and 26.9 s per step.

On 2026-11-27 with Winograd (matmul ~66-69 GFLOP/s): 3.49 s vs official 5.41 s (0.645),
4.28 vs 6.87 s (0.623), 23.4 vs 26.1 s (0.899); batch 1: 11.7 s.

Usage: python bench/train.py [--steps 3] [--only a b ...] [--official-src PATH] [--no-winograd]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

from _common import (  # bench/ is on sys.path when run as a script
    NUM_DATES,
    make_batch,
)

#: name -> (preset, arch override, batch size)
CONFIGS: dict[str, tuple[str, str | None, int]] = {
    "a": ("LC-A", "resnet18-unet", 2),
    "b": ("LC-D", "resnet18-unet", 2),
    "c": ("LC-A", None, 2),
    "c_batch1": ("LC-A", None, 1),
}

#: The official FLAIR-HUB code's seconds per training step on a 2-core CPU, batch 2, for the same
#: configurations (figures given in the issue, not measured here); None: it does not run
#: (its UPerNet's pyramid pooling BatchNorm raises at batch 1 in training mode).
REFERENCE_S_PER_STEP: dict[str, float | None] = {"a": 2.9, "b": 5.0, "c": 14.0, "c_batch1": None}
#: Targets for flairkit, seconds per step on the same kind of machine ("c": no slower).
TARGET_S_PER_STEP: dict[str, float | None] = {"a": 2.0, "b": 3.5, "c": 14.0, "c_batch1": None}


def matmul_gflops(n: int = 1024, repeats: int = 8) -> float:
    """The CPU's fp32 matmul throughput right now: a yardstick for a shared or unknown machine."""
    import torch

    a = torch.randn(n, n)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def run_one(name: str, steps: int, winograd: bool = True) -> dict:
    """Time ``steps`` training steps of one configuration in this process."""
    import torch

    from flairkit.config import DEFAULT_CLASS_WEIGHTS, OptimConfig
    from flairkit.memory import reuse_freed_memory
    from flairkit.models.build import build_model
    from flairkit.models.presets import count_parameters, preset_config
    from flairkit.models.winograd import use_winograd
    from flairkit.training.losses import MultiTaskLoss

    reuse_freed_memory()  # as SegmentationTask.setup does
    model_id, arch, batch_size = CONFIGS[name]
    torch.manual_seed(0)
    # aux=False: the reference's default training config has no auxiliary heads.
    cfg = preset_config(model_id, aux=False, **({"arch": arch} if arch else {}))
    model = build_model(cfg).train()
    winograd_layers = use_winograd(model, winograd)  # as flairkit fit does (train.winograd)
    criterion = MultiTaskLoss(cfg.tasks, DEFAULT_CLASS_WEIGHTS)
    optim = OptimConfig()  # the benchmark's AdamW settings
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    batch = make_batch(cfg, batch_size)
    gflops = matmul_gflops()
    times, losses = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model.forward_all(batch)
        loss, _ = criterion(out.logits, batch.labels, out.aux)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    timed = times[1:]
    s_per_step = sum(timed) / len(timed)
    return {
        "model": model_id,
        "arch": cfg.arch,
        "inputs": [m.value for m in cfg.inputs],
        "batch": batch_size,
        "params_m": round(count_parameters(model)["total"] / 1e6, 3),
        "s_per_step": round(s_per_step, 3),
        "samples_per_s": round(batch_size / s_per_step, 3),
        "warmup_s": round(times[0], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss_finite": all(math.isfinite(v) for v in losses),
        "torch_threads": torch.get_num_threads(),
        "winograd_layers": winograd_layers,
        "matmul_gflops": round(gflops, 1),
    }


def run_official(name: str, steps: int, src: str) -> dict:
    """Time ``steps`` training steps of the official FLAIR_HUB_Model (same configuration)."""
    import segmentation_models_pytorch as smp
    import torch
    import yaml

    sys.path.insert(0, src)
    from flair_hub.models.flair_model import FLAIR_HUB_Model

    create = smp.create_model

    def no_download(*args, **kwargs):  # random init, as ours: no ImageNet weights
        kwargs["encoder_weights"] = None
        return create(*args, **kwargs)

    smp.create_model = no_download
    config: dict = {}
    for part in ("modalities", "models", "supervision", "task"):
        with open(os.path.join(src, "..", "configs", "train", f"config_{part}.yaml")) as f:
            config.update(yaml.safe_load(f))
    model_id, arch, batch_size = CONFIGS[name]
    if arch:
        config["models"]["monotemp_model"]["arch"] = arch
    sizes = {"AERIAL_RGBI": 512}
    if model_id == "LC-D":
        config["modalities"]["inputs"]["SENTINEL2_TS"] = True
        sizes["SENTINEL2_TS"] = 10
    torch.manual_seed(0)
    model = FLAIR_HUB_Model(config, sizes).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    label = config["labels"][0]
    g = torch.Generator().manual_seed(0)
    batch = {
        "AERIAL_RGBI": torch.randn(batch_size, 3, 512, 512, generator=g),
        label: torch.randint(0, 19, (batch_size, 512, 512), generator=g),
    }
    if model_id == "LC-D":
        batch["SENTINEL2_TS"] = torch.randn(batch_size, NUM_DATES, 10, 10, 10, generator=g)
        batch["SENTINEL2_DATES"] = torch.linspace(-120, 200, NUM_DATES).repeat(batch_size, 1)
    criterion = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        logits = out[0] if isinstance(out, tuple) else out
        criterion(logits[label], batch[label].long()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {"s_per_step": round(sum(times[1:]) / steps, 3)}


def run_isolated(
    name: str, steps: int, official_src: str | None = None, winograd: bool = True
) -> dict:
    """One configuration in a fresh process (its own peak RSS): JSON row, or {"error": ...}."""
    import subprocess

    cmd = [sys.executable, __file__, "--steps", str(steps), "--one", name]
    if official_src:
        cmd += ["--official-src", official_src]
    if not winograd:
        cmd += ["--no-winograd"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument(
        "--official-src", help="IGNF/FLAIR-HUB src folder: also time the official model here"
    )
    parser.add_argument(
        "--no-winograd",
        action="store_true",
        help="direct 3x3 convolutions (train.winograd=false) instead of Winograd",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.official_src:
            print(json.dumps(run_official(args.one, args.steps, args.official_src)))
        else:
            print(json.dumps(run_one(args.one, args.steps, not args.no_winograd)))
        return
    result: dict = {
        "bench": "train",
        "device": "cpu",
        "dates": NUM_DATES,
        "steps": args.steps,
        "optimizer": "adamw",
    }
    for name in args.only or CONFIGS:
        row = run_isolated(name, args.steps, winograd=not args.no_winograd)
        if "error" in row:
            result[name] = row
            continue
        reference, target = REFERENCE_S_PER_STEP[name], TARGET_S_PER_STEP[name]
        row["official_s_per_step"] = reference if reference is not None else "crashes"
        row["target_s_per_step"] = target
        row["meets_target"] = None if target is None else row["s_per_step"] <= target
        if args.official_src and reference is not None:
            here = run_isolated(name, args.steps, args.official_src)
            if "error" in here:
                row["official_here"] = here
            else:
                ratio = row["s_per_step"] / here["s_per_step"]
                row["official_s_per_step_here"] = here["s_per_step"]
                row["ratio_to_official_here"] = round(ratio, 3)
                row["target_ratio"] = round(target / reference, 3)
                row["meets_target_ratio"] = ratio <= target / reference
        result[name] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
