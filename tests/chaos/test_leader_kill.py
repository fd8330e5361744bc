"""Scenario 1: the leader is SIGKILLed at each committed release state and in each batch, then
restarted (as systemd's Restart=always would) once another member leads. The group ends current,
every member agrees, every host runs the new version, no host switched twice."""

from __future__ import annotations

import json

import pytest

from tests.chaos.common import (ORDER, check_outcome, gate_checks, kill_leader, leader_of, open_gates, start,
                                status_or_none, switches)
from tests.support.fleet import wait_for

SHORT = {(2, 3)}  # what `make test` runs (batch 2 of 3); the rest is `make test-chaos`


def mark(case: tuple, *values: object) -> object:
    return pytest.param(*values, marks=() if case in SHORT else pytest.mark.long)


def killed_at(state: dict, old_term: int) -> str:
    """The release state committed when the leader of `old_term` died: the last release state
    recorded before a newer leader announced itself."""
    before = [e for e in state["history"] if e["term"] is not None and e["term"] <= old_term and e["to"]]
    return before[-1]["to"] if before else "?"


@pytest.mark.parametrize("at, n", [mark((at, n), at, n) for at in ORDER[:3] for n in (3, 5, 10)])
def test_leader_killed_at_a_committed_state(make_fleet, record_property, at: str, n: int) -> None:
    """`running_old_release` is held by a slow mirror (the leader is downloading).
    `downloaded_in_leader` lasts as long as the leader hashes the artifact (~40 ms for 48 MiB
    here), `verified` one commit round trip (~10 ms): the test watches the registry file the leader
    writes on every state change and kills the leader the moment it names the state (or a later
    one), and records the state the kill hit (the last one committed before a newer leader)."""
    fleet = make_fleet(n, batch_fraction=0.2 if n == 5 else 0.1)
    slow = at == "running_old_release"
    fleet.start_mirror(rate=512 * 1024 if slow else 0)
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=(2 << 20) if slow else (48 << 20))
    fleet.start()
    leader = leader_of(fleet)
    release = start(fleet, "2.4", via=leader)
    target = ORDER.index(at)

    def reached() -> bool:
        if slow:
            rel = (status_or_none(leader) or {}).get("state", {}).get("release") or {}
            return rel.get("state") == at and rel.get("artifact") is not None
        reported = json.loads(fleet.registry_file.read_text())
        return reported["release_id"] == release["id"] and ORDER.index(reported["state"]) >= target
    wait_for(reached, 60, f"the leader in {at}", interval=0.001)
    old, old_term = kill_leader(fleet)
    leader_of(fleet)
    old.start()
    state = check_outcome(fleet, release["id"], "current", "2.4", "2.3")
    hit = killed_at(state, old_term)
    record_property("note", f"n={n} killed in {hit}")
    if slow:
        assert hit == at, f"killed in {hit}, not {at}"


@pytest.mark.parametrize("batch, n", [mark((k, n), k, n) for n in (3, 5, 10) for k in range(1, n + 1)])
def test_leader_killed_in_each_batch(make_fleet, batch: int, n: int) -> None:
    """Every host's pre-flight waits on a gate the test opens: batch k is held with its hosts
    installed and checking, the leader is killed there, then every gate opens."""
    fleet = make_fleet(n, batch_fraction=0.1 if n != 5 else 0.2)
    gate_checks(fleet)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    release = start(fleet, "2.4")
    batches = wait_for(lambda: fleet.release_state()["batches"], 30, "the batches planned")
    assert len(batches) == n
    open_gates(fleet, [h for b in batches[:batch - 1] for h in b])
    held = batches[batch - 1]
    by_id = {h.id: h for h in fleet.hosts}

    def holding() -> bool:
        rel = fleet.release_state()
        return (rel["state"] == "rolling" and rel["batch"] == batch - 1
                and all(switches(by_id[h], release["id"], "install") for h in held))
    wait_for(holding, 90, f"batch {batch} installed and held at its gate", interval=0.1)
    old, _term = kill_leader(fleet)
    leader_of(fleet)
    old.start()
    open_gates(fleet, [h.id for h in fleet.hosts])
    check_outcome(fleet, release["id"], "current", "2.4", "2.3")
