"""io.mosaic: file lists, tile mosaics and per-date stacks as VRT files, read back with rasterio."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from flairkit.io.dates import read_dates_file
from flairkit.io.mosaic import (
    DateSeries,
    build_mosaic_vrt,
    build_series_vrt,
    collect_rasters,
    date_from_name,
    read_date_series,
)
from flairkit.io.raster import DataError
from flairkit.io.windows import RasterSource, WindowReader
from flairkit.modalities import Modality

L93 = "EPSG:2154"
X0, Y0 = 651_200.0, 6_862_400.0  # Lambert-93 metres
PX = 0.2
TILE = 32
UTM31 = "EPSG:32631"
S2_PX = 10.24
S2_X0, S2_Y0 = 399_960.0, 4_900_020.0


def write_raster(
    path: Path,
    data: np.ndarray,
    x: float,
    y: float,
    px: float = PX,
    crs: str = L93,
    nodata: float | None = None,
    **options: str,
) -> Path:
    """Write ``(C, H, W)`` data with its top-left corner at ``(x, y)``."""
    driver = "JP2OpenJPEG" if path.suffix == ".jp2" else "GTiff"
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(x, y, px, px),
        nodata=nodata,
        **options,
    ) as dst:
        dst.write(data)
    return path


def tile_data(seed: int, count: int = 4, size: int = TILE) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, (count, size, size), dtype=np.uint8)


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def has_jp2() -> bool:
    with rasterio.Env() as env:
        return "JP2OpenJPEG" in env.drivers()


# --------------------------------------------------------------------------- mosaic


def test_2x2_grid_of_mixed_formats_reads_back_every_tile_at_its_place(tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    kinds = {
        (0, 0): ("a.tif", {}),
        (0, 1): ("b.tif", {"compress": "JPEG"}),
        (1, 0): ("c.jp2", {}) if has_jp2() else ("c.tif", {"compress": "DEFLATE"}),
        (1, 1): ("d.tif", {"tiled": "YES", "blockxsize": "16", "blockysize": "16"}),
    }
    paths = {}
    for (row, col), (name, options) in kinds.items():
        x, y = X0 + col * TILE * PX, Y0 - row * TILE * PX
        paths[row, col] = write_raster(tiles / name, tile_data(10 * row + col), x, y, **options)
    # Given out of order: placement comes from the georeference, not the list order.
    out = build_mosaic_vrt([paths[1, 1], paths[0, 1], paths[1, 0], paths[0, 0]], tmp_path / "m.vrt")
    assert out == tmp_path / "m.vrt"
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 2154
        assert (src.width, src.height, src.count) == (2 * TILE, 2 * TILE, 4)
        assert src.dtypes == ("uint8",) * 4
        assert src.bounds == pytest.approx(
            (X0, Y0 - 2 * TILE * PX, X0 + 2 * TILE * PX, Y0), abs=1e-6
        )
        assert src.res == pytest.approx((PX, PX), rel=1e-12)
        assert src.nodata is None
        mosaic = src.read()
    for (row, col), path in paths.items():
        # Each tile as its own driver decodes it (JPEG and JPEG2000 are lossy).
        expected = read_all(path)
        got = mosaic[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
        np.testing.assert_array_equal(got, expected)
    # Sources by absolute path: the VRT still opens from another working directory.
    text = out.read_text()
    assert str(paths[0, 0].resolve()) in text
    assert text.count("<SimpleSource>") == 4 * 4


def test_missing_tile_reads_as_nodata_and_nodata_is_declared(tmp_path: Path) -> None:
    paths = []
    for row, col in ((0, 0), (0, 1), (1, 1)):
        x, y = X0 + col * TILE * PX, Y0 - row * TILE * PX
        paths.append(
            write_raster(tmp_path / f"t{row}{col}.tif", tile_data(row + col), x, y, nodata=255)
        )
    out = build_mosaic_vrt(paths, tmp_path / "out" / "m.vrt")  # folder created
    with rasterio.open(out) as src:
        assert src.nodatavals == (255.0,) * 4
        data = src.read()
    assert (data[:, TILE:, :TILE] == 255).all()
    np.testing.assert_array_equal(data[:, TILE:, TILE:], read_all(paths[2]))


def test_single_tile_gets_a_vrt_and_float_nan_nodata_survives(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(size=(2, 5, 7)).astype(np.float32)
    data[0, 1, 2] = np.nan
    path = write_raster(tmp_path / "dem.tif", data, 0.5, 10.25, px=0.5, nodata=float("nan"))
    out = build_mosaic_vrt([path], tmp_path / "dem.vrt")
    with rasterio.open(out) as src:
        assert np.isnan(src.nodata)
        assert src.transform == from_origin(0.5, 10.25, 0.5, 0.5)
        np.testing.assert_array_equal(src.read(), data)


def _pair(tmp_path: Path, **second: object) -> list[Path]:
    first = write_raster(tmp_path / "first.tif", tile_data(0), X0, Y0)
    options: dict = {"x": X0 + TILE * PX, "y": Y0, "data": tile_data(1)}
    options.update(second)
    data = options.pop("data")
    return [first, write_raster(tmp_path / "second.tif", data, **options)]


@pytest.mark.parametrize(
    ("second", "what"),
    [
        ({"crs": "EPSG:32631"}, "CRS"),
        ({"px": 0.25}, "pixel size"),
        ({"px": PX * (1 + 1e-6)}, "pixel size"),
        ({"x": X0 + TILE * PX + PX / 2}, r"off the pixel grid by [+-]0\.500 px in x"),
        ({"y": Y0 - PX / 2}, r"off the pixel grid by \+0\.000 px in x and [+-]0\.500 px in y"),
        ({"data": tile_data(1, count=3)}, "3 bands vs 4"),
        ({"data": tile_data(1).astype(np.uint16)}, "data type uint16 vs uint8"),
        ({"nodata": 0}, "nodata"),
    ],
)
def test_tile_not_matching_the_first_is_refused_naming_both(
    tmp_path: Path, second: dict, what: str
) -> None:
    paths = _pair(tmp_path, **second)
    out = tmp_path / "m.vrt"
    with pytest.raises(DataError) as info:
        build_mosaic_vrt(paths, out)
    message = str(info.value)
    assert "\n" not in message
    assert str(paths[1]) in message and str(paths[0]) in message
    assert re.search(what, message)
    assert not out.exists()


def test_grid_tolerance_accepts_float_noise(tmp_path: Path) -> None:
    # 1e-4 px off and a 1e-12 relative pixel size difference: the same grid.
    paths = _pair(tmp_path, x=X0 + TILE * PX + 1e-4 * PX, px=PX * (1 + 1e-12))
    with rasterio.open(build_mosaic_vrt(paths, tmp_path / "m.vrt")) as src:
        assert src.width == 2 * TILE


def test_unreadable_or_unreferenced_tile_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(DataError, match=r"bad\.tif: cannot open as a raster"):
        build_mosaic_vrt([bad], tmp_path / "m.vrt")
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8"
    ) as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"plain\.tif: the raster has no CRS"):
        build_mosaic_vrt([plain], tmp_path / "m.vrt")
    tile = write_raster(tmp_path / "t.tif", tile_data(0), X0, Y0)
    with pytest.raises(DataError, match="one of its own inputs"):
        build_mosaic_vrt([tile], tile)
    with pytest.raises(DataError, match="no tile"):
        build_mosaic_vrt([], tmp_path / "m.vrt")


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    paths = _pair(tmp_path)
    out = build_mosaic_vrt(paths, tmp_path / "m.vrt")
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))  # as if written long ago
    inode = out.stat().st_ino
    build_mosaic_vrt(paths, out)
    assert out.stat().st_mtime_ns == 1_000_000_000
    assert out.stat().st_ino == inode
    # New content: replaced (by a rename: a new inode), no temporary file left behind.
    third = write_raster(tmp_path / "third.tif", tile_data(2), X0, Y0 - TILE * PX)
    build_mosaic_vrt([*paths, third], out)
    assert out.stat().st_mtime_ns != 1_000_000_000
    with rasterio.open(out) as src:
        assert (src.width, src.height) == (2 * TILE, 2 * TILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "first.tif",
        "m.vrt",
        "second.tif",
        "third.tif",
    ]


# --------------------------------------------------------------------------- collect_rasters


def test_collect_rasters_folder_glob_and_list_file(tmp_path: Path) -> None:
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.TIF", "a.tif", "c.jp2", "d.vrt", "e.img", "f.tiff", "notes.txt", "._a.tif"):
        (folder / name).write_bytes(b"")
    (folder / "sub" / "z.tif").write_bytes(b"")
    names = [p.name for p in collect_rasters(folder)]
    assert names == ["a.tif", "b.TIF", "c.jp2", "d.vrt", "e.img", "f.tiff"]
    assert collect_rasters(str(folder)) == [folder / n for n in names]

    assert [p.name for p in collect_rasters(folder / "*.t*")] == ["a.tif", "f.tiff", "notes.txt"]
    assert [p.name for p in collect_rasters(f"{folder}/[ab].*")] == ["a.tif", "b.TIF"]

    listing = tmp_path / "lists" / "tiles.lst"
    listing.parent.mkdir()
    listing.write_text(
        f"# orthos of the zone\n\n../tiles/c.jp2\n  {folder / 'a.tif'}  \n#../tiles/b.TIF\n"
    )
    assert collect_rasters(listing) == [
        listing.parent / "../tiles/c.jp2",
        folder / "a.tif",
    ]
    assert collect_rasters(folder / "a.tif") == [folder / "a.tif"]


def test_collect_rasters_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no raster here")
    with pytest.raises(DataError, match=r"empty: no raster \(\.tif"):
        collect_rasters(empty)
    listing = tmp_path / "list.txt"
    listing.write_text("# tiles\nthere.tif\n")
    (tmp_path / "there.tif").write_bytes(b"")
    assert collect_rasters(listing) == [tmp_path / "there.tif"]
    listing.write_text("# tiles\nthere.tif\n\ngone.tif\n")
    with pytest.raises(DataError, match=r"list\.txt line 4: .*gone\.tif is missing"):
        collect_rasters(listing)
    listing.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="names no file"):
        collect_rasters(listing)
    with pytest.raises(DataError, match="matches no file"):
        collect_rasters(tmp_path / "*.jp2")
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        collect_rasters(tmp_path / "nowhere")


# --------------------------------------------------------------------------- date series

S2_NAMES = (
    "S2B_MSIL2A_20210614T103629_N0300_R008_T31TCJ_20210614T132125.tif",
    "T31TCJ_2021-03-02_B.tif",
    "s2_2021_09_30.tif",
)
MASK_NAMES = ("MSK_2021-06-14_v2.tif", "mask_20210302.tif", "cloud_2021_09_30.tif")  # same dates
DATES = np.array(["2021-03-02", "2021-06-14", "2021-09-30"], dtype="datetime64[D]")


def _s2_data(seed: int, count: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 10_000, (count, 8, 8), dtype=np.uint16)


def _write_series(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """3 dates, in file-name order June, March, September; September shifted one pixel east."""
    s2, masks = tmp_path / "s2", tmp_path / "masks"
    s2.mkdir()
    masks.mkdir()
    data = {}
    for seed, (name, mask_name) in enumerate(zip(S2_NAMES, MASK_NAMES, strict=True)):
        x = S2_X0 + (S2_PX if "09_30" in name else 0.0)
        data[name] = _s2_data(seed)
        write_raster(s2 / name, data[name], x, S2_Y0, px=S2_PX, crs=UTM31)
        mask = np.random.default_rng(100 + seed).integers(0, 101, (2, 8, 8), dtype=np.uint8)
        data[mask_name] = mask
        write_raster(masks / mask_name, mask, x, S2_Y0, px=S2_PX, crs=UTM31)
    return s2, masks, data


def test_date_from_name_patterns() -> None:
    assert date_from_name(S2_NAMES[0]) == np.datetime64("2021-06-14")
    assert date_from_name("T31TCJ_2021-06-14_B.tif") == np.datetime64("2021-06-14")
    assert date_from_name("x_2021_06_14.tif") == np.datetime64("2021-06-14")
    # The first *valid* date: 20211399 is not one.
    assert date_from_name("a_20211399_2021-02-03.tif") == np.datetime64("2021-02-03")
    for name in ("S2_N0300_R008.tif", "x_20210600.tif", "12021061412.tif", "2021-06_14.tif"):
        assert date_from_name(name) is None, name


def test_read_date_series_folder_with_masks_and_csv(tmp_path: Path) -> None:
    s2, masks, _ = _write_series(tmp_path)
    series = read_date_series(s2, masks)
    np.testing.assert_array_equal(series.dates, DATES)
    assert series.dates.dtype == np.dtype("datetime64[D]")
    assert [p.name for p in series.paths] == [S2_NAMES[1], S2_NAMES[0], S2_NAMES[2]]
    assert series.mask_paths is not None
    assert [p.name for p in series.mask_paths] == [
        "mask_20210302.tif",
        "MSK_2021-06-14_v2.tif",
        "cloud_2021_09_30.tif",
    ]
    assert read_date_series(s2).mask_paths is None

    csv = tmp_path / "series.csv"
    csv.write_text(
        "date,path,mask_path\n"
        f"2021-09-30,s2/{S2_NAMES[2]},masks/cloud_2021_09_30.tif\n"
        "\n"
        f"20210302,{s2 / S2_NAMES[1]},masks/mask_20210302.tif\n"
        f"20210614,s2/{S2_NAMES[0]},masks/MSK_2021-06-14_v2.tif\n"
    )
    from_csv = read_date_series(csv)
    np.testing.assert_array_equal(from_csv.dates, DATES)
    assert [p.resolve() for p in from_csv.paths] == [p.resolve() for p in series.paths]
    assert [p.resolve() for p in from_csv.mask_paths or ()] == [
        p.resolve() for p in series.mask_paths
    ]
    csv.write_text(f"date,path\n20210614,s2/{S2_NAMES[0]}\n")
    only = read_date_series(csv)
    assert only.mask_paths is None and only.paths == (s2 / S2_NAMES[0],)
    with pytest.raises(ValueError, match="carries its masks"):
        read_date_series(csv, masks)


def test_build_series_vrt_stacks_dates_masks_and_dates_file(tmp_path: Path) -> None:
    s2, masks, data = _write_series(tmp_path)
    series = read_date_series(s2, masks)
    out_dir = tmp_path / "vrt"
    stack, dates_file, mask_vrt = build_series_vrt(series, 10, out_dir, "s2")
    assert (stack, dates_file, mask_vrt) == (
        out_dir / "s2.vrt",
        out_dir / "s2_dates.txt",
        out_dir / "s2_mask.vrt",
    )
    np.testing.assert_array_equal(read_dates_file(dates_file), DATES)
    assert dates_file.read_text() == "20210302\n20210614\n20210930\n"

    # Union extent: the September file is one pixel east of the others -> 9 columns.
    def expected(names: list[str], count: int, dtype: type) -> np.ndarray:
        out = np.zeros((3 * count, 8, 9), dtype)
        for t, name in enumerate(names):
            col = 1 if "09_30" in name else 0
            out[t * count : (t + 1) * count, :, col : col + 8] = data[name]
        return out

    with rasterio.open(stack) as src:
        assert (src.count, src.width, src.height) == (30, 9, 8)
        assert src.dtypes == ("uint16",) * 30
        assert src.crs.to_epsg() == 32631
        assert src.transform == from_origin(S2_X0, S2_Y0, S2_PX, S2_PX)
        got = src.read()
    names = [S2_NAMES[1], S2_NAMES[0], S2_NAMES[2]]
    np.testing.assert_array_equal(got, expected(names, 10, np.uint16))
    assert mask_vrt is not None
    with rasterio.open(mask_vrt) as src:
        assert (src.count, src.width) == (6, 9)
        mask_names = ["mask_20210302.tif", "MSK_2021-06-14_v2.tif", "cloud_2021_09_30.tif"]
        np.testing.assert_array_equal(src.read(), expected(mask_names, 2, np.uint8))

    # Same inputs again: nothing rewritten.
    for path in (stack, dates_file, mask_vrt):
        os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    build_series_vrt(series, 10, out_dir, "s2")
    assert {p.stat().st_mtime_ns for p in (stack, dates_file, mask_vrt)} == {2_000_000_000}

    no_mask = DateSeries(series.dates, series.paths, None)
    assert build_series_vrt(no_mask, 10, out_dir, "plain")[2] is None


def test_series_errors_name_the_file(tmp_path: Path) -> None:
    s2, masks, _ = _write_series(tmp_path)
    undated = write_raster(s2 / "s2_latest.tif", _s2_data(9), S2_X0, S2_Y0, S2_PX, UTM31)
    with pytest.raises(DataError, match=r"s2_latest\.tif: no date .* in the raster's name"):
        read_date_series(s2)
    undated.unlink()

    twin = write_raster(s2 / "L2A_20210614.tif", _s2_data(9), S2_X0, S2_Y0, S2_PX, UTM31)
    with pytest.raises(DataError, match=r"raster of date 2021-06-14, as is .*L2A_20210614\.tif"):
        read_date_series(s2)
    twin.unlink()

    (masks / "cloud_2021_09_30.tif").rename(tmp_path / "cloud_2021_09_30.tif")
    with pytest.raises(DataError, match=r"s2_2021_09_30\.tif: no mask of date 2021-09-30"):
        read_date_series(s2, masks)
    (tmp_path / "cloud_2021_09_30.tif").rename(masks / "cloud_2021_09_30.tif")
    write_raster(masks / "m_20211231.tif", _s2_data(9, 2).astype(np.uint8), S2_X0, S2_Y0)
    with pytest.raises(DataError, match=r"m_20211231\.tif: no raster of the mask's date"):
        read_date_series(s2, masks)
    (masks / "m_20211231.tif").unlink()

    series = read_date_series(s2, masks)
    with pytest.raises(DataError, match=r"\.tif: the raster has 10 bands, expected 4 per date"):
        build_series_vrt(series, 4, tmp_path / "out", "s2")
    write_raster(s2 / S2_NAMES[2], _s2_data(9, count=9), S2_X0, S2_Y0, S2_PX, UTM31)
    with pytest.raises(DataError, match=r"s2_2021_09_30\.tif: the raster has 9 bands"):
        build_series_vrt(series, 10, tmp_path / "out", "s2")
    write_raster(s2 / S2_NAMES[2], _s2_data(9), S2_X0, S2_Y0, S2_PX, UTM31)
    write_raster(masks / "mask_20210302.tif", _s2_data(9, 3).astype(np.uint8), S2_X0, S2_Y0)
    with pytest.raises(DataError, match=r"mask_20210302\.tif: the mask has 3 bands, expected 2"):
        build_series_vrt(series, 10, tmp_path / "out", "s2")
    mask = _s2_data(9, 2).astype(np.uint8)
    write_raster(masks / "mask_20210302.tif", mask, S2_X0, S2_Y0, S2_PX, UTM31)
    write_raster(masks / MASK_NAMES[0], _s2_data(9, 2).astype(np.uint8), S2_X0, S2_Y0, S2_PX, L93)
    with pytest.raises(
        DataError, match=r"MSK_2021-06-14_v2\.tif does not match .*mask_20210302\.tif: CRS"
    ):
        build_series_vrt(series, 10, tmp_path / "out", "s2")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_series_csv_errors(tmp_path: Path) -> None:
    s2, _, _ = _write_series(tmp_path)
    csv = tmp_path / "series.csv"
    cases = {
        "day,file\n": "header must be 'date,path'",
        f"date,path\n2021-06-31,s2/{S2_NAMES[0]}\n": r"line 2: .*not a valid date",
        f"date,path\n14/06/2021,s2/{S2_NAMES[0]}\n": r"line 2: '14/06/2021' is not a YYYYMMDD",
        "date,path\n20210614,s2/missing.tif\n": r"line 2: .*missing\.tif is missing",
        f"date,path\n20210614,s2/{S2_NAMES[0]}\n2021-06-14,s2/{S2_NAMES[1]}\n": (
            "line 3: date 2021-06-14 is listed twice"
        ),
        f"date,path,mask_path\n20210614,s2/{S2_NAMES[0]},\n": "line 2: expected 3 non-empty",
        "date,path\n": "lists no date",
    }
    for text, pattern in cases.items():
        csv.write_text(text)
        with pytest.raises(DataError, match=pattern):
            read_date_series(csv)


def test_window_reader_reads_the_vrts_like_any_raster(tmp_path: Path) -> None:
    # Two aerial tiles side by side and the S2 series: a window across the tile seam comes
    # back exactly (aligned read), and the S2 window carries the dates of the dates file.
    left = write_raster(tmp_path / "l.tif", tile_data(1), X0, Y0)
    right = write_raster(tmp_path / "r.tif", tile_data(2), X0 + TILE * PX, Y0)
    aerial = build_mosaic_vrt([left, right], tmp_path / "aerial.vrt")
    s2, _, _ = _write_series(tmp_path)
    stack, dates_file, _ = build_series_vrt(read_date_series(s2), 10, tmp_path, "s2")
    reader = WindowReader(
        {
            Modality.AERIAL_RGBI: RasterSource(aerial),
            Modality.SENTINEL2_TS: RasterSource(stack, dates_file),
        }
    )
    x = X0 + 16 * PX  # columns 16..47: half of each tile
    sample = reader.read(
        (x, Y0 - TILE * PX, x + TILE * PX, Y0), L93, modalities=[Modality.AERIAL_RGBI]
    )
    expected = np.concatenate([read_all(left)[:, :, 16:], read_all(right)[:, :, :16]], axis=2)
    np.testing.assert_array_equal(sample.arrays[Modality.AERIAL_RGBI], expected)
    window = (S2_X0, S2_Y0 - 4 * S2_PX, S2_X0 + 4 * S2_PX, S2_Y0)
    sample = reader.read(window, UTM31, modalities=[Modality.SENTINEL2_TS])
    got = sample.arrays[Modality.SENTINEL2_TS]
    assert got.shape == (3, 10, 4, 4)
    np.testing.assert_array_equal(got[1], read_all(s2 / S2_NAMES[0])[:, :4, :4])  # June
    np.testing.assert_array_equal(sample.dates[Modality.SENTINEL2_TS], DATES)
