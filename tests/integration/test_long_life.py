"""What a group needs to live for a year, on real agents (processes on 127.x.y.z, pysyncobj over
TCP with the group secret, a real HTTP mirror): Raft snapshots that succeed and restore, a member
that catches up by snapshot transfer, old releases pruned, a deposed leader whose late results
change nothing, steps bounded by their deadline whatever the mirror does, releases that start
only where they can finish, and an API that says what happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import requests

from tests.support.fleet import Fleet, Host, wait_for

TERMINAL = ("current", "rolled_back", "aborted")


def start(fleet: Fleet, version: str, via: Host | None = None, **body: object) -> requests.Response:
    return (via or fleet.hosts[0]).post("/v1/releases", {"version": version, **body})


def release_to(fleet: Fleet, version: str, timeout: float = 120) -> dict:
    resp = start(fleet, version)
    assert resp.status_code in (200, 201), resp.text
    done = wait_for(lambda: (r := fleet.release_state()) and r["version"] == version and r["state"] in TERMINAL
                    and r, timeout, f"release {version} to end", interval=0.1)
    return done


def log_lines(host: Host) -> list[str]:
    return host.log_path.read_text(errors="replace").splitlines() if host.log_path.exists() else []


def assert_json_log(host: Host) -> None:
    for line in log_lines(host):
        assert line.startswith("{") and json.loads(line), f"{host.id}: not a JSON line: {line[:300]}"


def test_snapshots_bound_the_journal_and_a_lagging_member_catches_up_by_snapshot(make_fleet):
    """500 committed commands with compaction every 50 entries: every node writes raft.dump and
    keeps a short journal; a member down for 300 commands rejoins through snapshot transfer and
    agrees; after a restart of every agent the group comes back from its dumps."""
    fleet = make_fleet(3, extra={"raft": {"compaction_entries": 50}})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    assert release_to(fleet, "2.4")["state"] == "current"
    leader = fleet.leader()
    lagging = next(h for h in fleet.hosts if h is not leader)
    via = next(h for h in fleet.hosts if h is not lagging)

    def commit(n: int) -> None:
        for _ in range(n):  # each is one committed log entry (a no-op for the state machine)
            resp = start(fleet, "2.4", via=via)
            assert resp.status_code == 200 and resp.json()["changed"] is False, resp.text

    commit(100)
    lagging.kill(signal.SIGKILL)
    commit(300)
    entries = via.status()["node"]["log_entries"]
    assert entries < 120, f"the journal of {via.id} holds {entries} entries: compaction does not happen"
    lagging.start()
    commit(100)

    def agreed() -> bool:
        docs = [h.status() for h in fleet.hosts]
        return all(d["node"]["ready"] for d in docs) and len({json.dumps(d["state"]["applied"]) for d in docs}) == 1
    wait_for(agreed, 60, "the lagging member to catch up and agree")
    for host in fleet.hosts:
        dump = host.data / "raft" / "raft.dump"
        assert dump.is_file() and dump.stat().st_size > 500, f"{host.id}: no Raft snapshot"
        assert host.status()["node"]["log_entries"] < 120, host.id
        assert oct((host.data / "raft" / "raft.journal").stat().st_mode & 0o777) == "0o600", host.id
        assert not [line for line in log_lines(host) if "Failed to store full dump" in line], host.id
        assert_json_log(host)

    for host in fleet.hosts:
        host.kill(signal.SIGKILL)
    for host in fleet.hosts:
        host.start()
    wait_for(fleet.leader, 60, "a leader after restarting every agent")
    for host in fleet.hosts:
        state = wait_for(lambda h=host: h.status()["node"]["ready"] and h.status()["state"], 30, f"{host.id} ready")
        assert state["current_version"] == "2.4" and state["release"]["state"] == "current", host.id


def test_old_releases_are_pruned_after_every_release(make_fleet):
    """Six delta releases with keep_releases 2: at most two release directories, two artifacts and
    two seed chunk indexes on every host, `current` among them; the last rollback target kept. From
    the second release on, members build the file from their own chunks and fetch only the few
    changed chunks from a peer (docs/delta.md)."""
    fleet = make_fleet(3, extra={"install": {"keep_releases": 2}})
    fleet.start_mirror()
    fleet.preinstall("1.0")
    versions = [f"1.{n}" for n in range(1, 7)]
    size = 2 << 20
    for version in versions:
        fleet.build_release(version, payload_bytes=size, chunks=True)
    fleet.start()
    for version in versions:
        assert release_to(fleet, version)["state"] == "current", version

    def pruned() -> bool:
        return all(len(os.listdir(h.root / "releases")) <= 2 and len(os.listdir(h.data / "store" / "sha256")) <= 2
                   and len(os.listdir(h.data / "store" / "chunks")) <= 2 for h in fleet.hosts)
    wait_for(pruned, 30, "every host pruned to two releases")
    from_peers = [e for h in fleet.hosts for e in h.events("chunks_fetched") if e.get("source") not in (None, "local")]
    assert {e["version"] for e in from_peers} >= set(versions[1:]), from_peers
    assert all(e["fetched_bytes"] < size // 10 and e["reused_bytes"] > size // 2 for e in from_peers), from_peers
    fallbacks = [e for h in fleet.hosts for e in h.events("chunks_fallback")]
    assert not fallbacks, json.dumps(fallbacks)
    for host in fleet.hosts:
        assert host.current() == "1.6"
        assert sorted(os.listdir(host.root / "releases")) == ["1.5", "1.6"], host.id
        assert any(e["event"] == "pruned" for e in map(json.loads, log_lines(host)))


def test_a_deposed_leader_changes_nothing_after_it_lost_its_term(make_fleet):
    """The leader is stopped (SIGSTOP) inside its download step past the election timeout, then
    continued: a new leader announced a newer term and took over; whatever the old leader
    proposes for its step is rejected as stale, nothing is installed twice, the release ends current."""
    fleet = make_fleet(3, step_deadline=60)
    fleet.start_mirror(rate=512 * 1024)  # ~8 s for the 4 MiB artifact: the leader is inside its step
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=4 << 20)
    fleet.start()
    old = fleet.leader()
    old_term = old.status()["node"]["term"]
    assert start(fleet, "2.4", via=old).status_code == 201
    wait_for(lambda: (fleet.release_state(old) or {}).get("artifact"), 20, "the manifest committed")
    old.proc.send_signal(signal.SIGSTOP)
    others = [h for h in fleet.hosts if h is not old]
    try:
        new = wait_for(lambda: next((h for h in others if h.status()["node"]["role"] == "leader"
                                     and h.status()["state"]["leader_term"] > old_term), None), 30,
                       "a new leader that announced its term")
    finally:
        old.proc.send_signal(signal.SIGCONT)
    done = fleet.wait_release(TERMINAL, timeout=180)
    assert done["state"] == "current", json.dumps(done)[:2000]
    state = new.status()["state"]
    # The new leader's announcement of its new term (it may have led once before, at the start).
    lead = next(e for e in state["history"] if e["op"] == "lead" and e["actor"] == new.id and e["term"] > old_term)
    late = [e for e in state["history"] if e["seq"] > lead["seq"] and e["actor"] == old.id
            and e["term"] <= old_term and e["op"] in ("manifest", "downloaded", "verified", "open_batch", "fail")]
    assert not late, f"the deposed leader's results were applied: {late}"
    for host in fleet.hosts:
        installs = [e for e in host.events("activated") if e.get("version") == "2.4" and e.get("step") == "install"]
        assert len(installs) == 1, (host.id, installs)
        assert host.current() == "2.4"


def _trickle_case(make_fleet, what: str) -> None:
    deadline = 10.0
    fleet = make_fleet(3, step_deadline=deadline)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    archive = fleet.build_release("2.4")
    target = fleet.mirror_dir / "demo-app" / "2.4" / ("manifest.json" if what == "manifest" else archive.name)
    # The start's own manifest check is served at full speed; the leader's fetch trickles.
    target.with_name(target.name + ".trickle").write_text("1.0 1" if what == "manifest" else "1.0 0")
    fleet.start()
    began = time.monotonic()
    assert start(fleet, "2.4").status_code == 201
    done = fleet.wait_release(TERMINAL, timeout=60)
    took = time.monotonic() - began
    assert done["state"] == "rolled_back", done
    assert done["failure"]["step"] == "deadline" and "step_deadline" in done["failure"]["reason"], done["failure"]
    assert took <= deadline * 1.1 + 0.5, f"rolled back after {took:.1f}s with step_deadline {deadline}s"
    assert all(h.current() == "2.3" for h in fleet.hosts)


def test_a_trickling_manifest_ends_rolled_back_within_the_step_deadline(make_fleet):
    _trickle_case(make_fleet, "manifest")


def test_a_trickling_artifact_ends_rolled_back_within_the_step_deadline(make_fleet):
    _trickle_case(make_fleet, "artifact")


def test_transient_mirror_errors_are_retried_within_the_step(make_fleet):
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    archive = fleet.build_release("2.4")
    (fleet.mirror_dir / "demo-app" / "2.4" / (archive.name + ".fail")).write_text("2 503")
    fleet.start()
    leader = fleet.leader()
    assert release_to(fleet, "2.4")["state"] == "current"
    retries = [e for e in leader.events("step_retry") if e.get("step") == "download"]
    assert retries and "503" in retries[0]["cause"], retries


def test_a_release_starts_only_where_it_can_finish(make_fleet):
    """A member down: the start is refused naming it (allow_unreachable releases to the others);
    a version on no mirror is refused before anything is committed."""
    fleet = make_fleet(3, extra={"rollout": {"member_timeout": 2.0}})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    missing = start(fleet, "9.9")
    assert missing.status_code == 409 and missing.json()["detail"]["reason"] == "not_published", missing.text
    assert "not published on any mirror" in missing.json()["error"]
    assert fleet.release_state() is None, "nothing was committed"

    leader = fleet.leader()
    down = next(h for h in fleet.hosts if h is not leader)
    down.kill(signal.SIGKILL)
    via = next(h for h in fleet.hosts if h is not down and h is not leader)

    def marked() -> bool:
        members = {m["id"]: m for m in via.status()["members"]}
        return not members[down.id]["reachable"] and members[down.id]["unreachable_since"] is not None
    wait_for(marked, 30, f"{down.id} reported unreachable")
    refused = start(fleet, "2.4", via=via)
    assert refused.status_code == 409 and down.id in refused.json()["error"], refused.text
    assert "allow_unreachable" in refused.json()["error"]
    assert fleet.release_state(via) is None

    allowed = start(fleet, "2.4", via=via, allow_unreachable=True)
    assert allowed.status_code == 201, allowed.text
    done = fleet.wait_release(TERMINAL)
    assert done["state"] == "current" and done["excluded"] == [down.id] and down.id not in done["hosts"]
    assert down.current() == "2.3"
    down.start()
    wait_for(lambda: all(m["reachable"] for m in via.status()["members"]), 30, f"{down.id} reachable again")
    assert "runs 2.3" in wait_for(lambda: down.status()["node"]["drift"], 30, "drift shown on the left-out host")


def test_a_command_that_cannot_commit_yet_answers_202_and_is_followed_by_its_id(make_fleet):
    """A pause sent to a member cut off from its group: 202 with the operation id, `pending`;
    once the group is back the same id reads `committed`, and the pause named its release."""
    fleet = make_fleet(3)
    fleet.start_mirror(rate=256 * 1024)
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=8 << 20)
    fleet.start()
    assert start(fleet, "2.4").status_code == 201
    release = fleet.release_state()
    lone = fleet.hosts[0]
    others = [h for h in fleet.hosts if h is not lone]
    for host in others:
        host.proc.send_signal(signal.SIGSTOP)
    try:
        resp = lone.post("/v1/releases/current/pause", {"release": release["id"]})
        assert resp.status_code == 202, resp.text
        op = resp.json()["operation"]
        assert op["status"] == "pending"
        again = lone.get(f"/v1/operations/{op['id']}")
        assert again.status_code == 200 and again.json()["status"] == "pending"
    finally:
        for host in others:
            host.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: lone.get(f"/v1/operations/{op['id']}").json()["status"] == "committed", 60,
             "the pause to commit once the group is back")
    assert fleet.wait_release(("paused",), timeout=30)["id"] == release["id"]
    wrong = lone.post("/v1/releases/current/resume", {"release": "2.4#99"})
    assert wrong.status_code == 409 and "not the group's latest release" in wrong.json()["error"]
    assert lone.post("/v1/releases/current/abort", {"release": release["id"]}).status_code == 200


def test_the_api_survives_bad_framing_idle_floods_and_resets(make_fleet):
    fleet = make_fleet(1, extra={"api": {"max_connections": 16}})
    fleet.start()
    host = fleet.hosts[0]
    token = fleet.auth["Authorization"]
    with socket.create_connection((host.ip, fleet.api_port), timeout=5) as sock:
        sock.sendall(f"POST /v1/releases HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
                     "Content-Length: -1\r\n\r\n".encode())
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 400") and "Content-Length" in answer, answer

    idle = [socket.create_connection((host.ip, fleet.api_port), timeout=5) for _ in range(200)]
    try:
        threads = int(next(line.split()[1] for line in Path(f"/proc/{host.proc.pid}/status").read_text().splitlines()
                           if line.startswith("Threads:")))
        assert threads < 16 + 30, f"{threads} threads for 200 idle connections"
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: host.get().status_code == 200, 10, "the API answers again")

    with socket.create_connection((host.ip, fleet.api_port), timeout=5) as sock:  # reset mid-request
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset = wait_for(lambda: [e for e in host.events("api_connection_error") if "Reset" in e.get("cause", "")], 10,
                     "the client reset logged as one event")
    assert reset[0]["level"] == "info"
    assert host.get().status_code == 200
    refused = host.events("api_connection_refused")
    assert 1 <= len(refused) <= 10, f"{len(refused)} lines for refused connections: the repeat limit failed"
    assert_json_log(host)
