"""Confusion matrices and the benchmark's scores, checked against hand-computed numbers."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flairkit.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    default_ignored,
    merge_group_matrices,
    per_sample_confusion,
    reduce_matrix,
    scores,
)
from flairkit.modalities import Task


def test_confusion_matrix_by_hand_drops_out_of_range() -> None:
    target = torch.tensor([0, 0, 1, 2, 2, 2, 3, 255, 1], dtype=torch.uint8)
    pred = torch.tensor([0, 1, 1, 2, 0, 7, 2, 0, 1], dtype=torch.uint8)
    # (3, 2): target 3 is outside [0, 3); (2, 7): pred 7 is; (255, 0): target 255 is.
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    got = confusion_matrix(target, pred, 3)
    assert got.dtype == torch.int64
    assert torch.equal(got, expected)
    # Any shape, any integer dtype; negative values drop out too.
    assert torch.equal(
        confusion_matrix(target.reshape(3, 3).long(), pred.reshape(3, 3), 3), expected
    )
    assert confusion_matrix(torch.tensor([-1, 0]), torch.tensor([0, -1]), 3).sum() == 0


def test_confusion_matrix_rejects_logits_and_size_mismatch() -> None:
    with pytest.raises(TypeError, match="argmax"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.rand(4), 3)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 3)


def test_per_sample_confusion_sums_to_total() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(-1, 6, (3, 8, 8), generator=g)
    pred = torch.randint(0, 7, (3, 8, 8), generator=g)
    per_sample = per_sample_confusion(target, pred, 5)
    assert per_sample.shape == (3, 5, 5)
    for b in range(3):
        assert torch.equal(per_sample[b], confusion_matrix(target[b], pred[b], 5))
    assert torch.equal(per_sample.sum(0), confusion_matrix(target, pred, 5))


# Hand-built 4-class matrix, class 3 ignored, rows = reference, cols = prediction.
#   class 2 is absent from both reference and prediction of the kept classes.
MATRIX = [
    [50, 10, 0, 5],  # 5 pixels of class 0 predicted as the ignored class 3: they drop out
    [20, 30, 0, 1],
    [0, 0, 0, 0],
    [7, 3, 0, 40],  # the ignored reference class: its whole row drops out
]


def test_scores_by_hand_with_ignored_class() -> None:
    s = scores(MATRIX, ignored=(3,), class_names=["a", "b", "c", "d"])
    # Reduced matrix [[50, 10, 0], [20, 30, 0], [0, 0, 0]], total 110.
    iou0 = 100 * 50 / (60 + 70 - 50)  # 62.5
    iou1 = 100 * 30 / (50 + 40 - 30)  # 50.0
    p0, p1 = 100 * 50 / 70, 100 * 30 / 40
    r0, r1 = 100 * 50 / 60, 100 * 30 / 50
    f0, f1 = 2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)
    pc = s["per_class"]
    assert list(pc) == ["0", "1", "2"]
    assert pc["0"]["name"] == "a" and pc["0"]["index"] == 0
    assert pc["0"]["iou"] == pytest.approx(iou0) and pc["1"]["iou"] == pytest.approx(iou1)
    assert pc["2"]["iou"] == 0.0 and pc["2"]["f1"] == 0.0 and pc["2"]["support"] == 0
    assert pc["0"]["precision"] == pytest.approx(p0) and pc["1"]["precision"] == pytest.approx(p1)
    assert pc["0"]["recall"] == pytest.approx(r0) and pc["1"]["recall"] == pytest.approx(r1)
    assert pc["0"]["f1"] == pytest.approx(f0) and pc["1"]["f1"] == pytest.approx(f1)
    assert pc["0"]["support"] == 60 and pc["0"]["predicted"] == 70
    # The absent class counts as 0 in the plain mean over the 3 kept classes.
    assert s["miou"] == pytest.approx((iou0 + iou1 + 0) / 3)  # 37.5
    assert s["mean_precision"] == pytest.approx((p0 + p1) / 3)
    assert s["mean_recall"] == pytest.approx((r0 + r1) / 3)
    assert s["mean_f1"] == pytest.approx((f0 + f1) / 3)
    assert s["oa"] == pytest.approx(100 * 80 / 110)  # the 5 + 1 predicted as 3 are not errors
    assert s["num_pixels"] == 110 and s["num_pixels_excluded"] == 166 - 110
    assert s["kept_classes"] == [0, 1, 2] and s["ignored_classes"] == [3]
    assert "3" not in pc
    assert json.loads(json.dumps(s)) == s  # plain Python numbers only


def test_scores_without_ignored_and_empty_matrix() -> None:
    s = scores(torch.tensor(MATRIX))
    assert s["oa"] == pytest.approx(100 * 120 / 166)
    assert s["per_class"]["3"]["iou"] == pytest.approx(100 * 40 / (50 + 46 - 40))
    empty = scores(torch.zeros(3, 3, dtype=torch.long))
    assert empty["miou"] == 0.0 and empty["oa"] == 0.0
    assert all(not math.isnan(v["iou"]) for v in empty["per_class"].values())


def test_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        scores(MATRIX, ignored=(4,))
    with pytest.raises(ValueError, match="square"):
        scores([[1, 2, 3]])
    with pytest.raises(ValueError, match="class names"):
        scores(MATRIX, class_names=["a"])


def test_default_ignored() -> None:
    assert default_ignored(Task.COSIA) == (15, 16, 17, 18)
    assert default_ignored(Task.LPIS) == (21, 22)
    assert default_ignored(Task.LPIS, lpis_ignored=()) == ()
    assert default_ignored(Task.LPIS, level=2) == ()


def test_iou_matches_torchmetrics_on_kept_classes() -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (2, 32, 32), generator=g)
    noise = torch.randint(0, 19, (2, 32, 32), generator=g)
    pred = torch.where(torch.rand(2, 32, 32, generator=g) < 0.5, target, noise)
    ignored = default_ignored(Task.COSIA)
    s = scores(confusion_matrix(target, pred, 19), ignored)

    # The benchmark's reduction, done on the pixels: drop pixels whose reference or
    # prediction is ignored, then renumber the kept classes 0..14.
    keep = ~(torch.isin(target, torch.tensor(ignored)) | torch.isin(pred, torch.tensor(ignored)))
    remap = torch.full((19,), -1, dtype=torch.long)
    remap[[c for c in range(19) if c not in ignored]] = torch.arange(15)
    jaccard = MulticlassJaccardIndex(num_classes=15, average=None)
    expected = 100 * jaccard(remap[pred[keep]], remap[target[keep]])
    ours = torch.tensor([e["iou"] for e in s["per_class"].values()], dtype=torch.float32)
    assert torch.allclose(ours, expected, atol=1e-4)
    reduced, kept = reduce_matrix(confusion_matrix(target, pred, 19), ignored)
    assert kept == list(range(15)) and int(reduced.sum()) == int(keep.sum())


def test_accumulation_equals_one_update_and_groups_sum_to_total() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 6, (6, 16, 16), generator=g, dtype=torch.uint8)
    pred = torch.randint(0, 6, (6, 16, 16), generator=g, dtype=torch.uint8)
    target[0, 0, 0] = 255
    names = ["D012", "D015", "D012", "D022", "D015", "D012"]

    cm = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        cm.update(target[i : i + 2], pred[i : i + 2], names[i : i + 2])
    expected = confusion_matrix(target, pred, 5)
    assert torch.equal(cm.compute(), expected)
    groups = cm.compute_groups()
    assert list(groups) == ["D012", "D015", "D022"]
    assert torch.equal(sum(groups.values()), expected)
    idx = [i for i, n in enumerate(names) if n == "D015"]
    assert torch.equal(groups["D015"], confusion_matrix(target[idx], pred[idx], 5))

    plain = ConfusionMatrix(5)
    plain.update(target[:3], pred[:3])
    plain.update(target[3:], pred[3:])
    assert torch.equal(plain.compute(), expected) and plain.compute_groups() == {}

    with pytest.raises(ValueError, match="one name per sample"):
        cm.update(target[:2], pred[:2], ["D012"])


def test_sync_without_distributed_is_a_no_op_and_guards_updates() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]), ["D001"])
    before, before_groups = cm.compute(), cm.compute_groups()
    cm.sync()
    assert torch.equal(cm.compute(), before)
    assert torch.equal(cm.compute_groups()["D001"], before_groups["D001"])
    with pytest.raises(RuntimeError, match="reset"):
        cm.update(torch.tensor([0]), torch.tensor([0]))
    cm.reset()
    assert cm.compute().sum() == 0 and cm.compute_groups() == {}
    cm.update(torch.tensor([0]), torch.tensor([0]))
    assert cm.compute()[0, 0] == 1


def test_matrix_is_a_non_persistent_buffer() -> None:
    cm = ConfusionMatrix(4)
    assert "matrix" in dict(cm.named_buffers()) and cm.state_dict() == {}


def test_merge_group_matrices() -> None:
    a = {"D1": torch.ones(2, 2, dtype=torch.long)}
    b = {"D1": torch.ones(2, 2, dtype=torch.long), "D2": torch.eye(2, dtype=torch.long)}
    merged = merge_group_matrices([a, b])
    assert torch.equal(merged["D1"], 2 * torch.ones(2, 2, dtype=torch.long))
    assert torch.equal(merged["D2"], torch.eye(2, dtype=torch.long))
    assert torch.equal(a["D1"], torch.ones(2, 2, dtype=torch.long))  # inputs untouched


def _rank_data(rank: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(10 + rank)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    pred = torch.randint(0, 4, (2, 8, 8), generator=g)
    names = ["D001", "D002"] if rank == 0 else ["D002", "D003"]  # D002 is shared
    return target, pred, names


def _sync_worker(rank: int, world_size: int, port: int, queue: mp.SimpleQueue) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    try:
        cm = ConfusionMatrix(4)
        cm.update(*_rank_data(rank))
        cm.sync()
        cm.sync()  # a second call must not sum again
        # Plain lists: shared-memory tensors would not outlive this process.
        groups = {name: m.tolist() for name, m in cm.compute_groups().items()}
        queue.put((rank, cm.compute().tolist(), groups))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_sums_exactly_across_two_gloo_processes() -> None:
    """Two processes, world size 2: every rank ends with the exact totals and all groups."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = mp.start_processes(
        _sync_worker, args=(2, _free_port(), queue), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 60  # a hung rendezvous fails the test instead of hanging it
    while not procs.join(timeout=0.5):
        if time.monotonic() > deadline:
            for proc in procs.processes:
                proc.kill()
            pytest.fail("gloo workers did not finish within 60 s")
    results = {}
    while not queue.empty():
        rank, matrix, groups = queue.get()
        results[rank] = (torch.tensor(matrix), {n: torch.tensor(m) for n, m in groups.items()})
    assert sorted(results) == [0, 1]

    reference = ConfusionMatrix(4)
    for rank in (0, 1):
        reference.update(*_rank_data(rank))
    for matrix, groups in results.values():
        assert torch.equal(matrix, reference.compute())
        assert list(groups) == ["D001", "D002", "D003"]
        for name, m in reference.compute_groups().items():
            assert torch.equal(groups[name], m)
