"""What both local fleets share: polling, loopback addresses, the mirror process, a host's truth
(its `current` symlink, its demo service's /health) and stopping processes by PID.

Every process a fleet starts is found again by PID and stopped by `stop_processes`, which signals
only PIDs whose command line still names the fleet (a PID recycled since it was recorded is left
alone), plus every process whose command line names the fleet's directory (what a restart hook
orphaned by a killed agent may have started).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable
DEMO_FILES = REPO / "roles" / "demo_app" / "files"
MIRROR = HERE / "mirror.py"
MIRROR_PORT = 8000
APP_PORT = 8080


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass
    (AssertionError naming `what` and the last error). OSError (connection refused, timeouts,
    requests' errors), KeyError and ValueError (a half-written document) count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def port_free(ip: str, port: int) -> bool:
    """Whether a server could listen on ip:port now. With SO_REUSEADDR, as the agent's Raft port,
    its API and the mirror bind: connections of a fleet just stopped (TIME_WAIT, 60 s) do not
    count, a process still listening does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_subnet(port: int = MIRROR_PORT) -> str:
    """A random 127.a.b prefix whose mirror address (.1:`port`) is free, so concurrent runs never
    share addresses or ports."""
    for _ in range(50):
        subnet = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"
        if port_free(f"{subnet}.1", port):
            return subnet
    raise RuntimeError("no free 127.a.b.0/24 subnet found")


# -- a host's truth ------------------------------------------------------------------------------

def current_version(app_root: Path) -> str | None:
    """The version `<app_root>/current` points at, None before the first install."""
    link = Path(app_root) / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def health(ip: str, port: int = APP_PORT, timeout: float = 3) -> tuple[int, dict[str, Any]]:
    """GET /health of a demo service: (HTTP status, JSON body), also for an error status."""
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/health", timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except http.client.HTTPException as exc:  # a half-up service: "not yet", like a refused connection
        raise OSError(f"http://{ip}:{port}/health: {exc!r}") from exc


# -- processes -------------------------------------------------------------------------------------

def start_mirror(ip: str, port: int, root: Path, *, log: Path | None = None, stats: Path | None = None,
                 rate: int = 0, zones: dict[str, int] | None = None, timeline: Path | None = None,
                 timeout: float = 15) -> subprocess.Popen[bytes]:
    """Start mirror.py serving `root` on ip:port in its own session; return once it listens.
    `zones`: zone name -> shared cap in bytes/s for /zone/<name>/... (mirror.py --zone)."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [PY, str(MIRROR), "--bind", ip, "--port", str(port), "--root", str(root)]
    if stats:
        cmd += ["--stats", str(stats)]
    if rate:
        cmd += ["--rate", str(rate)]
    for name, cap in (zones or {}).items():
        cmd += ["--zone", f"{name}={cap}"]
    if timeline:
        cmd += ["--timeline", str(timeline)]

    def popen(out: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)

    if log:
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            proc = popen(out)
    else:
        proc = popen(subprocess.DEVNULL)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the mirror exited with {proc.returncode}: {' '.join(cmd)}")
        with socket.create_connection((ip, port), timeout=1):
            return True
    wait_for(listening, timeout, f"the mirror to listen on {ip}:{port}")
    return proc


def processes_under(base: Path) -> set[int]:
    """PIDs of the processes whose command line names `base` (a fleet's own directory)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(base).encode() in cmdline:
                found.add(int(entry.name))
    return found


def runs_one_of(pid: int, marks: Iterable[str]) -> bool:
    """True when `pid`'s command line contains one of `marks` (guards against a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return any(mark in cmdline for mark in marks)


def is_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie child is reaped and counts as gone)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_processes(base: Path, recorded: dict[int, str], *, marks: Iterable[str] = (),
                   timeout: float = 15) -> list[str]:
    """Stop a fleet's processes: the `recorded` PIDs (PID -> what it is) whose command line still
    names `base` or one of `marks`, and every other process naming `base` ("orphan"). SIGTERM, then
    SIGKILL for what still runs after `timeout` seconds (0: SIGKILL at once). Returns what it stopped."""
    marks = (str(base), *marks)
    pids = {pid: what for pid, what in recorded.items() if runs_one_of(pid, marks)}
    pids.update({pid: "orphan" for pid in processes_under(base) if pid not in pids})
    first = signal.SIGTERM if timeout > 0 else signal.SIGKILL
    for pid in pids:
        try:
            os.kill(pid, first)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive:
        alive = {pid for pid in alive if is_alive(pid)}
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"{what} (pid {pid})" for pid, what in sorted(pids.items())]
