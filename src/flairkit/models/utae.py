"""U-TAE: a U-Net whose bottleneck is a lightweight temporal attention encoder (L-TAE).

Sainte Fare Garnot & Landrieu, "Panoptic Segmentation of Satellite Image Time Series with
Convolutional Temporal Attention Networks", ICCV 2021 (https://arxiv.org/abs/2107.07933).

Written here to compute the same function as the U-TAE that FLAIR-HUB vendors
(``flair_hub/models/multitemp_model.py``), so that official weights load through
:func:`official_utae_key`. The data flow, for an input (B, T, C, H, W):

1. a convolutional encoder shared across dates gives one feature map per stage and date;
2. the L-TAE turns the coarsest maps into one map per sample and an attention mask per head;
3. the attention masks collapse the time axis of the skip connections (``agg_mode``);
4. a convolutional decoder climbs back to full resolution; ``out_conv`` gives the class scores.

Differences from the reference, all of which leave its outputs unchanged when no date is padded:

- the padding mask can be given explicitly (the reference always infers it from pixel values);
- the L-TAE input GroupNorm takes its statistics over the real dates only (the reference's
  statistics include the padded dates, so appending padding changes its outputs);
- padded dates never enter the shared encoder (as in the reference), but the mask is the given
  one at every stage instead of being re-inferred from each stage's feature values.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``nn.Conv2d``'s padding modes.
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]

AggMode = Literal["att_group", "att_mean", "mean"]
NormKind = Literal["group", "batch", "instance"]

#: Groups of the GroupNorm in the convolutional blocks (fixed in the reference).
CONV_GROUPS = 4


# --------------------------------------------------------------------------------------------
# Width rules of the FLAIR-HUB model
# --------------------------------------------------------------------------------------------


def fused_utae_widths(encoder_widths: Sequence[int], num_stages: int) -> list[int]:
    """Encoder and decoder widths FLAIR-HUB gives a U-TAE fused with a mono-temporal encoder.

    The reference spreads ``num_stages`` values evenly over ``[min - 1, max + 1]`` of the
    configured encoder widths, truncates them to integers and rounds each to the nearest power
    of 2 (``FLAIR_HUB_Model.adjust_fm_length``). Both the encoder and decoder widths are replaced
    by the result, so that the U-TAE returns one map per stage of the mono-temporal encoder.

    Args:
        encoder_widths: The configured U-TAE encoder widths, e.g. ``[64, 64, 64, 128]``.
        num_stages: Number of feature stages of the mono-temporal encoder (4 for Swin).

    Returns:
        The widths, e.g. ``[64, 64, 128, 128]`` for the defaults and 4 stages.
    """
    lo, hi = min(encoder_widths) - 1, max(encoder_widths) + 1
    spread = np.linspace(lo, hi, num_stages).astype(int)  # truncation, as in the reference
    return [2 ** round(math.log2(int(v))) for v in spread]


def fused_out_conv(out_conv: Sequence[int], num_classes: int) -> list[int]:
    """``out_conv`` widths FLAIR-HUB uses: the summed class count is appended when it differs.

    Args:
        out_conv: Configured widths of the output convolutions, e.g. ``[32, 19]``.
        num_classes: Classes summed over all tasks of the model (COSIA 19, LPIS 23).

    Returns:
        ``out_conv`` unchanged when its last width is ``num_classes``, else with it appended
        (``[32, 19, 23]`` for LPIS).
    """
    widths = list(out_conv)
    return widths if widths[-1] == num_classes else [*widths, num_classes]


# --------------------------------------------------------------------------------------------
# Convolutional building blocks
# --------------------------------------------------------------------------------------------


def _norm_2d(kind: NormKind, channels: int) -> nn.Module:
    """The 2-D normalisation layer named by ``kind`` (GroupNorm uses 4 groups)."""
    if kind == "group":
        return nn.GroupNorm(CONV_GROUPS, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # no affine parameters, as in the reference
    raise ValueError(f"unknown norm {kind!r}; expected 'group', 'batch' or 'instance'")


class ConvNormReLU(nn.Sequential):
    """Conv2d, normalisation, ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: NormKind = "batch",
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        padding_mode: PaddingMode = "reflect",
    ) -> None:
        """Build the three layers.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            norm: Normalisation after the convolution.
            kernel_size: Convolution kernel size.
            stride: Convolution stride.
            padding: Convolution padding.
            padding_mode: Spatial padding of the convolution (``nn.Conv2d``'s argument).
        """
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, padding_mode=padding_mode
        )
        super().__init__(OrderedDict(conv=conv, norm=_norm_2d(norm, out_channels), relu=nn.ReLU()))


def conv_stack(
    widths: Sequence[int], norm: NormKind = "batch", padding_mode: PaddingMode = "reflect"
) -> nn.Sequential:
    """3x3 ConvNormReLU layers going through ``widths`` (the last one keeps its ReLU too).

    Args:
        widths: Channels, input first: ``[C_in, C_1, ..., C_n]`` gives n layers.
        norm: Normalisation after each convolution.
        padding_mode: Spatial padding of the convolutions.

    Returns:
        The layers, named ``0`` to ``n - 1``.
    """
    return nn.Sequential(
        *(
            ConvNormReLU(c_in, c_out, norm, padding_mode=padding_mode)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
    )


class DownBlock(nn.Module):
    """Strided ConvNormReLU, then ConvNormReLU followed by a residual ConvNormReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        norm: NormKind,
        padding_mode: PaddingMode,
    ) -> None:
        """Build the block.

        Args:
            in_channels: Input channels (kept by the strided convolution).
            out_channels: Output channels.
            kernel_size: Kernel size of the strided convolution.
            stride: Stride of the strided convolution (1 in FLAIR-HUB: no down-sampling).
            padding: Padding of the strided convolution.
            norm: Normalisation of the three convolutions.
            padding_mode: Spatial padding of the convolutions.
        """
        super().__init__()
        self.down = ConvNormReLU(
            in_channels, in_channels, norm, kernel_size, stride, padding, padding_mode
        )
        self.conv1 = ConvNormReLU(in_channels, out_channels, norm, padding_mode=padding_mode)
        self.conv2 = ConvNormReLU(out_channels, out_channels, norm, padding_mode=padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        x = self.conv1(self.down(x))
        return x + self.conv2(x)


class UpBlock(nn.Module):
    """Transposed conv up-sampling, concatenation with the 1x1-projected skip, two convolutions.

    All normalisations here are BatchNorm, whatever the encoder uses (as in the reference).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        skip_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        padding_mode: PaddingMode,
    ) -> None:
        """Build the block.

        Args:
            in_channels: Channels of the coarser decoder map.
            out_channels: Output channels.
            skip_channels: Channels of the temporally aggregated encoder map.
            kernel_size: Kernel size of the transposed convolution.
            stride: Stride of the transposed convolution.
            padding: Padding of the transposed convolution (always zero-padding).
            padding_mode: Spatial padding of the two 3x3 convolutions.
        """
        super().__init__()
        self.skip_conv = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(skip_channels, skip_channels, 1),
                norm=nn.BatchNorm2d(skip_channels),
                relu=nn.ReLU(),
            )
        )
        self.up = nn.Sequential(
            OrderedDict(
                conv=nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding),
                norm=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(),
            )
        )
        self.conv1 = ConvNormReLU(
            out_channels + skip_channels, out_channels, "batch", padding_mode=padding_mode
        )
        self.conv2 = ConvNormReLU(out_channels, out_channels, "batch", padding_mode=padding_mode)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """(B, C_in, h, w) and skip (B, C_skip, H, W) -> (B, C_out, H, W)."""
        out = torch.cat([self.up(x), self.skip_conv(skip)], dim=1)  # (B, C_out + C_skip, H, W)
        out = self.conv1(out)
        return out + self.conv2(out)


def apply_to_real_dates(
    block: Callable[[Tensor], Tensor], x: Tensor, pad_mask: Tensor, pad_value: float
) -> Tensor:
    """Apply a per-image block to every real date of a sequence; padded dates get ``pad_value``.

    Padded images never enter the block, so they cannot change BatchNorm statistics, and their
    content (NaN included) never reaches a result.

    Args:
        block: Maps (N, C, H, W) to (N, C', H', W').
        x: Image sequences (B, T, C, H, W).
        pad_mask: (B, T), True where the date is padding.
        pad_value: Value of the outputs at padded dates.

    Returns:
        (B, T, C', H', W').
    """
    b, t = x.shape[:2]
    flat = x.flatten(0, 1)  # (B*T, C, H, W)
    real = ~pad_mask.flatten()  # (B*T,)
    if bool(real.all()):
        out = block(flat)
    else:
        out_real = block(flat[real])  # (N_real, C', H', W')
        out = out_real.new_full((b * t, *out_real.shape[1:]), pad_value)
        out[real] = out_real
    return out.unflatten(0, (b, t))  # (B, T, C', H', W')


# --------------------------------------------------------------------------------------------
# L-TAE
# --------------------------------------------------------------------------------------------


class SinusoidalDateEncoding(nn.Module):
    """Transformer sinusoidal encoding of day offsets, one copy per attention head."""

    def __init__(self, dim: int, period: float = 1000.0, repeat: int = 1) -> None:
        """Build the frequency table.

        Args:
            dim: Dimension of one copy (channels of one head).
            period: T of the encoding: frequencies are ``period ** (-2 * (i // 2) / dim)``.
            repeat: Number of copies concatenated along channels.
        """
        super().__init__()
        self.repeat = repeat
        pair = torch.div(torch.arange(dim), 2, rounding_mode="floor").float()
        denom = torch.pow(torch.tensor(float(period)), 2 * pair / dim)  # (dim,)
        self.register_buffer("denom", denom, persistent=False)

    def forward(self, days: Tensor) -> Tensor:
        """(..., T) day offsets -> (..., T, dim * repeat): sin on even, cos on odd channels."""
        denom = cast(Tensor, self.denom)  # a buffer (nn.Module's __getattr__ is untyped)
        angles = days[..., None].float() / denom  # (..., T, dim)
        enc = torch.where(
            torch.arange(angles.shape[-1], device=angles.device) % 2 == 0,
            torch.sin(angles),
            torch.cos(angles),
        )
        return enc.tile((self.repeat,))  # copies concatenated: every head sees the same code


class MaskedGroupNorm(nn.Module):
    """GroupNorm over (channels of a group, time) that ignores padded dates.

    With no padded date it equals ``nn.GroupNorm(num_groups, num_channels)`` applied to
    (N, C, T), the reference's L-TAE input norm, whose statistics would otherwise include padding.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        """Build the affine parameters.

        Args:
            num_groups: Channel groups (the number of attention heads).
            num_channels: Channels.
            eps: Added to the variance.
        """
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels do not split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """Normalise (N, C, T), with statistics over the dates where ``pad_mask`` (N, T) is False."""
        if pad_mask is None:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        n, c, t = x.shape
        xg = x.reshape(n, self.num_groups, c // self.num_groups, t)  # (N, G, C/G, T)
        real = (~pad_mask)[:, None, None, :]  # (N, 1, 1, T)
        count = (real.sum(-1, keepdim=True) * xg.shape[2]).clamp(min=1)  # (N, 1, 1, 1)
        xg_real = torch.where(real, xg, 0.0)
        mean = xg_real.sum((2, 3), keepdim=True) / count  # (N, G, 1, 1)
        centred = torch.where(real, xg - mean, 0.0)
        var = centred.square().sum((2, 3), keepdim=True) / count  # biased, as GroupNorm
        out = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(n, c, t)
        return out * self.weight[:, None] + self.bias[:, None]


class LTAE(nn.Module):
    """Lightweight temporal attention encoder, applied to every pixel of a map sequence.

    Each of ``n_head`` heads has one learnt master query; keys are projected from the input, and
    each head averages its own group of ``d_model / n_head`` channels over time with its
    attention weights. The concatenated heads go through an MLP.
    """

    def __init__(
        self,
        in_channels: int = 128,
        n_head: int = 16,
        d_k: int = 4,
        d_model: int = 256,
        out_channels: int | None = None,
        dropout: float = 0.2,
        attn_dropout: float = 0.1,
        period: float = 1000.0,
    ) -> None:
        """Build the layers.

        Args:
            in_channels: Channels of the input maps.
            n_head: Attention heads (also the groups of both GroupNorms).
            d_k: Dimension of the keys and master queries.
            d_model: Width of the projected input; each head reads ``d_model / n_head`` of it.
            out_channels: Width of the output; ``in_channels`` when None.
            dropout: Dropout after the MLP.
            attn_dropout: Dropout on the attention weights (the returned weights included, as
                in the reference).
            period: Period of the sinusoidal date encoding.
        """
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not a multiple of n_head {n_head}")
        out_channels = in_channels if out_channels is None else out_channels
        self.n_head, self.d_k = n_head, d_k
        self.in_norm = MaskedGroupNorm(n_head, in_channels)
        self.in_proj = nn.Conv1d(in_channels, d_model, 1)  # Conv1d: the reference's layout
        self.date_encoding = SinusoidalDateEncoding(d_model // n_head, period, repeat=n_head)
        self.query = nn.Parameter(torch.empty(n_head, d_k))
        self.key_proj = nn.Linear(d_model, n_head * d_k)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU()
        )
        self.dropout = nn.Dropout(dropout)
        self.out_norm = nn.GroupNorm(n_head, out_channels)
        # Initialisation of the paper's code: N(0, sqrt(2 / d_k)) for the queries and key weights.
        nn.init.normal_(self.query, std=math.sqrt(2.0 / d_k))
        nn.init.normal_(self.key_proj.weight, std=math.sqrt(2.0 / d_k))

    def forward(self, x: Tensor, dates: Tensor, pad_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a sequence of maps into one map.

        Args:
            x: Feature maps (B, T, C, H, W).
            dates: Day offsets (B, T).
            pad_mask: (B, T), True where the date is padding; those dates get zero weight.

        Returns:
            The encoded maps (B, C_out, H, W) and the attention weights (B, n_head, T, H, W).
        """
        b, t, c, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, c, t)  # (N, C, T), N = B*H*W pixels
        pixel_mask = pad_mask[:, None, None, :].expand(b, h, w, t).reshape(b * h * w, t)
        pixel_dates = dates[:, None, None, :].expand(b, h, w, t).reshape(b * h * w, t)

        seq = self.in_proj(self.in_norm(seq, pixel_mask)).transpose(1, 2)  # (N, T, D)
        seq = seq + self.date_encoding(pixel_dates).to(seq.dtype)

        keys = self.key_proj(seq).unflatten(-1, (self.n_head, self.d_k))  # (N, T, G, d_k)
        scores = torch.einsum("ntgk,gk->ngt", keys, self.query.to(keys.dtype))  # (N, G, T)
        scores = scores / math.sqrt(self.d_k)
        # A finite fill: a sample with no real date gets uniform weights instead of NaN.
        scores = scores.masked_fill(pixel_mask[:, None, :], torch.finfo(scores.dtype).min)
        attn = self.attn_dropout(scores.softmax(dim=-1))  # (N, G, T)

        values = seq.unflatten(-1, (self.n_head, -1))  # (N, T, G, D/G)
        out = torch.einsum("ngt,ntgc->ngc", attn, values).flatten(1)  # (N, D), heads concatenated
        out = self.out_norm(self.dropout(self.mlp(out)))  # (N, C_out)

        out = out.unflatten(0, (b, h, w)).permute(0, 3, 1, 2)  # (B, C_out, H, W)
        attn = attn.unflatten(0, (b, h, w)).permute(0, 3, 4, 1, 2)  # (B, G, T, H, W)
        return out, attn


def aggregate_dates(
    x: Tensor, attn: Tensor, pad_mask: Tensor, mode: AggMode = "att_group"
) -> Tensor:
    """Collapse the time axis of a skip connection.

    Args:
        x: Encoder maps (B, T, C, H, W); C must split into the heads for ``att_group``.
        attn: L-TAE attention weights (B, G, T, h, w), resampled to (H, W) here: bilinear
            (align_corners False) when finer, average pooling when coarser.
        pad_mask: (B, T), True where the date is padding.
        mode: ``att_group``: channel group g is averaged with the weights of head g;
            ``att_mean``: all channels with the head-averaged weights; ``mean``: plain mean over
            the real dates.

    Returns:
        (B, C, H, W).

    Raises:
        ValueError: For an unknown mode.
    """
    b, t, c, h, w = x.shape
    real = (~pad_mask).to(x.dtype)[:, :, None, None, None]  # (B, T, 1, 1, 1)
    if mode == "mean":
        return (x * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    if mode == "att_group":
        weights = _resample_attention(attn, (h, w))  # (B, G, T, H, W)
    elif mode == "att_mean":
        weights = attn.mean(dim=1, keepdim=True)  # (B, 1, T, h, w)
        weights = F.interpolate(weights.flatten(1, 2), size=(h, w), mode="bilinear")
        weights = weights.unflatten(1, (1, t))  # (B, 1, T, H, W)
    else:
        raise ValueError(f"unknown agg_mode {mode!r}; expected 'att_group', 'att_mean' or 'mean'")
    weights = weights * real.transpose(1, 2).to(weights.dtype)  # padded dates weigh 0
    groups = x.unflatten(2, (weights.shape[1], -1))  # (B, T, G, C/G, H, W)
    out = (weights.transpose(1, 2)[:, :, :, None] * groups).sum(dim=1)  # (B, G, C/G, H, W)
    return out.flatten(1, 2)  # (B, C, H, W)


def _resample_attention(attn: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, G, T, h, w) -> (B, G, T, H, W) the way the reference resamples attention masks."""
    b, g, t, h, w = attn.shape
    flat = attn.flatten(1, 2)  # (B, G*T, h, w)
    if size[0] > h:
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    elif size[0] < h:
        flat = F.avg_pool2d(flat, kernel_size=h // size[0])
    return flat.unflatten(1, (g, t))


# --------------------------------------------------------------------------------------------
# U-TAE
# --------------------------------------------------------------------------------------------


class UTAE(nn.Module):
    """U-TAE for image time series: (B, T, C, H, W) and day offsets -> (B, K, H, W) scores.

    Defaults are the FLAIR-HUB configuration (no spatial down-sampling at 10 x 10 pixels).
    """

    def __init__(
        self,
        input_dim: int,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] | None = (32, 32, 64, 128),
        out_conv: Sequence[int] = (32, 19),
        str_conv_k: int = 3,
        str_conv_s: int = 1,
        str_conv_p: int = 1,
        agg_mode: AggMode = "att_group",
        encoder_norm: NormKind = "group",
        n_head: int = 16,
        d_model: int = 256,
        d_k: int = 4,
        pad_value: float = 0.0,
        padding_mode: PaddingMode = "reflect",
        dropout: float = 0.2,
    ) -> None:
        """Build the network.

        Args:
            input_dim: Channels of the input images.
            encoder_widths: Channels of the encoder stages, finest first; their number sets the
                number of stages.
            decoder_widths: Channels of the decoder stages, finest first; the encoder's when
                None. The last one must equal the last encoder width.
            out_conv: Channels of the output 3x3 convolutions; the last is the class count K.
            str_conv_k: Kernel size of the strided (transposed) convolutions.
            str_conv_s: Their stride (1: no down-sampling).
            str_conv_p: Their padding.
            agg_mode: Temporal aggregation of the skip connections (see :func:`aggregate_dates`).
            encoder_norm: Normalisation of the encoder convolutions.
            n_head: L-TAE heads.
            d_model: L-TAE model width.
            d_k: L-TAE key width.
            pad_value: Value that marks a padded date when no mask is given, and value of the
                encoder maps at padded dates.
            padding_mode: Spatial padding of the 3x3 convolutions.
            dropout: Dropout after the L-TAE MLP.

        Raises:
            ValueError: If the widths are inconsistent.
        """
        super().__init__()
        enc = list(encoder_widths)
        dec = enc if decoder_widths is None else list(decoder_widths)
        if len(dec) != len(enc) or dec[-1] != enc[-1]:
            raise ValueError(
                f"decoder_widths {dec} must have as many stages as encoder_widths {enc} "
                "and end with the same width"
            )
        if agg_mode == "att_group" and any(c % n_head for c in enc[:-1]):
            raise ValueError(f"att_group needs encoder widths {enc[:-1]} divisible by {n_head}")
        self.encoder_widths, self.decoder_widths = enc, dec
        self.agg_mode: AggMode = agg_mode
        self.pad_value = pad_value
        strided = dict(kernel_size=str_conv_k, stride=str_conv_s, padding=str_conv_p)

        self.in_conv = conv_stack([input_dim, enc[0], enc[0]], encoder_norm, padding_mode)
        self.down_blocks = nn.ModuleList(
            DownBlock(c_in, c_out, **strided, norm=encoder_norm, padding_mode=padding_mode)
            for c_in, c_out in zip(enc[:-1], enc[1:], strict=True)
        )
        self.temporal_encoder = LTAE(
            in_channels=enc[-1], n_head=n_head, d_k=d_k, d_model=d_model, dropout=dropout
        )
        # Coarsest first, the order in which they run.
        self.up_blocks = nn.ModuleList(
            UpBlock(dec[i], dec[i - 1], enc[i - 1], **strided, padding_mode=padding_mode)
            for i in range(len(enc) - 1, 0, -1)
        )
        self.out_conv = conv_stack([dec[0], *out_conv], "batch", padding_mode)

    @property
    def out_channels(self) -> list[int]:
        """Channels of the returned decoder maps, coarse to fine."""
        return self.decoder_widths[::-1]

    def infer_pad_mask(self, x: Tensor) -> Tensor:
        """(B, T, C, H, W) -> (B, T) bool: a date whose values all equal ``pad_value`` is padding."""
        return (x == self.pad_value).flatten(2).all(dim=-1)

    def forward(
        self, x: Tensor, dates: Tensor, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """Class scores and decoder maps of a batch of image time series.

        Args:
            x: Images (B, T, C, H, W).
            dates: Day offsets from the reference date (B, T), float.
            pad_mask: (B, T) bool, True where the date is padding; inferred with
                :meth:`infer_pad_mask` when None. Padded dates do not change any output.

        Returns:
            The scores (B, K, H', W') (post BatchNorm and ReLU, as in the reference; H' = H
            with the default stride 1) and the decoder maps, coarse to fine: the L-TAE output,
            then the output of each up block; channels :attr:`out_channels`.
        """
        if pad_mask is None:
            pad_mask = self.infer_pad_mask(x)  # (B, T)
        pad_mask = pad_mask.to(device=x.device, dtype=torch.bool)
        dates = dates.to(x.device).masked_fill(pad_mask, 0.0)  # padded dates may hold anything

        feats = [apply_to_real_dates(self.in_conv, x, pad_mask, self.pad_value)]
        for block in self.down_blocks:  # each (B, T, C_i, H_i, W_i)
            feats.append(apply_to_real_dates(block, feats[-1], pad_mask, self.pad_value))

        # (B, C, h, w) and attention weights (B, G, T, h, w)
        out, attn = self.temporal_encoder(feats[-1], dates, pad_mask)
        maps = [out]
        for block, skip in zip(self.up_blocks, reversed(feats[:-1]), strict=True):
            out = block(out, aggregate_dates(skip, attn, pad_mask, self.agg_mode))
            maps.append(out)
        return self.out_conv(out), maps  # (B, K, H, W)


# --------------------------------------------------------------------------------------------
# Official parameter names
# --------------------------------------------------------------------------------------------

#: (pattern on a reference key relative to the U-TAE, replacement). ``ConvLayer`` stacks
#: (conv, norm, relu) triples in one Sequential, so its index 3i is our layer i's ``conv`` and
#: 3i + 1 its ``norm``.
_OFFICIAL_KEY_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(r"(in_conv|out_conv)\.conv\.conv\.(\d+)\.(.+)"),
        lambda m: f"{m[1]}.{int(m[2]) // 3}.{('conv', 'norm')[int(m[2]) % 3]}.{m[3]}",
    ),
    (
        re.compile(
            r"(down_blocks\.\d+\.(?:down|conv1|conv2)|up_blocks\.\d+\.conv[12])\.conv\.([01])\.(.+)"
        ),
        lambda m: f"{m[1]}.{('conv', 'norm')[int(m[2])]}.{m[3]}",
    ),
    (
        re.compile(r"(up_blocks\.\d+\.(?:skip_conv|up))\.([01])\.(.+)"),
        lambda m: f"{m[1]}.{('conv', 'norm')[int(m[2])]}.{m[3]}",
    ),
    (re.compile(r"temporal_encoder\.inconv\.(.+)"), lambda m: f"temporal_encoder.in_proj.{m[1]}"),
    (re.compile(r"temporal_encoder\.attention_heads\.Q"), lambda m: "temporal_encoder.query"),
    (
        re.compile(r"temporal_encoder\.attention_heads\.fc1_k\.(.+)"),
        lambda m: f"temporal_encoder.key_proj.{m[1]}",
    ),
    (
        re.compile(r"temporal_encoder\.((?:in_norm|out_norm|mlp\.[01])\..+)"),
        lambda m: f"temporal_encoder.{m[1]}",
    ),
)


def official_utae_key(key: str) -> str:
    """Our state-dict key for a key of the reference U-TAE.

    Args:
        key: A reference key relative to the U-TAE, e.g. ``in_conv.conv.conv.3.weight`` (the part
            after ``encoders.SENTINEL2_TS.`` in a FLAIR-HUB state dict).

    Returns:
        The key of the same tensor in :class:`UTAE`'s state dict (same shape), e.g.
        ``in_conv.1.conv.weight``.

    Raises:
        KeyError: If the key is not a U-TAE key.
    """
    for pattern, rewrite in _OFFICIAL_KEY_RULES:
        if m := pattern.fullmatch(key):
            return rewrite(m)
    raise KeyError(f"not a U-TAE key of the reference: {key!r}")


def load_official_utae_state_dict(
    model: UTAE, official: dict[str, Tensor], strict: bool = True
) -> None:
    """Load reference U-TAE weights (keys relative to the U-TAE) into ``model``.

    Args:
        model: The U-TAE, built with the reference's configuration.
        official: Reference tensors by key, e.g. ``encoders.SENTINEL2_TS.*`` with that prefix
            removed.
        strict: Passed to ``load_state_dict``: every key of ``model`` must be given.
    """
    model.load_state_dict({official_utae_key(k): v for k, v in official.items()}, strict=strict)
