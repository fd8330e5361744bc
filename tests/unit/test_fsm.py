"""Tests of the pure release state machine (agent/quorum_rollout/fsm.py).

Unit tests walk every command through every state it can meet; the hypothesis state machine at
the end throws plausible and garbage command sequences at `apply` and checks the invariants the
replicated log relies on after every single step.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from quorum_rollout import fsm
from quorum_rollout.fsm import (
    ABORTED, CURRENT, DOWNLOADED, FAILED, PAUSED, PENDING, REVERT, REVERT_FAILED, REVERTED, ROLLED_BACK,
    ROLLING, ROLLING_BACK, RUNNING_OLD, SKIPPED, UPDATED, VERIFIED,
)

LEADER = "h00"
ARTIFACT = {"sha256": "ab" * 32, "size": 1234, "file": "app-2.4.tar.gz",
            "manifest": {"name": "app", "version": "2.4"}, "mirror": "https://mirror-1.example"}


def under_way(state: dict) -> bool:
    """What an operator reads from status: a release that has not reached a terminal state."""
    release = state.get("release")
    return bool(release) and release["state"] not in fsm.TERMINAL


def hosts(n: int) -> list[str]:
    return [f"h{i:02d}" for i in range(n)]


def dumps(state: dict) -> str:
    return json.dumps(state, sort_keys=True)


class Group:
    """Drives one group's state through `fsm.apply`, checking purity of every call."""

    def __init__(self, group: str = "intel-az1") -> None:
        self.state = fsm.initial_state(group)
        self.n = 0
        self.term = 1

    @property
    def release(self) -> dict:
        return self.state["release"]

    @property
    def rid(self) -> str:
        return self.release["id"]

    def cmd(self, op: str, **args) -> dict:
        self.n += 1
        c = {"op": op, "id": f"op-{self.n}", "term": self.term, "time": 1000.0 + self.n, "actor": LEADER}
        c.update(args)
        return {k: v for k, v in c.items() if v is not DROP}

    def raw(self, command, expect: str | None = None) -> fsm.Outcome:
        before = copy.deepcopy(self.state)
        new, outcome = fsm.apply(self.state, command)
        assert self.state == before, "apply mutated its input state"
        json.dumps(new)
        self.state = new
        if expect is not None:
            assert outcome.code == expect, outcome
        return outcome

    def do(self, op: str, expect: str | None = "accepted", **args) -> fsm.Outcome:
        return self.raw(self.cmd(op, **args), expect)

    # -- the happy path, step by step -----------------------------------------------------------

    def start(self, version: str = "2.4", members: list[str] | None = None, expect="accepted", **args):
        return self.do("start", expect, version=version, members=hosts(10) if members is None else members, **args)

    def downloaded(self, expect="accepted", **args):
        args.setdefault("release", self.rid)
        args.setdefault("artifact", dict(ARTIFACT))
        return self.do("downloaded", expect, **args)

    def verified(self, expect="accepted", **args):
        args.setdefault("release", self.rid)
        return self.do("verified", expect, **args)

    def open_batch(self, expect="accepted", **args):
        args.setdefault("release", self.rid)
        return self.do("open_batch", expect, **args)

    def install(self, host: str, ok: bool = True, expect="accepted", **args):
        args.setdefault("release", self.rid)
        args.setdefault("step", "done" if ok else "preflight")
        args.setdefault("reason", None if ok else "http check failed")
        return self.do("host_done", expect, host=host, phase="install", ok=ok, actor=host, **args)

    def revert(self, host: str, ok: bool = True, expect="accepted", **args):
        args.setdefault("release", self.rid)
        return self.do("host_done", expect, host=host, phase="revert", ok=ok, actor=host, step="done",
                       reason=None if ok else "restart failed", **args)

    def fail(self, expect="accepted", **args):
        args.setdefault("release", self.rid)
        args.setdefault("host", LEADER)
        args.setdefault("step", "download")
        args.setdefault("reason", "all mirrors unreachable")
        return self.do("fail", expect, **args)

    def to_rolling(self, version: str = "2.4", members: list[str] | None = None, **start_args) -> None:
        self.start(version, members, **start_args)
        self.downloaded()
        self.verified()
        self.open_batch()

    def finish_batch(self) -> None:
        for h in fsm.open_batch_hosts(self.state):
            self.install(h)

    def release_fully(self, version: str = "2.4", members: list[str] | None = None, **start_args) -> None:
        self.to_rolling(version, members, **start_args)
        while self.release["state"] == ROLLING:
            self.finish_batch()
        assert self.release["state"] == CURRENT

    def goto(self, target: str, members: list[str] | None = None) -> None:
        """Bring a fresh group to `target` (previous version 2.3, new version 2.4)."""
        members = hosts(10) if members is None else members
        self.release_fully("2.3", members)
        self.start("2.4", members)
        if target == RUNNING_OLD:
            return
        if target == PAUSED:
            self.do("pause")
            return
        self.downloaded()
        if target == DOWNLOADED:
            return
        self.verified()
        if target == VERIFIED:
            return
        self.open_batch()
        if target == ROLLING:
            return
        if target == CURRENT:
            while self.release["state"] == ROLLING:
                self.finish_batch()
            return
        self.finish_batch()
        self.install(fsm.open_batch_hosts(self.state)[0], ok=False)
        if target == ROLLING_BACK:
            return
        while self.release["state"] == ROLLING_BACK:
            for h in fsm.open_batch_hosts(self.state):
                self.revert(h)
        if target == ROLLED_BACK:
            return
        self.do("abort")
        assert target == ABORTED


DROP = object()  # marks an argument to leave out of a command


# ---------------------------------------------------------------------------------------------
# start


def test_initial_state_is_json_and_idle():
    s = fsm.initial_state("amd-az2")
    assert s["group"] == "amd-az2" and s["release"] is None and not under_way(s)
    assert s["current_version"] is None and s["highest_version"] is None
    assert json.loads(json.dumps(s)) == s
    assert fsm.open_batch_hosts(s) == []


def test_start_accepted_creates_release():
    g = Group()
    g.term = 7
    out = g.start("2.4", ["h02", "h00", "h01"], batch_fraction=0.5, canary=True)
    assert out.ok and out.code == "accepted"
    r = g.release
    assert r["id"] == "2.4#1" and r["version"] == "2.4" and r["attempt"] == 1
    assert r["state"] == RUNNING_OLD and under_way(g.state)
    assert r["previous_version"] is None and r["members"] == ["h00", "h01", "h02"]
    assert r["batch_fraction"] == 0.5 and r["canary"] is True and r["allow_downgrade"] is False
    assert r["batch"] is None and r["batches"] == [] and r["rollback"] == [] and r["failure"] is None
    assert r["term"] == 7
    assert all(e == {"status": PENDING, "version": None, "previous": None, "step": None, "detail": None}
               for e in r["hosts"].values())
    entry = g.state["history"][-1]
    assert entry["op"] == "start" and entry["term"] == 7 and entry["actor"] == LEADER
    assert entry["time"] == r["started_at"] and entry["release"] == "2.4#1" and entry["to"] == RUNNING_OLD
    assert g.state["applied"] == ["op-1"] and g.state["rejected"] == []


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, PAUSED, ROLLING_BACK])
def test_start_same_version_in_progress_is_noop(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    out = g.start("2.4", expect="noop")
    assert out.code == "noop" and out.ok and "in progress" in out.reason
    assert g.release == before


def test_start_version_already_current_is_noop():
    g = Group()
    g.release_fully("2.4")
    before = copy.deepcopy(g.state)
    out = g.start("2.4", expect="noop")
    assert out.code == "noop" and "already runs" in out.reason
    assert g.release == before["release"] and g.state["history"] == before["history"]


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, PAUSED, ROLLING_BACK])
def test_start_other_version_while_in_progress_conflicts(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    out = g.start("2.5", expect="conflict")
    assert out.code == "conflict" and not out.ok and "2.4" in out.reason
    assert g.release == before
    assert g.state["rejected"][-1]["code"] == "conflict" and g.state["rejected"][-1]["op"] == "start"


@pytest.mark.parametrize("where", [CURRENT, ROLLED_BACK, ABORTED])
def test_start_after_terminal_state_creates_new_release(where):
    g = Group()
    g.goto(where)
    old = g.rid
    g.start("2.5")
    assert g.rid != old and g.release["version"] == "2.5" and g.release["state"] == RUNNING_OLD
    assert g.release["previous_version"] == ("2.4" if where == CURRENT else "2.3")


@pytest.mark.parametrize("version", [
    "", ".", "..", "-1", ".hidden", "2.4/../../etc", "a b", "2.4\n", "2.4\r", "\n2.4", "x" * 65, "2.4;rm",
    "é1", None, 24, 2.4, ["2.4"], {"v": "2.4"}, True,
])
def test_start_rejects_invalid_version(version):
    g = Group()
    before = copy.deepcopy(g.state)
    out = g.start(version, expect="invalid")
    assert "version" in out.reason
    assert g.state["release"] is None and g.state["releases_started"] == 0
    assert g.state["history"] == before["history"]
    assert g.state["rejected"][-1]["code"] == "invalid"


@pytest.mark.parametrize("version", ["2.4", "2.4.1", "2.4-rc1", "2.4+build.7", "v2", "x" * 64, "20240101"])
def test_start_accepts_valid_versions(version):
    assert fsm.valid_version(version)
    Group().start(version)


def test_downgrade_refused_unless_allow_downgrade():
    g = Group()
    g.release_fully("2.10")
    assert g.state["current_version"] == "2.10" and g.state["highest_version"] == "2.10"
    out = g.start("2.9", expect="invalid")  # numeric compare: 2.9 < 2.10
    assert "rollback protection" in out.reason and g.release["version"] == "2.10"
    g.release_fully("2.9", allow_downgrade=True)
    assert g.release["allow_downgrade"] is True and g.release["previous_version"] == "2.10"
    assert g.state["current_version"] == "2.9" and g.state["highest_version"] == "2.10"
    g.start("2.9.5", expect="invalid")  # still below the highest the group ever ran
    g.release_fully("2.11")
    assert g.state["highest_version"] == "2.11"


def test_same_version_as_current_with_allow_downgrade_reinstalls():
    g = Group()
    g.release_fully("2.4")
    g.start("2.4", allow_downgrade=True)
    assert g.release["id"] == "2.4#2" and g.release["state"] == RUNNING_OLD


@pytest.mark.parametrize("members", [
    [], None, "h00h01", "abc", {"h00": 1}, ["h00", "h00"], ["h00", 5], ["h00", ""], ["h00", None], [["h00"]], 7,
    DROP,
])
def test_start_rejects_invalid_members(members):
    g = Group()
    g.do("start", "invalid", version="2.4", members=members)
    assert g.state["release"] is None and g.state["releases_started"] == 0


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "0.5", True, None, float("nan"), float("inf"), 10 ** 400,
                                      [0.1]], ids=lambda v: "10**400" if v == 10 ** 400 else repr(v))
def test_start_rejects_invalid_batch_fraction(fraction):
    g = Group()
    g.start(batch_fraction=fraction, expect="invalid")
    assert g.state["release"] is None


@pytest.mark.parametrize("arg,value", [("allow_downgrade", "false"), ("allow_downgrade", 1),
                                       ("canary", "yes"), ("canary", [True])])
def test_start_rejects_non_boolean_flags(arg, value):
    # "false" used to count as true: a string could switch off the rollback protection
    g = Group()
    g.release_fully("2.10")
    g.do("start", "invalid", version="2.9", members=hosts(3), **{arg: value})
    assert g.release["version"] == "2.10"


def test_start_defaults():
    g = Group()
    g.start(members=hosts(20), batch_fraction=DROP, canary=DROP, allow_downgrade=DROP)
    assert g.release["batch_fraction"] == 0.1 and g.release["canary"] is False
    g.downloaded()
    assert [len(b) for b in g.release["batches"]] == [2] * 10


# ---------------------------------------------------------------------------------------------
# downloaded / verified / open_batch


def test_downloaded_verified_open_batch_happy_path():
    g = Group()
    g.start(members=hosts(10))
    g.downloaded()
    r = g.release
    assert r["state"] == DOWNLOADED and r["artifact"] == ARTIFACT and r["holders"] == [LEADER]
    assert r["batches"] == [[h] for h in hosts(10)[1:]] + [[LEADER]]
    assert fsm.open_batch_hosts(g.state) == [] and under_way(g.state)
    g.verified(actor="h03")
    assert g.release["state"] == VERIFIED and g.release["holders"] == [LEADER, "h03"]
    g.open_batch()
    assert g.release["state"] == ROLLING and g.release["batch"] == 0
    assert fsm.open_batch_hosts(g.state) == ["h01"]
    assert [e["op"] for e in g.state["history"]] == ["start", "downloaded", "verified", "open_batch"]
    assert [e["to"] for e in g.state["history"]] == [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING]


def test_leader_steps_out_of_order_are_rejected():
    g = Group()
    g.start()
    g.verified(expect="invalid")
    g.open_batch(expect="invalid")
    g.downloaded()
    g.downloaded(expect="invalid")  # a second download report (new id) changes nothing
    g.open_batch(expect="invalid")
    g.verified()
    g.verified(expect="invalid")
    g.downloaded(expect="invalid")
    g.open_batch()
    g.open_batch(expect="invalid")
    assert g.release["state"] == ROLLING and g.release["batch"] == 0


@pytest.mark.parametrize("artifact", [None, "sha", ["sha256"], {},
                                      {k: v for k, v in ARTIFACT.items() if k != "sha256"}])
def test_downloaded_with_malformed_artifact_is_rejected(artifact):
    g = Group()
    g.start()
    before = copy.deepcopy(g.release)
    g.do("downloaded", "invalid", release=g.rid, artifact=artifact)
    assert g.release == before


def test_downloaded_without_artifact_is_rejected():
    g = Group()
    g.start()
    g.do("downloaded", "invalid", release=g.rid)
    assert g.release["state"] == RUNNING_OLD


# ---------------------------------------------------------------------------------------------
# batch plan


PLAN_CASES = {
    # (N, canary): expected batch sizes with the default fraction 0.1
    (1, False): [1], (1, True): [1],
    (3, False): [1, 1, 1], (3, True): [1, 1, 1],
    (10, False): [1] * 10, (10, True): [1] * 10,
    (30, False): [3] * 10, (30, True): [1] + [3] * 9 + [2],
}


@pytest.mark.parametrize("n,canary", sorted(PLAN_CASES))
def test_plan_batches_sizes_canary_and_leader_last(n, canary):
    members = hosts(n)
    plan = fsm.plan_batches(list(reversed(members)), LEADER, 0.1, canary)
    assert [len(b) for b in plan] == PLAN_CASES[(n, canary)]
    flat = [h for b in plan for h in b]
    assert sorted(flat) == members and len(flat) == n  # every member exactly once
    assert flat[-1] == LEADER  # the leader goes last
    assert all(1 <= len(b) <= max(1, math.ceil(n * 0.1)) for b in plan)
    if canary and n > 1:
        assert plan[0] == ["h01"]
    assert fsm.plan_batches(members, LEADER, 0.1, canary) == plan  # input order does not matter


@pytest.mark.parametrize("n,fraction,size", [
    (10, 0.25, 3), (10, 0.5, 5), (10, 1.0, 10), (7, 1, 7), (4, 0.01, 1), (100, 0.07, 7), (200, 0.07, 14),
    (1000, 0.07, 70), (30, 0.1, 3), (70, 0.1, 7), (3, 0.3, 1), (10, 0.3, 3), (11, 0.3, 4),
])
def test_plan_batch_size_is_exact_ceiling(n, fraction, size):
    # ceil(100 * 0.07) computed in floats is 8: the batch size must come from the decimal fraction
    plan = fsm.plan_batches(hosts(n), LEADER, fraction, False)
    assert len(plan[0]) == size
    assert [len(b) for b in plan[:-1]] == [size] * (len(plan) - 1)
    assert len(plan) == math.ceil(n / size)


def test_plan_without_leader_among_members_and_empty():
    plan = fsm.plan_batches(["b", "a", "c"], "z", 0.5, False)
    assert plan == [["a", "b"], ["c"]]
    plan = fsm.plan_batches(["b", "a", "c"], None, 1.0, True)
    assert plan == [["a"], ["b", "c"]]
    assert fsm.plan_batches([], "z", 0.1, True) == []
    assert fsm.plan_batches(["z", "a"], "z", 0.1, True) == [["a"], ["z"]]


def test_batches_planned_at_download_use_the_reporting_leader():
    g = Group()
    g.start(members=hosts(4), batch_fraction=0.5)
    g.downloaded(actor="h02")
    assert g.release["batches"] == [["h00", "h01"], ["h03", "h02"]]
    assert g.release["holders"] == ["h02"]


# ---------------------------------------------------------------------------------------------
# host_done: install


def test_install_success_advances_batches_to_current():
    g = Group()
    g.release_fully("2.3", hosts(30))
    g.to_rolling("2.4", hosts(30))
    r = g.release
    assert len(r["batches"]) == 10 and r["previous_version"] == "2.3"
    for index, batch in enumerate(r["batches"]):
        assert g.release["batch"] == index and fsm.open_batch_hosts(g.state) == batch
        for pos, h in enumerate(batch):
            g.install(h)
            assert g.release["hosts"][h]["status"] == UPDATED and g.release["hosts"][h]["version"] == "2.4"
            if pos < len(batch) - 1:  # the batch stays open until its last host reports
                assert g.release["batch"] == index and g.state["current_version"] == "2.3"
    r = g.release
    assert r["state"] == CURRENT and not under_way(g.state) and r["batch"] == 9
    assert g.state["current_version"] == "2.4" and g.state["highest_version"] == "2.4"
    assert all(e["status"] == UPDATED and e["version"] == "2.4" for e in r["hosts"].values())
    assert set(r["holders"]) == set(hosts(30)) and r["failure"] is None
    assert fsm.open_batch_hosts(g.state) == []
    assert g.state["history"][-1]["detail"] == "all 30 hosts run 2.4"
    g.start("2.5", hosts(30))
    assert g.release["previous_version"] == "2.4"
    assert all(e["version"] == "2.4" for e in g.release["hosts"].values())


def test_single_member_group_rolls_and_completes():
    g = Group()
    g.to_rolling("1.0", [LEADER], canary=True)
    assert g.release["batches"] == [[LEADER]]
    g.install(LEADER)
    assert g.release["state"] == CURRENT and g.state["current_version"] == "1.0"


def test_install_reports_that_do_not_match_the_open_batch_are_rejected():
    g = Group()
    g.to_rolling("2.4", hosts(30))
    batch0 = g.release["batches"][0]
    g.install("h20", expect="invalid")  # not in the open batch
    g.install("h99", expect="invalid")  # not a member
    g.install(batch0[0])
    g.install(batch0[0], expect="invalid")  # reported twice under two ids
    g.do("host_done", "invalid", release=g.rid, host=batch0[1], phase="upgrade", ok=True)
    g.do("host_done", "invalid", release=g.rid, host=batch0[1], phase="revert", ok=True)
    for ok in ("false", "true", 0, 1, None, []):  # "false" must not count as success
        g.do("host_done", "invalid", release=g.rid, host=batch0[1], phase="install", ok=ok)
    for host in (None, 5, ["h01"], {"h": 1}):
        g.do("host_done", "invalid", release=g.rid, host=host, phase="install", ok=True)
    assert g.release["hosts"][batch0[1]]["status"] == PENDING and g.release["batch"] == 0


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, CURRENT, ROLLED_BACK, ABORTED])
def test_install_report_outside_rolling_is_rejected(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    g.install("h01", expect="invalid")
    assert g.release == before


def test_failure_in_batch_3_of_10_rolls_back_newest_first():
    g = Group()
    g.release_fully("2.3", hosts(30))
    g.to_rolling("2.4", hosts(30))
    batches = copy.deepcopy(g.release["batches"])
    assert len(batches) == 10
    for _ in range(3):
        g.finish_batch()
    assert g.release["batch"] == 3
    good, bad, untouched = batches[3]
    g.install(good)
    g.install(bad, ok=False, step="preflight", reason="GET /health -> 503")
    r = g.release
    assert r["state"] == ROLLING_BACK and under_way(g.state)
    assert r["failure"] == {"host": bad, "step": "preflight", "reason": "GET /health -> 503"}
    assert r["rollback"] == [batches[3], batches[2], batches[1], batches[0]]
    reverting = {h for b in batches[:4] for h in b}
    for h, e in r["hosts"].items():
        assert e["status"] == (REVERT if h in reverting else SKIPPED), h
    assert r["hosts"][bad]["step"] == "preflight" and r["hosts"][bad]["detail"] == "GET /health -> 503"
    assert r["hosts"][untouched]["version"] == "2.3" and r["hosts"][good]["version"] == "2.4"
    assert g.state["current_version"] == "2.3"
    # revert, newest batch first; a host of an older batch cannot go ahead of its turn
    g.revert(batches[0][0], expect="invalid")
    g.install(untouched, expect="invalid")  # late install report after the rollback began
    for index in (3, 2, 1, 0):
        assert fsm.open_batch_hosts(g.state) == batches[index]
        for h in batches[index]:
            assert g.release["state"] == ROLLING_BACK
            g.revert(h)
            assert g.release["hosts"][h]["status"] == REVERTED and g.release["hosts"][h]["version"] == "2.3"
        g.revert(batches[index][0], expect="invalid")  # already reverted
    r = g.release
    assert r["state"] == ROLLED_BACK and not under_way(g.state) and r["rollback"] == []
    assert r["failure"] == {"host": bad, "step": "preflight", "reason": "GET /health -> 503"}
    assert all(e["version"] == "2.3" for e in r["hosts"].values())
    assert g.state["current_version"] == "2.3" and g.state["highest_version"] == "2.3"
    assert g.state["history"][-1]["detail"] == "group back on 2.3"
    assert fsm.open_batch_hosts(g.state) == []


def test_failure_in_first_batch_reverts_only_that_batch():
    g = Group()
    g.to_rolling("2.4", hosts(10), canary=True)
    g.install("h01", ok=False)
    assert g.release["rollback"] == [["h01"]]
    g.revert("h01")
    assert g.release["state"] == ROLLED_BACK
    assert g.release["hosts"]["h01"]["version"] is None  # first release: previous version is None


def test_revert_failure_is_recorded_and_rollback_continues():
    g = Group()
    g.goto(ROLLING_BACK, hosts(10))
    rollback = copy.deepcopy(g.release["rollback"])
    assert rollback == [["h02"], ["h01"]]
    g.revert("h02", ok=False)
    assert g.release["hosts"]["h02"]["status"] == REVERT_FAILED
    assert g.release["hosts"]["h02"]["detail"] == "restart failed"
    assert fsm.open_batch_hosts(g.state) == ["h01"]
    g.revert("h01")
    assert g.release["state"] == ROLLED_BACK
    assert g.release["hosts"]["h01"]["version"] == "2.3"
    # the host that failed to go back (it had not been updated: it failed its install) keeps its version
    assert g.release["hosts"]["h02"]["version"] in ("2.3", "2.4")


def test_revert_timeout_gives_up_on_the_open_rollback_batch():
    g = Group()
    g.release_fully("2.3", hosts(30))
    g.to_rolling("2.4", hosts(30))
    batches = copy.deepcopy(g.release["batches"])
    g.finish_batch()
    g.install(batches[1][0], ok=False)
    assert g.release["rollback"] == [batches[1], batches[0]]
    g.revert(batches[1][0])
    g.do("revert_timeout", release=g.rid, reason="revert deadline 300s passed")
    for h in batches[1][1:]:
        e = g.release["hosts"][h]
        assert e["status"] == REVERT_FAILED and e["step"] == "deadline" and e["detail"] == "revert deadline 300s passed"
    assert g.release["hosts"][batches[1][0]]["status"] == REVERTED
    assert g.release["state"] == ROLLING_BACK and fsm.open_batch_hosts(g.state) == batches[0]
    g.do("revert_timeout", "invalid", release=g.rid)  # reason is required
    g.do("revert_timeout", release=g.rid, reason="deadline")
    assert g.release["state"] == ROLLED_BACK
    assert all(g.release["hosts"][h]["status"] == REVERT_FAILED for h in batches[0])
    for e in g.release["hosts"].values():
        assert e["version"] in ("2.3", "2.4")
    g.do("revert_timeout", "invalid", release=g.rid, reason="late")


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, PAUSED, CURRENT, ABORTED])
def test_revert_timeout_outside_rollback_is_rejected(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    g.do("revert_timeout", "invalid", release=g.rid, reason="deadline")
    assert g.release == before


@pytest.mark.parametrize("where,step", [(RUNNING_OLD, "download"), (DOWNLOADED, "verify"),
                                        (VERIFIED, "open_batch"), (PAUSED, "download")])
def test_failure_before_rolling_rolls_back_immediately(where, step):
    g = Group()
    g.goto(where)
    g.fail(step=step, reason=f"{step} failed")
    r = g.release
    assert r["state"] == ROLLED_BACK and r["rollback"] == [] and r["paused_from"] is None
    assert r["failure"] == {"host": LEADER, "step": step, "reason": f"{step} failed"}
    assert all(e["status"] == SKIPPED and e["version"] == "2.3" for e in r["hosts"].values())
    assert g.state["current_version"] == "2.3"


def test_leader_observed_failure_while_rolling_reverts_touched_batches():
    g = Group()
    g.goto(ROLLING)
    g.finish_batch()
    g.fail(host="h02", step="deadline", reason="h02 did not report within 300s")
    r = g.release
    assert r["state"] == ROLLING_BACK and r["rollback"] == [["h02"], ["h01"]]
    assert r["hosts"]["h02"]["status"] == REVERT and r["hosts"]["h03"]["status"] == SKIPPED


@pytest.mark.parametrize("where", [CURRENT, ROLLING_BACK, ROLLED_BACK, ABORTED])
def test_fail_outside_forward_states_is_rejected(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    g.fail(expect="invalid")
    assert g.release == before


def test_fail_with_missing_fields_is_rejected():
    g = Group()
    g.goto(ROLLING)
    for missing in ("host", "step", "reason"):
        g.do("fail", "invalid", release=g.rid, **{k: "x" for k in ("host", "step", "reason") if k != missing})
    assert g.release["state"] == ROLLING


# ---------------------------------------------------------------------------------------------
# pause / resume


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING])
def test_pause_and_resume_in_each_forward_state(where):
    g = Group()
    g.goto(where)
    batch = g.release["batch"]
    g.do("pause")
    assert g.release["state"] == PAUSED and g.release["paused_from"] == where and under_way(g.state)
    assert fsm.open_batch_hosts(g.state) == []
    assert g.do("pause", "noop").ok
    g.do("resume")
    assert g.release["state"] == where and g.release["paused_from"] is None and g.release["batch"] == batch
    assert g.do("resume", "noop").ok


def test_paused_rolling_records_results_but_advances_only_on_resume():
    g = Group()
    g.to_rolling("2.4", hosts(30))
    batches = copy.deepcopy(g.release["batches"])
    g.do("pause")
    for h in batches[0]:
        g.install(h)
        assert g.release["hosts"][h]["status"] == UPDATED and g.release["hosts"][h]["version"] == "2.4"
    assert g.release["batch"] == 0 and g.release["state"] == PAUSED
    g.install(batches[1][0], expect="invalid")  # next batch not open while paused
    g.do("resume")
    assert g.release["state"] == ROLLING and g.release["batch"] == 1
    assert fsm.open_batch_hosts(g.state) == batches[1]


def test_resume_after_last_batch_completes_the_release():
    g = Group()
    g.to_rolling("2.4", hosts(3))
    g.install("h01")
    g.install("h02")
    g.do("pause")
    g.install(LEADER)
    assert g.release["state"] == PAUSED and g.state["current_version"] is None
    g.do("resume")
    assert g.release["state"] == CURRENT and g.state["current_version"] == "2.4"


def test_install_failure_while_paused_rolls_back():
    g = Group()
    g.to_rolling("2.4", hosts(10))
    g.do("pause")
    g.install("h01", ok=False)
    assert g.release["state"] == ROLLING_BACK and g.release["paused_from"] is None
    g.do("resume", "conflict")
    g.revert("h01")
    assert g.release["state"] == ROLLED_BACK


def test_leader_steps_wait_while_paused():
    g = Group()
    g.start()
    g.do("pause")
    g.downloaded(expect="invalid")
    g.do("resume")
    g.downloaded()
    g.do("pause")
    g.verified(expect="invalid")
    assert g.release["state"] == PAUSED and g.release["paused_from"] == DOWNLOADED


@pytest.mark.parametrize("where", [ROLLING_BACK, CURRENT, ROLLED_BACK, ABORTED])
def test_pause_and_resume_rejected_outside_forward_states(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    g.do("pause", "conflict")
    g.do("resume", "conflict")
    assert g.release == before


def test_operator_commands_without_release():
    g = Group()
    for op in ("pause", "resume", "abort"):
        g.do(op, "invalid")
    g.do("retry", "conflict")
    assert g.state["release"] is None and len(g.state["rejected"]) == 4


# ---------------------------------------------------------------------------------------------
# abort / retry


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, PAUSED, ROLLING_BACK, ROLLED_BACK])
def test_abort_from_each_non_current_state(where):
    g = Group()
    g.goto(where)
    rid = g.rid
    g.do("abort", reason="operator changed their mind")
    assert g.release["state"] == ABORTED and g.rid == rid and not under_way(g.state)
    assert g.state["history"][-1]["detail"] == "operator changed their mind"
    assert g.state["history"][-1]["from"] == where
    assert fsm.open_batch_hosts(g.state) == []
    assert g.do("abort", "noop").ok
    for e in g.release["hosts"].values():
        assert e["version"] in ("2.3", "2.4")
    g.start("2.5")  # the slot is free again
    assert g.release["state"] == RUNNING_OLD


def test_abort_current_release_conflicts():
    g = Group()
    g.goto(CURRENT)
    before = copy.deepcopy(g.release)
    g.do("abort", "conflict")
    assert g.release == before


def test_retry_from_rolled_back_creates_new_attempt():
    g = Group()
    g.goto(ROLLED_BACK, hosts(10))
    old = copy.deepcopy(g.release)
    g.do("retry")
    r = g.release
    assert r["id"] != old["id"] and r["attempt"] == 2 and r["version"] == "2.4" and r["state"] == RUNNING_OLD
    assert r["members"] == old["members"] and r["batch_fraction"] == old["batch_fraction"]
    assert r["canary"] == old["canary"] and r["allow_downgrade"] == old["allow_downgrade"]
    assert r["previous_version"] == "2.3" and r["failure"] is None and r["batch"] is None
    assert all(e["status"] == PENDING and e["version"] == "2.3" for e in r["hosts"].values())
    # the old attempt's id is dead
    g.do("downloaded", "invalid", release=old["id"], artifact=dict(ARTIFACT))
    g.do("host_done", "invalid", release=old["id"], host="h01", phase="revert", ok=True)
    g.downloaded()
    g.fail(step="verify", reason="bad signature")
    assert g.release["state"] == ROLLED_BACK
    second = g.rid
    g.do("retry")
    assert g.release["attempt"] == 3 and g.rid not in (old["id"], second)


def test_retry_keeps_allow_downgrade():
    g = Group()
    g.release_fully("3.0", hosts(3))
    g.start("2.0", hosts(3), allow_downgrade=True)
    g.fail()
    g.do("retry")
    assert g.release["allow_downgrade"] is True and g.release["version"] == "2.0"


@pytest.mark.parametrize("where", [RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, PAUSED, ROLLING_BACK, CURRENT, ABORTED])
def test_retry_only_from_rolled_back(where):
    g = Group()
    g.goto(where)
    before = copy.deepcopy(g.release)
    g.do("retry", "conflict")
    assert g.release == before


# ---------------------------------------------------------------------------------------------
# fencing, duplicates, old release ids


@pytest.mark.parametrize("step", ["downloaded", "verified", "open_batch", "fail", "revert_timeout"])
def test_stale_leader_term_is_fenced(step):
    g = Group()
    g.term = 5
    g.start(members=hosts(10))
    state_for = {"downloaded": RUNNING_OLD, "verified": DOWNLOADED, "open_batch": VERIFIED, "fail": ROLLING}
    args = {"downloaded": {"artifact": dict(ARTIFACT)}, "fail": {"host": "h01", "step": "s", "reason": "r"},
            "revert_timeout": {"reason": "deadline"}}.get(step, {})
    while g.release["state"] != state_for.get(step, ROLLING_BACK):
        {RUNNING_OLD: g.downloaded, DOWNLOADED: g.verified, VERIFIED: g.open_batch,
         ROLLING: lambda: g.install("h01", ok=False)}[g.release["state"]]()
    before = copy.deepcopy(g.release)
    for term in (4, 0, DROP, None):  # an old leader, or no term at all
        out = g.do(step, "invalid", release=g.rid, term=term, **args)
        assert "stale" in out.reason
        assert g.release == before
    assert g.state["rejected"][-1]["op"] == step and g.state["rejected"][-1]["code"] == "invalid"
    g.do(step, "accepted", release=g.rid, term=6, **args)  # a newer leader takes over
    assert g.release["term"] == 6


def test_new_leader_fences_the_old_one_for_the_rest_of_the_release():
    g = Group()
    g.term = 2
    g.start()
    g.downloaded(term=3, actor="h04")  # leader h04 in term 3
    assert g.release["term"] == 3
    g.verified(term=2, expect="invalid")  # the deposed leader of term 2
    g.verified(term=3)
    g.open_batch(term=2, expect="invalid")
    g.open_batch(term=3)


def test_announced_leader_fences_a_deposed_one_before_it_commits_anything():
    """The deposed leader of term 2 finishes its verify step after h04 announced term 3 (`lead`)
    but before h04 proposed anything for the release: its result is stale all the same."""
    g = Group()
    g.term = 2
    g.start()
    g.downloaded()
    g.do("lead", term=3, actor="h04")
    assert g.state["leader"] == {"node": "h04", "term": 3, "since": g.state["history"][-1]["time"]}
    assert g.state["history"][-1]["detail"] == "h04 leads in term 3"
    out = g.verified(term=2, expect="invalid")
    assert "stale" in out.reason and "term 2 < 3" in out.reason
    assert g.release["state"] == DOWNLOADED
    g.verified(term=3, actor="h04")
    assert g.release["state"] == VERIFIED


def test_lead_is_announced_once_per_term_and_never_goes_back():
    g = Group()
    g.do("lead", term=4, actor="h01")
    g.do("lead", "noop", term=4, actor="h01")
    g.do("lead", "invalid", term=3, actor="h02")
    assert g.state["leader_term"] == 4 and g.state["leader"]["node"] == "h01"
    g.do("lead", "invalid", term=5, actor="")
    g.do("lead", term=5, actor="h02")
    assert [e["detail"] for e in g.state["history"]] == ["h01 leads in term 4", "h02 leads in term 5"]


def test_lead_leaves_a_terminal_release_as_it_was():
    g = Group()
    g.release_fully()
    before = copy.deepcopy(g.release)
    g.do("lead", term=9, actor="h03")
    assert g.release == before


def test_start_is_refused_while_a_member_is_unreachable():
    g = Group()
    g.do("liveness", unreachable={"h03": 1234.5})
    assert g.state["unreachable"] == {"h03": 1234.5}
    assert g.state["history"][-1]["detail"] == "unreachable: h03"
    out = g.start(members=hosts(5), expect="conflict")
    assert "h03" in out.reason and "allow_unreachable" in out.reason
    assert g.state["release"] is None
    g.do("liveness", unreachable={})
    assert g.state["history"][-1]["detail"] == "reachable again: h03"
    g.start(members=hosts(5))
    assert g.release["excluded"] == [] and g.release["members"] == hosts(5)


def test_allow_unreachable_releases_to_the_other_members_only():
    g = Group()
    g.do("liveness", unreachable={"h01": None, "h03": 10.0})
    g.start(members=hosts(5), allow_unreachable=True)
    assert g.release["members"] == ["h00", "h02", "h04"]
    assert g.release["excluded"] == ["h01", "h03"]
    assert set(g.release["hosts"]) == {"h00", "h02", "h04"}
    assert g.state["history"][-1]["detail"] == "start 2.4 without unreachable h01, h03"
    g.downloaded()
    g.verified()
    g.open_batch()
    while g.release["state"] == ROLLING:
        g.finish_batch()
    assert g.release["state"] == CURRENT and g.state["current_version"] == "2.4"


def test_every_member_unreachable_starts_nothing():
    g = Group()
    g.do("liveness", unreachable={h: None for h in hosts(2)})
    g.start(members=hosts(2), allow_unreachable=True, expect="conflict")
    assert g.state["release"] is None


def test_retry_keeps_the_members_left_out():
    g = Group()
    g.do("liveness", unreachable={"h01": None})
    g.start(members=hosts(3), allow_unreachable=True)
    g.fail()
    assert g.release["state"] == ROLLED_BACK
    g.do("retry")
    assert g.release["attempt"] == 2 and g.release["excluded"] == ["h01"] and "h01" not in g.release["hosts"]


@pytest.mark.parametrize("unreachable", [["h01"], {"h01": "yesterday"}, {"": 1.0}, {"h01": float("inf")},
                                         {"h01": True}, {f"h{i}": None for i in range(1001)}])
def test_malformed_liveness_is_rejected(unreachable):
    g = Group()
    g.do("liveness", "invalid", unreachable=unreachable)
    assert g.state["unreachable"] == {}


def test_stale_liveness_is_fenced():
    g = Group()
    g.do("lead", term=5, actor="h01")
    g.do("liveness", "invalid", term=4, unreachable={"h02": None})
    assert g.state["unreachable"] == {}


def member(n: int) -> dict:
    return {"id": f"h{n:02d}", "address": f"10.0.0.{n}:7100", "api_url": f"http://10.0.0.{n}:7200"}


def seeded(n: int = 3) -> Group:
    g = Group()
    g.do("lead", term=1, actor="h00", members={m["id"]: {k: m[k] for k in ("address", "api_url")}
                                               for m in map(member, range(n))})
    return g


def test_the_first_leader_seeds_the_membership_from_its_config():
    g = seeded(3)
    assert sorted(g.state["members"]) == ["h00", "h01", "h02"]
    assert {rec["status"] for rec in g.state["members"].values()} == {"active"}
    g.do("lead", term=2, actor="h01", members={"zz": {"address": "1.2.3.4:1", "api_url": "http://x"}})
    assert "zz" not in g.state["members"], "a later leader's config never overrides the replicated membership"


def test_a_joining_member_holds_the_first_batch_until_it_runs_the_current_version():
    g = seeded(3)
    g.release_fully("2.4", members=hosts(3))
    g.do("member_add", member=member(3))
    assert g.state["members"]["h03"]["status"] == "joining"
    assert g.state["history"][-1]["detail"] == "h03 joins at 10.0.0.3:7100"
    g.start("2.5", members=hosts(4))
    g.downloaded()
    g.verified()
    out = g.open_batch(expect="conflict")
    assert "waiting for h03" in out.reason and g.release["state"] == VERIFIED
    g.do("member_ready", "invalid", host="h03", version="2.3", actor="h03")  # not what the group runs
    g.do("member_ready", host="h03", version="2.4", actor="h03")
    assert g.state["members"]["h03"]["status"] == "active"
    g.open_batch()
    assert g.release["state"] == ROLLING


def test_membership_changes_wait_for_the_release_and_go_one_at_a_time():
    g = seeded(3)
    g.start(members=hosts(3))
    out = g.do("member_add", "conflict", member=member(3))
    assert "in progress" in out.reason and "h03" not in g.state["members"]
    g.do("member_remove", "conflict", member="h01")
    g.do("abort")
    g.do("member_add", member=member(3))
    out = g.do("member_add", "conflict", member=member(4))
    assert "h03 is still joining" in out.reason
    g.do("member_add", "noop", member=member(3))
    g.do("member_remove", "conflict", member="h01")


def test_a_member_is_removed_in_two_steps_and_its_liveness_forgotten():
    g = seeded(3)
    g.do("liveness", unreachable={"h02": 5.0})
    g.do("member_remove", member="h02")
    assert g.state["members"]["h02"]["status"] == "leaving"
    g.start(members=["h00", "h01"], expect="conflict")  # a removal in progress
    g.do("member_removed", "invalid", member="h02", term=0)  # a stale leader
    g.do("member_removed", member="h02")
    assert "h02" not in g.state["members"] and g.state["unreachable"] == {}
    g.do("member_remove", "noop", member="h02")
    g.start(members=["h00", "h01"])


@pytest.mark.parametrize("bad", [None, {"id": "h09"}, {"id": "../x", "address": "1:2", "api_url": "http://x"},
                                 {"id": "h09", "address": "nocolon", "api_url": "http://x"},
                                 {"id": "h09", "address": "1.2.3.4:5", "api_url": "ftp://x"}])
def test_malformed_member_is_rejected(bad):
    g = seeded(2)
    g.do("member_add", "invalid", member=bad)
    assert sorted(g.state["members"]) == ["h00", "h01"]


def test_address_clash_and_last_member():
    g = seeded(2)
    g.do("member_add", "conflict", member={**member(5), "address": "10.0.0.1:7100"})
    g.do("member_remove", member="h01")
    g.do("member_removed", member="h01")
    g.do("member_remove", "conflict", member="h00")


def test_a_current_release_records_the_artifact_joining_members_install():
    g = seeded(2)
    g.release_fully("2.4", members=hosts(2))
    assert g.state["current_artifact"]["sha256"] == ARTIFACT["sha256"]
    assert g.state["current_artifact"]["version"] == "2.4"


def test_reform_keeps_the_survivors_aborts_the_release_and_restarts_the_fence():
    g = seeded(3)
    g.release_fully("2.4", members=hosts(3))
    g.start("2.5", members=hosts(3))
    g.do("liveness", unreachable={"h01": 1.0, "h02": 2.0})
    before = copy.deepcopy(g.state)
    new = fsm.reform(g.state, ["h00"], time=99.0, actor="h00")
    assert g.state == before, "reform is pure"
    assert list(new["members"]) == ["h00"] and new["members"]["h00"]["status"] == "active"
    assert new["unreachable"] == {} and new["leader_term"] == 0 and new["leader"] is None
    assert new["release"]["state"] == ABORTED and new["current_version"] == "2.4"
    assert [e["detail"] for e in new["history"][-2:]] == [
        "aborted: the group was re-formed from its survivors", "re-formed from h00 (the others lost for good)"]
    later, outcome = fsm.apply(new, {"op": "lead", "id": "x", "term": 1, "actor": "h00", "time": 100.0})
    assert outcome.code == "accepted", "the new cluster's first leader (term 1) is not fenced by the old terms"
    json.dumps(later)


def test_reform_forgets_the_old_clusters_operation_ids():
    """Raft terms restart at 1 in a re-formed group, and leader operation ids carry the term
    (`lead:1:h00`): an id the old cluster applied must not make the new leader's a duplicate,
    or it never takes the lead (seen: 1,100 announcements a minute, a release that never moved)."""
    g = Group()
    seed = {m["id"]: {k: m[k] for k in ("address", "api_url")} for m in map(member, range(3))}
    g.raw({"op": "lead", "id": "lead:1:h00", "term": 1, "actor": "h00", "time": 1.0, "members": seed}, "accepted")
    g.raw({"op": "lead", "id": "lead:4:h00", "term": 4, "actor": "h00", "time": 2.0}, "accepted")
    new = fsm.reform(g.state, ["h00"], time=99.0, actor="h00")
    assert new["applied"] == []
    later, outcome = fsm.apply(new, {"op": "lead", "id": "lead:1:h00", "term": 1, "actor": "h00", "time": 100.0})
    assert outcome.code == "accepted" and later["leader"]["node"] == "h00" and later["leader_term"] == 1


def test_reform_refuses_strangers():
    g = seeded(2)
    with pytest.raises(ValueError, match="h07"):
        fsm.reform(g.state, ["h00", "h07"], time=1.0, actor="h00")
    with pytest.raises(ValueError):
        fsm.reform(g.state, [], time=1.0, actor="h00")


@pytest.mark.parametrize("term", ["7", 7.0, 7.5, True, -1, float("inf"), float("nan"), [7], {"t": 7}])
def test_malformed_term_is_rejected(term):
    g = Group()
    g.start()
    g.downloaded(term=term, expect="invalid")
    assert g.release["state"] == RUNNING_OLD
    g2 = Group()
    g2.start(term=term, expect="invalid")
    assert g2.state["release"] is None


def test_duplicate_operation_id_is_a_noop():
    g = Group()
    start = g.cmd("start", version="2.4", members=hosts(3))
    g.raw(start, "accepted")
    snapshot = copy.deepcopy(g.state)
    new, out = fsm.apply(g.state, start)
    assert out.code == "duplicate" and out.ok and new == snapshot
    g.downloaded()
    g.verified()
    # the same id again much later, and even with other contents, changes nothing
    again = dict(start, version="9.9")
    before = copy.deepcopy(g.state)
    assert g.raw(again).code == "duplicate"
    assert g.state == before
    # a rejected command's id is NOT spent: once the state allows it, the same operation runs
    # (a step proposed too early by a deposed leader must still be possible for the new one)
    early = g.cmd("open_batch", release=g.rid)
    g.state["release"]["state"] = DOWNLOADED  # not verified yet: open_batch is invalid
    g.raw(early, "invalid")
    assert early["id"] not in g.state["applied"]
    g.state["release"]["state"] = VERIFIED
    assert g.raw(early).code == "accepted"


def test_duplicate_install_report_does_not_advance_twice():
    g = Group()
    g.to_rolling("2.4", hosts(3))
    report = g.cmd("host_done", release=g.rid, host="h01", phase="install", ok=True)
    g.raw(report, "accepted")
    assert g.release["batch"] == 1
    g.raw(report, "duplicate")
    assert g.release["batch"] == 1 and g.release["hosts"]["h02"]["status"] == PENDING


def test_commands_without_id_are_not_deduplicated():
    g = Group()
    g.to_rolling("2.4", hosts(3))
    applied = list(g.state["applied"])
    for _ in range(2):
        g.do("pause", id=DROP)
        g.do("resume", id=None)
    assert g.release["state"] == ROLLING and g.state["applied"] == applied


@pytest.mark.parametrize("rid", ["2.4#0", "2.4#2", "", None, DROP, 1, ["2.4#1"]])
def test_commands_for_another_release_id_are_rejected(rid):
    g = Group()
    g.to_rolling("2.4", hosts(3))
    before = copy.deepcopy(g.release)
    assert g.rid == "2.4#1"
    g.do("host_done", "invalid", release=rid, host="h01", phase="install", ok=True)
    g.do("fail", "invalid", release=rid, host="h01", step="s", reason="r")
    g.do("revert_timeout", "invalid", release=rid, reason="r")
    assert g.release == before


def test_leader_commands_for_the_previous_release_are_rejected():
    g = Group()
    g.release_fully("2.3", hosts(3))
    old = g.rid
    g.start("2.4", hosts(3))
    for op, args in (("downloaded", {"artifact": dict(ARTIFACT)}), ("verified", {}), ("open_batch", {}),
                     ("fail", {"host": "h", "step": "s", "reason": "r"})):
        g.do(op, "invalid", release=old, **args)
    g.do("host_done", "invalid", release=old, host="h01", phase="install", ok=True)
    assert g.release["state"] == RUNNING_OLD


# ---------------------------------------------------------------------------------------------
# malformed commands and totality


class Weird:
    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    __hash__ = object.__hash__


def deep(n: int):
    value: list = []
    for _ in range(n):
        value = [value]
    return value


NOT_A_COMMAND = [None, 0, 1.5, "start", b"start", ["op", "start"], ("op", "start"), {"op"}, {}, {"id": "x"},
                 {"op": None}, {"op": 5}, {"op": ["start"]}, {"op": b"start"}, Weird()]


@pytest.mark.parametrize("cmd", NOT_A_COMMAND, ids=[type(c).__name__ + str(i) for i, c in enumerate(NOT_A_COMMAND)])
def test_not_a_command_is_rejected_and_recorded(cmd):
    g = Group()
    g.goto(ROLLING)
    before = copy.deepcopy(g.state)
    out = g.raw(cmd, "invalid")
    assert not out.ok
    assert g.state["release"] == before["release"] and g.state["history"] == before["history"]
    assert len(g.state["rejected"]) == len(before["rejected"]) + 1
    assert g.state["rejected"][-1]["code"] == "invalid" and g.state["seq"] == before["seq"] + 1


@pytest.mark.parametrize("op", ["", "START", "rollback", "apply", "__init__", "_start", "host_done ", "x" * 1000])
def test_unknown_op_is_rejected(op):
    g = Group()
    out = g.do(op, "invalid")
    assert "unknown op" in out.reason and g.state["rejected"][-1]["op"] == op


REQUIRED = {
    "start": {"version": "2.5", "members": hosts(3)},
    "downloaded": {"artifact": dict(ARTIFACT)},
    "fail": {"host": "h01", "step": "s", "reason": "r"},
    "host_done": {"host": "h01", "phase": "install", "ok": True},
    "revert_timeout": {"reason": "r"},
}


@pytest.mark.parametrize("op,missing", [(op, k) for op, args in REQUIRED.items() for k in args])
def test_missing_required_field_is_rejected(op, missing):
    g = Group()
    where = {"start": RUNNING_OLD, "downloaded": RUNNING_OLD, "fail": ROLLING, "host_done": ROLLING,
             "revert_timeout": ROLLING_BACK}[op]
    if op == "start":
        g.release_fully("2.4", hosts(3))
    else:
        g.goto(where, hosts(3))
    args = {k: v for k, v in REQUIRED[op].items() if k != missing}
    if op == "host_done" and where == ROLLING:
        args["host"] = fsm.open_batch_hosts(g.state)[0] if missing != "host" else DROP
    before = copy.deepcopy(g.state)
    g.do(op, "invalid", release=g.rid, **args)
    assert g.state["release"] == before["release"]
    assert g.state["rejected"][-1]["op"] == op


NON_PLAIN = {"bytes": b"bytes", "set": {1, 2}, "object": object(), "weird": Weird(), "deep": deep(50),
             "int-key": {1: "int key"}, "deep-inside": {"k": [{"k": deep(20)}]}, "complex": complex(1, 2),
             "range": range(3)}


@pytest.mark.parametrize("value", list(NON_PLAIN.values()), ids=list(NON_PLAIN))
@pytest.mark.parametrize("field", ["reason", "time", "id", "actor", "term", "step"])
def test_non_plain_values_are_rejected_and_state_stays_usable(field, value):
    # A deeply nested value stored once made every later apply() raise RecursionError in deepcopy:
    # the whole group (every replica, on every replay) was bricked.
    g = Group()
    g.goto(ROLLING)
    host = fsm.open_batch_hosts(g.state)[0]
    cmd = g.cmd("host_done", release=g.rid, host=host, phase="install", ok=False, step="s", reason="r")
    cmd[field] = value
    before = copy.deepcopy(g.state)
    g.raw(cmd, "invalid")
    assert g.state["release"] == before["release"]
    json.dumps(g.state)
    g.install(host)  # the group still works
    assert g.release["hosts"][host]["status"] == UPDATED


def test_deeply_nested_artifact_does_not_brick_the_group():
    g = Group()
    g.start()
    artifact = dict(ARTIFACT, manifest={"signed": deep(900)})
    g.do("downloaded", "invalid", release=g.rid, artifact=artifact)
    g.downloaded()
    g.do("pause")
    assert g.release["state"] == PAUSED


def test_plausibly_nested_commands_are_accepted():
    g = Group()
    g.start()
    manifest = {"signed": {"name": "app", "version": "2.4", "files": [{"name": "a", "meta": {"x": [1, 2]}}]},
                "signatures": {"key-1": "c2ln"}}
    g.downloaded(artifact=dict(ARTIFACT, manifest=manifest))
    assert g.release["artifact"]["manifest"] == manifest


def test_apply_never_mutates_input_on_any_path():
    g = Group()
    g.to_rolling("2.4", hosts(10))
    commands = [
        g.cmd("host_done", release=g.rid, host="h01", phase="install", ok=True),      # accepted + advance
        g.cmd("start", version="2.4", members=hosts(10)),                           # noop
        g.cmd("start", version="2.5", members=hosts(10)),                           # conflict
        g.cmd("host_done", release=g.rid, host="h05", phase="install", ok=True),      # invalid
        g.cmd("host_done", release=g.rid, host="h02", phase="install", ok=False),     # rollback
        g.cmd("nope"), None, {"op": "start"},                                         # malformed
    ]
    state = g.state
    for c in commands:
        snapshot = copy.deepcopy(state)
        new, _ = fsm.apply(state, c)
        assert state == snapshot and dumps(state) == dumps(snapshot)
        again, _ = fsm.apply(state, c)  # same input, same output
        assert dumps(again) == dumps(new)
        state = new
    dup, out = fsm.apply(state, commands[0])
    assert out.code == "duplicate" and dup == state


def test_history_rejected_and_applied_are_bounded():
    g = Group()
    g.to_rolling("2.4", hosts(3))
    for _ in range(fsm.HISTORY_LIMIT):  # 800 commands, without Group's per-command checks (speed)
        for op, code in (("pause", "accepted"), ("resume", "accepted"), ("open_batch", "invalid"),
                         ("pause", "accepted"), ("resume", "accepted")):
            g.state, out = fsm.apply(g.state, g.cmd(op, release=g.rid))
            assert out.code == code
    assert len(g.state["history"]) == fsm.HISTORY_LIMIT
    assert len(g.state["rejected"]) == fsm.REJECTED_LIMIT
    assert len(g.state["applied"]) == fsm.APPLIED_LIMIT
    seqs = [e["seq"] for e in g.state["history"]]
    assert seqs == sorted(seqs) and seqs[-1] <= g.state["seq"]
    assert g.state["applied"][-1] == f"op-{g.n}"  # newest kept
    assert g.state["history"][-1]["op"] == "resume" and g.state["rejected"][-1]["op"] == "open_batch"
    assert len(g.state["applied"]) == len(set(g.state["applied"]))


def test_rejected_entry_records_who_and_why():
    g = Group()
    g.term = 3
    g.start()
    g.do("verified", "invalid", release=g.rid, actor="h07")
    entry = g.state["rejected"][-1]
    assert entry["op"] == "verified" and entry["actor"] == "h07" and entry["term"] == 3
    assert entry["id"] == f"op-{g.n}" and entry["code"] == "invalid" and entry["reason"]
    assert entry["seq"] == g.state["seq"] and entry["time"] == 1000.0 + g.n


def test_compare_versions():
    assert fsm.compare_versions("2.4", "2.10") < 0
    assert fsm.compare_versions("2.10", "2.4") > 0
    assert fsm.compare_versions("2.4", "2.4") == 0
    assert fsm.compare_versions("1.0.1", "1.0") > 0
    assert fsm.compare_versions("10", "9") > 0
    assert fsm.compare_versions("1.a", "1.2") > 0  # text sorts after numbers, never a TypeError


# ---------------------------------------------------------------------------------------------
# autonomous mode: the channel record


def test_initial_channel_record_is_active_with_nothing_failed():
    assert fsm.initial_state("g")["channel"] == {"paused": False, "failed": []}
    old = fsm.initial_state("g")
    del old["channel"]  # a state restored from an agent without autonomous mode
    assert fsm.channel_record(old) == {"paused": False, "failed": []}
    new, outcome = fsm.apply(old, {"op": "channel", "id": "c1", "paused": True})
    assert outcome.code == "accepted" and new["channel"] == {"paused": True, "failed": []}


def test_channel_pause_and_resume_are_recorded_once():
    g = Group()
    g.do("channel", paused=True)
    assert g.state["channel"]["paused"] is True
    entry = g.state["history"][-1]
    assert (entry["op"], entry["detail"], entry["release"]) == ("channel", "channel paused", None)
    g.do("channel", "noop", paused=True)
    g.do("channel", paused=False)
    assert g.state["channel"]["paused"] is False and g.state["history"][-1]["detail"] == "channel resumed"
    g.do("channel", "noop", paused=False)
    for bad in ("true", 1, None):
        g.do("channel", "invalid", paused=bad)
    g.do("channel", "invalid", paused=DROP)


def test_pausing_the_channel_leaves_a_running_release_alone():
    g = Group()
    g.goto(ROLLING)
    before = copy.deepcopy(g.release)
    g.do("channel", paused=True)
    assert g.release == before
    g.finish_batch()
    assert g.release["batch"] == 1


def test_a_start_from_the_channel_is_marked_and_a_start_by_hand_is_not():
    g = Group()
    g.start("2.3", hosts(3))
    assert g.release["channel"] is None and g.state["history"][-1]["detail"] == "start 2.3"
    g.fail()
    g.start("2.4", hosts(3), channel="stable")
    assert g.release["channel"] == "stable" and g.state["history"][-1]["detail"] == "start 2.4 (channel stable)"
    g.fail()
    for bad in ("", "a/b", 3, "x" * 65):
        g.start("2.5", hosts(3), "invalid", channel=bad)


def test_a_paused_channel_starts_nothing_but_a_start_by_hand_still_works():
    g = Group()
    g.do("channel", paused=True)
    out = g.start("2.4", hosts(3), "conflict", channel="stable")
    assert "paused" in out.reason and "channel resume" in out.reason and g.release is None
    g.start("2.4", hosts(3))
    assert g.release["version"] == "2.4"


@pytest.mark.parametrize("ending", [ROLLED_BACK, ABORTED])
def test_a_version_that_rolled_back_or_was_aborted_is_not_started_by_the_channel_again(ending):
    g = Group()
    g.goto(ending)
    assert g.state["channel"]["failed"] == ["2.4"]
    out = g.start("2.4", None, "conflict", channel="stable")
    assert "rolled back or was aborted" in out.reason and "newer version" in out.reason
    assert g.release["state"] == ending
    g.start("2.5", None, channel="stable")  # a newer one is picked up
    assert g.release["version"] == "2.5" and g.release["channel"] == "stable"


def test_the_failed_versions_survive_later_releases_and_stay_bounded():
    g = Group()
    g.goto(ROLLED_BACK, hosts(3))
    g.release_fully("2.3.1", hosts(3))  # the operator releases something else by hand
    g.start("2.4", hosts(3), "conflict", channel="stable")
    g.start("2.4", hosts(3))  # by hand it may be tried again
    g.fail()
    assert g.state["channel"]["failed"] == ["2.4"]
    for n in range(fsm.CHANNEL_FAILED_LIMIT + 5):
        g.start(f"3.{n}", hosts(3))
        g.fail()
    failed = g.state["channel"]["failed"]
    assert len(failed) == fsm.CHANNEL_FAILED_LIMIT and failed[-1] == f"3.{fsm.CHANNEL_FAILED_LIMIT + 4}"


def test_a_channel_start_from_a_deposed_leader_is_fenced():
    g = Group()
    g.term = 4
    g.do("lead", members=DROP)
    g.term = 3
    out = g.start("2.4", hosts(3), "invalid", channel="stable")
    assert "stale" in out.reason and g.release is None
    g.start("2.4", hosts(3))  # an operator's start is not a leader command: no fence
    g.term = 5
    g.fail()
    g.start("2.5", hosts(3), channel="stable")
    assert g.state["leader_term"] == 5 and g.release["term"] == 5


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# property tests


VERSIONS = ["1.0", "1.1", "2.0", "2.10", "0.9", "2.0-rc1", "3.0"]
MEMBER_SETS = [hosts(1), hosts(3), ["a", "b"], hosts(10), hosts(30)]
ACTORS = [LEADER, "h01", "h02", "a", "b"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10), st.integers(), st.just(10 ** 400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=6)
garbage = st.one_of(
    json_values, st.binary(max_size=4), st.sets(st.integers(), max_size=2), st.just(deep(40)),
    st.builds(object), st.just(Weird()), st.tuples(st.integers()),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
)


def maybe(strategy, other=garbage, p_other: int = 1, of: int = 8):
    """Mostly `strategy`, sometimes `other` (one draw in `of`)."""
    return st.integers(0, of - 1).flatmap(lambda i: other if i < p_other else strategy)


class FsmMachine(RuleBasedStateMachine):
    """Random command sequences, plausible and garbage; invariants checked after every step."""

    @initialize()
    def setup(self):
        self.state = fsm.initial_state("intel-az1")
        self.log: list = []
        self.n = 0
        self.term = 1
        self.seen_ids: list = []
        self.release_ids: list = []
        self.max_batch: dict = {}

    # -- building blocks ----------------------------------------------------------------------

    def _release_id(self, data):
        rel = self.state["release"]
        pool = [*self.release_ids, "2.4#1", "nope"]
        if rel is not None:
            return data.draw(maybe(st.just(rel["id"]), st.sampled_from(pool) | garbage, p_other=1, of=6))
        return data.draw(st.sampled_from(pool) | garbage)

    def _id(self, data):
        choice = data.draw(st.integers(0, 19))
        if choice == 0 and self.seen_ids:
            return data.draw(st.sampled_from(self.seen_ids))  # repeat: must be a no-op
        if choice == 1:
            return data.draw(garbage)
        if choice == 2:
            return None
        self.n += 1
        return f"c{self.n}"

    def _term(self, data):
        rel = self.state["release"]
        base = max(self.term, rel["term"] if rel and isinstance(rel["term"], int) else 0)
        return data.draw(maybe(st.sampled_from([base, base, base, base - 1, base + 1, 0]), garbage, of=12))

    def _host(self, data):
        rel = self.state["release"]
        waiting = fsm.open_batch_hosts(self.state)
        members = rel["members"] if rel else hosts(3)
        options = st.sampled_from(waiting) if waiting else st.sampled_from(members)
        return data.draw(maybe(options, st.sampled_from([*members, "zz"]) | garbage, of=6))

    def _args(self, op, data):
        rel = self.state["release"]
        if op == "start":
            args = {"version": data.draw(maybe(st.sampled_from(VERSIONS))),
                    "members": data.draw(maybe(st.sampled_from(MEMBER_SETS))),
                    "batch_fraction": data.draw(maybe(st.sampled_from([0.1, 0.3, 0.5, 1.0]))),
                    "canary": data.draw(maybe(st.booleans())),
                    "allow_downgrade": data.draw(maybe(st.booleans(), of=4))}
            if data.draw(st.integers(0, 2)) == 0:  # the leader starting what the channel names
                args["channel"] = data.draw(maybe(st.sampled_from(["stable", "beta"]), of=6))
        elif op == "channel":
            args = {"paused": data.draw(maybe(st.booleans(), of=6))}
        elif op == "downloaded":
            args = {"release": self._release_id(data), "artifact": data.draw(maybe(st.just(dict(ARTIFACT))))}
        elif op in ("verified", "open_batch"):
            args = {"release": self._release_id(data)}
        elif op == "fail":
            args = {"release": self._release_id(data), "host": self._host(data),
                    "step": data.draw(maybe(st.sampled_from(["download", "verify", "deadline"]))),
                    "reason": data.draw(maybe(st.text(max_size=5)))}
        elif op == "host_done":
            phase = "revert" if rel and rel["state"] == ROLLING_BACK else "install"
            args = {"release": self._release_id(data), "host": self._host(data),
                    "phase": data.draw(maybe(st.just(phase), st.sampled_from(["install", "revert", "x"]) | garbage,
                                             of=6)),
                    "ok": data.draw(maybe(st.sampled_from([True, True, True, False]), of=10)),
                    "step": "done", "reason": data.draw(maybe(st.none()))}
        elif op == "revert_timeout":
            args = {"release": self._release_id(data), "reason": data.draw(maybe(st.just("deadline")))}
        elif op == "abort":
            args = {"reason": data.draw(maybe(st.none()))}
        elif op == "member_add":
            n = data.draw(st.integers(0, 5))
            args = {"member": data.draw(maybe(st.just({"id": f"h{n:02d}", "address": f"10.0.0.{n}:7100",
                                                       "api_url": f"http://10.0.0.{n}:7200"})))}
        elif op in ("member_remove", "member_removed"):
            args = {"member": data.draw(maybe(st.sampled_from(sorted(self.state["members"]) or ["h00"])))}
        elif op == "member_ready":
            args = {"host": data.draw(maybe(st.sampled_from(sorted(self.state["members"]) or ["h00"]))),
                    "version": self.state["current_version"]}
        elif op == "liveness":
            members = rel["members"] if rel else hosts(3)
            args = {"unreachable": data.draw(maybe(st.dictionaries(st.sampled_from(members), st.just(1.0),
                                                                   max_size=2)))}
        else:
            args = {}
        # sometimes drop an argument
        if args and data.draw(st.integers(0, 15)) == 0:
            args.pop(data.draw(st.sampled_from(sorted(args))))
        return args

    def _apply(self, cmd):
        before = self.state
        snapshot = dumps(before)  # cheaper than a deepcopy, and as exact for plain data
        new, outcome = fsm.apply(before, cmd)  # must never raise
        assert isinstance(outcome, fsm.Outcome)
        assert dumps(before) == snapshot, "apply mutated its input"
        self.log.append(cmd)
        self._check_step(before, new, cmd, outcome)
        self.state = new
        if isinstance(cmd, dict) and cmd.get("id") is not None and fsm._plain(cmd.get("id")):
            self.seen_ids.append(cmd["id"])

    # -- rules --------------------------------------------------------------------------------

    @rule(data=st.data())
    def plausible_command(self, data):
        rel = self.state["release"]
        if rel is None:
            op = data.draw(st.sampled_from(["start", "start", "start", *fsm.OPS]))
        else:
            # favour the command that makes progress from the current state
            nxt = {RUNNING_OLD: "downloaded", DOWNLOADED: "verified", VERIFIED: "open_batch", ROLLING: "host_done",
                   ROLLING_BACK: "host_done", PAUSED: "resume", CURRENT: "start", ROLLED_BACK: "retry",
                   ABORTED: "start"}[rel["state"]]
            op = data.draw(st.sampled_from([nxt] * 4 + list(fsm.OPS)))
        cmd = {"op": op, "id": self._id(data), "term": self._term(data), "time": float(self.n),
               "actor": data.draw(maybe(st.sampled_from(ACTORS), of=10)), **self._args(op, data)}
        if data.draw(st.integers(0, 9)) == 0:
            cmd.pop(data.draw(st.sampled_from(["id", "term", "time", "actor"])))
        self._apply(cmd)

    @rule(data=st.data())
    def garbage_command(self, data):
        kind = data.draw(st.integers(0, 3))
        if kind == 0:
            cmd = data.draw(garbage)
        elif kind == 1:
            cmd = {"op": data.draw(st.sampled_from(fsm.OPS) | st.text(max_size=6) | garbage)}
            cmd.update(data.draw(st.dictionaries(
                st.sampled_from(["id", "term", "time", "actor", "release", "host", "phase", "ok", "version",
                                 "members", "artifact", "reason", "step", "batch_fraction", "canary", "channel",
                                 "paused"]),
                garbage, max_size=5)))
        else:
            op = data.draw(st.sampled_from(fsm.OPS))
            cmd = {"op": op, "id": self._id(data), "term": self._term(data), "time": 1.0, "actor": LEADER,
                   **self._args(op, data)}
            key = data.draw(st.sampled_from(sorted(cmd)))
            cmd[key] = data.draw(garbage)
        self._apply(cmd)

    @rule(data=st.data())
    def progress(self, data):
        """The clean command that moves the current release on (mostly successes)."""
        rel = self.state["release"]
        self.n += 1
        cmd = {"id": f"p{self.n}", "term": max(self.term, rel["term"] if rel else 0), "time": float(self.n),
               "actor": data.draw(st.sampled_from(rel["members"] if rel else [LEADER]))}
        waiting = fsm.open_batch_hosts(self.state)
        if rel is None or rel["state"] in (CURRENT, ABORTED):
            cmd.update(op="start", version=data.draw(st.sampled_from(VERSIONS)),
                       members=data.draw(st.sampled_from(MEMBER_SETS[:4])),
                       batch_fraction=data.draw(st.sampled_from([0.1, 0.5, 1.0])), canary=data.draw(st.booleans()),
                       allow_downgrade=data.draw(st.booleans()))
            if data.draw(st.booleans()):
                cmd["channel"] = "stable"
            if data.draw(st.booleans()):  # a failure budget, a bake time, a window
                cmd.update(max_failures=data.draw(st.integers(0, 2)), bake_time=data.draw(st.sampled_from([0, 5])),
                           windows=data.draw(st.sampled_from([[], [WINDOW]])))
        elif rel["state"] == ROLLED_BACK:
            cmd.update(op="retry")
        elif rel["state"] == PAUSED:
            cmd.update(op="resume")
        elif rel["state"] in (RUNNING_OLD, DOWNLOADED, VERIFIED):
            op = {RUNNING_OLD: "downloaded", DOWNLOADED: "verified", VERIFIED: "open_batch"}[rel["state"]]
            if data.draw(st.integers(0, 19)) == 0:
                cmd.update(op="fail", host=cmd["actor"], step=op, reason="failed")
            else:
                cmd.update(op=op, artifact=dict(ARTIFACT))
            cmd["release"] = rel["id"]
        elif rel["state"] == ROLLING_BACK and data.draw(st.integers(0, 9)) == 0:
            cmd.update(op="revert_timeout", release=rel["id"], reason="deadline")
        elif not waiting and rel["state"] == ROLLING and rel["gate"]:  # the leader between batches
            op = data.draw(st.sampled_from(["hold", "recheck", "next_batch"]))
            cmd.update(op=op, release=rel["id"], reason="bake", until=float(self.n), text="baking")
        else:
            host = data.draw(st.sampled_from(waiting))
            cmd.update(op="host_done", release=rel["id"], host=host, phase=fsm.host_task(self.state, host),
                       ok=data.draw(st.integers(0, 9)) > 0, step="done")
        self._apply(cmd)

    @rule()
    def leader_change(self):
        self.term += 1

    @rule(paused=st.booleans())
    def operator_channel(self, paused):
        self.n += 1
        self._apply({"op": "channel", "id": f"ch{self.n}", "term": self.term, "time": float(self.n),
                     "actor": LEADER, "paused": paused})

    @rule(data=st.data())
    def replay_old_command(self, data):
        if self.log:
            self._apply(data.draw(st.sampled_from(self.log)))

    # -- per-step checks ----------------------------------------------------------------------

    def _check_step(self, old, new, cmd, outcome):
        assert outcome.code in ("accepted", "noop", "conflict", "invalid", "duplicate")
        json.dumps(new)
        old_rel, new_rel = old["release"], new["release"]
        op = cmd.get("op") if isinstance(cmd, dict) and isinstance(cmd.get("op"), str) else None
        if outcome.code == "duplicate":
            assert dumps(new) == dumps(old)
        if outcome.code in ("conflict", "invalid", "duplicate", "noop"):
            # nothing but the bookkeeping moves
            assert dumps(new_rel) == dumps(old_rel)
            assert new["history"] == old["history"] or dumps(new["history"]) == dumps(old["history"])
            assert (new["current_version"], new["highest_version"]) == (old["current_version"], old["highest_version"])
        if outcome.code in ("conflict", "invalid"):
            assert new["rejected"][-1]["code"] == outcome.code and new["seq"] == old["seq"] + 1
        # at most one active release; a start while one is active never replaces it
        if old_rel is not None and under_way(old):
            assert new_rel is not None and new_rel["id"] == old_rel["id"]
        if old_rel is not None and new_rel is not None and new_rel["id"] != old_rel["id"]:
            assert outcome.code == "accepted" and op in ("start", "retry")
            assert old_rel["state"] in fsm.TERMINAL
            assert new_rel["id"] not in self.release_ids
            if op == "retry":
                assert old_rel["state"] == ROLLED_BACK and new_rel["attempt"] == old_rel["attempt"] + 1
                assert new_rel["version"] == old_rel["version"]
        if new_rel is not None and new_rel["id"] not in self.release_ids:
            self.release_ids.append(new_rel["id"])
        # a terminal release changes only through start (new release), retry or abort
        if old_rel is not None and old_rel["state"] in fsm.TERMINAL:
            if not (outcome.code == "accepted" and op in ("start", "retry", "abort")):
                assert dumps(new_rel) == dumps(old_rel)
            if outcome.code == "accepted" and op == "abort":
                assert old_rel["state"] == ROLLED_BACK and new_rel["state"] == ABORTED
        # the batch index never goes back within one release
        if new_rel is not None:
            last = self.max_batch.get(new_rel["id"], -1)
            batch = new_rel["batch"]
            if last >= 0:
                assert batch is not None
            assert (batch if batch is not None else -1) >= last
            self.max_batch[new_rel["id"]] = batch if batch is not None else -1
        # leader commands are fenced: none from an older term than the group has seen is accepted
        if op in ("downloaded", "verified", "open_batch", "fail", "revert_timeout", "hold", "recheck", "next_batch") \
                and outcome.code == "accepted":
            term = 0 if cmd.get("term") is None else cmd["term"]
            assert type(term) is int and term >= old_rel["term"] and new_rel["term"] == term
        if op in ("downloaded", "verified", "open_batch", "fail", "revert_timeout", "lead", "liveness", "hold",
                  "recheck", "next_batch") \
                and outcome.code == "accepted":
            term = 0 if cmd.get("term") is None else cmd["term"]
            assert term >= old["leader_term"] and new["leader_term"] == term
        assert new["leader_term"] >= old["leader_term"], "the newest leader term never goes back"
        # membership: one change at a time, never while a release is under way
        assert sum(rec["status"] != "active" for rec in new["members"].values()) <= 1
        if op in ("member_add", "member_remove") and outcome.code == "accepted":
            assert old_rel is None or old_rel["state"] in fsm.TERMINAL
        if new_rel is not None and new_rel["state"] == ROLLING and (old_rel or {}).get("state") == VERIFIED:
            assert not fsm.joining_members(new, new_rel["members"]), "a batch opened while a member was joining"
        # while paused, reports are recorded but nothing moves on (only a failure may start a rollback)
        if old_rel is not None and old_rel["state"] == PAUSED and new_rel["id"] == old_rel["id"]:
            if new_rel["state"] == PAUSED:
                assert new_rel["batch"] == old_rel["batch"]
            else:
                assert (op, new_rel["state"]) in (("resume", old_rel["paused_from"]), ("resume", CURRENT),
                                                  ("fail", ROLLING_BACK), ("fail", ROLLED_BACK),
                                                  ("host_done", ROLLING_BACK), ("abort", ABORTED)), (op, new_rel)
        # autonomous mode: the channel starts nothing while paused, nor a version that failed here
        if op == "start" and outcome.code == "accepted" and cmd.get("channel") is not None:
            assert not old["channel"]["paused"] and cmd["version"] not in old["channel"]["failed"]
            assert new_rel["channel"] == cmd["channel"] and new["leader_term"] >= old["leader_term"]
        if op == "channel" and outcome.code == "accepted":
            assert new["channel"]["paused"] is cmd["paused"] is not old["channel"]["paused"]
            assert dumps(new_rel) == dumps(old_rel)
        if op not in ("channel", None) or outcome.code != "accepted":
            assert new["channel"]["paused"] == old["channel"]["paused"]
        assert set(old["channel"]["failed"]) - set(new["channel"]["failed"]) <= set(old["channel"]["failed"][:1])
        # the highest version never decreases
        if old["highest_version"] is not None:
            assert fsm.compare_versions(new["highest_version"], old["highest_version"]) >= 0

    @invariant()
    def state_is_consistent(self):
        s = self.state
        json.dumps(s)
        assert len(s["history"]) <= fsm.HISTORY_LIMIT
        assert len(s["rejected"]) <= fsm.REJECTED_LIMIT
        assert len(s["applied"]) <= fsm.APPLIED_LIMIT
        assert len(s["channel"]["failed"]) <= fsm.CHANNEL_FAILED_LIMIT
        assert isinstance(s["channel"]["paused"], bool)
        rel = s["release"]
        event(f"release state: {rel and rel['state']}")  # see --hypothesis-show-statistics
        if rel is None:
            return
        assert rel["state"] in fsm.STATES
        assert sorted(rel["hosts"]) == rel["members"]
        for host, e in rel["hosts"].items():
            assert e["version"] in (rel["previous_version"], rel["version"]), (host, e)
            if e["status"] in (PENDING, SKIPPED, REVERTED):
                assert e["version"] == rel["previous_version"]
            if e["status"] == UPDATED:
                assert e["version"] == rel["version"]
        if rel["batches"]:
            assert sorted(h for b in rel["batches"] for h in b) == rel["members"]
        tolerated = {f["host"] for f in rel["failed_within_budget"]}
        event(f"between batches: {bool(rel['gate'])}, failed within budget: {bool(tolerated)}")
        assert len(tolerated) == len(rel["failed_within_budget"]) <= rel["max_failures"]
        for host, e in rel["hosts"].items():
            if e["status"] == REVERT and rel["state"] in (ROLLING, PAUSED):
                assert host in tolerated, "only a host failed within the budget reverts while the release goes on"
        if rel["state"] == ROLLING:
            assert 0 <= rel["batch"] < len(rel["batches"])
            for b in rel["batches"][:rel["batch"]]:
                assert all(rel["hosts"][h]["status"] == UPDATED or h in tolerated for h in b)
            if rel["gate"]:
                assert rel["gate"]["batch"] == rel["batch"] < len(rel["batches"]) - 1
                assert rel["bake_time"] or rel["windows"]
        if rel["state"] == CURRENT:
            assert s["current_version"] == rel["version"]
            assert all(e["status"] == UPDATED or (h in tolerated and e["status"] == REVERTED)
                       for h, e in rel["hosts"].items())
        if rel["state"] in (ROLLING_BACK, ROLLED_BACK):
            assert rel["failure"] is not None
        if rel["state"] in (ROLLED_BACK, ABORTED):
            assert s["channel"]["failed"][-1] == rel["version"], "the latest failure is remembered"
        if rel["state"] == ROLLED_BACK:
            assert rel["rollback"] == []
            assert all(e["status"] in (SKIPPED, REVERTED, REVERT_FAILED) for e in rel["hosts"].values())
        if rel["state"] == ROLLING_BACK:
            assert rel["rollback"] and any(rel["hosts"][h]["status"] == REVERT for h in rel["rollback"][0])
            # newest batch first: each rollback batch comes from an older install batch than the one before
            origin = [next(i for i, b in enumerate(rel["batches"]) if set(r) <= set(b)) for r in rel["rollback"]]
            assert origin == sorted(origin, reverse=True) and len(set(origin)) == len(origin)
            assert origin[0] <= rel["batch"]
        if rel["state"] == PAUSED:
            assert rel["paused_from"] in fsm.FORWARD
        if rel["state"] not in (ROLLING, ROLLING_BACK):
            assert fsm.open_batch_hosts(s) == []
        if FAILED in (e["status"] for e in rel["hosts"].values()):
            raise AssertionError("a failed host must be queued for revert at once")

    def teardown(self):
        if not hasattr(self, "log"):
            return
        # deterministic: the same log from the initial state gives the same state
        replay = fsm.initial_state("intel-az1")
        for cmd in self.log:
            replay, _ = fsm.apply(replay, cmd)
        assert dumps(replay) == dumps(self.state)
        assert replay == self.state or dumps(replay) == dumps(self.state)


TestFsmMachine = FsmMachine.TestCase
TestFsmMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(garbage, st.fixed_dictionaries({"op": st.sampled_from(fsm.OPS)}, optional={
    k: garbage for k in ("id", "term", "time", "actor", "release", "host", "phase", "ok", "version", "members",
                         "artifact", "reason", "step", "batch_fraction", "canary", "allow_downgrade", "channel",
                         "paused")})),
    max_size=25))
def test_apply_is_total_on_garbage_sequences(commands):
    state = fsm.initial_state("g")
    for cmd in commands:
        state, outcome = fsm.apply(state, cmd)
        json.dumps(state)
        assert outcome.code in ("accepted", "noop", "conflict", "invalid", "duplicate")
    again = fsm.initial_state("g")
    for cmd in commands:
        again, _ = fsm.apply(again, cmd)
    assert dumps(again) == dumps(state)


# -- pipelined distribution, per-host previous versions, operator release ids, version order --


def test_manifest_commits_artifact_and_plan_before_the_download_finishes():
    g = Group()
    g.start(members=hosts(4))
    g.do("manifest", release=g.rid, artifact=dict(ARTIFACT))
    r = g.release
    assert r["state"] == RUNNING_OLD and r["artifact"]["sha256"] == ARTIFACT["sha256"]
    assert r["source"] == LEADER and r["holders"] == [] and r["batches"][-1] == [LEADER]
    g.do("manifest", "noop", release=g.rid, artifact=dict(ARTIFACT))
    other = dict(ARTIFACT, sha256="cd" * 32)
    g.downloaded("invalid", artifact=other)  # a different file than the committed manifest names
    g.do("downloaded", release=g.rid)  # the artifact is already committed: no need to resend it
    assert g.release["state"] == DOWNLOADED and g.release["holders"] == [LEADER]


def test_holder_reports_extend_the_holders_once():
    g = Group()
    g.start(members=hosts(3))
    g.do("holder", "invalid", release=g.rid, host="h01")  # no artifact yet
    g.do("manifest", release=g.rid, artifact=dict(ARTIFACT))
    g.do("holder", release=g.rid, host="h01")
    g.do("holder", "noop", release=g.rid, host="h01")
    g.do("holder", "invalid", release=g.rid, host="stranger")
    assert g.release["holders"] == ["h01"]
    g.downloaded()
    assert g.release["holders"] == [LEADER, "h01"]


def test_first_release_rolls_back_to_the_version_the_hosts_ran():
    g = Group()
    g.start(members=hosts(3), running_version="2.3")
    assert g.release["previous_version"] == "2.3"
    g.downloaded()
    g.verified()
    g.open_batch()
    first = g.release["batches"][0][0]
    g.install(first, ok=False, previous="2.2")  # this host ran 2.2, not the group's 2.3
    assert g.release["hosts"][first]["previous"] == "2.2"
    g.revert(first)
    assert g.release["state"] == ROLLED_BACK and g.release["hosts"][first]["version"] == "2.2"
    assert g.state["current_version"] is None  # the group never completed a release


def test_operator_command_naming_another_release_is_refused():
    g = Group()
    g.start(members=hosts(3))
    old = g.rid
    g.do("fail", release=old, host="h00", step="download", reason="mirror down")
    g.do("retry", release=old)
    assert g.rid != old
    g.do("abort", "conflict", release=old)
    assert g.release["state"] == RUNNING_OLD
    g.do("abort", release=g.rid)
    assert g.release["state"] == ABORTED


@pytest.mark.parametrize("lower,higher", [
    ("2.4", "2.10"), ("2.5-rc1", "2.5"), ("2.5-rc1", "2.5-rc2"), ("2.5", "2.5.1"), ("2.5-alpha", "2.5-beta"),
    ("1.9.9", "2.0"),
])
def test_version_order(lower, higher):
    assert fsm.compare_versions(lower, higher) == -1 and fsm.compare_versions(higher, lower) == 1
    assert fsm.compare_versions(higher, higher) == 0


def test_build_metadata_does_not_order():
    assert fsm.compare_versions("2.5+b1", "2.5+b2") == 0


# -- failure budget, bake time, maintenance windows (the rules a release keeps from its start) --

WINDOW = {"days": ["mon", "tue"], "start": "02:00", "end": "05:00", "timezone": "Europe/Berlin"}


def test_default_policy_is_todays_behaviour():
    g = Group()
    g.to_rolling("2.4", hosts(4), batch_fraction=0.25)
    r = g.release
    assert (r["max_failures"], r["bake_time"], r["windows"], r["failed_within_budget"]) == (0, 0.0, [], [])
    g.install(r["batches"][0][0])
    assert g.release["batch"] == 1 and g.release["gate"] is None  # the next batch opened on the last report
    g.install(g.release["batches"][1][0], ok=False)
    assert g.release["state"] == ROLLING_BACK
    assert g.release["failure"]["reason"] == "http check failed"  # no budget wording with a budget of 0


def test_failures_within_the_budget_are_reverted_alone_and_the_release_goes_on():
    g = Group()
    g.release_fully("2.3", hosts(6))
    g.to_rolling("2.4", hosts(6), batch_fraction=0.5, max_failures=1)
    first, second = g.release["batches"]
    g.install(first[0])
    g.install(first[1], ok=False, step="preflight:health", reason="GET /health -> 503")
    r = g.release
    assert r["state"] == ROLLING and r["batch"] == 0
    assert r["hosts"][first[1]]["status"] == REVERT
    assert r["failed_within_budget"] == [{"host": first[1], "step": "preflight:health", "reason": "GET /health -> 503"}]
    assert fsm.open_batch_hosts(g.state) == [first[2], first[1]]
    assert fsm.host_task(g.state, first[1]) == "revert" and fsm.host_task(g.state, first[2]) == "install"
    g.install(first[2])
    assert g.release["batch"] == 0  # the batch waits for the revert
    g.revert(first[1])
    r = g.release
    assert r["batch"] == 1 and r["hosts"][first[1]]["status"] == REVERTED and r["hosts"][first[1]]["version"] == "2.3"
    for h in second:
        g.install(h)
    r = g.release
    assert r["state"] == CURRENT and g.state["current_version"] == "2.4"
    assert r["failed_within_budget"][0]["host"] == first[1]
    assert g.state["history"][-1]["detail"] == f"5 of 6 hosts run 2.4; failed within the budget: {first[1]}"


def test_one_failure_more_than_the_budget_rolls_the_group_back_including_hosts_reverted_alone():
    g = Group()
    g.release_fully("2.3", hosts(4))
    g.to_rolling("2.4", hosts(4), batch_fraction=1.0, max_failures=1)
    a, b, c, d = g.release["batches"][0]
    g.install(a, ok=False)
    g.install(b)
    g.install(c, ok=False, reason="boom")
    r = g.release
    assert r["state"] == ROLLING_BACK
    assert r["failure"] == {"host": c, "step": "preflight", "reason": "boom (failure 2, over the budget of 1)"}
    # a, still reverting alone, is reverted with the others; d was never touched
    assert sorted(r["rollback"][0]) == sorted([a, b, c, d])
    assert r["hosts"][d]["status"] == REVERT  # pending in the open batch: it may have started
    assert [f["host"] for f in r["failed_within_budget"]] == [a]


def test_a_failed_revert_of_a_host_within_the_budget_rolls_the_group_back():
    g = Group()
    g.release_fully("2.3", hosts(4))
    g.to_rolling("2.4", hosts(4), batch_fraction=0.5, max_failures=2)
    first = g.release["batches"][0]
    g.install(first[0])
    g.install(first[1], ok=False)
    g.revert(first[1], ok=False)
    r = g.release
    assert r["state"] == ROLLING_BACK and r["hosts"][first[1]]["status"] == REVERT_FAILED
    assert r["failure"]["host"] == first[1]
    assert "revert after a failure within the budget failed" in r["failure"]["reason"]
    assert r["rollback"] == [[first[0]]]


def test_bake_time_holds_the_next_batch_until_the_leader_rechecks_every_updated_host():
    g = Group()
    g.release_fully("2.3", hosts(6))
    g.to_rolling("2.4", hosts(6), batch_fraction=0.3, bake_time=300, max_failures=1)
    b0, b1, b2 = g.release["batches"]
    for h in b0:
        g.install(h)
    r = g.release
    assert r["batch"] == 0 and r["gate"] == {"batch": 0, "since": g.state["history"][-1]["time"], "recheck": None}
    assert fsm.open_batch_hosts(g.state) == []
    g.do("next_batch", "conflict", release=g.rid)  # not re-checked yet
    g.do("hold", release=g.rid, reason="bake", until=2000.0, text="baking until 1970-01-01T00:33:20Z")
    assert fsm.hold_text(g.release) == "baking until 1970-01-01T00:33:20Z"
    g.do("recheck", release=g.rid)
    assert g.release["hold"] is None and fsm.hold_text(g.release) == "re-checking 2 updated hosts"
    assert fsm.open_batch_hosts(g.state) == b0 and fsm.host_task(g.state, b0[0]) == "recheck"
    g.do("recheck", "noop", release=g.rid)
    g.do("host_done", release=g.rid, host=b0[0], phase="recheck", ok=True, step="done", reason=None, actor=b0[0])
    g.do("host_done", "invalid", release=g.rid, host=b0[0], phase="recheck", ok=True, step="done", actor=b0[0])
    g.do("next_batch", "conflict", release=g.rid)
    g.do("host_done", release=g.rid, host=b0[1], phase="recheck", ok=True, step="done", reason=None, actor=b0[1])
    g.do("next_batch", release=g.rid)
    r = g.release
    assert r["batch"] == 1 and r["gate"] is None and fsm.open_batch_hosts(g.state) == b1
    for h in b1:
        g.install(h)
    g.do("recheck", release=g.rid)
    assert sorted(fsm.open_batch_hosts(g.state)) == sorted(b0 + b1)
    # a re-check failure is a failure: within the budget the host is reverted alone
    g.do("host_done", release=g.rid, host=b0[1], phase="recheck", ok=False, step="preflight:health",
         reason="GET /health -> 500", actor=b0[1])
    r = g.release
    assert r["state"] == ROLLING and r["hosts"][b0[1]]["status"] == REVERT
    assert r["failed_within_budget"] == [{"host": b0[1], "step": "recheck:preflight:health",
                                          "reason": "GET /health -> 500"}]
    for h in [b0[0], *b1]:
        g.do("host_done", release=g.rid, host=h, phase="recheck", ok=True, step="done", reason=None, actor=h)
    g.do("next_batch", "conflict", release=g.rid)  # still reverting alone
    g.revert(b0[1])
    g.do("next_batch", release=g.rid)
    for h in b2:
        g.install(h)
    assert g.release["state"] == CURRENT  # no bake after the last batch


def test_recheck_failure_over_the_budget_rolls_back():
    g = Group()
    g.release_fully("2.3", hosts(4))
    g.to_rolling("2.4", hosts(4), batch_fraction=0.5, bake_time=1)
    first = g.release["batches"][0]
    for h in first:
        g.install(h)
    g.do("recheck", release=g.rid)
    g.do("host_done", release=g.rid, host=first[0], phase="recheck", ok=False, step="preflight:x", reason="down",
         actor=first[0])
    r = g.release
    assert r["state"] == ROLLING_BACK and r["failure"] == {"host": first[0], "step": "recheck:preflight:x",
                                                          "reason": "down"}
    assert r["gate"] is None and r["rollback"] == [first]


def test_windows_gate_every_batch_and_the_leader_commits_what_it_waits_for():
    g = Group()
    g.start("2.4", hosts(4), batch_fraction=0.5, windows=[WINDOW])
    assert g.release["windows"] == [WINDOW]
    g.downloaded()
    g.verified()
    g.do("hold", release=g.rid, reason="window", until=5000.0, text="waiting for window (opens 2026-12-07T02:00+01:00)")
    g.do("hold", "noop", release=g.rid, reason="window", until=5000.0,
         text="waiting for window (opens 2026-12-07T02:00+01:00)")
    assert fsm.hold_text(g.release) == "waiting for window (opens 2026-12-07T02:00+01:00)"
    g.open_batch()
    assert g.release["hold"] is None
    for h in g.release["batches"][0]:
        g.install(h)
    assert g.release["gate"]["recheck"] is None
    g.do("recheck", release=g.rid)  # allowed without a bake time, not needed
    g.do("next_batch", release=g.rid)
    assert g.release["batch"] == 1


@pytest.mark.parametrize("args", [
    {"max_failures": -1}, {"max_failures": 1.5}, {"max_failures": True}, {"bake_time": -1},
    {"bake_time": math.inf}, {"bake_time": "60"}, {"windows": {"start": "02:00"}},
    {"windows": [{**WINDOW, "start": "2:00"}]}, {"windows": [{**WINDOW, "days": ["monday"]}]},
    {"windows": [{k: v for k, v in WINDOW.items() if k != "timezone"}]},
])
def test_start_rejects_a_bad_policy(args):
    g = Group()
    g.start(members=hosts(3), expect="invalid", **args)
    assert g.release is None


def test_leader_gate_commands_are_fenced_and_need_a_waiting_batch():
    g = Group()
    g.to_rolling("2.4", hosts(4), batch_fraction=0.5, bake_time=10)
    g.do("recheck", "invalid", release=g.rid)  # batch 1 has not reported
    g.do("hold", "invalid", release=g.rid, reason="bake", until=1.0, text="x")
    for h in g.release["batches"][0]:
        g.install(h)
    g.do("hold", "invalid", release=g.rid, reason="nap", until=1.0, text="x")
    g.term = 5
    g.do("lead", actor="h01")
    g.term = 4
    g.do("recheck", "invalid", release=g.rid)  # a deposed leader
    g.term = 5
    g.do("recheck", release=g.rid)


def test_retry_keeps_the_policy():
    g = Group()
    g.release_fully("2.3", hosts(4))
    g.to_rolling("2.4", hosts(4), batch_fraction=1.0, bake_time=30, windows=[WINDOW])
    g.install(g.release["batches"][0][0], ok=False)
    while g.release["state"] == ROLLING_BACK:
        for h in fsm.open_batch_hosts(g.state):
            g.revert(h)
    g.do("retry")
    r = g.release
    assert r["attempt"] == 2 and (r["max_failures"], r["bake_time"], r["windows"]) == (0, 30.0, [WINDOW])
