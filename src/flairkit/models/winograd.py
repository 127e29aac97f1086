"""Winograd 3x3 convolutions for CPU training.

On a CPU, training a U-Net spends most of its time in 3x3 convolutions (forward, input gradient
and weight gradient). oneDNN, which PyTorch uses there, computes them directly on AVX2 machines.
Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016) computes an m x m output tile from an (m + 2) x (m + 2) input tile with (m + 2)^2
multiplications per channel pair instead of 9 m^2: F(2x2, 3x3) needs 2.25x fewer, F(4x4, 3x3) 4x
fewer. The price is moving tiles through small transforms, memory-bound work that only pays when
the channel counts are large; hence the limits in :func:`uses_winograd`.

Everything here is plain PyTorch: each transform is one GEMM with a Kronecker product of the
small matrices, the products are one batched GEMM over the tile positions, and the backward pass
applies the transposed transforms. Results agree with the direct convolution to rounding:
~1e-6 (F(2,3)) and ~1e-5 (F(4,3)) of the output's largest magnitude in float32, which is why it
is used for training only; evaluation, prediction and maps keep the direct convolution, so scores
and maps do not depend on this switch. Measured on a 2-core AVX2 CPU (forward + backward, batch 2):
128 channels at 64 px 112 -> 58 ms, 256 at 32 px 93 -> 48 ms, 512 at 16 px 98 -> 67 ms (F(2,3));
a ResNet18 U-Net training step on 512 px aerial patches 4.06 -> 3.38 s (``bench/train.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Below this many input or output channels the transforms cost more than they save.
MIN_CHANNELS = 64
#: Maps smaller than this (height or width) use F(2,3); larger ones F(4,3).
F43_MIN_SIZE_PX = 32
#: Calls with less work than this (batch x pixels x input x output channels) are left to the
#: direct convolution: the fixed cost of the transforms outweighs the saving (measured: 2 x 64 x 64
#: at 16 px, 2 M, is 2x slower; 2 x 256 x 256 at 16 px, 33 M, 1.3x faster).
MIN_WORK = 2**24


@dataclass(frozen=True)
class _Algorithm:
    """Winograd F(m x m, 3 x 3): output tile m, input tile m + 2 (transform matrices A^T, G, B^T)."""

    tile_px: int
    a_t: tuple[tuple[float, ...], ...]
    g: tuple[tuple[float, ...], ...]
    b_t: tuple[tuple[float, ...], ...]


F23 = _Algorithm(
    tile_px=2,
    a_t=((1, 1, 1, 0), (0, 1, -1, -1)),
    g=((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    b_t=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
)
F43 = _Algorithm(
    tile_px=4,
    a_t=(
        (1, 1, 1, 1, 1, 0),
        (0, 1, -1, 2, -2, 0),
        (0, 1, 1, 4, 4, 0),
        (0, 1, -1, 8, -8, 1),
    ),
    g=(
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
    b_t=(
        (4, 0, -5, 0, 1, 0),
        (0, -4, -4, 1, 1, 0),
        (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1),
    ),
)


@cache
def _kronecker(alg: _Algorithm, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """2-D transforms as matrices on flattened tiles: (m^2, a^2), (a^2, 9), (a^2, a^2)."""

    def kron(rows: tuple[tuple[float, ...], ...]) -> Tensor:
        mat = torch.tensor(rows, dtype=torch.float64)  # built in float64, then rounded once
        return torch.kron(mat, mat).to(dtype)

    return kron(alg.a_t), kron(alg.g), kron(alg.b_t)


def _num_tiles(size_px: int, tile_px: int) -> int:
    return -(-size_px // tile_px)


def _input_tiles(x: Tensor, tile_px: int, tiles_h: int, tiles_w: int) -> Tensor:
    """Overlapping input tiles, one row per tile position: (a^2, C, B * tiles_h * tiles_w)."""
    b, c, h, w = x.shape
    a = tile_px + 2
    # padding 1 (the convolution's) on the top/left, enough zeros to complete the last tiles
    xp = F.pad(x, (1, tile_px * tiles_w + 1 - w, 1, tile_px * tiles_h + 1 - h))
    s_b, s_c, s_h, s_w = xp.stride()
    view = xp.as_strided(
        (a, a, c, b, tiles_h, tiles_w), (s_h, s_w, s_c, s_b, tile_px * s_h, tile_px * s_w)
    )
    # a copy where tiles overlap; contiguous() lets degenerate one-tile views through as views
    return view.contiguous().view(a * a, c, b * tiles_h * tiles_w)


class _WinogradConv3x3(torch.autograd.Function):
    """3x3 convolution, stride 1, padding 1, through Winograd F(m, 3)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, alg: _Algorithm
    ) -> Tensor:
        m, a = alg.tile_px, alg.tile_px + 2
        b, c_in, h, w = x.shape
        c_out = weight.shape[0]
        tiles_h, tiles_w = _num_tiles(h, m), _num_tiles(w, m)
        k_a, k_g, k_b = _kronecker(alg, x.dtype)
        tiles = _input_tiles(x, m, tiles_h, tiles_w)
        v = torch.mm(k_b, tiles.view(a * a, -1)).view(a * a, c_in, -1)  # (a^2, C_in, P)
        u = torch.mm(k_g, weight.reshape(-1, 9).T).view(a * a, c_out, c_in)
        prod = torch.bmm(u, v)  # (a^2, C_out, P)
        out_tiles = torch.mm(k_a, prod.view(a * a, -1))  # (m^2, C_out * P)
        y = x.new_empty((b, c_out, tiles_h, m, tiles_w, m))
        y.permute(3, 5, 1, 0, 2, 4).copy_(out_tiles.view(m, m, c_out, b, tiles_h, tiles_w))
        y = y.view(b, c_out, tiles_h * m, tiles_w * m)
        if h != tiles_h * m or w != tiles_w * m:
            y = y[:, :, :h, :w].contiguous()
        if bias is not None:
            y += bias.view(1, -1, 1, 1)
        ctx.save_for_backward(weight, u, v)
        ctx.alg, ctx.x_shape, ctx.has_bias = alg, x.shape, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        weight, u, v = ctx.saved_tensors
        alg = ctx.alg
        m, a = alg.tile_px, alg.tile_px + 2
        b, c_in, h, w = ctx.x_shape
        c_out = weight.shape[0]
        tiles_h, tiles_w = _num_tiles(h, m), _num_tiles(w, m)
        k_a, k_g, k_b = _kronecker(alg, grad_y.dtype)
        grad_bias = grad_y.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        if h != tiles_h * m or w != tiles_w * m:
            grad_y = F.pad(grad_y, (0, tiles_w * m - w, 0, tiles_h * m - h))
        grad_tiles = grad_y.reshape(b, c_out, tiles_h, m, tiles_w, m).permute(3, 5, 1, 0, 2, 4)
        grad_prod = torch.mm(k_a.T, grad_tiles.reshape(m * m, -1)).view(a * a, c_out, -1)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.bmm(u.transpose(1, 2), grad_prod)  # (a^2, C_in, P)
            grad_in_tiles = torch.mm(k_b.T, grad_v.view(a * a, -1))
            grad_in_tiles = grad_in_tiles.view(a, a, c_in, b, tiles_h, tiles_w)
            # overlapping tiles: each of the a^2 tile positions adds into a strided grid.
            # F.fold does the same overlap-add but needs a (B, C * a^2, L) copy first: measured
            # 3-4x slower here (64 ch at 128 px: 25 vs 7 ms).
            grad_xp = grad_y.new_zeros((b, c_in, tiles_h * m + 2, tiles_w * m + 2))
            s_b, s_c, s_h, s_w = grad_xp.stride()
            size, stride = (c_in, b, tiles_h, tiles_w), (s_c, s_b, m * s_h, m * s_w)
            for i in range(a):
                for j in range(a):
                    grid = grad_xp.as_strided(size, stride, i * s_h + j * s_w)
                    grid.add_(grad_in_tiles[i, j])
            grad_x = grad_xp[:, :, 1 : h + 1, 1 : w + 1].contiguous()
        if ctx.needs_input_grad[1]:
            grad_u = torch.bmm(grad_prod, v.transpose(1, 2))  # (a^2, C_out, C_in)
            grad_weight = torch.mm(k_g.T, grad_u.view(a * a, -1)).T.reshape(weight.shape)
        return grad_x, grad_weight, grad_bias, None


def winograd_conv3x3(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, alg: _Algorithm | None = None
) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel, computed with Winograd.

    Args:
        x: (B, C_in, H, W) input, any size (the last tiles are zero-padded).
        weight: (C_out, C_in, 3, 3).
        bias: (C_out,) or None.
        alg: F23 or F43; default: F43 for maps of at least ``F43_MIN_SIZE_PX``, else F23.
    """
    if weight.shape[-2:] != (3, 3) or x.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"winograd_conv3x3 takes (B, C, H, W) input and (C_out, C, 3, 3) weights; got "
            f"input {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    if alg is None:
        alg = F43 if min(x.shape[-2:]) >= F43_MIN_SIZE_PX else F23
    return _WinogradConv3x3.apply(x, weight, bias, alg)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, padding 1) that trains through Winograd on a CPU.

    Same parameters, state-dict keys and results as its parent; :func:`uses_winograd` says when
    a call takes the Winograd path. Made by :func:`use_winograd`, which swaps the class of
    existing layers.
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if uses_winograd(self, x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)


def _eligible_layer(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


def uses_winograd(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether this call takes the Winograd path: training on a CPU in float32, large enough.

    Not under autocast (mixed precision keeps its own conv dtype), not while tracing or
    scripting, not without autograd (evaluation and maps stay on the direct convolution), not
    for calls too small to gain (``MIN_WORK``).
    """
    return (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and _eligible_layer(conv)
        and x.shape[0] * x.shape[2] * x.shape[3] * conv.in_channels * conv.out_channels >= MIN_WORK
    )


def use_winograd(model: nn.Module, enabled: bool = True) -> int:
    """Let the model's eligible 3x3 convolutions train through Winograd on a CPU (or stop it).

    Swaps the class of each ``nn.Conv2d`` with a 3x3 kernel, stride 1, padding 1 and at least
    ``MIN_CHANNELS`` channels in and out to :class:`WinogradConv2d` (or back): parameters,
    buffers and state-dict keys are untouched. Returns the number of layers swapped.
    """
    swapped = 0
    for module in model.modules():
        if enabled and type(module) is nn.Conv2d and _eligible_layer(module):
            module.__class__ = WinogradConv2d
            swapped += 1
        elif not enabled and type(module) is WinogradConv2d:
            module.__class__ = nn.Conv2d  # type: ignore[assignment]  # swapping back to the base class is the point
            swapped += 1
    return swapped
