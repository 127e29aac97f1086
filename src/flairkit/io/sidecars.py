"""Sidecar files of a class map: a QGIS layer style (``.qml``) and a PNG preview.

``write_qml`` writes a paletted renderer that QGIS loads with ``<stem>.tif``; ``write_preview_png``
draws a small, decimated PNG of the map in class colours (nodata transparent).
``StreamingMapWriter`` (``io.writers``) writes both next to every map it finishes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from flairkit.modalities import ClassInfo, hex_to_rgb

_QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def write_qml(path: str | Path, class_table: Sequence[ClassInfo], band: int = 1) -> Path:
    """Write a QGIS layer style (``.qml``) with a paletted renderer for a class map.

    QGIS loads ``<stem>.qml`` automatically when it opens ``<stem>.tif``.

    Args:
        path: output ``.qml``.
        class_table: classes; one palette entry each (value, colour, name as label).
        band: band of the raster the renderer reads.

    Returns:
        ``path``.
    """
    path = Path(path)
    root = ET.Element("qgis", version="3.28.0", styleCategories="AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe, "rasterrenderer", type="paletted", band=str(band), opacity="1", alphaBand="-1",
        nodataColor="",
    )  # fmt: skip
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in class_table:
        ET.SubElement(
            palette, "paletteEntry", value=str(c.value), color=c.colour.lower(), alpha="255",
            label=c.name,
        )  # fmt: skip
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _QML_DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def preview_shape(height_px: int, width_px: int, max_px: int) -> tuple[int, int]:
    """Size of a preview whose longest side is at most ``max_px`` (never enlarged).

    Args:
        height_px: raster rows.
        width_px: raster columns.
        max_px: longest side allowed.

    Returns:
        ``(rows, cols)``, each at least 1.
    """
    scale = max(height_px, width_px) / max_px
    if scale <= 1:
        return height_px, width_px
    return (
        min(max_px, max(1, round(height_px / scale))),
        min(max_px, max(1, round(width_px / scale))),
    )


def write_preview_png(
    class_map_path: str | Path,
    png_path: str | Path,
    class_table: Sequence[ClassInfo],
    max_px: int = 1024,
) -> Path:
    """Write a PNG of a class map in class colours, longest side at most ``max_px``.

    Reads a decimated view (GDAL picks the closest overview), never the full raster; nodata
    and values outside the table are transparent.

    Args:
        class_map_path: class map GeoTIFF (ideally a COG with overviews).
        png_path: output ``.png``.
        class_table: classes and colours.
        max_px: longest side of the preview.

    Returns:
        ``png_path``.
    """
    from PIL import Image  # lazy: only previews need it

    png_path = Path(png_path)
    with rasterio.open(class_map_path) as src:
        shape = preview_shape(src.height, src.width, max_px)
        classes = src.read(1, out_shape=shape, resampling=Resampling.nearest)  # (h, w)
    rgba = _palette(class_table)[classes]  # (h, w, 4)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    # Pillow directly: matplotlib's imsave took 1.1 s more for a 1024^2 preview (import included).
    Image.fromarray(rgba, mode="RGBA").save(png_path, format="PNG", compress_level=1)
    return png_path


def _palette(class_table: Sequence[ClassInfo]) -> np.ndarray:
    """(256, 4) uint8 RGBA lookup table: class colours, transparent elsewhere (nodata)."""
    lut = np.zeros((256, 4), np.uint8)
    for c in class_table:
        lut[c.value] = (*hex_to_rgb(c.colour), 255)
    return lut
