"""Read torch pickles (``.ckpt``, ``.pt``, ``.pth``) without ever running code from them.

Every checkpoint flairkit reads goes through ``load_weights_only``: torch's weights-only
unpickler, which builds tensors and plain containers and refuses any other global. The flag is
always passed explicitly: torch honours ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only when a caller
leaves ``weights_only`` unset (Lightning's resume does, hence ``training.run.SafeCheckpointIO``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointReadError(ValueError):
    """A checkpoint file is damaged, not a torch pickle, or would run code when unpickled."""


def load_weights_only(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain data, whatever the environment says.

    Args:
        path: a file written by ``torch.save`` (or a plain pickle of tensors).
        map_location: as for ``torch.load``.
        mmap: map the tensors' storage instead of reading it (a cheap look at a large file).

    Returns:
        What the file holds.

    Raises:
        FileNotFoundError: no such file.
        CheckpointReadError: the file would build other objects (refused before any is built),
            or is empty, truncated or not a torch pickle; the message names the file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a file before refusing it: noise
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointReadError(f"{path}: {describe_load_error(exc)}") from exc


def describe_load_error(exc: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's advice.

    torch's message suggests ``weights_only=False``, which would run the file's code: that is
    never the fix for a file of unknown origin, so the message is rewritten.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in text:
        match = re.search(r"GLOBAL ([\w.]+)", text)
        what = match[1] if match else "a Python object"
        return (
            f"refused: unpickling it would call or build {what}; flairkit reads only tensors "
            "and plain data from checkpoints and never runs code from a file"
        )
    if isinstance(exc, EOFError):
        return "empty or truncated file, not a readable checkpoint"
    if isinstance(exc, pickle.UnpicklingError) or "zip archive" in text:
        return "damaged, truncated or not a PyTorch checkpoint (it does not unpickle)"
    first = " ".join(text.split()).split(". ")[0] or type(exc).__name__
    return f"not a readable PyTorch checkpoint ({first})"
