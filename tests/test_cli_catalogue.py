"""A catalogue of bad inputs, run through the real ``flairkit`` executable.

Every case is a command line a user could type with a damaged file, a wrong config value or an
interruption. Each must end with exit code 2 (130 for SIGINT), one line on stderr naming the file
or the dotted config key, no Python traceback, and no input, model or earlier output changed.
Grow the catalogue whenever a new bad input is found: add a ``Case`` to ``build_cases``.

The cases run as subprocesses, several at a time (each one starts Python and imports torch).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from flairkit.checkpoint import save_model
from flairkit.config import ModelConfig, preprocess_config_for
from flairkit.io.patches import scan_root
from flairkit.modalities import COSIA_CLASSES, Modality, Task
from flairkit.models.build import build_model
from flairkit.synth import SynthSummary
from flairkit.synth_zone import ZoneSummary, make_synthetic_zone

FLAIRKIT = str(Path(sys.executable).with_name("flairkit"))
AERIAL, DEM = Modality.AERIAL_RGBI, Modality.DEM_ELEV
MARKER_NAME = "pwned"


@dataclass
class Case:
    """One bad input: the command, what its error must name, what must stay untouched."""

    id: str
    argv: list[str]
    names: list[str]  # each must appear in the error line (a path, a dotted key)
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    untouched: list[Path] = field(default_factory=list)  # inputs and models: same bytes after
    absent: list[Path] = field(default_factory=list)  # must not exist after the command
    check: Callable[[], None] | None = None  # any further assertion on the files


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    digests_before: dict[Path, str]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<missing>"


# -- the files the cases damage ------------------------------------------------------------------


class _Poison:
    """A pickle that, when unpickled by code that allows it, creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_poisoned_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        pickle.dump({"state_dict": {}, "hyper_parameters": _Poison(marker)}, file)
    return path


def write_random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def write_safetensors_header(path: Path, header_len: int, header: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", header_len) + header)
    return path


def rewrite_raster(src: Path, dst: Path, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    """Copy a GeoTIFF with its pixels changed by ``edit`` (same profile)."""
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    data = edit(data)
    profile.update(dtype=data.dtype.name, count=data.shape[0])
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(data)
    return dst


def edit_tensors(src: Path, dst: Path, how: str) -> Path:
    """A copy of a flairkit model file with one tensor reshaped, dropped or made NaN."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(src))
    key = sorted(k for k in state if k.endswith("weight") and state[k].ndim == 4)[-1]
    if how == "shape":
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    elif how == "drop":
        del state[key]
    else:
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan")
    save_file(state, str(dst), metadata=metadata)
    return dst


def tiny_model(path: Path, img_px: int, out_px: int) -> Path:
    """A random aerial-only ResNet18 U-Net land-cover model file."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        inputs={AERIAL: 3},
        img_sizes={AERIAL: img_px},
        tasks={Task.COSIA: len(COSIA_CLASSES)},
        arch="resnet18-unet",
        out_px=out_px,
    )
    return save_model(path, build_model(cfg).eval(), cfg, preprocess_config_for([AERIAL]))


def run_config(path: Path, root: Path, out: Path, **sections: dict) -> Path:
    """A small fit/test config (aerial-only ResNet18 U-Net) with some keys changed."""
    config = {
        "data": {"root": str(root), "batch_size": 2, "num_workers": 0},
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
        },
        "train": {
            "max_epochs": 1,
            "progress_bar": False,
            "output_dir": str(out),
            "accelerator": "cpu",
            "limit_train_batches": 1,
            "limit_val_batches": 1,
        },
        "optim": {"lr": 0.001},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    # the session dataset's aerial and DEM patches are 64 px
    config["model"].setdefault("img_sizes", {m: 64 for m in config["model"]["inputs"]})
    path.write_text(yaml.safe_dump(config))
    return path


def zone_config(path: Path, zone: ZoneSummary, model: Path, out: Path, **output) -> Path:
    config = {
        "model": str(model),
        "inputs": {AERIAL.value: str(zone.sources[AERIAL].path)},
        "output": {"path": str(out), "on_existing": "resume", **output},
        "tiling": {"tile_px": 256, "overlap_px": 32},
        "runtime": {"batch_size": 1, "progress": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# -- the catalogue ------------------------------------------------------------------------------


@dataclass
class Workspace:
    tmp: Path
    root: Path  # a damaged copy of the synthetic dataset
    zone: ZoneSummary
    zone_model: Path
    patch_model: Path


def build_cases(ws: Workspace) -> list[Case]:
    tmp, root, zone = ws.tmp, ws.root, ws.zone
    refs = {ref.patch_id: ref for ref in scan_root(root)}
    ids = sorted(refs)
    mosaic = zone.sources[AERIAL].path
    cases: list[Case] = []

    clean_root = tmp / "data_clean"  # for cases that must read good data
    shutil.copytree(root, clean_root)
    # every DEM of a copy (made before the damages below) holds a NaN: the fit stops at the
    # first batch, read in DataLoader worker processes
    nan_root = tmp / "data_nan_dem"
    shutil.copytree(root, nan_root)
    for ref in scan_root(nan_root):
        if DEM in ref.modalities:
            rewrite_raster(
                ref.path(DEM), ref.path(DEM), lambda a: np.where(a == a.flat[0], np.nan, a)
            )
    nan_out = tmp / "run_nan_dem"
    nan_cfg = run_config(
        tmp / "nan_dem.yaml",
        nan_root,
        nan_out,
        data={"num_workers": 2},
        model={"inputs": {"AERIAL_RGBI": 3, "DEM_ELEV": 2}},
    )
    cases.append(
        Case(
            "fit-dem-nan-workers",
            ["fit", "--config", str(nan_cfg)],
            [f"{nan_root}/", "DEM_ELEV", "NaN"],
            absent=[nan_out / "model.safetensors"],
        )
    )

    # --- dataset files ---------------------------------------------------------------------
    split_json = tmp / "split_bad.json"
    split_json.write_text('{"train": ["D006-2020_UU-S1-1_1-1", ')  # cut mid-file
    cases.append(
        Case(
            "info-split-json-malformed",
            ["info", str(root), "--split", str(split_json)],
            [str(split_json)],
        )
    )
    split_shape = tmp / "split_shape.json"
    split_shape.write_text("[1, 2, 3]")
    cases.append(
        Case(
            "info-split-json-not-a-mapping",
            ["info", str(root), "--split", str(split_shape)],
            [str(split_shape)],
        )
    )
    split_csv = tmp / "split_latin1.csv"
    split_csv.write_bytes("patch_id,split\nD006-2020_é,train\n".encode("latin-1"))
    cases.append(
        Case(
            "info-split-csv-not-utf8",
            ["info", str(root), "--split", str(split_csv)],
            [str(split_csv)],
        )
    )
    csv_list = tmp / "list_latin1.csv"
    csv_list.write_bytes(b"AERIAL_RGBI\nD006-2020_AERIAL_RGBI/\xe9t\xe9.tif\n")
    cases.append(Case("info-csv-list-not-utf8", ["info", str(csv_list)], [str(csv_list)]))
    binary_list = write_random_bytes(tmp / "list_binary.csv", 2048, seed=3)
    cases.append(Case("info-csv-list-binary", ["info", str(binary_list)], [str(binary_list)]))
    cases.append(Case("info-root-missing", ["info", str(tmp / "nowhere")], [str(tmp / "nowhere")]))
    cases.append(
        Case("check-root-missing", ["check", str(tmp / "nowhere")], [str(tmp / "nowhere")])
    )

    # a truncated aerial file
    cut_id = ids[1]
    cut = refs[cut_id].path(AERIAL)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cases.append(
        Case(
            "show-aerial-truncated",
            ["show", str(root), cut_id, "--modalities", AERIAL.value],
            [str(cut)],
        )
    )
    # a missing modality asked for explicitly
    gone_id = ids[2]
    gone = refs[gone_id].path(Modality.SPOT_RGBI)
    gone.unlink()
    cases.append(
        Case(
            "show-modality-missing",
            ["show", str(root), gone_id, "--modalities", Modality.SPOT_RGBI.value],
            [str(gone)],
        )
    )
    # a text file in place of a GeoTIFF
    text_id = ids[3]
    text = refs[text_id].path(Modality.SENTINEL1_ASC_TS)
    text.write_text("not a tiff\n")
    cases.append(
        Case(
            "show-not-a-tiff",
            ["show", str(root), text_id, "--modalities", Modality.SENTINEL1_ASC_TS.value],
            [str(text)],
        )
    )

    # --- run configs (fit) -----------------------------------------------------------------
    def fit_case(name: str, names: list[str], **sections: dict) -> Case:
        out = tmp / f"run_{name}"
        cfg = run_config(tmp / f"{name}.yaml", root, out, **sections)
        return Case(f"fit-{name}", ["fit", "--config", str(cfg)], names, absent=[out])

    cases.append(fit_case("max-epochs-negative", ["train.max_epochs"], train={"max_epochs": -3}))
    cases.append(fit_case("accelerator-tpu", ["train.accelerator"], train={"accelerator": "tpu"}))
    cases.append(fit_case("batch-size-negative", ["data.batch_size"], data={"batch_size": -4}))
    cases.append(fit_case("num-workers-negative", ["data.num_workers"], data={"num_workers": -1}))
    cases.append(fit_case("lr-text", ["optim.lr"], optim={"lr": "fast"}))
    bad_yaml = tmp / "broken.yaml"
    bad_yaml.write_text("data: {root: [unclosed\n")
    cases.append(Case("fit-yaml-invalid", ["fit", "--config", str(bad_yaml)], [str(bad_yaml)]))
    cases.append(
        Case(
            "fit-config-missing",
            ["fit", "--config", str(tmp / "nope.yaml")],
            [str(tmp / "nope.yaml")],
        )
    )
    good_cfg = run_config(tmp / "good.yaml", root, tmp / "run_good")
    cases.append(
        Case(
            "fit-override-unknown-key",
            ["fit", "--config", str(good_cfg), "train.max_epoch=2"],
            ["max_epoch"],
            absent=[tmp / "run_good"],
        )
    )

    # a corrupt last.ckpt: names the file, leaves it as it was
    corrupt_out = tmp / "run_corrupt"
    corrupt_ckpt = write_random_bytes(corrupt_out / "checkpoints" / "last.ckpt", 10_000, seed=1)
    corrupt_cfg = run_config(tmp / "corrupt.yaml", root, corrupt_out)
    cases.append(
        Case(
            "fit-last-ckpt-corrupt",
            ["fit", "--config", str(corrupt_cfg)],
            [str(corrupt_ckpt)],
            untouched=[corrupt_ckpt],
        )
    )
    # a last.ckpt of another model (the user changed model.arch or the inputs, then resumed)
    other_out = tmp / "run_other_model"
    other_ckpt = other_out / "checkpoints" / "last.ckpt"
    other_ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": {"model.encoders.AERIAL_RGBI.conv.weight": torch.zeros(8, 3, 3, 3)},
            "epoch": 0,
            "global_step": 1,
            "optimizer_states": [],
            "loops": {},
        },
        other_ckpt,
    )
    other_cfg = run_config(tmp / "other_model.yaml", clean_root, other_out)
    cases.append(
        Case(
            "fit-last-ckpt-other-model",
            ["fit", "--config", str(other_cfg)],
            [str(other_ckpt), "--no-resume"],
            untouched=[other_ckpt],
            absent=[other_out / "config.yaml"],
        )
    )
    # a poisoned last.ckpt, with the environment asking torch for unsafe loading: never run
    poison_out = tmp / "run_poison"
    marker = tmp / MARKER_NAME
    poison_ckpt = write_poisoned_checkpoint(poison_out / "checkpoints" / "last.ckpt", marker)
    poison_cfg = run_config(tmp / "poison.yaml", root, poison_out)
    cases.append(
        Case(
            "fit-last-ckpt-poisoned",
            ["fit", "--config", str(poison_cfg)],
            [str(poison_ckpt)],
            env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
            untouched=[poison_ckpt],
            absent=[marker],
        )
    )

    # --- weights files (test --weights) ----------------------------------------------------
    test_cfg = run_config(tmp / "test.yaml", root, tmp / "run_test")
    weights: dict[str, Path] = {}
    weights["random-bytes"] = write_random_bytes(tmp / "w_random.safetensors", 5000, seed=2)
    good = ws.patch_model.read_bytes()
    weights["truncated"] = tmp / "w_truncated.safetensors"
    weights["truncated"].write_bytes(good[: len(good) // 2])
    weights["header-absurd"] = write_safetensors_header(tmp / "w_header.safetensors", 2**40, b"{}")
    weights["pickle-unsafe"] = write_poisoned_checkpoint(
        tmp / "w_poison.ckpt", tmp / (MARKER_NAME + "2")
    )
    weights["directory"] = tmp / "w_dir.safetensors"
    weights["directory"].mkdir()
    for name, path in weights.items():
        cases.append(
            Case(
                f"test-weights-{name}",
                ["test", "--config", str(test_cfg), "--weights", str(path)],
                [str(path)],
                untouched=[path] if path.is_file() else [],
                absent=[tmp / (MARKER_NAME + "2")],
            )
        )
    # the recipe of a good file, with a tensor reshaped, one dropped, or a NaN
    weights["wrong-shape"] = edit_tensors(ws.patch_model, tmp / "w_shape.safetensors", "shape")
    weights["tensor-missing"] = edit_tensors(ws.patch_model, tmp / "w_missing.safetensors", "drop")
    weights["tensor-nan"] = edit_tensors(ws.patch_model, tmp / "w_nan.safetensors", "nan")
    for name in ("wrong-shape", "tensor-missing", "tensor-nan"):
        path = weights[name]
        cases.append(
            Case(
                f"test-weights-{name}",
                ["test", "--config", str(test_cfg), "--weights", str(path)],
                [str(path)],
                untouched=[path],
            )
        )
    missing = tmp / "none.safetensors"
    cases.append(
        Case(
            "test-weights-missing",
            ["test", "--config", str(test_cfg), "--weights", str(missing)],
            [str(missing)],
        )
    )

    # --- maps ------------------------------------------------------------------------------
    def map_case(
        name: str, out: Path, names: list[str], model: Path | None = None, **output
    ) -> Case:
        cfg = zone_config(tmp / f"zone_{name}.yaml", zone, model or ws.zone_model, out, **output)
        return Case(
            f"map-{name}", ["map", "--config", str(cfg)], names, untouched=[mosaic, ws.zone_model]
        )

    cases.append(map_case("output-is-input", mosaic, [str(mosaic)], on_existing="overwrite"))
    cases.append(
        map_case("output-is-model", ws.zone_model, [str(ws.zone_model)], on_existing="overwrite")
    )
    # a sidecar of the output (its QGIS style) would overwrite the input
    style_twin = tmp / "twin" / "cosia.qml"
    style_twin.parent.mkdir()
    shutil.copy(mosaic, style_twin)
    cases.append(
        Case(
            "map-sidecar-is-input",
            [
                "map",
                "--config",
                str(
                    zone_config(
                        tmp / "zone_sidecar.yaml",
                        zone,
                        ws.zone_model,
                        style_twin.with_suffix(".tif"),
                        on_existing="overwrite",
                    )
                ),
                f"inputs.{AERIAL.value}={style_twin}",
            ],
            [str(style_twin)],
            untouched=[style_twin, ws.zone_model],
        )
    )
    out_dir = tmp / "map_is_dir.tif"
    out_dir.mkdir()
    cases.append(map_case("output-is-directory", out_dir, [str(out_dir)]))
    blocker = tmp / "a_file"
    blocker.write_text("x")
    cases.append(map_case("output-under-a-file", blocker / "map" / "cosia.tif", [str(blocker)]))
    cut_mosaic = tmp / "cut_mosaic.tif"
    cut_mosaic.write_bytes(mosaic.read_bytes()[: mosaic.stat().st_size * 2 // 3])
    cases.append(
        Case(
            "map-mosaic-truncated",
            [
                "map",
                "--config",
                str(
                    zone_config(
                        tmp / "zone_cut.yaml", zone, ws.zone_model, tmp / "cut_map" / "cosia.tif"
                    )
                ),
                f"inputs.{AERIAL.value}={cut_mosaic}",
            ],
            [str(cut_mosaic)],
            untouched=[cut_mosaic],
        )
    )
    # (tests/models/test_bad_weights.py runs every kind of bad weights file through both paths)
    cases.append(
        map_case(
            "model-pickle-unsafe",
            tmp / "map_pickle" / "cosia.tif",
            [str(weights["pickle-unsafe"])],
            model=weights["pickle-unsafe"],
        )
    )
    cases.append(
        map_case(
            "on-existing-bad",
            tmp / "map_bad" / "cosia.tif",
            ["output.on_existing"],
            on_existing="sometimes",
        )
    )
    return cases


# -- running them -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(module_tmp: Path, synthetic: SynthSummary) -> Workspace:
    root = module_tmp / "data"
    shutil.copytree(synthetic.root, root)
    zone = make_synthetic_zone(
        module_tmp / "zone", seed=1, aerial_px=256, patches=(1, 2), modalities=[AERIAL]
    )
    zone_model = tiny_model(module_tmp / "zone_model.safetensors", 256, 256)
    patch_model = tiny_model(module_tmp / "patch_model.safetensors", 64, 64)
    return Workspace(module_tmp / "cases", root, zone, zone_model, patch_model)


def run(case: Case) -> Outcome:
    watched = [*case.untouched]
    before = {p: digest(p) for p in watched}
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **case.env}
    proc = subprocess.run(
        [FLAIRKIT, *case.argv], capture_output=True, text=True, env=env, timeout=300
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, before)


@pytest.fixture(scope="module")
def outcomes(workspace: Workspace) -> dict[str, tuple[Case, Outcome]]:
    workspace.tmp.mkdir()
    cases = build_cases(workspace)
    assert len({c.id for c in cases}) == len(cases)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, cases))
    return {c.id: (c, r) for c, r in zip(cases, results, strict=True)}


def assert_clean_error(case: Case, outcome: Outcome) -> None:
    output = outcome.stdout + outcome.stderr
    assert "Traceback" not in output, output
    assert outcome.code == case.code, f"exit {outcome.code}, expected {case.code}\n{output}"
    lines = [line for line in outcome.stderr.splitlines() if line.startswith("flairkit ")]
    assert len(lines) == 1, outcome.stderr
    for name in case.names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    for path, before in outcome.digests_before.items():
        assert digest(path) == before, f"{path} changed"
    for path in case.absent:
        assert not path.exists(), f"{path} was created"
    if case.check:
        case.check()


#: Kept in step with build_cases (test_catalogue_ids_match_cases checks it).
CASE_IDS = [
    "fit-dem-nan-workers",
    "info-split-json-malformed",
    "info-split-json-not-a-mapping",
    "info-split-csv-not-utf8",
    "info-csv-list-not-utf8",
    "info-csv-list-binary",
    "info-root-missing",
    "check-root-missing",
    "show-aerial-truncated",
    "show-modality-missing",
    "show-not-a-tiff",
    "fit-max-epochs-negative",
    "fit-accelerator-tpu",
    "fit-batch-size-negative",
    "fit-num-workers-negative",
    "fit-lr-text",
    "fit-yaml-invalid",
    "fit-config-missing",
    "fit-override-unknown-key",
    "fit-last-ckpt-corrupt",
    "fit-last-ckpt-other-model",
    "fit-last-ckpt-poisoned",
    "test-weights-random-bytes",
    "test-weights-truncated",
    "test-weights-header-absurd",
    "test-weights-pickle-unsafe",
    "test-weights-directory",
    "test-weights-wrong-shape",
    "test-weights-tensor-missing",
    "test-weights-tensor-nan",
    "test-weights-missing",
    "map-output-is-input",
    "map-output-is-model",
    "map-sidecar-is-input",
    "map-output-is-directory",
    "map-output-under-a-file",
    "map-mosaic-truncated",
    "map-model-pickle-unsafe",
    "map-on-existing-bad",
]


def test_catalogue_ids_match_cases(outcomes: dict) -> None:
    assert list(outcomes) == CASE_IDS


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_exits_2_naming_it(case_id: str, outcomes: dict) -> None:
    case, outcome = outcomes[case_id]
    assert_clean_error(case, outcome)
    assert "weights_only=False" not in outcome.stderr


def test_sigint_during_map_prints_one_line_and_exits_130(
    workspace: Workspace, tmp_path: Path
) -> None:
    """Ctrl-C while tiles are mapped: one line, exit 130, no traceback (workers included)."""
    zone = make_synthetic_zone(
        tmp_path / "zone", seed=2, aerial_px=256, patches=(3, 3), modalities=[AERIAL]
    )
    out = tmp_path / "map" / "cosia.tif"
    cfg = zone_config(tmp_path / "zone.yaml", zone, workspace.zone_model, out)
    for workers in (2,):
        shutil.rmtree(out.parent, ignore_errors=True)  # wait for this run's partial files
        proc = subprocess.Popen(
            [
                FLAIRKIT,
                "map",
                "--config",
                str(cfg),
                f"runtime.num_workers={workers}",
                "output.on_existing=overwrite",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not list(out.parent.glob("*partial*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the map never started writing"
            time.sleep(0.05)
        assert proc.poll() is None, "the map ended before it could be interrupted"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        output = stdout + stderr
        assert proc.returncode == 130, output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0], stderr
    # and the interrupted map resumes to the end
    done = subprocess.run([FLAIRKIT, "map", "--config", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
