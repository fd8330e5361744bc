"""The Raft port: a pysyncobj transport that one unauthenticated connection cannot stall.

pysyncobj's TCP transport (PYSYNCOBJ.md rules 12, 14, 15; upstream #174) reads a 4-byte frame
length and buffers up to 2 GiB per connection before anything is authenticated, reads each
socket until it is empty on the single Raft thread, re-copies the buffer on every read, keeps
any connection that never authenticates, and builds a connection object for whoever connects.
`HardenedTransport` (`SyncObj(..., transportClass=HardenedTransport)`) keeps pysyncobj's wire
format and handshake and changes who may hold a connection and how much of it is read:

- an incoming connection from an address that is not a member's host is closed at accept;
- at most MAX_PENDING_PER_SOURCE unauthenticated connections per source address and
  MAX_PENDING in all; more are closed at accept;
- a connection that has not authenticated within AUTH_TIMEOUT seconds is closed. Incoming, it
  is authenticated when pysyncobj's handshake is done: the peer's random key and then its node
  address decrypted with the group secret, and that node is a member whose host is the
  source address (a replayed first frame cannot get this far); outgoing, when the peer's
  random key decrypted;
- every frame's declared length is checked when its 4-byte header arrives, before any of its
  body is read: MAX_HANDSHAKE_FRAME for the handshake frames, MAX_FRAME after;
- a connection reads at most READ_PER_TICK bytes per Raft tick once authenticated,
  HANDSHAKE_READ_PER_TICK before (the rest stays in the kernel; the poller is level-triggered
  and reports the socket again next tick);
- outgoing connections are bound to this node's own Raft address, so every link leaves from
  its member's host (also on a 127.x.y.z test fleet) and the checks above can attribute it.

Every refused or dropped connection leaves one `raft_connection_dropped` line with its cause
and source address (no port: the log's repeat limit then folds a flood into a count).

pysyncobj builds on name-mangled privates; this module uses one (`_TcpConnection__socket`, to
bind and wrap an outgoing socket between its creation and its connect) and a few protected
TCPTransport methods. `check_internals()` runs at every start and refuses to run on a
pysyncobj that changed them, rather than run unguarded.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from .log import event, get_logger

log = get_logger("quorum_rollout.transport")

# The largest frame a member sends, measured (bench/raft_port.py frames, docs/benchmarks.md):
# an append_entries batch stops after the entry that reaches appendEntriesBatchSizeBytes
# (64 KiB), so it holds < 64 KiB + one entry; the largest entry is the committed manifest
# (artifacts.max_manifest_bytes, at most config.MAX_MANIFEST_BYTES = 256 KiB); snapshots travel
# in logCompactionBatchSize (64 KiB) chunks of the dump file. zlib then Fernet's base64 leave
# manifest-like text about its size; binary chunks grow by 60% (pickle protocol 2, base64).
# Measured: 66 KiB with 64 KiB manifests, 265 KiB with 256 KiB ones, 104 KiB snapshot chunks.
# 1 MiB leaves room and is 1/2048 of what pysyncobj would buffer.
MAX_FRAME = 1 << 20
# Before authentication only the handshake travels: the peer's random key, then its address
# (or a syncobj_admin command), each < 300 bytes encrypted.
MAX_HANDSHAKE_FRAME = 4096
# Per connection and tick. 128 KiB takes the largest measured frame in one tick; a 1 MiB frame
# in 8. pysyncobj re-copies its buffer per read and per parsed message, so the cost of a tick
# grows with the square of what it reads: bounding it bounds that too.
READ_PER_TICK = 128 * 1024
HANDSHAKE_READ_PER_TICK = 8192
# A handshake takes two round trips between two Raft threads (milliseconds on a LAN, well
# under a second on a loaded 2-core machine); pysyncobj's own dead-link timeout is 3.5 s.
AUTH_TIMEOUT = 3.0
# A member has one handshake in flight at a time (a reconnect every connectionRetryTime);
# the total bounds memory (each pending connection holds < HANDSHAKE_READ_PER_TICK +
# MAX_HANDSHAKE_FRAME bytes) and file descriptors, and covers a 51-member group restarting.
MAX_PENDING_PER_SOURCE = 4
MAX_PENDING = 64
# An accept (with its admission check and log line) measured ~80 us on the Raft thread: 16 per
# tick keep a flood's share of one tick near 1 ms and still accept thousands a second.
# pysyncobj's own listener takes one per tick from a backlog of 5.
ACCEPTS_PER_TICK = 16
LISTEN_BACKLOG = 64

_HEADER = struct.Struct("i")  # what tcp_connection.py writes: struct.pack('i', len(data))
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset, no TIME_WAIT here


class TransportInternalsChanged(RuntimeError):
    """The installed pysyncobj no longer has what this transport hooks into."""


class FrameRejected(Exception):
    def __init__(self, cause: str, declared: int, limit: int) -> None:
        super().__init__(f"{cause}: declared {declared} bytes, limit {limit}")
        self.cause, self.declared, self.limit = cause, declared, limit


@dataclass(frozen=True)
class Limits:
    max_frame: int = MAX_FRAME
    max_handshake_frame: int = MAX_HANDSHAKE_FRAME
    read_per_tick: int = READ_PER_TICK
    handshake_read_per_tick: int = HANDSHAKE_READ_PER_TICK
    auth_timeout: float = AUTH_TIMEOUT
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    max_pending: int = MAX_PENDING
    accepts_per_tick: int = ACCEPTS_PER_TICK


# -- pure parts ------------------------------------------------------------------------------------

class FrameGuard:
    """Follows pysyncobj's framing (a 4-byte length, then that many bytes) over everything one
    connection reads, and raises FrameRejected as soon as a header declares a length out of
    bounds: its first `handshake_frames` frames may be up to `max_handshake_frame` bytes, the
    others up to `max_frame`. Works on chunks of any size; keeps no data, only counters."""

    def __init__(self, max_frame: int, max_handshake_frame: int, handshake_frames: int) -> None:
        self.max_frame, self.max_handshake_frame = max_frame, max_handshake_frame
        self.handshake_frames = handshake_frames
        self.frames = 0      # headers accepted
        self.completed = 0   # frames whose body has been read entirely
        self.largest = 0
        self._header = b""
        self._body_left = 0

    def limit(self) -> int:
        return self.max_handshake_frame if self.frames < self.handshake_frames else self.max_frame

    def feed(self, data: bytes) -> int:
        """Follow `data`; the largest length declared by a header it completed (0: none)."""
        pos, end, largest = 0, len(data), 0
        while pos < end:
            if self._body_left:
                step = min(self._body_left, end - pos)
                self._body_left -= step
                pos += step
                if not self._body_left:
                    self.completed += 1
                continue
            need = _HEADER.size - len(self._header)
            self._header += data[pos:pos + need]
            pos += need
            if len(self._header) < _HEADER.size:
                break
            (declared,) = _HEADER.unpack(self._header)
            self._header = b""
            limit = self.limit()
            if declared <= 0:  # pysyncobj cannot decrypt or decompress an empty or negative frame
                raise FrameRejected("bad_frame_length", declared, limit)
            if declared > limit:
                raise FrameRejected("frame_too_large", declared, limit)
            self.frames += 1
            largest = max(largest, declared)
            self._body_left = declared
        self.largest = max(self.largest, largest)
        return largest


class ReadBudget:
    """Bytes one connection may still read in the current tick."""

    def __init__(self) -> None:
        self._tick: int | None = None
        self._spent = 0

    def allowance(self, tick: int, per_tick: int) -> int:
        if tick != self._tick:
            self._tick, self._spent = tick, 0
        return max(0, per_tick - self._spent)

    def spend(self, nbytes: int) -> None:
        self._spent += nbytes


def refusal(source: str, members: frozenset[str], pending: Counter[str], limits: Limits) -> str | None:
    """Why a new incoming connection from `source` is closed at accept (None: it may try to
    authenticate). `pending` counts the unauthenticated connections held, by source address."""
    if source not in members:
        return "not_a_member"
    if pending[source] >= limits.max_pending_per_source:
        return "too_many_pending_from_source"
    if sum(pending.values()) >= limits.max_pending:
        return "too_many_pending"
    return None


def normalize_ip(address: str) -> str:
    """One spelling per address (IPv6 compressed, IPv4-mapped IPv6 as IPv4); ValueError if not an IP."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


# A link silent for this long (seconds) is probed; see GuardedConnection.keep_if_idle.
IDLE_PROBE = 1.0


def check_internals() -> None:
    """Refuse to start on a pysyncobj whose hook points moved (the guard would be bypassed)."""
    missing = [f"TcpConnection.{n}" for n in ("connect", "disconnect", "setSockoptKeepalive")
               if not callable(getattr(TcpConnection, n, None))]
    missing += [f"TCPTransport.{n}" for n in ("addNode", "_createServer", "_onTick", "_onNewIncomingConnection",
                                              "_onIncomingMessageReceived", "_onOutgoingConnected",
                                              "_onOutgoingMessageReceived", "_onDisconnected")
                if not callable(getattr(TCPTransport, n, None))]
    probe = TcpConnection(poller=None)
    missing += [f"TcpConnection().{n}" for n in ("_TcpConnection__socket", "_TcpConnection__lastReadTime")
                if n not in vars(probe)]
    if missing:
        raise TransportInternalsChanged(f"pysyncobj changed ({', '.join(missing)} missing): the hardened Raft "
                                        "transport cannot be installed; use the pysyncobj version the agent pins")


# -- sockets and connections -----------------------------------------------------------------------

class GuardedSocket:
    """The socket pysyncobj's TcpConnection reads: `recv` reads no more than the connection may
    still read this tick (EAGAIN once it is spent) and shows every byte to the frame guard
    (EMSGSIZE on a refused frame: pysyncobj closes the connection on any other error than EAGAIN).
    Everything else is the real socket's."""

    def __init__(self, sock: socket.socket, conn: GuardedConnection) -> None:
        self._sock = sock
        self._conn = conn

    def recv(self, bufsize: int, *flags: int) -> bytes:
        allowed = self._conn.allowance(bufsize)
        if allowed <= 0:
            raise BlockingIOError(errno.EAGAIN, "read budget of this tick spent")
        try:
            data = self._sock.recv(allowed, *flags)
        except (BlockingIOError, InterruptedError):
            raise
        except OSError:
            self._conn.peer_closed = True
            raise
        if not data:
            self._conn.peer_closed = True
            return data
        self._conn.received(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class GuardedConnection(TcpConnection):
    """A pysyncobj TcpConnection whose reads go through a GuardedSocket. Outgoing ones are bound
    to this node's Raft host before they connect; pysyncobj reuses one object per peer across
    reconnects, so every connect starts a fresh guard."""

    def __init__(self, transport: HardenedTransport, *, direction: str, source: str | None = None,
                 socket: socket.socket | None = None, **kwargs: Any) -> None:
        # Set before TcpConnection.__init__, which calls setSockoptKeepalive().
        self._transport = transport
        self.direction = direction
        self.source = source
        self.link_timeout = float(kwargs.get("timeout", 10.0))  # TcpConnection's default
        self.last_sent = float("-inf")
        self._fresh()
        if socket is not None:
            self.opened_at = time.monotonic()
        super().__init__(socket=GuardedSocket(socket, self) if socket is not None else None, **kwargs)

    def _fresh(self) -> None:
        self.authenticated = False
        self.opened_at: float | None = None
        self.peer_closed = False
        self.delivered = 0     # messages handed to the transport before authentication
        self.logged = False    # this connection's drop has been logged
        self.guard = self._transport.new_guard(self.direction)
        self._budget = ReadBudget()

    # -- outgoing: bind and wrap between socket() and connect() ----------------------------------

    def connect(self, host: Any, port: Any) -> bool:
        try:
            self.source = normalize_ip(str(host))
        except ValueError:
            self.source = str(host)
        return bool(super().connect(host, port))

    def setSockoptKeepalive(self) -> None:
        super().setSockoptKeepalive()
        if self.direction != "outgoing" or self.state != CONNECTION_STATE.DISCONNECTED:
            return  # an accepted socket (already wrapped), or not called from connect()
        # tcp_connection.py connect(): the socket is created, its options set, this hook called,
        # and only then connected: the one place to bind it and to put the guard in front of it.
        raw = getattr(self, "_TcpConnection__socket", None)
        if not isinstance(raw, socket.socket):
            raise TransportInternalsChanged("pysyncobj's TcpConnection.connect no longer creates the socket "
                                            "before setSockoptKeepalive(): outgoing Raft links would be unguarded")
        self._fresh()
        host = self._transport.local_host
        if host:
            try:
                raw.bind((host, 0))
            except OSError as exc:  # the peer will refuse a link from elsewhere: say why
                event(log, "raft_bind_failed", level="warning", bind=host, cause=str(exc),
                      **self._transport.fields)
        self._TcpConnection__socket = GuardedSocket(raw, self)

    # -- idle links ------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        now = raft_clock()
        self.keep_if_idle(now)
        super().send(message)
        self.last_sent = now

    def keep_if_idle(self, now: float) -> None:
        """pysyncobj drops a link on the first send or read after `connectionTimeout` (3.5 s)
        without a read, and links between followers carry nothing while the leader is healthy:
        a candidate's vote requests after the leader died were lost on both ends (every failover
        of 6 took two elections, docs/benchmarks.md). A link this node has not sent on either and
        that the kernel holds open (no EOF, no error pending) is idle, not dead: it counts as read
        from. A link this node talks on and hears nothing from is left to pysyncobj's timeout."""
        if self.state != CONNECTION_STATE.CONNECTED:
            return
        if now - self._TcpConnection__lastReadTime < IDLE_PROBE or now - self.last_sent < self.link_timeout:
            return
        if self._open():
            self._TcpConnection__lastReadTime = now  # pysyncobj's clock (raft_clock), not time.monotonic

    def _open(self) -> bool:
        sock = getattr(self, "_TcpConnection__socket", None)
        raw = getattr(sock, "_sock", sock)
        if not isinstance(raw, socket.socket):
            return False
        try:
            if raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                return False
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except (BlockingIOError, InterruptedError):
            return True  # open, nothing to read
        except OSError:
            return False

    # -- reading ---------------------------------------------------------------------------------

    def allowance(self, want: int) -> int:
        limits = self._transport.limits
        per_tick = limits.read_per_tick if self.authenticated else limits.handshake_read_per_tick
        return min(want, self._budget.allowance(self._transport.tick, per_tick))

    def received(self, data: bytes) -> None:
        self._budget.spend(len(data))
        try:
            declared = self.guard.feed(data)
        except FrameRejected as exc:
            self._transport.log_drop(self, exc.cause, limit=exc.limit)
            raise OSError(errno.EMSGSIZE, str(exc)) from None
        if declared > self._transport.largest_frame:
            self._transport.largest_frame = declared

    # -- ending ----------------------------------------------------------------------------------

    def drop(self, cause: str, **fields: Any) -> None:
        """Close now (with a reset) and log why."""
        self._transport.log_drop(self, cause, **fields)
        sock = getattr(self, "_TcpConnection__socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
            except OSError:
                pass
        self.disconnect()

    def closed(self) -> None:
        """pysyncobj closed it. An incoming connection that never authenticated is logged with
        what ended it (an outgoing one ends this way whenever a peer is down: not logged)."""
        if self.logged or self.authenticated or self.direction != "incoming" or self._transport.destroying:
            return
        if self.peer_closed:
            cause = "closed_by_peer"
        elif self.guard.completed > self.delivered:  # pysyncobj refused a whole frame
            cause = "bad_frame"
        else:  # the poller reported an error or a hang-up
            cause = "connection_error"
        self._transport.log_drop(self, cause, level="info" if cause == "closed_by_peer" else "warning")


class _Listener:
    """The Raft port. pysyncobj's TcpServer accepts one connection per poll, builds a plain
    TcpConnection for every accepted socket, and unbinds for good on any accept error (EMFILE
    included). This one accepts up to `accepts_per_tick` per poll and lets the transport decide
    on each from its source address before any connection object exists."""

    def __init__(self, transport: HardenedTransport, host: str, port: int) -> None:
        self._transport, self._host, self._port = transport, host, port
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._transport.poller.subscribe(sock.fileno(), self._on_event, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._sock is not None:
            self._transport.poller.unsubscribe(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_event(self, _descr: int, event_type: int) -> None:
        if self._sock is not None and event_type & POLL_EVENT_TYPE.READ:
            self._transport.accept_from(self._sock)


# -- the transport ---------------------------------------------------------------------------------

class HardenedTransport(TCPTransport):
    limits = Limits()

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        check_internals()
        # TCPTransport.__init__ calls addNode() and _createServer(): everything they use first.
        self.tick = 0
        self.largest_frame = 0  # the largest declared frame length accepted so far
        self.destroying = False
        self.poller = syncObj._poller
        self.local_host = globalDnsResolver().resolve(selfNode.host) if selfNode is not None else None
        self.fields = {"node": getattr(syncObj, "node_id", None), "group": getattr(syncObj, "group", None),
                       "address": selfNode.address if selfNode is not None else None}
        super().__init__(syncObj, selfNode, otherNodes)

    def new_guard(self, direction: str) -> FrameGuard:
        # Handshake frames with a password: incoming, the peer's key then its address; outgoing,
        # the peer's key. (Without one the address alone, or nothing.)
        encrypted = self._syncObj.encryptor is not None
        handshake = (2 if encrypted else 1) if direction == "incoming" else (1 if encrypted else 0)
        return FrameGuard(self.limits.max_frame, self.limits.max_handshake_frame, handshake)

    def log_drop(self, conn: GuardedConnection | None, cause: str, *, source: str | None = None,
                 direction: str = "incoming", level: str = "warning", **fields: Any) -> None:
        if conn is not None:
            if conn.logged:
                return
            conn.logged = True
            source, direction = conn.source, conn.direction
            fields["authenticated"] = conn.authenticated
        event(log, "raft_connection_dropped", level=level, cause=cause, source=source, direction=direction,
              **self.fields, **fields)

    # -- accepting -------------------------------------------------------------------------------

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        address = conf.bindAddress or self._selfNode.address
        host, port = address.rsplit(":", 1)
        if conf.bindAddress is None:
            host = "::" if ":" in host else "0.0.0.0"
        else:
            host = globalDnsResolver().resolve(host)
        self._server = _Listener(self, host, int(port))

    def _member_ips(self) -> frozenset[str]:
        ips = set()
        for node in self._nodes:
            try:
                ips.add(normalize_ip(node.ip))
            except (TypeError, ValueError):  # unresolvable right now: nobody connects as it
                continue
        return frozenset(ips)

    def accept_from(self, listener: socket.socket) -> None:
        members = self._member_ips()
        pending = Counter(getattr(c, "source", None) for c in self._unknownConnections)
        for _ in range(self.limits.accepts_per_tick):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # EMFILE, ENFILE, ENOBUFS...: try again next tick; the port stays open.
                event(log, "raft_accept_failed", level="warning", cause=str(exc), **self.fields)
                return
            try:
                source = normalize_ip(addr[0])
            except ValueError:
                source = str(addr[0])
            cause = refusal(source, members, pending, self.limits)
            if cause is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
                finally:
                    sock.close()
                self.log_drop(None, cause, source=source)
                continue
            try:
                conn = self._incoming(sock, source)
            except OSError:  # reset between accept and here
                sock.close()
                self.log_drop(None, "connection_error", source=source)
                continue
            pending[source] += 1
            self._onNewIncomingConnection(conn)

    def _incoming(self, sock: socket.socket, source: str) -> GuardedConnection:
        conf = self._syncObj.conf
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, conf.sendBufferSize)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, conf.recvBufferSize)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return GuardedConnection(self, direction="incoming", source=source, poller=self.poller, socket=sock,
                                 timeout=conf.connectionTimeout, sendBufferSize=conf.sendBufferSize,
                                 recvBufferSize=conf.recvBufferSize)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if not isinstance(conn, GuardedConnection):
            return super()._onIncomingMessageReceived(conn, message)
        conn.delivered += 1
        if conn.sendRandKey or self._syncObj.encryptor is None:
            # This message names the node (or is a syncobj_admin command, or 'readonly').
            node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
            if node is not None:
                try:
                    expected = normalize_ip(node.ip)
                except (TypeError, ValueError):
                    expected = None
                if expected != conn.source:
                    return conn.drop("wrong_source_for_node", claimed=node.address)
            elif not isinstance(message, list) and message != "readonly":
                return conn.drop("unknown_node")
        super()._onIncomingMessageReceived(conn, message)
        if conn.state == CONNECTION_STATE.CONNECTED and conn not in self._unknownConnections:
            conn.authenticated = True
        return None

    # -- dialing ---------------------------------------------------------------------------------

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        plain = self._connections.get(node)
        if type(plain) is TcpConnection:  # just made by TCPTransport.addNode, never connected
            conf = self._syncObj.conf
            conn = GuardedConnection(self, direction="outgoing", poller=self.poller, timeout=conf.connectionTimeout,
                                     sendBufferSize=conf.sendBufferSize, recvBufferSize=conf.recvBufferSize,
                                     keepalive=conf.tcp_keepalive)
            # The same wiring as TCPTransport.addNode, on our connection.
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onOutgoingConnected(self, conn: Any) -> None:
        if isinstance(conn, GuardedConnection):
            conn.opened_at = time.monotonic()
        super()._onOutgoingConnected(conn)
        if isinstance(conn, GuardedConnection) and self._syncObj.encryptor is None:
            conn.authenticated = True

    def _onOutgoingMessageReceived(self, conn: Any, message: Any) -> None:
        super()._onOutgoingMessageReceived(conn, message)
        if isinstance(conn, GuardedConnection) and conn.state == CONNECTION_STATE.CONNECTED:
            conn.authenticated = True

    # -- every tick ------------------------------------------------------------------------------

    def _onTick(self) -> None:
        self.tick += 1
        super()._onTick()
        now = raft_clock()
        for node_conn in self._connections.values():
            if isinstance(node_conn, GuardedConnection):
                node_conn.keep_if_idle(now)
        deadline = time.monotonic() - self.limits.auth_timeout
        for conn in [*self._unknownConnections, *self._connections.values()]:
            if (isinstance(conn, GuardedConnection) and not conn.authenticated and conn.opened_at is not None
                    and conn.opened_at < deadline and conn.state == CONNECTION_STATE.CONNECTED):
                conn.drop("auth_timeout", limit=self.limits.auth_timeout)

    def _onDisconnected(self, conn: Any) -> None:
        if isinstance(conn, GuardedConnection):
            conn.closed()
        super()._onDisconnected(conn)

    def destroy(self) -> None:
        self.destroying = True  # connections closed at shutdown are not drops
        super().destroy()
