"""build_model(ModelConfig): the only place that reads a ModelConfig. Nothing is downloaded."""

from __future__ import annotations

from torch import nn

from flairkit.config import ModelConfig
from flairkit.modalities import INPUT_MODALITIES, Modality, Task
from flairkit.models.decoders import build_decoder
from flairkit.models.encoders import build_encoder
from flairkit.models.fusion import MultiScaleFusion
from flairkit.models.segmenter import MultiModalSegmenter, aux_key
from flairkit.models.utae import UTAE, fused_out_conv, fused_utae_widths


def split_arch(arch: str) -> tuple[str, str]:
    """``"<encoder>-<decoder>"`` -> (encoder, decoder); the decoder is after the last ``-``."""
    encoder, _, decoder = arch.rpartition("-")
    if not encoder or not decoder:
        raise ValueError(f"arch {arch!r} is not '<encoder>-<decoder>'")
    return encoder, decoder


def canonical_order(modalities: list[Modality] | tuple[Modality, ...]) -> list[Modality]:
    """Inputs in the reference's order: aerial, historical, DEM, SPOT, S2, S1 asc, S1 desc."""
    return sorted(modalities, key=INPUT_MODALITIES.index)


def build_model(cfg: ModelConfig, out_px: int | None = None) -> MultiModalSegmenter:
    """Build the multimodal segmenter a config describes.

    Args:
        cfg: the model configuration.
        out_px: default output size in pixels (label grid); default ``cfg.out_px``.

    Returns:
        A MultiModalSegmenter with random weights (or the local pretrained backbone weights of
        ``cfg.pretrained_path``).
    """
    encoder_name, decoder_name = split_arch(cfg.arch)
    inputs = canonical_order(list(cfg.inputs))
    mono = [m for m in inputs if not m.spec.is_time_series]
    series = [m for m in inputs if m.spec.is_time_series]
    num_classes_total = sum(cfg.tasks.values())

    encoders = {
        m: build_encoder(
            encoder_name,
            cfg.inputs[m],
            cfg.img_sizes[m],
            pretrained_path=cfg.pretrained_path,
            new_channels_init=cfg.new_channels_init,
        )
        for m in mono
    }
    widths_enc, widths_dec = list(cfg.utae.encoder_widths), list(cfg.utae.decoder_widths)
    if encoders:
        num_stages = len(next(iter(encoders.values())).out_channels)
        # The reference derives both from the configured encoder widths (spec section 6.1).
        widths_enc = widths_dec = fused_utae_widths(cfg.utae.encoder_widths, num_stages)
    out_conv = fused_out_conv(cfg.utae.out_conv, num_classes_total)
    temporal = {
        m: UTAE(
            cfg.inputs[m],
            encoder_widths=widths_enc,
            decoder_widths=widths_dec,
            out_conv=out_conv,
            str_conv_k=cfg.utae.str_conv_k,
            str_conv_s=cfg.utae.str_conv_s,
            str_conv_p=cfg.utae.str_conv_p,
            agg_mode=cfg.utae.agg_mode,
            encoder_norm=cfg.utae.encoder_norm,
            n_head=cfg.utae.n_head,
            d_model=cfg.utae.d_model,
            d_k=cfg.utae.d_k,
            padding_mode=cfg.utae.padding_mode,
        )
        for m in series
    }

    fusion = None
    heads: dict[Task, nn.Module] = {}
    if encoders:
        reference_channels = next(iter(encoders.values())).out_channels
        if len(inputs) > 1:
            in_channels = {
                m: _padded_channels(e.out_channels, len(reference_channels))
                for m, e in encoders.items()
            }
            in_channels.update(
                {
                    m: _padded_channels(u.out_channels, len(reference_channels))
                    for m, u in temporal.items()
                }
            )
            fusion = MultiScaleFusion(in_channels, reference_channels)
        for task, k in cfg.tasks.items():
            heads[task] = build_decoder(decoder_name, reference_channels, k)
    elif len(cfg.tasks) > 1:
        heads = {
            task: nn.Conv2d(num_classes_total, k, kernel_size=1) for task, k in cfg.tasks.items()
        }

    aux_heads: dict[str, nn.Module] = {}
    for m in canonical_order(list(cfg.aux_heads)):
        for task, k in cfg.tasks.items():
            if m in encoders:
                aux_heads[aux_key(m, task)] = build_decoder(
                    decoder_name, encoders[m].out_channels, k
                )
            else:
                aux_heads[aux_key(m, task)] = nn.Conv2d(num_classes_total, k, kernel_size=1)

    model = MultiModalSegmenter(
        encoders,
        temporal,
        fusion,
        heads,
        aux_heads,
        cfg.tasks,
        (out_px or cfg.out_px, out_px or cfg.out_px),
        cfg.modality_dropout,
    )
    model.config = cfg  # the recipe travels with the weights
    return model


def _padded_channels(channels: list[int] | tuple[int, ...], num_stages: int) -> list[int]:
    """Channels once the fusion repeats the first map up to ``num_stages`` maps (``_pad_front``)."""
    channels = list(channels)
    return [channels[0]] * (num_stages - len(channels)) + channels
