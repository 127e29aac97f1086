"""The network side of a map: model files, the inference network, devices, batches in, probabilities out.

``load_zone_model`` reads a model (a flairkit file, a published FLAIR-HUB file or a hub id)
and hashes its file for the resume fingerprint; ``inference_network`` drops what a map does not use (auxiliary heads, other
tasks' heads); ``TilePredictor`` runs batches under ``torch.inference_mode`` (autocast on GPUs,
NHWC memory order) and returns softmax probabilities as numpy float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flairkit.config import ConfigError, ModelConfig, PreprocessConfig
from flairkit.modalities import Modality, Task
from flairkit.models.segmenter import MultiModalSegmenter
from flairkit.sample import Batch


@dataclass(frozen=True)
class ZoneModel:
    """A model file's network and recipe.

    Attributes:
        network: the network, taking ``(Batch, out_size)`` and returning logits per task; None
            when only the recipe was read (merging pieces needs no network).
        config: the ModelConfig the file was trained with.
        preprocess: its PreprocessConfig.
        digest: SHA-256 of the model file (part of the resume fingerprint).
    """

    network: nn.Module | None
    config: ModelConfig
    preprocess: PreprocessConfig
    digest: str


def file_digest(path: str | Path, chunk_bytes: int = 2**22) -> str:
    """SHA-256 of a file, read in chunks (a Swin-B file of 350 MB takes about a second)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            sha.update(chunk)
    return sha.hexdigest()


def load_zone_model(
    ref: str | Path, with_network: bool = True, preset: str | None = None
) -> ZoneModel:
    """Read a model for mapping: a flairkit file, a published FLAIR-HUB file or a hub id.

    Args:
        ref: the model reference (``ZoneConfig.model``); a hub id is fetched into the hub cache.
        with_network: build the network and load its weights; False reads only the recipe.
        preset: the preset of a published file whose name does not tell it.

    Returns:
        The network (eval mode) or None, the recipe and the local file's digest.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a model file (``models.official.WeightsError``), a bad reference or a
            hub file not to be had.
    """
    # the loaders of test and predict too: one way to read a model
    from flairkit.checkpoint import load_model, read_model_recipe, resolve_model_ref
    from flairkit.model_ref import HUB_PREFIX

    if not str(ref).startswith(HUB_PREFIX) and not Path(ref).is_file():
        raise FileNotFoundError(f"{ref}: model file not found (config key: model)")
    parsed, path = resolve_model_ref(ref, preset)
    network: MultiModalSegmenter | None = None
    if with_network:
        network, preprocess = load_model(parsed)
        model_config = network.config
    else:
        model_config, preprocess = read_model_recipe(parsed)
    return ZoneModel(network, model_config, preprocess, file_digest(path))


def inference_network(network: nn.Module, task: Task) -> nn.Module:
    """The network without what a map does not use: auxiliary heads and other tasks' heads.

    A ``MultiModalSegmenter`` is rewired around the same submodules (shared, not copied; the
    caller's wiring is untouched); any other module is returned as is.
    """
    if not isinstance(network, MultiModalSegmenter):
        return network
    # Time series alone with one task have no head: the U-TAE logits are the output.
    heads = {Task(k): h for k, h in network.heads.items() if Task(k) is task}
    pruned = MultiModalSegmenter(
        {Modality(k): e for k, e in network.encoders.items()},
        {Modality(k): e for k, e in network.temporal.items()},
        network.fusion,
        heads,
        {},
        network.tasks,
        network.out_size,
    )
    config = getattr(network, "config", None)  # absent on a network not from build_model
    if config is not None:
        pruned.config = config
    return pruned.eval()


def resolve_device(device: str) -> torch.device:
    """The torch device for ``auto``/``cpu``/``cuda`` (torchrun's ``LOCAL_RANK`` picks the GPU).

    Raises:
        ConfigError: ``cuda`` without a GPU.
    """
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("runtime.device: cuda requested but no GPU is available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``auto`` and the device.

    Raises:
        ConfigError: fp16 on a CPU.
    """
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("runtime.precision: fp16 needs a GPU; use fp32 or bf16 on a CPU")
    return precision


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """The configured batch size, or 1 on a CPU and 8 on a GPU."""
    if batch_size is not None:
        return batch_size
    return 8 if device.type == "cuda" else 1


class TilePredictor:
    """Batches in, softmax probabilities of one task out, as numpy float32 on the host.

    Args:
        network: the (pruned) network.
        task: the mapped task.
        tile_px: output side of a tile (the model's ``out_size``).
        device: where the network runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        channels_last: NHWC memory order for the 4-D inputs and the weights.
    """

    def __init__(
        self,
        network: nn.Module,
        task: Task,
        tile_px: int,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = True,
    ) -> None:
        self.network = network.to(device).eval()
        if channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.task = task
        self.tile_px = tile_px
        self.device = device
        self.channels_last = channels_last
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        self.autocast_dtype = dtypes.get(precision)
        self.calls = 0

    def _prepare(self, batch: Batch) -> Batch:
        batch = batch.to(self.device) if self.device.type != "cpu" else batch
        if not self.channels_last:
            return batch
        inputs = {
            m: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            for m, x in batch.inputs.items()
        }
        return dataclasses.replace(batch, inputs=inputs)

    def __call__(self, batch: Batch) -> np.ndarray:
        """``(B, K, tile_px, tile_px)`` float32 probabilities."""
        batch = self._prepare(batch)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self.network(batch, (self.tile_px, self.tile_px))[self.task]
            # NCHW before the softmax: on NHWC logits (channels_last) it is 2x slower on CPU,
            # and the blender reads each class plane, which must be contiguous to be fast.
            probs = torch.softmax(logits.float().contiguous(), dim=1)
        self.calls += 1
        return probs.cpu().numpy()
