"""Evaluation reports: files, JSON round trip, Markdown content, PNG images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

from flairkit.metrics import confusion_matrix, default_ignored, scores
from flairkit.modalities import Task, class_table
from flairkit.reports import format_summary, write_report

PUBLISHED = {"model_id": "LC-A", "miou": 64.1, "oa": 77.5}


def _random_matrices(num_classes: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, num_classes, (4, 32, 32), generator=g)
    noise = torch.randint(0, num_classes, (4, 32, 32), generator=g)
    pred = torch.where(torch.rand(4, 32, 32, generator=g) < 0.6, target, noise)
    groups = {
        "D012": confusion_matrix(target[:2], pred[:2], num_classes),
        "D015": confusion_matrix(target[2:], pred[2:], num_classes),
    }
    return confusion_matrix(target, pred, num_classes), groups


def test_cosia_report_files(tmp_path: Path) -> None:
    matrix, groups = _random_matrices(19)
    paths = write_report(
        tmp_path, Task.COSIA, matrix, groups, published=PUBLISHED, title="LC-A on test"
    )
    assert set(paths) == {"json", "markdown", "confusion_png", "iou_png"}
    assert paths["json"].name == "metrics_cosia.json"
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())

    data = json.loads(paths["json"].read_text())
    expected = scores(
        matrix, default_ignored(Task.COSIA), [c.name for c in class_table(Task.COSIA)]
    )
    assert data["scores"] == expected
    assert data["confusion_matrix"] == matrix.tolist()
    assert set(data["per_group"]) == {"D012", "D015"}
    assert data["per_group"]["D015"] == scores(
        groups["D015"], default_ignored(Task.COSIA), data["class_names"]
    )
    assert data["ignored_classes"] == [15, 16, 17, 18]
    assert data["published"] == PUBLISHED

    md = paths["markdown"].read_text()
    assert f"{expected['miou']:.2f}" in md
    assert "Ours vs published (LC-A)" in md and "64.10" in md
    assert "| D012 |" in md and "## Per department" in md
    assert "| 14 | brushwood |" in md and "clear cut" not in md

    for key in ("confusion_png", "iou_png"):
        image = imread(paths[key])
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas


def test_lpis_report_without_published_or_groups(tmp_path: Path) -> None:
    matrix, _ = _random_matrices(23)
    paths = write_report(tmp_path, Task.LPIS, matrix)
    data = json.loads(paths["json"].read_text())
    assert data["scores"]["num_classes"] == 21 and data["per_group"] == {}
    md = paths["markdown"].read_text()
    assert "published" not in md.lower() and "Per department" not in md
    assert imread(paths["confusion_png"]).shape[0] > 100


def test_report_rejects_wrong_class_count(tmp_path: Path) -> None:
    # A level-2 LPIS matrix needs level=2 (31 classes, no known removals: default_ignored).
    with pytest.raises(ValueError, match="level=2"):
        write_report(tmp_path, Task.LPIS, torch.zeros(31, 31, dtype=torch.long))
    assert not any(tmp_path.iterdir())


def test_format_summary() -> None:
    s = scores([[3, 1], [0, 4]])
    line = format_summary(s)
    assert line.startswith(f"mIoU {s['miou']:.2f}  OA {s['oa']:.2f}") and "published" not in line
    line = format_summary(s, PUBLISHED)
    assert "(published LC-A 64.10)" in line and "(published LC-A 77.50)" in line
