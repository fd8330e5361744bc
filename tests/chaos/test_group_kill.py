"""Scenario 3: every agent of the group is SIGKILLed mid-rollout and restarted. The group comes
back from its Raft journals, continues from the committed state to current, and no host switches
`current` twice (an agent killed between switching and logging finds the switch done and logs
`install_skipped`)."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.common import check_outcome, gate_checks, leader_of, open_gates, start, switches
from tests.support.fleet import wait_for


@pytest.mark.parametrize("at, n", [("rolling", 3), pytest.param("rolling", 5, marks=pytest.mark.long),
                                   pytest.param("running_old_release", 3, marks=pytest.mark.long),
                                   pytest.param("running_old_release", 5, marks=pytest.mark.long)])
def test_whole_group_killed_mid_rollout_continues_to_current(make_fleet, at: str, n: int) -> None:
    """`rolling`: batch 2 installed and held at its gate; `running_old_release`: the leader is
    downloading from a slow mirror. Every agent is killed at once, then all are started again."""
    fleet = make_fleet(n, batch_fraction=0.2 if n == 5 else 0.1)
    gate_checks(fleet)
    rolling = at == "rolling"
    fleet.start_mirror(rate=0 if rolling else 512 * 1024)
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=0 if rolling else (2 << 20))
    fleet.start()
    release = start(fleet, "2.4")
    batches = wait_for(lambda: fleet.release_state()["batches"], 30, "the batches planned")
    if rolling:
        open_gates(fleet, batches[0])
        wait_for(lambda: all(switches(h, release["id"], "install") for h in fleet.hosts if h.id in batches[1]), 60,
                 "batch 2 installed and held at its gate")
    else:
        wait_for(lambda: fleet.release_state()["state"] == at, 10, f"the group in {at}")
    committed = fleet.hosts[0].status()["state"]
    for host in fleet.hosts:
        host.kill(signal.SIGKILL)
    for host in fleet.hosts:
        host.start()
    leader_of(fleet, timeout=60)
    again = wait_for(lambda: (s := fleet.hosts[0].status()["state"])["seq"] >= committed["seq"] and s, 30,
                     "the committed history back on h01")
    kept = [e for e in again["history"] if e["seq"] <= committed["seq"]]
    assert kept == committed["history"][-len(kept):], "the restarted group lost or changed committed entries"
    open_gates(fleet, [h.id for h in fleet.hosts])
    check_outcome(fleet, release["id"], "current", "2.4", "2.3")
