"""The agent's HTTP API: status, release commands, events, metrics, peer artifact transfer.

Every /v1 endpoint and /metrics need `Authorization: Bearer <token>` (the host's API token, or
for GET /metrics alone the fleet's metrics token, api.metrics_token_file); the peer endpoint
needs a request MAC made with the group secret instead; the HTML status page (page.py) its page
key in the path (or the bearer token). Errors are JSON
`{"error": "...", "detail": {...}}` with the matching status code.
"""

from __future__ import annotations

import hmac
import json
import re
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, BinaryIO

from . import artifacts, contract, fsm, metrics, page, signing
from .group import ProposalError
from .log import event, get_logger
from .sources import members_of

if TYPE_CHECKING:
    from .agent import Agent

log = get_logger("quorum_rollout.api")
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 30.0     # seconds a connection may stay idle (or a request trickle in) before it is closed
PROPOSE_TIMEOUT = 5.0   # seconds a request waits for its command to commit before answering 202
_OP_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
_PEER_PATH = re.compile(r"^/v1/peer/artifacts/sha256/([0-9a-f]{64})$")


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
    entry = release["hosts"].get(agent.cfg.node_id) or {}
    expected = entry.get("version")
    if release["state"] == fsm.CURRENT and entry.get("status") != fsm.REVERTED:  # reverted: failed within the budget
        expected = release["version"]
    running = agent.running_version()
    if expected is not None and running != expected:
        return f"runs {running}, the group's state says {expected} (release {release['id']} {release['state']})"
    return None


def status_document(agent: Agent) -> dict[str, Any]:
    node = agent.node
    raft = node.raft_status()
    leader_addr = node.leader_address()
    by_addr = {rec["address"]: m for m, rec in members_of(node.state, agent.cfg).items()}
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
            "log_entries": raft["log_entries"],
            "running_version": agent.running_version(),
            "drift": drift(agent),
            "mirrors": artifacts.known_order(agent.cfg.artifacts.mirrors),
            "registry": {k: agent.reporter.status[k] for k in ("ok", "error")},
            # Webhook notifications (null when notify.url is unset): this node's last send as leader.
            "notify": dict(agent.notifier.status) if agent.notifier is not None else None,
            # Autonomous mode (null when off): the channel, its interval and this node's last poll as leader.
            "channel": agent.channel.status() if agent.channel is not None else None,
        },
        "members": members_document(agent),
        # What the release waits for before its next batch: "baking until ...", "waiting for window (opens ...)".
        "waiting": fsm.hold_text(node.state["release"]),
        "state": node.state,
    }


def members_document(agent: Agent) -> list[dict[str, Any]]:
    """Every member with its membership status (`active`, `joining`: installing the group's
    current version, `leaving`) and liveness: `reachable` from the committed state (the leader
    reports members it has not heard from for rollout.member_timeout), `unreachable_since` the
    wall time of the last contact it reported, `last_contact_seconds` the leader's own live view
    (null on followers)."""
    state = agent.node.state
    unreachable = state.get("unreachable", {})
    ages = agent.coordinator.contact_ages()
    leader_id = agent.cfg.node_id if ages else None
    return [{"id": member, "address": rec["address"], "api_url": rec["api_url"], "status": rec["status"],
             "reachable": member not in unreachable, "unreachable_since": unreachable.get(member),
             "last_contact_seconds": 0.0 if member == leader_id else ages.get(member)}
            for member, rec in sorted(members_of(state, agent.cfg).items())]


@dataclass(frozen=True)
class Reply:
    """An answer of the API: a status, a JSON-able body (or text) and its content type."""

    status: int
    body: Any
    content_type: str = "application/json"


def route(agent: Agent, method: str, path: str, headers: Mapping[str, str], rfile: BinaryIO) -> Reply:
    """Answer one request to a /v1 endpoint or /metrics: authentication, the body (read from
    `rfile`, framed by `headers`' Content-Length), the endpoint and its outcome; errors as
    `{"error", "detail"}`. No socket here: Handler writes the reply (and serves the peer
    artifact endpoint itself, which streams a file)."""
    return Request(agent, method, path.split("?", 1)[0], headers, rfile).answer()


class Request:
    """One request to route: the endpoints below each return the Reply (errors raise ApiError)."""

    def __init__(self, agent: Agent, method: str, path: str, headers: Mapping[str, str], rfile: BinaryIO) -> None:
        self.agent, self.method, self.path, self.headers, self.rfile = agent, method, path, headers, rfile

    def answer(self) -> Reply:
        try:
            if self.method == "GET" and (self.path == page.PREFIX or self.path.startswith(page.PREFIX + "/")):
                return self._page()
            self._auth()
            return self._route()
        except ApiError as exc:
            return Reply(exc.status, {"error": exc.error, "detail": exc.detail})

    def _route(self) -> Reply:
        method, path = self.method, self.path
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
        m = re.match(r"^/v1/channel/([a-z]+)$", path)
        if method == "POST" and m:
            return self._channel(m.group(1))
        m = re.match(r"^/v1/operations/([^/]+)$", path)
        if method == "GET" and m:
            return self._operation(m.group(1))
        if method == "POST" and path == "/v1/members":
            return self._member_add()
        m = re.match(r"^/v1/members/([A-Za-z0-9._-]{1,64})$", path)
        if method == "DELETE" and m:
            return self._member_remove(m.group(1))
        raise ApiError(404, f"no such endpoint: {method} {path}")

    def _auth(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            raise ApiError(401, "missing bearer token", hint="send 'Authorization: Bearer <token>' "
                           "with the token from the agent's api.token_file")
        given = token.strip().encode()
        if hmac.compare_digest(given, self.agent.token.encode()):
            return
        metrics_token = self.agent.metrics_token
        if metrics_token is None or not hmac.compare_digest(given, metrics_token.encode()):
            raise ApiError(401, "bad API token", hint="use the token from the agent's api.token_file")
        if (self.method, self.path) != ("GET", "/metrics"):
            raise ApiError(403, "the metrics token only reads GET /metrics",
                           hint="use the token from the agent's api.token_file for this endpoint")

    def _body(self, allowed: tuple[str, ...]) -> dict[str, Any]:
        raw_length = self.headers.get("Content-Length")
        if raw_length is not None and not raw_length.strip().isdigit():
            raise ApiError(400, "bad Content-Length header: must be a non-negative integer", field="Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(400, "chunked request bodies are not supported; send Content-Length",
                           field="Transfer-Encoding")
        length = int(raw_length or 0)
        if length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        if len(raw) < length:
            raise ApiError(400, f"request body ended after {len(raw)} of {length} bytes", field="body")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"request body is not JSON: {exc}", field="body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", field="body")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown}; allowed: {', '.join(allowed) or 'none'}",
                           field=unknown[0])
        for name in ("allow_downgrade", "allow_unreachable"):
            if not isinstance(body.get(name, False), bool):
                raise ApiError(400, f"{name} must be true or false", field=name)
        op_id = body.get("operation_id")
        if op_id is not None and not (isinstance(op_id, str) and _OP_ID.fullmatch(op_id)):
            raise ApiError(400, "operation_id must be 8-64 characters from A-Z a-z 0-9 . _ : -", field="operation_id")
        for name in ("release", "reason"):
            if body.get(name) is not None and not (isinstance(body[name], str) and len(body[name]) <= 200):
                raise ApiError(400, f"{name} must be a string of at most 200 characters", field=name)
        return body

    # -- endpoints -----------------------------------------------------------------------------

    def _page(self) -> Reply:
        """The read-only HTML status page (page.py): its own key in the path, or the bearer token."""
        if self.path == page.PREFIX:
            self._auth()
        elif not hmac.compare_digest(self.path[len(page.PREFIX) + 1:].encode(),
                                     page.page_key(self.agent.token).encode()):
            raise ApiError(401, "bad status page key", hint="open the URL `quorum-rollout status --page-url` prints")
        return Reply(200, page.render(status_document(self.agent), time.time()), "text/html; charset=utf-8")

    def _status(self) -> Reply:
        return Reply(200, status_document(self.agent))

    def _events(self) -> Reply:
        return Reply(200, {"events": self.agent.node.state["history"]})

    def _metrics(self) -> Reply:
        return Reply(200, self.agent.metrics.render(), metrics.CONTENT_TYPE)

    def _start(self) -> Reply:
        body = self._body(("version", "allow_downgrade", "allow_unreachable", "operation_id"))
        version = body.get("version")
        if not fsm.valid_version(version):
            raise ApiError(400, "version must be a version string such as '2.4' "
                           "(letters, digits, '.', '_', '+', '-'; at most 64)", field="version")
        allow_downgrade = body.get("allow_downgrade", False)
        args = self.agent.start_args(version, allow_downgrade=allow_downgrade,
                                     allow_unreachable=body.get("allow_unreachable", False))
        if self.agent.node.preview("start", **args).code == "accepted":
            self._check_published(version, allow_downgrade)
        return self._submit("start", body.get("operation_id"), created=True, **args)

    def _check_published(self, version: str, allow_downgrade: bool) -> None:
        """Refuse before anything is committed when no mirror serves a valid signed manifest of
        `version` (asked only for a start the state machine would accept: a no-op or a refusal
        is answered by the state machine itself)."""
        try:
            self.agent.check_manifest(version, allow_downgrade)
        except artifacts.NotPublished as exc:
            raise ApiError(409, str(exc), reason="not_published", version=version) from None
        except signing.TrustError as exc:
            raise ApiError(409, f"refused {version}: {exc}", reason="untrusted", version=version) from None
        except artifacts.ArtifactError as exc:
            raise ApiError(503, f"no mirror served a usable manifest of {version}; nothing was started: {exc}",
                           reason="mirrors_unavailable", version=version) from None

    def _action(self, action: str) -> Reply:
        if action not in contract.ACTIONS:
            raise ApiError(404, f"unknown action {action!r}; use one of {sorted(contract.ACTIONS)}")
        body = self._body(("release", "operation_id") + (("reason",) if action == "abort" else ()))
        if self.agent.node.state["release"] is None:
            raise ApiError(404, "the group has no release yet")
        args = {k: body[k] for k in ("release", "reason") if body.get(k) is not None}
        return self._submit(action, body.get("operation_id"), created=False, **args)

    def _channel(self, action: str) -> Reply:
        """Pause or resume the group's release channel (autonomous mode): a replicated flag the
        leader reads before it starts anything the channel names."""
        if action not in ("pause", "resume"):
            raise ApiError(404, f"unknown channel action {action!r}; use pause or resume")
        body = self._body(("operation_id",))
        return self._submit("channel", body.get("operation_id"), created=False, paused=action == "pause")

    def _submit(self, op: str, op_id: str | None, *, created: bool, **args: Any) -> Reply:
        """Propose and answer with the outcome; 202 with the operation id when the outcome is not
        known yet (timeout, leader change): the command may still commit, so the client asks
        GET /v1/operations/<id> (or resends with the same operation_id, which is idempotent)."""
        op_id = op_id or uuid.uuid4().hex
        operations = self.agent.operations
        try:
            result = operations.submit(op, op_id, args, timeout=PROPOSE_TIMEOUT)
        except ProposalError as exc:
            if exc.definitive:
                raise ApiError(503, f"the group did not take the command: {exc}; nothing changed, retry",
                               operation_id=op_id) from None
            return Reply(202, {"operation": operations.document(op_id), "changed": None,
                               "reason": f"not committed within {PROPOSE_TIMEOUT:g}s ({exc}); this node keeps "
                                         f"proposing it until it commits: follow GET /v1/operations/{op_id}",
                               "release": self.agent.node.state["release"]})
        release = self.agent.node.state["release"]
        status = contract.HTTP_STATUS.get(result["code"], 500)
        if status == 201 and not created:
            status = 200
        if status >= 400:
            raise ApiError(status, result["reason"], state=release and release["state"],
                           version=release and release["version"], operation_id=op_id)
        answer = {"changed": result["code"] == "accepted", "reason": result["reason"],
                  "operation": operations.document(op_id), "release": release}
        if op == "channel":
            answer["channel"] = fsm.channel_record(self.agent.node.state)
        return Reply(status, answer)

    def _member_add(self) -> Reply:
        body = self._body(("id", "address", "api_url", "operation_id"))
        member = {k: body.get(k) for k in ("id", "address", "api_url")}
        for name, value in member.items():
            if not isinstance(value, str) or not value:
                raise ApiError(400, f"{name} is required (the new member's node id, Raft host:port and API URL)",
                               field=name)
        return self._submit("member_add", body.get("operation_id"), created=True, member=member)

    def _member_remove(self, member: str) -> Reply:
        body = self._body(("operation_id",))
        return self._submit("member_remove", body.get("operation_id"), created=False, member=member)

    def _operation(self, op_id: str) -> Reply:
        doc = self.agent.operations.document(op_id)
        if doc["status"] == "unknown":
            raise ApiError(404, f"operation {op_id!r} is unknown here: never submitted to this node, or older "
                           f"than the last {fsm.APPLIED_LIMIT} commands the group remembers", operation_id=op_id)
        return Reply(200, doc)


class Handler(BaseHTTPRequestHandler):
    server_version = "quorum-rollout"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid a 40 ms delayed-ACK stall
    timeout = IDLE_TIMEOUT  # an idle or slow client's connection is closed after this many seconds
    agent: Agent  # set on the subclass made by serve()

    def log_message(self, format: str, *args: Any) -> None:
        return  # requests are logged as structured events instead

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        if status in (400, 401, 403, 413):
            self.close_connection = True  # the body was not read (or cannot be trusted to frame what follows)
        data = body.encode() if isinstance(body, str) else json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        try:
            peer = _PEER_PATH.match(path) if method == "GET" else None
            if peer:
                try:
                    return self._peer_artifact(peer.group(1))
                except ApiError as exc:
                    return self._send(exc.status, {"error": exc.error, "detail": exc.detail})
            reply = route(self.agent, method, path, self.headers, self.rfile)
            self._send(reply.status, reply.body, reply.content_type)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _peer_artifact(self, digest: str) -> None:
        """Serve a verified artifact of the current release to a group member (MAC-authenticated)."""
        agent = self.agent
        if not artifacts.check_peer_auth(agent.secret, self.headers.get("Authorization", ""), "GET",
                                         self.path, time.time()):
            raise ApiError(401, "peer authentication failed (group secret MAC missing, wrong or stale)")
        state = agent.node.state
        artifact = next((a for a in ((state["release"] or {}).get("artifact"), state.get("current_artifact"))
                         if a and a.get("sha256") == digest), None)
        if artifact is None:
            raise ApiError(404, "this digest is neither the latest release's artifact nor the group's current one")
        if not agent.uploads.acquire(blocking=False):
            raise ApiError(503, "too many peer uploads in progress; try another holder",
                           limit=agent.cfg.artifacts.max_peer_uploads)
        if not self.headers.get(artifacts.URGENT_HEADER):
            artifacts.yield_cpu()  # this connection's thread serves a transfer ahead of need, then ends
        self.close_connection = True
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
            agent.metrics.peer_sent.labels(agent.cfg.group, agent.cfg.node_id).inc(sent)
            if sent < length:
                self.close_connection = True  # the reader sees a short body and resumes with Range
            event(log, "peer_upload", group=agent.cfg.group, node=agent.cfg.node_id, sha256=digest,
                  bytes=sent, status=status)
        finally:
            agent.uploads.release()


class AgentServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them: one more is closed at once
    (and logged), so a flood of idle connections cannot grow the agent without bound. The TLS
    handshake runs in the connection's own thread with the idle timeout, never in the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[Handler], *, max_connections: int,
                 tls: ssl.SSLContext | None, group: str, node: str) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._tls, self._fields = tls, {"group": group, "node": node}
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            event(log, "api_connection_refused", level="warning", client=client_address[0],
                  cause="too many open API connections (api.max_connections)", **self._fields)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self._tls is not None:
                request.settimeout(IDLE_TIMEOUT)
                try:
                    request = self._tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    event(log, "api_tls_failed", level="warning", client=client_address[0], cause=repr(exc),
                          **self._fields)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One JSON line per broken connection (client reset, timeout), never a traceback on stderr."""
        exc = sys.exc_info()[1]
        benign = isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError))
        event(log, "api_connection_error", level="info" if benign else "error", client=client_address[0],
              cause=repr(exc), exc_info=not benign, **self._fields)


def serve(agent: Agent) -> AgentServer:
    """Start the API server in a daemon thread and return it (stop with shutdown())."""
    handler = type("BoundHandler", (Handler,), {"agent": agent})
    tls = None
    if agent.cfg.api.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(agent.cfg.api.tls_cert, agent.cfg.api.tls_key)
    server = AgentServer((agent.cfg.api.bind, agent.cfg.api.port), handler,
                         max_connections=agent.cfg.api.max_connections, tls=tls, group=agent.cfg.group,
                         node=agent.cfg.node_id)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server
