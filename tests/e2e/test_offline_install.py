"""Air-gapped install: the agent and its dependencies come from a wheelhouse on the controller.

One host with its own virtualenv (the role's default), installed offline (`--no-index`), then a
second run changing nothing and a release. Slow-ish (it creates a virtualenv and installs
cryptography), so it runs only with QUORUM_ROLLOUT_E2E_SLOW=1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts.localfleet import PY, REPO, LocalFleet, recap

pytestmark = pytest.mark.skipif(os.environ.get("QUORUM_ROLLOUT_E2E_SLOW") != "1",
                                reason="set QUORUM_ROLLOUT_E2E_SLOW=1 to run the offline install test")


@pytest.fixture
def offline_fleet(tmp_path: Path, agent_source: Path) -> Iterator[LocalFleet]:
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run([PY, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheelhouse), str(REPO / "agent")],
                   check=True, capture_output=True)
    fleet = LocalFleet(tmp_path / "fleet", cpus=("amd",), zones=("z9",), per_group=1, wheelhouse=wheelhouse,
                       agent_source=agent_source)
    try:
        yield fleet
    finally:
        fleet.stop()


def test_install_from_a_wheelhouse_with_a_venv_per_host(offline_fleet: LocalFleet) -> None:
    fleet = offline_fleet
    assert fleet.publish("2.4").returncode == 0
    fleet.write_inventory()
    inventory = yaml.safe_load(fleet.inventory.read_text())
    del inventory["all"]["vars"]["quorum_rollout_venv"]  # back to the default: one virtualenv per host
    fleet.inventory.write_text(yaml.safe_dump(inventory))
    fleet.start_mirror()

    first = fleet.playbook("site.yml", log="site-offline-1")
    assert first.returncode == 0, first.stdout[-5000:]
    host = fleet.hosts[0]
    assert (host.prefix / "opt" / "quorum-rollout" / "venv" / "bin" / "quorum-rollout").is_file()
    second = fleet.playbook("site.yml", log="site-offline-2")
    assert second.returncode == 0 and recap(second.stdout)[host.name]["changed"] == 0, second.stdout[-5000:]
    release = fleet.playbook("release.yml", "-e", "version=2.4", "-e", "rollout_poll=1", log="release-offline")
    assert release.returncode == 0, release.stdout[-5000:]
    assert host.current() == "2.4"
    assert host.health() == (200, {"status": "ok", "version": "2.4"})
