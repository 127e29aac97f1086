"""Decoders: shapes, training (batch of one included), official keys and sizes, LC-A golden."""

from __future__ import annotations

import pytest
import torch
from golden import assert_matches_golden, golden_inputs, golden_state_dict, load_manifest
from torch import nn

from flairkit.models.decoders import (
    DECODERS,
    SingleValueBatchNorm2d,
    UNetDecoder,
    UPerNetDecoder,
    build_decoder,
    decoder_key_from_official,
    decoder_state_from_official,
    unet_key_from_official,
    upernet_key_from_official,
    upsample2x_conv3x3,
)
from flairkit.models.encoders import DEFAULT_ENCODER, build_encoder, encoder_state_from_official

SWIN_B_CHANNELS = (128, 256, 512, 1024)
#: Small pyramids for a 64 px input: 4 maps at strides 4..32, or 5 maps at strides 2..32.
PYRAMIDS = {
    "4 maps": ((16, 24, 32, 48), (4, 8, 16, 32)),
    "5 maps": ((8, 16, 24, 32, 48), (2, 4, 8, 16, 32)),
}


def _features(kind: str, batch: int = 2, side: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels, strides = PYRAMIDS[kind]
    return [
        torch.randn(batch, c, side // s, side // s, generator=g)
        for c, s in zip(channels, strides, strict=True)
    ]


def test_unknown_decoder_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="upernet"):
        build_decoder("fpn", SWIN_B_CHANNELS, 19)


def test_wrong_number_of_maps_is_refused() -> None:
    with pytest.raises(ValueError, match="4 maps"):
        UPerNetDecoder((16, 32, 64), 5)


@pytest.mark.parametrize("kind", sorted(PYRAMIDS))
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_logits_shape(name: str, kind: str) -> None:
    dec = build_decoder(name, PYRAMIDS[kind][0], 7).eval()
    with torch.no_grad():
        assert dec(_features(kind)).shape == (2, 7, 64, 64)
        assert dec(_features(kind), out_size=(100, 90)).shape == (2, 7, 100, 90)


@pytest.mark.parametrize("kind", sorted(PYRAMIDS))
@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_trains(name: str, kind: str) -> None:
    torch.manual_seed(0)
    dec = build_decoder(name, PYRAMIDS[kind][0], 5).train()
    feats = _features(kind, batch=2)
    target = torch.randint(0, 5, (2, 64, 64), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(dec(feats), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    used = [n for n, p in dec.named_parameters() if not n.startswith("unused_image_skip")]
    assert all(dec.get_parameter(n).grad is not None for n in used)


def test_plain_batchnorm_cannot_train_on_one_value() -> None:
    """What the official UPerNet hits at batch size 1 (PSP's 1x1 pooled branch)."""
    with pytest.raises(ValueError, match="more than 1 value"):
        nn.BatchNorm2d(4).train()(torch.randn(1, 4, 1, 1))


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_batch_of_one_trains(name: str) -> None:
    torch.manual_seed(0)
    dec = build_decoder(name, SWIN_B_CHANNELS, 3).train()
    feats = [
        torch.randn(1, c, 64 // s, 64 // s)
        for c, s in zip(SWIN_B_CHANNELS, (4, 8, 16, 32), strict=True)
    ]
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    dec(feats).logsumexp(1).mean().backward()
    assert all(p.grad is not None for n, p in dec.named_parameters() if "unused" not in n)
    if name == "upernet":
        pooled_bn = "psp.branches.0.1"  # bin 1: one value per channel
        for stat in ("running_mean", "running_var"):
            assert torch.equal(
                dec.state_dict()[f"{pooled_bn}.{stat}"], before[f"{pooled_bn}.{stat}"]
            )
        assert not torch.equal(
            dec.state_dict()["psp.branches.1.1.running_mean"],
            before["psp.branches.1.1.running_mean"],
        )
        assert dec.psp.branches[0][0].weight.grad.abs().sum() > 0


def test_single_value_batchnorm_is_batchnorm_otherwise() -> None:
    torch.manual_seed(0)
    plain, safe = nn.BatchNorm2d(6), SingleValueBatchNorm2d(6)
    for bn in (plain, safe):
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_()
        bn.running_mean.normal_()
    safe.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 2, 2)
    assert torch.equal(plain.train()(x), safe.train()(x))
    assert torch.equal(plain.running_var, safe.running_var)
    one = torch.randn(1, 6, 1, 1)
    assert torch.equal(plain.eval()(one), safe.eval()(one))
    assert torch.equal(safe.train()(one), plain.eval()(one))  # running statistics


# --- official keys and sizes -----------------------------------------------------------------

#: (manifest, decoder prefix, classes, parameters counted from the reference code)
OFFICIAL_DECODERS = [
    ("LC-A", "main_decoders.AERIAL_LABEL-COSIA.seg_model.", 19, 2_545_747),
    ("LPIS-I", "main_decoders.ALL_LABEL-LPIS.seg_model.", 23, 2_546_007),
    ("LPIS-I", "aux_decoders.SPOT_RGBI__ALL_LABEL-LPIS.seg_model.", 23, 2_546_007),
    ("LC-ALL", "main_decoders.AERIAL_LABEL-COSIA.seg_model.", 19, 2_545_747),
    ("LC-ALL", "aux_decoders.AERIAL-RLT_PAN__AERIAL_LABEL-COSIA.seg_model.", 19, 2_545_747),
]


@pytest.mark.parametrize(("model_id", "prefix", "num_classes", "n_params"), OFFICIAL_DECODERS)
def test_official_upernet_keys_map_one_to_one(
    model_id: str, prefix: str, num_classes: int, n_params: int
) -> None:
    official = [t for t in load_manifest(model_id)["tensors"] if t["key"].startswith(prefix)]
    dec = build_decoder("upernet", SWIN_B_CHANNELS, num_classes)
    ours = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    mapped = {
        upernet_key_from_official(t["key"][len(prefix) :]): tuple(t["shape"]) for t in official
    }
    assert len(mapped) == len(official)
    assert mapped == ours

    official_params = sum(t["numel"] for t in official if t["kind"] == "param")
    assert official_params == sum(p.numel() for p in dec.parameters()) == n_params


def test_unmapped_official_key_is_an_error() -> None:
    with pytest.raises(KeyError, match="no upernet rule"):
        decoder_key_from_official("upernet", "decoder.fpn_stages.5.skip_conv.0.weight")


def _naive_upsample_conv(x, weight, skip=None, bias=None):
    """What smp's U-Net block does: upsample x2 (nearest), concatenate, 3x3 conv."""
    up = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    if skip is not None:
        up = torch.cat([up, skip], dim=1)
    return nn.functional.conv2d(up, weight, bias, padding=1)


@pytest.mark.parametrize("with_skip", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (8, 3)])
def test_upsample_conv_equals_upsample_then_conv(with_skip, with_bias, shape) -> None:
    """Forward and all gradients equal the upsample + concatenate + conv they replace."""
    g = torch.Generator().manual_seed(1)
    h, w = shape
    inputs = {
        "x": torch.randn(2, 6, h, w, generator=g),
        "weight": torch.randn(4, 6 + (3 if with_skip else 0), 3, 3, generator=g),
        "skip": torch.randn(2, 3, 2 * h, 2 * w, generator=g) if with_skip else None,
        "bias": torch.randn(4, generator=g) if with_bias else None,
    }
    grad_out = torch.randn(2, 4, 2 * h, 2 * w, generator=g)
    results = []
    for fn in (_naive_upsample_conv, upsample2x_conv3x3):
        leaves = {k: None if v is None else v.clone().requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves)
        out.backward(grad_out)
        grads = {k: v.grad for k, v in leaves.items() if v is not None}
        results.append((out.detach(), grads))
    (ref, ref_grads), (ours, our_grads) = results
    assert ours.shape == (2, 4, 2 * h, 2 * w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert our_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(our_grads[name], ref_grads[name], rtol=1e-5, atol=1e-4)
    # the comparison can fail: a kernel flipped vertically is a different function
    flipped = upsample2x_conv3x3(
        inputs["x"], inputs["weight"].flip(2), inputs["skip"], inputs["bias"]
    )
    assert (flipped - ref).abs().max() > 0.1


def test_unet_decoder_equals_upsample_cat_conv_decoder() -> None:
    """The whole decoder (train and eval mode) computes smp's upsample-concatenate blocks."""

    def naive_decoder(dec: UNetDecoder, features: list[torch.Tensor]) -> torch.Tensor:
        skips, x = list(features[-2::-1]), features[-1]
        for i, block in enumerate(dec.blocks):
            conv, bn, relu = block.conv1
            x = relu(bn(_naive_upsample_conv(x, conv.weight, skips[i] if i < len(skips) else None)))
            x = block.conv2(x)
        return dec.head(x)

    torch.manual_seed(0)
    dec = UNetDecoder(PYRAMIDS["5 maps"][0], 7)
    features = _features("5 maps")
    for mode in (dec.train, dec.eval):
        mode()
        state = {k: v.clone() for k, v in dec.state_dict().items()}
        ours = dec(features)
        dec.load_state_dict(state)  # same running statistics before the second pass
        torch.testing.assert_close(ours, naive_decoder(dec, features), rtol=1e-4, atol=1e-4)


def test_unet_block_kernel_cache_follows_weight_changes() -> None:
    """Without autograd the folded kernel is cached, and refolded when the weight changes."""
    from flairkit.models.decoders import UNetBlock

    torch.manual_seed(0)
    block = UNetBlock(6, 3, 4).eval()
    x, skip = torch.randn(1, 6, 5, 5), torch.randn(1, 3, 10, 10)

    def expected() -> torch.Tensor:
        conv, bn, relu = block.conv1
        return block.conv2(relu(bn(_naive_upsample_conv(x, conv.weight, skip))))

    with torch.no_grad():
        torch.testing.assert_close(block(x, skip), expected(), rtol=1e-5, atol=1e-5)
        assert block._folded is not None
        block.conv1[0].weight.mul_(-2.0)  # in place: same storage, new version
        torch.testing.assert_close(block(x, skip), expected(), rtol=1e-5, atol=1e-5)
        state = {
            k: torch.randn_like(v) if k.endswith("weight") else v
            for k, v in block.state_dict().items()
        }
        block.load_state_dict(state)
        torch.testing.assert_close(block(x, skip), expected(), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        xl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(block(xl, skip), expected(), rtol=1e-5, atol=1e-5)


def test_unet_keys_and_shapes_match_smp() -> None:
    """smp 0.4.0 ``Unet`` on ``tu-convnextv2_base`` (IGNF/FLAIR-HUB_LC-A_IR_convnextv2base-unet).

    smp's encoder channels are (in, 0, 128, 256, 512, 1024); its blocks take (1024, 256, 128,
    64, 32) channels plus skips (512, 256, 128, 0, 0) and output (256, 128, 64, 32, 16); the head
    is a 3x3 conv. Shapes written from that source.
    """
    conv1 = [(256, 1536), (128, 512), (64, 256), (32, 64), (16, 32)]
    official = {"segmentation_head.0.weight": (19, 16, 3, 3), "segmentation_head.0.bias": (19,)}
    for i, (c_out, c_in) in enumerate(conv1):
        for conv, fan_in in (("conv1", c_in), ("conv2", c_out)):
            base = f"decoder.blocks.{i}.{conv}"
            official[f"{base}.0.weight"] = (c_out, fan_in, 3, 3)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                official[f"{base}.1.{stat}"] = (c_out,)
            official[f"{base}.1.num_batches_tracked"] = ()
    dec = UNetDecoder((128, 256, 512, 1024), 19)
    ours = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert {unet_key_from_official(k): s for k, s in official.items()} == ours


# --- golden: the official LC-A function ------------------------------------------------------


def test_lc_a_matches_official_golden() -> None:
    """Swin-B w12 384 + UPerNet, 3 channels, 512 px, 19 classes: the reference's logits."""
    state = golden_state_dict("LC-A")
    enc_prefix = "encoders.AERIAL_RGBI.seg_model."
    dec_prefix = "main_decoders.AERIAL_LABEL-COSIA.seg_model."
    assert all(k.startswith((enc_prefix, dec_prefix, "fusion_handler.")) for k in state)
    encoder = build_encoder(DEFAULT_ENCODER, in_channels=3, img_size=512)
    decoder = build_decoder("upernet", encoder.out_channels, 19)
    encoder.load_state_dict(
        encoder_state_from_official(
            {k[len(enc_prefix) :]: v for k, v in state.items() if k.startswith(enc_prefix)}
        )
    )
    decoder.load_state_dict(
        decoder_state_from_official(
            "upernet",
            {k[len(dec_prefix) :]: v for k, v in state.items() if k.startswith(dec_prefix)},
        )
    )
    encoder.eval()
    decoder.eval()
    inputs, _ = golden_inputs(["AERIAL_RGBI"])
    with torch.no_grad():
        logits = decoder(encoder(inputs["AERIAL_RGBI"]), out_size=(512, 512))  # (1, 19, 512, 512)
    assert_matches_golden(logits, "LC-A", "AERIAL_LABEL-COSIA")


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_resnet_encoder_and_decoder_give_input_size(name: str) -> None:
    """ResNet's 5 maps (strides 2..32) through each decoder back to the input size."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", in_channels=2, img_size=64)
    decoder = build_decoder(name, encoder.out_channels, 4)
    logits = decoder(encoder(torch.randn(2, 2, 64, 64)))
    assert logits.shape == (2, 4, 64, 64)
    logits.mean().backward()


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_built_decoders_start_as_the_reference_initialises_them(name: str) -> None:
    """segmentation-models-pytorch's start (bench/train_parity.py, LC-D-r18: PyTorch's default
    fitted the training patches more slowly and scored below the official code)."""
    torch.manual_seed(0)
    decoder = build_decoder(name, (16, 24, 32, 48, 64), 7)
    convs = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in decoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert convs and norms and decoder.head in convs
    for conv in convs:
        fan_in = conv.weight[0].numel()
        if conv is decoder.head:  # Xavier-uniform
            bound = (6.0 / (fan_in + conv.weight.shape[0] * conv.weight[0, 0].numel())) ** 0.5
        else:  # Kaiming-uniform, fan-in, ReLU gain; PyTorch's default bound is 1 / sqrt(fan_in)
            bound = (6.0 / fan_in) ** 0.5
        w = conv.weight.detach()
        assert w.abs().max() <= bound
        if w.numel() >= 500:  # a uniform's std is bound / sqrt(3)
            assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
        assert conv.bias is None or not conv.bias.any()
    for norm in norms:
        assert bool((norm.weight == 1).all()) and not norm.bias.any()
