# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""AgentClient, AgentApiOptions and the waiter, against a real local HTTP server.

The server (tests/unit/plugins/fake_agent.py) stands in for the agent's HTTP API, its group
state changed by the agent's own state machine (fsm.apply); the real agent is exercised by
the integration and e2e suites.
"""

from __future__ import annotations

import socket

import pytest

from ansible_collections.quorum.rollout.plugins.module_utils.api_client import (
    AgentApiError,
    AgentApiOptions,
    AgentClient,
    AgentOptionError,
    clock,
    describe_release,
    wait_for,
)


def _closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class FakeClock(object):
    """now()/pause() pair for the waiter: time moves only when pause() is called."""

    def __init__(self):
        self.t = 1000.0
        self.pauses = []

    def now(self):
        return self.t

    def pause(self, seconds):
        self.pauses.append(seconds)
        self.t += seconds


# -- AgentClient -------------------------------------------------------------------


def test_status_returns_the_group_state(agent):
    status = AgentClient(agent.url + "/", agent.token).status()
    assert status["group"] == "intel-eu1a"
    assert status["state"]["current_version"] == "2.3"
    assert status["node"]["leader"] == "h2"
    assert agent.requests == [("GET", "/v1/status")]


def test_start_release_and_actions(agent):
    client = AgentClient(agent.url, agent.token)
    answer = client.start_release("2.4")
    assert answer["changed"] is True
    assert answer["release"]["version"] == "2.4"
    assert client.start_release("2.4")["changed"] is False
    assert client.action("pause")["release"]["state"] == "paused"
    assert client.action("pause")["changed"] is False
    assert client.action("resume")["changed"] is True
    ops = [e["op"] for e in client.events()]
    assert ops[0] == "lead" and ops[1:3] == ["start", "pause"], "the history opens with the leader's announcement"


def test_unknown_action_is_refused_before_any_request(agent):
    with pytest.raises(ValueError, match="unknown release action 'stop'"):
        AgentClient(agent.url, agent.token).action("stop")
    assert agent.requests == []


def test_401_names_the_url_and_the_options_to_check(agent):
    with pytest.raises(AgentApiError) as err:
        AgentClient(agent.url, "wrong").status()
    assert err.value.status == 401
    assert not err.value.transient
    assert str(err.value) == (
        "401 from GET %s/v1/status: bad API token (check api_token / api_token_file)" % agent.url
    )


def test_401_without_token(agent):
    with pytest.raises(AgentApiError, match="401 from GET .*: missing bearer token \\(check api_token / api_token_file\\)"):
        AgentClient(agent.url, None).status()


def test_400_names_the_field(agent):
    client = AgentClient(agent.url, agent.token)
    with pytest.raises(AgentApiError) as err:
        client._request("POST", "/v1/releases", {"version": ""})  # pylint: disable=protected-access
    assert err.value.status == 400
    assert err.value.detail == {"field": "version"}
    assert "(field: version)" in str(err.value)


def test_409_carries_the_detail(agent):
    client = AgentClient(agent.url, agent.token)
    client.start_release("2.4")
    with pytest.raises(AgentApiError) as err:
        client.start_release("2.5")
    assert err.value.status == 409
    assert err.value.detail == {"version": "2.4", "state": "running_old_release"}
    assert "release state: running_old_release" in str(err.value)


def test_404_for_an_action_without_release(agent):
    with pytest.raises(AgentApiError) as err:
        AgentClient(agent.url, agent.token).action("abort")
    assert err.value.status == 404
    assert str(err.value).startswith("404 from POST %s/v1/releases/current/abort: no release" % agent.url)


def test_503_is_transient(agent):
    agent.group.unavailable = 1
    with pytest.raises(AgentApiError) as err:
        AgentClient(agent.url, agent.token).status()
    assert err.value.status == 503
    assert err.value.transient
    assert "retry later" in str(err.value)


def test_connection_refused_is_transient_and_says_what_to_check():
    url = "http://127.0.0.1:%d" % _closed_port()
    with pytest.raises(AgentApiError) as err:
        AgentClient(url, "t", timeout=2).status()
    assert err.value.status is None
    assert err.value.transient
    assert str(err.value).startswith("cannot reach GET %s/v1/status: " % url)
    assert "is the agent running, and is api_url right?" in str(err.value)


def test_a_non_json_answer_is_reported():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Plain(BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):  # pylint: disable=arguments-differ
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(AgentApiError, match="answer is not JSON"):
            AgentClient("http://127.0.0.1:%d" % server.server_address[1], "t").status()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("url, message", [
    (None, "api_url is not set: pass api_url or set QUORUM_ROLLOUT_API_URL"),
    ("127.0.0.1:7200", "api_url must start with http:// or https://"),
])
def test_bad_url_is_refused(url, message):
    with pytest.raises(AgentOptionError, match=message):
        AgentClient(url, "t")


# -- AgentApiOptions ---------------------------------------------------------------


def test_options_token_precedence(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {"QUORUM_ROLLOUT_API_TOKEN": "from-env", "QUORUM_ROLLOUT_API_URL": "http://127.0.0.1:1"}

    opts = AgentApiOptions.from_dict({"api_token": "direct"}, env=env)
    assert opts.token() == "direct"
    assert opts.url() == "http://127.0.0.1:1"
    assert AgentApiOptions.from_dict({"api_token_file": str(token_file)}, env=env).token() == "from-file"
    assert AgentApiOptions.from_dict({}, env=env).token() == "from-env"
    assert AgentApiOptions.from_dict({"api_url": "http://x:2"}, env=env).url() == "http://x:2"


@pytest.mark.parametrize("options, message", [
    ({"api_token": "a", "api_token_file": "/f"}, "mutually exclusive"),
    ({"api_token_file": "/nonexistent/token"}, "cannot read api_token_file /nonexistent/token: No such file"),
    ({}, "no API token: set api_token or api_token_file"),
])
def test_options_token_errors(options, message):
    with pytest.raises(AgentOptionError, match=message):
        AgentApiOptions.from_dict(options, env={}).token()


def test_options_empty_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(AgentOptionError, match="is empty"):
        AgentApiOptions.from_dict({"api_token_file": str(path)}, env={}).token()


def test_options_build_a_working_client(agent, token_file):
    opts = AgentApiOptions.from_dict({"api_url": agent.url, "api_token_file": token_file, "timeout": 3}, env={})
    client = opts.client()
    assert client.timeout == 3
    assert client.status()["group"] == "intel-eu1a"


def test_options_from_plugin_and_module():
    class Plugin(object):
        def get_option(self, name):
            return {"api_url": "http://p:1", "api_token": "t"}.get(name)

    class Module(object):
        params = {"api_url": "http://m:1", "api_token": "t", "timeout": 5.0}

    assert AgentApiOptions.from_plugin(Plugin()).client().url == "http://p:1"
    assert AgentApiOptions.from_module(Module()).client().timeout == 5.0
    with pytest.raises(KeyError):
        AgentApiOptions.from_module(Module()).get("version")


# -- clock / wait_for ----------------------------------------------------------------


def test_clock_checks_at_once_then_every_sleep_and_at_the_deadline():
    fake = FakeClock()
    assert list(clock(5, 2, now=fake.now, pause=fake.pause)) == [0.0, 2.0, 4.0, 5.0]
    assert fake.pauses == [2, 2, 1]


def test_clock_with_zero_timeout_checks_once():
    fake = FakeClock()
    assert list(clock(0, 2, now=fake.now, pause=fake.pause)) == [0.0]


class ScriptedClient(object):
    """status() plays a script of answers (dicts) and errors (AgentApiError)."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def status(self):
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, Exception):
            raise item
        return item


def test_wait_for_retries_transient_errors_until_the_predicate_holds():
    fake = FakeClock()
    client = ScriptedClient([
        AgentApiError(None, "connection refused"),
        AgentApiError(503, "no leader"),
        {"n": 1},
        {"n": 2},
    ])
    ok, state = wait_for(client, lambda s: s["n"] == 2, 60, 1, now=fake.now, pause=fake.pause)
    assert ok and state == {"n": 2}
    assert client.calls == 4


def test_wait_for_returns_the_partial_state_on_timeout():
    fake = FakeClock()
    client = ScriptedClient([{"n": 1}, AgentApiError(503, "no leader")])
    ok, state = wait_for(client, lambda s: False, 10, 3, now=fake.now, pause=fake.pause)
    assert not ok
    assert state == {"n": 1}
    assert fake.t == 1010.0


def test_wait_for_raises_other_errors_at_once():
    fake = FakeClock()
    client = ScriptedClient([AgentApiError(401, "bad token")])
    with pytest.raises(AgentApiError, match="401"):
        wait_for(client, lambda s: True, 10, 1, now=fake.now, pause=fake.pause)
    assert client.calls == 1


def test_wait_for_raises_the_last_error_when_the_agent_never_answered():
    fake = FakeClock()
    client = ScriptedClient([AgentApiError(None, "connection refused")])
    with pytest.raises(AgentApiError, match="connection refused"):
        wait_for(client, lambda s: True, 4, 1, now=fake.now, pause=fake.pause)
    assert client.calls == 5


def test_wait_for_against_the_agent_reaches_current(agent):
    client = AgentClient(agent.url, agent.token)
    client.start_release("2.4")
    agent.group.unavailable = 2
    ok, status = wait_for(client, lambda s: s["state"]["release"]["state"] == "current", 10, 0.01)
    assert ok
    assert status["state"]["current_version"] == "2.4"


# -- describe_release ------------------------------------------------------------------


def test_describe_release():
    assert describe_release("g", None) == "group g: no release"
    rel = {"version": "2.4", "state": "rolling", "batch": 1, "batches": [["a"], ["b"], ["c"]]}
    assert describe_release("g", rel) == "group g: release 2.4 rolling (batch 2/3)"
    rel = {"version": "2.5", "state": "rolled_back",
           "failure": {"host": "h7", "step": "preflight:health", "reason": "HTTP 500"}}
    assert describe_release("g", rel) == "group g: release 2.5 rolled_back: host h7 failed at preflight:health: HTTP 500"
    assert describe_release("g", {"version": "1", "state": "paused", "paused_from": "verified"}) == (
        "group g: release 1 paused (paused from verified)")
    rel = {"version": "2.4", "state": "rolling", "batch": 0, "batches": [["a"], ["b"]],
           "hold": {"reason": "bake", "until": 1.0, "text": "baking until 2026-12-02T07:10:00Z"}}
    assert describe_release("g", rel) == "group g: release 2.4 rolling (batch 1/2) (baking until 2026-12-02T07:10:00Z)"
    rel = {"version": "2.4", "state": "current", "hold": None,
           "failed_within_budget": [{"host": "h3", "step": "preflight:health", "reason": "HTTP 500"}]}
    assert describe_release("g", rel) == "group g: release 2.4 current; failed within the budget (reverted alone): h3"


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path):
    from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import self_signed

    pytest.importorskip("cryptography")
    return self_signed(str(tmp_path))


def test_https_with_ca_path(tls_files):
    from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent

    with FakeAgent(tls=tls_files) as tls_agent:
        assert tls_agent.url.startswith("https://127.0.0.1:")
        client = AgentClient(tls_agent.url, tls_agent.token, ca_path=tls_files[0])
        assert client.status()["group"] == "intel-eu1a"

        with pytest.raises(AgentApiError) as err:
            AgentClient(tls_agent.url, tls_agent.token).status()
        assert err.value.status is None
        assert not err.value.transient
        assert "check ca_path" in str(err.value)


def test_validate_certs_false_accepts_a_certificate_nothing_vouches_for(tls_files):
    from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent

    with FakeAgent(tls=tls_files) as tls_agent:
        with pytest.raises(AgentApiError, match="validate_certs=false skips the check"):
            AgentApiOptions.from_dict({"api_token": tls_agent.token}, env={}).client(url=tls_agent.url).status()
        options = AgentApiOptions.from_dict({"api_token": tls_agent.token, "validate_certs": False}, env={})
        assert options.client(url=tls_agent.url).status()["group"] == "intel-eu1a"
        # The host name is not checked either (the certificate names 127.0.0.1 only).
        assert AgentClient(tls_agent.url.replace("127.0.0.1", "localhost"), tls_agent.token,
                           validate_certs=False).status()["group"] == "intel-eu1a"
        with pytest.raises(AgentApiError, match="TLS error"):
            AgentClient(tls_agent.url.replace("127.0.0.1", "localhost"), tls_agent.token,
                        ca_path=tls_files[0]).status()


def test_unreadable_ca_path_is_an_option_error(tmp_path):
    with pytest.raises(AgentOptionError, match="cannot load ca_path"):
        AgentClient("https://127.0.0.1:1", "t", ca_path=str(tmp_path / "missing.pem"))


def test_a_command_answered_202_is_followed_until_it_commits(agent):
    client = AgentClient(agent.url, agent.token)
    agent.group.pending_polls = 3
    answer = client.submit("/v1/releases", {"version": "2.4"}, sleep=0.01)
    assert answer["changed"] is True and answer["release"]["version"] == "2.4"
    posts = agent.posts()
    assert posts == ["/v1/releases"], "sent once: followed by its operation id, never resent blindly"
    ops = [path for method, path in agent.requests if path.startswith("/v1/operations/")]
    assert len(ops) == 3 and len(set(ops)) == 1


def test_a_command_answered_202_that_commits_as_a_no_op_is_not_changed(agent):
    client = AgentClient(agent.url, agent.token)
    client.start_release("2.4")
    agent.group.pending_polls = 1
    answer = client.submit("/v1/releases", {"version": "2.4"}, sleep=0.01)
    assert answer["changed"] is False and "2.4" in answer["reason"], answer


def test_a_pending_command_rejected_later_raises_409(agent):
    client = AgentClient(agent.url, agent.token)
    client.start_release("2.4")
    agent.group.pending_polls = 1
    with pytest.raises(AgentApiError) as err:
        client.action("retry")  # refused by the group once it is committed: the release is not rolled back
    assert err.value.status == 409 and "retry needs a rolled_back release" in str(err.value)


def test_a_command_never_committed_names_its_operation(agent):
    client = AgentClient(agent.url, agent.token)
    agent.group.pending_polls = 10 ** 6
    with pytest.raises(AgentApiError) as err:
        client.submit("/v1/releases", {"version": "2.4"}, follow=0.2, sleep=0.05)
    assert err.value.status is None and not err.value.transient
    assert "may still commit" in str(err.value) and err.value.detail["operation_id"] in str(err.value)


def test_actions_name_the_release_they_mean(agent):
    client = AgentClient(agent.url, agent.token)
    release = client.start_release("2.4")["release"]
    with pytest.raises(AgentApiError) as err:
        client.action("pause", "2.4#99")
    assert err.value.status == 409
    assert client.action("pause", release["id"])["changed"] is True
