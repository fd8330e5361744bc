"""What every chaos trial checks, as a user would: the release ended in the right state, every
member holds the same replicated state, every host's `current` symlink names the outcome's
version, and no host switched `current` twice for one release (counted from the `activated`
events in each host's JSON log, the agent's own action log)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any


from scripts.localfleet.common import start_mirror
from tests.support.fleet import Fleet, Host, wait_for

TERMINAL = ("current", "rolled_back", "aborted")
ORDER = ("running_old_release", "downloaded_in_leader", "verified", "rolling", "current")
LEADER_OPS = ("manifest", "downloaded", "verified", "open_batch", "fail", "revert_timeout")


def start(fleet: Fleet, version: str, via: Host | None = None) -> dict[str, Any]:
    resp = (via or fleet.hosts[0]).post("/v1/releases", {"version": version})
    assert resp.status_code == 201, resp.text
    return resp.json()["release"]


def status_or_none(host: Host) -> dict[str, Any] | None:
    try:
        return host.status() if host.alive() else None
    except OSError:
        return None


def leader_of(fleet: Fleet, timeout: float = 30) -> Host:
    return wait_for(fleet.leader, timeout, "one leader with every live agent answering")


def kill_leader(fleet: Fleet) -> tuple[Host, int]:
    """SIGKILL the current leader; (the killed host, the term it led in)."""
    leader = leader_of(fleet)
    term = leader.status()["node"]["term"]
    leader.kill(signal.SIGKILL)
    return leader, term


def agreed_state(fleet: Fleet, timeout: float = 60) -> dict[str, Any]:
    """Wait until every live member is ready and holds the same replicated state; return it."""
    def same() -> dict[str, Any] | None:
        docs = [h.status() for h in fleet.hosts if h.alive()]
        if not all(d["node"]["ready"] for d in docs):
            return None
        states = {json.dumps(d["state"], sort_keys=True) for d in docs}
        return docs[0]["state"] if len(states) == 1 else None
    return wait_for(same, timeout, "every member to agree on the replicated state", interval=0.2)


def switches(host: Host, release_id: str, step: str) -> int:
    return sum(1 for e in host.events("activated") if e.get("release") == release_id and e.get("step") == step)


def check_outcome(fleet: Fleet, release_id: str, expect: str, new: str, old: str,
                  timeout: float = 180) -> dict[str, Any]:
    """The release `release_id` ends `expect`; every member agrees; every host runs what the
    outcome says; no host activated the new version (or reverted) twice."""
    done = wait_for(lambda: (r := fleet.release_state()) and r["id"] == release_id and r["state"] in TERMINAL
                    and r, timeout, f"release {release_id} to end", interval=0.2)
    assert done["state"] == expect, json.dumps(done, indent=1)[:3000]
    state = agreed_state(fleet)
    assert state["release"]["state"] == expect
    want = new if expect == "current" else old
    # A group whose hosts were installed before its agents knew nothing of a version (None) yet.
    assert (state["current_version"] == new) == (expect == "current"), state["current_version"]
    for host in fleet.hosts:
        assert host.current() == want, f"{host.id}: current -> {host.current()}, the group says {want}"
        installs = switches(host, release_id, "install")
        assert installs <= 1, f"{host.id} activated {new} {installs} times in {release_id}"
        assert switches(host, release_id, "revert") <= 1, f"{host.id} reverted twice in {release_id}"
        if expect == "current":
            skipped = [e for e in host.events("install_skipped") if e.get("release") == release_id]
            assert installs == 1 or skipped, f"{host.id} never activated {new}"
    return state


def deposed_leader_changed_nothing(state: dict[str, Any], old: Host, old_term: int) -> None:
    """Nothing the leader of `old_term` proposed for a leader step was applied after a newer leader
    announced its term."""
    lead = next((e for e in state["history"] if e["op"] == "lead" and e["term"] > old_term), None)
    assert lead is not None, "no newer leader announced its term"
    late = [e for e in state["history"] if e["seq"] > lead["seq"] and e["actor"] == old.id
            and e["term"] <= old_term and e["op"] in LEADER_OPS]
    assert not late, f"the deposed leader's results were applied: {late}"


def gate_checks(fleet: Fleet) -> None:
    """Every host's pre-flight waits for a file `open-<host>` in the fleet's directory: a batch
    is held until the test opens its hosts' gates."""
    for host in fleet.hosts:
        host.checks.append({"name": "gate", "type": "command", "command": f"test -e {fleet.base}/open-{host.id}",
                            "retries": 1200, "interval": 0.1, "timeout": 5})


def open_gates(fleet: Fleet, ids: list[str]) -> None:
    for host_id in ids:
        (fleet.base / f"open-{host_id}").write_text("")


def second_mirror(fleet: Fleet, port: int = 8001) -> tuple[str, Path]:
    """A second mirror process (same address, another port) serving a copy of the fleet's mirror
    directory, where a test can plant faults without touching the first; (its URL, its root)."""
    root = fleet.base / "mirror2"
    shutil.copytree(fleet.mirror_dir, root)
    proc = start_mirror(fleet.mirror_ip, port, root, stats=fleet.base / "mirror2-stats.json")
    fleet.pids.add(proc.pid)
    url = f"http://{fleet.mirror_ip}:{port}"
    return url, root
