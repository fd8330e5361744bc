"""Scenario 4: network partitions on real sockets (a network namespace of the test's own, policy
routing rules between member addresses; see netns.py). One follower is cut off, then the leader
too: the cut-off members commit nothing (what is sent to them stays pending and never applies),
the majority goes on releasing to the members it can reach, and after healing every member
agrees on one history."""

from __future__ import annotations

import pytest

from tests.chaos.common import agreed_state, check_outcome, leader_of, switches
from tests.chaos.netns import Namespace
from tests.support.fleet import Fleet, Host, wait_for


def release_among(fleet: Fleet, via: Host, version: str, left_out: list[Host]) -> dict:
    """Start `version` through `via` once its leader reports `left_out` unreachable; wait for its end."""
    def started() -> dict | None:
        resp = via.post("/v1/releases", {"version": version, "allow_unreachable": True})
        if resp.status_code == 201 and sorted(resp.json()["release"]["excluded"]) == sorted(h.id for h in left_out):
            return resp.json()["release"]
        assert resp.status_code in (201, 409), resp.text
        return None
    release = wait_for(started, 30, f"{version} started without {[h.id for h in left_out]}", interval=0.5)
    return wait_for(lambda: (r := via.status()["state"]["release"])["id"] == release["id"]
                    and r["state"] in ("current", "rolled_back", "aborted") and r, 90, f"{version} to end")


@pytest.mark.long
def test_cut_off_members_commit_nothing_and_the_majority_goes_on(make_fleet, record_property) -> None:
    with Namespace() as ns:
        fleet = make_fleet(5, batch_fraction=0.2, extra={"rollout": {"member_timeout": 2.0}})
        fleet.start_mirror()
        fleet.preinstall("2.3")
        for version in ("2.4", "2.5", "2.6"):
            fleet.build_release(version)
        fleet.start()
        leader = leader_of(fleet)
        lone = next(h for h in fleet.hosts if h is not leader)
        ns.isolate(lone.ip, [h.ip for h in fleet.hosts if h is not lone])
        wait_for(lambda: not next(m for m in leader.status()["members"] if m["id"] == lone.id)["reachable"], 30,
                 f"{lone.id} reported unreachable")
        lone_seq = lone.status()["state"]["seq"]
        to_lone = lone.post("/v1/releases", {"version": "2.6"})
        assert to_lone.status_code != 201, to_lone.text

        done = release_among(fleet, leader, "2.4", [lone])
        assert done["state"] == "current", done
        assert lone.status()["state"]["seq"] == lone_seq, f"{lone.id} committed while cut off"

        old_term = leader.status()["node"]["term"]
        ns.isolate(leader.ip, [h.ip for h in fleet.hosts if h not in (leader, lone)])
        majority = [h for h in fleet.hosts if h not in (leader, lone)]
        new = wait_for(lambda: next((h for h in majority if h.status()["node"]["role"] == "leader"
                                     and h.status()["state"]["leader_term"] > old_term), None), 30,
                       "a leader in the majority")
        leader_seq = leader.status()["state"]["seq"]
        to_old = leader.post("/v1/releases", {"version": "2.6"})
        assert to_old.status_code != 201, to_old.text
        done = release_among(fleet, new, "2.5", [leader, lone])
        assert done["state"] == "current", done
        assert lone.status()["state"]["seq"] == lone_seq, f"{lone.id} committed while cut off"
        assert leader.status()["state"]["seq"] == leader_seq, f"the old leader {leader.id} committed while cut off"
        record_property("note", f"to the cut-off follower: HTTP {to_lone.status_code}; "
                                f"to the cut-off leader: HTTP {to_old.status_code}")

        ns.heal()
        # What the cut-off members accepted (202, an operation id) they re-propose until the log
        # says what became of it: once healed, each start of 2.6 commits (once) or is rejected.
        ops = [(lone, to_lone.json()["operation"]["id"]), (leader, to_old.json()["operation"]["id"])]
        ends = wait_for(lambda: (docs := [h.get(f"/v1/operations/{op}").json()["status"] for h, op in ops])
                        and "pending" not in docs and docs, 60, "the cut-off members' operations to end")
        assert set(ends) <= {"committed", "rejected"}, ends
        state = agreed_state(fleet)
        starts = [e for e in state["history"] if e["op"] == "start" and str(e["release"]).startswith("2.6#")]
        assert len(starts) <= 1, starts
        if starts:  # it started after 2.5 ended, and ends like any release
            assert starts[0]["seq"] > max(e["seq"] for e in state["history"] if e["release"] == done["id"])
            state = check_outcome(fleet, starts[0]["release"], "current", "2.6", "2.5")
        else:
            assert state["release"]["id"] == done["id"] and state["release"]["state"] == "current"
            for host in majority:
                assert host.current() == "2.5", host.id
            assert lone.current() == "2.3" and leader.current() == "2.4", (lone.current(), leader.current())
        record_property("note", f"after healing the cut-off members' 2.6 starts: {ends}"
                                + (f", {starts[0]['release']} ended current" if starts else ""))
        for host in fleet.hosts:
            for rel in ("2.4#1", "2.5#2"):
                assert switches(host, rel, "install") <= 1, (host.id, rel)
