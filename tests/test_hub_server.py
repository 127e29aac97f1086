"""The stand-in hub answers the real ``huggingface_hub`` client as the hub does (no network)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request

import huggingface_hub.constants
import pytest
from hub_server import StandInHub, serve
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

BIG = bytes(range(256)) * 1200  # 307,200 bytes: an LFS file
SMALL = b"a small git file\n"


@pytest.fixture
def hub(monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1 for the suite; the stand-in is on 127.0.0.1, so the client
    # may go online for it (the constant is read once, at import).
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    stand_in = StandInHub()
    stand_in.add(
        "IGNF/FLAIR-HUB_LC-G_utae", {"FLAIR-HUB_LC-G_utae.safetensors": BIG, "README.md": SMALL}
    )
    stand_in.add(
        "IGNF/FLAIR-HUB",
        {
            "data/D004-2021_AERIAL_RGBI.zip": BIG,
            "data/D005-2021_DEM_ELEV.zip": BIG[:5000],
            "README.md": SMALL,
        },
        repo_type="dataset",
    )
    with serve(stand_in):
        yield stand_in


def test_download_then_cache_hit(hub, tmp_path):
    kwargs = dict(endpoint=hub.endpoint, cache_dir=tmp_path)
    path = hf_hub_download("IGNF/FLAIR-HUB_LC-G_utae", "FLAIR-HUB_LC-G_utae.safetensors", **kwargs)
    assert open(path, "rb").read() == BIG
    again = hf_hub_download("IGNF/FLAIR-HUB_LC-G_utae", "FLAIR-HUB_LC-G_utae.safetensors", **kwargs)
    assert again == path
    assert hub.downloads("FLAIR-HUB_LC-G_utae.safetensors") == [None]  # fetched once
    commit = hub.repos[("model", "IGNF/FLAIR-HUB_LC-G_utae")].commit
    assert f"snapshots/{commit}/" in path


def test_listing_carries_sizes_and_lfs_sha256(hub):
    api = HfApi(endpoint=hub.endpoint)
    info = api.dataset_info("IGNF/FLAIR-HUB", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {
        "data/D004-2021_AERIAL_RGBI.zip",
        "data/D005-2021_DEM_ELEV.zip",
        "README.md",
    }
    big = siblings["data/D004-2021_AERIAL_RGBI.zip"]
    assert (big.size, big.lfs.sha256) == (len(BIG), hashlib.sha256(BIG).hexdigest())
    assert siblings["README.md"].lfs is None
    tree = api.list_repo_tree("IGNF/FLAIR-HUB", repo_type="dataset", recursive=True)
    files = {e.path: e for e in tree if hasattr(e, "lfs")}
    assert files["data/D005-2021_DEM_ELEV.zip"].lfs.sha256 == hashlib.sha256(BIG[:5000]).hexdigest()
    top = [e.path for e in api.list_repo_tree("IGNF/FLAIR-HUB", repo_type="dataset")]
    assert sorted(top) == ["README.md", "data"]  # one level: the folder, not its files


def test_a_dropped_connection_is_retried_to_the_right_bytes(hub, tmp_path):
    hub.fail_after_bytes["FLAIR-HUB_LC-G_utae.safetensors"] = 100_000
    path = hf_hub_download(
        "IGNF/FLAIR-HUB_LC-G_utae", "FLAIR-HUB_LC-G_utae.safetensors",
        endpoint=hub.endpoint, cache_dir=tmp_path,
    )  # fmt: skip
    assert open(path, "rb").read() == BIG
    assert len(hub.downloads("FLAIR-HUB_LC-G_utae.safetensors")) == 2


def test_byte_ranges(hub):
    url = f"{hub.endpoint}/datasets/IGNF/FLAIR-HUB/resolve/main/data/D004-2021_AERIAL_RGBI.zip"
    request = urllib.request.Request(url, headers={"Range": "bytes=1000-"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 206
        assert response.read() == BIG[1000:]
        assert response.headers["Content-Range"] == f"bytes 1000-{len(BIG) - 1}/{len(BIG)}"


def test_unknown_revision_and_file_are_the_clients_errors(hub, tmp_path):
    kwargs = dict(endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("IGNF/FLAIR-HUB_LC-G_utae", "README.md", revision="v9", **kwargs)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("IGNF/FLAIR-HUB_LC-G_utae", "nope.safetensors", **kwargs)


def test_hf_endpoint_and_offline_mode_in_a_fresh_process(hub, tmp_path):
    code = (
        "from huggingface_hub import hf_hub_download\n"
        "print(hf_hub_download('IGNF/FLAIR-HUB_LC-G_utae', 'README.md'))\n"
    )
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path)}
    online = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert open(online.stdout.strip(), "rb").read() == SMALL
    hub.requests.clear()
    offline = subprocess.run(
        [sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert offline.stdout.strip() == online.stdout.strip()
    assert hub.requests == []  # served from the cache alone
