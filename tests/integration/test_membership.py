"""Membership changes on a running group of real agents (processes on 127.x.y.z, pysyncobj over TCP,
a real HTTP mirror): a member joins and installs the group's version before it counts, members
leave (the leader too, a dead one too), and none of it restarts the other agents.
"""

from __future__ import annotations

import json
import signal

from tests.support.fleet import Fleet, Host, wait_for

TERMINAL = ("current", "rolled_back", "aborted")


def release_to(fleet: Fleet, version: str, via: Host) -> dict:
    resp = via.post("/v1/releases", {"version": version})
    assert resp.status_code == 201, resp.text
    return wait_for(lambda: (r := via.status()["state"]["release"]) and r["version"] == version
                    and r["state"] in TERMINAL and r, 120, f"release {version} to end", interval=0.1)


def members(host: Host) -> dict[str, str]:
    return {m["id"]: m["status"] for m in host.status()["members"]}


def new_host(fleet: Fleet) -> Host:
    """One more host, configured with the others as peers (what site.yml writes for it)."""
    host = Host(fleet, len(fleet.hosts))
    fleet.hosts.append(host)
    fleet.write_configs()  # the running agents never reread their config
    return host


def add(fleet: Fleet, via: Host, host: Host) -> None:
    resp = via.post("/v1/members", {"id": host.id, "address": f"{host.ip}:{fleet.raft_port}",
                                    "api_url": host.api_url})
    assert resp.status_code == 201, resp.text


def test_members_join_and_leave_without_restarting_the_others(make_fleet):
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    for version in ("2.4", "2.5", "2.6", "2.7"):
        fleet.build_release(version)
    fleet.start()
    first = fleet.hosts[0]
    assert release_to(fleet, "2.4", first)["state"] == "current"
    pids = {h.id: h.proc.pid for h in fleet.hosts}

    # A fourth host joins: it installs the group's 2.4 from a peer before it counts.
    h04 = new_host(fleet)
    add(fleet, first, h04)
    assert members(first)["h04"] == "joining"
    again = first.post("/v1/members", {"id": "h05", "address": "127.0.0.250:1", "api_url": "http://127.0.0.250:1"})
    assert again.status_code == 409 and "h04 is still joining" in again.json()["error"]
    h04.start()
    fleet.pids.add(h04.proc.pid)
    wait_for(lambda: members(first)["h04"] == "active", 60, "h04 to join")
    assert h04.current() == "2.4" and h04.health()["version"] == "2.4"
    served = fleet.mirror_bytes().get("demo-app/2.4/demo-app-2.4.tar.gz", 0)
    assert served == (fleet.base / "build" / "demo-app-2.4.tar.gz").stat().st_size, "h04 fetched from a peer"

    done = release_to(fleet, "2.5", h04)
    assert done["state"] == "current" and sorted(done["members"]) == ["h01", "h02", "h03", "h04"]
    assert all(h.current() == "2.5" for h in fleet.hosts)

    # A change while a release runs is refused, naming the release.
    resp = first.post("/v1/releases", {"version": "2.6"})
    assert resp.status_code == 201
    refused = first.delete("/v1/members/h02")
    assert refused.status_code == 409 and "membership changes wait until it ends" in refused.json()["error"]
    wait_for(lambda: first.status()["state"]["release"]["state"] in TERMINAL, 120, "2.6 to end")

    # The leader leaves: it hands leadership over first, then the new leader takes it out.
    leader = fleet.leader()
    assert first.delete(f"/v1/members/{leader.id}").status_code == 200
    others = [h for h in fleet.hosts if h is not leader]
    wait_for(lambda: leader.id not in members(others[0]), 60, f"{leader.id} removed")
    leader.kill(signal.SIGTERM)
    survivors = [h for h in others if h.alive()]
    for host in survivors:
        assert host.proc.pid == pids.get(host.id, host.proc.pid), f"{host.id} was restarted"
    new_leader = wait_for(lambda: next((h for h in survivors if h.status()["node"]["role"] == "leader"), None),
                          30, "a leader among the three left")
    assert sorted(members(new_leader)) == sorted(h.id for h in survivors)

    # A dead member is removed without its cooperation.
    dead = next(h for h in survivors if h is not new_leader)
    dead.kill(signal.SIGKILL)
    alive = [h for h in survivors if h is not dead]
    assert alive[0].delete(f"/v1/members/{dead.id}").status_code == 200
    wait_for(lambda: dead.id not in members(alive[0]), 60, f"dead {dead.id} removed")
    assert alive[0].status()["node"]["has_quorum"], "two members left of two: a majority"
    done = release_to(fleet, "2.7", alive[0])
    assert done["state"] == "current" and done["members"] == sorted(h.id for h in alive), json.dumps(done)[:500]


def test_a_group_that_lost_its_majority_is_reformed_from_its_survivor(make_fleet):
    """Two of three members are gone for good: the survivor cannot commit. `quorum-rollout reform`
    (agent stopped) restarts it as the whole group from its last state, and releases go on."""
    import subprocess

    from tests.support.fleet import CLI

    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.build_release("2.5")
    fleet.start()
    survivor = fleet.hosts[0]
    assert release_to(fleet, "2.4", survivor)["state"] == "current"
    for host in fleet.hosts[1:]:
        host.kill(signal.SIGKILL)
    wait_for(lambda: not survivor.status()["node"]["has_quorum"], 30, "the survivor to lose its quorum")
    saved = fleet.base / "survivor-status.json"
    saved.write_text(json.dumps(survivor.status()))
    stuck = survivor.post("/v1/releases", {"version": "2.5"})
    assert stuck.status_code == 202, "no majority: nothing commits"

    def reform(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, "reform", "-c", str(survivor.config_path), "--state", str(saved),
                               "--survivors", survivor.id, *extra], capture_output=True, text=True, env=fleet.env,
                              check=False)

    refused = reform("--i-understand")
    assert refused.returncode != 0 and "is running" in refused.stderr, refused.stderr
    survivor.kill(signal.SIGTERM)
    assert "--i-understand" in reform().stderr, "the command asks for confirmation"
    done = reform("--i-understand")
    assert done.returncode == 0, done.stderr
    assert any(p.name.startswith("raft.before-reform-") for p in survivor.data.iterdir()), "the old journal kept"
    survivor.start()
    fleet.pids.add(survivor.proc.pid)
    wait_for(lambda: survivor.status()["node"]["role"] == "leader" and survivor.status()["node"]["ready"], 30,
             "the survivor to lead its re-formed group")
    status = survivor.status()
    assert [m["id"] for m in status["members"]] == [survivor.id]
    assert status["state"]["current_version"] == "2.4"
    assert any(f"re-formed from {survivor.id}" in e["detail"] for e in status["state"]["history"])
    assert release_to(fleet, "2.5", survivor)["state"] == "current"
    assert survivor.current() == "2.5"
