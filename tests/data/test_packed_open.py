"""Opening a pack folder survives litdata's unlocked cache clearing (a DDP-rank race)."""

from __future__ import annotations

import errno

import litdata
import pytest

from flairkit.data import packed


def test_a_cache_clearing_race_is_retried_and_other_errors_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def flaky(url: str) -> str:
        calls.append(url)
        if len(calls) == 1:  # the other rank was recreating the cache folder meanwhile
            raise OSError(errno.ENOTEMPTY, "Directory not empty", "/tmp/litdata-x/hash")
        return f"dataset of {url}"

    monkeypatch.setattr(litdata, "StreamingDataset", flaky)
    monkeypatch.setattr(packed.time, "sleep", lambda s: None)
    assert packed._open_streaming("local:/packs/a") == "dataset of local:/packs/a"
    assert calls == ["local:/packs/a"] * 2

    def broken(url: str) -> str:
        calls.append(url)
        raise OSError(errno.EACCES, "Permission denied", url)

    calls.clear()
    monkeypatch.setattr(litdata, "StreamingDataset", broken)
    with pytest.raises(PermissionError):
        packed._open_streaming("local:/packs/b")
    assert len(calls) == 1  # not a race: no retry

    def always(url: str) -> str:
        calls.append(url)
        raise OSError(errno.ENOTEMPTY, "Directory not empty", url)

    calls.clear()
    monkeypatch.setattr(litdata, "StreamingDataset", always)
    with pytest.raises(OSError, match="not empty"):
        packed._open_streaming("local:/packs/c", attempts=3)
    assert len(calls) == 3
