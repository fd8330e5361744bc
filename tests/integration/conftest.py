"""Integration fixtures: real agent processes, real Raft over TCP, a real HTTP mirror."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fleet import Fleet

LOG_TAIL_LINES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.qr_failed = report.failed  # type: ignore[attr-defined]


@pytest.fixture
def make_fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Fleet]]:
    """Build fleets; every process they start is stopped by PID at teardown, pass or fail. A failed
    test prints the end of every agent's log (CI keeps nothing else)."""
    fleets: list[Fleet] = []

    def make(n: int, **kw: object) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet{len(fleets)}", n, **kw)  # type: ignore[arg-type]
        fleets.append(fleet)
        return fleet

    yield make
    if getattr(request.node, "qr_failed", False):
        for fleet in fleets:
            print(dump_logs(fleet))
    for fleet in fleets:
        fleet.close()


def dump_logs(fleet: Fleet) -> str:
    def tail(host: Any) -> str:
        return "\n".join(host.log_path.read_text().splitlines()[-LOG_TAIL_LINES:]) if host.log_path.exists() else ""
    return "\n".join(f"--- {h.id} ({h.log_path})\n{tail(h)}" for h in fleet.hosts)
