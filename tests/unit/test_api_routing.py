"""The agent API without sockets: `api.route` answers requests of a real `Agent` whose group member
is in-process (tests/support/inproc.py: the real state machine, controllable leadership and
proposal outcomes). A start asks a real local HTTP mirror (conftest.make_mirror) for the signed
manifest, as the agent does before it commits anything.

Not here: the socket side (framing, keep-alive, TLS, connection limits, the peer artifact
stream), which tests/integration/test_rollout.py and test_artifacts.py exercise.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout import api, fsm
from quorum_rollout.agent import Agent

from tests.support.inproc import GROUP, TOKEN, InProcGroup, member_config, publish

MEMBERS = ["h1", "h2", "h3"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Client:
    def __init__(self, agent: Agent, group: InProcGroup) -> None:
        self.agent, self.group = agent, group

    def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> api.Reply:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        sent = dict(AUTH if headers is None else headers)
        if data and "Content-Length" not in sent:
            sent["Content-Length"] = str(len(data))
        return api.route(self.agent, method, path, sent, io.BytesIO(data))

    def release(self, version: str = "2.4") -> api.Reply:
        return self.call("POST", "/v1/releases", {"version": version})


@pytest.fixture
def client(tmp_path: Path, mirror: Any) -> Iterator[Client]:
    group = InProcGroup(GROUP, MEMBERS)
    term = group.elect("h2")
    group.nodes["h2"].propose("lead", term=term)
    agent = Agent(member_config(tmp_path, "h1", MEMBERS, [mirror.url]), node=group.nodes["h1"])
    try:
        yield Client(agent, group)
    finally:
        agent.stop()


def open_first_batch(client: Client) -> None:
    """The leader's (h2's) steps up to batch 1 (the artifact is never fetched here)."""
    release = client.group.state["release"]["id"]
    artifact = {"sha256": "a" * 64, "size": 1, "file": "f", "manifest": "{}", "mirror": "m"}
    for op, args in (("manifest", {"artifact": artifact}), ("downloaded", {}), ("verified", {}), ("open_batch", {})):
        assert client.group.nodes["h2"].propose(op, release=release, **args)["code"] == "accepted"


def report(client: Client, host: str) -> None:
    release = client.group.state["release"]["id"]
    result = client.group.nodes[host].propose("host_done", release=release, host=host, phase="install", ok=True,
                                              step="done")
    assert result["code"] == "accepted", result


def error(reply: api.Reply) -> tuple[int, str, dict[str, Any]]:
    return reply.status, reply.body["error"], reply.body["detail"]


# ------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}])
def test_a_request_without_a_bearer_token_is_401_and_says_where_the_token_is(client: Client,
                                                                               headers: dict[str, str]) -> None:
    status, message, detail = error(client.call("GET", "/v1/status", headers=headers))
    assert (status, message) == (401, "missing bearer token") and "api.token_file" in detail["hint"]


def test_a_wrong_token_is_401_even_for_a_path_that_does_not_exist(client: Client) -> None:
    for path in ("/v1/status", "/metrics", "/v1/nothing"):
        status, message, _ = error(client.call("GET", path, headers={"Authorization": "Bearer not-the-token"}))
        assert (status, message) == (401, "bad API token")


# --------------------------------------------------------------------------------- paths and methods


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/nothing"), ("GET", "/v1/releases"),
                                              ("DELETE", "/v1/status"), ("POST", "/metrics"),
                                              ("GET", "/v1/releases/current/pause"), ("POST", "/v1/members/h3")])
def test_an_unknown_path_or_a_method_a_path_does_not_take_is_404_naming_both(client: Client, method: str,
                                                                             path: str) -> None:
    status, message, _ = error(client.call(method, path, {} if method == "POST" else None))
    assert (status, message) == (404, f"no such endpoint: {method} {path}")


def test_an_unknown_action_is_404_listing_the_actions(client: Client) -> None:
    status, message, _ = error(client.call("POST", "/v1/releases/current/restart"))
    assert status == 404 and "['abort', 'pause', 'resume', 'retry']" in message
    status, message, _ = error(client.call("POST", "/v1/channel/skip"))
    assert status == 404 and "pause or resume" in message


def test_a_query_string_does_not_change_the_route(client: Client) -> None:
    assert client.call("GET", "/v1/events?limit=3").status == 200


# ------------------------------------------------------------------------------------------ bodies


@pytest.mark.parametrize(("raw", "headers", "status", "field"), [
    (b"{not json", {}, 400, "body"),
    (b"[1, 2]", {}, 400, "body"),
    (b'{"version": "2.4", "force": true}', {}, 400, "force"),
    (b'{"version": "2.4", "allow_downgrade": "yes"}', {}, 400, "allow_downgrade"),
    (b'{"version": "2.4", "operation_id": "short"}', {}, 400, "operation_id"),
    (b'{"version": "../etc"}', {}, 400, "version"),
    (b'{}', {}, 400, "version"),
    (b'{"version": "2.4"}', {"Content-Length": "twelve"}, 400, "Content-Length"),
    (b'{"version": "2.4"}', {"Content-Length": "18", "Transfer-Encoding": "chunked"}, 400, "Transfer-Encoding"),
    (b'{"version": "2.4"}', {"Content-Length": "40"}, 400, "body"),  # the body ended early
])
def test_a_malformed_body_is_400_naming_the_field(client: Client, raw: bytes, headers: dict[str, str], status: int,
                                                  field: str) -> None:
    reply = client.call("POST", "/v1/releases", raw=raw, headers={**AUTH, **headers})
    assert reply.status == status and reply.body["detail"]["field"] == field, reply.body
    assert client.group.state["release"] is None


def test_a_body_over_the_limit_is_413(client: Client) -> None:
    reply = client.call("POST", "/v1/releases", raw=b" " * (api.MAX_BODY + 1))
    assert reply.status == 413 and str(api.MAX_BODY) in reply.body["error"]


def test_a_new_member_without_an_address_is_400_naming_it(client: Client) -> None:
    reply = client.call("POST", "/v1/members", {"id": "h4", "api_url": "http://127.0.0.1:7204"})
    assert reply.status == 400 and reply.body["detail"]["field"] == "address"


# ------------------------------------------------------------------------------------------ starts


def test_a_start_is_201_committed_and_the_same_start_again_is_200_unchanged(client: Client) -> None:
    reply = client.release()
    assert reply.status == 201 and reply.body["changed"] is True
    assert reply.body["operation"]["status"] == "committed"
    assert reply.body["release"]["version"] == "2.4" and reply.body["release"]["members"] == MEMBERS
    again = client.release()
    assert again.status == 200 and again.body["changed"] is False and "already in progress" in again.body["reason"]
    assert client.group.state["releases_started"] == 1


def test_a_start_of_another_version_while_one_runs_is_409(client: Client, mirror: Any) -> None:
    publish(mirror, "2.5")
    client.release()
    status, message, detail = error(client.release("2.5"))
    assert status == 409 and "release 2.4 is in progress" in message and detail["version"] == "2.4"


def test_a_start_of_an_unpublished_version_is_409_and_nothing_is_committed(client: Client) -> None:
    status, _, detail = error(client.release("9.9"))
    assert status == 409 and detail["reason"] == "not_published"
    assert client.group.state["release"] is None and not client.group.accepted("start")


def test_a_start_when_no_mirror_answers_is_503(client: Client, mirror: Any) -> None:
    mirror.behave("/demo-app/2.4/manifest.json", status=500)
    status, _, detail = error(client.release())
    assert status == 503 and detail["reason"] == "mirrors_unavailable"
    assert client.group.state["release"] is None


def test_a_start_lower_than_the_highest_version_is_400_from_the_state_machine(client: Client) -> None:
    client.release()
    open_first_batch(client)
    for batch in client.group.state["release"]["batches"]:
        report(client, batch[0])
    assert client.group.state["highest_version"] == "2.4"
    status, message, _ = error(client.release("2.3"))
    assert status == 400 and "rollback protection" in message


# ---------------------------------------------------------------------------------- commit outcomes


def test_a_command_the_group_did_not_take_is_503_nothing_changed(client: Client) -> None:
    client.group.depose()
    status, message, detail = error(client.call("POST", "/v1/channel/pause", {"operation_id": "op-00000001"}))
    assert status == 503 and "nothing changed" in message and detail["operation_id"] == "op-00000001"
    assert client.call("GET", "/v1/operations/op-00000001").status == 404  # not kept: nothing to follow


def test_a_command_whose_commit_is_unknown_is_202_and_followed_by_its_operation_id(client: Client) -> None:
    client.group.fail_next("channel", "late")
    reply = client.call("POST", "/v1/channel/pause", {"operation_id": "op-00000002"})
    assert reply.status == 202 and reply.body["changed"] is None
    assert "GET /v1/operations/op-00000002" in reply.body["reason"]
    assert client.call("GET", "/v1/operations/op-00000002").body["status"] == "pending"
    client.group.deliver_late()
    followed = client.call("GET", "/v1/operations/op-00000002")
    assert followed.status == 200 and followed.body["status"] == "committed"
    assert fsm.channel_record(client.group.state)["paused"] is True


def test_an_operation_nobody_submitted_is_404(client: Client) -> None:
    status, message, _ = error(client.call("GET", "/v1/operations/never-sent"))
    assert status == 404 and "unknown here" in message


# ---------------------------------------------------------------------------------------- actions


def test_an_action_without_any_release_is_404(client: Client) -> None:
    for action in ("pause", "resume", "abort", "retry"):
        status, message, _ = error(client.call("POST", f"/v1/releases/current/{action}"))
        assert (status, message) == (404, "the group has no release yet")


def test_each_action_answers_its_outcome(client: Client) -> None:
    client.release()

    def act(action: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        reply = client.call("POST", f"/v1/releases/current/{action}", body)
        return reply.status, reply.body.get("changed", reply.body.get("error"))

    assert act("resume") == (200, False)  # not paused: nothing to do
    assert act("pause") == (200, True)
    assert act("pause") == (200, False)
    assert act("retry")[0] == 409  # only a rolled back release is retried
    assert act("resume") == (200, True)
    assert act("abort", {"release": "2.3#1"})[0] == 409  # names another release
    assert act("abort", {"reason": "bad week"}) == (200, True)
    assert act("abort") == (200, False)
    assert act("resume")[0] == 409
    assert client.group.state["release"]["state"] == fsm.ABORTED
    assert client.group.history(op="abort")[0]["detail"] == "bad week"


def test_the_channel_pause_answers_the_channel_record(client: Client) -> None:
    reply = client.call("POST", "/v1/channel/pause")
    assert reply.status == 200 and reply.body["changed"] is True and reply.body["channel"]["paused"] is True


def test_removing_a_member_that_is_not_one_is_200_unchanged(client: Client) -> None:
    reply = client.call("DELETE", "/v1/members/h9")
    assert reply.status == 200 and reply.body["changed"] is False and "not a member" in reply.body["reason"]


# --------------------------------------------------------------------------------- reads and metrics


def test_status_names_the_leader_and_the_committed_state(client: Client) -> None:
    reply = client.call("GET", "/v1/status")
    assert reply.status == 200
    assert reply.body["group"] == GROUP and reply.body["node"]["id"] == "h1"
    assert reply.body["node"]["role"] == "follower" and reply.body["node"]["leader"] == "h2"
    assert reply.body["state"]["leader"]["node"] == "h2"


def test_the_batch_metric_is_1_based_while_rolling_and_0_before(client: Client) -> None:
    """The reported bug: quorum_rollout_release_batch read 0 in batch 1, then 2, 3..."""
    def batch_metric() -> float:
        reply = client.call("GET", "/metrics")
        assert reply.status == 200 and reply.content_type.startswith("text/plain")
        return next(float(line.rsplit(" ", 1)[1]) for line in reply.body.splitlines()
                    if line.startswith("quorum_rollout_release_batch{"))

    assert batch_metric() == 0
    client.release()
    open_first_batch(client)
    assert client.group.state["release"]["batches"] == [["h1"], ["h3"], ["h2"]]
    assert batch_metric() == 1
    report(client, "h1")
    assert batch_metric() == 2


# ----------------------------------------------------------------------------- the status page


def test_the_status_page_opens_with_its_key_or_the_bearer_token_and_the_key_opens_nothing_else(client: Client):
    from quorum_rollout import page

    key = page.page_key(TOKEN)
    reply = client.call("GET", f"/ui/{key}", headers={})
    assert reply.status == 200 and reply.content_type.startswith("text/html")
    assert f"Group {GROUP}" in reply.body and all(m in reply.body for m in MEMBERS)
    assert client.call("GET", "/ui", headers=AUTH).status == 200
    wrong = key[:-1] + ("1" if key[-1] == "0" else "0")
    for path in ("/ui", f"/ui/{wrong}", "/ui/", f"/ui/{key}/x", f"/ui/{TOKEN}"):
        assert client.call("GET", path, headers={}).status == 401, path
    # The page key is not an API token: it opens no /v1 endpoint and no /metrics.
    for path in ("/v1/status", "/v1/events", "/metrics"):
        assert client.call("GET", path, headers={"Authorization": f"Bearer {key}"}).status == 401, path
    assert client.call("POST", f"/ui/{key}", headers={}).status == 401


def test_the_page_escapes_what_it_shows_and_loads_nothing():
    from quorum_rollout import page

    doc = {"group": "g<1>", "node": {"id": "h1", "role": "leader", "term": 2, "leader": "h1", "ready": True,
                                     "has_quorum": True},
           "members": [{"id": "h1", "status": "active", "reachable": True, "unreachable_since": None,
                        "last_contact_seconds": 0.0}],
           "state": {"current_version": "2.3", "history": [{"time": 10.0, "actor": "h1", "op": "fail", "to": "x",
                                                            "detail": "<script>alert(1)</script>"}],
                     "release": {"id": "2.4#1", "version": "2.4", "previous_version": "2.3", "state": "rolling_back",
                                 "batch": 0, "batches": [["h1"]], "started_at": 1.0, "updated_at": 10.0,
                                 "failure": {"host": "h1", "step": "preflight", "reason": "<img src=x>"},
                                 "hosts": {"h1": {"status": "revert_pending", "version": "2.4", "step": None,
                                                  "detail": None}}}}}
    html = page.render(doc, now=20.0)
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html and "g&lt;1&gt;" in html
    assert "src=" not in html.replace("&lt;img src=x&gt;", "") and "http" not in html.replace("http-equiv", "")
    assert "default-src 'none'" in html and "0/1 hosts reverted" in html
