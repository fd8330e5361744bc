"""files/membership_plan.py of the agent role: the controller-side plan of site.yml's membership
changes and restarts (pure: JSON in, JSON out)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[3] / "roles" / "agent" / "files" / "membership_plan.py"
spec = importlib.util.spec_from_file_location("membership_plan", SCRIPT)
assert spec and spec.loader
membership_plan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(membership_plan)


def host(n: int, group: str = "intel-a", *, present: bool = True, recorded: str | None = None,
         running: bool = True, members: list[str] | None = None, leader: str | None = "h1",
         restart: bool = False, probe_group: str | None = None) -> dict[str, Any]:
    return {"host": f"web{n}", "id": f"h{n}", "group": group, "present": present,
            "recorded_group": group if recorded is None else recorded, "address": f"10.0.0.{n}:7100",
            "api_url": f"http://10.0.0.{n}:7200", "untouchable": False, "restart_needed": restart,
            "probe": {"running": running, "group": probe_group or (recorded or group) if running else None,
                      "members": members or [], "leader": leader if running else None}}


def test_a_new_group_starts_every_agent_at_once():
    hosts = [host(n, running=False, recorded="") for n in (1, 2, 3)]
    plan = membership_plan.plan(hosts)
    assert all(plan["hosts"][f"web{n}"]["start"] for n in (1, 2, 3))
    assert (plan["leave_waves"], plan["restart_waves"], plan["join_waves"]) == (0, 0, 0)


def test_new_hosts_join_a_running_group_one_per_wave_through_the_driver():
    members = ["h1", "h2", "h3"]
    hosts = [host(n, members=members) for n in (1, 2, 3)] + [host(n, running=False, recorded="") for n in (5, 4)]
    plan = membership_plan.plan(hosts)
    assert plan["join_waves"] == 2
    assert [a["id"] for a in plan["hosts"]["web1"]["adds"]] == ["h4", "h5"], "the driver is the lowest id running"
    assert plan["hosts"]["web4"]["join_wave"] == 0 and plan["hosts"]["web5"]["join_wave"] == 1
    assert not plan["hosts"]["web4"]["start"], "a joiner starts in its join wave, after it was added"


def test_absent_and_moved_hosts_leave_one_per_wave_and_groups_proceed_in_parallel():
    a = ["h1", "h2", "h3", "h4"]
    b = ["h7", "h8"]
    hosts = [host(1, members=a), host(2, members=a), host(3, members=a, present=False),
             host(4, "intel-b", recorded="intel-a", members=a),  # moved from intel-a to intel-b
             host(7, "intel-b", members=b), host(8, "intel-b", members=b, present=False)]
    plan = membership_plan.plan(hosts)
    assert plan["hosts"]["web1"]["removes"] == ["h3", "h4"]
    assert plan["hosts"]["web7"]["removes"] == ["h8"]
    assert plan["leave_waves"] == 2
    assert plan["hosts"]["web4"]["mover"] and plan["hosts"]["web4"]["leave_wave"] == 1
    assert plan["hosts"]["web4"]["join_wave"] == 0, "then it joins its new group"
    assert [x["id"] for x in plan["hosts"]["web7"]["adds"]] == ["h4"]


def test_changed_agents_restart_one_per_wave_followers_first_leader_last():
    members = ["h1", "h2", "h3"]
    hosts = [host(n, members=members, restart=True, leader="h2") for n in (1, 2, 3)]
    plan = membership_plan.plan(hosts)
    waves = {h: plan["hosts"][h]["restart_wave"] for h in ("web1", "web2", "web3")}
    assert waves == {"web1": 0, "web3": 1, "web2": 2}
    assert plan["restart_waves"] == 3


def test_a_stopped_member_is_started_and_unknown_members_are_reported():
    members = ["h1", "h2", "h9"]
    hosts = [host(1, members=members), host(2, members=members, running=False)]
    plan = membership_plan.plan(hosts)
    assert plan["hosts"]["web2"]["start"] and plan["hosts"]["web2"]["join_wave"] is None
    assert plan["unknown"] == {"intel-a": ["h9"]}


def test_the_script_reads_stdin_and_prints_json():
    hosts = [host(1, running=False, recorded="")]
    out = subprocess.run([sys.executable, str(SCRIPT)], input=json.dumps(hosts), capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout)["hosts"]["web1"]["start"] is True


def test_a_new_group_secret_restarts_the_group_together():
    members = ["h1", "h2", "h3"]
    hosts = [dict(host(n, members=members, restart=True), secret_changed=True) for n in (1, 2, 3)]
    plan = membership_plan.plan(hosts)
    assert {plan["hosts"][f"web{n}"]["restart_wave"] for n in (1, 2, 3)} == {0} and plan["restart_waves"] == 1
