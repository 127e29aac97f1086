"""Parsing model references: local files, hub ids and IGN's repository naming."""

from __future__ import annotations

from pathlib import Path

import pytest

from flairkit.model_ref import (
    PUBLISHED_REPOS,
    ModelRefError,
    RepoName,
    parse_model_ref,
    parse_repo_name,
)
from flairkit.presets import PRESETS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet", RepoName("LC-A", "IR", "swinbase", "upernet")),
        ("FLAIR-HUB_LC-A_RGB_swinlarge-upernet", RepoName("LC-A", "RGB", "swinlarge", "upernet")),
        ("IGNF/FLAIR-HUB_LC-F_swinbase-upernet", RepoName("LC-F", None, "swinbase", "upernet")),
        ("IGNF/FLAIR-HUB_LPIS-F_utae", RepoName("LPIS-F", None, "utae", None)),
        ("IGNF/FLAIR-HUB_LC-ALL_swinbase-upernet", RepoName("LC-ALL", None, "swinbase", "upernet")),
        (
            "IGNF/FLAIR-HUB_LC-A_IR_convnextv2tiny-upernet",
            RepoName("LC-A", "IR", "convnextv2tiny", "upernet"),
        ),
    ],
)
def test_repo_names_follow_ign_naming(name, expected):
    assert parse_repo_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "IGNF/MAESTRO_FLAIR-HUB_base",  # another architecture
        "IGNF/FLAIR-HUB_LC-Z_swinbase-upernet",  # no such preset
        "IGNF/FLAIR-HUB_LC-A_NIR_swinbase-upernet",  # channels are IR or RGB
        "IGNF/FLAIR-HUB_LC-A",  # no encoder
        "my_model",
    ],
)
def test_other_names_are_not_read_as_presets(name):
    assert parse_repo_name(name) is None


def test_every_known_published_repo_names_a_preset():
    for repo in PUBLISHED_REPOS:
        parsed = parse_repo_name(repo)
        assert parsed is not None, repo
        assert parsed.model_id in PRESETS


def test_hub_id_with_revision():
    ref = parse_model_ref("hf:IGNF/FLAIR-HUB_LC-G_utae@v1.0")
    assert ref.is_hub and ref.path is None
    assert ref.repo_id == "IGNF/FLAIR-HUB_LC-G_utae"
    assert ref.revision == "v1.0"
    assert ref.preset == "LC-G"
    assert ref.hub_filename == "FLAIR-HUB_LC-G_utae.safetensors"


def test_hub_id_without_revision_or_naming():
    ref = parse_model_ref("hf:someone/my-model")
    assert (ref.repo_id, ref.revision, ref.preset) == ("someone/my-model", None, None)
    assert parse_model_ref("hf:someone/my-model", preset="lc-d").preset == "LC-D"


def test_local_files_take_the_preset_from_the_name_or_the_user(tmp_path):
    ref = parse_model_ref(tmp_path / "FLAIR-HUB_LC-I_swinbase-upernet.safetensors")
    assert not ref.is_hub
    assert ref.path == tmp_path / "FLAIR-HUB_LC-I_swinbase-upernet.safetensors"
    assert ref.preset == "LC-I"
    assert parse_model_ref("runs/x/model.safetensors").preset is None
    assert parse_model_ref("runs/x/last.ckpt", preset="LPIS-J").preset == "LPIS-J"
    assert parse_model_ref("~/m.pth").path == Path("~/m.pth").expanduser()
    with pytest.raises(ModelRefError, match="hub id"):
        _ = parse_model_ref("runs/x/model.safetensors").hub_filename


@pytest.mark.parametrize(
    ("text", "preset", "message"),
    [
        ("hf:IGNF", None, r"hf:IGNF: expected hf:<org>/<repo>\[@<revision>\]"),
        ("hf:IGNF/a/b", None, "expected hf:"),
        ("hf:IGNF/x@", None, "expected hf:"),
        ("", None, "empty model reference"),
        ("model.ckpt", "LC-Q", "model.ckpt: unknown preset 'LC-Q'"),
        (
            "hf:IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet",
            "LC-B",
            "the name says preset LC-A, but preset LC-B was given",
        ),
    ],
)
def test_bad_references_name_themselves(text, preset, message):
    with pytest.raises(ModelRefError, match=message):
        parse_model_ref(text, preset=preset)
