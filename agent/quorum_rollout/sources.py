"""Where a node gets a release's artifact, shared by the leader (coordinator) and members (worker).

`Sources` holds what every node needs for it (config, store, trust policy, group secret):
`verify_committed` checks the manifest the group committed with this node's own trusted keys;
`ensure_artifact` makes sure the verified file is in the local store, from a member that holds
it (rendezvous order) or else from the mirrors. `failed_step` is the one mapping from an
exception to the failed-step name that the state machine records and docs/api.md lists.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts, install, signing
from .config import AgentConfig
from .log import bound, get_logger

log = get_logger("quorum_rollout.sources")
REASON_LIMIT = 2000


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    """Failure reasons are replicated, logged and shown: never let one grow without bound."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def failed_step(exc: BaseException, default: str) -> str:
    """The step name a failure is recorded under: `verify` for a trust refusal (signature, hash,
    size, expiry, downgrade), `deadline` when the step ran out of time, `download` for a
    mirror/peer/disk problem while getting the file, `install` for unpacking/switching; else
    `default` (the step that was running)."""
    if isinstance(exc, signing.TrustError):
        return "verify"
    if isinstance(exc, artifacts.DeadlineExceeded):
        return "deadline"
    if isinstance(exc, (artifacts.ArtifactError, OSError)):
        return "download"
    if isinstance(exc, install.InstallError):
        return "install"
    return default


def members_of(state: dict[str, Any], cfg: AgentConfig) -> dict[str, dict[str, Any]]:
    """The group's members (node id -> {address, api_url, status}): the replicated membership, or,
    before the first leader seeded it, this node's config (itself and its configured peers)."""
    members = state.get("members") or {}
    if members:
        return members
    return {cfg.node_id: {"address": cfg.raft.address, "api_url": cfg.api.url, "status": "active"},
            **{p.id: {"address": p.address, "api_url": p.api_url, "status": "active"} for p in cfg.raft.peers}}


@dataclass(frozen=True)
class Sources:
    cfg: AgentConfig
    store: artifacts.Store
    policy: signing.TrustPolicy
    secret: bytes

    def verify_committed(self, state: dict[str, Any], release: dict[str, Any]) -> signing.Manifest:
        """Every node verifies the committed manifest with its own trusted keys before using it."""
        return self._verify(state, release["artifact"]["manifest"], release["version"],
                            allow_downgrade=release["allow_downgrade"], now=time.time())

    def verify_current(self, state: dict[str, Any]) -> signing.Manifest:
        """The manifest of the version the group runs (what a joining member installs), verified
        with this node's keys as of the time the group completed it: an expiry that passed since
        does not stop a new member from running what the group already runs."""
        current = state["current_artifact"]
        return self._verify(state, current["manifest"], current["version"], allow_downgrade=True,
                            now=current.get("since") or time.time())

    def _verify(self, state: dict[str, Any], manifest: str, version: str, *, allow_downgrade: bool,
                now: float) -> signing.Manifest:
        cfg = self.cfg
        return signing.verify_manifest(
            manifest.encode(), self.policy, now=now, name=cfg.artifacts.name, version=version, group=cfg.group,
            max_bytes=cfg.artifacts.max_manifest_bytes, highest_version=state["highest_version"],
            allow_downgrade=allow_downgrade)

    def holders(self, state: dict[str, Any], names: list[str], exclude: tuple[str, ...] = ()
                ) -> list[tuple[str, str]]:
        """(node id, API URL) of the members `names` that hold the file, in this node's rendezvous
        order: each member tries the holders in its own pseudo-random order, so the group's
        downloads spread over every holder (a busy holder answers 503 and the next is tried)."""
        urls = {m: rec["api_url"] for m, rec in members_of(state, self.cfg).items() if m != self.cfg.node_id}
        return sorted(((h, urls[h]) for h in names if h in urls and h not in exclude),
                      key=lambda holder: hashlib.sha256(f"{self.cfg.node_id}/{holder[0]}".encode()).digest())

    def ensure_artifact(self, state: dict[str, Any], release: dict[str, Any], *, deadline: float | None = None,
                        cancel: threading.Event | None = None) -> tuple[signing.Manifest, Path]:
        """Verify the release's committed manifest, then make sure the file is in our store: from a
        member that holds it, else from the mirrors. Raises TrustError or ArtifactError."""
        return self.ensure(self.verify_committed(state, release), self.holders(state, release["holders"]),
                           deadline=deadline, cancel=cancel)

    def ensure(self, manifest: signing.Manifest, holders: list[tuple[str, str]], *, deadline: float | None = None,
               cancel: threading.Event | None = None) -> tuple[signing.Manifest, Path]:
        """The verified `manifest`'s file in our store: already here, from a holder, else from the mirrors."""
        if self.store.has(manifest.sha256, manifest.size):
            return manifest, self.store.path(manifest.sha256)
        from_peers = ""
        if holders:
            try:
                path, _source = artifacts.fetch_from_peers(
                    holders, manifest, self.store, self.secret, self.cfg.artifacts, deadline=deadline, cancel=cancel,
                    log=bound(log, group=self.cfg.group, node=self.cfg.node_id, step="download"))
                return manifest, path
            except (artifacts.DeadlineExceeded, artifacts.Cancelled, artifacts.DiskFull):
                raise
            except artifacts.ArtifactError as exc:
                from_peers = str(exc)
        try:
            path, _mirror = artifacts.download_from_mirrors(self.cfg.artifacts, self.store, manifest,
                                                            log=bound(log, group=self.cfg.group, node=self.cfg.node_id,
                                                                      step="download"),
                                                            deadline=deadline, cancel=cancel)
        except artifacts.ArtifactError as exc:
            if from_peers:  # keep the mirrors' error (its type says whether a retry may help), add the peers'
                exc.args = (f"{exc.args[0] if exc.args else exc}; before that, from holders: {from_peers}",)
            raise
        return manifest, path
