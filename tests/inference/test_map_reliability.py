"""flairkit map under failure: outputs never replace inputs; resume after a full disk, a SIGKILL
or a Ctrl-C gives the bytes of an uninterrupted run; bad files and folders are one line, exit 2.

The maps are the synthetic zone (768 x 512 px) in 128 px tiles: 40 tiles, two block rows of the
writer (256 rows each), so a failure can hit the first block row, the second, the progress
record or the COGs. In-process runs use a per-pixel model (``test_zonal.Pointwise``); the CLI
runs a real (random) ResNet18 U-Net file.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_zonal import (  # tests/inference is on sys.path
    AERIAL,
    S2,
    Pointwise,
    aerial_model,  # noqa: F401  (module fixture: a random ResNet18 U-Net model file)
    pointwise_model,
    zone_config,
    zone_inputs,
)

import flairkit.inference.zonal as zonal
import flairkit.io.writers as writers
from flairkit import cli
from flairkit.config import ConfigError, load_zone_config
from flairkit.inference.dataset import _start_workers
from flairkit.inference.zonal import merge_zone, predict_zone
from flairkit.io.writers import MapWriteError
from flairkit.synth_zone import ZoneSummary

FLAIRKIT = str(Path(sys.executable).with_name("flairkit"))
#: 40 tiles; probabilities too, so both COGs are compared.
SECTIONS = dict(
    tiling={"tile_px": 128, "overlap_px": 32},
    output={"write_proba": True},
    runtime={"torch_threads": 1},
)
TILES = 40
HERE = Path(__file__).parent


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (relative name -> bytes): outputs, and any leftover."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Files and links under a folder, with their bytes or targets."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if p.is_symlink():
            out[name] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[name] = p.read_bytes()
        else:
            out[name] = "dir"
    return out


@pytest.fixture(scope="module")
def reference(module_tmp: Path, synthetic_zone: ZoneSummary, aerial_model: Path) -> dict:  # noqa: F811
    """Files of an uninterrupted map (class COG, probability COG, style, preview)."""
    path = module_tmp / "reference" / "map.tif"
    model, net = pointwise_model(aerial_model)
    predict_zone(zone_config(synthetic_zone, aerial_model, path, **SECTIONS), model=model)
    assert net.samples == TILES
    return folder_bytes(path.parent)


def resume_and_compare(cfg, aerial_model: Path, reference: dict) -> int:  # noqa: F811
    """Run the map again (on_existing=resume); its folder must be the reference's bytes.

    Returns:
        Tiles computed by the resumed run.
    """
    model, net = pointwise_model(aerial_model)
    predict_zone(cfg, model=model)
    assert folder_bytes(cfg.output.path.parent) == reference  # no leftover either
    return net.samples


# -- defect 1: an output path that is an input -----------------------------------------------


def _clash(name: str, tmp: Path, zone: ZoneSummary, model: Path) -> tuple[dict, Path, str]:
    """A config whose output clashes with an input: (config sections, output, clashing name)."""
    mosaic = zone.sources[AERIAL].path

    def put(src: Path, rel: str) -> Path:
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        return dst

    aerial = put(mosaic, "mosaic.tif")
    sections: dict = {
        "model": str(put(model, "model.safetensors")),
        "inputs": {AERIAL.value: {"path": str(aerial)}},
    }

    def aerial_at(rel: str) -> Path:
        sections["inputs"] = {AERIAL.value: {"path": str(put(mosaic, rel))}}
        return tmp / rel

    out = tmp / "out" / "map.tif"
    if name == "output-is-the-input":
        out, clash = aerial, "mosaic.tif"
    elif name == "output-is-the-model":
        out, clash = Path(sections["model"]), "model.safetensors"
    elif name == "style-is-the-input":
        aerial_at("out/map.qml")
        clash = "map.qml"
    elif name == "proba-is-the-input-without-write-proba":
        aerial_at("out/map_proba.tif")
        sections["output"] = {"write_proba": False}
        clash = "map_proba.tif"
    elif name == "preview-is-the-model":
        sections["model"] = str(put(model, "out/map_preview.png"))
        clash = "map_preview.png"
    elif name == "progress-record-is-the-input":
        aerial_at("out/map.progress.json")
        clash = "map.progress.json"
    elif name == "cog-temporary-is-the-input":
        aerial_at("out/map_proba.cog-tmp.tif")
        clash = "map_proba.cog-tmp.tif"
    elif name == "partial-folder-holds-the-input":
        aerial_at("out/map.partial/rows-00000000.tif")
        clash = "map.partial"
    elif name == "pieces-folder-holds-the-input":
        aerial_at("out/map.pieces/r0-512_c0-768.tif")
        clash = "map.pieces"
    elif name == "dates-file-is-the-preview":
        dates = put(zone.sources[S2].dates_path, "out/map_preview.png")
        s2 = zone_inputs(zone, with_s2=True)[S2.value]
        sections["inputs"][S2.value] = {**s2, "dates": str(dates)}
        clash = "map_preview.png"
    elif name == "output-is-a-link-to-the-input":
        out = tmp / "out" / "link.tif"
        out.parent.mkdir()
        out.symlink_to(aerial)
        clash = "link.tif"
    elif name == "input-is-a-link-to-the-output":
        put(mosaic, "out/map.tif")  # an earlier map
        link = tmp / "in.tif"
        link.symlink_to(out)
        sections["inputs"] = {AERIAL.value: {"path": str(link)}}
        clash = "in.tif"
    elif name == "output-with-dotdot":
        (tmp / "sub").mkdir()
        out, clash = tmp / "sub" / ".." / "mosaic.tif", "mosaic.tif"
    elif name == "relative-output":
        out, clash = Path("mosaic.tif"), "mosaic.tif"  # the test runs in tmp
    elif name == "output-is-a-hard-link-to-the-input":
        out = tmp / "out" / "hard.tif"
        out.parent.mkdir()
        os.link(aerial, out)
        clash = "hard.tif"
    else:
        raise AssertionError(name)
    return sections, out, clash


CLASHES = [
    "output-is-the-input",
    "output-is-the-model",
    "style-is-the-input",
    "proba-is-the-input-without-write-proba",
    "preview-is-the-model",
    "progress-record-is-the-input",
    "cog-temporary-is-the-input",
    "partial-folder-holds-the-input",
    "pieces-folder-holds-the-input",
    "dates-file-is-the-preview",
    "output-is-a-link-to-the-input",
    "input-is-a-link-to-the-output",
    "output-with-dotdot",
    "relative-output",
    "output-is-a-hard-link-to-the-input",
]


@pytest.mark.parametrize("name", CLASHES)
def test_output_clashing_with_an_input_is_refused_before_anything_changes(
    name: str,
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    sections, out, clash = _clash(name, tmp_path, synthetic_zone, aerial_model)
    model = Path(sections.pop("model"))
    output = {"on_existing": "overwrite", **sections.pop("output", {})}
    cfg = zone_config(synthetic_zone, model, out, output=output, **sections)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match=rf"output\.path: .*{clash}") as info:
        predict_zone(cfg)
    assert "choose another output path" in str(info.value)
    with pytest.raises(ConfigError, match=rf"output\.path: .*{clash}"):
        merge_zone(cfg, world_size=2)  # merging the pieces of ranks: the same check
    assert snapshot(tmp_path) == before  # nothing deleted, written or created


def write_yaml(path: Path, zone: ZoneSummary, model: Path, out: Path, **output) -> Path:
    raw = {
        "model": str(model),
        "inputs": zone_inputs(zone, with_s2=False),
        "output": {"path": str(out), "write_proba": True, **output},
        "tiling": {"tile_px": 128, "overlap_px": 32},
        "runtime": {"device": "cpu", "batch_size": 1, "progress": False, "torch_threads": 1},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*prefix, FLAIRKIT, *args], capture_output=True, text=True, env=env, timeout=300
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *names: str) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == code, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_cli_refuses_an_output_that_is_its_input_or_model(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """``flairkit map ... output.path=<input or model> output.on_existing=overwrite``: exit 2."""
    mosaic = tmp_path / "mosaic.tif"
    shutil.copy(synthetic_zone.sources[AERIAL].path, mosaic)
    model = tmp_path / "model.safetensors"
    shutil.copy(aerial_model, model)
    cfg = write_yaml(tmp_path / "zone.yaml", synthetic_zone, model, tmp_path / "out" / "map.tif")
    before = snapshot(tmp_path)
    for target in (mosaic, model):
        proc = run_cli(
            "map", "-c", str(cfg), f"inputs.AERIAL_RGBI={mosaic}", f"output.path={target}",
            "output.on_existing=overwrite",
        )  # fmt: skip
        assert_one_error_line(proc, 2, "output.path", str(target))
    assert snapshot(tmp_path) == before  # input and model: the same bytes


def _readonly_prefix(folder: Path) -> tuple[str, ...] | None:
    """A command prefix running the CLI with ``folder`` read-only; None: chmod does it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return ()
    # root ignores permissions: a read-only bind mount in a private mount namespace
    unshare = shutil.which("unshare")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = (unshare or "unshare", "-m", "sh", "-c", script, str(folder))
    if unshare is None or subprocess.run([*prefix, "true"], capture_output=True).returncode:
        return None
    return prefix


def test_cli_read_only_output_folder_and_folder_output_exit_2_naming_the_path(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    cfg = write_yaml(tmp_path / "zone.yaml", synthetic_zone, aerial_model, out_dir / "map.tif")
    folder = tmp_path / "map.tif"  # an output path that is a folder
    folder.mkdir()
    proc = run_cli("map", "-c", str(cfg), f"output.path={folder}")
    assert_one_error_line(proc, 2, "output.path", str(folder))
    prefix = _readonly_prefix(out_dir)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    try:
        proc = run_cli("map", "-c", str(cfg), prefix=prefix)
    finally:
        out_dir.chmod(0o755)
    assert_one_error_line(proc, 2, str(out_dir))
    assert list(out_dir.iterdir()) == []


# -- defect 5: a full disk, then resume ---------------------------------------------------------


def enospc(path: Path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.parametrize("failing_write", [1, 2, 3, 4])
def test_disk_full_in_a_block_row_resumes_to_the_same_bytes(
    failing_write: int,
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    reference: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC in the N-th block-row file (classes, probabilities of rows 0-255, then 256-511),
    half of it written: the rerun recomputes only from the first block row not recorded."""
    real_write = writers._write_bytes
    calls = []

    def write(path: Path, payload: bytes) -> None:
        calls.append(path.name)
        if len(calls) == failing_write:
            path.write_bytes(payload[: len(payload) // 2])
            raise enospc(path)
        real_write(path, payload)

    monkeypatch.setattr(writers, "_write_bytes", write)
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "map.tif", **SECTIONS)
    with pytest.raises(MapWriteError, match=r"rows-\d+(_proba)?\.tif: cannot write") as info:
        predict_zone(cfg, model=pointwise_model(aerial_model)[0])
    assert info.value.errno == errno.ENOSPC and "No space left" in str(info.value)
    assert not cfg.output.path.exists()
    monkeypatch.setattr(writers, "_write_bytes", real_write)
    computed = resume_and_compare(cfg, aerial_model, reference)
    # Block row 0 (written by calls 1-2) is kept: the bands touching rows >= 256 start at 16.
    assert computed == (TILES if failing_write <= 2 else TILES - 16)


@pytest.mark.parametrize("failing_record", [2, 3])
def test_disk_full_in_the_progress_record_resumes_to_the_same_bytes(
    failing_record: int,
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    reference: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_record = writers._write_progress
    calls = []

    def record(path: Path, data: dict) -> None:
        calls.append(data["rows_done"])
        if len(calls) == failing_record:
            path.with_name(path.name + ".tmp").write_text(json.dumps(data)[:50])
            raise enospc(path.with_name(path.name + ".tmp"))
        real_record(path, data)

    monkeypatch.setattr(writers, "_write_progress", record)
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "map.tif", **SECTIONS)
    with pytest.raises(MapWriteError, match=r"map\.progress\.json.*No space left"):
        predict_zone(cfg, model=pointwise_model(aerial_model)[0])
    monkeypatch.setattr(writers, "_write_progress", real_record)
    assert resume_and_compare(cfg, aerial_model, reference) == (
        TILES if failing_record == 2 else TILES - 16
    )


@pytest.mark.parametrize(
    "failure", ["proba-enospc", "proba-silently-cut", "class-enospc", "class-silently-cut"]
)
def test_disk_full_while_writing_the_cogs_resumes_without_recomputing(
    failure: str,
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    reference: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A COG copy that fails, or that GDAL cuts short without a word as it closes the file
    (what a full disk does to its last write): found, and only the COGs are made again."""
    which, how = failure.split("-", 1)
    real_copy = writers._cog_copy

    def copy(src: Path, dst: Path, *args) -> None:
        if (which == "proba") != ("_proba" in dst.name):
            return real_copy(src, dst, *args)
        if how == "enospc":
            dst.write_bytes(b"II*\x00")
            raise enospc(dst)
        real_copy(src, dst, *args)
        with dst.open("r+b") as f:  # the last blocks and nothing said
            f.truncate(dst.stat().st_size * 3 // 4)

    monkeypatch.setattr(writers, "_cog_copy", copy)
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "map.tif", **SECTIONS)
    with pytest.raises(MapWriteError, match=r"cog-tmp\.tif: cannot write"):
        predict_zone(cfg, model=pointwise_model(aerial_model)[0])
    assert not cfg.output.path.exists()
    monkeypatch.setattr(writers, "_cog_copy", real_copy)
    assert resume_and_compare(cfg, aerial_model, reference) == 0


def test_damaged_or_missing_block_row_files_are_recomputed(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    reference: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recorded block-row file changed since (cut, removed): that block row and the next are
    computed again, with a warning; a garbled record restarts the map."""
    cfg = zone_config(synthetic_zone, aerial_model, tmp_path / "map.tif", **SECTIONS)
    partial = tmp_path / "map.partial"
    for damage in ("cut", "removed", "record-garbled"):
        with pytest.raises(RuntimeError, match="interrupted"):  # after block row 0 is recorded
            predict_zone(cfg, model=pointwise_model(aerial_model, fail_after=30)[0])
        assert json.loads((tmp_path / "map.progress.json").read_text())["rows_done"] == 256
        first = partial / "rows-00000000_proba.tif"
        if damage == "cut":
            first.write_bytes(first.read_bytes()[:1000])
        elif damage == "removed":
            first.unlink()
        else:
            (tmp_path / "map.progress.json").write_text('{"format": 2, "rows_do')
        caplog.clear()
        assert resume_and_compare(cfg, aerial_model, reference) == TILES
        assert "computed again" in caplog.text or "starts again" in caplog.text
        for p in tmp_path.iterdir():  # next round
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_real_write_failures_in_gdal_resume_to_the_same_bytes(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as with a full disk)
    hit in a block-row file, in the progress record or in a COG, wherever GDAL is writing."""
    if not hasattr(signal, "SIGXFSZ"):
        pytest.skip("needs POSIX resource limits")
    script = textwrap.dedent(
        """
        import resource, signal, sys
        import numpy as np
        from flairkit.io.raster import Georef
        from flairkit.io.writers import StreamingMapWriter
        from flairkit.modalities import COSIA_CLASSES

        out, limit = sys.argv[1], int(sys.argv[2])
        h, w, k = 300, 200, len(COSIA_CLASSES)
        rng = np.random.default_rng(0)
        classes = rng.integers(0, k, (h, w), dtype=np.uint8)
        proba = rng.integers(0, 256, (k, h, w), dtype=np.uint8)  # incompressible
        if limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        georef = Georef("EPSG:2154", (0.2, 0.0, 6e5, 0.0, -0.2, 6.8e6), w, h)
        writer = StreamingMapWriter(
            out, georef, COSIA_CLASSES, write_proba=True, block_px=64, cog_block_px=128,
            preview_max_px=50,
        )
        try:
            for row in range(writer.resume_row, h, 37):
                writer.write_rows(row, classes[row : row + 37], proba[:, row : row + 37])
            writer.finish()
        except OSError as exc:
            print(f"{type(exc).__name__}: {exc}")
            sys.exit(3)
        """
    )
    script_path = tmp_path / "write_map.py"
    script_path.write_text(script)

    def run(out: Path, limit: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script_path), str(out), str(limit)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    assert run(tmp_path / "ref" / "map.tif", 0).returncode == 0
    expected = folder_bytes(tmp_path / "ref")
    # Probability block rows are ~250 kB each, the probability COG ~1.5 MB: limits inside a
    # block row's file, past them (in the COG), and at the COG's last blocks.
    limits = [5_000, 200_000, 700_000, 1_300_000, 1_450_000]

    def interrupted_then_resumed(limit: int) -> tuple[subprocess.CompletedProcess, ...]:
        out = tmp_path / f"limit{limit}" / "map.tif"
        return run(out, limit), run(out, 0)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(interrupted_then_resumed, limits))
    for limit, (failed, resumed) in zip(limits, results, strict=True):
        assert failed.returncode == 3, (limit, failed.stdout, failed.stderr)
        assert "MapWriteError" in failed.stdout and "cannot write" in failed.stdout, limit
        assert resumed.returncode == 0, (limit, resumed.stdout, resumed.stderr)
        assert folder_bytes(tmp_path / f"limit{limit}") == expected, limit


# -- defect 5: SIGKILL at several points ------------------------------------------------------

KILL_SCRIPT = """
import json, os, signal, sys
sys.path.insert(0, {here!r})
from test_zonal import pointwise_model

import flairkit.io.writers as w
from flairkit.config import ZoneConfig, from_dict
from flairkit.inference.zonal import predict_zone

where, n = os.environ["FLAIRKIT_TEST_KILL"].split(":")
n, calls = int(n), []


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def hooked(name, before=None, after=None):
    real = getattr(w, name)

    def hook(path, *args):
        calls.append(name)
        if len(calls) == n and before:
            before(path, *args)
            die()
        real(path, *args)
        if len(calls) == n and after:
            die()

    setattr(w, name, hook)


def half_file(path, payload):
    with open(path, "wb") as f:
        f.write(payload[: len(payload) // 2])
        f.flush()
        os.fsync(f.fileno())


def half_record(path, record):
    path.with_name(path.name + ".tmp").write_text(json.dumps(record)[:40])


if where == "bytes-half":  # the n-th block-row file half written
    hooked("_write_bytes", before=half_file)
elif where == "bytes-after":  # the n-th block-row file written, not recorded
    hooked("_write_bytes", after=True)
elif where == "record-half":  # the n-th record's temporary file half written
    hooked("_write_progress", before=half_record)
elif where == "cog-after":  # the n-th COG copied, not checked nor renamed
    hooked("_cog_copy", after=True)
cfg = from_dict(ZoneConfig, json.loads(sys.argv[1]))
predict_zone(cfg, model=pointwise_model(cfg.model)[0])
"""

#: (kill point, tiles the resumed run computes).
KILL_POINTS = [
    ("bytes-half:1", TILES),  # classes of rows 0-255
    ("bytes-after:2", TILES),  # probabilities of rows 0-255 on disk, not recorded
    ("bytes-half:4", TILES - 16),  # probabilities of rows 256-511
    ("record-half:3", TILES - 16),  # records: 0 rows, 256 rows, 512 rows
    ("cog-after:2", 0),  # probability COG in place, class COG copied, not checked
]


def test_sigkill_at_any_point_resumes_to_the_same_bytes(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    reference: dict,
    tmp_path: Path,
) -> None:
    script = tmp_path / "kill_map.py"
    script.write_text(KILL_SCRIPT.format(here=str(HERE)))

    def killed(point: str) -> tuple[subprocess.CompletedProcess, Path]:
        out = tmp_path / point.replace(":", "-") / "map.tif"
        raw = {
            "model": str(aerial_model),
            "inputs": zone_inputs(synthetic_zone, with_s2=False),
            "output": {"path": str(out), "write_proba": True},
            "tiling": SECTIONS["tiling"],
            "runtime": {"device": "cpu", "batch_size": 1, "progress": False, "torch_threads": 1,
                        "channels_last": False, "fold_batchnorm": False},
        }  # fmt: skip
        env = {**os.environ, "FLAIRKIT_TEST_KILL": point, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(
            [sys.executable, str(script), json.dumps(raw)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        return proc, out

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(killed, [p for p, _ in KILL_POINTS]))
    for (point, tiles), (proc, out) in zip(KILL_POINTS, results, strict=True):
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
        assert not out.exists(), point
        cfg = zone_config(synthetic_zone, aerial_model, out, **SECTIONS)
        assert resume_and_compare(cfg, aerial_model, reference) == tiles, point


# -- defect 7: an input cut short midway, Ctrl-C ------------------------------------------------


class Truncating(Pointwise):
    """Cuts a file to a third of its size at its first forward pass (a mosaic damaged midway)."""

    def __init__(self, victim: Path) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, batch, out_size):
        if self.calls == 0:
            with self.victim.open("r+b") as f:
                f.truncate(self.victim.stat().st_size // 3)
        return super().forward(batch, out_size)


@pytest.mark.parametrize("num_workers", [0, 1], ids=["threads", "dataloader"])
def test_mosaic_cut_short_midway_exits_2_naming_it_then_resumes(
    num_workers: int,
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    mosaic = tmp_path / "mosaic.tif"
    shutil.copy(synthetic_zone.sources[AERIAL].path, mosaic)
    original = mosaic.read_bytes()
    out = tmp_path / "map" / "map.tif"
    cfg_path = write_yaml(tmp_path / "zone.yaml", synthetic_zone, aerial_model, out)
    overrides = [f"inputs.AERIAL_RGBI={mosaic}", f"runtime.num_workers={num_workers}"]
    model = dataclasses.replace(pointwise_model(aerial_model)[0], network=Truncating(mosaic).eval())
    monkeypatch.setattr(zonal, "load_zone_model", lambda *args, **kwargs: model)
    assert cli.main(["map", "-c", str(cfg_path), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("flairkit map:")]
    assert len(lines) == 1 and str(mosaic) in lines[0] and "cannot read" in lines[0], err
    assert not out.exists()

    mosaic.write_bytes(original)  # repaired: the map resumes where it stopped (no overwrite)
    assert cli.main(["map", "-c", str(cfg_path), *overrides]) == 0
    reference = f"output.path={tmp_path}/ref/map.tif"
    assert cli.main(["map", "-c", str(cfg_path), *overrides, reference]) == 0
    assert folder_bytes(out.parent) == folder_bytes(tmp_path / "ref")


def test_sigint_during_map_prints_one_line_exits_130_and_resumes(
    synthetic_zone: ZoneSummary,
    aerial_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Ctrl-C once tiles are being mapped, by threads and by DataLoader workers: one line, exit
    130, no traceback from any process or thread; the map then resumes to the bytes of an
    uninterrupted run."""
    out = tmp_path / "map" / "map.tif"
    cfg = write_yaml(tmp_path / "zone.yaml", synthetic_zone, aerial_model, out)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    reference = None
    for workers in (0, 2):
        if out.parent.exists():
            shutil.rmtree(out.parent)
        proc = subprocess.Popen(
            [FLAIRKIT, "map", "-c", str(cfg), f"runtime.num_workers={workers}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (out.parent / "map.partial").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the map never started"
            time.sleep(0.02)
        time.sleep(0.5)  # tiles are being read and predicted
        assert proc.poll() is None, "the map ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        output = stdout + stderr
        assert proc.returncode == 130, output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0], stderr
        assert not out.exists()
        # The resume (in this process: no second start of torch) ends as an uninterrupted run.
        predict_zone(load_zone_config(cfg, [f"runtime.num_workers={workers}"]))
        if reference is None:
            predict_zone(load_zone_config(cfg, [f"output.path={tmp_path}/ref/map.tif"]))
            reference = folder_bytes(tmp_path / "ref")
        assert folder_bytes(out.parent) == reference, workers


def test_ctrl_c_while_the_workers_start_is_raised_once_they_are_started() -> None:
    """A KeyboardInterrupt inside DataLoader's start (its forks) is lost or leaves a lock taken
    (the map then hangs): it is held back until the workers are started."""
    events = []

    class Loader:
        def __iter__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # bytecodes, and time, for the signal to be handled
                time.sleep(0.001)
            events.append("started")
            return iter([])

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _start_workers(Loader())
    assert events == ["started"]
    assert signal.getsignal(signal.SIGINT) is before
