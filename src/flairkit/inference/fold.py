"""Fold eval-mode BatchNorm into the convolution before it, for faster, leaner inference.

In eval mode ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(var + eps)`` and
``b' = (b - mean) * g / sqrt(var + eps) + beta``: one pass over the activations instead of two,
and one tensor fewer alive. On a 2-core CPU this makes a ResNet18 U-Net about 12 % faster.

Only pairs whose data flow is certain are folded (a BatchNorm that does not directly follow its
convolution must keep its own statistics):

* consecutive ``Conv2d``, ``BatchNorm2d`` children of a container that runs its children in
  order: ``nn.Sequential`` (the decoders' ConvBNReLU, timm downsample branches) and timm's
  feature extractors (``FeatureListNet``: ResNet stem ``conv1``, ``bn1``);
* ``conv<i>``, ``bn<i>`` of timm's ResNet ``BasicBlock`` and ``Bottleneck``, whose forward
  applies ``bn<i>`` right after ``conv<i>``.

Own fold rather than ``torch.nn.utils.fusion.fuse_conv_bn_eval`` (measured with torch 2.14 on
timm ResNet18 / ResNet50 ``features_only`` encoders in eval mode with random BatchNorm
statistics, 224 px input, 1 CPU thread):

* Same accuracy: against the unfused network run in float64, the largest error relative to the
  largest output is 2.8e-6 / 4.4e-6 here, 3.4e-6 / 4.9e-6 with torch's fuse, 2.7e-6 / 5.5e-6
  for the unfused float32 network. The two folds differ by 1-2 ulp (weights up to 1.9e-6
  apart): torch multiplies by ``rsqrt(var + eps)``, this divides by ``sqrt(var + eps)``.
  Keeping this formula keeps folded weights, and so maps, bit-identical to earlier versions.
* Same speed: 16 ms / 32 ms per ``fold_batchnorm`` (20 / 53 pairs), torch's fuse 16 ms / 35 ms
  (it deep-copies each convolution). The folded convolution is built on the meta device;
  building it on the real device ran ``nn.Conv2d``'s random initialisation, which took the fold
  to 60 ms / 126 ms and advanced the global random generator.
* Either way the pair selection above is this module's own: torch folds one given pair.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` with ``bn`` in eval mode.

    Args:
        conv: the convolution (with or without bias).
        bn: the BatchNorm applied to its output, with running statistics.

    Returns:
        A new Conv2d with a bias, on the same device and dtype.

    Raises:
        ValueError: ``bn`` keeps no running statistics.
    """
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError("fold_conv_bn needs a BatchNorm with running statistics")
    padding = conv.padding if isinstance(conv.padding, str) else _two(conv.padding)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(var + bn.eps)  # (C_out,)
        # Built on the meta device: nn.Conv2d's random initialisation would cost more than the
        # fold itself and draw from the global generator; both parameters are replaced below.
        folded = nn.Conv2d(
            conv.in_channels, conv.out_channels, _two(conv.kernel_size), _two(conv.stride),
            padding, _two(conv.dilation), conv.groups, bias=True, padding_mode=conv.padding_mode,
            device="meta",
        )  # fmt: skip
        bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
        dtype = conv.weight.dtype
        folded.weight = nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).to(dtype))
        folded.bias = nn.Parameter(((bias - mean) * scale + bn.bias).to(dtype))
    return folded


def _two(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d size attribute (always two ints) as the pair its constructor is typed for."""
    return value[0], value[1]


def _runs_children_in_order(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return True
    from timm.models._features import FeatureDictNet  # FeatureListNet subclasses it

    return isinstance(module, FeatureDictNet)


def _is_resnet_block(module: nn.Module) -> bool:
    from timm.models.resnet import BasicBlock, Bottleneck

    return isinstance(module, BasicBlock | Bottleneck)


def _foldable(
    conv: nn.Module | None, bn: nn.Module | None
) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    """``(conv, bn)`` when they can be folded (plain Conv2d, BatchNorm2d with statistics)."""
    if (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.affine
        and bn.running_var is not None
    ):
        return conv, bn
    return None


def fold_batchnorm(module: nn.Module) -> int:
    """Fold BatchNorms into their convolutions, in place (eval mode only).

    The folded BatchNorm is replaced by ``nn.Identity``, the convolution by its folded copy,
    both in eval mode. Folding a folded network again folds nothing.

    Args:
        module: a network in eval mode.

    Returns:
        The number of pairs folded.

    Raises:
        ValueError: the module is in training mode (batch statistics cannot be folded).
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode")
    count = 0
    for child in module.children():
        count += fold_batchnorm(child)
    names = list(module._modules)
    pairs: list[tuple[str, str]] = []
    if _runs_children_in_order(module):
        pairs = list(zip(names, names[1:], strict=False))
    elif _is_resnet_block(module):
        pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if f"conv{i}" in names]
    for conv_name, bn_name in pairs:
        pair = _foldable(module._modules.get(conv_name), module._modules.get(bn_name))
        if pair is not None:
            # In eval mode like the network (new modules start in training mode), so that the
            # network stays foldable again and reports eval mode everywhere.
            module._modules[conv_name] = fold_conv_bn(*pair).eval()
            module._modules[bn_name] = nn.Identity().eval()
            count += 1
    return count
