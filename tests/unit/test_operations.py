"""Commands the API submitted whose commit was not confirmed (operations.py), on the in-process
group (tests/support/inproc.py): re-proposed with the same id until the log answers, or expired."""

from __future__ import annotations

import pytest
from quorum_rollout.group import ProposalError
from quorum_rollout.operations import Operations

from tests.support.inproc import InProcGroup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[InProcGroup, Operations, Clock]:
    group = InProcGroup("intel-eu1", ["h1", "h2"])
    group.elect("h1")
    clock = Clock()
    return group, Operations(group.nodes["h2"], group="intel-eu1", ttl=60.0, clock=clock), clock


def test_a_lost_command_is_proposed_again_until_it_commits_once() -> None:
    group, ops, clock = setup()
    group.fail_next("channel", "lost")
    with pytest.raises(ProposalError):
        ops.submit("channel", "op-00000001", {"paused": True}, timeout=1.0)
    assert ops.document("op-00000001")["status"] == "pending"
    clock.now += 5
    ops._retry()
    assert ops.document("op-00000001") == {"id": "op-00000001", "status": "committed", "code": "accepted",
                                           "reason": "", "changed": True}
    ops._retry()
    assert len([c for c in group.proposed if c["id"] == "op-00000001"]) == 2
    assert len(group.history(op="channel")) == 1


def test_a_command_that_committed_although_its_caller_heard_a_timeout_is_not_proposed_again() -> None:
    group, ops, _clock = setup()
    group.fail_next("channel", "applied")
    with pytest.raises(ProposalError):
        ops.submit("channel", "op-00000002", {"paused": True}, timeout=1.0)
    ops._retry()
    assert ops.document("op-00000002")["status"] == "committed"
    assert len([c for c in group.proposed if c["id"] == "op-00000002"]) == 1


def test_a_command_that_commits_late_as_a_no_op_says_it_changed_nothing() -> None:
    """The operator's second `release 2.4` times out, the first commits meanwhile, the second then
    commits as a no-op: its document must not read as a change (the CLI printed "started")."""
    group, ops, _clock = setup()
    ops.submit("channel", "op-00000006", {"paused": True}, timeout=1.0)
    group.fail_next("channel", "late")
    with pytest.raises(ProposalError):
        ops.submit("channel", "op-00000007", {"paused": True}, timeout=1.0)
    group.deliver_late()
    doc = ops.document("op-00000007")
    assert doc["status"] == "committed" and doc["changed"] is False and doc["code"] == "noop"
    assert doc["reason"] == "the channel is already paused"


def test_a_rejected_command_is_answered_by_the_log() -> None:
    group, ops, _clock = setup()
    group.fail_next("pause", "late")
    with pytest.raises(ProposalError):
        ops.submit("pause", "op-00000003", {}, timeout=1.0)
    group.deliver_late()  # commits, and the state machine refuses it: there is no release
    doc = ops.document("op-00000003")
    assert doc["status"] == "rejected" and doc["reason"] == "no release to pause"


def test_a_command_never_committed_within_the_ttl_expires_and_is_no_longer_tried() -> None:
    group, ops, clock = setup()
    group.fail_next("channel", "lost")
    with pytest.raises(ProposalError):
        ops.submit("channel", "op-00000004", {"paused": True}, timeout=1.0)
    clock.now += 61
    ops._retry()
    doc = ops.document("op-00000004")
    assert doc["status"] == "expired" and "send the command again" in doc["reason"]
    ops._retry()
    assert len([c for c in group.proposed if c["id"] == "op-00000004"]) == 1


def test_a_definitive_refusal_is_not_kept() -> None:
    group, ops, _clock = setup()
    group.fail_next("channel", "refused")
    with pytest.raises(ProposalError) as caught:
        ops.submit("channel", "op-00000005", {"paused": True}, timeout=1.0)
    assert caught.value.definitive
    assert ops.document("op-00000005")["status"] == "unknown"
