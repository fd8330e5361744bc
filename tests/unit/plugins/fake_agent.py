# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A stand-in for the quorum.rollout agent's HTTP API, for the plugins' unit tests.

Its rules (status codes, which action is allowed in which release state) follow the
agent's quorum_rollout/api.py and fsm.py; keep them in step.

It serves the documented API (docs/api.md) over real HTTP on 127.0.0.1 with a small
in-memory group state machine, so the plugins' client code, error handling and waiting
are exercised for real. It is not the agent: the real agent (Raft, artifacts, install)
is exercised by tests/integration and tests/e2e.

The release advances one step each time its status is read (``GET /v1/status``), never
with the clock, so tests are deterministic and need no sleeps: the plugins' own polling
drives the group to its end.
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FORWARD = ("running_old_release", "downloaded_in_leader", "verified", "rolling")
TERMINAL = ("current", "rolled_back", "aborted")


def _vkey(version):
    return tuple(int(p) if p.isdigit() else p for p in str(version).split("."))


class FakeGroup(object):
    """In-memory replicated group state with the agent's release state machine (simplified)."""

    def __init__(self, group="intel-eu1a", members=("h1", "h2", "h3"), current_version="2.3", node_id="h1"):
        self.lock = threading.RLock()
        self.group = group
        self.members = list(members)
        self.node_id = node_id
        self.current_version = current_version
        self.highest_version = current_version
        self.release = None
        self.history = []
        self.rejected = []
        self.term = 3
        # Test controls
        self.fail = None  # (host, step, reason): that host fails when its batch rolls
        self.frozen = False  # when True the release never advances
        self.unavailable = 0  # answer 503 to the next N requests
        self.pending_polls = 0  # answer the next command 202 (pending); it commits after N operation polls
        self.operations = {}  # operation id -> [polls left, the command to apply]
        self.committed = set()

    # -- helpers -----------------------------------------------------------------
    def record(self, op, frm, to, detail=None):
        self.history.append({
            "seq": len(self.history) + 1, "time": time.time(), "term": self.term, "actor": "h2",
            "op": op, "from": frm, "to": to, "detail": detail or {},
        })

    def set_state(self, state, op):
        old = self.release["state"]
        self.release["state"] = state
        self.release["updated_at"] = time.time()
        self.record(op, old, state, {"release": self.release["id"]})

    def status(self):
        return {
            "group": self.group,
            "node": {"id": self.node_id, "role": "follower", "leader": "h2", "term": self.term, "ready": True,
                     "has_quorum": True, "registry": {"ok": True, "error": None}},
            "state": {
                "group": self.group, "current_version": self.current_version,
                "highest_version": self.highest_version, "release": copy.deepcopy(self.release),
                "history": copy.deepcopy(self.history[-50:]), "rejected": copy.deepcopy(self.rejected),
            },
        }

    def new_release(self, version, attempt=1):
        now = time.time()
        self.release = {
            "id": "%s#%d" % (version, attempt), "version": version, "previous_version": self.current_version,
            "attempt": attempt, "state": "running_old_release", "paused_from": None, "batch": None,
            "batches": [[m] for m in self.members], "members": list(self.members),
            "hosts": dict((m, {"status": "pending", "version": self.current_version, "step": None, "detail": None})
                          for m in self.members),
            "artifact": None, "holders": [], "failure": None, "started_at": now, "updated_at": now,
            "term": self.term,
        }
        self.record("start", None, "running_old_release", {"version": version, "attempt": attempt})

    # -- progress: one step per status read ------------------------------------------
    def tick(self):
        rel = self.release
        if self.frozen or rel is None or rel["state"] in TERMINAL + ("paused",):
            return
        state = rel["state"]
        if state == "running_old_release":
            self.set_state("downloaded_in_leader", "downloaded")
        elif state == "downloaded_in_leader":
            rel["artifact"] = {"sha256": "ab" * 32, "size": 1024, "file": "app-%s.tar.gz" % rel["version"]}
            self.set_state("verified", "verified")
        elif state == "verified":
            rel["batch"] = 0
            self.set_state("rolling", "roll")
        elif state == "rolling":
            batch = rel["batches"][rel["batch"]]
            for host in batch:
                if self.fail and self.fail[0] == host:
                    rel["hosts"][host].update(status="failed", step=self.fail[1], detail=self.fail[2])
                    rel["failure"] = {"host": host, "step": self.fail[1], "reason": self.fail[2]}
                    self.set_state("rolling_back", "fail")
                    return
                rel["hosts"][host].update(status="updated", version=rel["version"], step="done")
                rel["holders"].append(host)
            if rel["batch"] + 1 < len(rel["batches"]):
                rel["batch"] += 1
                self.record("batch", "rolling", "rolling", {"batch": rel["batch"]})
            else:
                rel["batch"] = None
                self.current_version = rel["version"]
                if _vkey(rel["version"]) > _vkey(self.highest_version or "0"):
                    self.highest_version = rel["version"]
                self.set_state("current", "done")
        elif state == "rolling_back":
            for host, info in rel["hosts"].items():
                if info["status"] == "updated":
                    info.update(status="reverted", version=rel["previous_version"])
            self.set_state("rolled_back", "rolled_back")

    # -- commands --------------------------------------------------------------------
    def start(self, version, allow_downgrade):
        rel = self.release
        if rel and rel["state"] not in TERMINAL:
            if rel["version"] == version:
                return 200, {"changed": False, "release": copy.deepcopy(rel)}
            return 409, {"error": "release %s is in progress" % rel["version"],
                         "detail": {"version": rel["version"], "state": rel["state"]}}
        if self.current_version == version and not allow_downgrade:
            return 200, {"changed": False, "release": copy.deepcopy(rel)}
        if (self.highest_version and _vkey(version) < _vkey(self.highest_version) and not allow_downgrade):
            return 400, {"error": "version %s is lower than %s, the highest the group ran (rollback protection); "
                         "ask for allow_downgrade to go back on purpose" % (version, self.highest_version),
                         "detail": {"version": rel and rel["version"], "state": rel and rel["state"]}}
        self.new_release(version, 1)
        return 201, {"changed": True, "release": copy.deepcopy(self.release)}

    def submit(self, op_id, command):
        """Run the command now, or (pending_polls > 0) answer 202 and run it after that many polls."""
        if self.pending_polls and op_id:
            self.operations[op_id] = [self.pending_polls, command]
            self.pending_polls = 0
            return 202, {"changed": None, "operation": {"id": op_id, "status": "pending"},
                         "release": copy.deepcopy(self.release)}
        status, answer = command()
        if op_id and status < 400:
            self.committed.add(op_id)
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
            self.committed.add(op_id)
        if op_id in self.committed:
            return 200, {"id": op_id, "status": "committed"}
        return 404, {"error": "operation %r is unknown here" % op_id, "detail": {"operation_id": op_id}}

    def action(self, name):
        rel = self.release
        if rel is None:
            return 404, {"error": "no release", "detail": {}}
        state = rel["state"]
        if name == "pause":
            if state == "paused":
                return 200, {"changed": False, "release": copy.deepcopy(rel)}
            if state not in FORWARD:
                return 409, {"error": "cannot pause in state %s" % state, "detail": {"state": state}}
            rel["paused_from"] = state
            self.set_state("paused", "pause")
        elif name == "resume":
            if state in FORWARD:
                return 200, {"changed": False, "release": copy.deepcopy(rel)}
            if state != "paused":
                return 409, {"error": "cannot resume in state %s" % state, "detail": {"state": state}}
            back, rel["paused_from"] = rel["paused_from"], None
            self.set_state(back, "resume")
        elif name == "abort":
            if state == "aborted":
                return 200, {"changed": False, "release": copy.deepcopy(rel)}
            if state == "current":
                return 409, {"error": "cannot abort in state %s" % state, "detail": {"state": state}}
            self.set_state("aborted", "abort")
        elif name == "retry":
            if state != "rolled_back":
                return 409, {"error": "cannot retry in state %s" % state, "detail": {"state": state}}
            self.new_release(rel["version"], rel["attempt"] + 1)
        return 200, {"changed": True, "release": copy.deepcopy(self.release)}


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
                return self._send(200, {"events": copy.deepcopy(group.history)})
            if method == "GET" and self.path == "/metrics":
                return self._send(200, b"quorum_rollout_up 1\n", "text/plain; version=0.0.4")
            if method == "GET" and self.path.startswith("/v1/operations/"):
                return self._send(*group.operation(self.path[len("/v1/operations/"):]))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return self._send(400, {"error": "body is not JSON", "detail": {"field": "body"}})
            if method == "POST" and self.path == "/v1/releases":
                if not isinstance(body, dict) or not isinstance(body.get("version"), str) or not body["version"]:
                    return self._send(400, {"error": "version must be a non-empty string",
                                            "detail": {"field": "version"}})
                return self._send(*group.submit(body.get("operation_id"), lambda: group.start(
                    body["version"], bool(body.get("allow_downgrade")))))
            prefix = "/v1/releases/current/"
            if method == "POST" and self.path.startswith(prefix) and self.path[len(prefix):] in (
                    "pause", "resume", "abort", "retry"):
                name = self.path[len(prefix):]
                if body.get("release") and (group.release or {}).get("id") != body["release"]:
                    return self._send(409, {"error": "release %r is not the group's latest release" % body["release"],
                                            "detail": {"state": (group.release or {}).get("state")}})
                return self._send(*group.submit(body.get("operation_id"), lambda: group.action(name)))
        return self._send(404, {"error": "no such endpoint: %s %s" % (method, self.path),
                                "detail": {"path": self.path}})

    def do_GET(self):  # pylint: disable=invalid-name
        self._handle("GET")

    def do_POST(self):  # pylint: disable=invalid-name
        self._handle("POST")


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
