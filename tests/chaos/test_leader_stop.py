"""Scenario 2: the leader is frozen (SIGSTOP) past the election timeout inside one of its steps,
then continued (SIGCONT). A newer leader takes over; nothing the deposed leader proposes for its
old term is applied; the release ends current with every host switched once."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.common import (check_outcome, deposed_leader_changed_nothing, gate_checks, leader_of, open_gates,
                                start, switches)
from tests.support.fleet import wait_for


@pytest.mark.parametrize("step, n", [("download", 3), pytest.param("download", 5, marks=pytest.mark.long),
                                     pytest.param("rolling", 3, marks=pytest.mark.long),
                                     pytest.param("rolling", 5, marks=pytest.mark.long)])
def test_leader_frozen_inside_its_step_changes_nothing_after_its_term(make_fleet, record_property, step: str,
                                                                     n: int) -> None:
    """`download`: the mirror sends the 2 MiB artifact at 512 KiB/s, the leader is frozen once the
    manifest is committed and continued once a newer leader announced its term; it then finishes
    its download and proposes `downloaded` in its old term. `rolling`: batch 1 is held by a gate,
    the leader frozen there; the gates open once a newer leader leads."""
    fleet = make_fleet(n, batch_fraction=0.2 if n == 5 else 0.1)
    if step == "rolling":
        gate_checks(fleet)
    fleet.start_mirror(rate=512 * 1024 if step == "download" else 0)
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=(2 << 20) if step == "download" else 0)
    fleet.start()
    old = leader_of(fleet)
    old_term = old.status()["node"]["term"]
    release = start(fleet, "2.4", via=old)
    if step == "download":
        wait_for(lambda: (fleet.release_state(old) or {}).get("artifact"), 20, "the manifest committed")
    else:
        first = wait_for(lambda: fleet.release_state(old)["batches"], 20, "the batches planned")[0]
        wait_for(lambda: all(switches(h, release["id"], "install") for h in fleet.hosts if h.id in first), 60,
                 "batch 1 installed and held at its gate")
    old.proc.send_signal(signal.SIGSTOP)
    others = [h for h in fleet.hosts if h is not old]
    try:
        wait_for(lambda: any(h.status()["node"]["role"] == "leader" and h.status()["state"]["leader_term"] > old_term
                             for h in others), 30, "a newer leader that announced its term")
    finally:
        old.proc.send_signal(signal.SIGCONT)
    open_gates(fleet, [h.id for h in fleet.hosts])
    state = check_outcome(fleet, release["id"], "current", "2.4", "2.3")
    deposed_leader_changed_nothing(state, old, old_term)
    stale = [e for e in old.events("proposal_rejected") if e.get("term") == old_term]
    record_property("note", f"{step} n={n}: {len(stale)} late proposal(s) of the deposed leader rejected")
