"""The flairkit command, run in-process: exit codes, printed JSON and written files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flairkit.cli import main
from flairkit.io.catalog import Catalog
from flairkit.modalities import Modality
from flairkit.synth import SynthSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_info_json_counts(synthetic: SynthSummary, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_json(capsys, ["info", str(synthetic.root), "--json"])
    assert summary["num_patches"] == 32
    assert summary["num_domains"] == 4
    assert summary["patches_per_split"] == {
        split: len(ids) for split, ids in sorted(synthetic.patch_ids.items())
    }
    assert summary["patches_per_split"] == {"test": 16, "train": 12, "val": 4}
    assert summary["files_per_modality"] == {m.value: 32 for m in Modality}
    assert summary["missing_files"] == {}
    assert set(summary["patches_per_domain"]) == set(synthetic.domains)


def test_info_filters_and_text(synthetic: SynthSummary, capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_json(
        capsys, ["info", str(synthetic.root), "--json", "--departments", "D006", "--split", "card"]
    )
    assert summary["num_patches"] == 8
    assert list(summary["patches_per_domain"]) == ["D006-2020"]
    csv_summary = run_json(capsys, ["info", str(synthetic.root / "csv"), "--json"])
    assert csv_summary["num_patches"] == 32
    assert csv_summary["patches_per_split"] == {"test": 16, "train": 12, "val": 4}
    assert main(["info", str(synthetic.root)]) == 0
    text = capsys.readouterr().out
    assert "32 patches in 4 domain-years" in text
    assert "missing files: none" in text


def test_show_json_and_png(
    synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    patch_id = synthetic.patch_ids["train"][0]
    png = tmp_path / "figures" / "patch.png"
    desc = run_json(capsys, ["show", str(synthetic.root), patch_id, "--json", "--png", str(png)])
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert desc["patch_id"] == patch_id
    assert desc["png"] == str(png)
    assert set(desc["modalities"]) == {m.value for m in Modality}
    aerial = desc["modalities"]["AERIAL_RGBI"]
    assert aerial["shape"] == [4, 64, 64] and aerial["dtype"] == "uint8"
    assert aerial["crs"] == "EPSG:2154"
    assert aerial["gsd_m"] == pytest.approx(102.4 / 64)
    s2 = desc["modalities"]["SENTINEL2_TS"]
    num_dates = s2["shape"][0]
    assert s2["shape"][1:] == [10, 2, 2]
    assert len(s2["dates"]) == num_dates and all(ISO_DATE.match(d) for d in s2["dates"])
    assert s2["dates"] == sorted(s2["dates"])
    kept, dropped = s2["cloud_filter"]["kept"], s2["cloud_filter"]["dropped"]
    assert sorted(kept + dropped) == s2["dates"]
    assert not set(kept) & set(dropped)
    assert kept  # the generator keeps a few clear dates per ROI
    fractions = s2["cloud_filter"]["clear_fraction"]
    assert [d for d, f in zip(s2["dates"], fractions, strict=True) if f >= 0.95] == kept
    s1 = desc["modalities"]["SENTINEL1-ASC_TS"]
    assert all(ISO_DATE.match(d) for d in s1["dates"]) and "cloud_filter" not in s1


def test_show_text_default_patch(
    synthetic: SynthSummary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(synthetic.root), "--modalities", "S2", "S2MASK", "AERIAL"]) == 0
    text = capsys.readouterr().out
    first = Catalog.scan(synthetic.root, split=None).refs[0].patch_id
    assert text.startswith(f"patch {first}")
    assert "cloud filter keeps" in text
    assert "DEM_ELEV" not in text


def test_show_unknown_patch(synthetic: SynthSummary, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["show", str(synthetic.root), "D006-2020_ZZ-S1-0_9-9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "D006-2020_ZZ-S1-0_9-9" in err
    assert "unknown patch id" in err


def test_info_on_a_folder_that_is_not_a_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_synth_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "made"
    assert main(["synth", str(out), "--aerial-px", "64", "--rois", "1"]) == 0
    message = capsys.readouterr().out
    assert str(out) in message
    summary = run_json(capsys, ["info", str(out), "--json"])
    # Default: 4 domain-years, 1 ROI each, 2 x 2 patches per ROI.
    assert summary["num_patches"] == 16
    assert summary["num_domains"] == 4
    assert summary["files_per_modality"] == {m.value: 16 for m in Modality}
    assert summary["patches_per_split"]["test"] == 8
    assert (out / "GLOBAL_ALL_MTD" / "GLOBAL_ALL_MTD_SPLIT.gpkg").is_file()


def test_models_lists_presets_with_counts(capsys) -> None:
    assert main(["models", "LC-A", "lpis-f", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"LC-A", "LPIS-F"}
    assert rows["LC-A"]["params"] == 89_422_283
    assert rows["LC-A"]["card_para_m"] == 89.4 and rows["LC-A"]["card_miou"] == 64.1
    assert rows["LPIS-F"]["inputs"] == ["SENTINEL2_TS"]


def test_models_lists_the_published_repositories(capsys) -> None:
    assert main(["models", "LC-A", "LC-G", "LC-B", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["LC-G"]["published"] == ["hf:IGNF/FLAIR-HUB_LC-G_utae"]
    assert len(rows["LC-A"]["published"]) == 9
    assert "hf:IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet" in rows["LC-A"]["published"]
    assert rows["LC-B"]["published"] == []
    assert main(["models", "LC-G"]) == 0
    text = capsys.readouterr().out
    assert "published weights" in text and "LC-G    hf:IGNF/FLAIR-HUB_LC-G_utae" in text


def test_models_unknown_id_exits_2(capsys) -> None:
    assert main(["models", "LC-Z"]) == 2
    assert "LC-Z" in capsys.readouterr().err


# -- flairkit map -------------------------------------------------------------------------------


def write_zone_yaml(zone, tmp_path: Path) -> Path:
    """A map config with paths relative to its folder: a random ResNet18 U-Net, the aerial mosaic,
    and a grid of the zone's two western patches, one above the other (two tiles)."""
    import torch

    from flairkit.checkpoint import save_model
    from flairkit.config import ModelConfig, preprocess_config_for
    from flairkit.modalities import COSIA_CLASSES, Task
    from flairkit.models.build import build_model

    aerial = Modality.AERIAL_RGBI
    cfg = ModelConfig(
        inputs={aerial: 3}, img_sizes={aerial: 256}, tasks={Task.COSIA: len(COSIA_CLASSES)},
        arch="resnet18-unet", out_px=256,
    )  # fmt: skip
    torch.manual_seed(0)
    save_model(tmp_path / "models" / "lc.safetensors", build_model(cfg), cfg,
               preprocess_config_for([aerial]))  # fmt: skip
    (tmp_path / "mosaic").symlink_to(zone.sources[aerial].path.parent)
    left, bottom, _, top = zone.bounds
    bounds = [left, bottom, left + 102.4, top]
    path = tmp_path / "zone.yaml"
    path.write_text(
        "model: models/lc.safetensors\n"
        "inputs:\n"
        "  AERIAL: mosaic/AERIAL_RGBI.tif\n"
        "output: {path: maps/zone.tif}\n"
        f"grid: {{bounds: {bounds}}}\n"
        "tiling: {tile_px: 256, overlap_px: 0}\n"
        "runtime: {progress: false}\n"
    )
    return path


def test_map_writes_the_class_map_style_and_preview(
    synthetic_zone, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import rasterio

    config = write_zone_yaml(synthetic_zone, tmp_path)
    assert main(["map", "--config", str(config), "output.write_proba=true"]) == 0
    out = capsys.readouterr().out
    maps = tmp_path / "maps"
    assert sorted(p.name for p in maps.iterdir()) == [
        "zone.qml", "zone.tif", "zone_preview.png", "zone_proba.tif",
    ]  # fmt: skip
    assert f"class_path: {maps / 'zone.tif'}" in out
    with rasterio.open(maps / "zone.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (src.width, src.height) == (256, 512)
    assert (maps / "zone_preview.png").read_bytes()[:8] == PNG_MAGIC


def test_map_by_two_jobs_then_merge(
    synthetic_zone, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_zone_yaml(synthetic_zone, tmp_path)
    for rank in ("1", "0"):
        assert main(["map", "-c", str(config), "--rank", rank, "--world-size", "2"]) == 0
        assert "--merge --world-size 2" in capsys.readouterr().out
    assert not (tmp_path / "maps" / "zone.tif").exists()
    assert main(["map", "-c", str(config), "--merge"]) == 2
    assert "--merge needs --world-size" in capsys.readouterr().err
    assert main(["map", "-c", str(config), "--merge", "--world-size", "2"]) == 0
    assert (tmp_path / "maps" / "zone.tif").is_file()
    assert not (tmp_path / "maps" / "zone.pieces").exists()


def test_map_errors_name_the_key(
    synthetic_zone, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_zone_yaml(synthetic_zone, tmp_path)
    code = main(["map", "-c", str(config), "inputs.AERIAL=nowhere.tif"])
    assert code == 2
    err = capsys.readouterr().err
    assert "inputs.AERIAL_RGBI.path" in err and "nowhere.tif: raster not found" in err
    assert main(["map", "-c", str(config), "runtime.device=gpu"]) == 2
    assert "runtime.device: 'gpu' is not one of" in capsys.readouterr().err


def test_lightning_messages_print_once() -> None:
    """Lightning's own log handler and ours must not both print its messages."""
    script = (
        "import sys\n"
        "from flairkit import cli\n"
        "def command(args):\n"
        "    from lightning.pytorch.utilities.rank_zero import rank_zero_info\n"
        "    rank_zero_info('lightning says this once')\n"
        "    return 0\n"
        "cli._COMMANDS['info'] = command\n"
        "sys.exit(cli.main(['info', '.']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("lightning says this once") == 1
