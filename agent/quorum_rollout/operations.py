"""Commands submitted through this node's API, followed until the group's log says what became of them.

A proposal can time out without failing: the leader may be unreachable, an election may be on,
the group may have lost quorum. pysyncobj may then still commit it later, or lose it. The API
answers such a command with 202 and its operation id; from then on this node owns it: it
re-proposes the same command with the same id every few seconds (the state machine applies an
id once, so a copy that commits late is a no-op) until the log shows it committed or rejected,
or `ttl` seconds pass (`expired`: nothing more will be tried; check the status and send again).

`document(op_id)` is what `GET /v1/operations/<id>` returns: `committed` (with `changed` and the
state machine's `code` and `reason` when this node applied it since it started: a release that
commits late may still find the group already at that version), `rejected` (with the state
machine's reason), `pending`, `expired` or `unknown`.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .group import Node, ProposalError
from .log import event, get_logger

log = get_logger("quorum_rollout.operations")
LIMIT = 1024


class Operations:
    def __init__(self, node: Node, *, group: str, ttl: float = 600.0, retry_every: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self._group, self._ttl, self._every, self._clock = group, ttl, retry_every, clock
        self._ops: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="operations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, op: str, op_id: str, args: dict[str, Any], timeout: float) -> dict[str, str]:
        """Propose and return the state machine's outcome; on an unknown outcome remember the
        command for re-proposal and raise the ProposalError (definitive ones are not kept)."""
        with self._lock:
            self._ops[op_id] = {"op": op, "args": args, "time": self._clock(), "status": "pending"}
            while len(self._ops) > LIMIT:
                self._ops.pop(next(iter(self._ops)))
        try:
            result = self.node.propose(op, op_id=op_id, timeout=timeout, **args)
        except ProposalError as exc:
            if exc.definitive:
                self._forget(op_id)
            raise
        self._forget(op_id)
        return result

    def document(self, op_id: str) -> dict[str, Any]:
        state = self.node.state
        if op_id in state["applied"]:
            doc: dict[str, Any] = {"id": op_id, "status": "committed"}
            outcome = self.node.outcome(op_id)
            if outcome is not None:
                doc.update(outcome, changed=outcome["code"] == "accepted")
            return doc
        for entry in reversed(state["rejected"]):
            if entry.get("id") == op_id:
                return {"id": op_id, "status": "rejected", "op": entry.get("op"), "code": entry.get("code"),
                        "reason": entry.get("reason")}
        with self._lock:
            kept = self._ops.get(op_id)
            kept = dict(kept) if kept else None
        if kept is None:
            return {"id": op_id, "status": "unknown"}
        doc = {"id": op_id, "status": kept["status"], "op": kept["op"],
               "submitted_seconds_ago": round(self._clock() - kept["time"], 1)}
        if kept["status"] == "expired":
            doc["reason"] = (f"not committed within {self._ttl:g}s; no longer retried: check the group's status "
                             "and send the command again if it is still wanted")
        return doc

    def _forget(self, op_id: str) -> None:
        with self._lock:
            self._ops.pop(op_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            if self.node.is_ready():
                self._retry()

    def _retry(self) -> None:
        state = self.node.state
        now = self._clock()
        with self._lock:
            pending = [(k, dict(v)) for k, v in self._ops.items() if v["status"] == "pending"]
        for op_id, entry in pending:
            if op_id in state["applied"] or any(r.get("id") == op_id for r in state["rejected"]):
                self._forget(op_id)  # the log answers from now on
                continue
            if now - entry["time"] > self._ttl:
                with self._lock:
                    if op_id in self._ops:
                        self._ops[op_id]["status"] = "expired"
                event(log, "operation_expired", level="warning", group=self._group, step=entry["op"],
                      operation=op_id, cause=f"not committed within {self._ttl:g}s")
                continue
            try:
                result = self.node.propose(entry["op"], op_id=op_id, timeout=5.0, **entry["args"])
            except ProposalError:
                continue
            self._forget(op_id)
            event(log, "operation_committed", group=self._group, step=entry["op"], operation=op_id,
                  outcome=result["code"], late_seconds=round(now - entry["time"], 1))
