"""Model cost: forward + backward seconds per batch and peak RSS, CPU, batch 2.

Prints one JSON line. Configurations: LC-A with a small backbone (ResNet18 UPerNet) and with the
default Swin-B UPerNet, LC-D, LC-L and LPIS-I (benchmark patch sizes: aerial/DEM 512 px, SPOT
64 px, Sentinel 10 px with 12 dates). Each configuration runs in a fresh subprocess so its peak
RSS is its own; the first step is a warm-up and is not timed.

Usage: python bench/model.py [--steps 2] [--only LC-D ...]
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


def run_one(name: str, steps: int) -> dict:
    """Time ``steps`` forward+backward passes of one configuration in this process."""
    import torch

    from flairkit.models.build import build_model
    from flairkit.models.presets import count_parameters, preset_config

    model_id, arch = CONFIGS[name]
    cfg = preset_config(model_id, **({"arch": arch} if arch else {}))
    model = build_model(cfg).train()
    batch = make_batch(cfg, BATCH)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model.forward_all(batch)
        loss = sum(x.float().mean() for x in out.logits.values())
        loss = loss + sum(x.float().mean() for x in out.aux.values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    timed = times[1:]
    return {
        "model": model_id,
        "arch": cfg.arch,
        "params_m": round(count_parameters(model)["card"] / 1e6, 3),
        "s_per_batch": round(sum(timed) / len(timed), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="subset of configurations")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
        return
    result: dict = {"bench": "model", "batch": BATCH, "device": "cpu", "dates": NUM_DATES}
    for name in args.only or CONFIGS:
        result[name] = run_isolated(__file__, name, args.steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
