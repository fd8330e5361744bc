"""transport.py: the frame guard, the read budget and admission as pure code; then the Raft port
of a real in-process GroupNode (real sockets on 127.x.y.z, milliseconds) for what only a socket
shows: links bound to the node's own address, a hostile header cut before its body, a foreign
address refused at accept, the per-source limit, the handshake deadline, one log line each."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.transport import TCPTransport

from quorum_rollout import transport as T
from quorum_rollout.group import FOLLOWER_WAIT, GroupNode
from quorum_rollout.transport import FrameGuard, FrameRejected, HardenedTransport, Limits, ReadBudget, refusal


def header(n: int) -> bytes:
    return struct.pack("i", n)


# -- frame guard -----------------------------------------------------------------------------------

def test_a_header_declaring_2gib_is_refused_before_any_of_its_body():
    guard = FrameGuard(max_frame=1 << 20, max_handshake_frame=4096, handshake_frames=0)
    with pytest.raises(FrameRejected) as refused:
        guard.feed(header(2**31 - 1))  # the header alone: nothing of the body was needed
    assert (refused.value.cause, refused.value.declared, refused.value.limit) == ("frame_too_large", 2**31 - 1, 1 << 20)


def test_handshake_frames_have_the_small_limit_and_the_frames_after_them_the_large_one():
    guard = FrameGuard(max_frame=1 << 20, max_handshake_frame=4096, handshake_frames=2)
    assert guard.feed(header(200) + b"k" * 200 + header(4096) + b"a" * 4096) == 4096
    assert guard.feed(header(1 << 20)) == 1 << 20  # the third frame may be large
    assert guard.feed(b"x" * 1000) == 0, "no header completed"
    assert (guard.frames, guard.completed, guard.largest) == (3, 2, 1 << 20)
    second = FrameGuard(max_frame=1 << 20, max_handshake_frame=4096, handshake_frames=2)
    second.feed(header(200) + b"k" * 200)
    with pytest.raises(FrameRejected, match="limit 4096"):
        second.feed(header(4097))


def test_the_limit_is_inclusive_and_applies_to_every_frame():
    guard = FrameGuard(max_frame=100, max_handshake_frame=10, handshake_frames=0)
    guard.feed(header(100) + b"x" * 100)
    with pytest.raises(FrameRejected):
        guard.feed(header(101))


@pytest.mark.parametrize("declared", [0, -1, -(2**31)])
def test_empty_and_negative_lengths_are_refused(declared: int):
    with pytest.raises(FrameRejected) as refused:
        FrameGuard(1 << 20, 4096, 0).feed(header(declared))
    assert refused.value.cause == "bad_frame_length"


def test_frames_split_anywhere_across_reads_are_followed_exactly():
    frames = [os.urandom(random.Random(i).randint(1, 3000)) for i in range(40)]
    stream = b"".join(header(len(f)) + f for f in frames) + header(5000)  # the last one is too large
    rng = random.Random(7)
    guard, pos, end = FrameGuard(max_frame=4000, max_handshake_frame=4000, handshake_frames=0), 0, 0
    with pytest.raises(FrameRejected):
        while pos < len(stream):
            end = pos + rng.choice([1, 2, 3, 5, 64, 1000, 9000])
            guard.feed(stream[pos:end])
            pos = end
    assert guard.completed == 40 and guard.largest == max(len(f) for f in frames)
    assert end >= len(stream), "refused by the read that completed the last header, not before"


# -- read budget and admission ---------------------------------------------------------------------

def test_the_read_budget_is_per_tick():
    budget = ReadBudget()
    assert budget.allowance(tick=1, per_tick=100) == 100
    budget.spend(70)
    assert budget.allowance(tick=1, per_tick=100) == 30
    budget.spend(30)
    assert budget.allowance(tick=1, per_tick=100) == 0
    assert budget.allowance(tick=2, per_tick=100) == 100, "a new tick, a new budget"


def test_admission_members_only_then_per_source_then_in_total():
    limits = Limits(max_pending_per_source=2, max_pending=3)
    members = frozenset({"10.0.0.1", "10.0.0.2"})
    assert refusal("10.0.0.9", members, Counter(), limits) == "not_a_member"
    assert refusal("10.0.0.1", members, Counter(), limits) is None
    assert refusal("10.0.0.1", members, Counter({"10.0.0.1": 1}), limits) is None
    assert refusal("10.0.0.1", members, Counter({"10.0.0.1": 2}), limits) == "too_many_pending_from_source"
    assert refusal("10.0.0.2", members, Counter({"10.0.0.1": 2, "10.0.0.2": 1}), limits) == "too_many_pending"
    assert refusal("10.0.0.2", members, Counter({"10.0.0.1": 1, "10.0.0.2": 1}), limits) is None


def test_addresses_have_one_spelling():
    assert T.normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert T.normalize_ip("fe80:0:0::1%eth0") == "fe80::1"
    assert T.normalize_ip("127.0.0.1") == "127.0.0.1"
    with pytest.raises(ValueError):
        T.normalize_ip("node-1.example")


def test_defaults_leave_room_for_the_largest_legitimate_frame_and_bound_a_pending_connection():
    from quorum_rollout.config import MAX_MANIFEST_BYTES

    batch = 64 * 1024  # pysyncobj's appendEntriesBatchSizeBytes and logCompactionBatchSize (defaults)
    worst = (batch + MAX_MANIFEST_BYTES + 4096) * 4 // 3 + 1024  # < one batch + one entry, base64 by Fernet
    assert worst < T.MAX_FRAME < 2**31 // 1024
    assert T.HANDSHAKE_READ_PER_TICK + T.MAX_HANDSHAKE_FRAME < 16 * 1024  # memory per pending connection
    assert T.MAX_PENDING * 16 * 1024 < 2 << 20


def test_an_installed_pysyncobj_without_the_hooks_refuses_to_start(monkeypatch: pytest.MonkeyPatch):
    T.check_internals()
    monkeypatch.delattr(TCPTransport, "_onIncomingMessageReceived")
    with pytest.raises(T.TransportInternalsChanged, match="_onIncomingMessageReceived"):
        T.check_internals()


# -- the Raft port of a real node ------------------------------------------------------------------

SECRET = b"s" * 48
PORT = 7130


@pytest.fixture
def subnet() -> str:
    return f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., GroupNode]]:
    nodes: list[GroupNode] = []

    def make(address: str, peers: list[str]) -> GroupNode:
        node = GroupNode(node_id=address, group="g", address=address, peers=peers, secret=SECRET,
                         data_dir=str(tmp_path / address), on_change=lambda: None)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def wait(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def drops(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.qr_fields for r in caplog.records if r.getMessage() == "raft_connection_dropped"]  # type: ignore[attr-defined]


def transport_of(node: GroupNode) -> HardenedTransport:
    return node._SyncObj__transport  # type: ignore[attr-defined]


def test_links_leave_from_the_nodes_own_address(make_node, subnet):
    low, high = f"{subnet}.2:{PORT}", f"{subnet}.3:{PORT}"
    a, b = make_node(low, [high]), make_node(high, [low])
    wait(lambda: a.peer_connected(high) and b.peer_connected(low))
    dialer = transport_of(b)  # only the higher address dials
    conn = next(iter(dialer._connections.values()))
    assert isinstance(conn, T.GuardedConnection) and conn.authenticated and conn.direction == "outgoing"
    assert conn._TcpConnection__socket.getsockname()[0] == f"{subnet}.3"
    accepted = next(iter(transport_of(a)._connections.values()))
    assert accepted.direction == "incoming" and accepted.source == f"{subnet}.3" and accepted.authenticated
    assert transport_of(a).largest_frame > 0
    # The transport and its log fields are set up before SyncObj.__init__: the Raft snapshot
    # (every attribute assigned after it, PYSYNCOBJ.md rule 13) still holds the state alone.
    assert a.snapshot_attributes() == {"state"} and b.snapshot_attributes() == {"state"}


def test_a_link_that_cannot_leave_from_its_address_is_logged_and_refused_by_the_peer(make_node, subnet, caplog,
                                                                                   monkeypatch):
    """An unbound link leaves from 127.0.0.1 on loopback (PYSYNCOBJ.md rule 15): the peer cannot
    attribute it and refuses it; the dialer says why it could not bind."""
    caplog.set_level(logging.INFO, logger="quorum_rollout.transport")
    low, high = f"{subnet}.2:{PORT}", f"{subnet}.3:{PORT}"
    original = HardenedTransport.__init__

    def unbindable(self: HardenedTransport, *args: Any) -> None:
        original(self, *args)
        if self._selfNode.address == high:
            self.local_host = "192.0.2.1"  # TEST-NET-1: not an address of this machine

    monkeypatch.setattr(HardenedTransport, "__init__", unbindable)
    a = make_node(low, [high])
    make_node(high, [low])
    wait(lambda: {"raft_bind_failed", "raft_connection_dropped"} <= {r.getMessage() for r in caplog.records})
    assert not a.peer_connected(high)
    failed = next(r.qr_fields for r in caplog.records if r.getMessage() == "raft_bind_failed")  # type: ignore[attr-defined]
    assert failed["bind"] == "192.0.2.1" and failed["address"] == high and failed["cause"]
    assert drops(caplog)[0]["cause"] == "not_a_member" and drops(caplog)[0]["source"] == "127.0.0.1"


def test_a_node_address_claimed_from_another_members_host_is_refused(make_node, subnet, caplog, monkeypatch):
    """With the group secret, from a member's host, but naming another member: not that member."""
    caplog.set_level(logging.INFO, logger="quorum_rollout.transport")
    a, b, c = (f"{subnet}.{i}:{PORT}" for i in (2, 3, 4))
    original = HardenedTransport.__init__

    def impostor(self: HardenedTransport, *args: Any) -> None:
        original(self, *args)
        if self._selfNode.address == c:
            self.local_host = f"{subnet}.3"  # c's links leave from b's host

    monkeypatch.setattr(HardenedTransport, "__init__", impostor)
    node_a = make_node(a, [b, c])
    make_node(c, [a, b])
    wait(lambda: any(d["cause"] == "wrong_source_for_node" for d in drops(caplog)))
    refused = next(d for d in drops(caplog) if d["cause"] == "wrong_source_for_node")
    assert refused["claimed"] == c and refused["source"] == f"{subnet}.3" and refused["address"] == a
    assert not node_a.peer_connected(c)


def test_hostile_connections_are_closed_and_logged_with_cause_and_source(make_node, subnet, caplog):
    caplog.set_level(logging.INFO, logger="quorum_rollout.transport")
    member, target = f"{subnet}.3", (f"{subnet}.2", PORT)
    make_node(f"{subnet}.2:{PORT}", [f"{member}:{PORT}"])  # its peer never runs: the address is free

    def connect(source: str) -> socket.socket:
        return wait(lambda: _try_connect(target, source))

    big = connect(member)
    big.sendall(header(2**31 - 1) + b"x" * 1000)
    assert closed_by_peer(big)
    foreign = _try_connect(target, "127.0.0.1")  # None: reset before connect() even returned
    assert foreign is None or closed_by_peer(foreign, timeout=2)
    garbage = connect(member)
    garbage.sendall(header(100) + os.urandom(100))  # does not decrypt with the group secret
    assert closed_by_peer(garbage)
    causes = [(d["cause"], d["source"]) for d in wait(lambda: len(drops(caplog)) >= 3 and drops(caplog))]
    assert causes[:3] == [("frame_too_large", member), ("not_a_member", "127.0.0.1"), ("bad_frame", member)]
    assert drops(caplog)[0]["limit"] == 4096 and drops(caplog)[0]["authenticated"] is False


def test_pending_connections_per_source_and_the_handshake_deadline(make_node, subnet, caplog, monkeypatch):
    monkeypatch.setattr(HardenedTransport, "limits", Limits(max_pending_per_source=2, auth_timeout=0.5))
    caplog.set_level(logging.INFO, logger="quorum_rollout.transport")
    member, target = f"{subnet}.3", (f"{subnet}.2", PORT)
    node = make_node(f"{subnet}.2:{PORT}", [f"{member}:{PORT}"])
    held = [wait(lambda: _try_connect(target, member)) for _ in range(2)]
    wait(lambda: len(transport_of(node)._unknownConnections) == 2)
    third = _try_connect(target, member)
    assert third is None or closed_by_peer(third, timeout=1), "a third pending connection from one source"
    assert all(closed_by_peer(s) for s in held), "pysyncobj alone never closes a silent connection"
    causes = Counter(d["cause"] for d in drops(caplog))
    assert causes == {"too_many_pending_from_source": 1, "auth_timeout": 2}, causes


def _try_connect(target: tuple[str, int], source: str) -> socket.socket | None:
    try:
        return socket.create_connection(target, timeout=1, source_address=(source, 0))
    except OSError:
        return None


def test_the_first_vote_request_after_a_long_quiet_crosses_the_link_between_followers(make_node, subnet, monkeypatch):
    """Links between followers carry nothing while the leader is healthy; pysyncobj dropped such a
    link on its first send or read after connectionTimeout (3.5 s) without a read, so the first
    vote requests after the leader died were lost and every failover took a second election
    (docs/benchmarks.md, Raft by group size)."""
    sent: list[tuple[str, str, int]] = []
    received: list[tuple[str, str, int]] = []
    send, deliver = T.HardenedTransport.send, T.HardenedTransport._onMessageReceived

    def record_send(self, node, message):
        if isinstance(message, dict) and message.get("type") == "request_vote":
            sent.append((self._selfNode.address, node.address, message["term"]))
        return send(self, node, message)

    def record_receipt(self, node, message):
        if isinstance(message, dict) and message.get("type") == "request_vote":
            received.append((node.address, self._selfNode.address, message["term"]))
        return deliver(self, node, message)

    monkeypatch.setattr(T.HardenedTransport, "send", record_send)
    monkeypatch.setattr(T.HardenedTransport, "_onMessageReceived", record_receipt)
    addresses = [f"{subnet}.{i}:{PORT}" for i in (2, 3, 4)]
    nodes = [make_node(a, [p for p in addresses if p != a]) for a in addresses]
    leader = wait(lambda: next((n for n in nodes if n.is_leader()), None), 15)
    survivors = [n for n in nodes if n is not leader]
    time.sleep(4.5)  # the quiet itself: longer than pysyncobj's connectionTimeout (3.5 s)
    assert all(a.peer_connected(b.node_id) for a in survivors for b in survivors if a is not b)
    sent.clear()
    leader.stop()
    wait(lambda: any(n.is_leader() for n in survivors), 15)
    first = next(s for s in sent if s[1] != leader.node_id)  # (from, to, term): the first request to a survivor
    assert first in received, f"lost: {first}; sent {sent}; received {received}"


def test_raft_timing_from_the_config_reaches_pysyncobj(tmp_path, subnet):
    node = GroupNode(node_id="a", group="g", address=f"{subnet}.2:{PORT}", peers=[], secret=SECRET,
                     data_dir=str(tmp_path / "a"), on_change=lambda: None, timing=(0.05, 0.3, 0.9))
    try:
        conf = node._SyncObj__conf  # type: ignore[attr-defined]
        assert (conf.appendEntriesPeriod, conf.raftMinTimeout, conf.raftMaxTimeout) == (0.05, 0.3, 0.9)
    finally:
        node.stop()


def test_a_follower_wakes_once_per_heartbeat_and_exactly_at_its_election_deadline(make_node, subnet, monkeypatch):
    """An idle follower's Raft thread runs a tick per message, not also on a fixed grid in between
    (half its idle CPU), and waits for no message past its own random election deadline: the
    deadlines of the followers stay spread when the leader dies (no grid to collide on)."""
    ticks: Counter[str] = Counter()
    do_tick = GroupNode.doTick

    def counted(self, timeout):
        ticks[self.node_id] += 1
        return do_tick(self, timeout)

    monkeypatch.setattr(GroupNode, "doTick", counted)
    addresses = [f"{subnet}.{i}:{PORT}" for i in (2, 3, 4)]
    nodes = [make_node(a, [p for p in addresses if p != a]) for a in addresses]
    leader = wait(lambda: next((n for n in nodes if n.is_leader()), None), 15)
    followers = [n for n in nodes if n is not leader]
    for follower in followers:  # heartbeats move the deadline on meanwhile: read it after the wait
        before = T.raft_clock()
        waited = follower._wait()
        deadline = follower._SyncObj__raftElectionDeadline  # type: ignore[attr-defined]
        assert 0 < waited <= min(deadline - before, FOLLOWER_WAIT)
    assert leader._wait() == leader._tick
    ticks.clear()
    start = time.monotonic()
    time.sleep(2.0)  # the quiet measured (not a wait for a condition): 20 heartbeats at 0.1 s
    heartbeats = (time.monotonic() - start) / 0.1
    for follower in followers:
        assert ticks[follower.node_id] <= 1.4 * heartbeats, (ticks, heartbeats)  # was 2.5x: the grid too
    # (no lower bound on the leader's ticks: on a loaded machine a starved thread ticks less)
