"""The base install (no ``train`` extra) reads data and maps; training commands say what is missing.

A child process hides Lightning, torchmetrics and TensorBoard behind an import hook, as a
``pip install flairkit`` without extras would, and runs the command line there: ``info``,
``show``, ``check`` and ``map`` of a small synthetic zone work, ``fit`` exits 2 with one line
naming the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import rasterio
import torch

from flairkit.checkpoint import save_model
from flairkit.config import ModelConfig, preprocess_config_for
from flairkit.modalities import COSIA_CLASSES, Modality, Task
from flairkit.models.build import build_model
from flairkit.synth_zone import ZoneSummary, make_synthetic_zone

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("lightning", "lightning_fabric", "pytorch_lightning", "torchmetrics", "tensorboard")

# Run in the child: hide the training extra, run each command line, report exit codes and
# which blocked modules were asked for (an import of them, even one caught, is a finding).
CHILD = textwrap.dedent(
    """
    import contextlib, io, json, sys

    BLOCKED = set(sys.argv[2].split(","))
    asked = set()

    class HideTrainingExtra:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                asked.add(name.partition(".")[0])
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HideTrainingExtra())
    from flairkit.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        results.append({"argv": argv, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps({"results": results, "asked": sorted(asked), "loaded": loaded}))
    """
)


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> ZoneSummary:
    """One row of two 64 px patches (aerial and Sentinel mosaics, patch dataset)."""
    return make_synthetic_zone(
        tmp_path_factory.mktemp("zone"), aerial_px=64, patches=(1, 2), min_dates=2, max_dates=3
    )


def aerial_model(path: Path, zone: ZoneSummary) -> Path:
    """A random ResNet18 U-Net on the aerial image, saved as ``flairkit fit`` would."""
    aerial = Modality.AERIAL_RGBI
    cfg = ModelConfig(
        inputs={aerial: 3},
        img_sizes={aerial: zone.px_by_modality[aerial]},
        tasks={Task.COSIA: len(COSIA_CLASSES)},
        arch="resnet18-unet",
        out_px=zone.px_by_modality[Modality.COSIA],
    )
    torch.manual_seed(0)
    return save_model(path, build_model(cfg).eval(), cfg, preprocess_config_for([aerial]))


def run_without_training_extra(commands: list[list[str]], cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(commands), ",".join(BLOCKED)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_base_install_reads_checks_and_maps_but_does_not_train(
    zone: ZoneSummary, tmp_path: Path
) -> None:
    dataset = str(zone.dataset.root)
    model = aerial_model(tmp_path / "model.safetensors", zone)
    out = tmp_path / "map" / "cosia.tif"
    config = tmp_path / "zone.yaml"
    config.write_text(
        f"model: {model}\n"
        f"inputs:\n  AERIAL_RGBI: {zone.sources[Modality.AERIAL_RGBI].path}\n"
        f"output:\n  path: {out}\n"
        "runtime:\n  progress: false\n"
    )
    commands = [
        ["info", dataset],
        ["show", dataset, "--png", str(tmp_path / "patch.png")],
        ["check", dataset, "--report", str(tmp_path / "check.json"), "--no-progress"],
        ["map", "--config", str(config)],
        ["fit", "--config", str(REPO / "configs" / "demo.yaml")],
    ]
    report = run_without_training_extra(commands, cwd=tmp_path)
    by_command = {r["argv"][0]: r for r in report["results"]}

    for name in ("info", "show", "check", "map"):
        r = by_command[name]
        assert r["rc"] == 0, f"flairkit {name}: {r['stderr']}"
    assert f"{len(zone.patch_ids)} patches" in by_command["info"]["stdout"]
    assert (tmp_path / "patch.png").stat().st_size > 0
    assert json.loads((tmp_path / "check.json").read_text())  # a report was written
    with rasterio.open(out) as src:
        assert (src.width, src.height) == (128, 64)  # the zone: 1 x 2 patches of 64 px
        assert src.read(1).max() < len(COSIA_CLASSES)  # every pixel mapped to a class

    fit = by_command["fit"]
    assert fit["rc"] == 2
    assert fit["stdout"] == ""
    assert fit["stderr"].strip().splitlines() == [
        "flairkit fit needs the training extra: pip install 'flairkit[train]' "
        "(missing: lightning, torchmetrics, tensorboard)"
    ]
    # Nothing on the way imported the training extra (a caught ImportError would hide that).
    assert report["loaded"] == []
    assert report["asked"] == ["lightning", "tensorboard", "torchmetrics"]  # fit's check only
