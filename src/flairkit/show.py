"""Describe and draw one patch: every modality's shape, dtype, range and dates; a PNG panel.

What is drawn goes through the training Preprocessor (``show_preprocessor``): the S2 dates its
cloud filter keeps, its DEM channels, its label band at the LPIS level, its band choice. Given a
run's preprocess config, show draws what that run's model sees (before normalisation).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flairkit.config import ConfigError, PreprocessConfig, load_run_config, preprocess_config_for
from flairkit.io.raster import count_nonfinite
from flairkit.modalities import INPUT_MODALITIES, ClassInfo, Modality, Task, class_table
from flairkit.sample import RawSample
from flairkit.transforms.preprocess import Preprocessor

log = logging.getLogger(__name__)

#: Order of the panels and of the description.
DISPLAY_ORDER: tuple[Modality, ...] = (
    *INPUT_MODALITIES,
    Modality.SENTINEL2_MSK,
    Modality.COSIA,
    Modality.LPIS,
)


def show_preprocessor(config: PreprocessConfig | None = None) -> Preprocessor:
    """The Preprocessor show draws through.

    ``config`` (a run's ``preprocess``; default: the benchmark's) decides the cloud filter,
    the DEM channels, the LPIS level and the bands. Inputs and tasks it does not have are
    added with the benchmark's defaults, since show draws every file of a patch.

    Raises:
        ConfigError: the config names unknown bands or lacks statistics.
    """
    base = config if config is not None else PreprocessConfig()
    defaults = preprocess_config_for(INPUT_MODALITIES, tasks=(Task.COSIA, Task.LPIS))
    full = dataclasses.replace(
        base,
        inputs={**defaults.inputs, **base.inputs},
        tasks=tuple(dict.fromkeys((*base.tasks, *defaults.tasks))),
    )
    return Preprocessor(full)


def load_show_preprocessor(run_config: str | Path | None) -> Preprocessor:
    """``show_preprocessor`` of a run YAML's ``preprocess`` section (None: the defaults).

    Raises:
        ConfigError: the file is missing or invalid; the message names the file and the
            dotted key.
    """
    if run_config is None:
        return show_preprocessor()
    try:
        return show_preprocessor(load_run_config(run_config).preprocess)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith(str(run_config)):
            raise
        raise ConfigError(f"{run_config}: {message}") from exc


def describe_patch(
    raw: RawSample,
    preprocessor: Preprocessor | None = None,
    missing: Mapping[Modality, tuple[Path, str]] | None = None,
) -> dict[str, Any]:
    """Shape, dtype, value range and dates of every modality of a patch.

    For S2, the dates kept and dropped by the preprocessor's cloud filter (and each date's
    clear fraction) are listed when the mask was read. The range is that of the finite
    values; float files also give their count of NaN or infinite values (``nonfinite``).

    Args:
        raw: the patch as read.
        preprocessor: whose cloud filter to apply; default ``show_preprocessor()``.
        missing: modalities not read, with their expected path and why (listed under
            ``missing``).
    """
    pre = preprocessor if preprocessor is not None else show_preprocessor()
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
            kept = pre.kept_dates(raw).tolist()
            fraction = pre.clear_fraction(raw)
            dates = raw.dates[m]
            entry["cloud_filter"] = {
                "kept": [str(dates[i]) for i in kept],
                "dropped": [str(dates[i]) for i in range(len(dates)) if i not in set(kept)],
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


@dataclass(frozen=True)
class Panel:
    """One image of the figure: (H, W) drawn with ``cmap``, or (H, W, 3) in [0, 1]."""

    title: str
    image: np.ndarray
    cmap: str | None = None
    colorbar: bool = False
    colour: str = "black"  # of the title


@dataclass(frozen=True)
class LabelPanel:
    """A label drawn in its nomenclature's colours, with a legend of the classes present."""

    title: str
    label: np.ndarray
    classes: tuple[ClassInfo, ...]


#: How each DEM channel of the Preprocessor is drawn: title and colour map.
_DEM_STYLE = {
    "DSM": ("DSM (m)", "terrain"),
    "DTM": ("DTM (m)", "terrain"),
    "HEIGHT": ("height DSM-DTM (m)", "viridis"),
}


def figure_panels(
    raw: RawSample,
    preprocessor: Preprocessor | None = None,
    num_dates: int = 4,
    lpis_level: int | None = None,
) -> tuple[list[Panel], list[LabelPanel]]:
    """The images ``plot_patch`` draws, in order, taken through the preprocessor.

    Aerial in true colour and in the model's bands, historical, the DEM channels the model
    gets (in metres: before normalisation), SPOT, a few S2 dates marked kept or dropped by the
    cloud filter, the first S1 band the model gets, and the labels (LPIS at ``lpis_level``,
    default the preprocessor's).
    """
    pre = preprocessor if preprocessor is not None else show_preprocessor()
    panels: list[Panel] = []
    a = raw.arrays
    if Modality.AERIAL_RGBI in a:
        aerial = a[Modality.AERIAL_RGBI]
        rgb = Modality.AERIAL_RGBI.band_indices(("R", "G", "B"))
        panels.append(Panel("aerial RGB", _stretch(aerial[rgb])))
        panels.append(_bands_panel("aerial", Modality.AERIAL_RGBI, aerial, pre))
    if Modality.AERIAL_PAN in a:
        (pan,) = Modality.AERIAL_PAN.band_indices(("PAN",))
        panels.append(Panel("historical (1950s)", a[Modality.AERIAL_PAN][pan], cmap="gray"))
    if Modality.DEM_ELEV in a:
        names, dem = pre.dem_channels(raw)
        for name, channel in zip(names, dem, strict=True):
            title, cmap = _DEM_STYLE[name]
            panels.append(Panel(title, channel, cmap=cmap, colorbar=True))
    if Modality.SPOT_RGBI in a:
        rgb = Modality.SPOT_RGBI.band_indices(("R", "G", "B"))
        panels.append(Panel("SPOT RGB", _stretch(a[Modality.SPOT_RGBI][rgb])))
    if Modality.SENTINEL2_TS in a:
        panels += _s2_panels(raw, num_dates, pre)
    for m, name in ((Modality.SENTINEL1_ASC_TS, "S1 asc"), (Modality.SENTINEL1_DESC_TS, "S1 desc")):
        if m in a:
            series = a[m]
            mid = series.shape[0] // 2
            band = pre.channels(m)[0]
            (index,) = m.band_indices((band,))
            db = 10 * np.log10(np.clip(series[mid, index].astype(np.float64), 1e-6, None))
            title = f"{name} {band} dB {raw.dates[m][mid]}"
            panels.append(Panel(title, db, cmap="gray", colorbar=True))
    legends: list[LabelPanel] = []
    if Modality.COSIA in a:
        legends.append(
            LabelPanel("COSIA land cover", pre.label(raw, Task.COSIA), class_table(Task.COSIA))
        )
    if Modality.LPIS in a:
        level = pre.config.lpis_level if lpis_level is None else lpis_level
        legends.append(
            LabelPanel(
                f"LPIS level {level}",
                pre.label(raw, Task.LPIS, level),
                class_table(Task.LPIS, level),
            )
        )
    return panels, legends


def _bands_panel(prefix: str, modality: Modality, data: np.ndarray, pre: Preprocessor) -> Panel:
    """The bands the model gets: the first three as a colour composite, or the first alone."""
    bands = pre.channels(modality)
    if len(bands) >= 3:
        shown = bands[:3]
        return Panel(f"{prefix} {'-'.join(shown)}", _stretch(data[modality.band_indices(shown)]))
    (index,) = modality.band_indices(bands[:1])
    return Panel(f"{prefix} {bands[0]}", data[index], cmap="gray", colorbar=True)


def plot_patch(
    raw: RawSample,
    path: str | Path,
    num_dates: int = 4,
    preprocessor: Preprocessor | None = None,
    lpis_level: int | None = None,
) -> Path:
    """Draw every modality of a patch side by side and save a PNG.

    The panels are ``figure_panels``: what the preprocessor (default ``show_preprocessor()``)
    feeds the model, labels in the official colours with a legend of the classes present.

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels, legends = figure_panels(raw, preprocessor, num_dates, lpis_level)
    num = len(panels) + len(legends)
    cols = min(5, max(num, 1))
    rows = int(np.ceil(num / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    flat = axes.ravel()
    for ax, panel in zip(flat, panels, strict=False):
        im = ax.imshow(panel.image, cmap=panel.cmap, interpolation="nearest")
        ax.set_title(panel.title, fontsize=9, color=panel.colour)
        if panel.colorbar:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax, legend in zip(flat[len(panels) :], legends, strict=False):
        ax.imshow(_label_rgb(legend.label, legend.classes), interpolation="nearest")
        ax.set_title(legend.title, fontsize=9)
        present = [c for c in legend.classes if np.any(legend.label == c.value)]
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


def _s2_panels(raw: RawSample, num_dates: int, pre: Preprocessor) -> list[Panel]:
    series = raw.arrays[Modality.SENTINEL2_TS]
    dates = raw.dates[Modality.SENTINEL2_TS]
    num_total = series.shape[0]
    kept: set[int] = set(range(num_total))
    if Modality.SENTINEL2_MSK in raw.arrays:
        kept = set(pre.kept_dates(raw).tolist())
    picks = np.unique(np.linspace(0, num_total - 1, min(num_dates, num_total)).round().astype(int))
    # One shared stretch, taken from the clear dates, so clouds show as bright across dates.
    rgb = series[:, Modality.SENTINEL2_TS.band_indices(("B04", "B03", "B02"))].astype(np.float32)
    clear = sorted(kept) or list(range(num_total))
    lo, hi = np.percentile(rgb[clear], [2, 98])
    rgb = rgb[picks]
    out = []
    for j, t in enumerate(picks):
        image = np.clip((rgb[j] - lo) / max(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)
        status = "kept" if t in kept else "cloud: dropped"
        colour = "darkgreen" if t in kept else "red"
        out.append(Panel(f"S2 {dates[t]} ({status})", image, colour=colour))
    return out
