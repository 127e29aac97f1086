"""Model references: what a user may write where a model is expected, parsed without I/O.

A reference is a local file (a flairkit ``.safetensors``, a ``flairkit fit`` ``.ckpt``, or a
published FLAIR-HUB ``.safetensors`` / ``.ckpt`` / ``.pth``) or a Hugging Face id
``hf:<org>/<repo>[@<revision>]``. IGN names its published repositories
``FLAIR-HUB_<ModelID>[_<RGB|IR>]_<encoder>-<decoder>`` (or ``..._utae`` for the time-series
models; ``shared/flairhub-format.md`` section 7), so the preset of a hub model is read from its
name. Resolving a reference (download, loading) happens elsewhere; this module only parses and
is plain data, so configs and the CLI can check a reference before torch is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flairkit.presets import PRESETS

HUB_PREFIX = "hf:"

#: Published repositories known from IGN's collection and model cards (spec section 7).
PUBLISHED_REPOS: tuple[str, ...] = (
    "IGNF/FLAIR-HUB_LC-A_RGB_swintiny-upernet",
    "IGNF/FLAIR-HUB_LC-A_RGB_swinsmall-upernet",
    "IGNF/FLAIR-HUB_LC-A_RGB_swinbase-upernet",
    "IGNF/FLAIR-HUB_LC-A_RGB_swinlarge-upernet",
    "IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet",
    "IGNF/FLAIR-HUB_LC-A_IR_swinlarge-upernet",
    "IGNF/FLAIR-HUB_LC-A_IR_convnextv2tiny-upernet",
    "IGNF/FLAIR-HUB_LC-A_IR_convnextv2base-upernet",
    "IGNF/FLAIR-HUB_LC-A_IR_convnextv2base-unet",
    "IGNF/FLAIR-HUB_LC-F_swinbase-upernet",
    "IGNF/FLAIR-HUB_LC-G_utae",
    "IGNF/FLAIR-HUB_LC-I_swinbase-upernet",
    "IGNF/FLAIR-HUB_LPIS-F_utae",
    "IGNF/FLAIR-HUB_LPIS-J_swinbase-upernet",
)

_REPO_NAME = re.compile(
    r"FLAIR-HUB_(?P<model_id>(?:LC|LPIS)-[A-Z]+)"
    r"(?:_(?P<channels>RGB|IR))?"
    r"_(?:(?P<encoder>[a-z0-9]+)-(?P<decoder>[a-z0-9]+)|(?P<utae>utae))"
)
# Hugging Face repo ids: <namespace>/<name>, letters, digits, '-', '_', '.'; revision any
# branch, tag or commit without spaces.
_HUB_ID = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^\s@]+))?")


class ModelRefError(ValueError):
    """A model reference that cannot be parsed; the message names it and says why."""


@dataclass(frozen=True)
class RepoName:
    """What IGN's repository naming tells about a published model.

    Attributes:
        model_id: the benchmark preset (``LC-A``).
        channels: ``IR`` (NIR, R, G) or ``RGB`` for the aerial input; None when not named.
        encoder: the encoder token (``swinbase``, ``convnextv2tiny``, ``utae``).
        decoder: the decoder token (``upernet``, ``unet``); None for U-TAE models.
    """

    model_id: str
    channels: Literal["IR", "RGB"] | None
    encoder: str
    decoder: str | None


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference.

    Attributes:
        text: what the user wrote.
        path: the local file (None for a hub id).
        repo_id: the hub repository (None for a file).
        revision: the hub revision (branch, tag or commit); None: the default branch.
        preset: the benchmark preset, given or read from the repository name; None if unknown.
    """

    text: str
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    preset: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def hub_filename(self) -> str:
        """The weights file in a published repository: ``<repo name>.safetensors``."""
        if self.repo_id is None:
            raise ModelRefError(f"{self.text}: not a hub id")
        return f"{self.repo_id.rsplit('/', 1)[1]}.safetensors"


def model_name(text: str | Path) -> str:
    """A short name of a reference for messages: the repository name or the file name."""
    raw = str(text).strip()
    if raw.startswith(HUB_PREFIX):
        return raw[len(HUB_PREFIX) :].split("@", 1)[0].rsplit("/", 1)[-1]
    return Path(raw).name


def parse_repo_name(name: str) -> RepoName | None:
    """Read IGN's naming of a published repository (``IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet``
    or a file stem of that form); None when the name does not follow it or names no preset."""
    stem = name.rsplit("/", 1)[-1]
    match = _REPO_NAME.fullmatch(stem)
    if match is None or match["model_id"] not in PRESETS:
        return None
    channels: Literal["IR", "RGB"] | None = (
        "IR" if match["channels"] == "IR" else "RGB" if match["channels"] == "RGB" else None
    )
    if match["utae"]:
        return RepoName(match["model_id"], channels, "utae", None)
    return RepoName(match["model_id"], channels, match["encoder"], match["decoder"])


def parse_model_ref(text: str | Path, preset: str | None = None) -> ModelRef:
    """Parse what a user gave as a model.

    Args:
        text: a file path, or ``hf:<org>/<repo>[@<revision>]``.
        preset: the benchmark preset of a published file, when the user names it; otherwise it
            is read from a hub repository's or file's name where IGN's naming allows.

    Raises:
        ModelRefError: a malformed hub id, an unknown preset, or a preset that contradicts the
            repository name.
    """
    raw = str(text).strip()
    given = None
    if preset is not None:
        given = preset.strip().upper()
        if given not in PRESETS:
            raise ModelRefError(f"{raw}: unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if raw.startswith(HUB_PREFIX):
        match = _HUB_ID.fullmatch(raw[len(HUB_PREFIX) :])
        if match is None:
            raise ModelRefError(
                f"{raw}: expected hf:<org>/<repo>[@<revision>], "
                "e.g. hf:IGNF/FLAIR-HUB_LC-A_IR_swinbase-upernet"
            )
        named = parse_repo_name(match["repo"])
        return ModelRef(
            raw,
            repo_id=match["repo"],
            revision=match["revision"],
            preset=_agree(raw, given, named),
        )
    if not raw:
        raise ModelRefError("empty model reference")
    path = Path(raw).expanduser()
    return ModelRef(raw, path=path, preset=_agree(raw, given, parse_repo_name(path.stem)))


def _agree(text: str, given: str | None, named: RepoName | None) -> str | None:
    if given is not None and named is not None and named.model_id != given:
        raise ModelRefError(
            f"{text}: the name says preset {named.model_id}, but preset {given} was given"
        )
    return given or (named.model_id if named is not None else None)
