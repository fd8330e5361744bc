"""Autonomous mode (agent/quorum_rollout/channel.py): the pure decision table, and the poller run
against an in-process group whose state changes only through the real `fsm.apply`."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from quorum_rollout import artifacts, channel, fsm, signing
from quorum_rollout.channel import ChannelPoller, decide
from quorum_rollout.config import parse_config

from test_config import base

from tests.support.inproc import InProcGroup, InProcNode

MEMBERS = ["web-01", "web-02", "web-03"]


# ---------------------------------------------------------------------------------- decide()


def group(current: str | None = "2.4", highest: str | None = None, release: tuple[str, str] | None = None,
          paused: bool = False, failed: tuple[str, ...] = ()) -> dict[str, Any]:
    state = fsm.initial_state("intel-a")
    state.update(current_version=current, highest_version=highest or current)
    if release:
        state["release"] = {"id": f"{release[0]}#1", "version": release[0], "state": release[1]}
    state["channel"] = {"paused": paused, "failed": list(failed)}
    return state


@pytest.mark.parametrize(("version", "state", "running", "start", "reason"), [
    ("2.5", group(), None, True, channel.START),
    ("2.10", group("2.9"), None, True, channel.START),           # version order, not text order
    ("2.5", group("2.4", release=("2.4", fsm.CURRENT)), None, True, channel.START),
    ("2.5", group("2.4", release=("2.5", fsm.ROLLED_BACK), failed=("2.5",)), None, False, channel.FAILED_HERE),
    ("2.5", group("2.4", release=("2.5", fsm.ABORTED), failed=("2.5",)), None, False, channel.FAILED_HERE),
    ("2.6", group("2.4", release=("2.5", fsm.ROLLED_BACK), failed=("2.5",)), None, True, channel.START),
    ("2.5", group("2.4", release=("2.5", fsm.ROLLING)), None, False, channel.IN_PROGRESS),
    ("2.6", group("2.4", release=("2.5", fsm.PAUSED)), None, False, channel.IN_PROGRESS),
    ("2.4", group("2.4"), None, False, channel.NOT_NEWER),
    ("2.3", group("2.4"), None, False, channel.NOT_NEWER),
    ("2.5-rc1", group("2.5"), None, False, channel.NOT_NEWER),
    ("2.5", group("2.4", highest="2.6"), None, False, channel.NOT_NEWER),  # what the group ran is the floor
    ("2.5", group(None), "2.3", True, channel.START),                       # a new group: what the leader runs
    ("2.3", group(None), "2.3", False, channel.NOT_NEWER),
    ("2.3", group(None), None, True, channel.START),                        # nothing installed yet
    ("2.5", group(paused=True), None, False, channel.PAUSED),
])
def test_decision_table(version: str, state: dict[str, Any], running: str | None, start: bool, reason: str) -> None:
    decision = decide(version, state, running)
    assert (decision.start, decision.reason) == (start, reason), decision
    assert decision.detail


def test_decide_is_pure_and_reads_a_state_from_before_autonomous_mode() -> None:
    state = group()
    del state["channel"]
    before = repr(state)
    assert decide("2.5", state).start and repr(state) == before


# ------------------------------------------------------------------------------ ChannelPoller


class Node(InProcNode):
    """web-01, leading its group in term 3 (tests/support/inproc.py: every commit runs fsm.apply)."""

    def __init__(self) -> None:
        state = fsm.initial_state("intel-zone-a")
        state.update(current_version="2.4", highest_version="2.4")
        group = InProcGroup("intel-zone-a", MEMBERS, seed=state, term=2)
        super().__init__(group, "web-01")
        group.nodes["web-01"] = self
        group.elect("web-01")
        assert self.propose("lead", term=3)["code"] == "accepted"

    def operator(self, op: str, **args: Any) -> None:
        result = self.group.nodes["web-02"].propose(op, **args)
        assert result["code"] == "accepted", result

    def starts(self) -> list[dict[str, Any]]:
        """The starts that committed."""
        return self.group.accepted("start")


class Starter:
    def __init__(self, node: Node) -> None:
        self.node, self.checked, self.manifest_error = node, [], None

    def start_args(self, version: str, *, allow_downgrade: bool, allow_unreachable: bool) -> dict[str, Any]:
        return {"version": version, "members": MEMBERS, "batch_fraction": 0.1, "canary": False,
                "allow_downgrade": allow_downgrade, "allow_unreachable": allow_unreachable, "running_version": "2.4"}

    def check_manifest(self, version: str, allow_downgrade: bool) -> None:
        self.checked.append(version)
        if self.manifest_error:
            raise self.manifest_error

    def running_version(self) -> str | None:
        return "2.4"


NOW = datetime(2026, 11, 26, 7, tzinfo=timezone.utc)


def pointer(version: str) -> signing.ChannelPointer:
    return signing.ChannelPointer("demo-app", "stable", version, NOW, NOW + timedelta(days=30))


class Fetch:
    """Stands in for artifacts.fetch_channel: answers what `answer` says, reporting `refusals`."""

    def __init__(self) -> None:
        self.answer: Any = pointer("2.5")
        self.refusals: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None

    def __call__(self, cfg: Any, policy: Any, **kwargs: Any) -> tuple[signing.ChannelPointer, str]:
        self.calls.append(kwargs)
        if self.gate is not None:
            self.gate.wait(5)
        for fields in self.refusals:
            kwargs["log"]("channel_refused", **fields)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer, "http://mirror-1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cfg(interval: float = 60.0) -> Any:
    data = base()
    data["artifacts"].update(channel="stable", channel_interval=interval)
    return parse_config(data)


@pytest.fixture
def world() -> tuple[Node, Starter, Fetch, Clock, ChannelPoller]:
    node, fetch, clock = Node(), Fetch(), Clock()
    starter = Starter(node)
    poller = ChannelPoller(node, cfg(), signing.TrustPolicy.from_config(cfg().artifacts), starter, clock=clock,
                           wall=lambda: 1764140400.0, rand=lambda: 1.0, fetch=fetch)
    return node, starter, fetch, clock, poller


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.qr_fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def test_the_poller_needs_a_channel() -> None:
    with pytest.raises(ValueError, match=r"artifacts\.channel"):
        ChannelPoller(Node(), parse_config(base()), None, None)  # type: ignore[arg-type]


def test_a_newer_version_is_started_exactly_as_the_api_would_and_marked_with_the_channel(world: Any) -> None:
    node, starter, fetch, _clock, poller = world
    poller.poll(3)
    (start,) = node.starts()
    assert start["version"] == "2.5" and start["channel"] == "stable" and start["term"] == 3
    assert start["id"] == "channel:stable:2.5:0" and start["allow_downgrade"] is False
    assert start["allow_unreachable"] is False and start["members"] == MEMBERS
    assert starter.checked == ["2.5"], "the manifest pre-check of POST /v1/releases applies"
    release = node.state["release"]
    assert (release["version"], release["channel"]) == ("2.5", "stable")
    assert fetch.calls[0]["deadline"] is not None and fetch.calls[0]["cancel"] is not None
    status = poller.status()
    assert status["name"] == "stable" and status["polls"] == 1 and status["pointer"]["version"] == "2.5"
    assert status["decision"]["start"] is True and status["error"] is None
    poller.poll(3)  # in progress now: nothing more
    assert len(node.starts()) == 1 and poller.status()["decision"]["reason"] == channel.IN_PROGRESS


@pytest.mark.parametrize("version", ["2.4", "2.3"])
def test_an_older_or_equal_version_starts_nothing(world: Any, version: str) -> None:
    node, starter, fetch, _clock, poller = world
    fetch.answer = pointer(version)
    poller.poll(3)
    assert node.starts() == [] and starter.checked == []
    assert poller.status()["decision"]["reason"] == channel.NOT_NEWER


def test_a_refused_pointer_is_logged_once_per_mirror_and_kind_and_nothing_starts(
        world: Any, caplog: pytest.LogCaptureFixture) -> None:
    node, _starter, fetch, _clock, poller = world
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    fetch.refusals = [{"mirror": "http://mirror-1", "channel": "stable", "cause": "altered", "kind": "BadSignature"}]
    fetch.answer = signing.BadSignature("channel stable of demo-app: signature does not verify")
    for _ in range(3):
        poller.poll(3)
    assert node.starts() == []
    (refused,) = events(caplog, "channel_refused")
    assert (refused["mirror"], refused["channel"], refused["kind"]) == ("http://mirror-1", "stable", "BadSignature")
    assert refused["group"] == "intel-zone-a" and refused["term"] == 3
    (unavailable,) = events(caplog, "channel_unavailable")
    assert unavailable["kind"] == "BadSignature"
    status = poller.status()
    assert status["polls"] == 3 and "BadSignature" in status["error"] and status["pointer"] is None
    fetch.refusals, fetch.answer = [], pointer("2.5")  # fixed: the group carries on
    poller.poll(3)
    assert len(node.starts()) == 1 and poller.status()["error"] is None
    fetch.refusals = [{"mirror": "http://mirror-1", "channel": "stable", "cause": "altered", "kind": "BadSignature"}]
    poller.poll(3)
    assert len(events(caplog, "channel_refused")) == 2, "a refusal that comes back is logged again"


def test_a_failed_manifest_pre_check_starts_nothing_and_is_tried_again(world: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    node, starter, _fetch, _clock, poller = world
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    starter.manifest_error = artifacts.NotPublished("demo-app", "2.5", [("http://mirror-1", ValueError("404"))])
    poller.poll(3)
    poller.poll(3)
    assert node.starts() == [] and starter.checked == ["2.5", "2.5"]
    (refused,) = events(caplog, "channel_start_refused")
    assert "manifest pre-check" in refused["cause"] and refused["kind"] == "NotPublished"
    starter.manifest_error = None
    poller.poll(3)
    assert len(node.starts()) == 1


def test_a_paused_channel_starts_nothing_and_resume_lets_it(world: Any) -> None:
    node, starter, _fetch, _clock, poller = world
    node.operator("channel", paused=True)
    poller.poll(3)
    assert node.starts() == [] and starter.checked == []
    assert poller.status()["decision"]["reason"] == channel.PAUSED
    node.operator("channel", paused=False)
    poller.poll(3)
    assert len(node.starts()) == 1


def test_a_version_that_rolled_back_is_not_retried_until_a_newer_one_is_named(world: Any) -> None:
    node, _starter, fetch, _clock, poller = world
    poller.poll(3)
    rid = node.state["release"]["id"]
    node.propose("fail", op_id="f", term=3, release=rid, host="web-01", step="download", reason="mirror down")
    assert node.state["release"]["state"] == fsm.ROLLED_BACK
    for _ in range(3):
        poller.poll(3)
    assert len(node.starts()) == 1 and poller.status()["decision"]["reason"] == channel.FAILED_HERE
    fetch.answer = pointer("2.6")
    poller.poll(3)
    assert [s["version"] for s in node.starts()] == ["2.5", "2.6"]


def test_a_node_that_lost_the_lead_while_polling_proposes_nothing(world: Any) -> None:
    node, _starter, _fetch, _clock, poller = world
    node.group.depose()
    poller.poll(3)
    node.group.elect("web-01")
    poller.poll(3)  # the poll of term 3 ended in term 5
    assert not [c for c in node.group.proposed if c["op"] == "start"]


def test_a_start_the_state_machine_would_refuse_is_logged_not_proposed(world: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    node, starter, _fetch, _clock, poller = world
    caplog.set_level(logging.INFO, logger="quorum_rollout")
    assert node.propose("liveness", term=3, unreachable={"web-03": None})["code"] == "accepted"
    poller.poll(3)
    assert not [c for c in node.group.proposed if c["op"] == "start"] and starter.checked == []
    (refused,) = events(caplog, "channel_start_refused")
    assert "web-03" in refused["cause"]


def test_an_unknown_proposal_outcome_is_proposed_again_with_the_same_id(world: Any) -> None:
    node, _starter, _fetch, _clock, poller = world
    node.group.fail_next("start", "lost")
    poller.poll(3)
    assert node.starts() == []
    poller.poll(3)
    assert [s["id"] for s in node.starts()] == ["channel:stable:2.5:0"]
    assert {c["id"] for c in node.group.proposed if c["op"] == "start"} == {"channel:stable:2.5:0"}


def test_tick_polls_at_once_when_leading_then_after_the_jittered_interval(world: Any) -> None:
    _node, _starter, fetch, clock, poller = world

    def polls_after_tick() -> int:
        poller.tick(3)
        if poller._thread is not None:
            poller._thread.join(5)
        return len(fetch.calls)

    assert polls_after_tick() == 1
    clock.now += 60 * (1 + channel.JITTER) - 0.1  # rand() == 1.0: the longest wait
    assert polls_after_tick() == 1
    clock.now += 0.2
    assert polls_after_tick() == 2
    assert polls_after_tick() == 2
    poller.tick(4)  # a new term (this node led again): at once
    poller._thread.join(5)
    assert len(fetch.calls) == 3


def test_tick_never_waits_for_a_slow_poll(world: Any) -> None:
    node, _starter, fetch, clock, poller = world
    fetch.gate = threading.Event()
    poller.tick(3)
    clock.now += 1000
    poller.tick(3)  # returns at once, and starts no second poll while one runs
    assert poller._thread.is_alive() and len(fetch.calls) == 1
    fetch.gate.set()
    poller._thread.join(5)
    assert len(node.starts()) == 1
    poller.stop()


def test_a_bug_in_a_poll_is_logged_and_the_next_tick_polls_again(world: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    _node, _starter, fetch, clock, poller = world
    fetch.answer = RuntimeError("boom")
    poller.tick(3)
    poller._thread.join(5)
    assert events(caplog, "channel_error")[0]["cause"] == "RuntimeError('boom')"
    clock.now += 100
    poller.tick(3)
    poller._thread.join(5)
    assert len(fetch.calls) == 2
