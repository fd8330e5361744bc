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

from tests.e2e.localfleet import LocalFleet  # noqa: E402


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


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    if not shutil.which("flock"):
        pytest.skip("flock (util-linux) is needed by the agent role's shared-virtualenv install")
    fleet = LocalFleet(tmp_path_factory.mktemp("fleet"), step_deadline=60.0)
    try:
        yield fleet
    finally:
        stopped = fleet.stop()
        print(f"\nstopped {len(stopped)} processes of the fleet in {fleet.base}")
