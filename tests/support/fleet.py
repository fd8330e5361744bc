"""The integration tests' name for the local agent fleet, which lives in scripts/localfleet/
(shared with the benchmarks and the demo): `from tests.support.fleet import Fleet, Host, wait_for`."""

from __future__ import annotations

from scripts.localfleet import CLI, DEMO_FILES, PY, REPO, Fleet, Host, processes_under, wait_for

__all__ = ["CLI", "DEMO_FILES", "PY", "REPO", "Fleet", "Host", "processes_under", "wait_for"]
