"""registry.py: file sink (atomic replace) and http sink against a real local HTTP server."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout.config import RegistryConfig
from quorum_rollout.registry import RECORD_FIELDS, Registry, RegistryError

RECORD = {"group": "intel-a", "version": "2.4", "state": "current", "release_id": "r-7"}


@dataclass
class Sink:
    """A real registry endpoint on 127.0.0.1: answers `statuses` in order (the last repeats)."""

    url: str
    statuses: list[int] = field(default_factory=lambda: [204])
    received: list[dict[str, Any]] = field(default_factory=list)

    def next_status(self) -> int:
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


@pytest.fixture()
def sink() -> Iterator[Sink]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = target.next_status()
            target.received.append({"path": self.path, "status": status, "body": json.loads(body),
                                    "headers": dict(self.headers.items())})
            data = b"" if status == 204 else b'{"error": "nope"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    target = Sink(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def http_registry(url: str, **kw: Any) -> Registry:
    return Registry(RegistryConfig(type="http", url=url, **{"timeout": 2.0, **kw}), backoff=0.01)


def test_none_is_a_no_op(tmp_path: Path) -> None:
    sent = Registry(RegistryConfig()).report(dict(RECORD))
    assert sent["group"] == "intel-a" and list(tmp_path.iterdir()) == []


def test_file_sink_writes_latest_record_atomically(tmp_path: Path) -> None:
    path = tmp_path / "registry" / "intel-a.json"
    registry = Registry(RegistryConfig(type="file", path=str(path)))
    registry.report({**RECORD, "state": "rolling", "batch": 1})
    first = json.loads(path.read_text())
    assert first["state"] == "rolling" and first["batch"] == 1 and set(RECORD_FIELDS) <= set(first)
    assert first["updated_at"].endswith("Z") and datetime.fromisoformat(first["updated_at"][:-1])
    registry.report({**RECORD, "updated_at": "2026-01-01T00:00:00Z"})
    latest = json.loads(path.read_text())
    assert latest == {**RECORD, "updated_at": "2026-01-01T00:00:00Z"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["intel-a.json"]  # no temporary file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_file_sink_readers_never_see_a_partial_record(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    registry = Registry(RegistryConfig(type="file", path=str(path)))
    registry.report({**RECORD, "n": 0, "padding": "x" * 50_000})
    stop, bad = threading.Event(), []

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                bad.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 150):
            registry.report({**RECORD, "n": n, "padding": "x" * 50_000})
    finally:
        stop.set()
        thread.join(timeout=10)
    assert bad == [] and json.loads(path.read_text())["n"] == 149
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_file_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(RegistryError, match="cannot write the record"):
        Registry(RegistryConfig(type="file", path=str(blocker / "x.json"))).report(dict(RECORD))


def test_http_sink_puts_json_with_token(tmp_path: Path, sink: Sink) -> None:
    token = tmp_path / "registry.token"
    token.write_text("registry-token-0123456789\n")
    os.chmod(token, 0o600)
    http_registry(sink.url + "/groups/intel-a", token_file=str(token)).report({**RECORD, "failed_host": None})
    (got,) = sink.received
    assert got["path"] == "/groups/intel-a" and got["headers"]["Authorization"] == "Bearer registry-token-0123456789"
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["body"]["release_id"] == "r-7" and "updated_at" in got["body"] and "failed_host" in got["body"]


def test_http_sink_without_token(sink: Sink) -> None:
    http_registry(sink.url).report(dict(RECORD))
    assert "Authorization" not in sink.received[0]["headers"]


def test_http_sink_retries_a_500(sink: Sink) -> None:
    sink.statuses = [500, 200]
    http_registry(sink.url, retries=3).report(dict(RECORD))
    assert [r["status"] for r in sink.received] == [500, 200]


def test_http_sink_gives_up(sink: Sink) -> None:
    sink.statuses = [500]
    with pytest.raises(RegistryError) as info:
        http_registry(sink.url, retries=3).report(dict(RECORD))
    assert len(sink.received) == 3
    assert str(info.value).startswith(f"registry {sink.url}: PUT failed after 3 attempts: HTTP 500")


def test_http_sink_does_not_retry_a_client_error(sink: Sink) -> None:
    sink.statuses = [403]
    with pytest.raises(RegistryError, match="after 1 attempt: HTTP 403"):
        http_registry(sink.url, retries=3).report(dict(RECORD))
    assert len(sink.received) == 1


def test_http_sink_unreachable_and_bad_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RegistryError, match="after 2 attempts: ConnectionError"):
        http_registry(url, retries=2).report(dict(RECORD))
    token = tmp_path / "open.token"
    token.write_text("registry-token-0123456789")
    os.chmod(token, 0o644)
    with pytest.raises(RegistryError, match="chmod 600"):
        http_registry(url, token_file=str(token)).report(dict(RECORD))
