"""Webhook notifications: what is due from committed states made by the real state machine
(test_fsm.Group), the signature, and delivery with retries to a real local HTTP receiver
(tests/support/webhook.py). Against real agents and a leader change: tests/integration/test_webhooks.py."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from quorum_rollout import fsm, notify
from quorum_rollout.config import NotifyConfig

from tests.support.webhook import Receiver
from tests.unit.test_fsm import Group

SECRET = "s3cret-for-webhooks-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(SECRET + "\n")
    return path


def test_the_signature_is_hmac_sha256_of_the_exact_body():
    # RFC 4231 test case 2
    body = b"what do ya want for nothing?"
    assert notify.sign(b"Jefe", body) == "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert notify.verify(b"Jefe", body, notify.sign(b"Jefe", body))
    assert not notify.verify(b"Jefe", body + b"!", notify.sign(b"Jefe", body))
    assert not notify.verify(b"other", body, notify.sign(b"Jefe", body))
    assert not notify.verify(b"Jefe", b"x", "")


def ids(state: dict, now: float = 0.0, **cfg) -> list[str]:
    return [n["id"] for n in notify.due(state, now, NotifyConfig(url="http://x", secret_file="/s", **cfg))]


def test_due_follows_the_committed_state_once_per_release_and_event():
    g = Group()
    assert ids(g.state) == []
    g.to_rolling("2.4")
    rid = g.rid
    started = g.release["started_at"]
    assert ids(g.state, started + 10) == [f"{rid}:release_started"]
    assert ids(g.state, started + 3601) == [f"{rid}:release_started", f"{rid}:release_stuck"]
    assert ids(g.state, started + 11, stuck_after=10) == [f"{rid}:release_started", f"{rid}:release_stuck"]
    assert ids(g.state, started + 3601, events=("group_current",)) == []
    g.do("notified", event=f"{rid}:release_started")
    assert ids(g.state, started + 10) == []
    g.do("notified", "noop", event=f"{rid}:release_started")
    while g.release["state"] == "rolling":
        g.finish_batch()
    assert ids(g.state, started + 99999) == [f"{rid}:group_current"]  # a terminal release is never stuck
    [n] = notify.due(g.state, 0, NotifyConfig(url="http://x", secret_file="/s"))
    assert (n["event"], n["group"], n["version"], n["state"], n["batches"]) == ("group_current", "intel-az1", "2.4",
                                                                                "current", 10)

    g = Group()
    g.goto("rolled_back")
    rid = g.rid
    assert ids(g.state) == [f"{rid}:release_started", f"{rid}:group_rolled_back"]
    [_, n] = notify.due(g.state, 0, NotifyConfig(url="http://x", secret_file="/s"))
    assert n["failure"]["step"] == "preflight" and n["failed_host"] == n["failure"]["host"]
    g.do("retry")
    assert g.rid != rid and ids(g.state) == [f"{g.rid}:release_started"]  # a retry is a new release


def test_the_notified_list_is_bounded_and_refuses_garbage():
    g = Group()
    for i in range(fsm.NOTIFIED_LIMIT + 5):
        g.do("notified", event=f"r#{i}:release_started")
    assert len(g.state["notified"]) == fsm.NOTIFIED_LIMIT and g.state["notified"][-1] == "r#54:release_started"
    g.do("notified", "invalid", event={"x": 1})
    g.do("notified", "invalid", event="")


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def make(receiver: Receiver, secret_file: Path, committed: list[str], **cfg) -> notify.Notifier:
    config = NotifyConfig(url=receiver.url, secret_file=str(secret_file), timeout=2, **cfg)

    def propose(ident: str) -> bool:
        committed.append(ident)
        return True
    return notify.Notifier(config, "intel-az1", "h00", propose, backoff=0.01, max_backoff=0.05)


def test_a_notification_is_signed_retried_on_5xx_and_sent_once(receiver: Receiver, secret_file: Path):
    receiver.answers = [500, 503]
    committed: list[str] = []
    notifier = make(receiver, secret_file, committed)
    try:
        g = Group()
        g.release_fully("2.4")
        for _ in range(3):  # the leader offers the same state on every pass
            notifier.offer(g.state, g.release["started_at"])
        wait_until(lambda: len(committed) == 2)
        assert committed == [f"{g.rid}:release_started", f"{g.rid}:group_current"]
        assert [r["status"] for r in receiver.requests] == [500, 503, 200, 200]
        for r in receiver.requests:
            assert notify.verify(SECRET.encode(), r["body"], r["headers"]["X-Quorum-Signature"])
            assert r["headers"]["Content-Type"] == "application/json"
            doc = json.loads(r["body"])
            assert r["headers"]["X-Quorum-Delivery"] == doc["id"] and r["headers"]["X-Quorum-Event"] == doc["event"]
        assert [json.loads(r["body"])["event"] for r in receiver.delivered()] == ["release_started", "group_current"]
        assert notifier.status["ok"]
    finally:
        notifier.stop()


def test_a_refused_notification_is_not_retried_and_is_reported(receiver: Receiver, secret_file: Path):
    receiver.answers = [400]
    committed: list[str] = []
    notifier = make(receiver, secret_file, committed, events=("release_started",))
    try:
        g = Group()
        g.start("2.4")
        notifier.offer(g.state, 0)
        wait_until(lambda: committed)
        assert len(receiver.requests) == 1 and not notifier.status["ok"]
        assert "POST failed after 1 attempt: HTTP 400" in notifier.status["error"]
    finally:
        notifier.stop()


def test_a_notification_is_committed_again_until_the_group_takes_it(receiver: Receiver, secret_file: Path):
    """Sent once even when the first `notified` commits fail (no quorum): only the commit is retried."""
    attempts: list[str] = []
    taken = threading.Event()

    def propose(ident: str) -> bool:
        attempts.append(ident)
        if len(attempts) >= 3:
            taken.set()
            return True
        return False
    config = NotifyConfig(url=receiver.url, secret_file=str(secret_file), events=("release_started",))
    notifier = notify.Notifier(config, "intel-az1", "h00", propose, backoff=0.01)
    try:
        g = Group()
        g.start("2.4")
        while not taken.is_set():
            notifier.offer(g.state, 0)
            time.sleep(0.05)
        assert len(receiver.requests) == 1 and attempts == [f"{g.rid}:release_started"] * 3
    finally:
        notifier.stop()
