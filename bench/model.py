"""Model cost: forward + backward seconds per batch and peak memory (CPU by default, batch 2).

Prints one JSON line. ``--device cuda`` times the same steps on a GPU (synchronised, peak
allocated GPU memory instead of RSS), ``--precision bf16`` under bf16 autocast, ``--batch N``
for a training-sized batch. Configurations: LC-A with a small backbone (ResNet18 UPerNet) and with the
default Swin-B UPerNet, LC-D, LC-L and LPIS-I (benchmark patch sizes: aerial/DEM 512 px, SPOT
64 px, Sentinel 10 px with 12 dates). Each configuration runs in a fresh subprocess so its peak
RSS is its own; the first step is a warm-up and is not timed. The steps run the auxiliary
heads too, as in the published models; training runs them only with ``loss.aux_weight`` > 0
(0 by default since 2026-12-04), so these rows are an upper bound of a default step.

Usage: python bench/model.py [--steps 2] [--only LC-D ...] [--device cuda] [--precision bf16]
                             [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from _common import (  # bench/ is on sys.path when run as a script
    NUM_DATES,
    make_batch,
    run_isolated,
)

CONFIGS = {
    "LC-A_resnet18": ("LC-A", "resnet18-upernet"),
    "LC-A": ("LC-A", None),
    "LC-D": ("LC-D", None),
    "LC-L": ("LC-L", None),
    "LPIS-I": ("LPIS-I", None),
}
BATCH = 2


def run_one(
    name: str, steps: int, device: str = "cpu", precision: str = "32", batch_size: int = BATCH
) -> dict:
    """Time ``steps`` forward+backward passes of one configuration in this process."""
    import contextlib

    import torch

    from flairkit.models.build import build_model
    from flairkit.models.presets import count_parameters, preset_config

    model_id, arch = CONFIGS[name]
    cfg = preset_config(model_id, **({"arch": arch} if arch else {}))
    model = build_model(cfg).train().to(device)
    batch = make_batch(cfg, batch_size).to(device)
    cuda = device.startswith("cuda")
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast:
            out = model.forward_all(batch)
            loss = sum(x.float().mean() for x in out.logits.values())
            loss = loss + sum(x.float().mean() for x in out.aux.values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[1:]
    row = {
        "model": model_id,
        "arch": cfg.arch,
        "params_m": round(count_parameters(model)["card"] / 1e6, 3),
        "s_per_batch": round(sum(timed) / len(timed), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--batch", type=int, default=BATCH, help="samples per step")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps, args.device, args.precision, args.batch)))
        return
    result: dict = {
        "bench": "model", "batch": args.batch, "device": args.device,
        "precision": args.precision, "dates": NUM_DATES,
    }  # fmt: skip
    extra = ["--device", args.device, "--precision", args.precision, "--batch", str(args.batch)]
    for name in args.only or CONFIGS:
        result[name] = run_isolated(__file__, name, args.steps, extra)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
