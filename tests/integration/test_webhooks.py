"""Webhook notifications from a real group to a real HTTP receiver (tests/support/webhook.py on the
fleet's loopback subnet): signed, in order, once per event, also across a leader change."""

from __future__ import annotations

import json
import os
import signal

from quorum_rollout import notify

from tests.support.fleet import wait_for
from tests.support.webhook import Receiver

SECRET = "webhook-secret-0123456789abcdef"


def test_the_leader_notifies_each_event_once_signed_and_a_new_leader_resends_nothing(make_fleet):
    fleet = make_fleet(3)
    receiver = Receiver(fleet.mirror_ip, fail_first=[503])  # the first attempt fails: retried
    try:
        secret = fleet.base / "keys" / "webhook.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(SECRET + "\n")
        fleet.extra = {"notify": {"url": receiver.url, "secret_file": str(secret)}}
        fleet.start_mirror()
        fleet.preinstall("2.3")
        fleet.build_release("2.4")
        fleet.build_release("2.5", broken_on=(fleet.cpu,))  # every host's pre-flight fails: rolls back
        fleet.start()

        def events() -> list[tuple[str, str]]:
            return [(json.loads(r["body"])["event"], json.loads(r["body"])["version"]) for r in receiver.delivered()]

        resp = fleet.hosts[0].post("/v1/releases", {"version": "2.4"})
        assert resp.status_code == 201, resp.text
        assert fleet.wait_release(("current", "rolled_back"))["state"] == "current"
        wait_for(lambda: len(events()) >= 2, 30, "two notifications for 2.4")
        wait_for(lambda: len(fleet.hosts[0].status()["state"]["notified"]) == 2, 30, "both committed as notified")

        # A new leader: it derives what is due from the committed state and finds it all notified.
        old = fleet.leader()
        old.kill(signal.SIGKILL)
        new = wait_for(lambda: next((h for h in fleet.hosts if h.alive() and h.status()["node"]["role"] == "leader"
                                     and h.status()["state"]["leader"]["node"] == h.id), None), 60, "a new leader")
        old.start()
        wait_for(lambda: old.status()["node"]["ready"], 60, f"{old.id} back")
        wait_for(lambda: new.status()["state"]["unreachable"] == {}, 60, "every member reachable again")

        resp = new.post("/v1/releases", {"version": "2.5"})
        assert resp.status_code == 201, resp.text
        rid = resp.json()["release"]["id"]
        ended = wait_for(lambda: (r := new.status()["state"]["release"])["id"] == rid and r["state"] in
                         ("current", "rolled_back") and r, 120, f"{rid} ends")
        assert ended["state"] == "rolled_back", ended
        wait_for(lambda: len(events()) >= 4, 60, "two notifications for 2.5")
        assert events() == [("release_started", "2.4"), ("group_current", "2.4"),
                            ("release_started", "2.5"), ("group_rolled_back", "2.5")], events()
        assert [r["status"] for r in receiver.requests][:2] == [503, 200]
        for r in receiver.requests:
            assert notify.verify(SECRET.encode(), r["body"], r["headers"]["X-Quorum-Signature"]), r
            doc = json.loads(r["body"])
            assert r["headers"]["X-Quorum-Delivery"] == doc["id"] == f"{doc['release']}:{doc['event']}"
            assert doc["group"] == fleet.group
        last = json.loads(receiver.delivered()[-1]["body"])
        assert last["failure"]["step"].startswith("preflight") and last["sent_by"] == new.id
        assert all(r["path"] == "/hooks/quorum" for r in receiver.requests)
        status = new.status()
        assert status["node"]["notify"] == {"ok": True, "error": None, "last": f"{last['release']}:group_rolled_back"}
        state = status["state"]
        assert sum(i.endswith((":release_started", ":group_current", ":group_rolled_back"))
                   for i in state["notified"]) == 4
    finally:
        receiver.close()
