"""Encoders: feature contract, registry, official keys and sizes, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from golden import load_manifest

from flairkit.models.encoders import (
    DEFAULT_ENCODER,
    ENCODERS,
    TimmEncoder,
    adapt_input_kernels,
    build_encoder,
    encoder_key_from_official,
    load_pretrained,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # timm's bias-table resize

#: Too big to build for real in a default (2-core CPU) run; their structure is checked on meta.
BIG = {
    "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384",
    "swin_large_patch4_window12_384",
    "convnext_base",
    "convnextv2_base",
    "swin_small_patch4_window7_224",
}
FOUR_STAGE_STRIDES = (4, 8, 16, 32)
RESNET_STRIDES = (2, 4, 8, 16, 32)


def _strides(name: str) -> tuple[int, ...]:
    return RESNET_STRIDES if name.startswith("resnet") else FOUR_STAGE_STRIDES


def test_default_is_the_reference_backbone() -> None:
    assert DEFAULT_ENCODER == "swin_base_patch4_window12_384"
    assert DEFAULT_ENCODER in ENCODERS


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="resnet18"):
        build_encoder("vgg16", 3, 64)


def test_unknown_channel_mode_fails_before_building() -> None:
    with pytest.raises(ValueError, match="copy:<k>"):
        build_encoder("resnet18", 4, 64, new_channels_init="copy:3")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_structure_of_every_encoder(name: str) -> None:
    with torch.device("meta"):
        enc = ENCODERS[name](5, 64)
    assert enc.strides == _strides(name)
    assert len(enc.out_channels) == len(enc.strides)
    assert isinstance(enc.out_channels, tuple)
    assert enc.model.feature_info.channels() == list(enc.out_channels)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in sorted(ENCODERS)]
)
def test_forward_backward_shapes(name: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(name, in_channels=5, img_size=64)
    x = torch.randn(2, 5, 64, 64)  # (B, C, H, W)
    feats = enc(x)
    assert len(feats) == len(enc.out_channels)
    for f, c, s in zip(feats, enc.out_channels, enc.strides, strict=True):
        assert f.shape == (2, c, 64 // s, 64 // s)
    sum(f.square().mean() for f in feats).backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:4])


# --- official keys and sizes -----------------------------------------------------------------

#: (manifest, modality, channels, img_size, parameters counted from the reference code)
OFFICIAL_ENCODERS = [
    ("LC-A", "AERIAL_RGBI", 3, 512, 86_876_536),
    ("LPIS-I", "SPOT_RGBI", 3, 64, 86_700_152),
    ("LC-ALL", "AERIAL_RGBI", 3, 512, 86_876_536),
    ("LC-ALL", "DEM_ELEV", 2, 512, 86_874_488),
    ("LC-ALL", "AERIAL-RLT_PAN", 1, 256, 86_852_984),
    ("LC-ALL", "SPOT_RGBI", 3, 64, 86_700_152),
]
#: reference-params.md, millions, 2 decimals.
README_M = {"AERIAL_RGBI": 86.88, "DEM_ELEV": 86.87, "AERIAL-RLT_PAN": 86.85, "SPOT_RGBI": 86.70}


@pytest.mark.parametrize(
    ("model_id", "modality", "channels", "img_size", "n_params"), OFFICIAL_ENCODERS
)
def test_official_encoder_keys_map_one_to_one(
    model_id: str, modality: str, channels: int, img_size: int, n_params: int
) -> None:
    prefix = f"encoders.{modality}.seg_model."
    official = [t for t in load_manifest(model_id)["tensors"] if t["key"].startswith(prefix)]
    with torch.device("meta"):
        enc = build_encoder(DEFAULT_ENCODER, channels, img_size)
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    mapped = {
        encoder_key_from_official(t["key"][len(prefix) :]): tuple(t["shape"]) for t in official
    }
    assert len(mapped) == len(official)  # injective
    assert mapped == ours  # onto, same shapes (incl. window-clamped bias tables)

    official_params = sum(t["numel"] for t in official if t["kind"] == "param")
    our_params = sum(p.numel() for p in enc.parameters())
    assert official_params == our_params == n_params
    assert round(our_params / 1e6, 2) == README_M[modality]


def test_window_clamped_bias_tables() -> None:
    """64 px: Swin stages are 16/8/4/2 tokens wide, so windows 12/8/4/2 (LPIS-I manifest)."""
    with torch.device("meta"):
        enc = build_encoder(DEFAULT_ENCODER, 3, 64)
    tables = [
        tuple(
            enc.model.get_submodule(f"layers_{i}.blocks.0.attn").relative_position_bias_table.shape
        )
        for i in range(4)
    ]
    assert tables == [(529, 4), (225, 8), (49, 16), (9, 32)]


def test_official_key_outside_model_is_rejected() -> None:
    with pytest.raises(KeyError):
        encoder_key_from_official("decoder.psp.out_conv.0.weight")


# --- channels beyond RGB ---------------------------------------------------------------------


def _kernels(c: int, seed: int) -> torch.Tensor:
    return torch.randn(8, c, 3, 3, generator=torch.Generator().manual_seed(seed))


def test_adapt_keeps_rgb_and_fills_extra_channels() -> None:
    rgb, fresh = _kernels(3, 0), _kernels(5, 1)
    mean = adapt_input_kernels(rgb, fresh, "mean")
    assert torch.equal(mean[:, :3], rgb)
    assert torch.allclose(mean[:, 3], rgb.mean(1)) and torch.allclose(mean[:, 4], rgb.mean(1))
    copy = adapt_input_kernels(rgb, fresh, "copy:2")
    assert torch.equal(copy[:, :3], rgb) and torch.equal(copy[:, 3], rgb[:, 2])
    rand = adapt_input_kernels(rgb, fresh, "random")
    assert torch.equal(rand[:, :3], rgb) and torch.equal(rand[:, 3:], fresh[:, 3:])


def test_adapt_fewer_channels_and_timm_rule() -> None:
    rgb = _kernels(3, 0)
    assert torch.equal(adapt_input_kernels(rgb, _kernels(2, 1), "mean"), rgb[:, :2])
    assert torch.allclose(
        adapt_input_kernels(rgb, _kernels(1, 1), "timm"), rgb.sum(1, keepdim=True)
    )
    four = adapt_input_kernels(rgb, _kernels(4, 1), "timm")
    assert torch.allclose(four, torch.cat([rgb, rgb[:, :1]], 1) * 0.75)
    same = _kernels(4, 2)
    assert torch.equal(adapt_input_kernels(same, _kernels(4, 1), "mean"), same)
    with pytest.raises(ValueError, match="neither RGB"):
        adapt_input_kernels(_kernels(2, 0), _kernels(4, 1), "mean")


@pytest.fixture(scope="module")
def resnet18_file(module_tmp: Path) -> tuple:
    torch.manual_seed(1)
    model = timm.create_model("resnet18", pretrained=False)
    path = module_tmp / "resnet18.pth"
    torch.save({"state_dict": model.state_dict()}, path)  # Lightning-style wrapper
    return path, model.state_dict()


@pytest.mark.parametrize("mode", ["mean", "copy:1", "random", "timm"])
def test_pretrained_file_with_extra_channels(resnet18_file: tuple, mode: str) -> None:
    path, ref = resnet18_file
    torch.manual_seed(2)
    fresh = build_encoder("resnet18", 4, 64).state_dict()["model.conv1.weight"]
    torch.manual_seed(2)  # same random init as `fresh`
    enc = build_encoder("resnet18", 4, 64, pretrained_path=path, new_channels_init=mode)
    ours = enc.state_dict()
    assert torch.equal(ours["model.layer4.1.conv2.weight"], ref["layer4.1.conv2.weight"])
    assert torch.equal(ours["model.bn1.running_var"], ref["bn1.running_var"])
    assert torch.equal(
        ours["model.conv1.weight"], adapt_input_kernels(ref["conv1.weight"], fresh, mode)
    )
    if mode != "timm":
        assert torch.equal(ours["model.conv1.weight"][:, :3], ref["conv1.weight"])


def test_no_file_means_no_adaptation(resnet18_file: tuple) -> None:
    _, ref = resnet18_file
    enc = build_encoder("resnet18", 3, 64)
    assert not torch.equal(enc.state_dict()["model.conv1.weight"], ref["conv1.weight"])


def test_wrong_architecture_file_is_refused(resnet18_file: tuple) -> None:
    path, _ = resnet18_file
    with pytest.raises(ValueError, match="not a resnet34 checkpoint"):
        build_encoder("resnet34", 3, 64, pretrained_path=path)


def test_pretrained_swin_at_another_size(tmp_path) -> None:  # noqa: ANN001
    """224 px window-7 weights into a 64 px encoder: bias tables resized, keys flattened."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    ref = model.state_dict()
    path = tmp_path / "swin_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(path))
    enc = build_encoder("swin_tiny_patch4_window7_224", 2, 64, pretrained_path=path)
    assert isinstance(enc, TimmEncoder)
    ours = enc.state_dict()
    key = "layers.1.blocks.1.attn.qkv.weight"
    assert torch.equal(ours["model." + key.replace(".", "_", 1)], ref[key])
    assert torch.equal(ours["model.patch_embed.proj.weight"], ref["patch_embed.proj.weight"][:, :2])
    # stage 0 keeps window 7 (16 tokens); stage 3 is 2 tokens wide: window 2, table 3x3
    assert torch.equal(
        ours["model.layers_0.blocks.0.attn.relative_position_bias_table"],
        ref["layers.0.blocks.0.attn.relative_position_bias_table"],
    )
    assert ours["model.layers_3.blocks.0.attn.relative_position_bias_table"].shape == (9, 24)
    assert enc(torch.randn(1, 2, 64, 64))[-1].shape == (1, 768, 2, 2)


def test_pretrained_convnext_stem_is_renamed(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(4)
    model = timm.create_model("convnext_tiny", pretrained=False)
    path = tmp_path / "convnext_tiny.pth"
    torch.save(model.state_dict(), path)
    enc = TimmEncoder("convnext_tiny", 3, (0, 1, 2, 3))
    load_pretrained(enc, path)
    assert torch.equal(enc.model.stem_0.weight, model.stem[0].weight)
    assert torch.equal(
        enc.model.stages_3.blocks[2].mlp.fc2.weight, model.stages[3].blocks[2].mlp.fc2.weight
    )
