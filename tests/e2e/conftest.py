"""e2e fixtures: a 12-host local fleet driven by real `ansible-playbook` runs.

The fleet lives in one temporary directory for the whole module; every process it starts (the
mirror, 12 agents, 12 demo services) is stopped by PID at teardown, pass or fail.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from scripts.localfleet import LocalFleet  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs ansible-playbook against a local 12-host fleet")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Keep each phase's report on the item, so step fixtures can see whether a step failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session", autouse=True)
def collection_link() -> None:
    """FQCNs resolve from the checkout through ansible.cfg + this symlink (what `make collection` makes)."""
    link = REPO / "collections" / "ansible_collections" / "quorum" / "rollout"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../../..")


@pytest.fixture(scope="session")
def agent_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of agent/ taken once: the role builds its wheel from it, so edits to the agent made
    while the suite runs cannot make a second site.yml run reinstall (and fail its changed=0 check)."""
    snap = tmp_path_factory.mktemp("agent-src")
    shutil.copy2(REPO / "agent" / "pyproject.toml", snap / "pyproject.toml")
    shutil.copytree(REPO / "agent" / "quorum_rollout", snap / "quorum_rollout",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return snap


def keep_logs(fleet: LocalFleet, name: str) -> Path:
    """Copy the fleet's playbook and agent logs to tests/output/e2e/<name>/ (pytest's tmp dirs are pruned)."""
    dest = REPO / "tests" / "output" / "e2e" / name
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(fleet.log_dir, dest / "playbooks", dirs_exist_ok=True)
    for host in fleet.hosts:
        for src in (host.data_dir / "agent.log", host.app_root / "demo.log"):
            if src.exists():
                target = dest / "hosts" / host.name / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, agent_source: Path,
          request: pytest.FixtureRequest) -> Iterator[LocalFleet]:
    if not shutil.which("flock"):
        pytest.skip("flock (util-linux) is needed by the agent role's shared-virtualenv install")
    fleet = LocalFleet(tmp_path_factory.mktemp("fleet"), step_deadline=60.0, agent_source=agent_source)
    try:
        yield fleet
    finally:
        stopped = fleet.stop()
        logs = keep_logs(fleet, request.module.__name__.rsplit(".", 1)[-1])
        print(f"\nstopped {len(stopped)} processes of the fleet in {fleet.base}; logs in {logs}")
