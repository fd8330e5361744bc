"""`site.yml --check` on hosts that have nothing yet: it predicts the work and changes no host.

A small fleet (one group of two hosts) is enough; nothing is started, so there is nothing to stop.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from scripts.localfleet import PY, LocalFleet, recap


def test_check_mode_on_fresh_hosts_changes_nothing(tmp_path: Path, agent_source: Path) -> None:
    fleet = LocalFleet(tmp_path / "fleet", cpus=("intel",), zones=("z1",), per_group=2, agent_source=agent_source)
    fleet.key_prefix.parent.mkdir(parents=True)
    subprocess.run([PY, "-m", "quorum_rollout", "keygen", "--out", str(fleet.key_prefix)], check=True,
                   capture_output=True)
    fleet.write_inventory()
    proc = fleet.playbook("site.yml", "--check", log="site-check-fresh")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    counts = recap(proc.stdout)
    assert set(counts) == {h.name for h in fleet.hosts}
    assert all(c["changed"] > 0 for c in counts.values()), counts  # the work is predicted ...
    assert not (fleet.base / "hosts").exists()  # ... and no host got anything
    # The controller only got its build cache: no secret, token or endpoint record was written.
    assert sorted(p.name for p in fleet.controller_dir.iterdir()) == ["dist"]
    assert re.search(r"changed: \[intel-z1-1\].*\n.*changed: \[intel-z1-2\]|changed: \[intel-z1-2\]",
                     proc.stdout.split("Install the agent into its virtualenv", 1)[1])
    assert fleet.pids() == {}
