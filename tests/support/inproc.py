"""An in-process group for unit tests: N members sharing one replicated state, no sockets, no Raft.

Every proposal that commits runs the real `fsm.apply`, in one order for the whole group (a lock),
so the committed state is exactly what a real group would hold after the same commands. What Raft
would decide is in the test's hands instead:

* leadership and terms: `elect(member)` makes a member leader in a new term; `depose()` leaves
  the group without a leader in a new term (an election under way). Every member's
  `current_term()` is the group's term.
* proposal errors with `group.ProposalError` semantics: no leader -> definitive (`MISSING_LEADER`:
  nothing was queued); `fail_next(op, kind)` makes the next proposal of `op` end as one of
  `KINDS` (ambiguous commits: applied but the caller told it timed out, or not applied and told it
  timed out, possibly committed later by `deliver_late()`).
* links: `disconnect(member)` / `reconnect(member)` for `peer_connected`.

Members see every commit at once (no follower lag); `on_commit` callbacks run after each commit,
outside the lock, like GroupNode's change listener.
"""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum_rollout import fsm, signing
from quorum_rollout.config import (
    AgentConfig,
    ApiConfig,
    ArtifactsConfig,
    Check,
    Hooks,
    InstallConfig,
    Peer,
    RaftConfig,
    RolloutConfig,
    TrustedKey,
)
from quorum_rollout.group import ProposalError

# How a proposal armed with `fail_next` ends:
#   "applied": committed, but the caller gets a timeout (ProposalError, definitive=False)
#   "lost":    never committed, the caller gets a timeout (definitive=False)
#   "late":    the caller gets a timeout now; `deliver_late()` commits it (a new leader did)
#   "refused": never committed, definitive (queue full / request denied)
KINDS = ("applied", "lost", "late", "refused")


@dataclass
class Committed:
    """One command as the log holds it, with fsm's answer."""

    cmd: dict[str, Any]
    code: str
    reason: str


class InProcGroup:
    def __init__(self, group: str, members: list[str], *, wall: Callable[[], float] = time.time,
                 seed: dict[str, Any] | None = None, term: int = 0) -> None:
        # `seed`: the state the group starts from (as GroupNode's); `term`: the Raft term it is in.
        self.state: dict[str, Any] = seed if seed is not None else fsm.initial_state(group)
        self.term = term
        self.leader: str | None = None
        self.log: list[Committed] = []          # every command that reached fsm.apply, in commit order
        self.proposed: list[dict[str, Any]] = []  # every command any member proposed, committed or not
        self.wall = wall
        self.nodes = {m: InProcNode(self, m) for m in members}
        self.links = set(members)               # members whose Raft link is up
        self.raft_cluster = {f"{m}:4321" for m in members}  # Raft addresses in the cluster (change_cluster)
        self.on_commit: list[Callable[[], None]] = []
        self._faults: list[tuple[str, str]] = []
        self._late: list[dict[str, Any]] = []
        self._lock = threading.RLock()

    # -- the test's controls ---------------------------------------------------------------------

    def elect(self, member: str) -> int:
        """`member` leads in a new term; returns the term."""
        with self._lock:
            self.term += 1
            self.leader = member
            return self.term

    def depose(self) -> int:
        """No leader, in a new term (an election under way); returns the term."""
        with self._lock:
            self.term += 1
            self.leader = None
            return self.term

    def fail_next(self, op: str, kind: str) -> None:
        assert kind in KINDS, kind
        with self._lock:
            self._faults.append((op, kind))

    def deliver_late(self) -> None:
        """Commit the proposals that ended "late" (the outcome their callers never heard)."""
        with self._lock:
            late, self._late = self._late, []
        for cmd in late:
            self._commit(cmd)

    def disconnect(self, member: str) -> None:
        self.links.discard(member)

    def reconnect(self, member: str) -> None:
        self.links.add(member)

    def history(self, **match: Any) -> list[dict[str, Any]]:
        """Committed history entries whose fields equal `match` (e.g. op="fail")."""
        return [e for e in self.state["history"] if all(e.get(k) == v for k, v in match.items())]

    def accepted(self, op: str | None = None) -> list[dict[str, Any]]:
        """Commands fsm accepted (optionally only `op`), in commit order."""
        return [c.cmd for c in self.log if c.code == "accepted" and (op is None or c.cmd["op"] == op)]

    # -- what members call -------------------------------------------------------------------------

    def _propose(self, cmd: dict[str, Any]) -> dict[str, str]:
        with self._lock:
            self.proposed.append(cmd)
            if self.leader is None:
                raise ProposalError(f"{cmd['op']} not committed: MISSING_LEADER", definitive=True)
            kind = next((k for o, k in self._faults if o == cmd["op"]), None)
            if kind is not None:
                self._faults.remove((cmd["op"], kind))
            if kind == "refused":
                raise ProposalError(f"{cmd['op']} not committed: REQUEST_DENIED", definitive=True)
            if kind in ("lost", "late"):
                if kind == "late":
                    self._late.append(cmd)
                raise ProposalError(f"{cmd['op']} not committed: Timeout")
        result = self._commit(cmd)
        if kind == "applied":
            raise ProposalError(f"{cmd['op']} not committed: Timeout")
        return result

    def _commit(self, cmd: dict[str, Any]) -> dict[str, str]:
        with self._lock:
            self.state, outcome = fsm.apply(self.state, cmd)
            self.log.append(Committed(cmd, outcome.code, outcome.reason))
        for callback in list(self.on_commit):
            callback()
        return {"code": outcome.code, "reason": outcome.reason}


class InProcNode:
    """One member of an InProcGroup; satisfies quorum_rollout.group.Node."""

    def __init__(self, group: InProcGroup, node_id: str) -> None:
        self.group = group
        self.node_id = node_id
        self.address = f"{node_id}:4321"
        self.changes: list[tuple[str, str]] = []  # cluster changes this node made
        self.handed_over = 0

    @property
    def state(self) -> dict[str, Any]:
        return self.group.state

    def propose(self, op: str, *, timeout: float = 5.0, op_id: str | None = None, term: int | None = None,
                **args: Any) -> dict[str, str]:
        cmd = {"op": op, "id": op_id or uuid.uuid4().hex, "term": self.current_term() if term is None else term,
               "time": self.group.wall(), "actor": self.node_id, **args}
        return self.group._propose(cmd)

    def preview(self, op: str, **args: Any) -> fsm.Outcome:
        cmd = {"op": op, "id": None, "term": self.current_term(), "time": self.group.wall(), "actor": self.node_id,
               **args}
        return fsm.apply(self.state, cmd)[1]

    def outcome(self, op_id: str) -> dict[str, str] | None:
        for entry in reversed(self.group.log):
            if entry.cmd.get("id") == op_id and entry.code != "duplicate":
                return {"code": entry.code, "reason": entry.reason}
        return None

    def current_term(self) -> int:
        return self.group.term

    def is_leader(self) -> bool:
        return self.group.leader == self.node_id

    def is_ready(self) -> bool:
        return True

    def leader_address(self) -> str | None:
        leader = self.group.leader
        return self.group.nodes[leader].address if leader else None

    def raft_status(self) -> dict[str, Any]:
        return {"role": "leader" if self.is_leader() else "follower", "term": self.group.term,
                "has_quorum": self.group.leader is not None, "commit_index": len(self.group.log),
                "last_applied": len(self.group.log), "log_entries": len(self.group.log), "ready": True}

    def peer_connected(self, address: str) -> bool:
        return any(n.address == address and m in self.group.links for m, n in self.group.nodes.items())

    def cluster(self) -> set[str]:
        return set(self.group.raft_cluster)

    def change_cluster(self, change: str, address: str, timeout: float = 10.0) -> None:
        assert change in ("add", "remove"), change
        self.changes.append((change, address))
        (self.group.raft_cluster.add if change == "add" else self.group.raft_cluster.discard)(address)

    def hand_over(self) -> bool:
        self.handed_over += 1
        return True

    def stop(self) -> None:
        return None


# -- configs and releases for the nodes of an InProcGroup ---------------------------------------------

NAME = "demo-app"
GROUP = "intel-eu1"
KEY = Ed25519PrivateKey.from_private_bytes(b"\7" * 32)
PUBLIC = signing.public_key_b64(KEY)
SECRET = b"s" * 48
TOKEN = "t0ken-for-the-unit-tests"


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: peers' API URLs (a peer fetch is refused at
    once and the member falls back to the mirrors)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def private_file(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return str(path)


def member_config(base: Path, node_id: str, members: list[str], mirrors: list[str], *, hooks: Hooks | None = None,
                  checks: tuple[Check, ...] = (), rollout: RolloutConfig | None = None,
                  api_url: str | None = None) -> AgentConfig:
    """The config of `node_id` in a group of `members` (Raft addresses as InProcNode's), each with
    its own data dir and install root under `base/<node_id>`."""
    home = base / node_id
    url = api_url or closed_port_url()
    return AgentConfig(
        node_id=node_id, group=GROUP, data_dir=str(home / "data"),
        raft=RaftConfig(address=f"{node_id}:4321", secret_file=private_file(home / "secret", SECRET),
                        peers=tuple(Peer(m, f"{m}:4321", closed_port_url()) for m in members if m != node_id)),
        api=ApiConfig(token_file=private_file(home / "token", TOKEN.encode()), url=url),
        artifacts=ArtifactsConfig(name=NAME, mirrors=tuple(mirrors), trusted_keys=(TrustedKey(signing.key_id(PUBLIC),
                                                                                               PUBLIC),),
                                  free_space_margin=0, connect_timeout=2.0, read_timeout=5.0, peer_timeout=2.0),
        install=InstallConfig(root=str(home / "root"), hooks=hooks or Hooks()),
        checks=checks,
        rollout=rollout or RolloutConfig(step_deadline=30.0),
    )


def archive(version: str, files: dict[str, bytes] | None = None) -> bytes:
    """A release tarball: VERSION plus `files`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in {"VERSION": version.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def publish(mirror: Any, version: str, payload: bytes | None = None) -> dict[str, Any]:
    """Put a signed release on a mirror (conftest.MirrorServer), in the documented layout; return
    its signed part."""
    path = mirror.put(f"{NAME}/{version}/{NAME}-{version}.tar.gz", payload if payload is not None else archive(version))
    signed = signing.build_signed(path, NAME, version, now=time.time() - 60)
    mirror.put(f"{NAME}/{version}/manifest.json", signing.canonical_json(signing.sign(signed, [KEY])))
    return signed
