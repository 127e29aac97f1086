"""Winograd 3x3 convolutions: same forward and gradients as the direct convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flairkit.models.winograd import (
    F23,
    F43,
    MIN_CHANNELS,
    WinogradConv2d,
    use_winograd,
    uses_winograd,
    winograd_conv3x3,
)


def _grads(fn, x, w, b, grad_out):
    y = fn(x, w, b)
    return (y, *torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], grad_out))


@pytest.mark.parametrize("alg", [F23, F43], ids=["F23", "F43"])
@pytest.mark.parametrize(
    ("shape", "c_out", "with_bias"),
    [
        ((2, 5, 8, 8), 6, True),  # whole tiles
        ((1, 3, 7, 9), 4, True),  # odd sizes: padded last tiles
        ((2, 4, 6, 5), 3, False),
        ((1, 2, 3, 2), 2, True),  # smaller than one F(4,3) tile
    ],
)
def test_matches_direct_convolution_in_float64(alg, shape, c_out, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_out, shape[1], 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64, requires_grad=True)
    b = b if with_bias else None
    grad_out = torch.randn(shape[0], c_out, *shape[2:], generator=gen, dtype=torch.float64)
    ours = _grads(lambda x, w, b: winograd_conv3x3(x, w, b, alg), x, w, b, grad_out)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=1), x, w, b, grad_out)
    assert ours[0].shape == ref[0].shape
    for name, a, r in zip(("output", "grad x", "grad w", "grad b"), ours, ref, strict=False):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize(("alg", "tol"), [(F23, 5e-6), (F43, 5e-5)], ids=["F23", "F43"])
def test_float32_error_stays_small(alg, tol):
    """Relative to the output's largest magnitude, at a layer size where it is used."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 36, 40, generator=gen).relu()
    w = torch.randn(64, 64, 3, 3, generator=gen) * 0.05
    y = winograd_conv3x3(x, w, None, alg)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    err = float((y.double() - ref).abs().max() / ref.abs().max())
    assert err < tol


def test_default_algorithm_follows_map_size(monkeypatch):
    from flairkit.models import winograd

    calls, apply = [], winograd._WinogradConv3x3.apply

    def spy(x, weight, bias, alg):
        calls.append(alg.tile_px)
        return apply(x, weight, bias, alg)

    monkeypatch.setattr(winograd._WinogradConv3x3, "apply", spy)
    w = torch.randn(1, 1, 3, 3)
    winograd_conv3x3(torch.randn(1, 1, 40, 32), w)
    winograd_conv3x3(torch.randn(1, 1, 40, 31), w)
    assert calls == [4, 2]


def test_rejects_other_kernels():
    with pytest.raises(ValueError, match=r"\(C_out, C, 3, 3\)"):
        winograd_conv3x3(torch.zeros(1, 2, 8, 8), torch.zeros(3, 2, 5, 5))


def _net(channels: int = MIN_CHANNELS) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, channels, 7, stride=2, padding=3),  # not 3x3: kept
        nn.Conv2d(channels, channels, 3, padding=1),  # swapped
        nn.ReLU(),
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),  # stride 2: kept
        nn.Conv2d(channels, channels // 2, 3, padding=1),  # too few output channels: kept
        nn.Conv2d(channels // 2, 5, 1),
    )


def test_use_winograd_swaps_eligible_layers_only():
    net = _net()
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    assert use_winograd(net) == 1
    assert [type(m) for m in net if isinstance(m, nn.Conv2d)] == [
        nn.Conv2d,
        WinogradConv2d,
        nn.Conv2d,
        nn.Conv2d,
        nn.Conv2d,
    ]
    assert use_winograd(net) == 0  # idempotent
    state = net.state_dict()
    assert state.keys() == keys.keys() and all(torch.equal(state[k], keys[k]) for k in keys)
    assert use_winograd(net, enabled=False) == 1
    assert all(type(m) is nn.Conv2d for m in net if isinstance(m, nn.Conv2d))


def test_training_step_matches_direct_and_evaluation_is_unchanged():
    plain, fast = _net(), _net()
    assert use_winograd(fast) == 1
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    conv = fast[1]
    hidden = torch.randn(2, MIN_CHANNELS, 64, 64)
    assert uses_winograd(conv, hidden)
    with torch.no_grad():  # evaluation: the direct convolution, bit for bit
        assert not uses_winograd(conv, hidden)
        assert torch.equal(fast(x), plain(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision keeps its conv dtype
        assert not uses_winograd(conv, hidden)
    assert not uses_winograd(conv, hidden[:1, :, :8, :8])  # too little work to gain
    assert not uses_winograd(conv, hidden.double())
    # training: Winograd, same loss and gradients to float32 rounding
    y_fast, y_plain = fast(x), plain(x)
    assert not torch.equal(y_fast, y_plain)  # it did take the other path
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-4, atol=1e-5)
    y_fast.square().mean().backward()
    y_plain.square().mean().backward()
    for (name, p_fast), p_plain in zip(fast.named_parameters(), plain.parameters(), strict=True):
        scale = float(p_plain.grad.abs().max())
        torch.testing.assert_close(
            p_fast.grad, p_plain.grad, rtol=0, atol=1e-4 * scale, msg=f"grad of {name}"
        )


def test_train_config_switch():
    from pathlib import Path

    from flairkit.config import load_run_config

    demo = Path(__file__).parents[2] / "configs" / "demo.yaml"
    assert load_run_config(demo).train.winograd is True
    assert load_run_config(demo, ["train.winograd=false"]).train.winograd is False
    with pytest.raises(ValueError, match="train.winograd"):
        load_run_config(demo, ["train.winograd=sometimes"])


def test_deterministic():
    """Same inputs, same bits: a resumed run must retrace an uninterrupted one exactly."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 64, 40, 40, generator=gen, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, generator=gen, requires_grad=True)
    grad_out = torch.randn(2, 64, 40, 40, generator=gen)
    first, second = (_grads(winograd_conv3x3, x, w, None, grad_out) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
