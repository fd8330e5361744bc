"""Chaos fixtures: the integration suite's fleets (real agents, real Raft, a real mirror; every
process stopped by PID at teardown, pass or fail), a `long` marker for the trials that only
`make test-chaos` runs, and one table of results at the end of every run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.integration.conftest import make_fleet, pytest_runtest_makereport  # noqa: F401

_RESULTS: dict[str, dict[str, object]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: a chaos trial run by `make test-chaos` only (not by `make test`)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.failed and report.when == "setup"):
        return
    name, _, params = report.nodeid.split("::", 1)[-1].partition("[")
    row = _RESULTS.setdefault(name, {"trials": 0, "passed": 0, "broke": [], "notes": []})
    row["notes"] += [value for key, value in report.user_properties if key == "note"]  # type: ignore[operator]
    row["trials"] += 1  # type: ignore[operator]
    if report.passed:
        row["passed"] += 1  # type: ignore[operator]
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = (crash.message if crash else str(report.longrepr)).splitlines()[0][:100]
        row["broke"].append(f"[{params.rstrip(']')}] {message}" if params else message)  # type: ignore[union-attr]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    width = max(len(name) for name in _RESULTS)
    lines = [f"{'scenario':<{width}}  trials  passed  what broke", "-" * (width + 30)]
    for name, row in _RESULTS.items():
        broke = "; ".join(row["broke"]) or "-"  # type: ignore[arg-type]
        lines.append(f"{name:<{width}}  {row['trials']:>6}  {row['passed']:>6}  {broke}")
        if row["notes"]:
            lines.append(f"{'':<{width}}  notes: {'; '.join(row['notes'])}")  # type: ignore[arg-type]
    terminalreporter.write_sep("=", "chaos summary")
    for line in lines:
        terminalreporter.write_line(line)
