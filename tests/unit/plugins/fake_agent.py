# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A stand-in for the quorum.rollout agent's HTTP API, for the plugins' unit tests.

It serves the documented API (docs/api.md) over real HTTP on 127.0.0.1, so the plugins' client
code, error handling and waiting are exercised for real. The group's state is changed only by the
agent's own state machine, ``quorum_rollout.fsm.apply`` (this checkout's agent/, put on sys.path by
conftest.py: fsm is pure and needs nothing installed), with the agent's outcome codes and reasons;
what is left out is Raft, artifacts and installs, which tests/integration and tests/e2e exercise.

The release advances one step each time its status is read (``GET /v1/status``), never with the
clock, so tests are deterministic and need no sleeps: the plugins' own polling drives the group to
its end. Each step is the command a leader or a member would commit (downloaded, verified,
open_batch, host_done for each host of the open batch or rollback batch).
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from quorum_rollout import contract, fsm

LEADER = "h2"  # the member that leads the fake group (and so is updated last)


class FakeGroup(object):
    """One group's replicated state, changed by ``fsm.apply`` only, and the test's controls."""

    def __init__(self, group="intel-eu1a", members=("h1", "h2", "h3"), current_version="2.3", node_id="h1"):
        self.lock = threading.RLock()
        self.members = list(members)
        self.node_id = node_id
        self.term = 3
        self.state = fsm.initial_state(group)
        # The group ran current_version before (and keeps no release record of it).
        self.state.update(current_version=current_version, highest_version=current_version)
        self.commands = 0
        # Its first leader seeded the replicated membership.
        self.apply("lead", members=dict((m, {"address": "10.0.0.%d:7100" % (i + 1),
                                             "api_url": "http://10.0.0.%d:7200" % (i + 1)})
                                        for i, m in enumerate(self.members)))
        # Test controls
        self.fail = None  # (host, step, reason): that host fails when its batch rolls
        self.frozen = False  # when True the release never advances
        self.unavailable = 0  # answer 503 to the next N requests
        self.pending_polls = 0  # answer the next command 202 (pending); it commits after N operation polls
        self.operations = {}  # operation id -> [polls left, the command to apply]
        self.committed = {}  # operation id -> the answer the command got

    # -- the replicated state ----------------------------------------------------------
    @property
    def group(self):
        return self.state["group"]

    @group.setter
    def group(self, name):
        self.state["group"] = name

    @property
    def release(self):
        return self.state["release"]

    @property
    def highest_version(self):
        return self.state["highest_version"]

    @highest_version.setter
    def highest_version(self, version):
        self.state["highest_version"] = version

    def apply(self, op, actor=LEADER, **args):
        """Commit one command, as the group's log would: returns fsm's Outcome."""
        self.commands += 1
        command = dict(args, op=op, id="fake-%d" % self.commands, term=self.term, time=time.time(), actor=actor)
        self.state, outcome = fsm.apply(self.state, command)
        return outcome

    def step(self, op, actor=LEADER, **args):
        """A leader's or member's step: the state machine must take it."""
        outcome = self.apply(op, actor, release=self.release["id"], **args)
        if outcome.code != "accepted":
            raise AssertionError("fake agent: %s refused: %s" % (op, outcome))

    def status(self):
        return {
            "group": self.group,
            "node": {"id": self.node_id, "role": "follower", "leader": LEADER, "term": self.term, "ready": True,
                     "has_quorum": True, "registry": {"ok": True, "error": None}},
            "members": [dict(rec, id=m, reachable=True, unreachable_since=None, last_contact_seconds=None)
                        for m, rec in sorted(self.state["members"].items())],
            "state": copy.deepcopy(self.state),
        }

    # -- progress: one step per status read ------------------------------------------
    def tick(self):
        for member, rec in sorted(self.state["members"].items()):  # joins and removals complete
            if rec["status"] == fsm.JOINING and not self.frozen:
                self.apply("member_ready", member, host=member, version=self.state["current_version"])
            elif rec["status"] == fsm.LEAVING and not self.frozen:
                self.apply("member_removed", member=member)
        rel = self.release
        if self.frozen or rel is None or rel["state"] in contract.TERMINAL or rel["state"] == contract.PAUSED:
            return
        state = rel["state"]
        if state == contract.RUNNING_OLD:
            self.step("downloaded", artifact={
                "sha256": "ab" * 32, "size": 1024, "file": "app-%s.tar.gz" % rel["version"],
                "manifest": {"name": "app", "version": rel["version"]}, "mirror": "https://mirror.example"})
        elif state == contract.DOWNLOADED:
            self.step("verified")
        elif state == contract.VERIFIED:
            self.step("open_batch")
        elif state == contract.ROLLING:
            for host in fsm.open_batch_hosts(self.state):
                if self.fail and self.fail[0] == host:
                    self.step("host_done", host, host=host, phase="install", ok=False, step=self.fail[1],
                              reason=self.fail[2])
                    return
                self.step("host_done", host, host=host, phase="install", ok=True, step="done")
        elif state == contract.ROLLING_BACK:
            for host in fsm.open_batch_hosts(self.state):
                self.step("host_done", host, host=host, phase="revert", ok=True, step="done")

    # -- commands: (HTTP status, answer) as the agent's API gives them ---------------------
    def answer(self, outcome, created=False):
        status = contract.HTTP_STATUS[outcome.code]
        rel = copy.deepcopy(self.release)
        if status >= 400:
            return status, {"error": outcome.reason,
                            "detail": {"version": rel and rel["version"], "state": rel and rel["state"]}}
        if status == 201 and not created:
            status = 200
        return status, {"changed": outcome.code == "accepted", "reason": outcome.reason, "release": rel}

    def start(self, version, allow_downgrade):
        outcome = self.apply("start", version=version, members=self.members, allow_downgrade=allow_downgrade)
        return self.answer(outcome, created=True)

    def action(self, name, release=None, reason=None):
        if self.release is None:
            return 404, {"error": "no release", "detail": {}}
        args = dict((k, v) for k, v in (("release", release), ("reason", reason)) if v is not None)
        return self.answer(self.apply(name, **args))

    def member_add(self, member):
        return self.answer(self.apply("member_add", member=member), created=True)

    def member_remove(self, member):
        return self.answer(self.apply("member_remove", member=member))

    def submit(self, op_id, command):
        """Run the command now, or (pending_polls > 0) answer 202 and run it after that many polls."""
        if self.pending_polls and op_id:
            self.operations[op_id] = [self.pending_polls, command]
            self.pending_polls = 0
            return 202, {"changed": None, "operation": {"id": op_id, "status": "pending"},
                         "release": copy.deepcopy(self.release)}
        status, answer = command()
        if op_id and status < 400:
            self.committed[op_id] = answer
        return status, answer

    def operation(self, op_id):
        if op_id in self.operations:
            entry = self.operations[op_id]
            entry[0] -= 1
            if entry[0] > 0:
                return 200, {"id": op_id, "status": "pending"}
            del self.operations[op_id]
            status, answer = entry[1]()
            if status >= 400:
                return 200, {"id": op_id, "status": "rejected", "reason": answer["error"]}
            self.committed[op_id] = answer
        if op_id in self.committed:  # as an agent that applied it since it started
            answer = self.committed[op_id]
            return 200, {"id": op_id, "status": "committed", "changed": answer.get("changed"),
                         "reason": answer.get("reason")}
        return 404, {"error": "operation %r is unknown here" % op_id, "detail": {"operation_id": op_id}}


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake-quorum-rollout-agent"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass

    def _send(self, status, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method):
        agent = self.server.agent
        group = agent.group
        agent.requests.append((method, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        header = self.headers.get("Authorization")
        if not header:
            return self._send(401, {"error": "missing bearer token", "detail": {"hint": "send a bearer token"}})
        if header != "Bearer %s" % agent.token:
            return self._send(401, {"error": "bad API token", "detail": {"hint": "use the agent's api.token_file"}})
        with group.lock:
            if group.unavailable > 0:
                group.unavailable -= 1
                return self._send(503, {"error": "node not ready: no leader", "detail": {"leader": None}})
            if method == "GET" and self.path == "/v1/status":
                group.tick()
                return self._send(200, group.status())
            if method == "GET" and self.path == "/v1/events":
                return self._send(200, {"events": copy.deepcopy(group.state["history"])})
            if method == "GET" and self.path == "/metrics":
                return self._send(200, b"quorum_rollout_up 1\n", "text/plain; version=0.0.4")
            if method == "GET" and self.path.startswith("/v1/operations/"):
                return self._send(*group.operation(self.path[len("/v1/operations/"):]))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._send(400, {"error": "body is not JSON", "detail": {"field": "body"}})
            if not isinstance(body, dict):
                return self._send(400, {"error": "body must be a JSON object", "detail": {"field": "body"}})
            if method == "POST" and self.path == "/v1/releases":
                if not contract.valid_version(body.get("version")):
                    return self._send(400, {"error": "version must be a version string such as '2.4'",
                                            "detail": {"field": "version"}})
                return self._send(*group.submit(body.get("operation_id"), lambda: group.start(
                    body["version"], bool(body.get("allow_downgrade")))))
            if method == "POST" and self.path == "/v1/members":
                member = dict((k, body.get(k)) for k in ("id", "address", "api_url"))
                return self._send(*group.submit(body.get("operation_id"), lambda: group.member_add(member)))
            if method == "DELETE" and self.path.startswith("/v1/members/"):
                name = self.path[len("/v1/members/"):]
                return self._send(*group.submit(body.get("operation_id"), lambda: group.member_remove(name)))
            prefix = "/v1/releases/current/"
            if method == "POST" and self.path.startswith(prefix) and self.path[len(prefix):] in contract.ACTIONS:
                name = self.path[len(prefix):]
                return self._send(*group.submit(body.get("operation_id"), lambda: group.action(
                    name, body.get("release"), body.get("reason"))))
        return self._send(404, {"error": "no such endpoint: %s %s" % (method, self.path),
                                "detail": {"path": self.path}})

    def do_GET(self):  # pylint: disable=invalid-name
        self._handle("GET")

    def do_POST(self):  # pylint: disable=invalid-name
        self._handle("POST")

    def do_DELETE(self):  # pylint: disable=invalid-name
        self._handle("DELETE")


class FakeAgent(object):
    """``with FakeAgent() as agent: agent.url`` serves the API until the block ends."""

    def __init__(self, token="s3cret-token-for-tests", tls=None, **group_kwargs):
        self.token = token
        self.tls = tls  # (certfile, keyfile) to serve HTTPS
        self.group = FakeGroup(**group_kwargs)
        self.requests = []
        self._server = None
        self._thread = None

    @property
    def url(self):
        host, port = self._server.server_address[:2]
        return "%s://%s:%d" % ("https" if self.tls else "http", host, port)

    def posts(self):
        return [path for method, path in self.requests if method == "POST"]

    def start(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.agent = self
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def self_signed(directory):
    """Write a self-signed certificate for 127.0.0.1 and its key into ``directory``; return their paths
    (made with cryptography, the agent's own dependency)."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, u"quorum-rollout-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(u"127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(certfile, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return certfile, keyfile
