"""Evaluation reports for one task: JSON scores, a Markdown summary and two PNG plots.

Everything is computed from confusion matrices with ``flairkit.metrics``; nothing here reads
predictions. Plots use matplotlib's Agg canvas directly (no pyplot state), so writing a
report never opens a window nor changes the user's backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flairkit import __version__
from flairkit.metrics import MatrixLike, default_ignored, reduce_matrix, scores
from flairkit.modalities import ClassInfo, Task, class_table

log = logging.getLogger(__name__)


def report_stem(task: Task) -> str:
    """The short task name used in report file names: ``cosia`` or ``lpis``."""
    return Task(task).name.lower()


def report_paths(out_dir: str | Path, task: Task) -> dict[str, Path]:
    """The files ``write_report`` writes for a task: keys ``json``, ``markdown``,
    ``confusion_png`` and ``iou_png``."""
    out = Path(out_dir)
    stem = report_stem(task)
    return {
        "json": out / f"metrics_{stem}.json",
        "markdown": out / f"report_{stem}.md",
        "confusion_png": out / f"confusion_{stem}.png",
        "iou_png": out / f"iou_{stem}.png",
    }


def write_report(
    out_dir: str | Path,
    task: Task,
    matrix: MatrixLike,
    per_group: Mapping[str, MatrixLike] | None = None,
    ignored: Sequence[int] | None = None,
    published: Mapping[str, Any] | None = None,
    title: str | None = None,
    level: int = 1,
    group_label: str = "department",
) -> dict[str, Path]:
    """Write the evaluation report of one task.

    Files (``<task>`` is ``report_stem(task)``): ``metrics_<task>.json`` (scores, per-group
    scores, the raw matrices), ``report_<task>.md``, ``confusion_<task>.png`` (row-normalised
    matrix of the kept classes) and ``iou_<task>.png`` (per-class IoU bars).

    Args:
        out_dir: folder to write to (created if needed).
        task: the task scored.
        matrix: (K, K) confusion matrix over all classes, rows = reference.
        per_group: group name (e.g. department) -> (K, K) matrix.
        ignored: classes dropped from the scores; ``None`` means
            ``default_ignored(task, level)``.
        published: the published scores to compare with, e.g.
            ``{"model_id": "LC-A", "miou": 64.1, "oa": 77.5}`` (``oa`` and ``model_id``
            optional).
        title: heading of the Markdown report and the plots.
        level: LPIS nomenclature level (1, 2 or 3) of the matrix; ignored for COSIA.
        group_label: what a group is, for the Markdown heading and column.

    Returns:
        ``{"json": ..., "markdown": ..., "confusion_png": ..., "iou_png": ...}`` paths.

    Raises:
        ValueError: the matrix size does not match the class table.
    """
    task = Task(task)
    classes = class_table(task, level)
    ignored = tuple(ignored) if ignored is not None else default_ignored(task, level)
    full = np.asarray(matrix, dtype=np.int64)
    if full.shape != (len(classes), len(classes)):
        raise ValueError(
            f"matrix has shape {full.shape} but {task.name} level {level} has "
            f"{len(classes)} classes; pass level=2 or 3 for the finer LPIS nomenclatures"
        )
    title = title or f"{task.name} evaluation"
    names = [c.name for c in classes]
    summary = scores(full, ignored, names)
    groups = {g: np.asarray(m, dtype=np.int64) for g, m in sorted((per_group or {}).items())}
    group_scores = {g: scores(m, ignored, names) for g, m in groups.items()}

    paths = report_paths(out_dir, task)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "task": task.value,
        "title": title,
        "flairkit_version": __version__,
        "class_names": names,
        "ignored_classes": list(ignored),
        "published": dict(published) if published else None,
        "scores": summary,
        "group_label": group_label,
        "per_group": group_scores,
        "confusion_matrix": full.tolist(),
        "per_group_confusion_matrices": {g: m.tolist() for g, m in groups.items()},
    }
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(
        format_markdown(summary, group_scores, published, title, group_label)
    )
    plot_confusion(paths["confusion_png"], full, ignored, classes, title)
    plot_iou(paths["iou_png"], summary, classes, published, title)
    log.info(
        "wrote %s report to %s: %s",
        task.name,
        paths["json"].parent,
        format_summary(summary, published),
    )
    return paths


def format_summary(scores: Mapping[str, Any], published: Mapping[str, Any] | None = None) -> str:
    """One console line, e.g. ``mIoU 43.21 (published LC-A 64.10)  OA 70.00  mF1 55.10 ...``.

    Args:
        scores: the output of ``flairkit.metrics.scores``.
        published: optional ``{"miou": ..., "oa": ..., "model_id": ...}``.

    Returns:
        The summary line.
    """
    pub = published or {}
    model = f"{pub['model_id']} " if pub.get("model_id") else ""

    def with_published(label: str, key: str) -> str:
        text = f"{label} {scores[key]:.2f}"
        if pub.get(key) is not None:
            text += f" (published {model}{float(pub[key]):.2f})"
        return text

    return "  ".join(
        [
            with_published("mIoU", "miou"),
            with_published("OA", "oa"),
            f"mF1 {scores['mean_f1']:.2f}",
            f"mP {scores['mean_precision']:.2f}",
            f"mR {scores['mean_recall']:.2f}",
            f"{scores['num_classes']} classes",
            f"{scores['num_pixels']:,} px",
        ]
    )


def format_markdown(
    summary: Mapping[str, Any],
    group_scores: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Any] | None,
    title: str,
    group_label: str = "department",
) -> str:
    """The Markdown report: summary, ours vs published, per-class and per-group tables."""
    ignored = ", ".join(str(c) for c in summary["ignored_classes"]) or "none"
    lines = [
        f"# {title}",
        "",
        f"**mIoU {summary['miou']:.2f}** | OA {summary['oa']:.2f} | "
        f"mean F1 {summary['mean_f1']:.2f} | mean precision {summary['mean_precision']:.2f} | "
        f"mean recall {summary['mean_recall']:.2f}",
        "",
        f"Over {summary['num_classes']} classes (ignored: {ignored}); "
        f"{summary['num_pixels']:,} pixels scored, {summary['num_pixels_excluded']:,} excluded "
        "(reference or prediction in an ignored class).",
        "",
    ]
    if published:
        lines += [_published_line(summary, published), ""]
    lines += [
        "| class | name | IoU | F1 | precision | recall | pixels |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for entry in summary["per_class"].values():
        lines.append(
            f"| {entry['index']} | {entry['name']} | {entry['iou']:.2f} | {entry['f1']:.2f} | "
            f"{entry['precision']:.2f} | {entry['recall']:.2f} | {entry['support']:,} |"
        )
    lines.append(
        f"| | **mean** | **{summary['miou']:.2f}** | {summary['mean_f1']:.2f} | "
        f"{summary['mean_precision']:.2f} | {summary['mean_recall']:.2f} | "
        f"{summary['num_pixels']:,} |"
    )
    if group_scores:
        lines += [
            "",
            f"## Per {group_label}",
            "",
            f"| {group_label} | mIoU | OA | pixels |",
            "|---|---:|---:|---:|",
        ]
        for name, s in group_scores.items():
            lines.append(f"| {name} | {s['miou']:.2f} | {s['oa']:.2f} | {s['num_pixels']:,} |")
    return "\n".join(lines) + "\n"


def _published_line(summary: Mapping[str, Any], published: Mapping[str, Any]) -> str:
    model = published.get("model_id") or "published"
    parts = []
    for label, key in (("mIoU", "miou"), ("OA", "oa")):
        if published.get(key) is not None:
            ref = float(published[key])
            parts.append(f"{label} {summary[key]:.2f} vs {ref:.2f} ({summary[key] - ref:+.2f})")
    return f"Ours vs published ({model}): " + ", ".join(parts)


def plot_confusion(
    path: Path,
    matrix: MatrixLike,
    ignored: Sequence[int],
    classes: Sequence[ClassInfo],
    title: str,
) -> None:
    """Save the row-normalised confusion matrix (in %) of the kept classes as a PNG."""
    reduced, kept = reduce_matrix(matrix, ignored)
    counts = reduced.numpy().astype(np.float64)
    rows = counts.sum(1, keepdims=True)
    percent = np.divide(100 * counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(kept)
    labels = [f"{c} {classes[c].name}" for c in kept]
    side = max(5.0, 0.42 * n + 2.5)  # about 0.4 inch per class keeps 23 labels readable
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("reference")
    ax.set_title(f"{title}\nconfusion matrix, % of each reference row", fontsize=10)
    for i in range(n):
        for j in range(n):
            if percent[i, j] >= 0.5:
                colour = "white" if percent[i, j] > 60 else "black"
                ax.text(
                    j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=6, color=colour
                )
    fig.colorbar(image, ax=ax, shrink=0.6, label="% of reference pixels")
    fig.savefig(path, dpi=130)


def plot_iou(
    path: Path,
    summary: Mapping[str, Any],
    classes: Sequence[ClassInfo],
    published: Mapping[str, Any] | None,
    title: str,
) -> None:
    """Save horizontal per-class IoU bars in the official class colours, with the mIoU line."""
    entries = list(summary["per_class"].values())
    n = len(entries)
    fig = Figure(figsize=(7.5, max(3.0, 0.3 * n + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = np.arange(n)
    ious = [e["iou"] for e in entries]
    # A grey edge keeps white (snow) and black bars visible.
    ax.barh(
        ys,
        ious,
        color=[classes[e["index"]].colour for e in entries],
        edgecolor="0.3",
        linewidth=0.6,
    )
    for y, iou in enumerate(ious):  # the bars' y positions are 0 .. n - 1
        ax.text(iou + 0.8, y, f"{iou:.1f}", va="center", fontsize=7)
    ax.set_yticks(ys, [f"{e['index']} {e['name']}" for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.axvline(
        summary["miou"], color="tab:red", linestyle="--", label=f"mIoU {summary['miou']:.1f}"
    )
    if published and published.get("miou") is not None:
        model = published.get("model_id") or "published"
        ax.axvline(
            float(published["miou"]),
            color="tab:blue",
            linestyle=":",
            label=f"{model} mIoU {float(published['miou']):.1f}",
        )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{title}: IoU per class", fontsize=10)
    fig.savefig(path, dpi=130)
