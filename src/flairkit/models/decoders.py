"""Segmentation decoders (decoder + classifier head) on an encoder's feature list.

Both compute, in eval mode, the same function as segmentation-models-pytorch 0.4.0's decoder and
``SegmentationHead`` for a timm ("tu-") encoder, which is what the FLAIR-HUB reference uses
(``main_decoders.<TASK>.seg_model`` = ``decoder`` + ``segmentation_head``):

- ``UPerNetDecoder``: smp ``UPerNetDecoder`` + a 1x1 conv head upsampled x4.
- ``UNetDecoder``: smp ``UnetDecoder`` (decoder channels 256, 128, 64, 32, 16) + a 3x3 conv head.

Input: the encoder's maps, fine to coarse: 4 maps at strides 4..32 (Swin, ConvNeXt) or 5 maps at
strides 2..32 (ResNet). smp's timm encoder also yields the input image first and, for 4-stage
models, a zero-channel placeholder at stride 2; the decoders here reproduce what those do
(see ``UPerNetDecoder``), so they need neither.

Training with a batch of one works: the pooled 1x1 branch of the pyramid pooling module gives
BatchNorm one value per channel, which makes the smp decoder raise in training mode. Here every
decoder BatchNorm is a ``SingleValueBatchNorm2d`` (identical otherwise).

Official keys (after ``main_decoders.<TASK>.seg_model.`` or ``aux_decoders.<MOD>__<TASK>.seg_model.``)
map to ours with ``decoder_key_from_official``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Size = tuple[int, int]


class SingleValueBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that also trains when it sees a single value per channel.

    With ``B * H * W == 1`` (batch of one through a 1x1 pooled map) batch statistics do not
    exist and ``nn.BatchNorm2d`` raises in training mode. This layer then normalises with its
    running statistics, leaves them unchanged, and still passes gradients to its affine
    parameters and to the layers before it. In every other case it is ``nn.BatchNorm2d``
    (same keys, same eval-mode function).
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                training=False,
                momentum=0.0,
                eps=self.eps,
            )
        return super().forward(x)


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU; keys ``0.weight``, ``1.*`` as smp's ``Conv2dReLU``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            SingleValueBatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _to_out_size(logits: Tensor, out_size: Size | None) -> Tensor:
    # The reference resizes every task's logits to the label size (bilinear, align_corners=False).
    if out_size is None or tuple(logits.shape[-2:]) == tuple(out_size):
        return logits
    return _resize(logits, out_size)


def _check_levels(encoder_channels: Sequence[int]) -> None:
    if len(encoder_channels) not in (4, 5):
        raise ValueError(
            f"expected 4 maps (strides 4..32) or 5 maps (strides 2..32), got {len(encoder_channels)}"
        )


class PyramidPooling(nn.Module):
    """PSP module: average-pool to each bin size, 1x1 conv, upsample, concatenate, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(bins)
        branch_channels = in_channels // len(self.bins)
        self.branches = nn.ModuleList(
            ConvBNReLU(in_channels, branch_channels, 1) for _ in self.bins
        )
        self.out_conv = ConvBNReLU(in_channels + branch_channels * len(self.bins), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        size = x.shape[-2:]
        pooled = [
            _resize(branch(F.adaptive_avg_pool2d(x, b)), size)
            for b, branch in zip(self.bins, self.branches, strict=True)
        ]
        return self.out_conv(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """UPerNet (PSP + FPN) with its classifier; smp 0.4.0's function in eval mode.

    Top-down: the PSP output on the coarsest map is upsampled (bilinear) onto each finer level
    and a 1x1-conv projection of that level's map is added. smp's level list always reaches
    stride 2; for a 4-map (Swin/ConvNeXt) encoder that level is smp's zero-channel placeholder, so
    the stride-4 result is upsampled to stride 2 with nothing added and, like every level, then
    resized back to stride 4 (a blur that smp's function includes, hence reproduced). The 5
    levels are concatenated at stride 4, fused by a 3x3 conv to 64 channels, classified by a 1x1
    conv and upsampled x4 with ``align_corners=True`` (smp's ``UpsamplingBilinear2d``).

    smp also builds a projection for the input image as a sixth level that its forward never
    uses; it is in the reference's weights (``fpn_stages.4``, 1 input channel as the reference
    builds its decoders) and in its parameter count, so it is kept as ``unused_image_skip``
    (``image_skip_channels=None`` drops it).

    Args:
        encoder_channels: channels of the encoder maps, fine to coarse (4 or 5 maps).
        num_classes: output classes K.
        pyramid_channels: FPN width.
        segmentation_channels: width after the fusion conv.
        image_skip_channels: input channels of the unused projection (None: not built).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        pyramid_channels: int = 256,
        segmentation_channels: int = 64,
        image_skip_channels: int | None = 1,
    ) -> None:
        super().__init__()
        _check_levels(encoder_channels)
        self.encoder_channels = tuple(encoder_channels)
        self.num_classes = num_classes
        # smp's levels below the coarsest, coarse to fine, down to stride 2 (0: placeholder).
        skip_channels = list(encoder_channels[-2::-1])
        if len(encoder_channels) == 4:
            skip_channels.append(0)
        self.psp = PyramidPooling(encoder_channels[-1], pyramid_channels)
        self.fpn_skips = nn.ModuleList(
            ConvBNReLU(c, pyramid_channels, 1) if c else nn.Identity() for c in skip_channels
        )
        self.unused_image_skip = (
            ConvBNReLU(image_skip_channels, pyramid_channels, 1) if image_skip_channels else None
        )
        self.fpn_bottleneck = ConvBNReLU(
            (len(skip_channels) + 1) * pyramid_channels, segmentation_channels, 3
        )
        self.head = nn.Conv2d(segmentation_channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor], out_size: Size | None = None) -> Tensor:
        """Logits from the encoder maps.

        Args:
            features: the encoder's maps, fine to coarse, ``(B, C_i, H_i, W_i)``.
            out_size: resize the logits to this ``(H, W)`` (bilinear, align_corners=False);
                None keeps 4x the stride-4 map's size.

        Returns:
            ``(B, K, H, W)`` logits.
        """
        if len(features) != len(self.encoder_channels):
            raise ValueError(f"expected {len(self.encoder_channels)} maps, got {len(features)}")
        stride4 = features[-4].shape[-2:]  # smp: input size // 4 (equal for sides % 4 == 0)
        skips: list[Tensor | None] = list(features[-2::-1])
        if len(features) == 4:
            skips.append(None)  # smp's stride-2 placeholder: input size // 2
        x = self.psp(features[-1])
        levels = [x]
        for skip, project in zip(skips, self.fpn_skips, strict=True):
            size = skip.shape[-2:] if skip is not None else (2 * stride4[0], 2 * stride4[1])
            x = _resize(x, size)
            if skip is not None:
                x = x + project(skip)
            levels.append(x)
        x = self.fpn_bottleneck(torch.cat([_resize(lv, stride4) for lv in levels], dim=1))
        logits = F.interpolate(self.head(x), scale_factor=4, mode="bilinear", align_corners=True)
        return _to_out_size(logits, out_size)


#: ``_UPSAMPLE_TAPS @ k`` turns the 3 taps ``k`` of a 3x3 kernel (along one axis) into the 4 taps
#: of a stride-2 transposed convolution that applies ``k`` to the x2 nearest-upsampled input. Rows
#: 1 and 3 make even outputs (coarse rows i and i - 1), rows 0 and 2 odd ones (i + 1 and i).
_UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def fold_upsample_kernel(weight: Tensor) -> Tensor:
    """The ``(C, O, 4, 4)`` transposed-convolution kernel of ``upsample2x_conv3x3``.

    Args:
        weight: ``(O, C, 3, 3)``, the part of the 3x3 kernel that acts on the upsampled map.
    """
    taps = weight.new_tensor(_UPSAMPLE_TAPS)
    return torch.einsum("iy,jx,ocyx->coij", taps, taps, weight)


def upsample2x_conv3x3(
    x: Tensor,
    weight: Tensor,
    skip: Tensor | None = None,
    bias: Tensor | None = None,
    folded: Tensor | None = None,
) -> Tensor:
    """``conv2d(cat([nearest_upsample_x2(x), skip]), weight, bias, padding=1)``, not upsampling.

    A 3x3 convolution of a nearest-upsampled map sees, at each output pixel, only a 2x2
    neighbourhood of the coarse map, with summed kernel taps that depend on the pixel's row and
    column parity: that is a stride-2 transposed convolution of the coarse map with a 4x4 kernel
    folded from the 3x3 one. It does 4/9 of the multiply-adds of the upsampled part, and neither
    the upsampled map nor the concatenation is built or stored for backward. Exact up to float
    summation order (zero padding of the upsampled map is zero padding of the coarse one);
    gradients reach ``weight`` through the folding.

    Args:
        x: ``(B, C, h, w)`` coarse map.
        weight: ``(O, C + S, 3, 3)``; the first ``C`` input channels act on the upsampled ``x``.
        skip: ``(B, S, 2h, 2w)`` map concatenated after the upsampled ``x``, or None (``S = 0``).
        bias: ``(O,)`` or None (a convolution with BatchNorm folded in has one).
        folded: ``fold_upsample_kernel(weight[:, :C])`` when already computed.

    Returns:
        ``(B, O, 2h, 2w)``.
    """
    c = x.shape[1]
    if folded is None:
        folded = fold_upsample_kernel(weight[:, :c])
    out = F.conv_transpose2d(x, folded, bias, stride=2, padding=1)
    if skip is not None:
        # in place: conv_transpose2d's backward needs its inputs, not its output
        out = out.add_(F.conv2d(skip, weight[:, c:], padding=1))
    return out


class UNetBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip map if any, two 3x3 ConvBNReLU.

    The first convolution runs on the coarse map (``upsample2x_conv3x3``): same function,
    fewer operations (ResNet18 U-Net decoder blocks on a 2-core CPU, forward + backward:
    1.84 -> 1.19 s at batch 2, 512 px).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = ConvBNReLU(in_channels + skip_channels, out_channels, 3)
        self.conv2 = ConvBNReLU(out_channels, out_channels, 3)
        self._folded: tuple[tuple, Tensor] | None = None

    def _folded_kernel(self, weight: Tensor, like: Tensor) -> Tensor | None:
        """Without autograd, the folded kernel is kept (in ``like``'s memory format) until the
        weight changes: folding and reformatting it cost ~4 % of a CPU inference."""
        if torch.is_grad_enabled() or weight.is_inference():
            # with autograd: folded in the graph so that gradients reach the weight; an
            # inference-mode weight has no version counter to tell when it changes
            return None
        channels_last = like.is_contiguous(memory_format=torch.channels_last)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, channels_last)
        if self._folded is None or self._folded[0] != key:
            folded = fold_upsample_kernel(weight[:, : self.in_channels])
            if channels_last:
                folded = folded.contiguous(memory_format=torch.channels_last)
            self._folded = (key, folded)
        return self._folded[1]

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:  # noqa: D102
        conv, bn, relu = self.conv1
        weight, bias = cast(nn.Conv2d, conv).weight, cast(nn.Conv2d, conv).bias
        folded = self._folded_kernel(weight, x)
        y = relu(bn(upsample2x_conv3x3(x, weight, skip, bias, folded)))
        return self.conv2(y)


class UNetDecoder(nn.Module):
    """U-Net decoder with its 3x3 classifier; smp 0.4.0 ``Unet``'s function in eval mode.

    Five blocks from the coarsest map up to stride 1, each taking the next finer encoder map as
    skip; a 4-map encoder has no stride-2 map (smp concatenates its zero-channel placeholder,
    which adds nothing), and the last block has no skip.

    Args:
        encoder_channels: channels of the encoder maps, fine to coarse (4 or 5 maps).
        num_classes: output classes K.
        decoder_channels: output channels of the five blocks.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        _check_levels(encoder_channels)
        self.encoder_channels = tuple(encoder_channels)
        self.num_classes = num_classes
        skip_channels = list(encoder_channels[-2::-1])  # coarse to fine
        skip_channels += [0] * (len(decoder_channels) - len(skip_channels))
        in_channels = [encoder_channels[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            UNetBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(
                in_channels, skip_channels, decoder_channels, strict=True
            )
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)

    def forward(self, features: Sequence[Tensor], out_size: Size | None = None) -> Tensor:
        """Logits from the encoder maps.

        Args:
            features: the encoder's maps, fine to coarse, ``(B, C_i, H_i, W_i)``.
            out_size: resize the logits to this ``(H, W)`` (bilinear, align_corners=False);
                None keeps stride 1 (32x the coarsest map).

        Returns:
            ``(B, K, H, W)`` logits.
        """
        if len(features) != len(self.encoder_channels):
            raise ValueError(f"expected {len(self.encoder_channels)} maps, got {len(features)}")
        skips = list(features[-2::-1])
        x = features[-1]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return _to_out_size(self.head(x), out_size)


#: name -> builder(encoder_channels, num_classes). Names as in the reference's arch string.
DECODERS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "upernet": UPerNetDecoder,
    "unet": UNetDecoder,
}


def build_decoder(name: str, encoder_channels: Sequence[int], num_classes: int) -> nn.Module:
    """Build a registered decoder (decoder + classifier head).

    Args:
        name: a key of ``DECODERS``.
        encoder_channels: the encoder's ``out_channels`` (4 or 5 maps, fine to coarse).
        num_classes: output classes.

    Returns:
        A module called as ``decoder(features, out_size=None) -> (B, K, H, W)`` logits.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
    """
    if name not in DECODERS:
        raise KeyError(f"unknown decoder {name!r}; valid: {sorted(DECODERS)}")
    decoder = DECODERS[name](encoder_channels, num_classes)
    init_like_reference(decoder)
    return decoder


def init_like_reference(decoder: nn.Module) -> None:
    """Initialise a decoder as the reference's segmentation-models-pytorch does.

    Convolutions: Kaiming-uniform over the fan-in for ReLU, zero biases; BatchNorm: weight 1,
    bias 0; the classifier (``decoder.head``): Xavier-uniform, zero bias. PyTorch's default
    (uniform within 1/sqrt(fan-in)) starts the convolutions ~2.4x smaller. Measured in
    ``bench/train_parity.py`` (LC-D-r18, 6 seeds): with PyTorch's default the fused model fitted
    its training patches more slowly and scored test mIoU 53.8 against the official 57.3; with
    this initialisation it scores 58.6.
    """
    head = getattr(decoder, "head", None)
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d):
            if m is head:
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --- official keys ---------------------------------------------------------------------------

#: Per decoder: (official key pattern, our key template), after ``...seg_model.``.
OFFICIAL_KEY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "upernet": (
        (r"decoder\.psp\.blocks\.(\d+)\.1\.(.+)", r"psp.branches.\1.\2"),
        (r"decoder\.psp\.out_conv\.(.+)", r"psp.out_conv.\1"),
        (r"decoder\.fpn_stages\.4\.skip_conv\.(.+)", r"unused_image_skip.\1"),
        (r"decoder\.fpn_stages\.([0-3])\.skip_conv\.(.+)", r"fpn_skips.\1.\2"),
        (r"decoder\.fpn_bottleneck\.(.+)", r"fpn_bottleneck.\1"),
        (r"segmentation_head\.0\.(.+)", r"head.\1"),
    ),
    "unet": (
        (r"decoder\.blocks\.(\d+)\.(conv[12])\.(.+)", r"blocks.\1.\2.\3"),
        (r"segmentation_head\.0\.(.+)", r"head.\1"),
    ),
}


def decoder_key_from_official(name: str, key: str) -> str:
    """Our key for an official decoder key (after ``main_decoders.<TASK>.seg_model.``).

    Args:
        name: a key of ``DECODERS``.
        key: e.g. ``decoder.psp.blocks.0.1.0.weight`` or ``segmentation_head.0.weight``.

    Returns:
        The key in our decoder's ``state_dict()``.

    Raises:
        KeyError: unknown decoder name, or a key no rule maps.
    """
    for pattern, template in OFFICIAL_KEY_RULES[name]:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    raise KeyError(f"no {name} rule maps the official decoder key {key!r}")


def upernet_key_from_official(key: str) -> str:
    """``decoder_key_from_official('upernet', key)``."""
    return decoder_key_from_official("upernet", key)


def unet_key_from_official(key: str) -> str:
    """``decoder_key_from_official('unet', key)``."""
    return decoder_key_from_official("unet", key)


def decoder_state_from_official(name: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official decoder state dict (``...seg_model.`` prefix removed) in our keys."""
    return {decoder_key_from_official(name, k): v for k, v in state.items()}
