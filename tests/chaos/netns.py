"""A network namespace of the test's own, for partitions on real sockets.

`Namespace()` creates a fresh network namespace and moves the calling thread (pytest's main
thread) into it (setns(2), through libc: Python 3.11 has no os.setns), so every process the test
starts afterwards (agents, mirror, demo services, `ip`) lives there, and the test's own HTTP
client too; on exit the thread returns to its original namespace and the namespace is deleted.
Nothing outside it changes: loopback only, no traffic leaves the namespace.

Inside, `cut(a, b)` blackholes the traffic between two member addresses with policy-routing
rules (`ip rule ... from A to B blackhole`, both ways; the local table's rule moved behind
them). The agents bind their outgoing Raft sockets to their own address, so a rule from one
member's address to another's cuts exactly that Raft link; the test's client (source
127.0.0.1) still reaches every member. `heal()` removes every rule it added.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
from types import TracebackType

CLONE_NEWNET = 0x40000000
CUT_PREF = 10


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()} (the partition trial needs root and iproute2)")


class Namespace:
    def __init__(self) -> None:
        self.name = f"qrchaos-{os.getpid()}-{random.randint(0, 1 << 30)}"
        self.rules: list[tuple[str, str]] = []
        self._home: int | None = None

    def __enter__(self) -> Namespace:
        ip("netns", "add", self.name)
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        ip("link", "set", "lo", "up")
        ip("rule", "add", "pref", "100", "lookup", "local")
        ip("rule", "del", "pref", "0")
        return self

    def cut(self, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            ip("rule", "add", "pref", str(CUT_PREF), "from", src, "to", dst, "blackhole")
            self.rules.append((src, dst))

    def isolate(self, lone: str, others: list[str]) -> None:
        for other in others:
            self.cut(lone, other)

    def heal(self) -> None:
        while self.rules:
            src, dst = self.rules.pop()
            ip("rule", "del", "pref", str(CUT_PREF), "from", src, "to", dst, "blackhole")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.heal()
        finally:
            if self._home is not None:
                _setns(self._home)
                os.close(self._home)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
