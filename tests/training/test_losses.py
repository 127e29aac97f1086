"""Class weights, the weighted cross-entropy and the multitask loss, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flairkit.modalities import LPIS_NUM_CLASSES, Modality, Task
from flairkit.training.losses import MultiTaskLoss, class_weight_vector, weighted_cross_entropy

# One image, 3 classes, 2 x 2 pixels; LOGITS[0, :, i, j] are the logits of pixel (i, j).
LOGITS = [
    [[2.0, 0.5], [-1.0, 0.0]],
    [[0.0, 1.5], [0.5, 0.0]],
    [[-1.0, 0.0], [3.0, 0.0]],
]


def logits_tensor(values: list = LOGITS) -> Tensor:
    """(1, K, 2, 2) float32 logits that require a gradient."""
    return torch.tensor([values], dtype=torch.float32, requires_grad=True)


def neg_log_softmax(values: list, target: int, i: int, j: int) -> float:
    """-log softmax(values[:, i, j])[target], with math only."""
    column = [values[k][i][j] for k in range(len(values))]
    return math.log(sum(math.exp(v) for v in column)) - column[target]


def by_hand(values: list, target: list, weight: list[float]) -> float:
    """sum w[y] * CE / sum w[y] over the pixels whose label is in [0, K); 0 when none count."""
    num, den = 0.0, 0.0
    for i, row in enumerate(target):
        for j, y in enumerate(row):
            if 0 <= y < len(weight):
                num += weight[y] * neg_log_softmax(values, y, i, j)
                den += weight[y]
    return num / den if den > 0 else 0.0


# --- class_weight_vector -------------------------------------------------------------------------


def test_class_weight_vector_defaults_to_ones_and_sets_given_weights() -> None:
    assert torch.equal(class_weight_vector(4, None), torch.ones(4))
    assert torch.equal(class_weight_vector(4, {}), torch.ones(4))
    got = class_weight_vector(4, {1: 0.0, 3: 2.5})
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([1.0, 0.0, 1.0, 2.5]))


@pytest.mark.parametrize("index", [4, 19, -1])
def test_class_weight_vector_rejects_a_class_out_of_range(index: int) -> None:
    with pytest.raises(ValueError, match=rf"class {index}\b.*4 classes"):
        class_weight_vector(4, {index: 0.0})


@pytest.mark.parametrize("weight", [-0.5, math.nan])
def test_class_weight_vector_rejects_a_negative_or_nan_weight(weight: float) -> None:
    with pytest.raises(ValueError, match=rf"class 2: weight must be >= 0, got {weight}"):
        class_weight_vector(4, {1: 0.0, 2: weight})


# --- weighted_cross_entropy ----------------------------------------------------------------------


def test_weighted_cross_entropy_by_hand() -> None:
    target = [[0, 1], [2, 1]]
    weight = [1.0, 2.0, 0.5]
    loss = weighted_cross_entropy(logits_tensor(), torch.tensor([target]), torch.tensor(weight))
    expected = (
        1.0 * neg_log_softmax(LOGITS, 0, 0, 0)
        + 2.0 * neg_log_softmax(LOGITS, 1, 0, 1)
        + 0.5 * neg_log_softmax(LOGITS, 2, 1, 0)
        + 2.0 * neg_log_softmax(LOGITS, 1, 1, 1)
    ) / (1.0 + 2.0 + 0.5 + 2.0)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(by_hand(LOGITS, target, weight))
    # Unit weights: the plain mean over the four pixels.
    plain = weighted_cross_entropy(logits_tensor(), torch.tensor([target]), torch.ones(3))
    assert plain.item() == pytest.approx(by_hand(LOGITS, target, [1.0] * 3), rel=1e-6)
    assert plain.item() != pytest.approx(loss.item(), rel=1e-3)


def test_weighted_cross_entropy_by_hand_batch_of_two_with_four_classes() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 4, 2, 2, generator=g)
    target = torch.tensor([[[0, 3], [3, 1]], [[2, 2], [1, 0]]])
    weight = [0.5, 1.0, 3.0, 0.0]
    num = den = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                y = int(target[b, i, j])
                column = values[b, :, i, j].tolist()
                ce = math.log(sum(math.exp(v) for v in column)) - column[y]
                num += weight[y] * ce
                den += weight[y]
    got = weighted_cross_entropy(values, target, torch.tensor(weight))
    assert got.item() == pytest.approx(num / den, rel=1e-6)


def test_weight_zero_class_leaves_numerator_and_denominator() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    loss = weighted_cross_entropy(logits_tensor(), target, torch.tensor([1.0, 0.0, 1.0]))
    # Only pixels (0, 0) of class 0 and (1, 0) of class 2 count, each with weight 1.
    expected = (neg_log_softmax(LOGITS, 0, 0, 0) + neg_log_softmax(LOGITS, 2, 1, 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # The same as if the class-1 pixels were not labelled at all.
    unlabelled = torch.tensor([[[0, 255], [2, 255]]], dtype=torch.uint8)
    same = weighted_cross_entropy(logits_tensor(), unlabelled, torch.ones(3))
    assert same.item() == pytest.approx(expected, rel=1e-6)


def test_loss_does_not_depend_on_the_scale_of_the_weights() -> None:
    """sum w CE / sum w: multiplying every weight by a constant, even a tiny one, changes nothing."""
    target = torch.tensor([[[0, 1], [2, 1]]])
    weight = torch.tensor([1.0, 2.0, 0.5])
    reference = weighted_cross_entropy(logits_tensor(), target, weight).item()
    for scale in (1e3, 1e-3, 1e-8):
        scaled = weighted_cross_entropy(logits_tensor(), target, weight * scale)
        assert scaled.item() == pytest.approx(reference, rel=1e-5), scale


@pytest.mark.parametrize(
    ("target", "dtype"),
    [([[0, 255], [2, 255]], torch.uint8), ([[0, -1], [2, 3]], torch.int64)],
    ids=["uint8-255", "int64-minus-one-and-K"],
)
def test_labels_outside_the_classes_are_ignored(target: list, dtype: torch.dtype) -> None:
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = (1.0 * neg_log_softmax(LOGITS, 0, 0, 0) + 0.5 * neg_log_softmax(LOGITS, 2, 1, 0)) / (
        1.0 + 0.5
    )
    logits = logits_tensor()
    loss = weighted_cross_entropy(logits, torch.tensor([target], dtype=dtype), weight)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad = logits.grad[0]
    assert torch.all(grad[:, 0, 1] == 0) and torch.all(grad[:, 1, 1] == 0)
    assert torch.any(grad[:, 0, 0] != 0) and torch.any(grad[:, 1, 0] != 0)
    # Other logits at the ignored pixels: the same loss.
    changed = [[[r[0], r[1] + 7.0] for r in plane] for plane in LOGITS]
    again = weighted_cross_entropy(
        logits_tensor(changed), torch.tensor([target], dtype=dtype), weight
    )
    assert again.item() == pytest.approx(loss.item(), rel=1e-7)


def test_uint8_target_equals_int64_target() -> None:
    target = [[0, 1], [2, 1]]
    weight = torch.tensor([1.0, 2.0, 0.5])
    as_uint8 = weighted_cross_entropy(
        logits_tensor(), torch.tensor([target], dtype=torch.uint8), weight
    )
    as_long = weighted_cross_entropy(logits_tensor(), torch.tensor([target]), weight)
    assert as_uint8.item() == pytest.approx(by_hand(LOGITS, target, [1.0, 2.0, 0.5]), rel=1e-6)
    assert as_uint8.item() == as_long.item()


@pytest.mark.parametrize(
    "target",
    [[[1, 1], [1, 255]], [[255, 255], [255, 255]]],
    ids=["only-weight-zero", "only-ignored"],
)
def test_no_counting_pixel_gives_zero_and_a_zero_gradient(target: list) -> None:
    logits = logits_tensor()
    loss = weighted_cross_entropy(
        logits, torch.tensor([target], dtype=torch.uint8), torch.tensor([1.0, 0.0, 1.0])
    )
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    assert loss.requires_grad
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# --- MultiTaskLoss -------------------------------------------------------------------------------

K_COSIA = 19
K_LPIS = LPIS_NUM_CLASSES[1]  # 23


def multitask_inputs() -> tuple[dict, dict, dict]:
    """Logits, labels and auxiliary logits for COSIA and LPIS, B=1, 2 x 2 pixels."""
    g = torch.Generator().manual_seed(3)
    logits = {
        Task.COSIA: torch.randn(1, K_COSIA, 2, 2, generator=g, requires_grad=True),
        Task.LPIS: torch.randn(1, K_LPIS, 2, 2, generator=g, requires_grad=True),
    }
    labels = {
        Task.COSIA: torch.tensor([[[0, 15], [3, 18]]], dtype=torch.uint8),
        Task.LPIS: torch.tensor([[[22, 1], [5, 255]]], dtype=torch.uint8),
    }
    aux = {
        (Modality.AERIAL_RGBI, Task.COSIA): torch.randn(1, K_COSIA, 2, 2, generator=g),
        (Modality.SENTINEL2_TS, Task.COSIA): torch.randn(1, K_COSIA, 2, 2, generator=g),
        (Modality.SENTINEL1_ASC_TS, Task.LPIS): torch.randn(1, K_LPIS, 2, 2, generator=g),
    }
    return logits, labels, aux


CLASS_WEIGHTS = {Task.COSIA: {15: 0.0, 18: 0.0, 3: 2.0}, Task.LPIS: {22: 0.0, 1: 0.5}}


def weights_of(task: Task) -> Tensor:
    """The (K,) class weights of CLASS_WEIGHTS, built without class_weight_vector."""
    k = K_COSIA if task is Task.COSIA else K_LPIS
    vector = [1.0] * k
    for index, weight in CLASS_WEIGHTS[task].items():
        vector[index] = weight
    return torch.tensor(vector)


def make_loss(**kwargs) -> MultiTaskLoss:
    """COSIA (19) and LPIS (23 classes) with CLASS_WEIGHTS."""
    return MultiTaskLoss({Task.COSIA: K_COSIA, Task.LPIS: K_LPIS}, CLASS_WEIGHTS, **kwargs)


def test_class_weights_reach_the_buffers() -> None:
    criterion = make_loss()
    assert torch.equal(criterion.class_weights(Task.COSIA), weights_of(Task.COSIA))
    assert torch.equal(criterion.class_weights(Task.LPIS), weights_of(Task.LPIS))
    assert criterion.class_weights(Task.COSIA).shape == (K_COSIA,)
    buffers = dict(criterion.named_buffers())
    assert set(buffers) == {"weight_COSIA", "weight_LPIS"}
    assert torch.equal(buffers["weight_LPIS"], weights_of(Task.LPIS))
    # No weights given: ones; a task weight defaults to 1.
    plain = MultiTaskLoss({Task.LPIS: K_LPIS})
    assert torch.equal(plain.class_weights(Task.LPIS), torch.ones(K_LPIS))
    assert plain.task_weights == {Task.LPIS: 1.0}


def test_multitask_total_and_parts_by_hand() -> None:
    logits, labels, aux = multitask_inputs()
    task_weights = {Task.COSIA: 0.7, Task.LPIS: 2.0}
    criterion = make_loss(task_weights=task_weights, aux_weight=1.5)
    total, parts = criterion(logits, labels, aux)

    def ce(x: Tensor, task: Task) -> float:
        return weighted_cross_entropy(x, labels[task], weights_of(task)).item()

    main_c, main_l = ce(logits[Task.COSIA], Task.COSIA), ce(logits[Task.LPIS], Task.LPIS)
    aux_rgbi_c = ce(aux[Modality.AERIAL_RGBI, Task.COSIA], Task.COSIA)
    aux_s2_c = ce(aux[Modality.SENTINEL2_TS, Task.COSIA], Task.COSIA)
    aux_s1_l = ce(aux[Modality.SENTINEL1_ASC_TS, Task.LPIS], Task.LPIS)
    expected = 0.7 * (main_c + 1.5 * (aux_rgbi_c + aux_s2_c) / 2) + 2.0 * (main_l + 1.5 * aux_s1_l)
    assert total.shape == ()
    assert total.item() == pytest.approx(expected, rel=1e-6)

    assert set(parts) == {
        "loss_COSIA",
        "loss_LPIS",
        "aux_AERIAL_RGBI_COSIA",
        "aux_SENTINEL2_TS_COSIA",
        "aux_SENTINEL1_ASC_TS_LPIS",
    }
    assert parts["loss_COSIA"].item() == pytest.approx(main_c, rel=1e-6)
    assert parts["loss_LPIS"].item() == pytest.approx(main_l, rel=1e-6)
    assert parts["aux_AERIAL_RGBI_COSIA"].item() == pytest.approx(aux_rgbi_c, rel=1e-6)
    assert parts["aux_SENTINEL2_TS_COSIA"].item() == pytest.approx(aux_s2_c, rel=1e-6)
    assert parts["aux_SENTINEL1_ASC_TS_LPIS"].item() == pytest.approx(aux_s1_l, rel=1e-6)
    assert all(not p.requires_grad and p.grad_fn is None for p in parts.values())
    assert total.requires_grad
    total.backward()
    assert logits[Task.COSIA].grad is not None and logits[Task.LPIS].grad is not None


def test_main_loss_of_each_task_uses_its_own_class_weights() -> None:
    logits, labels, _ = multitask_inputs()
    _, parts = make_loss()(logits, labels)
    c = logits[Task.COSIA].detach()[0].tolist()
    # COSIA labels [[0, 15], [3, 18]]: 15 and 18 weigh 0, class 3 weighs 2.
    expected_c = (neg_log_softmax(c, 0, 0, 0) + 2.0 * neg_log_softmax(c, 3, 1, 0)) / 3.0
    assert parts["loss_COSIA"].item() == pytest.approx(expected_c, rel=1e-6)
    lp = logits[Task.LPIS].detach()[0].tolist()
    # LPIS labels [[22, 1], [5, 255]]: 22 weighs 0, 1 weighs 0.5, 255 is ignored.
    expected_l = (0.5 * neg_log_softmax(lp, 1, 0, 1) + neg_log_softmax(lp, 5, 1, 0)) / 1.5
    assert parts["loss_LPIS"].item() == pytest.approx(expected_l, rel=1e-6)


def test_without_aux_the_total_is_the_weighted_sum_of_the_main_losses() -> None:
    logits, labels, _ = multitask_inputs()
    criterion = make_loss(task_weights={Task.LPIS: 3.0}, aux_weight=10.0)
    for aux in (None, {}):
        total, parts = criterion(logits, labels, aux)
        assert set(parts) == {"loss_COSIA", "loss_LPIS"}
        expected = 1.0 * parts["loss_COSIA"].item() + 3.0 * parts["loss_LPIS"].item()
        assert total.item() == pytest.approx(expected, rel=1e-6)


def test_aux_of_one_task_does_not_leak_into_the_other() -> None:
    logits, labels, aux = multitask_inputs()
    criterion = make_loss(aux_weight=1.5)
    only_cosia = {k: v for k, v in aux.items() if k[1] is Task.COSIA}
    total, parts = criterion(logits, labels, only_cosia)
    assert "aux_SENTINEL1_ASC_TS_LPIS" not in parts
    mean_aux_c = (parts["aux_AERIAL_RGBI_COSIA"] + parts["aux_SENTINEL2_TS_COSIA"]).item() / 2
    expected = parts["loss_COSIA"].item() + 1.5 * mean_aux_c + parts["loss_LPIS"].item()
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # Making the LPIS auxiliary logits worse changes the LPIS term only.
    base_total, base_parts = criterion(logits, labels, aux)
    worse = dict(aux)
    worse[Modality.SENTINEL1_ASC_TS, Task.LPIS] = aux[Modality.SENTINEL1_ASC_TS, Task.LPIS] * 5.0
    worse_total, worse_parts = criterion(logits, labels, worse)
    for key in ("loss_COSIA", "loss_LPIS", "aux_AERIAL_RGBI_COSIA", "aux_SENTINEL2_TS_COSIA"):
        assert worse_parts[key].item() == base_parts[key].item()
    delta = worse_parts["aux_SENTINEL1_ASC_TS_LPIS"] - base_parts["aux_SENTINEL1_ASC_TS_LPIS"]
    assert delta.item() != pytest.approx(0.0, abs=1e-3)
    assert (worse_total - base_total).item() == pytest.approx(1.5 * delta.item(), rel=1e-5)


def test_aux_head_gets_a_gradient_through_the_total() -> None:
    logits, labels, aux = multitask_inputs()
    aux_logits = aux[Modality.AERIAL_RGBI, Task.COSIA].clone().requires_grad_(True)
    aux[Modality.AERIAL_RGBI, Task.COSIA] = aux_logits
    total, _ = make_loss(aux_weight=1.5)(logits, labels, aux)
    total.backward()
    assert aux_logits.grad is not None and torch.any(aux_logits.grad != 0)
    # Weight-0 pixels (COSIA 15 at (0, 1), 18 at (1, 1)) get none.
    assert torch.all(aux_logits.grad[0, :, :, 1] == 0)
