"""Raft shell: one pysyncobj cluster per group holding the replicated GroupState.

Rules from PYSYNCOBJ.md this module enforces:
- the cluster secret is mandatory (pickle on the wire: without a password, one frame runs code);
- journal AND full dump file in the data dir (0700), so committed state survives restarts;
- exactly one replicated method, `apply_command`, with an explicit `ver=` (method ids are positional);
  it wraps the pure `fsm.apply`, never raises, never blocks: it only swaps a reference and sets an Event;
- we tick the cluster from our own long-lived thread (autoTick off), so the group state is in place
  before the first journal entry is replayed and no other thread's lifetime can stop Raft;
- sync proposals always carry a timeout and are never made from a pysyncobj callback;
- the Raft snapshot (log compaction, snapshot transfer to a lagging member, restore at start) is
  every attribute assigned after `SyncObj.__init__` (PYSYNCOBJ.md rule 13): that is `state` and
  nothing else. Helpers (threads, events, callbacks) are assigned before `super().__init__`,
  and `snapshot_attributes()` says what a snapshot holds (a test keeps it at {"state"}).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Protocol

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.node import TCPNode

from . import fsm
from .config import RaftConfig
from .transport import HardenedTransport

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class ProposalError(Exception):
    """A command was not seen committed (no leader, timeout, leader change).

    `definitive` is True when it certainly was not and never will be (queue full, refused, no
    leader to queue it with, replaced in the log); otherwise (a timeout: the command may still
    wait in the queue for a leader; a leader change: the new leader may still commit it) the
    outcome is unknown, and only the operation id tells later whether it committed."""

    def __init__(self, message: str, definitive: bool = False) -> None:
        super().__init__(message)
        self.definitive = definitive


class Node(Protocol):
    """What the agent's loops (coordinator, worker, channel poller, operations, API) use of one
    group member: `GroupNode` here, an in-process stand-in in the tests (tests/support/inproc.py).

    `state` is the committed group state (replaced, never mutated); `propose` commits one command
    and returns fsm's outcome ({"code", "reason"}) or raises ProposalError."""

    state: dict[str, Any]

    def propose(self, op: str, *, timeout: float = 5.0, op_id: str | None = None, term: int | None = None,
                **args: Any) -> dict[str, str]: ...

    def preview(self, op: str, **args: Any) -> fsm.Outcome: ...

    def outcome(self, op_id: str) -> dict[str, str] | None: ...

    def current_term(self) -> int: ...

    def is_leader(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def leader_address(self) -> str | None: ...

    def raft_status(self) -> dict[str, Any]: ...

    def peer_connected(self, address: str) -> bool: ...

    def cluster(self) -> set[str]: ...

    def change_cluster(self, change: str, address: str, timeout: float = 10.0) -> None: ...

    def hand_over(self) -> bool: ...

    def stop(self) -> None: ...


# A follower's longest wait between ticks when no message comes (GroupNode._wait): below
# connectionRetryTime (1 s) and transport.IDLE_PROBE, so reconnects and link probes keep their pace.
FOLLOWER_WAIT = 0.5

_DEFINITIVE = {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.REQUEST_DENIED,
               FAIL_REASON.DISCARDED}


class GroupNode(SyncObj):
    """The replicated group state of one member. Read `state`; change it with `propose`."""

    def __init__(self, *, node_id: str, group: str, address: str, peers: list[str], secret: bytes,
                 data_dir: str, on_change: Callable[[], None],
                 compaction_entries: int = 200, seed: dict[str, Any] | None = None,
                 timing: tuple[float, float, float] | None = None) -> None:
        if not secret or len(secret) < 32:
            raise ValueError("the group secret is mandatory (>= 32 bytes): Raft traffic must be "
                             "encrypted and authenticated")
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)  # journal and dump are pickles
        # Attributes set before SyncObj.__init__ are not part of the replicated snapshot.
        self.node_id = node_id
        self.group = group  # for the transport's log lines
        self._on_change = on_change
        # {"code", "reason"} of the newest commands with an id this member applied since it started:
        # what a command that committed late came to (fsm.apply is deterministic: every member
        # computes the same). Local memory; the replicated `applied` only says that it committed.
        self._outcomes: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name=f"raft-{node_id}", daemon=True)
        self._peer_nodes = {a: TCPNode(a) for a in peers}
        beat, low, high = timing or (RaftConfig.heartbeat, RaftConfig.election_timeout_min,
                                     RaftConfig.election_timeout_max)
        # Longest wait of one tick (every message and every proposal wakes it sooner); see _wait.
        self._tick = beat / 2
        conf = SyncObjConf(
            password=secret,
            autoTick=False,
            journalFile=str(data / "raft.journal"),
            fullDumpFile=str(data / "raft.dump"),
            appendEntriesUseBatch=False,   # coordination commands are few: ~1 ms commits, not ~100 ms
            # config.RaftConfig: heartbeat, election timeout bounds (docs/benchmarks.md, failover).
            appendEntriesPeriod=beat, raftMinTimeout=low, raftMaxTimeout=high,
            useFork=False,                 # never fork a multi-threaded agent
            dynamicMembershipChange=True,
            connectionRetryTime=1.0,
            bindAddress=address,           # never 0.0.0.0: Raft listens on the group network only
            maxBindRetries=20,
            # Snapshot (a few KB of group state) after this many journal entries, or after 5 min
            # with new entries: the journal stays short and a lagging member catches up by snapshot.
            logCompactionMinEntries=compaction_entries,
            logCompactionMinTime=300,
            onStateChanged=lambda _old, _new: self._on_change(),
        )
        # Frame cap, per-tick reads, handshake deadline, members only (transport.py, PYSYNCOBJ.md 12/14).
        super().__init__(address, peers, conf, transportClass=HardenedTransport)
        # Replicated snapshot: everything assigned from here on, i.e. `state` alone. A re-formed
        # group's members all start from the same `seed` with empty journals (quorum-rollout reform).
        self.state: dict[str, Any] = seed if seed is not None else fsm.initial_state(group)
        self._ticker.start()

    # -- Raft thread ---------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.doTick(self._wait())
            except Exception:  # pragma: no cover - pysyncobj logs and continues the same way
                time.sleep(self._tick)
        self._doDestroy()

    def _wait(self) -> float:
        """How long this tick may wait for a message (every message and proposal ends it sooner).

        A leader: half the heartbeat period, so heartbeats leave on time. A follower has one
        deadline that matters, its election timeout (random, reset by each heartbeat), so it
        waits until exactly then, at most FOLLOWER_WAIT (connection retries, idle-link probes).
        Waiting a fixed tick instead put the followers' random deadlines on a grid: after the
        leader died they all ticked in step from its last heartbeat, and a coarser grid gave more
        split votes (a whole period: 2-3 elections for one kill at N=30), a finer one more idle
        CPU (half a period: every follower woke twice per heartbeat)."""
        deadline = getattr(self, "_SyncObj__raftElectionDeadline", None)  # pysyncobj's, set in __init__
        if self._isLeader() or not isinstance(deadline, (int, float)):
            return self._tick
        left = deadline - raft_clock()
        return min(left, FOLLOWER_WAIT) if left > 0 else self._tick

    @replicated(ver=0)  # first protocol version; a changed method gets ver=1 + setCodeVersion
    def apply_command(self, cmd: dict[str, Any]) -> dict[str, str]:
        try:
            self.state, outcome = fsm.apply(self.state, cmd)
            result = {"code": outcome.code, "reason": outcome.reason}
        except Exception as exc:  # fsm.apply is total; this is the last line of defence for Raft
            result = {"code": "invalid", "reason": f"internal error: {exc!r}"}
        op_id = cmd.get("id") if isinstance(cmd, dict) else None
        if isinstance(op_id, str) and result["code"] != "duplicate":
            self._outcomes[op_id] = dict(result)
            while len(self._outcomes) > fsm.APPLIED_LIMIT:
                self._outcomes.popitem(last=False)
        try:
            self._on_change()
        except Exception:  # a listener bug must never reach the Raft thread
            result["reason"] += " (change listener failed)"
        return result

    # -- other threads -------------------------------------------------------------------------

    def propose(self, op: str, *, timeout: float = 5.0, op_id: str | None = None, term: int | None = None,
                **args: Any) -> dict[str, str]:
        """Commit one command and return fsm's outcome. Never call from a pysyncobj callback.

        Leader steps pass `term`: the term in which the step started, so a result that arrives after
        this node lost that term is rejected by the state machine's fence. Other commands carry the
        node's current term."""
        cmd = {"op": op, "id": op_id or uuid.uuid4().hex, "term": self.current_term() if term is None else term,
               "time": time.time(), "actor": self.node_id, **args}
        try:
            result = self.apply_command(cmd, sync=True, timeout=timeout)
        except SyncObjException as exc:
            reason = exc.args[0] if exc.args else exc
            names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
            raise ProposalError(f"{op} not committed: {names.get(reason, reason)}",
                                definitive=reason in _DEFINITIVE) from exc
        return result

    def preview(self, op: str, **args: Any) -> fsm.Outcome:
        """What the state machine would answer to this command on the state as this node sees it
        now (nothing is proposed): lets the API do expensive checks only for commands that would
        be accepted."""
        cmd = {"op": op, "id": None, "term": self.current_term(), "time": time.time(), "actor": self.node_id, **args}
        return fsm.apply(self.state, cmd)[1]

    def outcome(self, op_id: str) -> dict[str, str] | None:
        """fsm's answer to the command with this id when this member applied it, if it did since it
        started and it is among the newest fsm.APPLIED_LIMIT; None otherwise."""
        found = self._outcomes.get(op_id)
        return dict(found) if found else None

    # (no properties here: SyncObj.__init__ evaluates every attribute through dir())
    def current_term(self) -> int:
        return int(self._getTerm())

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def is_ready(self) -> bool:
        """False while the journal is replayed and until this node caught up with the leader's
        commit index: `state` is a past state then."""
        return bool(self.isReady())

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return leader.address if leader is not None else None

    def _node(self, address: str) -> TCPNode:
        node = self._peer_nodes.get(address)
        if node is None:
            node = self._peer_nodes.setdefault(address, TCPNode(address))
        return node

    def peer_connected(self, address: str) -> bool:
        """Whether this node's Raft link to the peer is up (for the leader: the peer answers)."""
        return bool(self.isNodeConnected(self._node(address)))

    def cluster(self) -> set[str]:
        """Raft addresses of the cluster as this node knows it (itself included)."""
        return {n.address for n in self.otherNodes} | {self.selfNode.address}

    def change_cluster(self, change: str, address: str, timeout: float = 10.0) -> None:
        """Add or remove one member of the Raft cluster (pysyncobj dynamic membership: one change
        at a time, committed like a command) and wait for the outcome. Leader only; never call
        from a pysyncobj callback. Raises ProposalError."""
        done, outcome = threading.Event(), {}

        def callback(_result: Any, error: int) -> None:
            outcome["error"] = error
            done.set()

        if change == "add":
            self.addNodeToCluster(self._node(address), callback=callback)
        elif change == "remove":
            self.removeNodeFromCluster(self._node(address), callback=callback)
        else:
            raise ValueError(f"unknown cluster change {change!r}")
        if not done.wait(timeout):
            raise ProposalError(f"cluster {change} {address} not committed: Timeout")
        if outcome["error"] != FAIL_REASON.SUCCESS:
            names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
            raise ProposalError(f"cluster {change} {address} not committed: {names.get(outcome['error'])}",
                                definitive=outcome["error"] in _DEFINITIVE)

    def hand_over(self) -> bool:
        """Ask pysyncobj to transfer leadership to the most caught-up follower (before this
        node is removed: a leader cannot remove itself). True when the request was sent."""
        done, outcome = threading.Event(), {}

        def callback(_result: Any, error: int) -> None:
            outcome["error"] = error
            done.set()

        self.transferLeadership(callback=callback)
        return done.wait(5.0) and outcome.get("error") == FAIL_REASON.SUCCESS

    def raft_status(self) -> dict[str, Any]:
        status = self.getStatus()
        return {
            "role": _ROLES.get(status["state"], "unknown"),
            "term": status["raft_term"],
            "has_quorum": bool(status["has_quorum"]),
            "commit_index": status["commit_idx"],
            "last_applied": status["last_applied"],
            "log_entries": status["log_len"],
            "ready": self.is_ready(),
        }

    def snapshot_attributes(self) -> set[str]:
        """Names of our attributes a Raft snapshot of this node holds (pysyncobj pickles every
        attribute assigned after SyncObj.__init__; its own `_SyncObj__enabledCodeVersion` is one)."""
        own = set(self.__dict__.get("_SyncObj__properies", ()))
        return {k for k in vars(self) if k not in own and not k.startswith("_SyncObj__")}

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._ticker:
            self._ticker.join(timeout=5)
