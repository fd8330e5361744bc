"""Leader side effects, driven only by committed group state.

The coordinator runs in its own thread on every node and acts only while this node leads.
Each committed release state asks for one side effect; when it succeeds the coordinator
proposes the command that moves the release on. Every proposal carries a deterministic
operation id (release id + step), so a retry after an ambiguous outcome, or the same step
re-done by a new leader, is a no-op in the state machine. A new leader needs nothing but
the committed state: the artifact store is content-addressed, so re-downloading is free
when the file is already here.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from . import artifacts, fsm, signing
from .config import AgentConfig
from .group import GroupNode, ProposalError
from .log import event, get_logger
from .registry import Registry, RegistryError

log = get_logger("quorum_rollout.coordinator")


class RegistryReporter:
    """Reports the group's state to the registry from its own thread: a slow or failing
    registry is logged and shown in status, and never delays the rollout."""

    def __init__(self, registry: Registry, group: str) -> None:
        self._registry = registry
        self._group = group
        self._pending: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._stop = False
        self.status: dict[str, Any] = {"ok": True, "error": None, "last": None}
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        with self._cond:
            self._pending = record
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                record, self._pending = self._pending, None
            try:
                self._registry.report(record)
                self.status = {"ok": True, "error": None, "last": record}
                event(log, "registry_reported", group=self._group, release=record.get("release_id"),
                      state=record.get("state"))
            except RegistryError as exc:
                self.status = {"ok": False, "error": str(exc), "last": record}
                event(log, "registry_failed", level="warning", group=self._group,
                      release=record.get("release_id"), step="registry", cause=str(exc))


_LEADER_STEPS = {fsm.RUNNING_OLD: "download", fsm.DOWNLOADED: "verify", fsm.VERIFIED: "verify"}
REASON_LIMIT = 2000


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    """Failure reasons are replicated, logged and shown: never let one grow without bound."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def registry_record(state: dict[str, Any]) -> dict[str, Any]:
    release = state["release"] or {}
    failure = release.get("failure") or {}
    return {
        "group": state["group"],
        "version": state["current_version"],
        "state": release.get("state", "current"),
        "release_id": release.get("id"),
        "target_version": release.get("version"),
        "failed_host": failure.get("host"),
        "failure": failure or None,
    }


class Coordinator:
    def __init__(self, node: GroupNode, cfg: AgentConfig, store: artifacts.Store,
                 policy: signing.TrustPolicy, reporter: RegistryReporter, secret: bytes) -> None:
        self.node = node
        self.cfg = cfg
        self.store = store
        self.policy = policy
        self.reporter = reporter
        self.secret = secret
        self._reported: tuple[Any, ...] | None = None

    def _fields(self, release: dict[str, Any], step: str) -> dict[str, Any]:
        return {"group": self.cfg.group, "release": release["id"], "node": self.cfg.node_id,
                "term": self.node.current_term(), "step": step}

    def step(self) -> None:
        """Do what the committed state asks of the leader, once. Called whenever state changes."""
        if not self.node.is_leader():
            self._reported = None
            return
        state = self.node.state
        release = state["release"]
        key = (state["current_version"], release and release["id"], release and release["state"],
               release and release["batch"])
        if key != self._reported:
            self._reported = key
            self.reporter.submit(registry_record(state))
        if not release:
            return
        step = _LEADER_STEPS.get(release["state"])
        if step and self._overdue(release):
            return self._fail(release, step, f"no progress in {release['state']} for "
                              f"{self.cfg.rollout.step_deadline:g}s (rollout.step_deadline)")
        handler = {
            fsm.RUNNING_OLD: self._download,
            fsm.DOWNLOADED: self._verify,
            fsm.VERIFIED: self._open_first_batch,
            fsm.ROLLING: self._watch_batch,
            fsm.ROLLING_BACK: self._watch_rollback,
        }.get(release["state"])
        if handler is None:
            return
        try:
            handler(state, release)
        except Exception as exc:  # a bug or an unforeseen input must fail the step, not wedge the release
            if step is None:
                raise
            self._fail(release, step, f"unexpected {type(exc).__name__}: {exc}")

    def _propose(self, release: dict[str, Any], op: str, op_id: str, **args: Any) -> None:
        try:
            result = self.node.propose(op, op_id=op_id, release=release["id"], **args)
        except ProposalError as exc:
            event(log, "proposal_failed", level="warning", cause=str(exc), **self._fields(release, op))
            return
        if result["code"] not in ("accepted", "noop", "duplicate"):
            event(log, "proposal_rejected", level="warning", cause=result["reason"], **self._fields(release, op))

    def _fail(self, release: dict[str, Any], step: str, reason: str, host: str | None = None) -> None:
        reason = clip(reason)
        event(log, "step_failed", level="error", host=host or self.cfg.node_id, cause=reason,
              **self._fields(release, step))
        self._propose(release, "fail", f"{release['id']}:fail:{step}", step=step,
                      host=host or self.cfg.node_id, reason=reason)

    # -- steps -------------------------------------------------------------------------------

    def _download(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        """Two commits: the verified manifest first (members start fetching from this node's
        growing file at once), then `downloaded` when the whole file is here and hashed."""
        if release["artifact"] is None:
            event(log, "manifest_fetch", **self._fields(release, "download"))
            try:
                manifest, mirror = artifacts.fetch_manifest(
                    self.cfg.artifacts, release["version"], self.policy, now=time.time(), group=self.cfg.group,
                    highest_version=state["highest_version"], allow_downgrade=release["allow_downgrade"], log=log)
            except signing.TrustError as exc:
                return self._fail(release, "verify", str(exc))
            except (artifacts.ArtifactError, OSError) as exc:
                return self._fail(release, "download", str(exc))
            artifact = {"sha256": manifest.sha256, "size": manifest.size, "file": manifest.file,
                        "manifest": manifest.raw.decode(), "mirror": mirror}
            self._propose(release, "manifest", f"{release['id']}:manifest", artifact=artifact)
            return  # the commit wakes this loop again for the file
        try:
            if release.get("source") == self.cfg.node_id:
                manifest = verify_committed(self, state, release)
                _path, mirror = artifacts.download_from_mirrors(self.cfg.artifacts, self.store, manifest,
                                                                prefer=release["artifact"]["mirror"], log=log)
            else:  # a new leader: the old one (or a member) may already hold it
                manifest, _path = ensure_artifact(self, state, release)
                mirror = "peer"
        except signing.TrustError as exc:
            return self._fail(release, "verify", str(exc))
        except (artifacts.ArtifactError, OSError) as exc:
            return self._fail(release, "download", str(exc))
        event(log, "downloaded", mirror=mirror, sha256=manifest.sha256, size=manifest.size,
              **self._fields(release, "download"))
        self._propose(release, "downloaded", f"{release['id']}:downloaded")

    def _verify(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        try:
            manifest, path = ensure_artifact(self, state, release)
            signing.verify_file(path, manifest)
        except signing.TrustError as exc:
            return self._fail(release, "verify", str(exc))
        except (artifacts.ArtifactError, OSError) as exc:
            return self._fail(release, "download", str(exc))
        event(log, "verified", sha256=manifest.sha256, **self._fields(release, "verify"))
        self._propose(release, "verified", f"{release['id']}:verified")

    def _open_first_batch(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        self._propose(release, "open_batch", f"{release['id']}:open")

    def _watch_batch(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        waiting = fsm.open_batch_hosts(state)
        if waiting and self._overdue(release):
            batch = release["batch"]
            reason = (f"no report from {', '.join(waiting)} within {self.cfg.rollout.step_deadline:g}s "
                      f"(batch {batch + 1} of {len(release['batches'])})")
            self._fail(release, "deadline", reason, host=waiting[0])

    def _watch_rollback(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        waiting = fsm.open_batch_hosts(state)
        if waiting and self._overdue(release):
            reason = f"no revert report from {', '.join(waiting)} within {self.cfg.rollout.step_deadline:g}s"
            event(log, "revert_timeout", level="error", cause=reason, **self._fields(release, "rollback"))
            self._propose(release, "revert_timeout",
                          f"{release['id']}:revert-timeout:{len(release['rollback'])}", reason=reason)

    def _overdue(self, release: dict[str, Any]) -> bool:
        started = release.get("step_started_at") or 0
        return time.time() - started > self.cfg.rollout.step_deadline


def verify_committed(owner: Any, state: dict[str, Any], release: dict[str, Any]) -> signing.Manifest:
    """Every node verifies the committed manifest with its own trusted keys before using it."""
    cfg: AgentConfig = owner.cfg
    return signing.verify_manifest(
        release["artifact"]["manifest"].encode(), owner.policy, now=time.time(), name=cfg.artifacts.name,
        version=release["version"], group=cfg.group, max_bytes=cfg.artifacts.max_manifest_bytes,
        highest_version=state["highest_version"], allow_downgrade=release["allow_downgrade"])


def ensure_artifact(owner: Any, state: dict[str, Any], release: dict[str, Any]) -> tuple[signing.Manifest, Any]:
    """Verify the committed manifest, then make sure the file is in our store: from a peer that
    holds it, else from the mirrors. Shared by leader and members."""
    cfg: AgentConfig = owner.cfg
    manifest = verify_committed(owner, state, release)
    if owner.store.has(manifest.sha256, manifest.size):
        return manifest, owner.store.path(manifest.sha256)
    peers = {p.id: p.api_url for p in cfg.raft.peers}
    # Rendezvous order: each member tries the holders in its own pseudo-random order, so the
    # group's downloads spread over every holder; a busy holder answers 503 and the next is tried.
    holders = sorted(((h, peers[h]) for h in release["holders"] if h in peers),
                     key=lambda holder: hashlib.sha256(f"{cfg.node_id}/{holder[0]}".encode()).digest())
    errors = []
    if holders:
        try:
            path, _source = artifacts.fetch_from_peers(holders, manifest, owner.store, owner.secret, cfg.artifacts)
            return manifest, path
        except artifacts.ArtifactError as exc:
            errors.append(str(exc))
    try:
        path, _mirror = artifacts.download_from_mirrors(cfg.artifacts, owner.store, manifest, log=log)
        return manifest, path
    except artifacts.ArtifactError as exc:
        errors.append(str(exc))
    raise artifacts.ArtifactError("could not fetch the artifact from any holder or mirror: " + "; ".join(errors))
