"""`flairkit show` draws through the training Preprocessor: a run's cloud filter, DEM channels,
LPIS level and bands decide what is drawn (``--config``); without one, the benchmark's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from flairkit.cli import main
from flairkit.config import CloudFilterConfig, DemMode, ModalityConfig, PreprocessConfig
from flairkit.io.catalog import Catalog
from flairkit.io.dates import DatesIndex
from flairkit.io.patches import read_patch
from flairkit.modalities import Modality, Task
from flairkit.sample import RawSample
from flairkit.show import Panel, describe_patch, figure_panels, show_preprocessor
from flairkit.synth import SynthSummary
from flairkit.transforms.preprocess import Preprocessor

DEM_MEAN, DEM_STD = 311.06, 537.55
#: Every date passes: no pixel has a cloud or snow probability above 100.
KEEP_ALL = CloudFilterConfig(max_cloud=100, max_snow=100, max_cover_fraction=0.05)


def read_all(synthetic: SynthSummary, patch_id: str | None = None) -> RawSample:
    catalog = Catalog.open(synthetic.root, split=None)
    ref = catalog.get(patch_id) if patch_id else catalog.refs[0]
    return read_patch(
        ref, sorted(ref.modalities, key=list(Modality).index), DatesIndex(synthetic.root)
    )


@pytest.fixture(scope="module")
def cloudy(synthetic: SynthSummary) -> RawSample:
    """A patch whose benchmark cloud filter drops at least one S2 date."""
    default = show_preprocessor()
    for patch_id in sorted(i for ids in synthetic.patch_ids.values() for i in ids):
        raw = read_all(synthetic, patch_id)
        if len(default.kept_dates(raw)) < raw.arrays[Modality.SENTINEL2_TS].shape[0]:
            return raw
    raise AssertionError("the synthetic set has no S2 date the cloud filter drops")


def s2_titles(panels: list[Panel], status: str) -> list[str]:
    return [p.title for p in panels if p.title.startswith("S2 ") and p.title.endswith(status)]


def dem_panels(panels: list[Panel]) -> list[Panel]:
    return [p for p in panels if p.title.endswith("(m)")]


def test_cloud_threshold_of_the_config_changes_the_dates_drawn(cloudy: RawSample) -> None:
    num_total = cloudy.arrays[Modality.SENTINEL2_TS].shape[0]
    default_pre = show_preprocessor()
    loose_pre = show_preprocessor(PreprocessConfig(cloud_filter=KEEP_ALL))
    kept_default = default_pre.kept_dates(cloudy)
    assert 0 < len(kept_default) < num_total
    # num_dates above the series length: every date is drawn, marked as the filter decides.
    default_panels, _ = figure_panels(cloudy, default_pre, num_dates=100)
    loose_panels, _ = figure_panels(cloudy, loose_pre, num_dates=100)
    assert len(s2_titles(default_panels, "(kept)")) == len(kept_default)
    assert len(s2_titles(default_panels, "(cloud: dropped)")) == num_total - len(kept_default)
    assert len(s2_titles(loose_panels, "(kept)")) == num_total
    assert s2_titles(loose_panels, "(cloud: dropped)") == []
    # The description lists the same dates the model would get.
    dates = cloudy.dates[Modality.SENTINEL2_TS]
    desc = describe_patch(cloudy, default_pre)["modalities"]["SENTINEL2_TS"]["cloud_filter"]
    assert desc["kept"] == [str(dates[i]) for i in kept_default]
    loose = describe_patch(cloudy, loose_pre)["modalities"]["SENTINEL2_TS"]["cloud_filter"]
    assert len(loose["kept"]) == num_total and loose["dropped"] == []
    # A filter switched off keeps everything too (the Preprocessor's rule, not show's).
    off = show_preprocessor(PreprocessConfig(cloud_filter=CloudFilterConfig(enabled=False)))
    off_panels, _ = figure_panels(cloudy, off, num_dates=100)
    assert len(s2_titles(off_panels, "(kept)")) == num_total


@pytest.mark.parametrize(
    ("mode", "titles"),
    [
        ("stack", ["DSM (m)", "height DSM-DTM (m)"]),
        ("height", ["height DSM-DTM (m)"]),
        ("raw", ["DSM (m)", "DTM (m)"]),
    ],
)
def test_dem_panels_equal_the_preprocessor_output(
    synthetic: SynthSummary, mode: DemMode, titles: list[str]
) -> None:
    raw = read_all(synthetic)
    config = PreprocessConfig(inputs={Modality.DEM_ELEV: ModalityConfig(norm="none")}, dem=mode)
    model_input = Preprocessor(config)(raw).inputs[Modality.DEM_ELEV].numpy()
    panels = dem_panels(figure_panels(raw, show_preprocessor(config))[0])
    assert [p.title for p in panels] == titles
    assert len(panels) == model_input.shape[0]
    for panel, channel in zip(panels, model_input, strict=True):
        np.testing.assert_array_equal(panel.image, channel)
    # With the published statistics the model gets the same channels, normalised.
    normalised = PreprocessConfig(inputs={Modality.DEM_ELEV: ModalityConfig()}, dem=mode)
    model_input = Preprocessor(normalised)(raw).inputs[Modality.DEM_ELEV].numpy()
    panels = dem_panels(figure_panels(raw, show_preprocessor(normalised))[0])
    for panel, channel in zip(panels, model_input, strict=True):
        np.testing.assert_allclose((panel.image - DEM_MEAN) / DEM_STD, channel, atol=1e-6)


def test_lpis_level_comes_from_the_config_unless_given(synthetic: SynthSummary) -> None:
    raw = read_all(synthetic)
    lpis = raw.arrays[Modality.LPIS]
    _, legends = figure_panels(raw, show_preprocessor(PreprocessConfig(lpis_level=3)))
    (legend,) = [p for p in legends if p.title.startswith("LPIS")]
    assert legend.title == "LPIS level 3" and len(legend.classes) == 46
    np.testing.assert_array_equal(legend.label, lpis[2])
    _, legends = figure_panels(raw, show_preprocessor(PreprocessConfig(lpis_level=3)), lpis_level=2)
    (legend,) = [p for p in legends if p.title.startswith("LPIS")]
    assert legend.title == "LPIS level 2" and len(legend.classes) == 31
    np.testing.assert_array_equal(legend.label, lpis[1])
    _, legends = figure_panels(raw)  # the benchmark's level 1
    assert [p.title for p in legends] == ["COSIA land cover", "LPIS level 1"]
    np.testing.assert_array_equal(legends[1].label, lpis[0])
    np.testing.assert_array_equal(legends[0].label, raw.arrays[Modality.COSIA][0])


def test_bands_of_the_config_by_name(synthetic: SynthSummary) -> None:
    raw = read_all(synthetic)
    aerial = raw.arrays[Modality.AERIAL_RGBI]
    default, _ = figure_panels(raw)
    titles = [p.title for p in default]
    assert titles[:2] == ["aerial RGB", "aerial NIR-R-G"]
    assert any(t.startswith("S1 asc VV dB") for t in titles)
    config = PreprocessConfig(
        inputs={
            Modality.AERIAL_RGBI: ModalityConfig(bands=("NIR",)),
            Modality.SENTINEL1_ASC_TS: ModalityConfig(bands=("VH",), norm="none"),
        }
    )
    panels, _ = figure_panels(raw, show_preprocessor(config))
    by_title = {p.title: p for p in panels}
    assert "aerial NIR-R-G" not in by_title
    np.testing.assert_array_equal(by_title["aerial NIR"].image, aerial[3])
    (s1,) = [p for p in panels if p.title.startswith("S1 asc")]
    assert s1.title.startswith("S1 asc VH dB")
    series = raw.arrays[Modality.SENTINEL1_ASC_TS]
    vh = series[series.shape[0] // 2, 1].astype(np.float64)
    np.testing.assert_allclose(s1.image, 10 * np.log10(np.clip(vh, 1e-6, None)))
    # Modalities the run does not feed are drawn with the benchmark's bands.
    assert any(t.startswith("S1 desc VV dB") for t in by_title)


def test_show_preprocessor_keeps_the_run_settings() -> None:
    run = PreprocessConfig(
        inputs={Modality.AERIAL_RGBI: ModalityConfig(bands=("R", "G", "B"))},
        tasks=(Task.LPIS,),
        lpis_level=2,
        dem="height",
        cloud_filter=KEEP_ALL,
    )
    pre = show_preprocessor(run)
    assert pre.config.inputs[Modality.AERIAL_RGBI] == run.inputs[Modality.AERIAL_RGBI]
    assert pre.channels(Modality.AERIAL_RGBI) == ("R", "G", "B")
    assert pre.channels(Modality.DEM_ELEV) == ("HEIGHT",)
    assert pre.config.cloud_filter == KEEP_ALL and pre.config.lpis_level == 2
    assert set(pre.config.tasks) == {Task.COSIA, Task.LPIS}
    assert pre.channels(Modality.SPOT_RGBI) == ("NIR", "R", "G")  # added with the defaults


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def write_run(
    tmp_path: Path, root: str, preprocess: dict[str, Any], name: str = "run.yaml"
) -> Path:
    config = {
        "data": {"root": root},
        "model": {
            "inputs": {"AERIAL_RGBI": 3},
            "img_sizes": {"AERIAL_RGBI": 64},
            "tasks": {"AERIAL_LABEL-COSIA": 19},
            "arch": "resnet18-unet",
        },
        "preprocess": preprocess,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def show_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    code = main(["show", *argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_cli_show_config(
    synthetic: SynthSummary,
    cloudy: RawSample,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, patch_id = str(synthetic.root), cloudy.patch_id
    loose = {"cloud_filter": {"max_cloud": 100, "max_snow": 100}, "lpis_level": 3, "dem": "raw"}
    config = write_run(tmp_path, root, loose)
    png = tmp_path / "figure.png"
    desc = show_json(capsys, [root, patch_id, "--config", str(config), "--png", str(png)])
    assert png.is_file() and png.stat().st_size > 1000
    filtered = desc["modalities"]["SENTINEL2_TS"]["cloud_filter"]
    num_total = desc["modalities"]["SENTINEL2_TS"]["shape"][0]
    assert len(filtered["kept"]) == num_total and filtered["dropped"] == []
    default = show_json(capsys, [root, patch_id])["modalities"]["SENTINEL2_TS"]["cloud_filter"]
    assert len(default["kept"]) < num_total and default["dropped"]
    # --lpis-level still overrides the config's level
    code = main(["show", root, patch_id, "--config", str(config), "--lpis-level", "1"])
    assert code == 0 and "cloud filter keeps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("preprocess", "key"),
    [
        ({"cloud_filter": {"max_cloud": "lots"}}, "preprocess.cloud_filter.max_cloud"),
        ({"lpis_level": 4}, "lpis_level"),
        (
            {"inputs": {"AERIAL_RGBI": {"bands": ["R", "X", "G"]}}},
            "preprocess.inputs.AERIAL_RGBI.bands",
        ),
        ({"dem_mode": "stack"}, "preprocess.dem_mode"),
    ],
)
def test_cli_show_bad_config_exits_2_naming_file_and_key(
    synthetic: SynthSummary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    preprocess: dict[str, Any],
    key: str,
) -> None:
    config = write_run(tmp_path, str(synthetic.root), preprocess, name="bad.yaml")
    assert main(["show", str(synthetic.root), "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert str(config) in line and key in line


def test_cli_show_missing_config_exits_2_naming_it(
    synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "run.yaml"
    assert main(["show", str(synthetic.root), "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err
