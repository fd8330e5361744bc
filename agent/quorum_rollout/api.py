"""The agent's HTTP API: status, release commands, events, metrics, peer artifact transfer.

Every /v1 endpoint and /metrics need `Authorization: Bearer <token>`; the peer endpoint
needs a request MAC made with the group secret instead. Errors are JSON
`{"error": "...", "detail": {...}}` with the matching status code.
"""

from __future__ import annotations

import hmac
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import artifacts, fsm
from .group import ProposalError
from .log import event, get_logger

if TYPE_CHECKING:
    from .agent import Agent

log = get_logger("quorum_rollout.api")
MAX_BODY = 64 * 1024
_ACTIONS = {"pause", "resume", "abort", "retry"}
_PEER_PATH = re.compile(r"^/v1/peer/artifacts/sha256/([0-9a-f]{64})$")
_OUTCOME_STATUS = {"accepted": 201, "noop": 200, "duplicate": 200, "conflict": 409, "invalid": 400}


class ApiError(Exception):
    def __init__(self, status: int, error: str, **detail: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def drift(agent: Agent) -> str | None:
    """Why this host's `current` disagrees with the group's committed state, or None.

    Only judged when no release is active: a host may be mid-switch during a rollout."""
    state = agent.node.state
    release = state["release"]
    if release is None or release["state"] not in fsm.TERMINAL:
        return None
    expected = (release["hosts"].get(agent.cfg.node_id) or {}).get("version")
    if release["state"] == fsm.CURRENT:
        expected = release["version"]
    running = agent.running_version()
    if expected is not None and running != expected:
        return f"runs {running}, the group's state says {expected} (release {release['id']} {release['state']})"
    return None


def status_document(agent: Agent) -> dict[str, Any]:
    node = agent.node
    raft = node.raft_status()
    leader_addr = node.leader_address()
    by_addr = {p.address: p.id for p in agent.cfg.raft.peers}
    by_addr[agent.cfg.raft.address] = agent.cfg.node_id
    return {
        "group": agent.cfg.group,
        "node": {
            "id": agent.cfg.node_id,
            "role": raft["role"],
            "leader": by_addr.get(leader_addr) if leader_addr else None,
            "term": raft["term"],
            "ready": raft["ready"],
            "has_quorum": raft["has_quorum"],
            "commit_index": raft["commit_index"],
            "running_version": agent.running_version(),
            "drift": drift(agent),
            "mirrors": artifacts.known_order(agent.cfg.artifacts.mirrors),
            "registry": {k: agent.reporter.status[k] for k in ("ok", "error")},
        },
        "state": node.state,
    }


def metrics_text(agent: Agent) -> str:
    state = agent.node.state
    release = state["release"] or {}
    raft = agent.node.raft_status()
    labels = f'group="{agent.cfg.group}",node="{agent.cfg.node_id}"'
    lines = [
        "# HELP quorum_rollout_is_leader 1 if this node leads its group's Raft cluster.",
        "# TYPE quorum_rollout_is_leader gauge",
        f"quorum_rollout_is_leader{{{labels}}} {int(raft['role'] == 'leader')}",
        "# HELP quorum_rollout_raft_term Current Raft term seen by this node.",
        "# TYPE quorum_rollout_raft_term gauge",
        f"quorum_rollout_raft_term{{{labels}}} {raft['term']}",
        "# HELP quorum_rollout_release_state 1 for the state the group's latest release is in.",
        "# TYPE quorum_rollout_release_state gauge",
    ]
    for s in fsm.STATES:
        lines.append(f'quorum_rollout_release_state{{{labels},state="{s}"}} {int(release.get("state") == s)}')
    lines += [
        "# HELP quorum_rollout_release_batch 1-based batch index being rolled (0 before rolling).",
        "# TYPE quorum_rollout_release_batch gauge",
        f"quorum_rollout_release_batch{{{labels}}} {(release.get('batch') or -1) + 1 if release else 0}",
        "# HELP quorum_rollout_commands_rejected Commands the state machine rejected (bounded window).",
        "# TYPE quorum_rollout_commands_rejected gauge",
        f"quorum_rollout_commands_rejected{{{labels}}} {len(state['rejected'])}",
        "# HELP quorum_rollout_host_drift 1 if this host's current release disagrees with the group's state.",
        "# TYPE quorum_rollout_host_drift gauge",
        f"quorum_rollout_host_drift{{{labels}}} {int(drift(agent) is not None)}",
        "# HELP quorum_rollout_registry_ok 1 if the last registry report succeeded.",
        "# TYPE quorum_rollout_registry_ok gauge",
        f"quorum_rollout_registry_ok{{{labels}}} {int(bool(agent.reporter.status['ok']))}",
    ]
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "quorum-rollout"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid a 40 ms delayed-ACK stall
    agent: Agent  # set on the subclass made by serve()

    def log_message(self, format: str, *args: Any) -> None:
        return  # requests are logged as structured events instead

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: ApiError) -> None:
        if exc.status == 401:
            self.close_connection = True
        self._send(exc.status, {"error": exc.error, "detail": exc.detail})

    def _auth(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise ApiError(401, "missing bearer token", hint="send 'Authorization: Bearer <token>' "
                           "with the token from the agent's api.token_file")
        if not hmac.compare_digest(token.strip().encode(), self.agent.token.encode()):
            raise ApiError(401, "bad API token", hint="use the token from the agent's api.token_file")

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length header", field="Content-Length") from None
        if length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"request body is not JSON: {exc}", field="body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", field="body")
        return body

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if method == "GET" and _PEER_PATH.match(path):
                return self._peer_artifact(_PEER_PATH.match(path).group(1))  # type: ignore[union-attr]
            self._auth()
            route = {
                ("GET", "/v1/status"): self._status,
                ("GET", "/v1/events"): self._events,
                ("GET", "/metrics"): self._metrics,
                ("POST", "/v1/releases"): self._start,
            }.get((method, path))
            if route:
                return route()
            m = re.match(r"^/v1/releases/current/([a-z]+)$", path)
            if method == "POST" and m:
                return self._action(m.group(1))
            raise ApiError(404, f"no such endpoint: {method} {path}")
        except ApiError as exc:
            self._error(exc)
        except ProposalError as exc:
            self._error(ApiError(503, "the group could not commit the command; retry", cause=str(exc)))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- endpoints -----------------------------------------------------------------------------

    def _status(self) -> None:
        self._send(200, status_document(self.agent))

    def _events(self) -> None:
        self._send(200, {"events": self.agent.node.state["history"]})

    def _metrics(self) -> None:
        self._send(200, metrics_text(self.agent), "text/plain; version=0.0.4")

    def _start(self) -> None:
        body = self._body()
        unknown = set(body) - {"version", "allow_downgrade"}
        if unknown:
            raise ApiError(400, f"unknown field(s) {sorted(unknown)}; allowed: version, allow_downgrade",
                           field=sorted(unknown)[0])
        version = body.get("version")
        if not fsm.valid_version(version):
            raise ApiError(400, "version must be a version string such as '2.4' "
                           "(letters, digits, '.', '_', '+', '-'; at most 64)", field="version")
        if not isinstance(body.get("allow_downgrade", False), bool):
            raise ApiError(400, "allow_downgrade must be true or false", field="allow_downgrade")
        result = self.agent.start_release(version, bool(body.get("allow_downgrade", False)))
        self._outcome(result)

    def _action(self, action: str) -> None:
        if action not in _ACTIONS:
            raise ApiError(404, f"unknown action {action!r}; use one of {sorted(_ACTIONS)}")
        self._body()  # reject malformed bodies even though no field is needed
        if self.agent.node.state["release"] is None:
            raise ApiError(404, "the group has no release yet")
        self._outcome(self.agent.node.propose(action, timeout=5.0), created=False)

    def _outcome(self, result: dict[str, str], created: bool = True) -> None:
        """201 for a new release, 200 for an accepted action or a no-op, 4xx for a refusal."""
        release = self.agent.node.state["release"]
        status = _OUTCOME_STATUS.get(result["code"], 500)
        if status == 201 and not created:
            status = 200
        if status >= 400:
            raise ApiError(status, result["reason"], state=release and release["state"],
                           version=release and release["version"])
        self._send(status, {"changed": result["code"] == "accepted", "reason": result["reason"],
                            "release": release})

    def _peer_artifact(self, digest: str) -> None:
        """Serve a verified artifact of the current release to a group member (MAC-authenticated)."""
        agent = self.agent
        if not artifacts.check_peer_auth(agent.secret, self.headers.get("Authorization", ""), "GET",
                                         self.path, time.time()):
            raise ApiError(401, "peer authentication failed (group secret MAC missing, wrong or stale)")
        release = agent.node.state["release"]
        artifact = (release or {}).get("artifact") or {}
        if artifact.get("sha256") != digest:
            raise ApiError(404, "this digest is not the current release's artifact")
        if not agent.uploads.acquire(blocking=False):
            raise ApiError(503, "too many peer uploads in progress; try another holder",
                           limit=agent.cfg.artifacts.max_peer_uploads)
        try:
            opened = artifacts.open_growing(agent.store, digest, artifact["size"], self.headers.get("Range"))
            if opened is None:
                raise ApiError(404, "this node holds no part of that artifact yet; retry or try another holder")
            status, headers, fileobj, length = opened
            with fileobj:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                sent = artifacts.copy_growing(fileobj, length, self.wfile.write, limiter=agent.upload_limiter)
            if sent < length:
                self.close_connection = True  # the reader sees a short body and resumes with Range
            event(log, "peer_upload", group=agent.cfg.group, node=agent.cfg.node_id, sha256=digest,
                  bytes=sent, status=status)
        finally:
            agent.uploads.release()


def serve(agent: Agent) -> ThreadingHTTPServer:
    """Start the API server in a daemon thread and return it (stop with shutdown())."""
    handler = type("BoundHandler", (Handler,), {"agent": agent})
    server = ThreadingHTTPServer((agent.cfg.api.bind, agent.cfg.api.port), handler)
    server.daemon_threads = True
    if agent.cfg.api.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(agent.cfg.api.tls_cert, agent.cfg.api.tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server

