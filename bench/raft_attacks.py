"""Hostile clients of an agent's Raft port, and what an operator watches while they run.

Used by tests/integration/test_raft_port.py (behaviour) and bench/raft_port.py (numbers).
Every attacker binds its sockets to a given source address: on a 127.x.y.z fleet that can be a
member's host, which is the hard case (a non-member address is refused at accept).

- `BigFrameStream`: one connection declaring a 2 GiB frame and streaming its body, opened again
  whenever the agent closes it;
- `FrameBurst`: N connections at once, each sending S bytes (declared as one S-byte frame, or
  as a run of small frames that do not decrypt);
- `Flood`: N connections opened and held, never sending anything;
- `CommitLoop`: commits one no-op command after another through an agent's API (POST
  /v1/releases of the version the group already runs) and records each latency client-side;
- `Watch`: samples the attacked agent's RSS and every member's role, term, leader, commit index.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

Address = tuple[str, int]


def proc_kib(pid: int, key: str = "VmRSS") -> int:
    """A /proc/<pid>/status memory field (VmRSS, VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(target: Address, source: str, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(target, timeout=timeout, source_address=(source, 0))


def frame_header(length: int) -> bytes:
    return struct.pack("i", length)  # pysyncobj's framing: a native 4-byte int, then the body


class _Attack(threading.Thread):
    COUNTERS: tuple[str, ...] = ()  # what `main` reports

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)

    def run(self) -> None:
        try:
            self.attack()
        except BaseException as exc:  # reported by the caller, never lost in a thread
            self.error = exc

    def attack(self) -> None:
        raise NotImplementedError


class BigFrameStream(_Attack):
    """One connection at a time: declare `declared` bytes, stream up to `total` bytes of body;
    when the agent closes it, open the next after `pause` seconds."""

    COUNTERS = ("connections", "closed_by_agent", "sent")

    def __init__(self, target: Address, source: str, *, declared: int = 2**31 - 1, total: int = 32 << 20,
                 chunk: int = 64 << 10, pause: float = 0.05) -> None:
        super().__init__("big-frame-stream")
        self.target, self.source, self.declared, self.total, self.chunk, self.pause = (
            target, source, declared, total, chunk, pause)
        self.connections = 0
        self.closed_by_agent = 0
        self.sent = 0  # bytes the kernel took (includes what sits in socket buffers)

    def attack(self) -> None:
        body = os.urandom(self.chunk)
        while not self.stop_event.is_set():
            try:
                sock = _connect(self.target, self.source)
            except OSError:
                self.closed_by_agent += 1
                self.stop_event.wait(self.pause)
                continue
            self.connections += 1
            with sock:
                try:
                    sock.sendall(frame_header(self.declared))
                    sent = 0
                    while sent < self.total and not self.stop_event.is_set():
                        sock.sendall(body)
                        sent += len(body)
                        self.sent += len(body)
                except OSError:
                    self.closed_by_agent += 1
            self.stop_event.wait(self.pause)


class FrameBurst(_Attack):
    """`count` connections at once from `sources` (round robin), each writing `size` bytes as
    fast as the agent takes them, alternately as one frame declaring `size` bytes and as
    `size // frame` frames of `frame` random bytes (they do not decrypt)."""

    COUNTERS = ("bursts", "opened", "refused", "closed_by_agent", "completed")

    def __init__(self, target: Address, sources: list[str], *, count: int = 100, size: int = 4 << 20,
                 frame: int = 4000, rounds: int = 1) -> None:
        super().__init__("frame-burst")
        self.target, self.sources, self.count, self.size, self.frame = target, sources, count, size, frame
        self.rounds = rounds  # 0: a new burst as soon as one ends, until stopped
        self.bursts = 0
        self.opened = 0
        self.refused = 0      # the connection itself failed (reset at accept)
        self.closed_by_agent = 0
        self.completed = 0    # wrote all `size` bytes (the kernel took them)

    def attack(self) -> None:
        body = os.urandom(self.frame)
        payloads = [memoryview(frame_header(self.size) + os.urandom(self.size)),
                    memoryview((frame_header(self.frame) + body) * (self.size // self.frame))]
        while not self.stop_event.is_set() and (self.rounds == 0 or self.bursts < self.rounds):
            self._burst(payloads)
            self.bursts += 1

    def _burst(self, payloads: list[memoryview]) -> None:
        sel = selectors.DefaultSelector()
        for i in range(self.count):
            try:
                sock = _connect(self.target, self.sources[i % len(self.sources)])
            except OSError:
                self.refused += 1
                continue
            sock.setblocking(False)
            self.opened += 1
            sel.register(sock, selectors.EVENT_WRITE, [0, payloads[i % 2]])
        while sel.get_map() and not self.stop_event.is_set():
            for key, _ in sel.select(timeout=0.2):
                sock, pos = key.fileobj, key.data
                payload = pos[1]
                try:
                    n = sock.send(payload[pos[0]:pos[0] + (256 << 10)])  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_by_agent += 1
                    sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    continue
                pos[0] += n
                if pos[0] >= len(payload):
                    self.completed += 1
                    sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


class Flood(_Attack):
    """`count` connections from `sources` (round robin), opened and held without a byte sent.
    `held()` says how many the agent has not closed yet."""

    COUNTERS = ("connections", "refused")

    def __init__(self, target: Address, sources: list[str], *, count: int = 500, reopen: bool = False) -> None:
        super().__init__("flood")
        self.target, self.sources, self.count = target, sources, count
        self.reopen = reopen  # keep `count` open: replace every connection the agent closes
        self.socks: list[socket.socket] = []
        self.connections = 0
        self.refused = 0
        self.opened = threading.Event()

    def _open(self, i: int) -> None:
        try:
            sock = _connect(self.target, self.sources[i % len(self.sources)])
        except OSError:
            self.refused += 1
            return
        sock.setblocking(False)
        self.connections += 1
        self.socks.append(sock)

    def attack(self) -> None:
        for i in range(self.count):
            if self.stop_event.is_set():
                break
            self._open(i)
        self.opened.set()
        i = self.count
        while not self.stop_event.wait(0.05 if self.reopen else None):
            for sock in [s for s in self.socks if not _held(s)]:
                self.socks.remove(sock)
                sock.close()
            for _ in range(self.count - len(self.socks)):  # one try each per round
                if self.stop_event.is_set():
                    break
                self._open(i)
                i += 1
        for sock in self.socks:
            sock.close()

    def held(self) -> int:
        return sum(1 for sock in list(self.socks) if _held(sock))


def _held(sock: socket.socket) -> bool:
    """Whether the other end still holds this non-blocking connection open."""
    try:
        if sock.fileno() < 0:
            return False
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True  # nothing to read and not closed
    except OSError:
        return False


@dataclass
class CommitLoop:
    """Commits no-op commands one after another with `post` (path, body) -> response; records
    (start time, latency s, HTTP status) for each."""

    post: Callable[[str, Any], Any]
    version: str
    samples: list[tuple[float, float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def one(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        try:
            status = self.post("/v1/releases", {"version": self.version}).status_code
        except OSError:
            status = 0
        except Exception:  # requests' errors (timeouts, resets) count as a failed commit
            status = -1
        latency = time.perf_counter() - t0
        self.samples.append((time.monotonic(), latency, status))
        return latency, status

    def run(self, count: int) -> None:
        for _ in range(count):
            self.one()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="commit-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.one()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def latencies(self, since: float = 0.0) -> list[float]:
        return [lat for t, lat, _ in self.samples if t >= since]

    def statuses(self, since: float = 0.0) -> list[int]:
        return [s for t, _, s in self.samples if t >= since]


class Watch(threading.Thread):
    """Samples `pid`'s VmRSS every `rss_every` s and `status()` of every member every
    `status_every` s (a callable id -> node document, or an exception) until stopped."""

    def __init__(self, pid: int, members: dict[str, Callable[[], dict[str, Any]]], *, rss_every: float = 0.1,
                 status_every: float = 0.5) -> None:
        super().__init__(name="watch", daemon=True)
        self.pid, self.members, self.rss_every, self.status_every = pid, members, rss_every, status_every
        self.rss_kib: list[int] = []
        self.nodes: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_status = 0.0
        while not self._stop_event.is_set():
            self.rss_kib.append(proc_kib(self.pid))
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.status_every
                for member, status in self.members.items():
                    try:
                        self.nodes.append({"member": member, **status()})
                    except Exception as exc:  # a status that does not answer is a finding too
                        self.errors.append(f"{member}: {exc!r}")
            self._stop_event.wait(self.rss_every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def terms(self) -> set[int]:
        return {n["term"] for n in self.nodes}

    def leaders(self) -> set[str | None]:
        return {n["leader"] for n in self.nodes}

    def leading(self) -> set[str]:
        return {n["member"] for n in self.nodes if n["role"] == "leader"}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    """Run one attack in this process until SIGTERM (or --seconds); print its counters as JSON.
    bench/raft_port.py runs attacks this way so they never share a GIL with the commit loop."""
    import argparse
    import json
    import signal

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attack", choices=("stream", "burst", "flood"))
    ap.add_argument("--target", required=True, help="ip:port of the Raft port")
    ap.add_argument("--source", required=True, help="source address(es) to bind, comma-separated")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at SIGTERM)")
    args = ap.parse_args(argv)
    ip, port = args.target.rsplit(":", 1)
    target, sources = (ip, int(port)), args.source.split(",")
    attack: _Attack
    if args.attack == "stream":
        attack = BigFrameStream(target, sources[0])
    elif args.attack == "burst":
        attack = FrameBurst(target, sources, rounds=0)
    else:
        attack = Flood(target, sources, reopen=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    attack.start()
    done.wait(args.seconds or None)
    attack.stop()
    counters = {k: getattr(attack, k) for k in attack.COUNTERS}
    print(json.dumps({"attack": args.attack, "error": repr(attack.error) if attack.error else None, **counters}))


if __name__ == "__main__":
    main()
