"""A group follows the inventory, by real `ansible-playbook site.yml` runs on a local fleet: a
5-host group grows to 7 and shrinks to 4 by inventory edits, with a release after each change;
the agents that stay are never restarted for a membership change (their PIDs stay); a change of
the agents' config restarts them one per wave, never the group at once; a membership change during
a release is refused with a clear message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import keep_logs
from scripts.localfleet import LocalFleet, wait_for

pytestmark = pytest.mark.e2e

NAMES = [f"intel-eu1a-{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, agent_source: Path) -> Iterator[LocalFleet]:
    if not shutil.which("flock"):
        pytest.skip("flock (util-linux) is needed by the agent role's shared-virtualenv install")
    fleet = LocalFleet(tmp_path_factory.mktemp("members"), cpus=("intel",), zones=("eu1a",), per_group=7,
                       step_deadline=60.0, agent_source=agent_source)
    try:
        yield fleet
    finally:
        fleet.stop()
        keep_logs(fleet, "test_membership")


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def agent_pids(fleet: LocalFleet) -> dict[str, int]:
    return {what.split()[1]: pid for pid, what in fleet.pids().items() if what.startswith("agent")
            and fleet.is_alive(pid)}


def status(fleet: LocalFleet, name: str) -> dict:
    host = next(h for h in fleet.hosts if h.name == name)
    out = subprocess.run([str(fleet.base / "venv" / "bin" / "quorum-rollout"), "status", "--json", "-c",
                          str(host.config_file)], capture_output=True, text=True, check=True,
                         env={**os.environ, "NO_PROXY": "*"})
    return json.loads(out.stdout)


def release(fleet: LocalFleet, version: str) -> None:
    _ok(fleet.playbook("release.yml", "-e", f"version={version}", "-e", "rollout_poll=1", log=f"release-{version}"),
        f"release.yml {version}")


def members(fleet: LocalFleet, via: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in status(fleet, via)["members"]}


def test_a_group_grows_and_shrinks_with_the_inventory(fleet: LocalFleet) -> None:
    for version in ("2.4", "2.5", "2.6", "2.7"):
        _ok(fleet.publish(version), f"publish {version}")
    fleet.start_mirror()
    first = NAMES[:5]
    fleet.write_inventory(only=first)
    _ok(fleet.playbook("site.yml", log="site-5"), "site.yml with 5 hosts")
    release(fleet, "2.4")
    pids = agent_pids(fleet)
    assert sorted(pids) == first

    # Grow to 7: the two new hosts join, install 2.4 from a member, and count; nobody else restarts.
    fleet.write_inventory(only=NAMES)
    out = _ok(fleet.playbook("site.yml", log="site-7"), "site.yml with 7 hosts")
    assert "Add the next new member to this group" in out
    after = agent_pids(fleet)
    assert {h: after[h] for h in first} == pids, "a membership change restarted agents that stay"
    assert members(fleet, NAMES[0]) == {h: "active" for h in NAMES}
    for host in fleet.hosts:
        assert host.current() == "2.4", host.name
    release(fleet, "2.5")
    assert all(h.current() == "2.5" for h in fleet.hosts)
    assert sorted(status(fleet, NAMES[0])["state"]["release"]["members"]) == NAMES

    # Shrink to 4: three hosts are set absent; they leave one at a time and their agents stop.
    leaving = (NAMES[1], NAMES[3], NAMES[6])
    staying = [h for h in NAMES if h not in leaving]
    before = agent_pids(fleet)
    fleet.write_inventory(only=NAMES, absent=leaving)
    _ok(fleet.playbook("site.yml", log="site-4"), "site.yml with 3 hosts absent")
    after = agent_pids(fleet)
    assert sorted(after) == staying, after
    assert {h: after[h] for h in staying} == {h: before[h] for h in staying}
    assert members(fleet, staying[0]) == {h: "active" for h in staying}
    release(fleet, "2.6")
    done = status(fleet, staying[0])["state"]["release"]
    assert done["state"] == "current" and sorted(done["members"]) == staying
    for host in fleet.hosts:
        assert host.current() == ("2.6" if host.name in staying else "2.5"), host.name
    left = next(h for h in fleet.hosts if h.name == leaving[0])
    assert (left.data_dir / "raft").is_dir(), "a removed host keeps its data unless quorum_rollout_purge"

    # A change of the agents' own config restarts them one per wave, never the whole group at once.
    fleet.write_inventory(only=staying, quorum_rollout_log_level="debug")
    out = _ok(fleet.playbook("site.yml", log="site-config"), "site.yml with a config change")
    waves = re.findall(r"TASK \[quorum\.rollout\.agent : Agent \(process service manager\): restart\].*?\n(.*?)\n\n",
                       out, re.S)
    restarted = [re.findall(r"^changed: \[([^\]]+)\]", wave, re.M) for wave in waves]
    assert sorted(h for wave in restarted for h in wave) == staying, restarted
    assert all(len(wave) == 1 for wave in restarted), f"more than one agent of the group restarted at once: {restarted}"
    assert set(agent_pids(fleet).values()).isdisjoint(after.values())
    assert status(fleet, staying[0])["node"]["has_quorum"]

    # A membership change while a release is under way (here: paused by an operator) is refused, saying why.
    cli = str(fleet.base / "venv" / "bin" / "quorum-rollout")
    config = str(next(h for h in fleet.hosts if h.name == staying[0]).config_file)
    env = {**os.environ, "NO_PROXY": "*"}
    subprocess.run([cli, "release", "2.7", "-c", config], check=True, capture_output=True, env=env)
    subprocess.run([cli, "pause", "-c", config], check=True, capture_output=True, env=env)
    fleet.write_inventory(only=[*staying, leaving[0]], quorum_rollout_log_level="debug")
    refused = fleet.playbook("site.yml", log="site-during-release")
    assert refused.returncode != 0
    assert "membership changes wait until it ends" in refused.stdout, refused.stdout[-4000:]
    assert leaving[0] not in members(fleet, staying[0])
    subprocess.run([cli, "resume", "-c", config], check=True, capture_output=True, env=env)
    wait_for(lambda: status(fleet, staying[0])["state"]["release"]["state"] == "current", 120, "2.7 to finish")

    # Two of the four are lost for good: the other two have no majority. playbooks/reform.yml
    # re-forms the group from them; then site.yml removes the lost ones without touching them.
    lost, survivors = staying[2:], staying[:2]
    pids = agent_pids(fleet)
    for name in lost:
        os.kill(pids[name], signal.SIGKILL)
    wait_for(lambda: not status(fleet, survivors[0])["node"]["has_quorum"], 60, "the survivors to lose quorum")
    fleet.write_inventory(only=survivors, quorum_rollout_log_level="debug")
    _ok(fleet.playbook("playbooks/reform.yml", "-e", f"survivors={','.join(survivors)}", "-e", "confirm=intel-eu1a",
                       log="reform"), "reform.yml")
    assert members(fleet, survivors[0]) == {h: "active" for h in survivors}
    assert status(fleet, survivors[0])["node"]["has_quorum"]
    assert status(fleet, survivors[0])["state"]["current_version"] == "2.7"
    fleet.write_inventory(only=[*survivors, *lost], absent=tuple(lost), quorum_rollout_log_level="debug",
                          quorum_rollout_force=True)
    _ok(fleet.playbook("site.yml", log="site-after-reform"), "site.yml after the re-form")
    assert members(fleet, survivors[0]) == {h: "active" for h in survivors}
