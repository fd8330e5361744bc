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
from .log import get_logger

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


@dataclass(frozen=True)
class Sources:
    cfg: AgentConfig
    store: artifacts.Store
    policy: signing.TrustPolicy
    secret: bytes

    def verify_committed(self, state: dict[str, Any], release: dict[str, Any]) -> signing.Manifest:
        """Every node verifies the committed manifest with its own trusted keys before using it."""
        cfg = self.cfg
        return signing.verify_manifest(
            release["artifact"]["manifest"].encode(), self.policy, now=time.time(), name=cfg.artifacts.name,
            version=release["version"], group=cfg.group, max_bytes=cfg.artifacts.max_manifest_bytes,
            highest_version=state["highest_version"], allow_downgrade=release["allow_downgrade"])

    def holders(self, release: dict[str, Any], exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(node id, API URL) of the members that announced the file, in this node's rendezvous
        order: each member tries the holders in its own pseudo-random order, so the group's
        downloads spread over every holder (a busy holder answers 503 and the next is tried)."""
        urls = {p.id: p.api_url for p in self.cfg.raft.peers}
        return sorted(((h, urls[h]) for h in release["holders"] if h in urls and h not in exclude),
                      key=lambda holder: hashlib.sha256(f"{self.cfg.node_id}/{holder[0]}".encode()).digest())

    def ensure_artifact(self, state: dict[str, Any], release: dict[str, Any], *, deadline: float | None = None,
                        cancel: threading.Event | None = None) -> tuple[signing.Manifest, Path]:
        """Verify the committed manifest, then make sure the file is in our store: from a member
        that holds it, else from the mirrors. Raises TrustError or ArtifactError."""
        manifest = self.verify_committed(state, release)
        if self.store.has(manifest.sha256, manifest.size):
            return manifest, self.store.path(manifest.sha256)
        from_peers = ""
        holders = self.holders(release)
        if holders:
            try:
                path, _source = artifacts.fetch_from_peers(holders, manifest, self.store, self.secret,
                                                           self.cfg.artifacts, deadline=deadline, cancel=cancel)
                return manifest, path
            except (artifacts.DeadlineExceeded, artifacts.Cancelled, artifacts.DiskFull):
                raise
            except artifacts.ArtifactError as exc:
                from_peers = str(exc)
        try:
            path, _mirror = artifacts.download_from_mirrors(self.cfg.artifacts, self.store, manifest, log=log,
                                                            deadline=deadline, cancel=cancel)
        except artifacts.ArtifactError as exc:
            if from_peers:  # keep the mirrors' error (its type says whether a retry may help), add the peers'
                exc.args = (f"{exc.args[0] if exc.args else exc}; before that, from holders: {from_peers}",)
            raise
        return manifest, path
