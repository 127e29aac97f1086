"""IGN's published models through a model reference: a hub id of a stand-in hub, or a local file.

The stand-in hub (``tests/hub_server.py``) serves the published weight files over HTTP on
127.0.0.1; the real ``huggingface_hub`` client fetches them. Their tensors are the golden
README's seeded weights, so a model loaded through nothing but ``hf:...`` must reproduce the
logits the official code computed (``shared/reference-golden``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import rasterio
import torch
import yaml
from golden import assert_matches_golden, golden_inputs, golden_state_dict
from hub_server import StandInHub, serve
from safetensors.torch import save as save_safetensors

from flairkit.checkpoint import load_model, published_recipe, read_model_recipe
from flairkit.cli import main
from flairkit.config import load_zone_config
from flairkit.hub import HubError
from flairkit.modalities import Modality, Task
from flairkit.model_ref import parse_model_ref
from flairkit.models.official import WeightsError
from flairkit.presets import get_preset
from flairkit.sample import Batch
from flairkit.synth import make_synthetic_flairhub
from flairkit.synth_zone import ZoneSummary

S2, S2_MASK = Modality.SENTINEL2_TS, Modality.SENTINEL2_MSK
LC_G = "IGNF/FLAIR-HUB_LC-G_utae"
LC_A = "IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet"


def published_state(model_id: str) -> dict[str, torch.Tensor]:
    """A published file's tensors: the training state dict (``model.`` prefix, criterion)."""
    state = {f"model.{k}": v.contiguous() for k, v in golden_state_dict(model_id).items()}
    task = get_preset(model_id).task
    state[f"criterion.{task.value}.weight"] = torch.ones(19 if task is Task.COSIA else 23)
    return state


def safetensors_bytes(model_id: str) -> bytes:
    return save_safetensors(published_state(model_id))


def golden_logits(model: torch.nn.Module, model_id: str) -> torch.Tensor:
    preset = get_preset(model_id)
    inputs, dates = golden_inputs([m.value for m in preset.inputs])
    batch = Batch({Modality(k): v for k, v in inputs.items()},
                  {Modality(k): v for k, v in dates.items()}, {}, {}, ["golden"], [None], [None])  # fmt: skip
    with torch.no_grad():
        return model(batch)[preset.task]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """The stand-in hub with IGN's LC-G repository, the client pointed at it, a fresh cache."""
    stand_in = StandInHub()
    stand_in.add(LC_G, {"FLAIR-HUB_LC-G_utae.safetensors": safetensors_bytes("LC-G"),
                        "README.md": b"# FLAIR-HUB LC-G (stand-in)\n"})  # fmt: skip
    cache = tmp_path_factory.mktemp("hf_cache")
    with pytest.MonkeyPatch.context() as mp, serve(stand_in):
        # conftest sets HF_HUB_OFFLINE=1; the stand-in is local, so the client may go online
        mp.setenv("HF_HUB_OFFLINE", "0")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        mp.setenv("HF_ENDPOINT", stand_in.endpoint)  # read by flairkit.hub at each call
        yield stand_in


@pytest.fixture(scope="module")
def real_size_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset at FLAIR-HUB's real patch sizes (512 px labels, 10 px S2)."""
    root = tmp_path_factory.mktemp("flairhub512")
    make_synthetic_flairhub(root, seed=3, num_rois=1, patches_per_roi=(1, 2),
                            min_dates=4, max_dates=6)  # fmt: skip
    return root


def test_hub_id_reproduces_the_golden_logits_and_is_cached(hub: StandInHub) -> None:
    model, preprocess = load_model(f"hf:{LC_G}")
    assert_matches_golden(golden_logits(model, "LC-G"), "LC-G", Task.COSIA.value)
    # the preset's preparation: raw S2 (no normalisation), the benchmark's cloud filter
    assert list(preprocess.inputs) == [S2] and preprocess.inputs[S2].norm == "none"
    assert preprocess.cloud_filter.enabled and preprocess.tasks == (Task.COSIA,)
    fetched = len(hub.downloads("FLAIR-HUB_LC-G_utae.safetensors"))
    assert fetched == 1
    load_model(f"hf:{LC_G}")  # a second load reads the cache
    assert len(hub.downloads("FLAIR-HUB_LC-G_utae.safetensors")) == fetched


def test_hub_revision_pinning_and_offline_cache(
    hub: StandInHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = hub.repos[("model", LC_G)].commit
    model, _ = load_model(f"hf:{LC_G}@{commit}")
    assert_matches_golden(golden_logits(model, "LC-G"), "LC-G", Task.COSIA.value)
    with pytest.raises(HubError, match=rf"^hf:{LC_G}@nope file .*: no such revision"):
        load_model(f"hf:{LC_G}@nope")
    with pytest.raises(HubError, match=r"no such repository"):
        load_model("hf:IGNF/FLAIR-HUB_LC-Z_utae")
    # offline: what is cached still loads; what is not is one clear line
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    load_model(f"hf:{LC_G}")
    assert len(hub.requests) == requests  # not a single request
    with pytest.raises(HubError, match=r"not in the local hub cache .*HF_HUB_OFFLINE"):
        load_model(f"hf:{LC_A}")


def test_local_published_ckpt_with_its_preset(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"  # a name that tells nothing
    torch.save({"state_dict": published_state("LC-G"), "epoch": 88}, path)
    model, _ = load_model(path, preset="LC-G")
    assert_matches_golden(golden_logits(model, "LC-G"), "LC-G", Task.COSIA.value)
    # the tensors' names tell the preset too (S2 encoder, COSIA decoder: only LC-G)
    assert read_model_recipe(path)[0].inputs == {S2: 10}
    with pytest.raises(WeightsError, match=r"weights\.ckpt: .* is it preset LC-D\?"):
        load_model(path, preset="LC-D")


def test_unnamed_file_whose_preset_cannot_be_told(tmp_path: Path) -> None:
    state = {k: v for k, v in published_state("LC-G").items() if "main_decoders" not in k}
    path = tmp_path / "mystery.safetensors"
    path.write_bytes(save_safetensors(state))
    with pytest.raises(WeightsError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no flairkit recipe in the file's metadata")
    assert "--preset" in message and "\n" not in message


def test_published_recipe_follows_ign_naming() -> None:
    rgb = parse_model_ref("hf:IGNF/FLAIR-HUB_LC-A_RGB_swintiny-upernet")
    model, pre = published_recipe(rgb)
    assert model.arch == "swin_tiny_patch4_window7_224-upernet"
    assert model.inputs == {Modality.AERIAL_RGBI: 3} and model.tasks == {Task.COSIA: 19}
    assert pre.inputs[Modality.AERIAL_RGBI].bands == ("R", "G", "B")
    ir = published_recipe(parse_model_ref("hf:IGNF/FLAIR-HUB_LC-A_IR_convnextv2base-unet"))
    assert ir[0].arch == "convnextv2_base-unet"
    assert ir[1].inputs[Modality.AERIAL_RGBI].bands == ("NIR", "R", "G")
    lc_d = published_recipe(parse_model_ref("weights.pth", preset="LC-D"))[0]
    assert lc_d.arch == "swin_base_patch4_window12_384-upernet"  # the benchmark's default
    assert set(lc_d.aux_heads) == {Modality.AERIAL_RGBI, S2}  # as the published files have
    with pytest.raises(WeightsError, match=r"encoder 'vit' of IGN's naming is not known"):
        published_recipe(parse_model_ref("hf:IGNF/FLAIR-HUB_LC-A_IR_vit-upernet"))


def _run_yaml(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"root": str(root), "batch_size": 2},
        "train": {"output_dir": str(tmp_path / "run"), "accelerator": "cpu",
                  "progress_bar": False},
    }))  # fmt: skip
    return path


def test_cli_test_scores_a_hub_model_on_a_split(
    hub: StandInHub, real_size_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _run_yaml(tmp_path, real_size_root)  # no model section: --weights says it
    assert main(["test", "--config", str(config), "--weights", f"hf:{LC_G}"]) == 0
    out = capsys.readouterr().out
    assert "test AERIAL_LABEL-COSIA:" in out and "34.2" in out  # LC-G's published mIoU
    report = json.loads((tmp_path / "run" / "report_test" / "metrics_cosia.json").read_text())
    scores = report["scores"]
    assert 0.0 <= scores["miou"] <= 100.0 and 0.0 <= scores["oa"] <= 100.0
    # the same weights in a local .ckpt given with its preset score the same
    ckpt = tmp_path / "lc_g.ckpt"
    torch.save({"state_dict": published_state("LC-G")}, ckpt)
    local = ["test", "--config", str(config), "--weights", str(ckpt), "--preset", "LC-G",
             "train.output_dir=" + str(tmp_path / "local")]  # fmt: skip
    assert main(local) == 0
    again = json.loads((tmp_path / "local" / "report_test" / "metrics_cosia.json").read_text())
    assert again["scores"] == scores


def _zone_yaml(tmp_path: Path, zone: ZoneSummary, model: str, out: Path, **extra: str) -> Path:
    path = tmp_path / f"{out.stem}.yaml"
    path.write_text(yaml.safe_dump({
        "model": model,
        "inputs": {S2.value: {"path": str(zone.sources[S2].path),
                              "dates": str(zone.sources[S2].dates_path),
                              "mask": str(zone.sources[S2_MASK].path)}},
        "output": {"path": str(out)},
        "runtime": {"progress": False, "device": "cpu"},
        **extra,
    }))  # fmt: skip
    return path


def test_cli_map_with_a_hub_id_and_with_a_local_ckpt(
    hub: StandInHub, synthetic_zone: ZoneSummary, tmp_path: Path
) -> None:
    by_hub = tmp_path / "hub.tif"
    assert main(["map", "--config", str(_zone_yaml(tmp_path, synthetic_zone, f"hf:{LC_G}", by_hub))]) == 0  # fmt: skip
    ckpt = tmp_path / "lc_g.ckpt"
    torch.save({"state_dict": published_state("LC-G")}, ckpt)
    by_file = tmp_path / "file.tif"
    config = _zone_yaml(tmp_path, synthetic_zone, str(ckpt), by_file, model_preset="LC-G")
    assert main(["map", "--config", str(config)]) == 0
    with rasterio.open(by_hub) as a, rasterio.open(by_file) as b:
        classes = a.read(1)
        assert a.res == pytest.approx((0.2, 0.2))  # the model's label GSD, 512 px a patch
        assert a.bounds == pytest.approx(synthetic_zone.bounds)
        np.testing.assert_array_equal(classes, b.read(1))
    assert len(np.unique(classes)) >= 2  # a real map, not one constant


@pytest.mark.slow
def test_lc_a_through_a_hub_id(tmp_path: Path, real_size_root: Path) -> None:
    """LC-A (Swin-B UPerNet, a ~360 MB file): golden logits, test and map through a hub id."""
    stand_in = StandInHub()
    stand_in.add(
        LC_A, {"FLAIR-HUB_LC-A_IR_swinbase-upernet.safetensors": safetensors_bytes("LC-A")}
    )
    with pytest.MonkeyPatch.context() as mp, serve(stand_in):
        mp.setenv("HF_HUB_OFFLINE", "0")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        mp.setenv("HF_ENDPOINT", stand_in.endpoint)
        model, preprocess = load_model(f"hf:{LC_A}")
        assert_matches_golden(golden_logits(model, "LC-A"), "LC-A", Task.COSIA.value)
        assert preprocess.inputs[Modality.AERIAL_RGBI].bands == ("NIR", "R", "G")
        del model
        config = _run_yaml(tmp_path, real_size_root)
        assert main(["test", "--config", str(config), "--weights", f"hf:{LC_A}"]) == 0
        zone = tmp_path / "zone.yaml"
        from flairkit.synth_zone import make_synthetic_zone

        summary = make_synthetic_zone(tmp_path / "z", seed=0, aerial_px=512, patches=(1, 2))
        zone.write_text(yaml.safe_dump({
            "model": f"hf:{LC_A}",
            "inputs": {"AERIAL_RGBI": str(summary.sources[Modality.AERIAL_RGBI].path)},
            "output": {"path": str(tmp_path / "lc_a.tif")},
            "runtime": {"progress": False, "device": "cpu"},
        }))  # fmt: skip
        assert main(["map", "--config", str(zone)]) == 0
        assert (tmp_path / "lc_a.tif").is_file()


def test_bad_references_are_one_line_exit_2(
    hub: StandInHub, real_size_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_run_yaml(tmp_path, real_size_root))
    cases = {
        "hf:nope": r"hf:nope: expected hf:<org>/<repo>\[@<revision>\]",
        "hf:IGNF/FLAIR-HUB_LC-Z_utae": r"hf:IGNF/FLAIR-HUB_LC-Z_utae file .*: no such repository",
        f"hf:{LC_G}@v9": rf"hf:{LC_G}@v9 file .*: no such revision",
        str(tmp_path / "absent.ckpt"): r"absent\.ckpt: model file not found",
    }
    for ref, pattern in cases.items():
        assert main(["test", "--config", config, "--weights", ref]) == 2, ref
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(pattern, err), (ref, err)
    with pytest.raises(
        Exception,
        match=r"^model: hf:IGNF/FLAIR-HUB_LC-G_utae: the name says preset LC-G, but preset LC-A was given",
    ):
        load_zone_config(
            None, [f"model=hf:{LC_G}", "model_preset=LC-A", "inputs.S2=x.tif", "output=o.tif"]
        )
