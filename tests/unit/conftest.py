"""Shared fixtures for the agent's unit tests.

`make_mirror()` starts a real `ThreadingHTTPServer` on 127.0.0.1 (port 0) serving a temp dir,
with per-path misbehaviours (see `Behaviour`), a log of every request and a byte counter.
Every server a test starts is stopped when the test ends.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pytest

if TYPE_CHECKING:
    RangeServer = Callable[[Path, str | None], tuple[int, dict[str, str], BinaryIO | None, int]]


@dataclass
class Behaviour:
    """How the mirror answers one path; the default serves the file with Range support."""

    status: int | None = None  # answer this status with `body` instead of the file
    body: bytes = b""
    content_type: str = "application/octet-stream"
    cut_after: int | None = None  # announce the full length, send this many body bytes, drop the connection
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    extra: int = 0  # append this many junk bytes after the file
    declare_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    delay: float = 0.0  # seconds to wait before answering (simulated latency)
    trickle: float = 0.0  # seconds to wait between body chunks of `trickle_bytes` (a slow mirror)
    trickle_bytes: int = 1024
    times: int | None = None  # misbehave for the next N requests only, then serve normally


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


def simple_range(path: Path, header: str | None) -> tuple[int, dict[str, str], BinaryIO | None, int]:
    """The test server's own Range support (`bytes=N-` / `bytes=N-M`), independent of the agent's."""
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    if header and header.startswith("bytes=") and header.count("-") == 1:
        first, last = header[6:].split("-")
        if first.isdigit():
            start, end, status = int(first), min(int(last), size - 1) if last.isdigit() else size - 1, 206
    if start >= size and status == 206:
        return 416, {"Content-Range": f"bytes */{size}"}, None, 0
    f = path.open("rb")
    f.seek(start)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(end - start + 1)}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return status, headers, f, end - start + 1


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        mirror = self.server.mirror
        path = self.path.split("?", 1)[0]
        seen = Seen(self.command, path, dict(self.headers.items()))
        b = mirror._record(seen)
        if b.delay:
            time.sleep(b.delay)
        if mirror.authorize is not None and not mirror.authorize(seen):
            return self._answer(401, b'{"error": "unauthorized"}', "application/json", body)
        if b.status is not None:
            return self._answer(b.status, b.body, b.content_type, body)
        file = (mirror.root / path.lstrip("/")).resolve()
        if mirror.root.resolve() not in file.parents or not file.is_file():
            return self._answer(404, b"<html><body>Not Found</body></html>", "text/html", body)
        status, headers, f, length = mirror.serve_range(file, None if b.ignore_range else self.headers.get("Range"))
        try:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            if b.declare_length:
                self.send_header("Content-Length", str(length + b.extra))
            self.end_headers()
            if body and f is not None:
                self._send_body(f, length, b)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as the agent does on purpose (endless data, too slow)
        finally:
            if f is not None:
                f.close()

    def _send_body(self, f: BinaryIO, length: int, b: Behaviour) -> None:
        limit = length if b.cut_after is None else min(b.cut_after, length)
        sent, step = 0, b.trickle_bytes if b.trickle else 65536
        while sent < limit:
            chunk = f.read(min(step, limit - sent))
            if not chunk:
                break
            self._write(chunk)
            sent += len(chunk)
            if b.trickle:
                time.sleep(b.trickle)
        if b.cut_after is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        junk = b.extra
        while junk > 0:
            self._write(b"\0" * min(65536, junk))
            junk -= min(65536, junk)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        with self.server.mirror._lock:
            self.server.mirror.bytes_served += len(data)

    def _answer(self, status: int, data: bytes, content_type: str, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self._write(data)


class _Server(http.server.ThreadingHTTPServer):
    mirror: MirrorServer

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
        # connections cut on purpose (by the test or the client) are expected: stay quiet


class MirrorServer:
    """A real HTTP server on 127.0.0.1 serving `root`; `url` has no trailing slash."""

    def __init__(self, root: Path, *, serve_range: RangeServer | None = None,
                 authorize: Callable[[Seen], bool] | None = None) -> None:
        self.root, self.serve_range, self.authorize = root, serve_range or simple_range, authorize
        self.requests: list[Seen] = []
        self.bytes_served = 0
        self._behaviours: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.mirror = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mirror-{self.url}", daemon=True)
        self._thread.start()

    def put(self, relpath: str, data: bytes) -> Path:
        target = self.root / relpath.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def behave(self, relpath: str, **options: object) -> None:
        """Misbehave on `relpath` ("/name/1.0/file"); options are `Behaviour` fields."""
        with self._lock:
            self._behaviours["/" + relpath.lstrip("/")] = Behaviour(**options)  # type: ignore[arg-type]

    def seen(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.requests if s.path == "/" + path.lstrip("/")]

    def _record(self, seen: Seen) -> Behaviour:
        with self._lock:
            self.requests.append(seen)
            b = self._behaviours.get(seen.path)
            if b is None:
                return Behaviour()
            if b.times is not None:
                if b.times <= 0:
                    return Behaviour()
                b.times -= 1
            return b

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(autouse=True)
def fresh_mirror_order() -> Iterator[None]:
    """Every test starts without the latency order of mirrors an earlier test measured."""
    from quorum_rollout import artifacts
    artifacts.invalidate()
    try:
        yield
    finally:
        artifacts.invalidate()


@pytest.fixture
def mirror(make_mirror: Callable[..., MirrorServer]) -> MirrorServer:
    """A mirror serving a signed release 2.4 of the in-process group's artifact (tests/support/inproc.py)."""
    from tests.support.inproc import publish
    server = make_mirror()
    publish(server, "2.4")
    return server


@pytest.fixture
def make_mirror(tmp_path: Path) -> Iterator[Callable[..., MirrorServer]]:
    """Factory of `MirrorServer`s (each serving its own temp dir); all are stopped at teardown."""
    servers: list[MirrorServer] = []

    def make(**kwargs: object) -> MirrorServer:
        root = tmp_path / f"mirror{len(servers)}"
        root.mkdir()
        server = MirrorServer(root, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An http URL on 127.0.0.1 that accepts TCP connections (the kernel completes them from the
    listen backlog) and never answers: a frozen (SIGSTOPped) peer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
