"""checks.py against real local HTTP and TCP servers and real commands."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from quorum_rollout import checks
from quorum_rollout.checks import CheckResult, run_check, run_checks
from quorum_rollout.config import Check

time_sleep = time.sleep


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    hold: threading.Event | None = None  # block the answer until this is set (a hung service)


@dataclass
class Service:
    """A real HTTP server on 127.0.0.1; `replies[path]` is a queue, the last reply repeats."""

    url: str
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def answer(self, path: str) -> Reply:
        self.hits.append(path)
        queue = self.replies.get(path) or [Reply(404, "not found")]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture()
def service() -> Iterator[Service]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            reply = svc.answer(self.path)
            if reply.hold is not None:
                reply.hold.wait(10)
            data = reply.body.encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    svc = Service(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield svc
    finally:
        for queue in svc.replies.values():
            for reply in queue:
                if reply.hold is not None:
                    reply.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def listener() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture()
def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def http_check(url: str, **kw: object) -> Check:
    return Check(name="health", type="http", url=url, **{"retries": 1, "interval": 0.0, **kw})  # type: ignore[arg-type]


def test_http_ok_with_version_substitution(service: Service) -> None:
    service.replies["/health/2.4"] = [Reply(200, json.dumps({"version": "2.4"}))]
    result = run_check(http_check(service.url + "/health/{version}", expect_body='"{version}"'), version="2.4")
    assert result == CheckResult(True, "health", result.output, 1)
    assert "status 200" in result.output


def test_http_wrong_body_says_expected_and_got(service: Service) -> None:
    service.replies["/health"] = [Reply(200, '{"version": "2.3"}')]
    result = run_check(http_check(service.url + "/health", expect_body="2.4"), version="2.4")
    assert not result.ok and result.attempts == 1
    assert result.output.startswith(f"{service.url}/health: expected status 200 and body containing '2.4', "
                                    "got 200 '{\"version\": \"2.3\"}'")


def test_http_wrong_status(service: Service) -> None:
    service.replies["/health"] = [Reply(503, "starting")]
    result = run_check(http_check(service.url + "/health"), version="1")
    assert result.output.startswith(f"{service.url}/health: expected status 200, got 503 'starting'")
    result = run_check(http_check(service.url + "/health", expect_status=503), version="1")
    assert result.ok


def test_http_retries_until_ready(service: Service) -> None:
    service.replies["/ready"] = [Reply(503, "no"), Reply(503, "no"), Reply(200, "yes")]
    started = time.monotonic()
    result = run_check(http_check(service.url + "/ready", retries=5, interval=0.05), version="1")
    assert result.ok and result.attempts == 3 and service.hits == ["/ready"] * 3
    assert time.monotonic() - started >= sum(checks.waits(5, 0.05)[:2])  # two pauses between three attempts


def test_http_gives_up_after_retries(service: Service) -> None:
    service.replies["/ready"] = [Reply(500, "broken")]
    result = run_check(http_check(service.url + "/ready", retries=3, interval=0.01), version="1")
    assert not result.ok and result.attempts == 3 and "(after 3 attempts)" in result.output


def test_http_timeout_and_refused(service: Service, closed_address: str) -> None:
    service.replies["/slow"] = [Reply(200, "late", hold=threading.Event())]
    started = time.monotonic()
    result = run_check(http_check(service.url + "/slow", timeout=0.3), version="1")
    assert not result.ok and "got no response" in result.output and "Timeout" in result.output
    assert time.monotonic() - started < 5
    result = run_check(http_check(f"http://{closed_address}/x"), version="1")
    assert not result.ok and "expected status 200, got no response (ConnectionError" in result.output


def test_tcp(listener: str, closed_address: str) -> None:
    ok = run_check(Check(name="port", type="tcp", address=listener, retries=1), version="1")
    assert ok.ok and ok.output == f"tcp {listener}: connected"
    bad = run_check(Check(name="port", type="tcp", address=closed_address, retries=2, interval=0.01), version="1")
    assert not bad.ok and bad.attempts == 2
    assert bad.output.startswith(f"tcp {closed_address}: expected a connection within 5s, got ")


def test_command_ok_fail_and_timeout(tmp_path: Path) -> None:
    ok = run_check(Check(name="c", type="command", command='test "$QR_VERSION" = {version} && echo fine',
                         retries=1), version="2.4")
    assert ok.ok and ok.output == "fine"
    bad = run_check(Check(name="c", type="command", command="echo broken >&2; exit 4", retries=1), version="1")
    assert not bad.ok
    assert bad.output.startswith("command 'echo broken >&2; exit 4': expected exit 0, got exit 4: broken")
    started = time.monotonic()
    slow = run_check(Check(name="c", type="command", command="sleep 30", timeout=0.3, retries=1), version="1")
    assert not slow.ok and "got timed out after 0.3s" in slow.output
    assert time.monotonic() - started < 10


def test_command_retries(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    command = f'n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; [ $n -ge 3 ]'
    result = run_check(Check(name="c", type="command", command=command, retries=4, interval=0.01), version="1")
    assert result.ok and result.attempts == 3


@pytest.mark.parametrize(("retries", "interval", "expected"), [
    (3, 1.0, [0.025] * 20 + [0.05, 0.1, 0.2, 0.4, 0.75]),   # the default: 2 s window, 26 attempts
    (3, 0.2, [0.025] * 16),                                  # a window shorter than the fast half second
    (5, 0.02, [0.02] * 4),                                   # an interval below the first wait: evenly spaced
    (1, 1.0, []),
    (4, 0.0, [0.0, 0.0, 0.0]),
])
def test_attempts_start_quickly_and_keep_the_window(retries: int, interval: float, expected: list[float]) -> None:
    got = checks.waits(retries, interval)
    assert got == pytest.approx(expected)
    assert sum(got) == pytest.approx((retries - 1) * interval), "the last attempt is at the end of the window"
    assert len(got) >= retries - 1 and max(got, default=0) <= interval


def test_a_service_up_a_moment_after_its_restart_passes_on_an_early_attempt(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first answer fails (not listening yet); the second, 25 ms later, passes: no whole interval."""
    slept: list[float] = []
    monkeypatch.setattr(checks.time, "sleep", lambda seconds: slept.append(seconds) or time_sleep(seconds))
    service.replies["/ready"] = [Reply(503, "starting"), Reply(200, "ok")]
    result = run_check(http_check(service.url + "/ready", retries=3, interval=30), version="1")
    assert result.ok and result.attempts == 2 and service.hits == ["/ready"] * 2
    assert slept == [checks.FIRST_WAIT]


def test_run_checks_stops_at_first_failure(tmp_path: Path, service: Service, listener: str) -> None:
    marker = tmp_path / "ran"
    service.replies["/health"] = [Reply(200, "v2")]
    checks = [
        Check(name="port", type="tcp", address=listener, retries=1),
        http_check(service.url + "/health", expect_body="v{version}"),
        Check(name="never", type="command", command=f"touch {marker}", retries=1),
    ]
    failed = run_checks(checks, version="3")
    assert not failed.ok and failed.name == "health" and "body containing 'v3'" in failed.output
    assert not marker.exists()
    passed = run_checks(checks, version="2")
    assert passed.ok and passed.name == "all" and passed.attempts == 3 and marker.exists()
    assert passed.output == "3 checks passed: port, health, never"
    assert run_checks((), version="1") == CheckResult(True, "all", "0 checks passed", 0)
