"""A local stand-in for the Hugging Face Hub, for tests that must not touch the network.

It serves, on 127.0.0.1, the endpoints the real ``huggingface_hub`` client calls to list a
repository and to download a file, so tests exercise the client itself (its cache, revisions,
resumed downloads) rather than a mock of it:

- ``GET /api/{models|datasets}/<repo>[/revision/<rev>]``: repository info with ``siblings``
  (size, and for LFS files the sha256), as ``model_info``/``dataset_info(files_metadata=True)``
  read it.
- ``GET /api/{models|datasets}/<repo>/tree/<rev>[/<path>]``: the listing of ``list_repo_tree``
  (``recursive`` honoured).
- ``HEAD``/``GET /[datasets/]<repo>/resolve/<rev>/<path>``: the file, with the commit, ETag
  and size headers ``hf_hub_download`` checks, and byte ranges (``Range: bytes=N-``) so an
  interrupted download resumes.

Files at or above ``lfs_threshold`` bytes are presented as LFS files (``X-Linked-Etag`` is their
sha256), smaller ones as regular git files (ETag a git blob id), as the real hub does. Every
request is recorded in ``requests`` (method, path, Range header) so tests can assert what was
fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class HubRepo:
    """One repository: its files (path -> bytes) at one commit."""

    files: dict[str, bytes]
    commit: str = "0" * 40
    revisions: tuple[str, ...] = ("main",)


@dataclass
class StandInHub:
    """The served repositories, keyed by ``(repo_type, repo_id)`` with repo_type ``model`` or
    ``dataset``; ``endpoint`` is set once the server runs."""

    repos: dict[tuple[str, str], HubRepo] = field(default_factory=dict)
    lfs_threshold: int = 1024
    endpoint: str = ""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    fail_after_bytes: dict[str, int] = field(default_factory=dict)
    #: path -> how many GETs still serve damaged bytes (same length, one byte changed) while
    #: the listing and headers describe the good file
    corrupt: dict[str, int] = field(default_factory=dict)

    def add(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> HubRepo:
        commit = hashlib.sha1(repr(sorted((k, len(v)) for k, v in files.items())).encode())
        repo = HubRepo(dict(files), commit.hexdigest())
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def downloads(self, path_suffix: str) -> list[str | None]:
        """The Range headers of the GETs of files whose URL path ends with ``path_suffix``."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(path_suffix)]


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sibling(hub: StandInHub, path: str, data: bytes) -> dict:
    entry: dict = {"rfilename": path, "size": len(data), "blobId": _git_blob_id(data)}
    if len(data) >= hub.lfs_threshold:
        sha = hashlib.sha256(data).hexdigest()
        entry["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": 134}
    return entry


def _tree_entries(hub: StandInHub, repo: HubRepo, prefix: str, recursive: bool) -> list[dict]:
    prefix = prefix.strip("/")
    out: list[dict] = []
    folders: set[str] = set()
    for path, data in sorted(repo.files.items()):
        if prefix and not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) + 1 :] if prefix else path
        parts = rest.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(([prefix] if prefix else []) + parts[:depth])
            if folder not in folders and (recursive or depth == 1):
                folders.add(folder)
                out.append(
                    {
                        "type": "directory",
                        "oid": _git_blob_id(folder.encode()),
                        "size": 0,
                        "path": folder,
                    }
                )
        if len(parts) > 1 and not recursive:
            continue
        entry: dict = {"type": "file", "oid": _git_blob_id(data), "size": len(data), "path": path}
        if len(data) >= hub.lfs_threshold:
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        out.append(entry)
    return out


_API = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?")
_RESOLVE = re.compile(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _json(self, payload: object) -> None:
            body = json.dumps(payload).encode()
            self._send(
                200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
            )

        def _not_found(self, what: str) -> None:
            body = json.dumps({"error": f"{what} not found"}).encode()
            self._send(
                404,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "X-Error-Code": "EntryNotFound",
                },
                body,
            )

        def _repo(self, kind: str, repo_id: str, revision: str) -> HubRepo | None:
            """The repository, or None after answering 404 as the hub does (its error codes
            tell the client a missing repository from a missing revision)."""
            repo = hub.repos.get((kind, repo_id))
            if repo is None:
                self._send(404, {"X-Error-Code": "RepoNotFound", "Content-Length": "0"})
                return None
            if revision not in repo.revisions and revision != repo.commit:
                self._send(404, {"X-Error-Code": "RevisionNotFound", "Content-Length": "0"})
                return None
            return repo

        def _serve(self, head: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            api = _API.fullmatch(path)
            if api is not None:
                kind = api[1][:-1]
                revision = unquote(api[4]) if api[4] else "main"
                repo = self._repo(kind, api[2], revision)
                if repo is None:
                    return
                if api[3] == "tree":
                    recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                    self._json(_tree_entries(hub, repo, api[5] or "", recursive))
                else:
                    siblings = [_sibling(hub, p, d) for p, d in sorted(repo.files.items())]
                    self._json(
                        {"id": api[2], "sha": repo.commit, "siblings": siblings, "private": False}
                    )
                return
            resolve = _RESOLVE.fullmatch(path)
            if resolve is None:
                self._not_found(path)
                return
            kind = "dataset" if resolve[1] else "model"
            repo = self._repo(kind, resolve[2], unquote(resolve[3]))
            if repo is None:
                return
            data = repo.files.get(resolve[4])
            if data is None:
                self._not_found(resolve[4])
                return
            headers = {
                "X-Repo-Commit": repo.commit,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            if len(data) >= hub.lfs_threshold:
                headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = f'"{_git_blob_id(data)}"'
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            status = 200
            if match is not None and not head:
                start = min(int(match[1]), len(data))
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if not head and hub.corrupt.get(resolve[4], 0) > 0:
                hub.corrupt[resolve[4]] -= 1
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            body = data[start:]
            headers["Content-Length"] = str(len(data) if head else len(body))
            if head:
                self._send(200, headers)
                return
            cut = hub.fail_after_bytes.pop(resolve[4], None)
            if cut is not None:  # a connection dropped mid-file, once
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, headers, body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response (the dropped-connection test, a retry) is normal
        # here; anything else is printed as usual.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextmanager
def serve(hub: StandInHub) -> Iterator[StandInHub]:
    """Run the stand-in hub on a free port of 127.0.0.1 while the block runs."""
    server = _Server(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
