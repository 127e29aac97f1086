"""MultiScaleFusion computes the reference rule: resize every map to the reference stage size,
concatenate, 1x1 convolution; whichever order of resize and convolution it uses inside."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flairkit.modalities import Modality
from flairkit.models.fusion import MultiScaleFusion


def _reference_rule(fusion: MultiScaleFusion, features) -> list[torch.Tensor]:
    ref = features[fusion.order[0]]
    sizes = [tuple(f.shape[-2:]) for f in ref]
    out = []
    for i, (conv, size) in enumerate(zip(fusion.convs, sizes, strict=True)):
        stage = []
        for m in fusion.order:
            maps = list(features[m])
            maps = [maps[0]] * (len(sizes) - len(maps)) + maps
            fmap = maps[i]
            if tuple(fmap.shape[-2:]) != size:
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            stage.append(fmap)
        out.append(conv(torch.cat(stage, dim=1)))
    return out


def _features(g: torch.Generator):
    """Aerial pyramid (reference), a coarse Sentinel-2 pyramid with fewer maps, and a SPOT-like
    pyramid larger than the reference at its finest stage (resized down)."""
    aerial = [torch.randn(2, c, s, s, generator=g) for c, s in ((4, 32), (6, 16), (8, 8))]
    s2 = [torch.randn(2, c, s, s, generator=g) for c, s in ((5, 3), (7, 5))]
    spot = [torch.randn(2, 3, s, s, generator=g) for s in (48, 12, 8)]
    return {Modality.AERIAL_RGBI: aerial, Modality.SENTINEL2_TS: s2, Modality.SPOT_RGBI: spot}


def test_fusion_equals_resize_concatenate_conv_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    features = _features(g)
    in_channels = {
        Modality.AERIAL_RGBI: [4, 6, 8],
        Modality.SENTINEL2_TS: [5, 5, 7],
        Modality.SPOT_RGBI: [3, 3, 3],
    }
    torch.manual_seed(0)
    fusion = MultiScaleFusion(in_channels, [4, 6, 8])
    results = []
    for fn in (lambda f: fusion(f), lambda f: _reference_rule(fusion, f)):
        leaves = {m: [x.clone().requires_grad_() for x in maps] for m, maps in features.items()}
        fusion.zero_grad()
        outs = fn(leaves)
        sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum()
            for i, o in enumerate(outs)).backward()  # fmt: skip
        grads = [x.grad for maps in leaves.values() for x in maps]
        results.append(
            ([o.detach() for o in outs], grads, [p.grad.clone() for p in fusion.parameters()])
        )
    (ours, our_in, our_w), (ref, ref_in, ref_w) = results
    for a, b in zip(ours + our_in + our_w, ref + ref_in + ref_w, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fusion_rejects_maps_with_the_wrong_channels() -> None:
    g = torch.Generator().manual_seed(0)
    features = _features(g)
    fusion = MultiScaleFusion(
        {Modality.AERIAL_RGBI: [4, 6, 8], Modality.SENTINEL2_TS: [5, 5, 7],
         Modality.SPOT_RGBI: [3, 3, 4]},
        [4, 6, 8],
    )  # fmt: skip
    with pytest.raises(ValueError, match="stage 2: maps have 18 channels, the fusion expects 19"):
        fusion(features)
