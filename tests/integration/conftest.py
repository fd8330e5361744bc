"""Integration fixtures: real agent processes, real Raft over TCP, a real HTTP mirror."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.fleet import Fleet


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """Build fleets; every process they start is stopped by PID at teardown, pass or fail."""
    fleets: list[Fleet] = []

    def make(n: int, **kw: object) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet{len(fleets)}", n, **kw)  # type: ignore[arg-type]
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()


def dump_logs(fleet: Fleet) -> str:
    return "\n".join(f"--- {h.id}\n" + (h.log_path.read_text()[-3000:] if h.log_path.exists() else "")
                     for h in fleet.hosts)
