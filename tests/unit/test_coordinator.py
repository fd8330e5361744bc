"""The leader's steps on an in-process group (tests/support/inproc.py): the real state machine,
the real artifact code against a real local HTTP mirror (conftest.make_mirror), an injected
monotonic clock for the step deadlines. Members' reports are proposed by the test directly (what
a member does is test_worker.py's subject).

Not here: Raft itself (elections, log replication, a deposed leader's queue), which
tests/integration covers with real agents.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout import artifacts, fsm, signing
from quorum_rollout import coordinator as coordinator_module
from quorum_rollout.config import NotifyConfig, RegistryConfig, RolloutConfig
from quorum_rollout.coordinator import Coordinator, RegistryReporter
from quorum_rollout.group import GroupNode, Node
from quorum_rollout.notify import Notifier, committer
from quorum_rollout.registry import Registry
from quorum_rollout.sources import Sources

from tests.support.inproc import GROUP, NAME, SECRET, InProcGroup, InProcNode, member_config

MEMBERS = ["h1", "h2", "h3", "h4"]
FILE = f"{NAME}/2.4/{NAME}-2.4.tar.gz"


class Clock:
    """time.monotonic() plus an offset the test advances: the coordinator's deadlines move while
    the artifact code (which reads time.monotonic itself) sees the same deadline values."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Harness:
    def __init__(self, tmp: Path, mirror_url: str, *, step_deadline: float = 30.0) -> None:
        self.tmp, self.mirror_url = tmp, mirror_url
        self.group = InProcGroup(GROUP, MEMBERS)
        self.clock = Clock()
        self.rollout = RolloutConfig(batch_fraction=0.25, step_deadline=step_deadline, member_timeout=10.0)
        self.coordinators: dict[str, Coordinator] = {}
        self.reporters: list[RegistryReporter] = []
        self.notify: NotifyConfig | None = None  # set before the first coordinator: each gets a Notifier
        self.notifiers: dict[str, Notifier] = {}
        self.committed = threading.Event()
        self.group.on_commit.append(self.committed.set)
        self.now: float | None = None  # the leaders' wall clock when set (maintenance windows)

    def coordinator(self, member: str) -> Coordinator:
        if member not in self.coordinators:
            cfg = member_config(self.tmp, member, MEMBERS, [self.mirror_url], rollout=self.rollout)
            sources = Sources(cfg, artifacts.Store(Path(cfg.data_dir) / "store"),
                              signing.TrustPolicy.from_config(cfg.artifacts), SECRET)
            registry = RegistryConfig(type="file", path=str(self.tmp / member / "registry.json"))
            reporter = RegistryReporter(Registry(registry), GROUP)
            self.reporters.append(reporter)
            node = self.group.nodes[member]
            if self.notify is not None:
                self.notifiers[member] = Notifier(self.notify, GROUP, member, committer(node, GROUP, member),
                                                  backoff=0.01)
            self.coordinators[member] = Coordinator(node, cfg, sources, reporter, clock=self.clock, wall=self.wall,
                                                    notifier=self.notifiers.get(member))
        return self.coordinators[member]

    def lead(self, member: str = "h1") -> int:
        term = self.group.elect(member)
        self.settle(lambda: self.group.state["leader_term"] == term, member)
        return term

    def settle(self, done: Callable[[], bool], *members: str, timeout: float = 10.0) -> None:
        """Step the members' coordinators as the agent's loop does (after every commit) until `done`
        holds and the last step committed nothing."""
        end = time.monotonic() + timeout
        while True:
            self.committed.clear()
            for member in members or ("h1",):
                self.coordinator(member).step()
            if done() and not self.committed.is_set():
                return
            assert time.monotonic() < end, f"not reached within {timeout}s: {self.release_summary()}"
            self.committed.wait(0.02)

    def registry_settled(self, member: str, release_id: str) -> dict[str, Any]:
        """The member's registry file once it holds `release_id` in its final state. The reporter
        thread writes asynchronously: until then the file may hold an older record, such as the one
        written when the member became leader (no release, state current, version None)."""
        path = self.tmp / member / "registry.json"

        def record() -> dict[str, Any]:
            return json.loads(path.read_text()) if path.exists() else {}

        self.settle(lambda: (record().get("release_id"), record().get("state")) == (release_id, fsm.CURRENT))
        return record()

    def wait(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait for commits from the leader's step thread (no step of the loop) until `done`."""
        end = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < end, f"not reached within {timeout}s: {self.release_summary()}"
            self.committed.wait(0.02)
            self.committed.clear()

    def wall(self) -> float:
        return time.time() if self.now is None else self.now

    def start(self, version: str = "2.4", **policy: Any) -> None:
        result = self.group.nodes["h2"].propose("start", version=version, members=MEMBERS, batch_fraction=0.25,
                                                **policy)
        assert result["code"] == "accepted", result

    def report(self, host: str, ok: bool = True, step: str = "done", reason: str | None = None) -> dict[str, str]:
        release = self.release
        return self.group.nodes[host].propose("host_done", op_id=f"{release['id']}:{host}:install",
                                              release=release["id"], host=host, phase="install", ok=ok,
                                              step=step, reason=reason)

    @property
    def release(self) -> dict[str, Any]:
        return self.group.state["release"]

    def release_summary(self) -> Any:
        release = self.release
        return release and {k: release[k] for k in ("state", "batch", "failure")}

    def stop(self) -> None:
        for reporter in self.reporters:
            reporter.stop()
        for notifier in self.notifiers.values():
            notifier.stop()
        for coordinator in self.coordinators.values():
            coordinator._runner.cancel()


@pytest.fixture
def harness(tmp_path: Path, mirror: Any) -> Iterator[Harness]:
    h = Harness(tmp_path, mirror.url)
    yield h
    h.stop()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.qr_fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def join_runner(coordinator: Coordinator) -> None:
    thread = coordinator._runner._thread
    if thread is not None:
        thread.join(10)
        assert not thread.is_alive()


# --------------------------------------------------------------------------------------- the seam


@pytest.mark.parametrize("cls", [GroupNode, InProcNode])
def test_group_node_and_the_in_process_node_have_every_member_of_the_node_protocol(cls: type) -> None:
    members = [n for n in vars(Node) if not n.startswith("_")] + list(Node.__annotations__)
    for name in members:
        if name == "state":
            continue  # an attribute of GroupNode (assigned after SyncObj.__init__), a property of InProcNode
        ours, theirs = inspect.signature(getattr(Node, name)), inspect.signature(getattr(cls, name))
        assert list(ours.parameters) == list(theirs.parameters), (cls.__name__, name)
    assert isinstance(InProcNode.state, property)


# ------------------------------------------------------------------------------------- the happy path


def test_a_release_goes_from_start_to_current_one_batch_at_a_time(harness: Harness, mirror: Any) -> None:
    term = harness.lead("h1")
    assert harness.group.state["members"].keys() == set(MEMBERS)  # the first leader seeds the membership
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    release = harness.release
    assert release["batches"] == [["h2"], ["h3"], ["h4"], ["h1"]]  # the leader goes last
    assert release["holders"] == ["h1"] and release["source"] == "h1"
    assert len(mirror.seen(FILE)) == 1  # one copy from the mirror per group and release
    assert [e["op"] for e in harness.group.history(release=release["id"])] == [
        "start", "manifest", "downloaded", "verified", "open_batch"]
    assert {c["term"] for c in harness.group.accepted() if c["actor"] == "h1"} == {term}

    for host in ("h2", "h3", "h4", "h1"):
        assert fsm.open_batch_hosts(harness.group.state) == [host]
        assert harness.report(host)["code"] == "accepted"
        harness.settle(lambda: True)
    assert harness.release["state"] == fsm.CURRENT
    assert harness.group.state["current_version"] == "2.4"
    details = [e["detail"] for e in harness.group.history(release=release["id"])]
    assert details[-8:] == ["h2 updated", "batch 2 of 4", "h3 updated", "batch 3 of 4", "h4 updated",
                            "batch 4 of 4", "h1 updated", "all 4 hosts run 2.4"]
    assert harness.registry_settled("h1", release["id"])["version"] == "2.4"


def test_a_follower_proposes_nothing(harness: Harness) -> None:
    harness.lead("h1")
    harness.start()
    before = len(harness.group.proposed)
    for _ in range(3):
        harness.coordinator("h3").step()
    assert len(harness.group.proposed) == before


# ------------------------------------------------------------------------------------------ failures


def test_a_version_no_mirror_publishes_fails_the_download_and_rolls_back(harness: Harness) -> None:
    harness.lead()
    harness.start("2.5")
    harness.settle(lambda: harness.release["state"] == fsm.ROLLED_BACK)
    failure = harness.release["failure"]
    assert failure["host"] == "h1" and failure["step"] == "download"
    assert "2.5" in failure["reason"] and "not published" in failure["reason"].lower()
    assert {h["status"] for h in harness.release["hosts"].values()} == {fsm.SKIPPED}  # no batch ever opened


def test_a_file_that_changed_in_the_store_after_the_download_fails_verify(harness: Harness) -> None:
    harness.lead()
    harness.start()
    harness.coordinator("h1").step()  # starts the download; its thread commits `downloaded`
    harness.wait(lambda: harness.release["state"] == fsm.DOWNLOADED)
    # Between the two steps (the loop has not run since): corrupt the stored copy, same size.
    join_runner(harness.coordinator("h1"))
    stored = harness.coordinator("h1").sources.store.path(harness.release["artifact"]["sha256"])
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    harness.settle(lambda: harness.release["state"] == fsm.ROLLED_BACK)
    failure = harness.release["failure"]
    assert failure["step"] == "verify" and "sha256" in failure["reason"]


def test_a_member_failure_rolls_the_updated_hosts_back_newest_first(harness: Harness) -> None:
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    harness.report("h2")
    harness.report("h3", ok=False, step="preflight:health", reason="HTTP 500 from /health")
    release = harness.release
    assert release["state"] == fsm.ROLLING_BACK
    assert release["failure"] == {"host": "h3", "step": "preflight:health", "reason": "HTTP 500 from /health"}
    assert release["rollback"] == [["h3"], ["h2"]]
    assert release["hosts"]["h4"]["status"] == release["hosts"]["h1"]["status"] == fsm.SKIPPED
    before = len(harness.group.proposed)
    harness.settle(lambda: True)  # nothing for the leader to do while members revert
    assert len(harness.group.proposed) == before


# -------------------------------------------------------------------------------------- the operator


def test_pause_stops_the_leader_and_resume_continues_where_it_was(harness: Harness) -> None:
    harness.lead()
    harness.start()
    for reached in (fsm.DOWNLOADED, fsm.VERIFIED):  # one loop pass per step: it stops at `verified`
        harness.coordinator("h1").step()
        harness.wait(lambda: harness.release["state"] == reached)
    assert harness.group.nodes["h3"].propose("pause")["code"] == "accepted"
    before = len(harness.group.proposed)
    for _ in range(5):
        harness.coordinator("h1").step()
    assert harness.release["state"] == fsm.PAUSED and len(harness.group.proposed) == before
    assert harness.group.nodes["h3"].propose("resume")["code"] == "accepted"
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    assert [e["op"] for e in harness.group.history(release=harness.release["id"])][-3:] == [
        "pause", "resume", "open_batch"]


def test_pause_while_downloading_then_resume_downloads_again_and_goes_on(harness: Harness, mirror: Any) -> None:
    mirror.behave(FILE, delay=0.3, times=1)  # the first download is still running when the pause commits
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["artifact"] is not None)
    assert harness.group.nodes["h2"].propose("pause")["code"] == "accepted"
    harness.coordinator("h1").step()  # cancels the running download
    join_runner(harness.coordinator("h1"))
    assert harness.release["state"] == fsm.PAUSED
    assert not harness.group.accepted("downloaded")  # the cancelled step proposed nothing
    assert harness.group.nodes["h2"].propose("resume")["code"] == "accepted"
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)


def test_abort_ends_the_release_and_the_leader_proposes_nothing_for_it(harness: Harness) -> None:
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    assert harness.group.nodes["h4"].propose("abort", reason="bad week")["code"] == "accepted"
    before = len(harness.group.proposed)
    harness.clock.advance(3600)  # even the batch deadline passing changes nothing
    for _ in range(3):
        harness.coordinator("h1").step()
    assert harness.release["state"] == fsm.ABORTED and len(harness.group.proposed) == before
    assert harness.group.history(op="abort")[-1]["detail"] == "bad week"


# ------------------------------------------------------------------------------------------ deadlines


def test_a_trickling_mirror_is_failed_at_the_download_deadline(tmp_path: Path, mirror: Any) -> None:
    mirror.behave(FILE, trickle=0.05, trickle_bytes=16)
    h = Harness(tmp_path, mirror.url, step_deadline=20.0)
    try:
        h.lead()
        h.start()
        h.settle(lambda: h.release["artifact"] is not None and len(mirror.seen(FILE)) >= 1)
        h.clock.advance(25.0)
        h.settle(lambda: h.release["state"] == fsm.ROLLED_BACK)
        failure = h.release["failure"]
        assert failure["step"] == "deadline"
        assert "no progress in running_old_release for 20s (rollout.step_deadline) during download" in failure["reason"]
    finally:
        h.stop()


def test_a_verify_that_must_fetch_the_file_again_from_a_trickling_mirror_fails_at_its_deadline(
        harness: Harness, mirror: Any) -> None:
    harness.lead()
    harness.start()
    coordinator = harness.coordinator("h1")
    coordinator.step()
    harness.wait(lambda: harness.release["state"] == fsm.DOWNLOADED)
    join_runner(coordinator)
    coordinator.sources.store.path(harness.release["artifact"]["sha256"]).unlink()  # lost before verify
    mirror.behave(FILE, trickle=0.05, trickle_bytes=16)
    coordinator.step()  # verify starts: it has to fetch the file again
    harness.wait(lambda: len(mirror.seen(FILE)) == 2)
    harness.clock.advance(32.0)
    harness.settle(lambda: harness.release["state"] == fsm.ROLLED_BACK)
    failure = harness.release["failure"]
    assert failure["step"] == "deadline"
    assert failure["reason"].startswith("no progress in downloaded_in_leader for 30s (rollout.step_deadline) "
                                        "during verify")


def test_a_member_that_never_reports_fails_the_batch_at_its_deadline(harness: Harness) -> None:
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    harness.clock.advance(29.0)
    harness.settle(lambda: True)
    assert harness.release["state"] == fsm.ROLLING  # not yet
    harness.clock.advance(2.0)
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING_BACK)
    failure = harness.release["failure"]
    assert failure["host"] == "h2" and failure["step"] == "deadline"
    assert failure["reason"] == "no report from h2 within 30s (rollout.step_deadline) (batch 1 of 4)"


def test_a_revert_that_never_reports_is_given_up_at_its_deadline(harness: Harness) -> None:
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    harness.report("h2", ok=False, step="install", reason="disk full")
    harness.settle(lambda: True)
    harness.clock.advance(31.0)
    harness.settle(lambda: harness.release["state"] == fsm.ROLLED_BACK)
    assert harness.release["hosts"]["h2"]["status"] == fsm.REVERT_FAILED
    assert harness.release["hosts"]["h2"]["step"] == "deadline"
    assert harness.group.history(op="revert_timeout")[0]["detail"] == (
        "no revert report from h2 within 30s (rollout.step_deadline)")


# -------------------------------------------------------------------------------- transient errors


def test_a_transient_mirror_error_is_retried_and_the_download_completes(harness: Harness, mirror: Any,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    mirror.behave(FILE, status=503, body=b"busy", times=1)
    harness.lead()
    harness.start()
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    retries = events(caplog, "step_retry")
    assert len(retries) == 1 and retries[0]["step"] == "download" and "503" in retries[0]["cause"]
    assert len(mirror.seen(FILE)) == 2


def test_a_transient_error_until_the_deadline_is_reported_as_itself(harness: Harness, mirror: Any) -> None:
    mirror.behave(FILE, status=503, body=b"busy")
    harness.lead()
    harness.start()
    harness.settle(lambda: len(mirror.seen(FILE)) >= 1)
    harness.clock.advance(29.9)  # the next retry finds no time left; the watchdog has not fired yet
    harness.wait(lambda: harness.release["state"] != fsm.RUNNING_OLD)  # the step's own thread fails it
    failure = harness.release["failure"]
    assert failure["step"] == "download"
    assert "503" in failure["reason"]
    assert failure["reason"].endswith("(retried until 30s (rollout.step_deadline) passed)")


# ----------------------------------------------------------------------------------- ambiguous commits


@pytest.mark.parametrize("kind", ["applied", "lost", "late"])
def test_an_ambiguous_commit_of_a_step_ends_with_the_step_committed_once(harness: Harness, kind: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    harness.lead()
    harness.group.fail_next("downloaded", kind)
    harness.start()
    harness.settle(lambda: bool(events(caplog, "proposal_failed")))
    harness.group.deliver_late()  # "late": the command the caller never heard of commits now
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    assert len(harness.group.accepted("downloaded")) == 1
    assert len(harness.group.history(op="downloaded")) == 1
    tried = [c for c in harness.group.proposed if c["op"] == "downloaded"]
    assert len({c["id"] for c in tried}) == 1  # every attempt carries the same operation id


def test_a_refused_lead_is_proposed_again_and_the_leader_acts_only_after_it_commits(harness: Harness) -> None:
    harness.group.fail_next("lead", "refused")
    term = harness.group.elect("h1")
    harness.coordinator("h1").step()
    assert harness.group.state["leader_term"] == 0 and harness.group.state["members"] == {}
    harness.settle(lambda: harness.group.state["leader_term"] == term)
    assert harness.group.state["leader"]["node"] == "h1"


def test_a_lead_that_commits_without_taking_is_logged_and_not_proposed_on_every_commit(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Seen once (a re-formed group): the id of this term's `lead` was already applied, so every
    announcement was a duplicate and the leader proposed it again on each commit, ~20 a second."""
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    term = harness.group.elect("h1")
    taken = harness.group.nodes["h2"].propose("channel", op_id=f"lead:{term}:h1", paused=False)  # an operator op
    assert taken["code"] in ("accepted", "noop"), taken  # either way its id is applied
    for _ in range(5):
        harness.coordinator("h1").step()
    assert len([c for c in harness.group.proposed if c["op"] == "lead"]) == 1
    (ignored,) = events(caplog, "leader_announce_ignored")
    assert ignored["term"] == term and ignored["outcome"] == "duplicate"
    harness.clock.advance(coordinator_module.ANNOUNCE_RETRY_SECONDS + 0.1)
    harness.coordinator("h1").step()
    assert len([c for c in harness.group.proposed if c["op"] == "lead"]) == 2, "tried again later"


# ------------------------------------------------------------------------------------- term changes


def test_a_leader_deposed_mid_download_proposes_nothing_under_its_old_term(harness: Harness, mirror: Any) -> None:
    mirror.behave(FILE, delay=0.3, times=1)
    old = harness.lead("h1")
    harness.start()
    harness.settle(lambda: harness.release["artifact"] is not None, "h1")  # h1 is downloading the file now
    new = harness.lead("h2")
    harness.coordinator("h1").step()  # h1 notices it no longer leads: its step is cancelled
    join_runner(harness.coordinator("h1"))
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING, "h1", "h2")
    after_election = harness.group.proposed[next(i for i, c in enumerate(harness.group.proposed)
                                                  if c["op"] == "lead" and c["term"] == new):]
    assert not [c for c in after_election if c["actor"] == "h1" and c["term"] == old]
    assert harness.release["batches"][-1] == ["h1"]  # planned when h1 committed the manifest
    steps = harness.group.history(release=harness.release["id"])
    assert [(e["op"], e["actor"], e["term"]) for e in steps[-3:]] == [
        ("downloaded", "h2", new), ("verified", "h2", new), ("open_batch", "h2", new)]


def test_a_late_result_from_the_old_term_is_rejected_by_the_fence(harness: Harness, mirror: Any) -> None:
    mirror.behave(FILE, delay=0.3, times=1)
    harness.lead("h1")
    harness.start()
    harness.settle(lambda: harness.release["artifact"] is not None, "h1")
    new = harness.group.elect("h2")
    harness.coordinator("h2").step()  # announces its term, and nothing else yet
    assert harness.group.state["leader_term"] == new
    # h1's loop does not run: its download thread finishes and proposes with the old term
    join_runner(harness.coordinator("h1"))
    late = [c for c in harness.group.log if c.cmd["op"] == "downloaded" and c.cmd["actor"] == "h1"]
    assert [c.code for c in late] == ["invalid"] and "stale leader command" in late[0].reason
    assert harness.release["state"] == fsm.RUNNING_OLD


# ------------------------------------------------------------------------------------------ liveness


def test_a_member_without_a_raft_link_is_reported_unreachable_after_member_timeout(harness: Harness) -> None:
    harness.lead()
    harness.group.disconnect("h3")
    harness.settle(lambda: True)
    assert harness.group.state["unreachable"] == {}
    harness.clock.advance(11.0)
    harness.settle(lambda: "h3" in harness.group.state["unreachable"])
    assert harness.group.nodes["h2"].propose("start", version="2.4", members=MEMBERS)["code"] == "conflict"
    harness.group.reconnect("h3")
    harness.settle(lambda: harness.group.state["unreachable"] == {})


# ---------------------------------------------------------------------------------------- membership


def test_a_joining_member_is_added_to_the_raft_cluster_once(harness: Harness) -> None:
    harness.lead()
    member = {"id": "h5", "address": "h5:4321", "api_url": "http://127.0.0.1:1"}
    assert harness.group.nodes["h3"].propose("member_add", member=member)["code"] == "accepted"
    harness.settle(lambda: True)
    harness.settle(lambda: True)
    assert harness.group.nodes["h1"].changes == [("add", "h5:4321")]
    assert harness.group.state["members"]["h5"]["status"] == fsm.JOINING  # until it runs the group's version


def test_a_leaving_member_is_taken_out_of_the_cluster_then_forgotten(harness: Harness) -> None:
    term = harness.lead()
    assert harness.group.nodes["h3"].propose("member_remove", member="h4")["code"] == "accepted"
    harness.settle(lambda: "h4" not in harness.group.state["members"])
    assert harness.group.nodes["h1"].changes == [("remove", "h4:4321")]
    removed = harness.group.accepted("member_removed")
    assert [(c["member"], c["term"]) for c in removed] == [("h4", term)]


def test_a_leader_that_is_leaving_hands_leadership_over_instead_of_removing_itself(harness: Harness) -> None:
    harness.lead("h1")
    assert harness.group.nodes["h3"].propose("member_remove", member="h1")["code"] == "accepted"
    harness.settle(lambda: True)
    assert harness.group.nodes["h1"].handed_over >= 1 and harness.group.nodes["h1"].changes == []
    assert harness.group.state["members"]["h1"]["status"] == fsm.LEAVING


# ------------------------------------------------- between batches: bake time, re-checks, windows


def recheck(harness: Harness, host: str, ok: bool = True) -> None:
    release = harness.release
    result = harness.group.nodes[host].propose(
        "host_done", op_id=f"{release['id']}:{host}:recheck:{release['gate']['batch']}", release=release["id"],
        host=host, phase="recheck", ok=ok, step="done" if ok else "preflight:health",
        reason=None if ok else "HTTP 500 from /health")
    assert result["code"] == "accepted", result


def test_bake_time_then_rechecks_of_every_updated_host_then_the_next_batch(harness: Harness) -> None:
    harness.lead()
    harness.start(bake_time=60, max_failures=1)  # longer than the 30 s step deadline: the bake is no step
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING)
    harness.report("h2")
    harness.settle(lambda: harness.release["hold"] is not None)
    hold = harness.release["hold"]
    assert hold["reason"] == "bake" and hold["text"].startswith("baking until 20") and hold["text"].endswith("Z")
    assert abs(hold["until"] - (time.time() + 60)) < 5
    before = len(harness.group.proposed)
    for _ in range(5):
        harness.coordinator("h1").step()
    assert len(harness.group.proposed) == before  # holding commits once, not on every pass
    harness.clock.advance(45)
    harness.settle(lambda: True)
    assert harness.release["gate"]["recheck"] is None and harness.release["state"] == fsm.ROLLING
    harness.clock.advance(16)
    harness.settle(lambda: harness.release["gate"]["recheck"] is not None)
    assert fsm.open_batch_hosts(harness.group.state) == ["h2"] and harness.release["hold"] is None
    recheck(harness, "h2")
    harness.settle(lambda: harness.release["batch"] == 1)
    assert fsm.open_batch_hosts(harness.group.state) == ["h3"]
    # batch 2, then a re-check fails: within the budget h2 alone goes back, the release goes on
    harness.report("h3")
    harness.settle(lambda: harness.release["gate"] is not None)
    harness.clock.advance(61)
    harness.settle(lambda: harness.release["gate"]["recheck"] is not None)
    assert sorted(harness.release["gate"]["recheck"]) == ["h2", "h3"]
    recheck(harness, "h3")
    recheck(harness, "h2", ok=False)
    harness.settle(lambda: True)
    assert harness.release["batch"] == 1 and harness.release["hosts"]["h2"]["status"] == fsm.REVERT
    result = harness.group.nodes["h2"].propose("host_done", op_id=f"{harness.release['id']}:h2:revert",
                                               release=harness.release["id"], host="h2", phase="revert", ok=True,
                                               step="done", reason=None)
    assert result["code"] == "accepted"
    harness.settle(lambda: harness.release["batch"] == 2)
    assert harness.release["failed_within_budget"] == [
        {"host": "h2", "step": "recheck:preflight:health", "reason": "HTTP 500 from /health"}]
    harness.report("h4")
    harness.settle(lambda: harness.release["hold"] is not None)
    harness.clock.advance(61)
    harness.settle(lambda: harness.release["gate"]["recheck"] is not None)
    assert sorted(harness.release["gate"]["recheck"]) == ["h3", "h4"]  # h2 runs 2.3 again: not re-checked
    recheck(harness, "h3")
    recheck(harness, "h4")
    harness.settle(lambda: harness.release["batch"] == 3)
    harness.report("h1")
    harness.settle(lambda: harness.release["state"] == fsm.CURRENT)  # no bake after the last batch
    assert harness.release["state"] == fsm.CURRENT
    assert harness.registry_settled("h1", harness.release["id"])["failed_within_budget"] == ["h2"]


def test_no_batch_opens_outside_the_releases_window(harness: Harness) -> None:
    """The window opens two hours from now (UTC, every day, for an hour): the leader holds batch 1,
    opens it inside the window, and holds the next batch once the window closed. The window is the
    release's: no member's config has one (a new leader holds all the same)."""
    opens = (int(time.time()) // 60 + 120) * 60
    start, end = (time.strftime("%H:%M", time.gmtime(t)) for t in (opens, opens + 3600))
    window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": start, "end": end,
              "timezone": "UTC"}
    harness.lead()
    harness.start(windows=[window])
    harness.settle(lambda: harness.release["state"] == fsm.VERIFIED and harness.release["hold"] is not None)
    expected = time.strftime("%Y-%m-%dT%H:%M+00:00", time.gmtime(opens))
    assert harness.release["hold"] == {"reason": "window", "until": opens,
                                       "text": f"waiting for window (opens {expected})"}
    assert fsm.hold_text(harness.release) == f"waiting for window (opens {expected})"
    assert not [c for c in harness.group.proposed if c["op"] == "open_batch"]
    assert harness.coordinator("h3").cfg.rollout.maintenance_windows == ()
    harness.lead("h3")
    harness.settle(lambda: True, "h3")
    assert harness.release["state"] == fsm.VERIFIED and harness.release["hold"]["until"] == opens
    harness.now = opens + 30.0
    harness.settle(lambda: harness.release["state"] == fsm.ROLLING, "h3")
    harness.report("h2")
    harness.settle(lambda: harness.release["batch"] == 1, "h3")  # inside the window the next batch opens at once
    harness.now = opens + 3600.0
    harness.report("h3")
    harness.settle(lambda: harness.release["hold"] is not None, "h3")
    assert harness.release["batch"] == 1 and harness.release["hold"]["until"] == opens + 86400
    harness.now = opens + 86400.0
    harness.settle(lambda: harness.release["batch"] == 2, "h3")
def test_notifications_are_sent_once_by_the_leader_and_a_new_leader_sends_none_again(harness: Harness,
                                                                                      tmp_path: Path) -> None:
    """The leader notifies from committed state and commits `notified`; a new leader derives the same
    notifications from the same state, finds them notified and queues nothing (a real local receiver)."""
    from tests.support.webhook import Receiver

    receiver = Receiver()
    secret = tmp_path / "webhook.secret"
    secret.write_text("0123456789abcdef0123")
    secret.chmod(0o600)
    harness.notify = NotifyConfig(url=receiver.url, secret_file=str(secret), events=("release_started",))
    try:
        harness.lead("h1")
        harness.start()
        started = f"{harness.release['id']}:release_started"
        harness.settle(lambda: started in harness.group.state["notified"], "h1")
        assert [r["headers"]["X-Quorum-Delivery"] for r in receiver.requests] == [started]
        harness.lead("h2")
        harness.coordinator("h2").step()
        assert harness.notifiers["h2"]._known == set() and harness.notifiers["h2"]._queue == []
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
