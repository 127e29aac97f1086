"""The Hugging Face hub, through ``huggingface_hub`` only: model files and dataset listings.

Nothing here runs unless the user gave a hub id (``hf:...``) or asked for a download. The
client's own rules apply: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1``
(cached files only), ``HF_TOKEN``, revision pinning. ``HF_ENDPOINT`` is read when a call is made
(the client reads it once, at import), so a process can point at a mirror or a local stand-in.
Every failure is a ``HubError`` with one line naming the repository, file and revision.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flairkit.model_ref import ModelRef, ModelRefError


class HubError(ValueError):
    """A hub file or listing cannot be had; the message names the repository and why."""


def endpoint() -> str | None:
    """The hub endpoint: ``HF_ENDPOINT`` as set now, else the client's default (None)."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def _where(repo_id: str, filename: str | None, revision: str | None, repo_type: str) -> str:
    kind = "dataset " if repo_type == "dataset" else ""
    at = f"@{revision}" if revision else ""
    file = f" file {filename}" if filename else ""
    return f"hf:{kind}{repo_id}{at}{file}"


def describe_hub_error(exc: BaseException, where: str) -> HubError:
    """One line for what the client raised (no traceback, no HTTP dump)."""
    from huggingface_hub import errors

    name = type(exc).__name__
    if isinstance(exc, errors.RepositoryNotFoundError | errors.GatedRepoError):
        reason = "no such repository, or it is private/gated (log in with `hf auth login`)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        reason = "no such revision (branch, tag or commit)"
    elif isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        # before EntryNotFoundError: the client's "not cached" is a subclass of it
        reason = (
            "not in the local hub cache and the hub cannot be reached "
            "(HF_HUB_OFFLINE=1, or no network)"
        )
    elif isinstance(exc, errors.EntryNotFoundError | errors.RemoteEntryNotFoundError):
        reason = "no such file in the repository"
    elif isinstance(exc, errors.HfHubHTTPError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else name
        reason = f"the hub answered an error: {first}"
    elif isinstance(exc, OSError):
        reason = f"cannot reach the hub or write the cache: {exc}"
    else:
        reason = f"{name}: {exc}"
    return HubError(f"{where}: {' '.join(reason.split())}")


def hub_file(
    repo_id: str,
    filename: str,
    revision: str | None = None,
    repo_type: str = "model",
    **kwargs: Any,
) -> Path:
    """A file of a hub repository, from the client's cache or downloaded into it.

    Args:
        repo_id: ``<org>/<name>``.
        filename: path inside the repository.
        revision: branch, tag or commit; None: the default branch.
        repo_type: ``model`` or ``dataset``.
        kwargs: passed to ``hf_hub_download`` (``cache_dir``, ``local_dir``, ``tqdm_class``...).

    Raises:
        HubError: the file cannot be had (names the repository, revision and file).
    """
    from huggingface_hub import hf_hub_download

    kwargs.setdefault("endpoint", endpoint())
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, repo_type=repo_type, **kwargs)
    except Exception as exc:  # the client raises many kinds; each becomes one line
        raise describe_hub_error(exc, _where(repo_id, filename, revision, repo_type)) from exc
    return Path(str(path))


def model_file(ref: ModelRef) -> Path:
    """The local weights file of a reference: the path itself, or the hub file (cached).

    A published repository holds ``<repo name>.safetensors`` at its root (spec section 7).

    Raises:
        HubError: a hub file that cannot be had.
        ModelRefError: a reference that is neither a file nor a hub id.
    """
    if ref.path is not None:
        return ref.path
    if ref.repo_id is None:
        raise ModelRefError(f"{ref.text}: neither a file nor a hub id")
    return hub_file(ref.repo_id, ref.hub_filename, ref.revision)
