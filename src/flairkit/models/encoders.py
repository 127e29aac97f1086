"""Mono-temporal image encoders on timm, behind one feature contract.

Every encoder takes ``(B, C, H, W)`` and returns its stage feature maps, fine to coarse, in NCHW,
and exposes ``out_channels`` (one entry per map) and ``strides``:

- Swin and ConvNeXt(V2): 4 maps at strides 4, 8, 16, 32.
- ResNet: 5 maps at strides 2, 4, 8, 16, 32 (the stem activation first), as smp's timm
  "universal" encoder gives them.

The FLAIR-HUB reference builds its encoders with segmentation-models-pytorch 0.4.0
(``encoder_name='tu-<timm name>'``), which wraps ``timm.create_model(features_only=True)`` as
``.model``. This module builds the same timm feature network under the same attribute, so an
official encoder key such as ``model.layers_0.blocks.0.attn.qkv.weight`` (the part after
``encoders.<MOD>.seg_model.``) is also ours. Two smp conventions are left out of the list on
purpose: the input image smp returns as its first "feature", and the zero-channel placeholder at
stride 2 it inserts for Swin/ConvNeXt. The decoders (``decoders.py``) reproduce their effect.

Swin is built for one image size (timm requires the input to match): timm shrinks the window of
any stage whose token grid is smaller than the window (12 -> 8 at 256 px in the last stage; at
64 px the stages are 16/8/4/2 tokens wide, so the windows are 12/8/4/2), which changes the shapes
of the relative-position-bias tables. Nothing is ever downloaded: weights come only from a local
file (``pretrained_path``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from flairkit.safe_load import load_weights_only

log = logging.getLogger(__name__)

#: The reference's default mono-temporal backbone (``swin_base_patch4_window12_384-upernet``).
DEFAULT_ENCODER = "swin_base_patch4_window12_384"

#: How input channels beyond RGB are initialised from pretrained RGB kernels (see
#: ``adapt_input_kernels``). ``copy:<k>`` takes k in 0, 1, 2.
NEW_CHANNEL_MODES = ("random", "mean", "copy:<k>", "timm")


class TimmEncoder(nn.Module):
    """A timm feature network returning NCHW stage maps, fine to coarse.

    Args:
        timm_name: timm model name, e.g. ``swin_base_patch4_window12_384``.
        in_channels: input channels (any count).
        out_indices: the timm feature stages to return.
        img_size: input side in pixels, for models built for one size (Swin); None otherwise.

    Attributes:
        model: the timm ``features_only`` network (same keys as the reference's ``.model``).
        out_channels: channels of each returned map.
        strides: stride of each returned map w.r.t. the input.
    """

    def __init__(
        self,
        timm_name: str,
        in_channels: int,
        out_indices: tuple[int, ...],
        img_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.timm_name = timm_name
        self.in_channels = in_channels
        self.img_size = img_size
        self.model = timm.create_model(
            timm_name,
            **_timm_kwargs(in_channels, img_size),
            features_only=True,
            out_indices=out_indices,
        )
        info: Any = self.model.feature_info  # timm's FeatureInfo (nn.Module attributes are untyped)
        self.out_channels: tuple[int, ...] = tuple(info.channels())
        self.strides: tuple[int, ...] = tuple(info.reduction())
        fmt = getattr(self.model, "output_fmt", "NCHW")
        self._is_channels_last = getattr(fmt, "value", fmt) == "NHWC"  # Swin returns NHWC

    def forward(self, x: Tensor) -> list[Tensor]:
        """Stage maps of ``x``.

        Args:
            x: ``(B, C, H, W)`` image.

        Returns:
            ``len(out_channels)`` maps ``(B, out_channels[i], H / strides[i], W / strides[i])``.
        """
        feats = self.model(x)
        if self._is_channels_last:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)


def _timm_kwargs(in_channels: int, img_size: int | tuple[int, int] | None) -> dict:
    kwargs: dict = {"pretrained": False, "in_chans": in_channels}  # never download
    if img_size is not None:
        kwargs["img_size"] = img_size
    return kwargs


def _build(
    timm_name: str, out_indices: tuple[int, ...], sized: bool, in_channels: int, img_size: int
) -> TimmEncoder:
    return TimmEncoder(timm_name, in_channels, out_indices, img_size if sized else None)


_STAGES4 = (0, 1, 2, 3)  # strides 4..32 (smp: transformer-style, no stride-2 map)
_STAGES5 = (0, 1, 2, 3, 4)  # strides 2..32 (smp: depth 5)


def _swin(name: str) -> Callable[[int, int], TimmEncoder]:
    return partial(_build, name, _STAGES4, True)


def _convnext(name: str) -> Callable[[int, int], TimmEncoder]:
    return partial(_build, name, _STAGES4, False)  # fully convolutional: any size


def _resnet(name: str) -> Callable[[int, int], TimmEncoder]:
    return partial(_build, name, _STAGES5, False)


#: name -> builder(in_channels, img_size). Names are timm's, as in the reference's arch string.
ENCODERS: dict[str, Callable[[int, int], TimmEncoder]] = {
    "swin_tiny_patch4_window7_224": _swin("swin_tiny_patch4_window7_224"),
    "swin_small_patch4_window7_224": _swin("swin_small_patch4_window7_224"),
    "swin_base_patch4_window7_224": _swin("swin_base_patch4_window7_224"),
    "swin_base_patch4_window12_384": _swin("swin_base_patch4_window12_384"),
    "swin_large_patch4_window12_384": _swin("swin_large_patch4_window12_384"),
    "convnext_tiny": _convnext("convnext_tiny"),
    "convnext_base": _convnext("convnext_base"),
    "convnextv2_tiny": _convnext("convnextv2_tiny"),
    "convnextv2_base": _convnext("convnextv2_base"),
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
}


def build_encoder(
    name: str,
    in_channels: int,
    img_size: int,
    pretrained_path: str | Path | None = None,
    new_channels_init: str = "mean",
) -> TimmEncoder:
    """Build a registered encoder, optionally with weights from a local timm checkpoint.

    Args:
        name: a key of ``ENCODERS``.
        in_channels: input channels.
        img_size: input side in pixels (Swin is built for it; others ignore it).
        pretrained_path: local weights of the plain timm model (``.safetensors`` or a torch
            pickle); None leaves the random initialisation. Nothing is downloaded.
        new_channels_init: one of ``NEW_CHANNEL_MODES``, used only with ``pretrained_path``
            when ``in_channels`` differs from the file's.

    Returns:
        The encoder.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
        ValueError: unknown ``new_channels_init``, or weights that do not fit.
    """
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; valid: {sorted(ENCODERS)}")
    _parse_channel_mode(new_channels_init)  # fail before the (slow) build
    encoder = ENCODERS[name](in_channels, img_size)
    if pretrained_path is not None:
        load_pretrained(encoder, pretrained_path, new_channels_init)
    return encoder


# --- official keys ---------------------------------------------------------------------------


def encoder_key_from_official(key: str) -> str:
    """Our key for an official encoder key (the part after ``encoders.<MOD>.seg_model.``).

    Both wrap the same timm feature network as ``.model``, so the key is unchanged.

    Args:
        key: e.g. ``model.layers_0.blocks.0.attn.qkv.weight``.

    Returns:
        The key in ``TimmEncoder.state_dict()``.

    Raises:
        KeyError: the key is not under ``model.``.
    """
    if not key.startswith("model."):
        raise KeyError(f"not an official mono-temporal encoder key: {key!r}")
    return key


def encoder_state_from_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official encoder state dict (prefix ``encoders.<MOD>.seg_model.`` removed) in our keys."""
    return {encoder_key_from_official(k): v for k, v in state.items()}


# --- pretrained weights ----------------------------------------------------------------------


def _parse_channel_mode(mode: str) -> tuple[str, int | None]:
    if mode in ("random", "mean", "timm"):
        return mode, None
    if mode.startswith("copy:") and mode[5:] in ("0", "1", "2"):
        return "copy", int(mode[5:])
    raise ValueError(f"new_channels_init: expected one of {NEW_CHANNEL_MODES}, got {mode!r}")


def adapt_input_kernels(pretrained: Tensor, fresh: Tensor, mode: str) -> Tensor:
    """First-layer kernels for ``fresh.shape[1]`` input channels from 3-channel RGB kernels.

    Modes ``random``, ``mean`` and ``copy:<k>`` keep the pretrained kernel of each input channel
    c < 3 as is (a 1- or 2-channel input takes the first 1 or 2 RGB kernels) and set each
    channel c >= 3 to: its fresh random kernel (``random``), the mean of the three RGB kernels
    (``mean``), or RGB kernel k (``copy:<k>``). No rescaling. ``timm`` reproduces timm's own
    ``pretrained=True`` rule, i.e. what the reference trained from: a 1-channel input gets the
    sum of the RGB kernels; otherwise the RGB kernels are repeated cyclically and every channel
    is scaled by 3 / C.

    Args:
        pretrained: ``(O, 3, kh, kw)`` kernels, or already ``(O, C, kh, kw)`` (returned as is).
        fresh: the new model's ``(O, C, kh, kw)`` kernels (used by ``random``).
        mode: one of ``NEW_CHANNEL_MODES``.

    Returns:
        ``(O, C, kh, kw)`` kernels in ``fresh``'s dtype.

    Raises:
        ValueError: unknown mode, or pretrained kernels that are neither RGB nor C channels.
    """
    kind, k = _parse_channel_mode(mode)
    num_channels = fresh.shape[1]
    if pretrained.shape[1] == num_channels:
        return pretrained.to(fresh.dtype)
    if pretrained.shape[1] != 3 or pretrained.shape[0] != fresh.shape[0]:
        raise ValueError(
            f"pretrained first-layer kernels {tuple(pretrained.shape)} are neither RGB nor "
            f"{num_channels}-channel for a layer of shape {tuple(fresh.shape)}"
        )
    rgb = pretrained.float()
    if kind == "timm":
        if num_channels == 1:
            out = rgb.sum(dim=1, keepdim=True)
        else:
            idx = torch.arange(num_channels) % 3
            out = rgb[:, idx] * (3.0 / num_channels)
        return out.to(fresh.dtype)
    out = fresh.detach().clone().float()
    n_rgb = min(num_channels, 3)
    out[:, :n_rgb] = rgb[:, :n_rgb]
    if num_channels > 3 and kind != "random":
        extra = rgb.mean(dim=1) if kind == "mean" else rgb[:, k]
        out[:, 3:] = extra.unsqueeze(1)
    return out.to(fresh.dtype)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local weights file: ``.safetensors``, or a torch pickle.

    A pickle's ``state_dict`` or ``model`` entry is used when present (Lightning, timm/IN22k
    releases).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # optional dependency, needed only here

        return load_file(str(path))
    state = load_weights_only(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return dict(state)


def load_pretrained(
    encoder: TimmEncoder, path: str | Path, new_channels_init: str = "mean"
) -> None:
    """Load a plain timm checkpoint of the same architecture into ``encoder``, in place.

    The checkpoint's keys are those of ``timm.create_model(name)`` (classifier and final norm
    are ignored). timm's own per-model conversion runs first: it converts original (e.g.
    Microsoft/Meta) releases and, for Swin, resizes relative-position-bias tables to this
    encoder's (clamped) windows. Then the first layer is adapted to ``encoder.in_channels``
    (``adapt_input_kernels``), and the keys are renamed to the feature network's: timm's feature
    wrapper flattens top-level ``nn.Sequential`` children (``layers.0.`` -> ``layers_0.``,
    ``stem.0.`` -> ``stem_0.``).

    Args:
        encoder: a ``TimmEncoder``.
        path: local weights file.
        new_channels_init: one of ``NEW_CHANNEL_MODES``.

    Raises:
        ValueError: a tensor of the encoder is absent from the file or has another shape.
    """
    state = read_state_dict(path)
    with torch.device("meta"):  # shapes and window sizes only, no memory
        full = timm.create_model(
            encoder.timm_name, **_timm_kwargs(encoder.in_channels, encoder.img_size)
        )
    convert = getattr(sys.modules[type(full).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, full)

    ours = encoder.model.state_dict()
    pretrained_cfg: Any = full.pretrained_cfg  # timm's dict (nn.Module attributes are untyped)
    first = pretrained_cfg["first_conv"] + ".weight"
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        flat = key.replace(".", "_", 1)  # see docstring: timm's feature-wrapper naming
        target = key if key in ours else flat if flat in ours else None
        if target is None:
            continue  # classifier, final norm, stages past the last returned one
        if key == first:
            value = adapt_input_kernels(value, ours[target], new_channels_init)
        renamed[target] = value
    missing = [k for k in ours if k not in renamed]
    wrong = [k for k, v in renamed.items() if v.shape != ours[k].shape]
    if missing or wrong:
        raise ValueError(
            f"{path}: not a {encoder.timm_name} checkpoint for this encoder; "
            f"missing {missing[:5]} ({len(missing)}), shape mismatch {wrong[:5]} ({len(wrong)})"
        )
    encoder.model.load_state_dict(renamed, strict=True)
    log.info("loaded %d tensors from %s into %s", len(renamed), path, encoder.timm_name)
