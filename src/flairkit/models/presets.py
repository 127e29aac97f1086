"""Parameter counts of the benchmark models; the preset tables themselves are plain data in
``flairkit.presets`` (re-exported here), their ModelConfig from ``config.preset_config``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from flairkit.config import preset_config
from flairkit.model_ref import HUB_PREFIX, PUBLISHED_REPOS, parse_repo_name
from flairkit.presets import (
    BENCHMARK_CHANNELS,
    BENCHMARK_CLASSES,
    BENCHMARK_IMG_SIZES,
    PRESETS,
    Preset,
    get_preset,
)

__all__ = [
    "BENCHMARK_CHANNELS",
    "BENCHMARK_CLASSES",
    "BENCHMARK_IMG_SIZES",
    "PRESETS",
    "Preset",
    "count_parameters",
    "describe_presets",
    "get_preset",
    "preset_config",
    "published_repos",
]


def published_repos(model_id: str) -> list[str]:
    """The hub ids (``hf:IGNF/...``) of IGN's published weights known for a preset."""
    key = get_preset(model_id).model_id
    return [
        f"{HUB_PREFIX}{repo}"
        for repo in PUBLISHED_REPOS
        if (named := parse_repo_name(repo)) is not None and named.model_id == key
    ]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts: ``total``, ``fusion`` (the 1x1 fusion convs) and ``card`` (total -
    fusion: the convention of the dataset card's PARA column)."""
    total = sum(p.numel() for p in model.parameters())
    fusion_module = getattr(model, "fusion", None)
    fusion = sum(p.numel() for p in fusion_module.parameters()) if fusion_module is not None else 0
    return {"total": total, "fusion": fusion, "card": total - fusion}


def describe_presets(model_ids: list[str] | None = None, progress: bool = False) -> list[dict]:
    """One row per preset: inputs, task, our parameter counts and the card's figures.

    Models are built on the ``meta`` device: counting the 24 presets allocates no weights.
    """
    import torch

    from flairkit.models.build import build_model

    ids = [get_preset(m).model_id for m in model_ids] if model_ids else list(PRESETS)
    iterator: Iterable[str] = ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(ids, desc="counting", unit="model", leave=False)
    rows = []
    for model_id in iterator:
        preset = PRESETS[model_id]
        with torch.device("meta"):
            counts = count_parameters(build_model(preset_config(model_id)))
        rows.append(
            {
                "id": model_id,
                "task": preset.task.value,
                "inputs": [m.value for m in preset.inputs],
                "params": counts["card"],
                "params_with_fusion": counts["total"],
                "card_para_m": preset.card_para_m,
                "diff_to_card_pct": round(
                    100 * (counts["card"] / 1e6 - preset.card_para_m) / preset.card_para_m, 2
                ),
                "card_oa": preset.card_oa,
                "card_miou": preset.card_miou,
                "card_epochs": preset.card_epochs,
                "published": published_repos(model_id),
            }
        )
    return rows
