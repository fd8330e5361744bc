"""Real `ansible-playbook` runs against a local 12-host inventory: 2 CPU kinds x 2 zones x 3 hosts.

The steps build on each other (one fleet per module) and run in file order; a step whose
predecessor failed is skipped rather than failing for the same reason again.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.localfleet import PY, LocalFleet, recap, wait_for

pytestmark = pytest.mark.e2e

_failed: list[str] = []


@pytest.fixture(autouse=True)
def _in_order(request: pytest.FixtureRequest) -> Iterator[None]:
    if _failed:
        pytest.skip(f"an earlier step failed: {_failed[0]}")
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        _failed.append(request.node.name)


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> str:
    assert proc.returncode == 0, f"{what} failed (rc {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _lines_of_last_debug(output: str) -> list[str]:
    """The list printed by the last `debug: msg=[...]` task of a run."""
    blocks = re.findall(r'"msg": \[\n(.*?)\n    \]', output, re.S)
    assert blocks, f"no list printed:\n{output[-3000:]}"
    return [json.loads(line.strip().rstrip(",")) for line in blocks[-1].splitlines()]


def test_publish_releases(fleet: LocalFleet) -> None:
    """playbooks/publish.yml signs and publishes 2.4 (good) and 2.5 (broken on AMD) to the mirror."""
    _ok(fleet.publish("2.4"), "publish 2.4")
    _ok(fleet.publish("2.5", broken_on=("amd",)), "publish 2.5")
    for version in ("2.4", "2.5"):
        manifest = json.loads((fleet.mirror_dir / "demo-app" / version / "manifest.json").read_text())
        assert manifest["signed"]["version"] == version
        assert (fleet.mirror_dir / "demo-app" / version / f"demo-app-{version}.tar.gz").is_file()
    assert stat.S_IMODE(fleet.key_prefix.with_suffix(".key").stat().st_mode) == 0o600
    fleet.write_inventory()
    fleet.start_mirror()


def test_site_installs_every_agent(fleet: LocalFleet) -> None:
    started = time.monotonic()
    _ok(fleet.playbook("site.yml", log="site-1"), "site.yml")
    print(f"site.yml (first run) took {time.monotonic() - started:.0f}s")

    # Every host runs an agent and the demo service 2.3; every group elected a leader.
    assert sorted(what.split()[0] for what in fleet.pids().values()).count("agent") == 12
    for host in fleet.hosts:
        assert host.current() == "2.3"
        assert host.health() == (200, {"status": "ok", "version": "2.3"})
    for group, members in fleet.groups.items():
        out = subprocess.run([str(fleet.base / "venv" / "bin" / "quorum-rollout"), "status", "--json", "-c",
                              str(members[0].config_file)], capture_output=True, text=True, check=True)
        doc = json.loads(out.stdout)
        assert doc["group"] == group
        assert doc["node"]["leader"] in {m.name for m in members}

    # The fleet's metrics token (quorum_rollout_metrics_token) reads GET /metrics of every agent, nothing else.
    for host in fleet.hosts:
        auth = {"Authorization": f"Bearer {fleet.metrics_token}"}
        metrics = requests.get(f"http://{host.ip}:7200/metrics", headers=auth, timeout=5)
        assert metrics.status_code == 200 and f'node="{host.name}"' in metrics.text, metrics.text[:500]
        refused = requests.get(f"http://{host.ip}:7200/v1/status", headers=auth, timeout=5)
        assert refused.status_code == 403, refused.text

    # Secrets: 0600 on hosts and controller; data dir 0700; controller dir 0700.
    for host in fleet.hosts:
        etc = host.config_file.parent
        for name in ("raft.secret", "api.token", "metrics.token"):
            assert stat.S_IMODE((etc / name).stat().st_mode) == 0o600, f"{host.name} {name}"
        assert stat.S_IMODE(host.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(fleet.controller_dir.stat().st_mode) == 0o700
    secrets = sorted(p.name for p in (fleet.controller_dir / "groups").iterdir())
    assert secrets == sorted(f"{g}.secret" for g in fleet.groups)
    for path in [*(fleet.controller_dir / "groups").iterdir(), *(fleet.controller_dir / "tokens").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Members of one group share its secret; groups do not share one.
    by_group = {g: {(h.config_file.parent / "raft.secret").read_text() for h in hs} for g, hs in fleet.groups.items()}
    assert all(len(s) == 1 for s in by_group.values())
    assert len({next(iter(s)) for s in by_group.values()}) == 4


def test_site_again_changes_nothing(fleet: LocalFleet) -> None:
    pids = fleet.pids()
    started = time.monotonic()
    out = _ok(fleet.playbook("site.yml", log="site-2"), "site.yml (second run)")
    print(f"site.yml (second run) took {time.monotonic() - started:.0f}s")
    counts = recap(out)
    assert len(counts) == 12
    changed = {host: c["changed"] for host, c in counts.items() if c["changed"]}
    assert not changed, f"second run changed something: {changed}"
    assert fleet.pids() == pids, "a second run restarted processes"


def test_a_misspelled_role_variable_fails_naming_the_right_one(fleet: LocalFleet) -> None:
    """The agent refuses unknown config keys; the role refuses unknown quorum_rollout_* variables
    the same way (else a typo is ignored and the default silently used), also in check mode."""
    host = fleet.hosts[0]
    pids = fleet.pids()
    result = fleet.playbook("site.yml", "--check", "--limit", host.name, "-e", "quorum_rollout_batch_fracton=0.5",
                            log="site-typo")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "quorum_rollout_batch_fracton (did you mean quorum_rollout_batch_fraction?)" in out, out[-3000:]
    assert fleet.pids() == pids


def test_check_mode_predicts_and_changes_nothing(fleet: LocalFleet) -> None:
    """A config drifted on one host: --check --diff shows it on that host only and leaves file and agent alone.

    Limited to the drifted host's group (a play that holds whole groups computes the same peer lists),
    which keeps the run short.
    """
    host = fleet.hosts[0]
    drifted = host.config_file.read_text() + "# edited by hand\n"
    host.config_file.write_text(drifted)
    pids = fleet.pids()
    out = _ok(fleet.playbook("site.yml", "--check", "--diff", "--tags", "quorum_rollout_configure",
                             "--limit", f"{host.group}-*", log="site-check"), "site.yml --check")
    assert "+# edited by hand" not in out and "-# edited by hand" in out, "the diff does not show the drift"
    counts = recap(out)
    assert set(counts) == {h.name for h in fleet.groups[host.group]}
    assert counts[host.name]["changed"] >= 1
    assert {h: c["changed"] for h, c in counts.items() if c["changed"] and h != host.name} == {}
    assert host.config_file.read_text() == drifted
    assert fleet.pids() == pids


def test_release_24_reaches_every_group(fleet: LocalFleet) -> None:
    started = time.monotonic()
    out = _ok(fleet.playbook("release.yml", "-e", "version=2.4", "-e", "rollout_timeout=240", "-e", "rollout_poll=1",
                             log="release-2.4"), "release.yml -e version=2.4")
    print(f"release.yml -e version=2.4 took {time.monotonic() - started:.0f}s")
    lines = _lines_of_last_debug(out)
    assert len(lines) == 4, lines
    for group, line in zip(sorted(fleet.groups), lines):
        assert line.split()[:3] == [group, "current", "2.4"], line
    for host in fleet.hosts:
        assert host.current() == "2.4", host.name
        assert host.health() == (200, {"status": "ok", "version": "2.4"}), host.name


def test_release_check_mode_predicts_per_group_and_returns_at_once(fleet: LocalFleet) -> None:
    """--check sends nothing and waits for nothing: each group's line is the prediction (with waves, every
    wave is predicted, each line naming its group's wave); status.yml --check reads and changes nothing."""
    out = _ok(fleet.playbook("release.yml", "--check", "-e", "version=2.5", "-e", "rollout_timeout=600", "-e",
                             'rollout_waves=[["amd-eu1a"],["intel-*"],["*"]]', log="release-2.5-check"),
              "release.yml --check -e version=2.5")
    lines = _lines_of_last_debug(out)
    assert len(lines) == 4, lines
    waves = {"amd-eu1a": 1, "amd-eu1b": 3, "intel-eu1a": 2, "intel-eu1b": 2}
    for group, line in zip(sorted(fleet.groups), lines):
        assert line.split()[:3] == [group, "check", "2.5"] and "would start release 2.5" in line, line
        assert "nothing sent" in line and line.endswith(f"| wave {waves[group]} of 3"), line
    again = _ok(fleet.playbook("release.yml", "--check", "-e", "version=2.4", log="release-2.4-check"),
                "release.yml --check -e version=2.4")
    assert all("no change" in line for line in _lines_of_last_debug(again)), _lines_of_last_debug(again)
    status = _lines_of_last_debug(_ok(fleet.playbook("playbooks/status.yml", "--check", log="status-after-check"),
                                      "status.yml --check"))
    assert len(status) == 4 and all(re.search(r"runs 2\.4\s+release 2\.4\s+current", line) for line in status), status
    assert {h.current() for h in fleet.hosts} == {"2.4"}


def test_release_25_rolls_back_on_amd_only(fleet: LocalFleet) -> None:
    proc = fleet.playbook("release.yml", "-e", "version=2.5", "-e", "rollout_timeout=240", "-e", "rollout_poll=1",
                          log="release-2.5")
    out = proc.stdout
    assert proc.returncode != 0, f"release of a release broken on AMD succeeded:\n{out[-4000:]}"
    lines = dict((line.split()[0], line) for line in _lines_of_last_debug(out))
    assert sorted(lines) == sorted(fleet.groups)
    for group, members in fleet.groups.items():
        if group.startswith("amd-"):
            assert lines[group].split()[1:3] == ["rolled_back", "2.5"], lines[group]
            failed = re.search(r"failed host (\S+) at (\S+): (.*)", lines[group])
            assert failed and failed[1] in {m.name for m in members}, lines[group]
            assert "500" in failed[3], lines[group]
            # The failure message of the failed task names the group, the host and the reason too.
            assert re.search(rf"group {group}: release 2\.5 rolled_back: host {failed[1]} failed at", out), group
            for host in members:
                assert host.current() == "2.4", host.name
                assert host.health() == (200, {"status": "ok", "version": "2.4"}), host.name
        else:
            assert lines[group].split()[1:3] == ["current", "2.5"], lines[group]
            for host in members:
                assert host.current() == "2.5", host.name
                assert host.health() == (200, {"status": "ok", "version": "2.5"}), host.name
    counts = recap(out)
    assert {h for h, c in counts.items() if c["failed"]} == {fleet.groups[g][0].name for g in fleet.groups
                                                            if g.startswith("amd-")}


def test_status_module_and_lookup_agree(fleet: LocalFleet) -> None:
    out = _ok(fleet.playbook("playbooks/status.yml", log="status"), "status.yml")
    lines = _lines_of_last_debug(out)
    assert len(lines) == 4
    for line in lines:
        group = line.split()[0]
        assert "lookup disagrees" not in line, line
        if group.startswith("amd-"):
            assert re.search(r"runs 2\.4\s+release 2\.5\s+rolled_back", line), line
            assert "failed host amd-" in line, line
        else:
            assert re.search(r"runs 2\.5\s+release 2\.5\s+current", line), line


def _sign_release(fleet: LocalFleet, version: str, broken_on: tuple[str, ...] = ()) -> None:
    """Build the demo app's release `version` and sign it onto the mirror with the CLI: what publish.yml
    does, in a second rather than a whole playbook run. `broken_on`: CPU kinds whose /health answers 500."""
    archive = fleet.base / "build" / f"demo-app-{version}.tar.gz"
    build = fleet.base / "build" / version
    build.mkdir(parents=True)
    (build / "VERSION").write_text(f"{version}\n")
    names = ["VERSION"]
    if broken_on:
        (build / "BROKEN_ON").write_text("\n".join(broken_on) + "\n")
        names.append("BROKEN_ON")
    subprocess.run(["tar", "-czf", str(archive), "-C", str(build), *names, "-C",
                    str(Path(__file__).resolve().parents[2] / "roles" / "demo_app" / "files"), "demo_app.py"],
                   check=True)
    subprocess.run([PY, "-m", "quorum_rollout", "sign", str(archive), "--name", "demo-app", "--version", version,
                    "--key", str(fleet.key_prefix.with_suffix(".key")), "--mirror-dir", str(fleet.mirror_dir)],
                   check=True, capture_output=True)


def test_rerun_attaches_to_a_release_in_progress(fleet: LocalFleet) -> None:
    """Start 2.6 in one group behind Ansible's back; release.yml for 2.6 attaches (no new start) and waits."""
    _sign_release(fleet, "2.6")
    group = "intel-eu1a"
    members = fleet.groups[group]
    cli = str(fleet.base / "venv" / "bin" / "quorum-rollout")
    subprocess.run([cli, "release", "2.6", "-c", str(members[0].config_file)], check=True, capture_output=True,
                   env={**os.environ, "NO_PROXY": "*"})
    out = _ok(fleet.playbook("release.yml", "-e", "version=2.6", "-e", f"rollout_groups={group}", "-e",
                             "rollout_poll=1", "-e", "rollout_timeout=240", log="release-2.6"), "release.yml 2.6")
    start = out.split("TASK [Send the command to each group]", 1)[1].split("TASK [", 1)[0]
    assert f"ok: [{members[0].name} -> localhost]" in start, start
    lines = _lines_of_last_debug(out)
    assert len(lines) == 1 and lines[0].split()[:3] == [group, "current", "2.6"], lines
    wait_for(lambda: all(h.current() == "2.6" for h in members), 10, "2.6 on every member")
    # The other groups were left alone.
    assert {h.current() for g, hs in fleet.groups.items() if g != group for h in hs} <= {"2.4", "2.5"}


def test_a_version_on_no_mirror_is_refused_in_every_group(fleet: LocalFleet) -> None:
    """release.yml of a version nobody published: every group refuses it before anything is
    committed, the table says so per group, the play fails, nothing changed."""
    before = {h.name: h.current() for h in fleet.hosts}
    proc = fleet.playbook("release.yml", "-e", "version=9.9", "-e", "rollout_poll=1", log="release-9.9")
    assert proc.returncode != 0
    lines = _lines_of_last_debug(proc.stdout)
    assert sorted(line.split()[0] for line in lines) == sorted(fleet.groups)
    for line in lines:
        assert line.split()[1:3] == ["refused", "9.9"] and "not published on any mirror" in line, lines
    assert "Nothing was started in this group" in proc.stdout
    assert {h.name: h.current() for h in fleet.hosts} == before


def _group_state(fleet: LocalFleet, group: str) -> dict[str, Any]:
    """The group's replicated state, as `quorum-rollout status --json` on its first member prints it."""
    out = subprocess.run([str(fleet.base / "venv" / "bin" / "quorum-rollout"), "status", "--json", "-c",
                          str(fleet.groups[group][0].config_file)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["state"]  # type: ignore[no-any-return]


def _started_and_current(state: dict[str, Any]) -> tuple[float, float | None]:
    """When the group's release was started and when it became current (its history, the leader's clock)."""
    entries = [e for e in state["history"] if e["release"] == state["release"]["id"]]
    current = [e["time"] for e in entries if e["to"] == "current"]
    return min(e["time"] for e in entries), (current[0] if current else None)


def _by_group(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in _lines_of_last_debug(output)}


def test_waves_go_in_order_and_a_rollback_stops_the_later_waves(fleet: LocalFleet) -> None:
    """rollout_waves: intel-* (one group at a time), then amd-eu1a, then the rest. 2.7 is broken on AMD:
    amd-eu1a rolls back in wave 2, so wave 3 (amd-eu1b) is not started and the run fails saying so."""
    _sign_release(fleet, "2.7", broken_on=("amd",))
    waves = '[["intel-*"],["amd-eu1a"],["*"]]'  # no spaces: -e key=value ends the value at the first one
    before = {h.name: h.current() for h in fleet.hosts}

    # A pattern that matches no group: one clear error before anything is sent.
    bad = fleet.playbook("release.yml", "-e", "version=2.7", "-e", 'rollout_waves=[["arm64-*"],["*"]]',
                         log="release-2.7-bad-waves")
    assert bad.returncode != 0
    assert "rollout_waves: pattern 'arm64-*' of wave 1 matches no group; the groups are: amd-eu1a, amd-eu1b," in (
        bad.stdout), bad.stdout[-3000:]
    assert all((_group_state(fleet, g)["release"] or {}).get("version") != "2.7" for g in fleet.groups)

    proc = fleet.playbook("release.yml", "-e", "version=2.7", "-e", f"rollout_waves={waves}", "-e",
                          "rollout_max_parallel_groups=1", "-e", "rollout_poll=1", "-e", "rollout_timeout=240",
                          log="release-2.7-waves")
    assert proc.returncode != 0, proc.stdout[-4000:]
    lines = _by_group(proc.stdout)
    for group in ("intel-eu1a", "intel-eu1b"):
        assert lines[group].split()[1:3] == ["current", "2.7"] and lines[group].endswith("| wave 1 of 3"), lines
    assert lines["amd-eu1a"].split()[1:3] == ["rolled_back", "2.7"] and "failed host amd-eu1a-" in lines["amd-eu1a"]
    assert lines["amd-eu1b"].split()[1:4] == ["not", "started", "2.7"], lines["amd-eu1b"]
    assert "wave 3 of 3: not started because amd-eu1a rolled_back" in lines["amd-eu1b"], lines["amd-eu1b"]
    assert "group amd-eu1b: release 2.7 not started: it is in wave 3" in proc.stdout, proc.stdout[-3000:]

    # Wave 3 untouched: no release of 2.7 was ever started there, its hosts run what they ran.
    assert _group_state(fleet, "amd-eu1b")["release"]["version"] != "2.7"
    for host in fleet.groups["amd-eu1b"] + fleet.groups["amd-eu1a"]:
        assert host.current() == before[host.name], host.name
    # In order, by the groups' own history: intel-eu1b started after intel-eu1a was current (one group at a
    # time), amd-eu1a after both.
    times = {g: _started_and_current(_group_state(fleet, g)) for g in ("intel-eu1a", "intel-eu1b", "amd-eu1a")}
    assert times["intel-eu1a"][1] is not None and times["intel-eu1b"][1] is not None, times
    assert times["intel-eu1b"][0] >= times["intel-eu1a"][1], times
    assert times["amd-eu1a"][0] >= max(times["intel-eu1a"][1], times["intel-eu1b"][1]), times


def test_one_command_pauses_and_resumes_every_group(fleet: LocalFleet) -> None:
    """The fleet-wide emergency stop: `release.yml -e rollout_action=paused` (no version) pauses the release
    under way in every group, whatever its version, and leaves the groups with nothing under way alone;
    `-e rollout_action=resumed` resumes them and waits for the end. The releases are held in their download
    by the mirror answering 503 for the artifact (the mirror's `.fail` side file) until the pause is in."""
    _sign_release(fleet, "2.8")
    blocker = fleet.mirror_dir / "demo-app" / "2.8" / "demo-app-2.8.tar.gz.fail"
    blocker.write_text("100000 503\n")
    held = ["amd-eu1b", "intel-eu1b"]
    cli = str(fleet.base / "venv" / "bin" / "quorum-rollout")
    try:
        for group in held:
            subprocess.run([cli, "release", "2.8", "-c", str(fleet.groups[group][0].config_file)], check=True,
                           capture_output=True, env={**os.environ, "NO_PROXY": "*"})
        assert {_group_state(fleet, g)["release"]["state"] for g in held} == {"running_old_release"}

        lines = _by_group(_ok(fleet.playbook("release.yml", "-e", "rollout_action=paused", "-e", "rollout_poll=1",
                                             log="release-pause-all"), "release.yml -e rollout_action=paused"))
        assert sorted(lines) == sorted(fleet.groups), lines
        for group in held:
            assert lines[group].split()[1:3] == ["paused", "2.8"], lines[group]
            assert _group_state(fleet, group)["release"]["state"] == "paused"
        assert lines["intel-eu1a"].split()[1:] == ["idle", "2.7", "|", "nothing", "to", "pause:", "release", "2.7",
                                                   "is", "current"], lines["intel-eu1a"]
        assert "nothing to pause: release 2.7 is rolled_back" in lines["amd-eu1a"], lines["amd-eu1a"]
    finally:
        blocker.unlink(missing_ok=True)

    lines = _by_group(_ok(fleet.playbook("release.yml", "-e", "rollout_action=resumed", "-e", "rollout_poll=1", "-e",
                                         "rollout_timeout=240", log="release-resume-all"),
                          "release.yml -e rollout_action=resumed"))
    for group in held:
        assert lines[group].split()[1:3] == ["current", "2.8"], lines[group]
        for host in fleet.groups[group]:
            assert host.current() == "2.8", host.name
    assert "nothing to resume: release 2.7 is rolled_back" in lines["amd-eu1a"], lines["amd-eu1a"]


def test_agent_logs_are_json_lines_without_floods(fleet: LocalFleet) -> None:
    """What an operator's log shipper reads after install, releases, a rollback and re-runs: every
    line of every agent's log is one JSON object, and no line repeats more than a few times a
    minute (pysyncobj's own lines included: they go through the same handler)."""
    for host in fleet.hosts:
        log = host.data_dir / "agent.log"
        assert log.exists(), host.name
        per_minute: dict[tuple[str, str], int] = {}
        for line in log.read_text(errors="replace").splitlines():
            doc = json.loads(line)  # raises on anything that is not JSON
            assert isinstance(doc, dict) and "event" in doc and "ts" in doc, (host.name, line[:200])
            body = json.dumps({k: v for k, v in doc.items() if k != "ts"}, sort_keys=True)
            key = (doc["ts"][:16], body)  # the same line within one minute
            per_minute[key] = per_minute.get(key, 0) + 1
        floods = {k: n for k, n in per_minute.items() if n > 5}
        assert not floods, f"{host.name}: lines repeated within a minute: {list(floods.items())[:3]}"
