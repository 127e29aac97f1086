"""Describe and draw one patch: every modality's shape, dtype, range and dates; a PNG panel."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flairkit.config import CloudFilterConfig
from flairkit.sample import RawSample
from flairkit.io.raster import count_nonfinite
from flairkit.modalities import (
    COSIA_CLASSES,
    INPUT_MODALITIES,
    LPIS_L1_CLASSES,
    ClassInfo,
    Modality,
    Task,
    class_table,
)
from flairkit.transforms.timeseries import clear_fraction, filter_dates

log = logging.getLogger(__name__)

#: Order of the panels and of the description.
DISPLAY_ORDER: tuple[Modality, ...] = (
    *INPUT_MODALITIES,
    Modality.SENTINEL2_MSK,
    Modality.COSIA,
    Modality.LPIS,
)


def describe_patch(
    raw: RawSample,
    cloud: CloudFilterConfig = CloudFilterConfig(),
    missing: Mapping[Modality, tuple[Path, str]] | None = None,
) -> dict[str, Any]:
    """Shape, dtype, value range and dates of every modality of a patch.

    For S2, the dates kept and dropped by the benchmark's cloud filter (and each date's
    clear fraction) are listed when the mask was read. The range is that of the finite
    values; float files also give their count of NaN or infinite values (``nonfinite``).

    Args:
        raw: the patch as read.
        cloud: the S2 date filter.
        missing: modalities not read, with their expected path and why (listed under
            ``missing``).
    """
    out: dict[str, Any] = {"patch_id": raw.patch_id, "modalities": {}}
    for m in DISPLAY_ORDER:
        if m not in raw.arrays:
            continue
        data = raw.arrays[m]
        georef = raw.georefs.get(m)
        low, high = _finite_range(data)
        entry: dict[str, Any] = {
            "shape": list(data.shape),
            "dtype": str(data.dtype),
            "min": low,
            "max": high,
            "bands": list(m.spec.bands),
        }
        if data.dtype.kind in "fc":
            entry["nonfinite"] = raw.nonfinite[m] if m in raw.nonfinite else count_nonfinite(data)
        if m in raw.paths:
            entry["path"] = str(raw.paths[m])
        if georef is not None:
            entry.update(gsd_m=round(georef.gsd_m, 4), crs=georef.crs, bounds=list(georef.bounds))
        if m in raw.dates:
            entry["dates"] = [str(d) for d in raw.dates[m]]
        if m is Modality.SENTINEL2_TS and Modality.SENTINEL2_MSK in raw.arrays:
            mask = raw.arrays[Modality.SENTINEL2_MSK]
            kept = filter_dates(mask, cloud)
            fraction = clear_fraction(mask, cloud.max_cloud, cloud.max_snow)
            dates = raw.dates[m]
            entry["cloud_filter"] = {
                "kept": [str(dates[i]) for i in kept],
                "dropped": [
                    str(dates[i]) for i in range(len(dates)) if i not in set(kept.tolist())
                ],
                "clear_fraction": [round(float(f), 3) for f in fraction],
            }
        out["modalities"][m.value] = entry
    out["missing"] = {
        m.value: {"path": str(path), "problem": problem}
        for m, (path, problem) in (missing or {}).items()
    }
    return out


def _finite_range(data: np.ndarray) -> tuple[float | int | None, float | int | None]:
    """Min and max of the finite values (None when there is none: JSON has no NaN)."""
    if data.dtype.kind in "fc":
        data = data[np.isfinite(data)]
    if data.size == 0:
        return None, None
    return _scalar(data.min()), _scalar(data.max())


def _scalar(value: Any) -> float | int:
    return value.item() if hasattr(value, "item") else value


def format_description(desc: dict[str, Any]) -> str:
    """Human-readable text of ``describe_patch``."""
    lines = [f"patch {desc['patch_id']}"]
    for name, e in desc["modalities"].items():
        gsd = f" {e['gsd_m']} m/px" if "gsd_m" in e else ""
        bad = f" ({e['nonfinite']} NaN or infinite values)" if e.get("nonfinite") else ""
        lines.append(
            f"  {name:<20} {str(tuple(e['shape'])):<22} {e['dtype']:<8} "
            f"range [{_fmt(e['min'])}, {_fmt(e['max'])}]{gsd}{bad}"
        )
        if "dates" in e:
            d = e["dates"]
            lines.append(f"    {len(d)} dates: {', '.join(d[:4])}{' ...' if len(d) > 4 else ''}")
        if "cloud_filter" in e:
            cf = e["cloud_filter"]
            lines.append(f"    cloud filter keeps {len(cf['kept'])}: {', '.join(cf['kept'])}")
            lines.append(f"    drops {len(cf['dropped'])}: {', '.join(cf['dropped']) or '-'}")
    for name, e in desc.get("missing", {}).items():
        lines.append(f"  {name:<20} not read, {e['problem']}: {e['path']}")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _stretch(rgb: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """(3, H, W) any dtype -> (H, W, 3) float in [0, 1], percentile stretch per band."""
    out = np.empty((rgb.shape[1], rgb.shape[2], 3), dtype=np.float32)
    for i in range(3):
        band = rgb[i].astype(np.float32)
        lo, hi = np.nanpercentile(band, [low, high])
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def _label_rgb(label: np.ndarray, classes: tuple[ClassInfo, ...]) -> np.ndarray:
    from flairkit.modalities import hex_to_rgb

    lut = np.zeros((256, 3), dtype=np.uint8)
    for c in classes:
        lut[c.value] = hex_to_rgb(c.colour)
    return lut[label.astype(np.uint8)]


def plot_patch(
    raw: RawSample,
    path: str | Path,
    num_dates: int = 4,
    cloud: CloudFilterConfig = CloudFilterConfig(),
    lpis_level: int = 1,
) -> Path:
    """Draw every modality of a patch side by side and save a PNG.

    Aerial (true colour and NIR-R-G), historical, DEM (DSM and height), SPOT, a few S2 dates
    (marked kept/dropped by the cloud filter), S1 VV, COSIA and LPIS in the official colours
    with a legend of the classes present.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels: list[tuple[str, np.ndarray, dict[str, Any]]] = []
    a = raw.arrays
    if Modality.AERIAL_RGBI in a:
        panels.append(("aerial RGB", _stretch(a[Modality.AERIAL_RGBI][[0, 1, 2]]), {}))
        panels.append(("aerial NIR-R-G", _stretch(a[Modality.AERIAL_RGBI][[3, 0, 1]]), {}))
    if Modality.AERIAL_PAN in a:
        panels.append(("historical (1950s)", a[Modality.AERIAL_PAN][0], {"cmap": "gray"}))
    if Modality.DEM_ELEV in a:
        dem = a[Modality.DEM_ELEV].astype(np.float32)
        panels.append(("DSM (m)", dem[0], {"cmap": "terrain", "colorbar": True}))
        panels.append(
            ("height DSM-DTM (m)", dem[0] - dem[1], {"cmap": "viridis", "colorbar": True})
        )
    if Modality.SPOT_RGBI in a:
        panels.append(("SPOT RGB", _stretch(a[Modality.SPOT_RGBI][[0, 1, 2]]), {}))
    if Modality.SENTINEL2_TS in a:
        panels += _s2_panels(raw, num_dates, cloud)
    for m, name in ((Modality.SENTINEL1_ASC_TS, "S1 asc"), (Modality.SENTINEL1_DESC_TS, "S1 desc")):
        if m in a:
            series = a[m]
            mid = series.shape[0] // 2
            vv = 10 * np.log10(np.clip(series[mid, 0].astype(np.float64), 1e-6, None))
            panels.append(
                (f"{name} VV dB {raw.dates[m][mid]}", vv, {"cmap": "gray", "colorbar": True})
            )
    legends: list[tuple[str, np.ndarray, tuple[ClassInfo, ...]]] = []
    if Modality.COSIA in a:
        legends.append(("COSIA land cover", a[Modality.COSIA][0], COSIA_CLASSES))
    if Modality.LPIS in a:
        classes = LPIS_L1_CLASSES if lpis_level == 1 else class_table(Task.LPIS, lpis_level)
        legends.append((f"LPIS level {lpis_level}", a[Modality.LPIS][lpis_level - 1], classes))

    num = len(panels) + len(legends)
    cols = min(5, max(num, 1))
    rows = int(np.ceil(num / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    flat = axes.ravel()
    for ax, (title, image, opts) in zip(flat, panels, strict=False):
        im = ax.imshow(image, cmap=opts.get("cmap"), interpolation="nearest")
        ax.set_title(title, fontsize=9, color=opts.get("color", "black"))
        if opts.get("colorbar"):
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax, (title, label, classes) in zip(flat[len(panels) :], legends, strict=False):
        ax.imshow(_label_rgb(label, classes), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        present = [c for c in classes if np.any(label == c.value)]
        handles = [
            Patch(facecolor=c.colour, edgecolor="k", label=f"{c.value} {c.name}") for c in present
        ]
        ax.legend(
            handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False
        )
    for ax in flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[num:]:
        ax.axis("off")
    fig.suptitle(f"FLAIR-HUB patch {raw.patch_id}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _s2_panels(
    raw: RawSample, num_dates: int, cloud: CloudFilterConfig
) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
    series = raw.arrays[Modality.SENTINEL2_TS]
    dates = raw.dates[Modality.SENTINEL2_TS]
    num_total = series.shape[0]
    kept: set[int] = set(range(num_total))
    mask = raw.arrays.get(Modality.SENTINEL2_MSK)
    if mask is not None:
        kept = set(filter_dates(mask, cloud).tolist())
    picks = np.unique(np.linspace(0, num_total - 1, min(num_dates, num_total)).round().astype(int))
    # One shared stretch, taken from the clear dates, so clouds show as bright across dates.
    rgb = series[:, [2, 1, 0]].astype(np.float32)  # B04, B03, B02
    clear = sorted(kept) or list(range(num_total))
    lo, hi = np.percentile(rgb[clear], [2, 98])
    rgb = rgb[picks]
    out = []
    for j, t in enumerate(picks):
        image = np.clip((rgb[j] - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)
        status = "kept" if t in kept else "cloud: dropped"
        colour = "darkgreen" if t in kept else "red"
        out.append((f"S2 {dates[t]} ({status})", image, {"color": colour}))
    return out
