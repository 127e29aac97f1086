"""The 24 FLAIR-HUB benchmark models (dataset card and README, spec section 6.3), as plain data.

Each preset names its inputs and task; ``preset_model_fields`` gives the ModelConfig fields of
the benchmark's network: channels (aerial and SPOT: NIR, R, G; DEM: DSM and DSM - DTM), native
patch sizes and the Swin-B window-12 384 UPerNet. ``card_para_m`` is the card's PARA column
(millions), which counts neither the fusion 1x1 convolutions and includes one auxiliary decoder
per input of multi-input models (``shared/reference-params.md``).

Plain data on purpose: the config layer reads it to expand ``model.preset`` without importing
torch or ``flairkit.models`` (``config.recipe.preset_config`` builds the ModelConfig).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flairkit.modalities import Modality, Task

A, H, D, P = Modality.AERIAL_RGBI, Modality.AERIAL_PAN, Modality.DEM_ELEV, Modality.SPOT_RGBI
S2, S1A, S1D = Modality.SENTINEL2_TS, Modality.SENTINEL1_ASC_TS, Modality.SENTINEL1_DESC_TS

#: Channels each input feeds in the benchmark (spec sections 2.5, 5.1, 6.1).
BENCHMARK_CHANNELS = {A: 3, H: 1, D: 2, P: 3, S2: 10, S1A: 2, S1D: 2}
#: Patch side in pixels of each input for a 102.4 m patch (spec section 2.1).
BENCHMARK_IMG_SIZES = {A: 512, H: 256, D: 512, P: 64, S2: 10, S1A: 10, S1D: 10}
#: Classes per task (COSIA 19; LPIS level 1, 23).
BENCHMARK_CLASSES = {Task.COSIA: 19, Task.LPIS: 23}


@dataclass(frozen=True)
class Preset:
    """One benchmark model of the dataset card.

    Attributes:
        model_id: e.g. ``LC-D``.
        inputs: input modalities, in the reference's order.
        task: the supervised task.
        card_para_m: the card's parameter count, millions.
        card_epochs: epochs trained (card).
        card_oa: overall accuracy published (%).
        card_miou: mIoU published (%).
    """

    model_id: str
    inputs: tuple[Modality, ...]
    task: Task
    card_para_m: float
    card_epochs: int
    card_oa: float
    card_miou: float


def _p(
    mid: str, inputs: tuple[Modality, ...], para: float, ep: int, oa: float, miou: float
) -> Preset:
    task = Task.COSIA if mid.startswith("LC") else Task.LPIS
    return Preset(mid, inputs, task, para, ep, oa, miou)


PRESETS: dict[str, Preset] = {
    p.model_id: p
    for p in (
        _p("LC-A", (A,), 89.4, 79, 77.5, 64.1),
        _p("LC-B", (A, D), 181.4, 124, 78.1, 65.1),
        _p("LC-C", (A, D, P), 270.6, 129, 78.2, 65.2),
        _p("LC-D", (A, S2), 93.9, 85, 77.6, 64.7),
        _p("LC-E", (A, S1A, S1D), 95.8, 98, 77.7, 64.5),
        _p("LC-F", (A, S2, S1A, S1D), 97.7, 64, 77.7, 64.9),
        _p("LC-G", (S2,), 0.9, 89, 57.8, 34.2),
        _p("LC-H", (S1A, S1D), 1.8, 106, 54.5, 28.2),
        _p("LC-I", (P,), 89.2, 94, 64.1, 43.5),
        _p("LC-J", (D,), 89.4, 97, 67.4, 51.2),
        _p("LC-K", (A, H), 181.4, 45, 77.6, 64.3),
        _p("LC-L", (A, D, P, S2, S1A, S1D), 276.4, 121, 78.2, 65.8),
        _p("LC-ALL", (A, H, D, P, S2, S1A, S1D), 365.8, 129, 78.2, 65.6),
        _p("LPIS-A", (A,), 89.4, 91, 86.6, 24.4),
        _p("LPIS-B", (A, P), 181.2, 99, 87.1, 26.1),
        _p("LPIS-C", (A, S2), 93.9, 100, 87.5, 29.8),
        _p("LPIS-D", (A, S2, S1A, S1D), 97.7, 45, 88.0, 36.1),
        _p("LPIS-E", (A, P, S2), 183.1, 46, 87.6, 30.3),
        _p("LPIS-F", (S2,), 0.9, 61, 85.3, 23.8),
        _p("LPIS-G", (S1A, S1D), 1.8, 77, 84.5, 18.1),
        _p("LPIS-H", (S2, S1A, S1D), 2.8, 61, 84.9, 23.8),
        _p("LPIS-I", (P, S2, S1A, S1D), 97.5, 49, 87.2, 39.2),
        _p("LPIS-J", (A, P, S2, S1A, S1D), 186.9, 53, 88.0, 35.4),
        _p("LPIS-K", (P,), 89.2, 14, 84.5, 15.1),
    )
}


def get_preset(model_id: str) -> Preset:
    """A preset by id (case-insensitive).

    Raises:
        KeyError: unknown id; the message lists the valid ones.
    """
    key = model_id.strip().upper()
    if key not in PRESETS:
        raise KeyError(f"unknown preset {model_id!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[key]


def preset_model_fields(model_id: str, aux: bool = True) -> dict[str, Any]:
    """The ModelConfig fields (inputs, img_sizes, tasks, aux_heads) of a benchmark model.

    Args:
        model_id: e.g. ``LC-D`` (case-insensitive).
        aux: one auxiliary head per input for multi-input models, as the published weights
            and the card's counts have them (single-input models never have one).

    Raises:
        KeyError: unknown id; the message lists the valid ones.
    """
    preset = get_preset(model_id)
    return {
        "inputs": {m: BENCHMARK_CHANNELS[m] for m in preset.inputs},
        "img_sizes": {m: BENCHMARK_IMG_SIZES[m] for m in preset.inputs},
        "tasks": {preset.task: BENCHMARK_CLASSES[preset.task]},
        "aux_heads": preset.inputs if aux and len(preset.inputs) > 1 else (),
    }
