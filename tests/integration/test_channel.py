"""Autonomous mode on real agents: with a channel configured, the group's leader polls the signed
pointer on the mirror and rolls out what it names, without anyone calling the API to start it.

What is refused (an older version, a tampered or expired pointer, a version that rolled back here,
anything while the channel is paused) starts nothing, and the group carries on.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from quorum_rollout import signing

from tests.support.fleet import Fleet, Host, wait_for

CHANNEL = {"artifacts": {"channel": "stable", "channel_interval": 1}}
ENDED = ("current", "rolled_back", "aborted")


def leader_poll(fleet: Fleet) -> tuple[Host, dict[str, Any]]:
    leader = wait_for(fleet.leader, 30, "a leader")
    return leader, leader.status()["node"]["channel"]


def polls_later(fleet: Fleet, seconds: float = 3.0) -> dict[str, Any]:
    """The channel status of the group's leader (whichever it is by then) once it finished a poll
    more than `seconds` from now: with a 1 s interval, it has seen the pointer as it is now."""
    since = time.time() + seconds

    def polled() -> dict[str, Any] | None:
        _, doc = leader_poll(fleet)
        return doc if doc["last_poll"] is not None and doc["last_poll"] > since else None

    return wait_for(polled, 30 + seconds, f"a channel poll by the leader after {since:.1f}", interval=0.2)


def releases_started(fleet: Fleet) -> int:
    """As the group's leader (a live host) has it: a test may have just stopped hosts[0]."""
    return wait_for(fleet.leader, 30, "a leader").status()["state"]["releases_started"]


def refusals(fleet: Fleet, kind: str) -> list[dict[str, Any]]:
    return [e for h in fleet.hosts for e in h.events("channel_refused") if e.get("kind") == kind]


def sign_pointer(fleet: Fleet, version: str, *, now: float | None = None) -> dict[str, Any]:
    signed = signing.build_pointer("demo-app", "stable", version, now=time.time() if now is None else now)
    return signing.sign(signed, [signing.load_private_key(fleet.key_prefix.with_suffix(".key"))])


def write_pointer(fleet: Fleet, doc: dict[str, Any]) -> None:
    path = fleet.channel_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def test_the_leader_releases_what_the_channel_names_and_refuses_the_rest(make_fleet):
    fleet = make_fleet(3, extra=CHANNEL)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4", channel="stable")
    fleet.start()

    # Nobody starts it: the leader finds 2.4 on the channel and rolls it out.
    done = fleet.wait_release(ENDED, timeout=120)
    assert (done["state"], done["version"], done["channel"]) == ("current", "2.4", "stable"), json.dumps(done)
    for host in fleet.hosts:
        assert wait_for(lambda h=host: h.current() == "2.4", 10, f"{host.id} runs 2.4")
    leader, _ = leader_poll(fleet)
    (start,) = [e for e in leader.status()["state"]["history"] if e["op"] == "start"]
    assert start["detail"] == "start 2.4 (channel stable)" and start["actor"] == leader.id
    assert any(e["version"] == "2.4" for h in fleet.hosts for e in h.events("channel_release_started"))

    # An older version on the channel starts nothing.
    fleet.point_channel("2.3")
    seen = polls_later(fleet)
    assert seen["pointer"]["version"] == "2.3" and seen["decision"]["reason"] == "not_newer", seen
    assert releases_started(fleet) == 1

    # A pointer edited after signing (2.4 -> 2.5, and 2.5 is published) is refused, and logged.
    fleet.build_release("2.5")
    tampered = sign_pointer(fleet, "2.4")
    tampered["signed"]["version"] = "2.5"
    write_pointer(fleet, tampered)
    wait_for(lambda: refusals(fleet, "BadSignature"), 30, "a channel_refused event for the tampered pointer")
    event = refusals(fleet, "BadSignature")[0]
    assert event["mirror"] == f"http://{fleet.mirror_ip}:{fleet.mirror_port}" and event["channel"] == "stable"
    assert "does not verify" in event["cause"]
    seen = polls_later(fleet)
    assert "BadSignature" in seen["error"] and seen["pointer"] is None

    # An expired pointer to 2.5 is refused too.
    write_pointer(fleet, sign_pointer(fleet, "2.5", now=time.time() - 31 * 86400))
    wait_for(lambda: refusals(fleet, "ExpiredPointer"), 30, "a channel_refused event for the expired pointer")
    assert "expired" in polls_later(fleet)["error"]
    assert releases_started(fleet) == 1
    assert {h.current() for h in fleet.hosts} == {"2.4"}

    # Paused: a valid pointer to 2.5 starts nothing until the channel is resumed.
    paused = fleet.hosts[1].post("/v1/channel/pause")
    assert paused.status_code == 200 and paused.json()["changed"] is True, paused.text
    assert paused.json()["channel"]["paused"] is True
    again = fleet.hosts[2].post("/v1/channel/pause")
    assert again.status_code == 200 and again.json()["changed"] is False
    fleet.point_channel("2.5")
    seen = polls_later(fleet)
    assert seen["pointer"]["version"] == "2.5" and seen["decision"]["reason"] == "paused", seen
    assert releases_started(fleet) == 1 and fleet.hosts[0].status()["state"]["channel"]["paused"] is True
    resumed = fleet.hosts[0].post("/v1/channel/resume")
    assert resumed.status_code == 200 and resumed.json()["changed"] is True, resumed.text
    done = wait_for(lambda: (r := fleet.release_state()) and r["version"] == "2.5" and r["state"] in ENDED and r,
                    120, "2.5 released from the channel", interval=0.2)
    assert done["state"] == "current" and done["channel"] == "stable", json.dumps(done)
    assert releases_started(fleet) == 2


def test_a_version_that_rolled_back_is_not_retried_even_by_a_new_leader_until_a_newer_one(make_fleet):
    fleet = make_fleet(3, extra=CHANNEL)
    for host in fleet.hosts:  # a host-local incompatibility with one version, seen by a pre-flight check
        host.checks.append({"name": "libs-ok", "type": "command",
                            "command": f"test ! -e {host.dir}/incompatible-{{version}}", "retries": 1, "timeout": 5})
        host.dir.mkdir(parents=True, exist_ok=True)
        (host.dir / "incompatible-2.4").write_text("")
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4", channel="stable")
    fleet.start()

    done = fleet.wait_release(ENDED, timeout=120)
    assert (done["state"], done["version"], done["channel"]) == ("rolled_back", "2.4", "stable"), json.dumps(done)
    assert done["failure"]["step"] == "preflight:libs-ok"
    assert fleet.hosts[0].status()["state"]["channel"]["failed"] == ["2.4"]
    seen = polls_later(fleet)
    assert seen["pointer"]["version"] == "2.4" and seen["decision"]["reason"] == "failed_here", seen
    assert releases_started(fleet) == 1

    # A new leader knows it from the replicated state.
    old = wait_for(fleet.leader, 30, "a leader")
    old.kill(signal.SIGTERM)
    new = wait_for(lambda: (h := fleet.leader()) is not None and h is not old and h, 30, "a new leader")
    seen = polls_later(fleet)
    assert seen["decision"]["reason"] == "failed_here" and seen["term"] > 0
    assert releases_started(fleet) == 1
    old.start()  # back before the next release, else it would be refused as unreachable
    wait_for(lambda: old.status()["node"]["ready"] and fleet.leader(), 60, f"{old.id} back in the group")

    # A newer version on the channel is picked up.
    fleet.build_release("2.5", channel="stable")
    done = wait_for(lambda: (r := fleet.release_state(via=new)) and r["version"] == "2.5" and r["state"] in ENDED
                    and r, 120, "2.5 released from the channel", interval=0.2)
    assert done["state"] == "current" and done["channel"] == "stable", json.dumps(done)
    for host in fleet.hosts:
        assert wait_for(lambda h=host: h.current() == "2.5", 10, f"{host.id} runs 2.5")
    assert releases_started(fleet) == 2
