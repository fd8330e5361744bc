"""A member's steps on an in-process group (tests/support/inproc.py): the real state machine, the
real download code against a real local HTTP mirror (conftest.make_mirror), real installs into a
temp install root, real hooks and checks (shell commands). The leader's commands are proposed by
the test directly (test_coordinator.py drives the leader itself).

Not here: systemd. The hooks a real host runs (`systemctl restart demo-app`) cannot run without
systemd as PID 1; these hooks append to a log file instead, which is what the worker's contract
with a hook is (run it with QR_VERSION / QR_RELEASE_DIR / QR_HOOK, fail the step on exit != 0).
Peer transfer is not here either: the members' API URLs refuse connections, so every member falls
back to the mirror (test_artifacts.py covers peer transfer).
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout import artifacts, fsm, install, signing
from quorum_rollout.config import Check, Hooks, RolloutConfig
from quorum_rollout.sources import Sources
from quorum_rollout.worker import Worker

from tests.support.inproc import GROUP, NAME, SECRET, InProcGroup, InProcNode, archive, member_config, publish

MEMBERS = ["h1", "h2", "h3"]


class Member:
    """The group at `rolling`, batch 1 open for h2, and h2's worker (h1 leads, h2 then h3 then h1)."""

    def __init__(self, tmp: Path, mirror: Any, *, hooks: Hooks | None = None, version: str = "2.4",
                 running: str | None = None, **policy: Any) -> None:
        self.tmp, self.mirror = tmp, mirror
        self.hook_log = tmp / "hooks.log"
        self.flags = tmp / "flags"
        self.flags.mkdir(exist_ok=True)
        hooks = hooks or Hooks(stop=self.hook("stop"), start=self.hook("start"))
        check = Check(name="health", type="command", command=f"test ! -e {self.flags}/fail-{{version}}", retries=1)
        self.cfg = member_config(tmp, "h2", MEMBERS, [mirror.url], hooks=hooks, checks=(check,),
                                 rollout=RolloutConfig(batch_fraction=0.25, step_deadline=10.0))
        self.root = Path(self.cfg.install.root)
        if running:  # what the host ran before this release
            path = tmp / f"{running}.tar.gz"
            path.write_bytes(archive(running))
            install.install_release(self.root, running, path, free_space_margin=0)
            install.activate(self.root, running)
        self.group = InProcGroup(GROUP, MEMBERS)
        self.worker = Worker(self.group.nodes["h2"], self.cfg, Sources(
            self.cfg, artifacts.Store(Path(self.cfg.data_dir) / "store"),
            signing.TrustPolicy.from_config(self.cfg.artifacts), SECRET))
        self.term = self.group.elect("h1")
        self._rolling(version, running, policy)

    def hook(self, name: str) -> str:
        return f'echo "$QR_HOOK $QR_VERSION" >> {self.tmp}/hooks.log'

    def leader(self, op: str, **args: Any) -> None:
        result = self.group.nodes["h1"].propose(op, term=self.term, **args)
        assert result["code"] == "accepted", (op, result)

    def _rolling(self, version: str, running: str | None, policy: dict[str, Any]) -> None:
        urls = {m: {"address": f"{m}:4321", "api_url": f"http://127.0.0.1:1/{m}"} for m in MEMBERS}
        self.leader("lead", members=urls)
        self.leader("start", version=version, members=MEMBERS, batch_fraction=0.25, running_version=running, **policy)
        release = self.release["id"]
        raw = (self.mirror.root / NAME / version / "manifest.json").read_text()
        manifest = signing.verify_manifest(raw.encode(), self.worker.sources.policy, now=time.time(), name=NAME,
                                           version=version, group=GROUP, max_bytes=65536, highest_version=None,
                                           allow_downgrade=False)
        self.leader("manifest", release=release, artifact={"sha256": manifest.sha256, "size": manifest.size,
                                                           "file": manifest.file, "manifest": raw,
                                                           "mirror": self.mirror.url})
        for op in ("downloaded", "verified", "open_batch"):
            self.leader(op, release=release)
        assert fsm.open_batch_hosts(self.group.state) == ["h2"]

    @property
    def release(self) -> dict[str, Any]:
        return self.group.state["release"]

    @property
    def host(self) -> dict[str, Any]:
        return self.release["hosts"]["h2"]

    def hooks_run(self) -> list[str]:
        return self.hook_log.read_text().splitlines() if self.hook_log.exists() else []


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.qr_fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ install


def test_the_open_batch_member_fetches_verifies_installs_restarts_checks_and_reports(tmp_path: Path,
                                                                                     mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    m.worker.step()
    assert install.current_version(m.root) == "2.4"
    assert (m.root / "current" / "VERSION").read_text() == "2.4"
    assert m.hooks_run() == ["stop 2.4", "start 2.4"]
    assert m.host["status"] == fsm.UPDATED and m.host["version"] == "2.4" and m.host["previous"] is None
    assert [e["detail"] for e in m.group.history(op="host_done")] == ["h2 updated", "batch 2 of 3"]
    assert fsm.open_batch_hosts(m.group.state) == ["h3"]
    m.worker.step()  # nothing left for h2: no second install, no second report
    assert m.hooks_run() == ["stop 2.4", "start 2.4"]
    assert len([c for c in m.group.proposed if c["op"] == "host_done"]) == 1


def test_a_member_waits_for_the_new_terms_leader_before_acting_on_the_state(tmp_path: Path, mirror: Any) -> None:
    """After a new election the state may be a past one (a leader restarted with the whole group
    knows only the commit index its journal kept): the batch open in it is not acted on until the
    new term's leader announced itself, which every entry committed before follows."""
    m = Member(tmp_path, mirror)
    term = m.group.elect("h3")
    m.worker.step()
    assert install.current_version(m.root) is None and m.hooks_run() == []
    result = m.group.nodes["h3"].propose("lead", term=term)
    assert result["code"] == "accepted"
    m.worker.step()
    assert install.current_version(m.root) == "2.4" and m.host["status"] == fsm.UPDATED


def test_a_restart_hook_replaces_stop_and_start(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror, hooks=Hooks(restart=f'echo "$QR_HOOK $QR_VERSION" >> {tmp_path}/hooks.log'))
    m.worker.step()
    assert m.hooks_run() == ["restart 2.4"] and m.host["status"] == fsm.UPDATED


def test_a_member_outside_the_open_batch_does_nothing(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    other = Worker(m.group.nodes["h3"], member_config(tmp_path, "h3", MEMBERS, [mirror.url]), m.worker.sources)
    before = len(m.group.proposed)
    other.step()
    assert not [c for c in m.group.proposed[before:] if c["op"] == "host_done"]
    assert m.release["hosts"]["h3"]["status"] == fsm.PENDING


def test_a_member_that_switched_before_a_crash_reports_without_installing_again(tmp_path: Path, mirror: Any,
                                                                                caplog: pytest.LogCaptureFixture
                                                                                ) -> None:
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    m = Member(tmp_path, mirror)
    path = tmp_path / "2.4.tar.gz"
    path.write_bytes(archive("2.4"))
    install.install_release(m.root, "2.4", path, free_space_margin=0)
    install.activate(m.root, "2.4")  # the agent died after the switch, before its report committed
    m.worker.step()
    assert [e["cause"] for e in events(caplog, "install_skipped")] == ["current already points to this version"]
    assert not events(caplog, "activated")
    assert m.host["status"] == fsm.UPDATED


# ----------------------------------------------------------------------------------------- failures


def test_a_failed_preflight_check_fails_the_step_naming_the_check(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    (m.flags / "fail-2.4").touch()
    m.worker.step()
    assert m.host["status"] == fsm.REVERT and m.host["step"] == "preflight:health"
    failure = m.release["failure"]
    assert failure["host"] == "h2" and failure["step"] == "preflight:health"
    assert "expected exit 0, got exit 1" in failure["reason"]
    assert m.release["state"] == fsm.ROLLING_BACK


@pytest.mark.parametrize("hook", ["stop", "start"])
def test_a_failing_hook_fails_the_step_under_its_name(tmp_path: Path, mirror: Any, hook: str) -> None:
    commands = {"stop": f"echo stop >> {tmp_path}/hooks.log", "start": f"echo start >> {tmp_path}/hooks.log"}
    commands[hook] = "echo refusing; exit 3"
    m = Member(tmp_path, mirror, hooks=Hooks(**commands))
    m.worker.step()
    failure = m.release["failure"]
    assert failure["step"] == hook and "exited with status 3" in failure["reason"] and "refusing" in failure["reason"]


def test_a_file_that_does_not_match_its_signed_hash_fails_verify_and_installs_nothing(tmp_path: Path,
                                                                                      mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    tampered = bytearray(archive("2.4"))
    tampered[-1] ^= 0xFF  # same size, other bytes: the mirror serves a file the manifest does not sign
    mirror.put(f"{NAME}/2.4/{NAME}-2.4.tar.gz", bytes(tampered))
    m.worker.step()
    assert m.release["failure"]["step"] == "verify" and "sha256" in m.release["failure"]["reason"]
    assert install.current_version(m.root) is None and m.hooks_run() == []
    assert not (m.root / "releases" / "2.4").exists()


def test_a_file_no_source_serves_fails_download(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    mirror.behave(f"{NAME}/2.4/{NAME}-2.4.tar.gz", status=404)
    m.worker.step()
    failure = m.release["failure"]
    assert failure["step"] == "download" and "404" in failure["reason"]
    assert install.current_version(m.root) is None


def test_an_archive_that_escapes_its_release_dir_fails_install(tmp_path: Path, make_mirror: Callable[..., Any]
                                                               ) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    server = make_mirror()
    publish(server, "2.4", out.getvalue())  # signed correctly: only the install step can refuse it
    m = Member(tmp_path, server)
    m.worker.step()
    assert m.release["failure"]["step"] == "install"
    assert not list(tmp_path.rglob("escaped")) and install.current_version(m.root) is None


# ------------------------------------------------------------------------------------------- revert


def test_revert_returns_to_the_version_the_host_ran(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror, running="2.3")
    (m.flags / "fail-2.4").touch()
    m.worker.step()
    assert m.host["status"] == fsm.REVERT and m.host["previous"] == "2.3"
    m.worker.step()
    assert install.current_version(m.root) == "2.3"
    assert m.hooks_run() == ["stop 2.4", "start 2.4", "stop 2.3", "start 2.3"]
    assert m.host["status"] == fsm.REVERTED and m.host["version"] == "2.3"
    assert m.release["state"] == fsm.ROLLED_BACK
    assert m.group.history(op="host_done")[-2]["detail"] == "h2 reverted"


def test_revert_in_a_group_that_ran_nothing_stops_the_service_and_removes_current(tmp_path: Path,
                                                                                   mirror: Any) -> None:
    """The reported bug: the stop hook of such a revert ran with version None and called
    install.release_dir(root, "") (InstallError) instead of stopping the service."""
    m = Member(tmp_path, mirror)
    (m.flags / "fail-2.4").touch()
    m.worker.step()
    m.worker.step()
    assert m.hooks_run() == ["stop 2.4", "start 2.4", "stop "]  # QR_VERSION empty: nothing to run
    assert not (m.root / "current").exists()
    assert m.host["status"] == fsm.REVERTED and m.release["state"] == fsm.ROLLED_BACK


def test_a_revert_that_cannot_switch_back_fails_as_revert(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror, running="2.3")
    (m.flags / "fail-2.4").touch()
    m.worker.step()
    (m.root / "releases" / "2.3" / install.COMPLETE_MARKER).unlink()  # the old release is gone
    m.worker.step()
    assert m.host["status"] == fsm.REVERT_FAILED and m.host["step"] == "revert"
    assert "cannot switch back to 2.3" in m.host["detail"]
    assert m.release["state"] == fsm.ROLLED_BACK


# ---------------------------------------------------------------------------------------- reporting


@pytest.mark.parametrize("kind", ["applied", "lost", "refused"])
def test_a_report_whose_commit_was_not_confirmed_is_sent_again_until_it_is(tmp_path: Path, mirror: Any,
                                                                           kind: str) -> None:
    m = Member(tmp_path, mirror)
    m.group.fail_next("host_done", kind)
    m.worker.step()
    reports = [c for c in m.group.proposed if c["op"] == "host_done"]
    assert len(reports) == 2 and len({c["id"] for c in reports}) == 1
    assert [e["detail"] for e in m.group.history(op="host_done")] == ["h2 updated", "batch 2 of 3"]
    assert m.hooks_run() == ["stop 2.4", "start 2.4"]  # installed once


# ------------------------------------------------------------------------------------------ joining


def test_a_joining_member_installs_the_group_version_before_it_counts(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror)
    m.worker.step()
    for host in ("h3", "h1"):
        m.group.nodes[host].propose("host_done", release=m.release["id"], host=host, phase="install", ok=True,
                                    step="done")
    assert m.group.state["current_version"] == "2.4"
    m.leader("member_add", member={"id": "h4", "address": "h4:4321", "api_url": "http://127.0.0.1:1/h4"})
    m.group.nodes["h4"] = node = InProcNode(m.group, "h4")
    cfg = member_config(tmp_path, "h4", [*MEMBERS, "h4"], [mirror.url],
                        hooks=Hooks(start=f'echo "h4 $QR_HOOK $QR_VERSION" >> {tmp_path}/hooks.log'))
    joiner = Worker(node, cfg, Sources(cfg, artifacts.Store(Path(cfg.data_dir) / "store"),
                                       signing.TrustPolicy.from_config(cfg.artifacts), SECRET))
    joiner.step()
    assert install.current_version(cfg.install.root) == "2.4"
    assert m.hooks_run()[-1] == "h4 start 2.4"
    assert m.group.state["members"]["h4"]["status"] == fsm.ACTIVE
    assert m.group.history(op="member_ready")[0]["detail"] == "h4 joined (runs 2.4)"


# ------------------------------------------------------------------ failure budget and re-checks


def test_a_failure_within_the_budget_reverts_this_host_alone(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror, running="2.3", max_failures=1)
    (m.flags / "fail-2.4").touch()
    m.worker.step()
    assert m.host["status"] == fsm.REVERT and m.release["state"] == fsm.ROLLING
    assert fsm.host_task(m.group.state, "h2") == "revert"
    m.worker.step()
    assert install.current_version(m.root) == "2.3" and m.hooks_run()[-2:] == ["stop 2.3", "start 2.3"]
    assert m.host["status"] == fsm.REVERTED and m.release["state"] == fsm.ROLLING
    assert fsm.open_batch_hosts(m.group.state) == ["h3"]  # the release went on
    assert [f["host"] for f in m.release["failed_within_budget"]] == ["h2"]


def test_a_recheck_runs_the_checks_again_and_a_failure_counts(tmp_path: Path, mirror: Any) -> None:
    m = Member(tmp_path, mirror, running="2.3", max_failures=1, bake_time=5)
    m.worker.step()
    assert m.host["status"] == fsm.UPDATED and m.release["gate"]["batch"] == 0
    m.worker.step()  # nothing to do while the batch waits
    m.leader("recheck", release=m.release["id"])
    assert fsm.host_task(m.group.state, "h2") == "recheck"
    hooks = m.hooks_run()
    (m.flags / "fail-2.4").touch()  # the service went bad during the bake
    m.worker.step()
    assert m.hooks_run() == hooks  # a re-check restarts nothing
    assert m.release["failed_within_budget"][0]["step"] == "recheck:preflight:health"
    m.worker.step()
    assert install.current_version(m.root) == "2.3" and m.host["status"] == fsm.REVERTED
