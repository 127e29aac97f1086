"""``flairkit download`` against a stand-in hub serving a zipped synthetic FLAIR-HUB.

The dataset repository is built here from the session's synthetic dataset, one zip per
domain-year x modality folder in the real naming (``data/D006-2020_AERIAL_RGBI.zip``) plus
``data/GLOBAL_ALL_MTD.zip``; the real ``huggingface_hub`` client lists and fetches it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import huggingface_hub.constants
import pytest
from hub_server import StandInHub, serve

from flairkit import download as dl
from flairkit.cli import main
from flairkit.io.catalog import Catalog
from flairkit.synth import SynthSummary

REPO = "IGNF/FLAIR-HUB"


def zip_folder(root: Path, name: str) -> bytes:
    """A folder of ``root`` zipped as the hub's archives are: entries start with its name."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(root)), (2025, 1, 1, 0, 0, 0))
                zf.writestr(info, path.read_bytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(synthetic: SynthSummary) -> dict[str, bytes]:
    """``data/<folder>.zip`` -> bytes, for every folder of the synthetic dataset."""
    root = Path(synthetic.root)
    folders = [p.name for p in sorted(root.iterdir()) if p.is_dir() and p.name != "csv"]
    return {f"data/{name}.zip": zip_folder(root, name) for name in folders}


@pytest.fixture
def hub(archives: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    stand_in = StandInHub()
    stand_in.add(REPO, {**archives, "README.md": b"# FLAIR-HUB (stand-in)\n"}, "dataset")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with serve(stand_in):
        monkeypatch.setenv("HF_ENDPOINT", stand_in.endpoint)
        yield stand_in


def dry_run(out: Path, *options: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["download", str(out), "--dry-run", "--no-progress", *options]) == 0
    lines = capsys.readouterr().out.splitlines()
    return sorted(line.split()[0].removeprefix("data/") for line in lines if line.startswith("  "))


def test_dry_run_selects_exactly_the_archives(
    hub: StandInHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    picked = dry_run(out, "--departments", "D006", "D012-2019", "--modalities", "S2", "AERIAL_RGBI", "PAN", capsys=capsys)  # fmt: skip
    assert picked == [
        "D006-195X_AERIAL-RLT_PAN.zip", "D006-2020_AERIAL_RGBI.zip", "D006-2020_SENTINEL2_TS.zip",
        "D012-195X_AERIAL-RLT_PAN.zip", "D012-2019_AERIAL_RGBI.zip", "D012-2019_SENTINEL2_TS.zip",
        "GLOBAL_ALL_MTD.zip",
    ]  # fmt: skip
    picked = dry_run(out, "--years", "2019", "--modalities", "AERIAL_LABEL-COSIA", "PAN", capsys=capsys)  # fmt: skip
    assert picked == [
        "D012-195X_AERIAL-RLT_PAN.zip", "D012-2019_AERIAL_LABEL-COSIA.zip",
        "D032-195X_AERIAL-RLT_PAN.zip", "D032-2019_AERIAL_LABEL-COSIA.zip", "GLOBAL_ALL_MTD.zip",
    ]  # fmt: skip
    assert not (out / "D012-2019_AERIAL_LABEL-COSIA").exists()  # a dry run fetches nothing
    assert not [p for _, p, _ in hub.requests if "/resolve/" in p]


def test_dry_run_of_a_split_reads_the_split_geopackage(
    hub: StandInHub, synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picked = dry_run(tmp_path / "ds", "--split", "test", "--modalities", "S2", capsys=capsys)
    test_domains = sorted({pid.split("_")[0] for pid in synthetic.patch_ids["test"]})
    assert test_domains == ["D012-2019", "D068-2021"]
    assert picked == ["D012-2019_SENTINEL2_TS.zip", "D068-2021_SENTINEL2_TS.zip", "GLOBAL_ALL_MTD.zip"]  # fmt: skip
    # only the metadata archive was fetched, to read the split
    gets = [p for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p]
    commit = hub.repos[("dataset", REPO)].commit
    assert gets == [f"/datasets/{REPO}/resolve/{commit}/data/GLOBAL_ALL_MTD.zip"]


def test_download_reads_with_info_and_equals_the_source(
    hub: StandInHub,
    archives: dict[str, bytes],
    synthetic: SynthSummary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "ds"
    argv = [
        "download",
        str(out),
        "--departments",
        "D006",
        "D012",
        "--no-progress",
        "--workers",
        "3",
    ]
    assert main(argv) == 0
    # 2 x (9 + PAN) + metadata; the bar's bytes are the listing's sizes of those 21 archives
    fetched = [p for p in archives if p.split("/")[1][:4] in ("D006", "D012", "GLOB")]
    total = dl.human_bytes(sum(len(archives[p]) for p in fetched))
    assert f"fetched 21 archives ({total})" in capsys.readouterr().out
    source = Path(synthetic.root)
    for tif in (source / "D012-2019_SENTINEL2_TS").rglob("*.tif"):
        assert (out / tif.relative_to(source)).read_bytes() == tif.read_bytes()
    catalog = Catalog.open(out)
    expected = [p for s in synthetic.patch_ids.values() for p in s if p[:4] in ("D006", "D012")]
    assert sorted(r.patch_id for r in catalog.refs) == sorted(expected)
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_patches"] == len(expected)
    assert main(["check", str(out), "--report", str(tmp_path / "check.json")]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert not list((out / dl.WORK_DIR).rglob("*.zip"))  # our zips are removed once extracted
    # a rerun fetches nothing
    requests = len(hub.requests)
    assert main(argv) == 0
    assert "fetched 0 archives" in capsys.readouterr().out
    assert not [p for _, p, _ in hub.requests[requests:] if "/resolve/" in p]


def test_an_interrupted_download_resumes_without_refetching(
    hub: StandInHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    listing = dl.list_archives(REPO)
    chosen = dl.select(listing, dl.parse_selection(["D006"]))
    done: list[str] = []

    def stop_after_three(archive: dl.Archive) -> None:
        done.append(archive.name)
        if len(done) == 3:
            raise KeyboardInterrupt

    # a killed run: a connection dropped mid-file for one archive, then Ctrl-C after 3
    hub.fail_after_bytes[chosen[4].path] = 1000
    with pytest.raises(KeyboardInterrupt):
        dl.download_archives(out, listing, chosen, workers=1, progress=False, on_done=stop_after_three)  # fmt: skip
    complete = [a for a in chosen if dl.is_complete(out, a)]
    assert chosen[:3] == complete[:3] and len(complete) < len(chosen)
    todo = [a for a in chosen if a not in complete]
    # a half-extracted folder of a killed run is never in the root, only in our work folder
    half = out / dl.WORK_DIR / "tmp" / todo[0].name / todo[0].name
    half.mkdir(parents=True, exist_ok=True)
    (half / "partial.tif").write_bytes(b"half")
    report = dl.download_archives(out, listing, chosen, workers=2, progress=False)
    assert sorted(report.skipped) == sorted(a.name for a in complete)
    assert sorted(report.fetched) == sorted(a.name for a in todo)
    for archive in complete:  # fetched once, in the first run
        assert len(hub.downloads(archive.path)) == 1
    assert all(dl.is_complete(out, a) for a in chosen)
    assert not (out / todo[0].name / "partial.tif").exists()
    assert Catalog.open(out).refs


def test_ctrl_c_is_one_line_130_and_the_rerun_finishes(
    hub: StandInHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "ds"
    argv = ["download", str(out), "--domains", "D006-2020", "--no-progress", "--workers", "1"]
    extract = dl.extract_archive
    calls: list[str] = []

    def interrupted(out: Path, archive: dl.Archive, zip_path: Path) -> int:
        calls.append(archive.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return extract(out, archive, zip_path)

    monkeypatch.setattr(dl, "extract_archive", interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err, err
    assert not (out / calls[2]).exists()  # the interrupted archive left no folder
    monkeypatch.setattr(dl, "extract_archive", extract)
    assert main(argv) == 0
    assert "skipped 2 complete" in capsys.readouterr().out
    for name in calls[:2]:
        assert len(hub.downloads(f"data/{name}.zip")) == 1


def test_a_corrupted_archive_is_fetched_again_or_reported(
    hub: StandInHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    bad = "data/D006-2020_DEM_ELEV.zip"
    hub.corrupt[bad] = 1  # one damaged transfer, then good bytes
    argv = ["download", str(out), "--domains", "D006-2020", "--modalities", "DEM", "--no-progress"]
    assert main(argv) == 0
    assert "fetched again after a bad sha256: 1" in capsys.readouterr().out
    assert len(hub.downloads(bad)) == 2 and (out / "D006-2020_DEM_ELEV").is_dir()
    out2 = tmp_path / "ds2"
    hub.corrupt[bad] = 5  # always damaged: reported, nothing extracted
    assert main(["download", str(out2), *argv[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "data/D006-2020_DEM_ELEV.zip: sha256" in err and "differs from the listing" in err
    assert not (out2 / "D006-2020_DEM_ELEV").exists()


def test_an_existing_folder_is_never_replaced(hub: StandInHub, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    mine = out / "D006-2020_DEM_ELEV"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own file")
    argv = ["download", str(out), "--domains", "D006-2020", "--modalities", "DEM", "--no-progress"]
    assert main(argv) == 2
    assert "D006-2020_DEM_ELEV: already exists and differs" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "my own file"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--departments", "Paris"], "--departments: 'Paris' is not a department"),
        (["--years", "21"], "--years: '21' is not a year"),
        (["--modalities", "LIDAR"], "--modalities: unknown modality 'LIDAR'"),
        (["--departments", "D999"], "no archive matches the selection"),
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--revision", "v9"], "no such revision"),
        (["--repo", "IGNF/NOPE"], "no such repository"),
    ],
)
def test_bad_options_are_one_line_exit_2(
    hub: StandInHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], options, message
) -> None:
    assert main(["download", str(tmp_path / "ds"), "--dry-run", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_out_that_is_a_file(hub: StandInHub, tmp_path: Path, capsys) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["download", str(target), "--dry-run"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "x"


def _toy_site(synthetic: SynthSummary, tmp_path: Path) -> bytes:
    """The toy archive: one top folder holding modality folders and GLOBAL_ALL_MTD."""
    staging = tmp_path / "staging" / "FLAIR-HUB_TOY"
    for name in ("D012-2019_AERIAL_RGBI", "GLOBAL_ALL_MTD"):
        for path in (Path(synthetic.root) / name).rglob("*"):
            if path.is_file():
                dest = staging / path.relative_to(synthetic.root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(path.read_bytes())
    return zip_folder(staging.parent, "FLAIR-HUB_TOY")


class ToyServer:
    """A plain HTTP server for one file, honouring ``Range``; it can hang up mid-body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut_after: int | None = None  # the next GET sends this many bytes, then hangs up
        self.ranges: list[str | None] = []  # the Range header of each GET
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.ranges.append(self.headers.get("Range"))
                start = 0
                if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start = int(match[1])
                if start >= len(server.data) > 0:
                    self.send_response(416)
                    self.end_headers()
                    return
                body = server.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/FLAIR-HUB_TOY_DATASET.zip"


def test_toy_download_from_its_url(synthetic: SynthSummary, tmp_path: Path) -> None:
    data = _toy_site(synthetic, tmp_path)
    site = ToyServer(data)
    try:
        out = tmp_path / "out"
        root = dl.download_toy(out, site.url, progress=False)
        assert root == out / "FLAIR-HUB_TOY"
        assert len(Catalog.open(root).refs) == 8  # the 8 patches of D012-2019
        record = json.loads(dl.record_path(out, dl.Archive("FLAIR-HUB_TOY_DATASET.zip", 0, None)).read_text())  # fmt: skip
        assert record["size"] == len(data) and record["root"] == "FLAIR-HUB_TOY"
        assert not list((out / dl.WORK_DIR).rglob("*.zip*"))  # no zip or .part left
    finally:
        site.httpd.shutdown()
    # done once: a second run needs no server
    assert dl.download_toy(out, site.url, progress=False) == root


def test_toy_download_cut_mid_file_resumes_with_a_range(
    synthetic: SynthSummary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _toy_site(synthetic, tmp_path)
    site = ToyServer(data)
    site.cut_after = len(data) // 3
    out = tmp_path / "out"
    try:
        argv = ["download", str(out), "--toy", "--toy-url", site.url, "--no-progress"]
        assert main(argv) == 2  # the connection dropped: one line, nothing extracted
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "run again to resume" in err, err
        assert not (out / "FLAIR-HUB_TOY").exists()
        part = out / dl.WORK_DIR / "FLAIR-HUB_TOY_DATASET.zip.part"
        assert part.stat().st_size == len(data) // 3
        assert main(argv) == 0  # the rerun asks for the rest only
        assert site.ranges == [None, f"bytes={len(data) // 3}-"]
        assert len(Catalog.open(out / "FLAIR-HUB_TOY").refs) == 8
        src = Path(synthetic.root) / "D012-2019_AERIAL_RGBI"
        for tif in src.rglob("*.tif"):
            copy = out / "FLAIR-HUB_TOY" / tif.relative_to(synthetic.root)
            assert copy.read_bytes() == tif.read_bytes()
        # a .part already whole (the server answers 416 to its range) is used as it is
        (out / "again").mkdir()
        whole = out / "again" / dl.WORK_DIR / "FLAIR-HUB_TOY_DATASET.zip.part"
        whole.parent.mkdir(parents=True)
        whole.write_bytes(data)
        assert dl.download_toy(out / "again", site.url, progress=False).is_dir()
        assert site.ranges[-1] == f"bytes={len(data)}-"
    finally:
        site.httpd.shutdown()
