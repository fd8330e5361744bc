"""A group of real agents rolls a signed release through batches, rolls back on a failed
pre-flight, survives the loss of its leader and of every member, and refuses untrusted input.

Everything here is real: agent processes on 127.x.y.z, pysyncobj over TCP with the group
secret, an HTTP mirror process, releases signed with `quorum-rollout sign`, and the demo
service restarted by the agent's hook and probed by its pre-flight check.
"""

from __future__ import annotations

import json
import signal

from tests.support.fleet import Fleet, Host, wait_for


def start_release(fleet: Fleet, version: str, via: Host | None = None) -> dict:
    resp = (via or fleet.hosts[0]).post("/v1/releases", {"version": version})
    assert resp.status_code == 201, resp.text
    return resp.json()["release"]


def installs(host: Host, version: str) -> int:
    return sum(1 for e in host.events("activated") if e.get("version") == version and e.get("step") == "install")


def test_ten_hosts_roll_to_current_in_ten_batches(make_fleet):
    fleet = make_fleet(10)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    archive = fleet.build_release("2.4")
    fleet.start()
    leader = fleet.leader()
    served_before = fleet.mirror_bytes()

    release = start_release(fleet, "2.4", via=fleet.hosts[3])  # any member accepts it
    assert release["version"] == "2.4" and release["state"] == "running_old_release"
    done = fleet.wait_release(("current", "rolled_back", "aborted"))
    assert done["state"] == "current", json.dumps(done, indent=1)

    assert len(done["batches"]) == 10 and all(len(b) == 1 for b in done["batches"])
    assert done["batches"][-1] == [leader.id], "the leader goes last"
    for host in fleet.hosts:
        assert host.current() == "2.4", host.id
        assert host.health()["version"] == "2.4", host.id
        assert installs(host, "2.4") == 1, host.id
    opened = [e["detail"] for e in host.status()["state"]["history"] if e["detail"].startswith("batch ")]
    assert opened == [f"batch {k} of 10" for k in range(1, 11)]
    served = {path: n - served_before.get(path, 0) for path, n in fleet.mirror_bytes().items()}
    assert served["demo-app/2.4/demo-app-2.4.tar.gz"] == archive.stat().st_size, "exactly one copy from the mirror"
    assert sum(served.values()) < 2 * archive.stat().st_size + 64 * 1024, served
    registry = wait_for(lambda: json.loads(fleet.registry_file.read_text())["state"] == "current"
                        and json.loads(fleet.registry_file.read_text()), 10, "registry says current")
    assert registry["group"] == fleet.group and registry["version"] == "2.4"

    # The same version again is not a change; every member agrees on the state.
    again = fleet.hosts[7].post("/v1/releases", {"version": "2.4"})
    assert again.status_code == 200 and again.json()["changed"] is False
    assert {h.status()["state"]["current_version"] for h in fleet.hosts} == {"2.4"}


def test_failed_preflight_in_batch_three_rolls_the_group_back(make_fleet):
    fleet = make_fleet(10)
    for host in fleet.hosts:  # a host-local incompatibility with one version, seen by a pre-flight check
        host.checks.append({"name": "libs-ok", "type": "command",
                            "command": f"test ! -e {host.dir}/incompatible-{{version}}", "retries": 1, "timeout": 5})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    leader = fleet.leader()
    victim = sorted(h.id for h in fleet.hosts if h is not leader)[2]  # batch 3 of 10
    (fleet.base / victim / "incompatible-2.4").write_text("")

    start_release(fleet, "2.4")
    done = fleet.wait_release(("current", "rolled_back", "aborted"))
    assert done["state"] == "rolled_back"
    assert done["failure"]["host"] == victim
    assert done["failure"]["step"] == "preflight:libs-ok"
    assert "incompatible-2.4" in done["failure"]["reason"], done["failure"]
    statuses = {h: e["status"] for h, e in done["hosts"].items()}
    updated_first = sorted(h.id for h in fleet.hosts if h is not leader)[:3]
    assert all(statuses[h] == "reverted" for h in updated_first), statuses
    assert all(s in ("reverted", "skipped") for s in statuses.values()), statuses
    for host in fleet.hosts:
        assert host.current() == "2.3", host.id
        assert wait_for(lambda h=host: h.health()["version"] == "2.3", 10, f"{host.id} serves 2.3")
    assert json.loads(fleet.registry_file.read_text())["state"] == "rolled_back"
    # Rollback went newest batch first.
    reverted = [e["detail"].split()[0] for e in fleet.hosts[0].status()["state"]["history"]
                if e["detail"].endswith(" reverted")]
    assert reverted == list(reversed(updated_first))


def test_a_failure_within_the_budget_reverts_that_host_alone_and_the_release_goes_on(make_fleet):
    """rollout.max_failures: 1 and a bake time: batch 1's host fails its pre-flight check, goes back to
    2.3 alone, and the others bake, are re-checked and roll on; the release ends current listing it."""
    fleet = make_fleet(3, batch_fraction=0.3, extra={"rollout": {"max_failures": 1, "bake_time": 1.0}})
    for host in fleet.hosts:
        host.checks.append({"name": "libs-ok", "type": "command",
                            "command": f"test ! -e {host.dir}/incompatible-{{version}}", "retries": 1, "timeout": 5})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    leader = fleet.leader()
    victim = sorted(h.id for h in fleet.hosts if h is not leader)[0]  # batch 1 of 3
    (fleet.base / victim / "incompatible-2.4").write_text("")

    start_release(fleet, "2.4")
    waiting = wait_for(lambda: leader.status()["waiting"], 60, "the next batch waits")
    assert waiting.startswith(("baking until 20", "re-checking ")), waiting
    done = fleet.wait_release(("current", "rolled_back", "aborted"))
    assert done["state"] == "current", json.dumps(done, indent=1)
    assert [(f["host"], f["step"]) for f in done["failed_within_budget"]] == [(victim, "preflight:libs-ok")]
    assert done["hosts"][victim]["status"] == "reverted" and done["hosts"][victim]["version"] == "2.3"
    for host in fleet.hosts:
        want = "2.3" if host.id == victim else "2.4"
        assert host.current() == want, host.id
        assert wait_for(lambda h=host, v=want: h.health()["version"] == v, 10, f"{host.id} serves {want}")
        assert host.status()["node"]["drift"] is None, host.id
    details = [e["detail"] for e in leader.status()["state"]["history"] if e.get("release") == done["id"]]
    assert [d for d in details if d.startswith("bake time over")] == [
        "bake time over: re-checking 0 updated hosts", "bake time over: re-checking 1 updated host"], details
    assert details[-1] == f"2 of 3 hosts run 2.4; failed within the budget: {victim}"
    registry = wait_for(lambda: json.loads(fleet.registry_file.read_text()), 10, "a registry record")
    assert wait_for(lambda: json.loads(fleet.registry_file.read_text())["failed_within_budget"] == [victim], 10,
                    "the registry lists the host"), registry


def test_leader_killed_while_rolling_another_leads_and_completes(make_fleet):
    fleet = make_fleet(5, batch_fraction=0.2)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    old = fleet.leader()
    start_release(fleet, "2.4")
    wait_for(lambda: (r := fleet.release_state()) and r["state"] == "rolling" and r["batch"] >= 1,
             60, "rolling batch 2")
    old.kill(signal.SIGKILL)
    new = wait_for(fleet.leader, 30, "a new leader")
    assert new is not old
    old.start()  # as systemd's Restart=always would
    done = fleet.wait_release(("current", "rolled_back", "aborted"))
    assert done["state"] == "current", json.dumps(done, indent=1)
    for host in fleet.hosts:
        assert host.current() == "2.4"
        assert installs(host, "2.4") == 1, f"{host.id} installed {installs(host, '2.4')} times"
    terms = {e["term"] for e in new.status()["state"]["history"] if e["op"] in ("downloaded", "verified")}
    assert terms, "history records the leader's term"


def test_every_agent_killed_mid_rollout_resumes_and_completes(make_fleet):
    fleet = make_fleet(4, batch_fraction=0.25)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    start_release(fleet, "2.4")
    wait_for(lambda: (r := fleet.release_state()) and r["state"] == "rolling" and r["batch"] >= 1,
             60, "rolling batch 2")
    for host in fleet.hosts:
        host.kill(signal.SIGKILL)
    for host in fleet.hosts:
        host.start()
    done = fleet.wait_release(("current", "rolled_back", "aborted"))
    assert done["state"] == "current", json.dumps(done, indent=1)
    for host in fleet.hosts:
        assert host.current() == "2.4"
        # At most once: an agent killed between switching `current` and logging it finds the switch
        # done when it comes back (install_skipped) and does not switch again.
        skipped = [e for e in host.events("install_skipped") if e.get("release") == done["id"]]
        n = installs(host, "2.4")
        assert n == 1 or (n == 0 and skipped), (host.id, n)


def test_second_release_while_one_runs_is_refused(make_fleet):
    fleet = make_fleet(3)
    for host in fleet.hosts:  # hold batch 1 until the test lets it go
        host.checks.append({"name": "gate", "type": "command", "command": f"test -e {fleet.base}/go",
                            "retries": 600, "interval": 0.1, "timeout": 5})
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.build_release("2.5")
    fleet.start()
    start_release(fleet, "2.4")
    wait_for(lambda: fleet.release_state()["state"] == "rolling", 30, "rolling")
    before = fleet.hosts[1].status()["state"]["release"]
    conflict = fleet.hosts[1].post("/v1/releases", {"version": "2.5"})
    assert conflict.status_code == 409
    assert conflict.json()["detail"]["version"] == "2.4"
    same = fleet.hosts[2].post("/v1/releases", {"version": "2.4"})
    assert same.status_code == 200 and same.json()["changed"] is False
    after = fleet.hosts[1].status()["state"]["release"]
    assert after["id"] == before["id"] and after["version"] == "2.4"
    (fleet.base / "go").write_text("")
    assert fleet.wait_release(("current", "rolled_back"))["state"] == "current"


def test_api_rejects_unauthenticated_and_malformed_requests(make_fleet):
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.start()
    host = fleet.hosts[0]
    import requests

    assert requests.get(host.api_url + "/v1/status", timeout=5).status_code == 401
    bad = requests.get(host.api_url + "/v1/status", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert bad.status_code == 401 and "token" in bad.json()["error"]
    resp = host.post("/v1/releases", {"version": "../etc"})
    assert resp.status_code == 400 and resp.json()["detail"]["field"] == "version"
    resp = host.post("/v1/releases", {"versoin": "2.4"})
    assert resp.status_code == 400 and resp.json()["detail"]["field"] == "versoin"
    resp = requests.post(host.api_url + "/v1/releases", data=b"{not json", headers=fleet.auth, timeout=5)
    assert resp.status_code == 400
    assert host.post("/v1/releases/current/pause").status_code == 404
    peer = requests.get(host.api_url + "/v1/peer/artifacts/sha256/" + "0" * 64, timeout=5)
    assert peer.status_code == 401
    assert host.status()["state"]["release"] is None


def test_cli_release_watch_status(make_fleet):
    """The operator's CLI against a real group: `watch` started before the release waits for it and
    shows it; release; watch until done; `watch --once --json` over several URLs and the controller's
    endpoint records; status table and JSON."""
    import os
    import signal
    import subprocess

    from tests.support.fleet import CLI

    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    cfg = str(fleet.hosts[1].config_path)

    def cli(*args: str, check: bool = True, config: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, *(["-c", cfg] if config else [])], capture_output=True, text=True,
                              env=fleet.env, timeout=180, check=check)

    # Started before any release, `watch` keeps waiting and shows the release once it starts.
    out_path = fleet.base / "watch.out"
    with open(out_path, "wb") as out:
        watcher = subprocess.Popen([*CLI, "watch", "--hosts", "--interval", "0.2", "-c", cfg], stdout=out,
                                   stderr=subprocess.STDOUT, env=fleet.env, start_new_session=True)
    fleet.pids.add(watcher.pid)
    try:
        wait_for(lambda: "no_release" in out_path.read_text(), 30, "watch shows the group before the release")
        assert watcher.poll() is None, out_path.read_text()
        assert "started" in cli("release", "2.4").stdout
        wait_for(lambda: "2.4#1" in out_path.read_text(), 30, "watch shows the release")
        wait_for(lambda: "current" in out_path.read_text().split("2.4#1", 1)[1], 60, "watch shows it current")
        assert watcher.poll() is None, "watch must keep running after the release ends"
        shown = out_path.read_text()
        assert all(h.id in shown for h in fleet.hosts) and "3/3" in shown, shown
    finally:
        os.killpg(watcher.pid, signal.SIGTERM)
        watcher.wait(timeout=10)

    watched = cli("watch", "--until-done", "--interval", "0.2")
    assert watched.returncode == 0 and "current" in watched.stdout

    # Several URLs of one group are one row; the controller's endpoint records (hosts/<host>.json,
    # as site.yml writes them) name their group, so one answering host per group is enough.
    urls = [a for h in fleet.hosts for a in ("--url", h.api_url)]
    doc = json.loads(cli("watch", "--once", "--json", *urls, "--token-file", str(fleet.token_file),
                         config=False).stdout)
    assert doc["groups"][0]["last_event"]["text"] == "all 3 hosts run 2.4"
    hosts_dir = fleet.base / "controller" / "hosts"
    hosts_dir.mkdir(parents=True)
    for h in fleet.hosts:
        (hosts_dir / f"{h.id}.json").write_text(json.dumps({
            "host": h.id, "node_id": h.id, "group": fleet.group, "api_url": h.api_url,
            "api_token_file": str(fleet.token_file)}))
    fleet.hosts[0].kill()  # the first record does not answer: the next host of the group does
    by_records = cli("watch", "--once", "--json", "--hosts-file", str(fleet.base / "controller"), config=False)
    assert by_records.returncode == 0, by_records.stdout + by_records.stderr
    for doc in (doc, json.loads(by_records.stdout)):
        assert doc["all_current"] is True and doc["errors"] == []
        [group] = doc["groups"]
        assert group["group"] == fleet.group and group["state"] == "current" and group["version"] == "2.4"
        assert group["release"] == "2.4#1" and group["done"] == group["total"] == 3
        assert group["batch"] == group["batches"] == 3 and group["elapsed"] > 0 and group["eta"] is None
        assert group["last_event"]["text"]  # after the kill below, a new leader's announcement may be the last
        assert {h["id"]: h["status"] for h in group["hosts"]} == {h.id: "updated" for h in fleet.hosts}

    table = cli("status").stdout
    assert "group runs 2.4" in table and all(h.id in table for h in fleet.hosts)
    doc = json.loads(cli("status", "--json").stdout)
    assert doc["state"]["release"]["state"] == "current" and doc["node"]["id"] == fleet.hosts[1].id
    assert doc["node"]["mirrors"] == [f"http://{fleet.mirror_ip}:{fleet.mirror_port}"]
    assert doc["node"]["drift"] is None and doc["node"]["running_version"] == "2.4"
    again = cli("release", "2.4")
    assert again.stdout.startswith("unchanged")
    refused = cli("release", "2.2", check=False)
    assert refused.returncode != 0 and "rollback protection" in refused.stderr


def test_restarted_agents_do_not_replay_old_steps(make_fleet):
    """A restarted agent replays its Raft journal through every past state; it must act only
    on the state it has caught up to, never redo an install of a release that was rolled back."""
    fleet = make_fleet(3)
    for host in fleet.hosts:  # 2.5 is incompatible with every host: its first batch fails
        host.checks.append({"name": "libs-ok", "type": "command",
                            "command": f"test ! -e {fleet.base}/incompatible-{{version}}", "retries": 1})
    (fleet.base / "incompatible-2.5").write_text("")
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.build_release("2.5")
    fleet.start()
    start_release(fleet, "2.4")
    assert fleet.wait_release(("current", "rolled_back"))["state"] == "current"
    start_release(fleet, "2.5")
    assert fleet.wait_release(("current", "rolled_back"))["state"] == "rolled_back"
    assert [h.current() for h in fleet.hosts] == ["2.4"] * 3

    for host in fleet.hosts:
        host.kill(signal.SIGKILL)
    marks = {h.id: len(h.events("step_started")) for h in fleet.hosts}
    for host in fleet.hosts:
        host.start()
    leader = wait_for(fleet.leader, 60, "a leader after the restart")
    target = leader.status()["node"]["commit_index"]
    for host in fleet.hosts:
        wait_for(lambda h=host: (d := h.status()["node"])["ready"] and d["commit_index"] >= target, 30,
                 f"{host.id} caught up")
    for host in fleet.hosts:
        assert len(host.events("step_started")) == marks[host.id], f"{host.id} re-ran an old step"
        assert host.current() == "2.4" and host.health()["version"] == "2.4"
        assert host.status()["node"]["drift"] is None
    assert fleet.release_state()["state"] == "rolled_back"

    # A host switched behind the agent's back is reported as drift (status and metrics).
    from quorum_rollout import install

    install.activate(fleet.hosts[0].root, "2.3")
    node = fleet.hosts[0].status()["node"]
    assert node["drift"] and "runs 2.3" in node["drift"] and "says 2.4" in node["drift"]
    assert "quorum_rollout_host_drift{" in fleet.hosts[0].get("/metrics").text
