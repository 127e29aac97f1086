"""GeoTIFF writers for predictions: class maps with the official colour table, probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds

from flairkit.modalities import ClassInfo, hex_to_rgb


def write_class_map(
    path: str | Path,
    classes: np.ndarray,
    bounds: tuple[float, float, float, float],
    crs: str | None,
    class_table: Sequence[ClassInfo],
    probabilities: np.ndarray | None = None,
) -> Path:
    """Write a georeferenced uint8 class map (LZW, colour table) and optionally probabilities.

    Args:
        path: output ``.tif``.
        classes: (H, W) class indices.
        bounds: (left, bottom, right, top) of the footprint.
        crs: CRS of the footprint.
        class_table: classes with their colours (written as the GeoTIFF colour table).
        probabilities: (K, H, W) floats in [0, 1]; written beside as ``<stem>_proba.tif``, one
            uint8 band per class (round(p x 255)).

    Returns:
        The class-map path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = classes.shape
    transform = from_bounds(*bounds, width=width, height=height)
    profile = dict(
        driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
        transform=transform, compress="lzw", tiled=True, blockxsize=256, blockysize=256,
    )  # fmt: skip
    if width % 16 or height % 16:
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes.astype(np.uint8), 1)
        dst.write_colormap(1, {c.value: (*hex_to_rgb(c.colour), 255) for c in class_table})
        dst.update_tags(1, **{f"CLASS_{c.value}": c.name for c in class_table})
    if probabilities is not None:
        proba_path = path.with_name(f"{path.stem}_proba.tif")
        quantised = np.clip(np.rint(probabilities * 255), 0, 255).astype(np.uint8)
        with rasterio.open(proba_path, "w", **{**profile, "count": quantised.shape[0]}) as dst:
            dst.write(quantised)
            for i, c in enumerate(class_table[: quantised.shape[0]], start=1):
                dst.set_band_description(i, c.name)
    return path
