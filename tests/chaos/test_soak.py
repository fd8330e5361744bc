"""Scenario 6 (long suite only): N consecutive releases on a 5-host group (QR_SOAK_RELEASES,
default 100), alternating between two versions, every fourth with a pre-flight that fails on one
host, the leader SIGKILLed (and restarted) in a random third of them. Every release must end
where it should (0 stuck), with every member agreeing (0 divergent) and no host switching twice.
Agent RSS (/proc/<pid>/status VmRSS) and the Raft journal size are printed after release 10 and
at the end, and must stay flat: at the end no agent above 1.25 x the largest RSS after release
10 + 16 MiB, no journal above 2 x the largest after release 10 + 1 MiB (the group state is
bounded, history 200 entries, applied ids 512, and the journal is compacted every 200 entries,
so growth beyond allocator slack and one compaction interval is a leak)."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest

from tests.chaos.common import TERMINAL, check_outcome, leader_of
from tests.support.fleet import Fleet, wait_for

RELEASES = int(os.environ.get("QR_SOAK_RELEASES", "100"))
MIB = 1 << 20


def rss(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def footprint(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """host -> (agent RSS, raft.journal bytes)."""
    return {h.id: (rss(h.proc.pid), (h.data / "raft" / "raft.journal").stat().st_size) for h in fleet.hosts}


def show(label: str, fp: dict[str, tuple[int, int]]) -> str:
    return f"{label}: " + ", ".join(f"{h} rss {r / MIB:.1f} MiB journal {j / MIB:.2f} MiB" for h, (r, j) in fp.items())


@pytest.mark.long
def test_soak_consecutive_releases_end_right_and_stay_flat(make_fleet, record_property) -> None:
    seed = int(os.environ.get("QR_SOAK_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    fleet = make_fleet(5, batch_fraction=0.4)
    for host in fleet.hosts:
        host.checks.append({"name": "fails-here", "type": "command", "command": f"test ! -e {host.dir}/fail-now",
                            "retries": 1, "timeout": 5})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    running, kills, failed, marks = "2.3", 0, 0, {}
    for n in range(1, RELEASES + 1):
        target = "2.4" if running == "2.3" else "2.3"
        fail = n % 4 == 0
        victim = rnd.choice(fleet.hosts) if fail else None
        if victim:
            (victim.dir / "fail-now").write_text("")
        leader = leader_of(fleet)

        def started(target: str = target, leader=leader) -> dict | None:
            resp = leader.post("/v1/releases", {"version": target, "allow_downgrade": True})
            assert resp.status_code in (201, 409), resp.text
            return resp.json()["release"] if resp.status_code == 201 else None
        release = wait_for(started, 30, f"release {n} ({target}) started", interval=0.2)
        if rnd.random() < 1 / 3:
            at = rnd.randrange(3)
            hit = wait_for(lambda at=at: (r := fleet.release_state(leader)) and (
                r["state"] in TERMINAL or (r["state"] == "rolling" and r["batch"] >= at)) and r, 60,
                f"release {n} in batch {at + 1}", interval=0.02)
            if hit["state"] == "rolling":
                leader.kill(signal.SIGKILL)
                kills += 1
                leader_of(fleet)
                leader.start()
        expect = "rolled_back" if fail else "current"
        check_outcome(fleet, release["id"], expect, target, running, timeout=120)
        if victim:
            (victim.dir / "fail-now").unlink()
            failed += 1
        else:
            running = target
        if n == min(10, RELEASES):
            marks["after 10"] = footprint(fleet)
    marks["end"] = footprint(fleet)
    for label, fp in marks.items():
        print(show(label, fp))
    record_property("note", f"{RELEASES} releases (seed {seed}): {failed} failed pre-flight, {kills} leader kills; "
                            + "; ".join(show(label, fp) for label, fp in marks.items()))
    rss10 = max(r for r, _ in marks["after 10"].values())
    journal10 = max(j for _, j in marks["after 10"].values())
    for host, (r, j) in marks["end"].items():
        assert r <= 1.25 * rss10 + 16 * MIB, f"{host}: RSS {r / MIB:.1f} MiB (after release 10: {rss10 / MIB:.1f})"
        assert j <= 2 * journal10 + MIB, f"{host}: journal {j / MIB:.2f} MiB (after release 10: {journal10 / MIB:.2f})"
