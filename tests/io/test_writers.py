"""Map writers: COG outputs, colour table, QGIS style, preview, and resume after interruption."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import rasterio

import flairkit.io.writers as writers
from flairkit.io.sidecars import preview_shape, write_preview_png, write_qml
from flairkit.io.writers import (
    FINGERPRINT_TAG,
    ResumeMismatchError,
    StreamingMapWriter,
    map_output_paths,
    write_class_map,
)
from flairkit.modalities import COSIA_CLASSES, hex_to_rgb
from flairkit.sample import Georef

HEIGHT, WIDTH = 300, 200  # not multiples of the 64 px blocks
GEOREF = Georef("EPSG:2154", (0.2, 0.0, 600000.0, 0.0, -0.2, 6800000.0), WIDTH, HEIGHT)
K = len(COSIA_CLASSES)
OPTIONS = dict(block_px=64, cog_block_px=128, preview_max_px=50)
CHUNK = 37  # rows per write_rows call, unaligned with the blocks


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """Class map with uniform 50 x 50 squares (and a nodata square) and random probabilities."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    classes = ((yy // 50) * 4 + xx // 50) % K
    classes = classes.astype(np.uint8)
    classes[:50, :50] = 255
    proba = np.random.default_rng(0).integers(0, 256, (K, HEIGHT, WIDTH), dtype=np.uint8)
    return classes, proba


def write_all(writer: StreamingMapWriter, classes: np.ndarray, proba: np.ndarray | None) -> None:
    for start in range(writer.resume_row, HEIGHT, CHUNK):
        writer.write_rows(
            start,
            classes[start : start + CHUNK],
            None if proba is None else proba[:, start : start + CHUNK],
        )


def output_bytes(class_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(class_path.parent.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, rows) -> dict[str, bytes]:
    """Files of an uninterrupted run (class map, probabilities, style, preview)."""
    path = tmp_path_factory.mktemp("reference") / "map.tif"
    writer = StreamingMapWriter(
        path, GEOREF, COSIA_CLASSES, write_proba=True, fingerprint={"model": "a"}, **OPTIONS
    )
    write_all(writer, *rows)
    writer.finish()
    return output_bytes(path)


def test_outputs_are_valid_cogs_with_metadata(tmp_path, rows) -> None:
    classes, proba = rows
    writer = StreamingMapWriter(
        tmp_path / "map.tif", GEOREF, COSIA_CLASSES, write_proba=True, **OPTIONS
    )
    write_all(writer, classes, proba)
    out = writer.finish()
    assert out == map_output_paths(tmp_path / "map.tif", write_proba=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "map.qml",
        "map.tif",
        "map_preview.png",
        "map_proba.tif",
    ]  # fmt: skip  (partial files and progress record removed)
    with rasterio.open(out.class_path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4]
        assert src.dtypes == ("uint8",) and src.nodata == 255
        assert src.crs.to_string() == "EPSG:2154"
        assert tuple(src.transform)[:6] == GEOREF.transform
        assert (src.width, src.height) == (WIDTH, HEIGHT)
        colormap = src.colormap(1)
        assert all(colormap[c.value] == (*hex_to_rgb(c.colour), 255) for c in COSIA_CLASSES)
        assert src.tags(1)["CLASS_6"] == "water"
        assert np.array_equal(src.read(1), classes)
        overview = src.read(1, out_shape=(HEIGHT // 4, WIDTH // 4))  # from the x4 overview
        assert overview[0, 0] == 255 and overview[-1, -1] == classes[-1, -1]
    with rasterio.open(out.proba_path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) == [2, 4]
        assert src.count == K and src.nodata is None
        assert src.descriptions[0] == "building"
        assert np.array_equal(src.read(), proba)


def test_qml_has_one_palette_entry_per_class(tmp_path) -> None:
    path = write_qml(tmp_path / "map.qml", COSIA_CLASSES)
    root = ET.parse(path).getroot()  # well-formed XML
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert (
        renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    )
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in entries] == [
        (str(c.value), c.colour, c.name) for c in COSIA_CLASSES
    ]


def test_preview_png_is_small_and_in_class_colours(tmp_path, reference) -> None:
    (tmp_path / "map.tif").write_bytes(reference["map.tif"])
    png = write_preview_png(tmp_path / "map.tif", tmp_path / "p.png", COSIA_CLASSES, max_px=50)
    image = matplotlib.image.imread(png)  # (h, w, 4) floats in [0, 1]
    assert image.shape == (50, 33, 4)
    assert image[0, 0, 3] == 0  # nodata is transparent
    r, g, b = hex_to_rgb(COSIA_CLASSES[1].colour)  # the square at rows 0-49, cols 50-99
    assert np.allclose(image[2, 10], (r / 255, g / 255, b / 255, 1.0))
    assert reference["map_preview.png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_shape() -> None:
    assert preview_shape(300, 200, 50) == (50, 33)
    assert preview_shape(200, 300, 1024) == (200, 300)  # never enlarged
    assert preview_shape(100000, 10, 1024) == (1024, 1)


def test_resume_after_exception_is_byte_identical(tmp_path, rows, reference) -> None:
    classes, proba = rows
    path = tmp_path / "map.tif"
    kwargs = dict(write_proba=True, fingerprint={"model": "a"}, **OPTIONS)
    with pytest.raises(KeyboardInterrupt):
        with StreamingMapWriter(path, GEOREF, COSIA_CLASSES, **kwargs) as writer:
            for start in range(0, 5 * CHUNK, CHUNK):
                writer.write_rows(
                    start, classes[start : start + CHUNK], proba[:, start : start + CHUNK]
                )
            raise KeyboardInterrupt
    record = json.loads((tmp_path / "map.progress.json").read_text())
    assert record["rows_done"] == 128  # 185 rows received: two full 64-row blocks on disk
    writer = StreamingMapWriter(path, GEOREF, COSIA_CLASSES, **kwargs)
    assert writer.resume_row == 128
    write_all(writer, classes, proba)
    writer.finish()
    assert output_bytes(path) == reference


def test_interrupted_between_flush_and_record_is_byte_identical(
    tmp_path, rows, reference, monkeypatch
) -> None:
    classes, proba = rows
    path = tmp_path / "map.tif"
    kwargs = dict(write_proba=True, fingerprint={"model": "a"}, **OPTIONS)
    real_write_progress = writers._write_progress
    calls = []

    def crash_on_third(progress_path, record):
        calls.append(record["rows_done"])
        if len(calls) == 3:  # data of rows [0, 128) flushed, record still says 64
            raise OSError("simulated crash")
        real_write_progress(progress_path, record)

    monkeypatch.setattr(writers, "_write_progress", crash_on_third)
    writer = StreamingMapWriter(path, GEOREF, COSIA_CLASSES, **kwargs)
    with pytest.raises(OSError, match="simulated crash"):
        write_all(writer, classes, proba)
    writer.close()
    monkeypatch.setattr(writers, "_write_progress", real_write_progress)
    assert calls == [0, 64, 128]
    writer = StreamingMapWriter(path, GEOREF, COSIA_CLASSES, **kwargs)
    assert writer.resume_row == 64
    write_all(writer, classes, proba)
    writer.finish()
    assert output_bytes(path) == reference


def test_killed_process_resumes_byte_identical(tmp_path, rows, reference) -> None:
    """SIGKILL-like exit (no flush, no close) while blocks are in GDAL's cache, then resume."""
    classes, proba = rows
    np.save(tmp_path / "classes.npy", classes)
    np.save(tmp_path / "proba.npy", proba)
    out_dir = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        import flairkit.io.writers as w
        from flairkit.io.raster import Georef
        from flairkit.modalities import COSIA_CLASSES

        real = w.StreamingMapWriter._checkpoint
        calls = []
        def checkpoint(self):
            calls.append(1)
            if len(calls) == 3:
                os._exit(9)  # rows [128, 192) written to GDAL, not flushed, not recorded
            real(self)
        w.StreamingMapWriter._checkpoint = checkpoint
        classes = np.load({str(tmp_path / "classes.npy")!r})
        proba = np.load({str(tmp_path / "proba.npy")!r})
        writer = w.StreamingMapWriter(
            {str(out_dir / "map.tif")!r}, Georef(*{tuple(GEOREF.__dict__.values())!r}),
            COSIA_CLASSES, write_proba=True, fingerprint={{"model": "a"}}, **{OPTIONS!r},
        )
        for start in range(0, {HEIGHT}, {CHUNK}):
            writer.write_rows(start, classes[start : start + {CHUNK}], proba[:, start : start + {CHUNK}])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 9, result.stderr
    path = out_dir / "map.tif"
    writer = StreamingMapWriter(
        path, GEOREF, COSIA_CLASSES, write_proba=True, fingerprint={"model": "a"}, **OPTIONS
    )
    assert writer.resume_row == 128
    write_all(writer, classes, proba)
    writer.finish()
    assert output_bytes(path) == reference


def test_mismatched_fingerprint_is_refused(tmp_path, rows) -> None:
    classes, proba = rows
    path = tmp_path / "map.tif"
    writer = StreamingMapWriter(path, GEOREF, COSIA_CLASSES, fingerprint={"model": "a"}, **OPTIONS)
    writer.write_rows(0, classes[:100])
    writer.close()
    with pytest.raises(
        ResumeMismatchError, match=r"map.progress.json.*user.model: stored 'a', now 'b'"
    ):
        StreamingMapWriter(path, GEOREF, COSIA_CLASSES, fingerprint={"model": "b"}, **OPTIONS)
    other_grid = Georef(GEOREF.crs, GEOREF.transform, WIDTH, HEIGHT + 1)
    with pytest.raises(ResumeMismatchError, match="height: stored 300, now 301"):
        StreamingMapWriter(path, other_grid, COSIA_CLASSES, fingerprint={"model": "a"}, **OPTIONS)
    with pytest.raises(FileExistsError, match="map.partial.tif|map.progress.json"):
        StreamingMapWriter(path, GEOREF, COSIA_CLASSES, on_existing="error", **OPTIONS)
    writer = StreamingMapWriter(
        path, GEOREF, COSIA_CLASSES, fingerprint={"model": "b"}, on_existing="overwrite", **OPTIONS
    )
    assert writer.resume_row == 0
    writer.close()


def test_finished_map_is_kept_or_refused(tmp_path, reference) -> None:
    for name, data in reference.items():
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "map.tif"
    with rasterio.open(path) as src:
        assert FINGERPRINT_TAG in src.tags()
    (tmp_path / "map_preview.png").unlink()
    writer = StreamingMapWriter(
        path, GEOREF, COSIA_CLASSES, write_proba=True, fingerprint={"model": "a"}, **OPTIONS
    )
    assert writer.is_finished and writer.resume_row == HEIGHT
    with pytest.raises(RuntimeError, match="finished"):
        writer.write_rows(HEIGHT - 1, np.zeros((1, WIDTH), np.uint8))
    writer.finish()  # writes the missing preview again, nothing else
    assert output_bytes(path) == reference
    with pytest.raises(ResumeMismatchError, match="finished map"):
        StreamingMapWriter(
            path, GEOREF, COSIA_CLASSES, write_proba=True, fingerprint={"model": "b"}, **OPTIONS
        )


def test_write_rows_checks_its_input(tmp_path, rows) -> None:
    classes, proba = rows
    writer = StreamingMapWriter(
        tmp_path / "map.tif", GEOREF, COSIA_CLASSES, write_proba=True, **OPTIONS
    )
    with pytest.raises(ValueError, match="next row is 0, got 10"):
        writer.write_rows(10, classes[10:20], proba[:, 10:20])
    with pytest.raises(ValueError, match="uint8"):
        writer.write_rows(0, classes[:10].astype(np.int32), proba[:, :10])
    with pytest.raises(ValueError, match="proba_rows"):
        writer.write_rows(0, classes[:10])
    with pytest.raises(ValueError, match="outside the raster"):
        writer.write_rows(
            0, np.zeros((HEIGHT + 1, WIDTH), np.uint8), np.zeros((K, HEIGHT + 1, WIDTH), np.uint8)
        )
    writer.write_rows(0, classes[:10], proba[:, :10])
    writer.write_rows(5, classes[5:20], proba[:, 5:20])  # rows already written are skipped
    assert writer.resume_row == 20
    with pytest.raises(RuntimeError, match="only 20 of 300 rows"):
        writer.finish()
    writer.close()
    with pytest.raises(ValueError, match="255 is nodata"):
        StreamingMapWriter(
            tmp_path / "x.tif",
            GEOREF,
            [*COSIA_CLASSES, COSIA_CLASSES[0].__class__(255, "x", "#000000")],
        )


# rasterio's own from_bounds uses the deprecated Affine `*` operator.
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_write_class_map_still_writes_patches(tmp_path) -> None:
    classes = np.arange(64 * 64).reshape(64, 64) % K
    probs = np.full((K, 64, 64), 1 / K, np.float32)
    path = write_class_map(
        tmp_path / "p.tif", classes, (0, 0, 12.8, 12.8), "EPSG:2154", COSIA_CLASSES, probs
    )
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(1), classes)
        assert src.colormap(1)[0] == (*hex_to_rgb(COSIA_CLASSES[0].colour), 255)
    with rasterio.open(tmp_path / "p_proba.tif") as src:
        assert src.count == K and src.read(1)[0, 0] == round(255 / K)
