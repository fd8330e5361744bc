"""Raft shell: one pysyncobj cluster per group holding the replicated GroupState.

Rules from PYSYNCOBJ.md this module enforces:
- the cluster secret is mandatory (pickle on the wire: without a password, one frame runs code);
- journal AND full dump file in the data dir (0700), so committed state survives restarts;
- exactly one replicated method, `apply_command`, with an explicit `ver=` (method ids are positional);
  it wraps the pure `fsm.apply`, never raises, never blocks: it only swaps a reference and sets an Event;
- we tick the cluster from our own long-lived thread (autoTick off), so the group state is in place
  before the first journal entry is replayed and no other thread's lifetime can stop Raft;
- sync proposals always carry a timeout and are never made from a pysyncobj callback.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated

from . import fsm

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class ProposalError(Exception):
    """A command could not be committed (no leader, timeout, ambiguous outcome)."""


class GroupNode(SyncObj):
    """The replicated group state of one member. Read `state`; change it with `propose`."""

    def __init__(self, *, node_id: str, group: str, address: str, peers: list[str], secret: bytes,
                 data_dir: str, on_change: Callable[[], None], tick_period: float = 0.05) -> None:
        if not secret or len(secret) < 32:
            raise ValueError("the group secret is mandatory (>= 32 bytes): Raft traffic must be "
                             "encrypted and authenticated")
        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)  # journal and dump are pickles
        # Attributes set before SyncObj.__init__ are not part of the replicated snapshot.
        self.node_id = node_id
        self._on_change = on_change
        self._stop = threading.Event()
        self._tick_period = tick_period
        conf = SyncObjConf(
            password=secret,
            autoTick=False,
            journalFile=str(data / "raft.journal"),
            fullDumpFile=str(data / "raft.dump"),
            appendEntriesUseBatch=False,   # coordination commands are few: ~1 ms commits, not ~100 ms
            useFork=False,                 # never fork a multi-threaded agent
            dynamicMembershipChange=True,
            connectionRetryTime=1.0,
            bindAddress=address,           # never 0.0.0.0: Raft listens on the group network only
            maxBindRetries=20,
            onStateChanged=lambda _old, _new: self._on_change(),
        )
        super().__init__(address, peers, conf)
        # Replicated snapshot: everything assigned from here on.
        self.state: dict[str, Any] = fsm.initial_state(group)
        self._ticker = threading.Thread(target=self._tick_loop, name=f"raft-{node_id}", daemon=True)
        self._ticker.start()

    # -- Raft thread ---------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.doTick(self._tick_period)
            except Exception:  # pragma: no cover - pysyncobj logs and continues the same way
                time.sleep(self._tick_period)
        self._doDestroy()

    @replicated(ver=0)  # first protocol version; a changed method gets ver=1 + setCodeVersion
    def apply_command(self, cmd: dict[str, Any]) -> dict[str, str]:
        try:
            self.state, outcome = fsm.apply(self.state, cmd)
            result = {"code": outcome.code, "reason": outcome.reason}
        except Exception as exc:  # fsm.apply is total; this is the last line of defence for Raft
            result = {"code": "invalid", "reason": f"internal error: {exc!r}"}
        try:
            self._on_change()
        except Exception:  # a listener bug must never reach the Raft thread
            result["reason"] += " (change listener failed)"
        return result

    # -- other threads -------------------------------------------------------------------------

    def propose(self, op: str, *, timeout: float = 5.0, op_id: str | None = None, **args: Any) -> dict[str, str]:
        """Commit one command and return fsm's outcome. Never call from a pysyncobj callback."""
        cmd = {"op": op, "id": op_id or uuid.uuid4().hex, "term": self.current_term(), "time": time.time(),
               "actor": self.node_id, **args}
        try:
            result = self.apply_command(cmd, sync=True, timeout=timeout)
        except SyncObjException as exc:
            reason = exc.args[0] if exc.args else exc
            names = {v: k for k, v in vars(FAIL_REASON).items() if k.isupper()}
            raise ProposalError(f"{op} not committed: {names.get(reason, reason)}") from exc
        return result

    # (no properties here: SyncObj.__init__ evaluates every attribute through dir())
    def current_term(self) -> int:
        return int(self._getTerm())

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return leader.address if leader is not None else None

    def raft_status(self) -> dict[str, Any]:
        status = self.getStatus()
        return {
            "role": _ROLES.get(status["state"], "unknown"),
            "term": status["raft_term"],
            "has_quorum": bool(status["has_quorum"]),
            "commit_index": status["commit_idx"],
            "last_applied": status["last_applied"],
            "ready": bool(self.isReady()),
        }

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._ticker:
            self._ticker.join(timeout=5)
