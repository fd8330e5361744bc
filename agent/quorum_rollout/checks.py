"""Pre-flight checks run on a host after it switched to a release: command, http, tcp.

Each check has a window of `retries - 1` intervals after its first attempt, `timeout` seconds
per attempt. Inside the window it is tried again every FIRST_WAIT (25 ms) for the first
FAST_WINDOW (0.5 s), then after twice as long each time up to `interval` (a service restarted a
moment ago answers 0.1-0.3 s later: it should pass within 25 ms of being ready, not a whole
interval later), so it gets at least `retries` attempts and its last one at the end of the
window, as with evenly spaced attempts. `{version}` in a check's command, url and
expect_body is replaced by the release version. A failure's output says what was expected
and what was got, e.g.

    http://127.0.0.5:8080/health: expected status 200 and body containing '2.4', got 200 '{"version": "2.3"}'

HTTP checks ignore proxy environment variables: they target the host's own services.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable

import requests

from .config import CHECK_TYPES, Check, parse_host_port
from .install import run_shell

BODY_LIMIT = 1 << 20     # bytes of an HTTP body read for matching
FIRST_WAIT = 0.025       # seconds between attempts during the first FAST_WINDOW
FAST_WINDOW = 0.5        # seconds after the first attempt; then the wait doubles up to the check's interval
SHOWN = 200              # characters of a body or command output shown in a failure


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    name: str
    output: str
    attempts: int


def _excerpt(text: str, limit: int = SHOWN) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _command(check: Check, version: str) -> tuple[bool, str]:
    command = (check.command or "").replace("{version}", version)
    result = run_shell(command, env={"QR_VERSION": version}, timeout=check.timeout)
    output = result.output.strip()
    if result.rc == 0:
        return True, output
    got = f"timed out after {check.timeout:g}s" if result.rc is None else f"exit {result.rc}"
    tail = output[-SHOWN:] if output else "(no output)"
    return False, f"command {command!r}: expected exit 0, got {got}: {tail}"


def _http(check: Check, version: str, session: requests.Session) -> tuple[bool, str]:
    url = (check.url or "").replace("{version}", version)
    body_wanted = check.expect_body.replace("{version}", version) if check.expect_body is not None else None
    expected = f"expected status {check.expect_status}"
    if body_wanted is not None:
        expected += f" and body containing {body_wanted!r}"
    try:
        with session.get(url, timeout=check.timeout, stream=True, allow_redirects=True) as response:
            raw = response.raw.read(BODY_LIMIT, decode_content=True) or b""
            body = raw.decode(response.encoding or "utf-8", "replace")
            status = response.status_code
    except requests.RequestException as exc:
        return False, f"{url}: {expected}, got no response ({type(exc).__name__}: {exc})"
    if status == check.expect_status and (body_wanted is None or body_wanted in body):
        return True, f"{url}: status {status} {_excerpt(body)}"
    return False, f"{url}: {expected}, got {status} {_excerpt(body)}"


def _tcp(check: Check) -> tuple[bool, str]:
    address = check.address or ""
    try:
        host, port = parse_host_port(address)
        with socket.create_connection((host, port), timeout=check.timeout):
            pass
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else str(exc)
        return False, f"tcp {address}: expected a connection within {check.timeout:g}s, got {reason}"
    return True, f"tcp {address}: connected"


# One runner per type of config.CHECK_TYPES: (check, version, session) -> (passed, output).
_RUNNERS: dict[str, Callable[[Check, str, requests.Session], tuple[bool, str]]] = {
    "command": lambda check, version, _session: _command(check, version),
    "http": _http,
    "tcp": lambda check, _version, _session: _tcp(check),
}
if set(_RUNNERS) != set(CHECK_TYPES):  # a type added to the config without a runner, or the reverse
    raise ImportError(f"check runners {sorted(_RUNNERS)} do not match config.CHECK_TYPES {list(CHECK_TYPES)}")


def waits(retries: int, interval: float) -> list[float]:
    """Seconds to wait before each attempt after the first: FIRST_WAIT during FAST_WINDOW, then
    doubling up to `interval`, until the window of `retries - 1` intervals is used up."""
    if interval <= 0:
        return [0.0] * max(retries - 1, 0)
    window, total, wait, out = max(retries - 1, 0) * interval, 0.0, min(FIRST_WAIT, interval), []
    while window - total > 1e-9:
        out.append(min(wait, window - total))
        total += out[-1]
        if total >= FAST_WINDOW - 1e-9:
            wait = min(wait * 2, interval)
    return out


def run_check(check: Check, *, version: str) -> CheckResult:
    """Run one check until it passes or its window is used up (see the module docstring)."""
    session = requests.Session()
    session.trust_env = False
    attempt, output = 0, ""
    pauses = waits(check.retries, check.interval)
    try:
        for attempt in range(1, len(pauses) + 2):
            run = _RUNNERS.get(check.type)
            if run is None:
                ok, output = False, f"unknown check type {check.type!r}: expected one of {', '.join(CHECK_TYPES)}"
            else:
                ok, output = run(check, version, session)
            if ok:
                return CheckResult(True, check.name, output, attempt)
            if attempt <= len(pauses):
                time.sleep(pauses[attempt - 1])
    finally:
        session.close()
    return CheckResult(False, check.name, f"{output} (after {attempt} attempt{'s' if attempt != 1 else ''})",
                       attempt)


def run_checks(checks: tuple[Check, ...] | list[Check], *, version: str) -> CheckResult:
    """Run the checks in order; return the first failure, or an ok result named "all"."""
    attempts, names = 0, []
    for check in checks:
        result = run_check(check, version=version)
        attempts += result.attempts
        if not result.ok:
            return result
        names.append(check.name)
    summary = f"{len(names)} check{'s' if len(names) != 1 else ''} passed" + (f": {', '.join(names)}" if names else "")
    return CheckResult(True, "all", summary, attempts)
