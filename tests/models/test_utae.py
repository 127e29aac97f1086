"""U-TAE: shapes, padding invariance, gradients, official keys, parameter counts, golden logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from golden import assert_matches_golden, golden_inputs, golden_state_dict, load_manifest
from torch import nn

from flairkit.models.utae import (
    UTAE,
    MaskedGroupNorm,
    fused_out_conv,
    fused_utae_widths,
    load_official_utae_state_dict,
    official_utae_key,
)

TS_MODALITIES = ("SENTINEL2_TS", "SENTINEL1-ASC_TS", "SENTINEL1-DESC_TS")
SMALL = dict(
    encoder_widths=[16, 16, 32],
    decoder_widths=[16, 16, 32],
    out_conv=[8, 5],
    n_head=4,
    d_model=32,
    d_k=4,
)


def manifest_utae(model_id: str, modality: str) -> tuple[UTAE, dict[str, dict]]:
    """A U-TAE built with a manifest's configuration and that manifest's tensors for it."""
    manifest = load_manifest(model_id)
    cfg = {k: v for k, v in manifest["multitemp_model"].items() if k != "ref_date"}
    model = UTAE(input_dim=manifest["channels"][modality], **cfg)
    prefix = f"encoders.{modality}."
    tensors = {
        t["key"][len(prefix) :]: t for t in manifest["tensors"] if t["key"].startswith(prefix)
    }
    return model, tensors


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_series(b: int, t: int, c: int = 4, hw: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, hw, hw, generator=g)  # (B, T, C, H, W)
    dates = torch.sort(torch.randint(-150, 200, (b, t), generator=g).float(), dim=1).values
    return x, dates


@pytest.fixture(scope="module")
def lcg_model() -> UTAE:
    """The LC-G U-TAE with the golden weights, in eval mode."""
    model = UTAE(input_dim=10).eval()
    prefix = "encoders.SENTINEL2_TS."
    sd = golden_state_dict("LC-G")
    load_official_utae_state_dict(
        model, {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    )
    return model


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("agg_mode", ["att_group", "att_mean", "mean"])
@pytest.mark.parametrize("encoder_norm", ["group", "batch", "instance"])
def test_output_shapes(agg_mode: str, encoder_norm: str) -> None:
    model = UTAE(4, agg_mode=agg_mode, encoder_norm=encoder_norm, **SMALL).eval()
    x, dates = random_series(2, 5)
    with torch.no_grad():
        logits, maps = model(x, dates)
    assert logits.shape == (2, 5, 8, 8)
    assert [m.shape[1] for m in maps] == model.out_channels == [32, 16, 16]
    assert all(m.shape[-2:] == (8, 8) for m in maps)


@pytest.mark.parametrize("agg_mode", ["att_group", "att_mean", "mean"])
def test_strided_configuration_downsamples_and_recovers(agg_mode: str) -> None:
    model = UTAE(4, str_conv_k=4, str_conv_s=2, str_conv_p=1, agg_mode=agg_mode, **SMALL).eval()
    x, dates = random_series(2, 3, hw=16)
    with torch.no_grad():
        logits, maps = model(x, dates)
    assert logits.shape == (2, 5, 16, 16)
    assert [tuple(m.shape[-2:]) for m in maps] == [(4, 4), (8, 8), (16, 16)]


def test_default_configuration_is_flairhub(lcg_model: UTAE) -> None:
    x, dates = golden_inputs(["SENTINEL2_TS"])
    with torch.no_grad():
        logits, maps = lcg_model(x["SENTINEL2_TS"], dates["SENTINEL2_TS"])
    assert logits.shape == (1, 19, 10, 10)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (128, 10, 10),
        (64, 10, 10),
        (32, 10, 10),
        (32, 10, 10),
    ]


# --- padding --------------------------------------------------------------------------------


def assert_same_outputs(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    for ma, mb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ma, mb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("encoder_norm", ["group", "batch"])
def test_appended_padded_dates_change_nothing(lcg_model: UTAE, encoder_norm: str) -> None:
    model = lcg_model if encoder_norm == "group" else UTAE(4, encoder_norm="batch", **SMALL).eval()
    c = 10 if encoder_norm == "group" else 4
    x, dates = random_series(1, 5, c=c, hw=10)
    junk, junk_dates = random_series(1, 3, c=c, hw=10, seed=1)
    junk[0, 1] = float("nan")  # padded content never reaches a result
    junk_dates[0, 2] = float("nan")
    x_pad, dates_pad = torch.cat([x, 50 * junk], dim=1), torch.cat([dates, junk_dates], dim=1)
    mask = torch.tensor([[False] * 5 + [True] * 3])
    with torch.no_grad():
        assert_same_outputs(model(x, dates), model(x_pad, dates_pad, mask))


def test_batch_of_different_lengths_matches_samples_alone(lcg_model: UTAE) -> None:
    xa, da = random_series(1, 5, c=10, hw=10, seed=2)
    xb, db = random_series(1, 8, c=10, hw=10, seed=3)
    junk, junk_dates = random_series(1, 3, c=10, hw=10, seed=4)
    x = torch.cat([torch.cat([xa, junk], dim=1), xb])  # (2, 8, 10, 10, 10)
    dates = torch.cat([torch.cat([da, junk_dates], dim=1), db])
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 5:] = True
    with torch.no_grad():
        logits, maps = lcg_model(x, dates, mask)
        for i, (xi, di) in enumerate([(xa, da), (xb, db)]):
            alone = lcg_model(xi, di)
            assert_same_outputs((logits[i : i + 1], [m[i : i + 1] for m in maps]), alone)


def test_pad_mask_is_inferred_from_pad_value(lcg_model: UTAE) -> None:
    x, dates = random_series(2, 6, c=10, hw=10, seed=5)
    x[0, 4:] = lcg_model.pad_value
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    assert torch.equal(lcg_model.infer_pad_mask(x), mask)
    with torch.no_grad():
        assert_same_outputs(lcg_model(x, dates), lcg_model(x, dates, mask))
        assert_same_outputs(
            tuple(
                (o[:1] if isinstance(o, torch.Tensor) else [m[:1] for m in o])
                for o in lcg_model(x, dates)
            ),
            lcg_model(x[:1, :4], dates[:1, :4]),
        )


def test_masked_group_norm_uses_real_dates_only() -> None:
    norm = MaskedGroupNorm(4, 8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    ref = nn.GroupNorm(4, 8)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(3, 8, 6)  # (N, C, T)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    torch.testing.assert_close(norm(x, mask), ref(x))
    mask[:, 4:] = True
    torch.testing.assert_close(norm(x, mask)[..., :4], ref(x[..., :4]))


# --- gradients ------------------------------------------------------------------------------


def test_gradients_reach_every_parameter() -> None:
    model = UTAE(4, **SMALL).train()
    x, dates = random_series(2, 5)
    mask = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    x.requires_grad_(True)
    logits, maps = model(x, dates, mask)
    (logits.square().mean() + sum(m.mean() for m in maps)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and (x.grad[0, 3:] == 0).all()  # padded dates get no gradient


# --- official weights -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "modality"),
    [("LC-G", "SENTINEL2_TS"), ("LC-L", "SENTINEL2_TS")] + [("LPIS-I", m) for m in TS_MODALITIES],
)
def test_official_keys_map_one_to_one(model_id: str, modality: str) -> None:
    model, tensors = manifest_utae(model_id, modality)
    ours = model.state_dict()
    mapped = {official_utae_key(k): t for k, t in tensors.items()}
    assert len(mapped) == len(tensors)  # no two reference tensors on one of ours
    assert set(mapped) == set(ours)
    for key, t in mapped.items():
        assert list(ours[key].shape) == t["shape"], key


def test_unknown_key_raises() -> None:
    with pytest.raises(KeyError, match="not a U-TAE key"):
        official_utae_key("fusion_handler.conv_f.0.weight")


def test_golden_lc_g(lcg_model: UTAE) -> None:
    """The official S2-only model: U-TAE scores resized to the 512 x 512 label."""
    x, dates = golden_inputs(["SENTINEL2_TS"])
    with torch.no_grad():
        scores, _ = lcg_model(x["SENTINEL2_TS"], dates["SENTINEL2_TS"])  # (1, 19, 10, 10)
    logits = F.interpolate(scores, size=(512, 512), mode="bilinear", align_corners=False)
    assert_matches_golden(logits, "LC-G", "AERIAL_LABEL-COSIA")


# --- widths and counts ----------------------------------------------------------------------


def test_fused_width_rules() -> None:
    assert fused_utae_widths([64, 64, 64, 128], 4) == [64, 64, 128, 128]
    for model_id in ("LC-L", "LPIS-I"):
        cfg = load_manifest(model_id)["multitemp_model"]
        assert cfg["encoder_widths"] == cfg["decoder_widths"] == [64, 64, 128, 128]
    assert fused_out_conv([32, 19], 19) == [32, 19]
    assert fused_out_conv([32, 19], 23) == [32, 19, 23]
    assert load_manifest("LPIS-I")["multitemp_model"]["out_conv"] == [32, 19, 23]


def test_parameter_count_lc_g() -> None:
    utae = UTAE(10)
    assert num_params(utae) == 922_105
    # The reference prints 922,485 for LC-G: the U-TAE plus its 19 -> 19 1x1 "decoder" conv.
    assert num_params(utae) + 19 * 19 + 19 == load_manifest("LC-G")["n_params_printed_total"]


@pytest.mark.parametrize(
    ("model_id", "modality", "expected"),
    [
        ("LC-L", "SENTINEL2_TS", 1_913_209),
        ("LPIS-I", "SENTINEL2_TS", 1_917_211),
        ("LPIS-I", "SENTINEL1-ASC_TS", 1_912_603),
    ],
)
def test_parameter_count_fused(model_id: str, modality: str, expected: int) -> None:
    model, tensors = manifest_utae(model_id, modality)
    assert num_params(model) == expected
    assert sum(t["numel"] for t in tensors.values() if t["kind"] == "param") == expected
    fused = UTAE(
        10,
        encoder_widths=fused_utae_widths([64, 64, 64, 128], 4),
        decoder_widths=fused_utae_widths([64, 64, 64, 128], 4),
    )
    assert num_params(fused) == 1_913_209
