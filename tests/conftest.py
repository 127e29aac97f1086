"""Shared fixtures: a tiny synthetic FLAIR-HUB written once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# LitData's cache of packs read from URLs (and their manifests): a temporary folder, not
# ~/.lightning; read by LitData when it is imported, so set before any import of it.
LITDATA_CACHE = os.environ.setdefault("LITDATA_CACHE_DIR", tempfile.mkdtemp(prefix="litdata-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from flairkit.synth import SynthSummary, make_synthetic_flairhub  # noqa: E402
from flairkit.synth_zone import ZoneSummary, make_synthetic_zone  # noqa: E402

#: Small but complete: 2 train/val + 2 test domain-years, 2 ROIs each, 2x2 patches per ROI.
SYNTH_KWARGS = dict(
    seed=0, aerial_px=64, num_rois=2, patches_per_roi=(2, 2), min_dates=4, max_dates=9
)


@pytest.fixture(scope="session", autouse=True)
def _litdata_cache() -> Iterator[None]:
    yield
    if Path(LITDATA_CACHE).name.startswith("litdata-"):  # ours, not a user's
        shutil.rmtree(LITDATA_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """The summary of a synthetic dataset (read-only: copy it before damaging files)."""
    root = tmp_path_factory.mktemp("flairhub")
    return make_synthetic_flairhub(root, **SYNTH_KWARGS)


@pytest.fixture(scope="session")
def synthetic_root(synthetic: SynthSummary) -> Path:
    """Root folder of the session's synthetic dataset (read-only)."""
    return Path(synthetic.root)


#: A 2 x 3-patch zone (non-square, so rows and columns cannot be swapped unnoticed).
ZONE_KWARGS = dict(seed=0, aerial_px=256, patches=(2, 3), min_dates=4, max_dates=8)


@pytest.fixture(scope="session")
def synthetic_zone(tmp_path_factory: pytest.TempPathFactory) -> ZoneSummary:
    """Patch files of one ROI and mosaic rasters of the same pixels (read-only)."""
    return make_synthetic_zone(tmp_path_factory.mktemp("zone"), **ZONE_KWARGS)


@pytest.fixture(scope="module")
def module_tmp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A folder for one test module's shared files, deleted when the module is done.

    Module fixtures that train or save models write a few hundred MB (checkpoints with the
    optimiser state); kept to the end of the session they filled a small CI disk.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    yield path
    shutil.rmtree(path, ignore_errors=True)
