"""BatchNorm folding: folded networks compute what the unfused eval networks compute, only the
pairs whose data flow is certain are folded, and folding leaves everything else alone."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from flairkit.inference.fold import fold_batchnorm, fold_conv_bn


def randomise_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so that a wrong fold shows."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
            c = bn.num_features
            bn.running_mean.copy_(torch.rand(c, generator=gen) * 2 - 1)
            assert bn.running_var is not None
            bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.05)
            if bn.affine:
                bn.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
                bn.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)


def assert_same_function(after: torch.Tensor, before: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the magnitude of the output."""
    scale = before.abs().max().item()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5 * scale)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"kernel_size": 1, "bias": False},
        {"kernel_size": 3, "padding": 1, "bias": True},
        {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2, "groups": 4},
        {"kernel_size": 3, "padding": "same", "padding_mode": "reflect"},
    ],
)
def test_fold_conv_bn_matches_conv_then_bn(conv_kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, **conv_kwargs).eval()
    bn = nn.BatchNorm2d(16).eval()
    randomise_bn(bn)
    conv_state, bn_state = state(conv), state(bn)
    x = torch.randn(2, 8, 17, 19)
    with torch.no_grad():
        expected = bn(conv(x))
        folded = fold_conv_bn(conv, bn)
        got = folded(x)
    assert_same_function(got, expected)
    assert type(folded) is nn.Conv2d and folded is not conv
    assert folded.bias is not None and folded.weight.dtype == conv.weight.dtype
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(folded, attr) == getattr(conv, attr), attr
    assert folded.weight.device == conv.weight.device
    # The inputs are not modified.
    for before, now in ((conv_state, conv.state_dict()), (bn_state, bn.state_dict())):
        assert all(torch.equal(before[k], now[k]) for k in before)


def test_fold_conv_bn_keeps_a_half_precision_convolution_in_half() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1).eval()
    bn = nn.BatchNorm2d(8).eval()
    randomise_bn(bn)
    folded = fold_conv_bn(copy.deepcopy(conv).to(torch.bfloat16), bn)  # float32 statistics
    assert folded.bias is not None
    assert folded.weight.dtype == folded.bias.dtype == torch.bfloat16
    reference = fold_conv_bn(conv, bn)
    torch.testing.assert_close(folded.weight.float(), reference.weight, rtol=1e-2, atol=1e-2)


def test_fold_conv_bn_does_not_draw_random_numbers() -> None:
    """The folded convolution is never randomly initialised (that also cost most of a fold)."""
    conv, bn = nn.Conv2d(64, 128, 3).eval(), nn.BatchNorm2d(128).eval()
    rng_state = torch.random.get_rng_state()
    fold_conv_bn(conv, bn)
    assert torch.equal(torch.random.get_rng_state(), rng_state)


def test_fold_conv_bn_needs_running_statistics() -> None:
    conv, bn = nn.Conv2d(2, 3, 1).eval(), nn.BatchNorm2d(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, bn)


@pytest.mark.parametrize(
    ("name", "num_pairs"),
    # stem + 2 per BasicBlock x 8 + 3 downsamples; stem + 3 per Bottleneck x 16 + 4 downsamples
    [("resnet18", 1 + 16 + 3), ("resnet50", 1 + 48 + 4)],
)
def test_folded_resnet_encoder_matches_the_unfused_eval_encoder(name: str, num_pairs: int) -> None:
    torch.manual_seed(0)
    encoder = timm.create_model(name, features_only=True, pretrained=False).eval()
    randomise_bn(encoder)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        before = encoder(x)
    assert fold_batchnorm(encoder) == num_pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
    with torch.inference_mode():
        after = encoder(x)
    assert len(after) == len(before) == 5
    for a, b in zip(after, before, strict=True):
        assert_same_function(a, b)
    assert not any(m.training for m in encoder.modules())  # the new modules too
    assert fold_batchnorm(encoder) == 0  # nothing left to fold


def test_modules_without_batchnorm_are_untouched() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    children = list(net)
    before = state(net)
    assert fold_batchnorm(net) == 0
    assert list(net) == children  # the same module objects
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ConvThenBn(nn.Module):
    """A conv and a BatchNorm with something in between: the order of children says nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(torch.relu(self.conv1(x)))


IMAGE, SEQUENCE = (1, 3, 8, 8), (1, 3, 8)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)), IMAGE),
        (lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)), IMAGE),  # BN first
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False)), IMAGE),
        (
            lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)),
            IMAGE,
        ),
        (lambda: nn.Sequential(Conv2dSame(3, 4, 3), nn.BatchNorm2d(4)), IMAGE),  # a subclass
        (lambda: nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4)), SEQUENCE),
        (ConvThenBn, IMAGE),  # a custom module: its forward is not known
    ],
)
def test_pairs_with_uncertain_data_flow_are_not_folded(make, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = make().eval()
    randomise_bn(net)
    children = list(net.children())
    x = torch.randn(shape)
    with torch.no_grad():
        before = net(x)
        assert fold_batchnorm(net) == 0
        after = net(x)
    assert list(net.children()) == children
    assert torch.equal(after, before)


def test_nested_containers_are_folded_and_keep_their_function() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Sequential(
                nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1),
                nn.BatchNorm2d(8),
            )
            self.skip = ConvThenBn()  # left alone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x) + self.skip(x).sum(1, keepdim=True)

    net = Net().eval()
    randomise_bn(net)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
        assert fold_batchnorm(net) == 2
        after = net(x)
    assert_same_function(after, before)
    inner = net.head[0]
    assert isinstance(inner, nn.Sequential) and isinstance(inner[1], nn.Identity)
    assert isinstance(net.head[3], nn.Identity)
    assert isinstance(net.skip.bn1, nn.BatchNorm2d)


def test_training_mode_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(net)
    assert isinstance(net[1], nn.BatchNorm2d)
    eval_copy = copy.deepcopy(net).eval()
    assert fold_batchnorm(eval_copy) == 1
