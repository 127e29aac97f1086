"""Packed (LitData) datasets give the samples the TIFFs give, and split/filter without reading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flairkit.cli import main
from flairkit.config import preprocess_config_for
from flairkit.data.datamodule import FlairDataModule
from flairkit.data.packed import MANIFEST, PackedReader, catalog_of_pack, is_packed, pack
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import read_patch
from flairkit.io.raster import DataError
from flairkit.modalities import INPUT_MODALITIES, Modality, Task
from flairkit.synth import SynthSummary

ALL = list(Modality)


@pytest.fixture(scope="module")
def packed(synthetic: SynthSummary, module_tmp: Path) -> Path:
    summary = pack(Catalog.open(synthetic.root), module_tmp / "packed", workers=2, progress=False)
    assert summary.num_patches == sum(len(v) for v in synthetic.patch_ids.values())
    return summary.root


def test_every_patch_reads_the_same_from_the_pack(synthetic: SynthSummary, packed: Path) -> None:
    catalog = Catalog.open(synthetic.root)
    dates = DatesIndex(synthetic.root).load([m for m in ALL if m.spec.is_time_series])
    reader = PackedReader(packed)
    for ref in catalog.refs:
        tiff = read_patch(ref, ALL, dates)
        pack_ = reader.read(ref.patch_id, ALL)
        for m in ALL:
            assert pack_.arrays[m].dtype == tiff.arrays[m].dtype, (ref.patch_id, m)
            np.testing.assert_array_equal(pack_.arrays[m], tiff.arrays[m])
            assert pack_.georefs[m] == tiff.georefs[m]
            if m.spec.is_time_series:
                np.testing.assert_array_equal(pack_.dates[m], tiff.dates[m])
        assert pack_.nonfinite == tiff.nonfinite


def test_preprocessed_samples_are_equal_on_all_modalities(
    synthetic: SynthSummary, packed: Path
) -> None:
    inputs = list(INPUT_MODALITIES)
    config = preprocess_config_for(inputs, (Task.COSIA, Task.LPIS), lpis_level=3)
    loaders = {}
    for name, root in (("tiff", Path(synthetic.root)), ("packed", packed)):
        catalog = catalog_of_pack(root) if is_packed(root) else Catalog.open(root)
        dm = FlairDataModule(catalog, config, batch_size=4, augment=None)
        dm.setup()
        loaders[name] = dm.datasets["test"]
    assert len(loaders["tiff"]) == len(loaders["packed"]) > 0
    for i in range(len(loaders["tiff"])):
        a, b = loaders["tiff"][i], loaders["packed"][i]
        assert a.patch_id == b.patch_id and a.bounds == b.bounds and a.crs == b.crs
        for m in inputs:
            torch.testing.assert_close(a.inputs[m], b.inputs[m], rtol=0, atol=0)
        for m in a.dates:
            torch.testing.assert_close(a.dates[m], b.dates[m], rtol=0, atol=0)
        for t in a.labels:
            torch.testing.assert_close(a.labels[t], b.labels[t], rtol=0, atol=0)


def test_splits_and_filters_come_from_the_manifest(synthetic: SynthSummary, packed: Path) -> None:
    catalog = catalog_of_pack(packed)
    for split, ids in synthetic.patch_ids.items():
        assert [r.patch_id for r in catalog.filter(split=split).refs] == sorted(ids)
    d012 = catalog.filter(departments=["D012"])
    assert {r.patch_id[:4] for r in d012.refs} == {"D012"}
    assert all(r.modalities == frozenset(ALL) for r in catalog.refs)
    folders = sorted(p.parent.relative_to(packed).as_posix() for p in packed.rglob("index.json"))
    assert folders == sorted(json.loads((packed / MANIFEST).read_text())["groups"])


def test_pack_resumes_and_appends(
    synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog.open(synthetic.root).filter(modalities=[Modality.AERIAL_RGBI])
    out = tmp_path / "p"
    first = pack(catalog.filter(departments=["D006"]), out, [Modality.AERIAL_RGBI], progress=False)
    assert first.written == ("train/D006-2020", "val/D006-2020")
    # a killed run: one folder half-written under .tmp, not recorded
    half = out / ".tmp" / "test" / "D012-2019"
    half.mkdir(parents=True)
    (half / "chunk-0-0.bin").write_bytes(b"partial")
    second = pack(catalog, out, [Modality.AERIAL_RGBI], progress=True)
    assert second.skipped == first.written
    n = second.num_patches  # the bar counts patches (with a rate), not only folders
    assert n == 24 and f"{n}/{n} [" in capsys.readouterr().err
    assert set(second.written) == {"test/D012-2019", "test/D068-2021", "train/D032-2019", "val/D032-2019"}  # fmt: skip
    assert not (out / ".tmp").exists()
    assert len(catalog_of_pack(out).refs) == len(catalog.refs)
    with pytest.raises(ValueError, match=r"this pack holds \['AERIAL_RGBI'\]"):
        pack(catalog, out, [Modality.DEM_ELEV], progress=False)


def test_cli_pack(
    synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p"
    argv = ["pack", str(synthetic.root), str(out), "--split", "test", "--modalities", "S2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "packed 16 patches into 2 folders" in capsys.readouterr().out
    assert main(argv) == 0
    assert "packed 0 patches into 0 folders (2 already complete)" in capsys.readouterr().out
    assert main(["pack", str(tmp_path / "nope"), str(out)]) == 2
    assert "nope: no such dataset root" in capsys.readouterr().err
    assert main(["pack", str(synthetic.root), str(out), "--departments", "D999"]) == 2
    assert "no patch matches" in capsys.readouterr().err
    assert main(["pack", str(synthetic.root), "s3://bucket/pack"]) == 2
    assert "s3://bucket/pack: pack writes a local or shared folder" in capsys.readouterr().err
    assert not Path("s3:").exists()
    shutil.rmtree(out)


def test_fit_on_packed_data_equals_fit_on_tiffs(
    synthetic: SynthSummary, packed: Path, tmp_path: Path
) -> None:
    from flairkit.config import load_run_config
    from flairkit.training.run import fit

    def run(root: Path, name: str) -> dict[str, torch.Tensor]:
        overrides = [
            f"data.root={root}", "data.batch_size=2", "data.augment=false",
            "model.inputs.AERIAL_RGBI=3", "model.inputs.SENTINEL2_TS=10",
            "model.img_sizes.AERIAL_RGBI=64", "model.img_sizes.SENTINEL2_TS=2",
            "model.tasks.AERIAL_LABEL-COSIA=19", "model.arch=resnet18-unet",
            "train.max_epochs=1", "train.limit_train_batches=2", "train.limit_val_batches=1",
            "train.progress_bar=false", f"train.output_dir={tmp_path / name}",
        ]  # fmt: skip
        result = fit(load_run_config(None, overrides))
        return torch.load(result.last_checkpoint, weights_only=True)["state_dict"]

    a, b = run(Path(synthetic.root), "tiff"), run(packed, "packed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_zstd_pack_reads_the_same_and_is_smaller(
    synthetic: SynthSummary, packed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = Catalog.open(synthetic.root)
    out = pack(catalog, tmp_path / "z", workers=2, progress=False, compression="zstd:3").root
    assert json.loads((out / MANIFEST).read_text())["compression"] == "zstd:3"
    plain, small = PackedReader(packed), PackedReader(out)
    for ref in catalog.refs:
        a, b = plain.read(ref.patch_id, ALL), small.read(ref.patch_id, ALL)
        for m in ALL:
            assert b.arrays[m].dtype == a.arrays[m].dtype and b.arrays[m].shape == a.arrays[m].shape
            np.testing.assert_array_equal(b.arrays[m], a.arrays[m])
            if m.spec.is_time_series:
                np.testing.assert_array_equal(b.dates[m], a.dates[m])
        assert b.georefs == a.georefs and b.nonfinite == a.nonfinite

    def size(root: Path) -> int:
        return sum(p.stat().st_size for p in root.rglob("*.bin"))

    assert size(out) < 0.8 * size(packed)
    with pytest.raises(DataError, match=r"this pack is compressed as zstd:3; pack with that"):
        pack(catalog, out, progress=False)  # appending uncompressed to a compressed pack
    assert main(["pack", str(synthetic.root), str(tmp_path / "x"), "--compression", "lz4"]) == 2
    assert "--compression 'lz4': use zstd or zstd:<level 1-22>" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
