"""MultiModalSegmenter: per-modality encoders, one fusion, one head per task. Wiring only.

The data flow reproduces the FLAIR-HUB reference model (spec section 6.1):

- each mono-temporal input (aerial, historical, DEM, SPOT) has its own image encoder, each
  time series (S2, S1 asc, S1 desc) its own U-TAE;
- with at least one mono-temporal input, the per-stage maps of every modality are fused
  (:class:`MultiScaleFusion`; a lone mono-temporal input is used as is) and a decoder per task
  gives the logits;
- with time series only, the U-TAE logits (resized to the output size) are averaged over the
  series; with several tasks a 1x1 convolution per task splits them;
- auxiliary heads (one per input and task) see one modality alone: an image decoder on that
  encoder's maps, or a 1x1 convolution on that U-TAE's logits;
- logits are resized bilinearly to the output size (the label grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flairkit.modalities import Modality, Task
from flairkit.models.fusion import MultiScaleFusion
from flairkit.sample import Batch

if TYPE_CHECKING:
    from flairkit.config import ModelConfig


def aux_key(modality: Modality, task: Task) -> str:
    """ModuleDict key of an auxiliary head (the reference's ``<MOD>__<TASK>``)."""
    return f"{modality.value}__{task.value}"


@dataclass
class SegmenterOutput:
    """Logits of one forward pass.

    Attributes:
        logits: per task, ``(B, K, H, W)`` at the output size.
        aux: per (modality, task) with an auxiliary head, ``(B, K, H, W)``.
    """

    logits: dict[Task, Tensor]
    aux: dict[tuple[Modality, Task], Tensor] = field(default_factory=dict)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MultiModalSegmenter(nn.Module):
    """Encoders, fusion and heads, built elsewhere (``models.build``) and wired here.

    Args:
        encoders: image encoders of the mono-temporal inputs, in canonical order; each
            returns a list of maps fine to coarse and has ``out_channels``.
        temporal: U-TAEs of the time-series inputs, in canonical order.
        fusion: the fusion module, or None when nothing is fused.
        heads: per task, an image decoder (mono-temporal models) or, for time-series-only
            models with several tasks, a 1x1 convolution.
        aux_heads: per ``aux_key(modality, task)``, an auxiliary head.
        tasks: classes per task, in output order.
        out_size: default output size (H, W) in pixels (the label grid).
        modality_dropout: probability of zeroing one modality's features in training.
    """

    #: The ModelConfig it was built from, set by ``build_model`` (travels with the weights).
    config: ModelConfig

    def __init__(
        self,
        encoders: Mapping[Modality, nn.Module],
        temporal: Mapping[Modality, nn.Module],
        fusion: MultiScaleFusion | None,
        heads: Mapping[Task, nn.Module],
        aux_heads: Mapping[str, nn.Module],
        tasks: Mapping[Task, int],
        out_size: tuple[int, int],
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m.value: e for m, e in encoders.items()})
        self.temporal = nn.ModuleDict({m.value: e for m, e in temporal.items()})
        self.fusion = fusion
        self.heads = nn.ModuleDict({t.value: h for t, h in heads.items()})
        self.aux_heads = nn.ModuleDict(dict(aux_heads))
        self.tasks = dict(tasks)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.modality_dropout = modality_dropout

    @property
    def modalities(self) -> list[Modality]:
        """Input modalities, mono-temporal first, in canonical order."""
        return [Modality(k) for k in (*self.encoders.keys(), *self.temporal.keys())]

    def forward(self, batch: Batch, out_size: tuple[int, int] | None = None) -> dict[Task, Tensor]:
        """Logits per task ``(B, K, H, W)`` at ``out_size`` (default: the configured one)."""
        return self.forward_all(batch, out_size, aux=False).logits

    def forward_all(
        self, batch: Batch, out_size: tuple[int, int] | None = None, aux: bool = True
    ) -> SegmenterOutput:
        """Main and auxiliary logits.

        Args:
            batch: inputs per modality; dates and pad masks for time series.
            out_size: output (H, W); default the configured label grid.
            aux: also run the auxiliary heads (``False``: ``aux`` of the output is empty).
        """
        height, width = out_size or self.out_size
        size = (int(height), int(width))
        features: dict[Modality, list[Tensor]] = {}
        series_logits: dict[Modality, Tensor] = {}
        aux_logits: dict[tuple[Modality, Task], Tensor] = {}
        for key, encoder in self.encoders.items():
            m = Modality(key)
            features[m] = encoder(batch.inputs[m])
        for key, utae in self.temporal.items():
            m = Modality(key)
            logits, maps = utae(batch.inputs[m], batch.dates[m], batch.pad_masks.get(m))
            series_logits[m] = _resize(logits, size)
            features[m] = maps
        for m in features if aux else ():
            for task in self.tasks:
                head = (
                    self.aux_heads[aux_key(m, task)] if aux_key(m, task) in self.aux_heads else None
                )
                if head is None:
                    continue
                source = series_logits[m] if m in series_logits else features[m]
                aux_logits[(m, task)] = _resize(head(source), size)

        if self.encoders:
            if self.training and self.modality_dropout > 0 and len(features) > 1:
                features = self._drop_modalities(features)
            fused = (
                self.fusion(features) if self.fusion is not None else next(iter(features.values()))
            )
            logits = {Task(k): _resize(head(fused), size) for k, head in self.heads.items()}
        else:
            stacked = list(series_logits.values())
            if self.training and self.modality_dropout > 0 and len(stacked) > 1:
                kept = self._drop_modalities({m: [x] for m, x in series_logits.items()})
                stacked = [maps[0] for maps in kept.values()]
            fused = torch.stack(stacked).mean(0) if len(stacked) > 1 else stacked[0]
            if len(self.tasks) > 1:
                logits = {Task(k): head(fused) for k, head in self.heads.items()}
            else:
                logits = {next(iter(self.tasks)): fused}
        return SegmenterOutput(logits, aux_logits)

    def _drop_modalities(
        self, features: dict[Modality, list[Tensor]]
    ) -> dict[Modality, list[Tensor]]:
        """Zero each modality's maps with probability p, per sample; one modality always stays.

        The reference replaces maps by random tensors with a probability drawn anew each step
        (spec section 10, #15); zeros with a fixed probability are easier to reason about and
        keep the fused statistics bounded.
        """
        mods = list(features)
        batch = next(iter(features.values()))[0].shape[0]
        device = next(iter(features.values()))[0].device
        drop = torch.rand(batch, len(mods), device=device) < self.modality_dropout  # (B, M)
        all_dropped = drop.all(dim=1)
        if all_dropped.any():  # keep one random modality for those samples
            keep = torch.randint(len(mods), (batch,), device=device)
            drop[all_dropped, keep[all_dropped]] = False
        out = {}
        for j, m in enumerate(mods):
            keep = (~drop[:, j]).to(features[m][0].dtype).view(-1, 1, 1, 1)
            out[m] = [f * keep for f in features[m]]
        return out
