"""Member side effects: install or revert this host when its batch is open, then report.

The worker reads committed state only. Its step for a host is keyed by release id + phase
and is idempotent: the host's `current` symlink is the truth of what it runs, so a worker
that crashed after switching reports without installing again. Reports are replicated
commands with deterministic operation ids, retried until committed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import artifacts, checks, fsm, housekeeping, install, signing
from .config import AgentConfig
from .group import Node, ProposalError
from .log import bound, event, get_logger
from .metrics import AgentMetrics
from .sources import Sources, clip, failed_step, members_of

log = get_logger("quorum_rollout.worker")


class StepFailed(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class Worker:
    def __init__(self, node: Node, cfg: AgentConfig, sources: Sources, *, metrics: AgentMetrics | None = None) -> None:
        self.node = node
        self.metrics = metrics or AgentMetrics(cfg.group, cfg.node_id)  # times this host's steps
        self.cfg = cfg
        self.sources = sources
        self.store = sources.store
        self.host = cfg.node_id
        self.root = Path(cfg.install.root)
        self._reported: set[str] = set()
        self._announcing: set[str] = set()
        self._announce_lock = threading.Lock()
        self._prefetch: threading.Thread | None = None
        self._pruned: set[str] = set()

    def step(self) -> None:
        state = self.node.state
        if (state.get("leader") or {}).get("term") != self.node.current_term():
            # Until this term's leader announced itself (its `lead` entry applied here), the state
            # may be a past one even on a node pysyncobj calls ready: a leader elected after a
            # whole-group restart knows only the commit index its journal kept, which can lag the
            # entries that were committed, and members would redo a step of that past state.
            return
        release = state["release"]
        if (state.get("members") or {}).get(self.host, {}).get("status") == fsm.JOINING:
            self._join(state)
            return
        if release and release["state"] in fsm.TERMINAL:
            self._prune(release)
            return
        self._maybe_prefetch(state, release)
        phase = fsm.host_task(state, self.host) if release else None
        if phase is None:
            return
        op_id = f"{release['id']}:{self.host}:{phase}"
        if phase == "recheck":  # once per wait between batches
            op_id += f":{release['gate']['batch']}"
        if op_id in self._reported:
            return  # reported; waiting for the commit to show up
        fields = {"group": self.cfg.group, "release": release["id"], "node": self.host, "host": self.host,
                  "term": release["term"]}
        event(log, "step_started", step=phase, **fields)
        try:
            if phase == "install":
                self._install(state, release, fields)
            elif phase == "recheck":
                self._checks(release["version"], fields)
                event(log, "host_rechecked", step="recheck", version=release["version"], **fields)
            else:
                with self.metrics.step("revert"):
                    self._revert(release, fields)
            ok, step, reason = True, "done", None
        except StepFailed as exc:
            ok, step, reason = False, exc.step, clip(exc.reason)
            event(log, f"{phase}_failed", level="error", step=step, cause=reason, **fields)
        self._report(release, phase, op_id, ok, step, reason, fields)

    # -- joining -------------------------------------------------------------------------------

    def _join(self, state: dict[str, Any]) -> None:
        """A new member runs the group's current version before it counts: the committed
        artifact, fetched from an active member (else a mirror), verified with this node's keys,
        installed, switched to, restarted and checked like any update; then `member_ready`."""
        version = state["current_version"]
        op_id = f"join:{self.host}:{version}:{state['members'][self.host]['since']}"
        if op_id in self._reported:
            return
        fields = {"group": self.cfg.group, "release": None, "node": self.host, "host": self.host, "step": "join"}
        if version is not None and install.current_version(self.root) != version:
            event(log, "join_started", version=version, **fields)
            try:
                manifest = self.sources.verify_current(state)
                active = [m for m, rec in state["members"].items() if rec["status"] == fsm.ACTIVE]
                _manifest, path = self.sources.ensure(manifest, self.sources.holders(state, active),
                                                      deadline=time.monotonic() + self.cfg.rollout.step_deadline)
                self.store.verify(path, manifest)
                install.install_release(self.root, version, path,
                                        free_space_margin=self.cfg.artifacts.free_space_margin)
                install.activate(self.root, version)
            except (signing.TrustError, artifacts.ArtifactError, install.InstallError, OSError) as exc:
                event(log, "join_failed", level="error", cause=clip(str(exc), 1000),
                      failed_step=failed_step(exc, "install"), version=version, **fields)
                return  # tried again on the next pass; status shows the member as joining
            event(log, "activated", version=version, **fields)
        try:
            if version is not None:
                self._restart(version, fields)
                self._checks(version, fields)
        except StepFailed as exc:
            event(log, "join_failed", level="error", cause=clip(exc.reason, 1000), failed_step=exc.step,
                  version=version, **fields)
            return
        try:
            result = self.node.propose("member_ready", op_id=op_id, host=self.host, version=version)
        except ProposalError as exc:
            event(log, "report_retry", level="warning", cause=str(exc), **fields)
            return
        self._reported.add(op_id)
        event(log, "joined", version=version, outcome=result["code"], **fields)

    # -- housekeeping --------------------------------------------------------------------------

    def _prune(self, release: dict[str, Any]) -> None:
        """Once per release that ended: keep install.keep_releases release directories (never the
        one `current` points to, never the version a rollback of this release would return to) and
        drop store artifacts and stale partial downloads no kept release needs."""
        if release["id"] in self._pruned:
            return
        self._pruned.add(release["id"])
        entry = release["hosts"].get(self.host) or {}
        protect = {v for v in (entry.get("previous"), release.get("previous_version")) if v}
        digest = (release.get("artifact") or {}).get("sha256")
        report = housekeeping.prune_host(self.root, self.store, keep_releases=self.cfg.install.keep_releases,
                                         protect_versions=protect, protect_digests={digest} if digest else set())
        fields = report.fields()
        if any(fields[k] for k in ("removed_versions", "removed_digests", "removed_partials", "removed_leftovers",
                                   "removed_seeds", "errors")):
            event(log, "pruned", level="warning" if report.errors else "info", group=self.cfg.group,
                  release=release["id"], node=self.host, host=self.host, step="housekeeping", **fields)

    # -- prefetch: the artifact arrives before the batch opens ---------------------------------

    def _maybe_prefetch(self, state: dict[str, Any], release: dict[str, Any] | None) -> None:
        if (not release or release["state"] in fsm.TERMINAL or release["state"] == fsm.ROLLING_BACK
                or not release.get("artifact") or self.host in release["holders"]
                or self.host == release.get("source")):
            return
        art = release["artifact"]
        if self.store.has(art["sha256"], art["size"]):
            self._announce_holder(release)
        elif self._prefetch is None or not self._prefetch.is_alive():
            self._prefetch = threading.Thread(target=self._prefetch_run, args=(state, release),
                                              name="prefetch", daemon=True)
            self._prefetch.start()

    def _prefetch_run(self, state: dict[str, Any], release: dict[str, Any]) -> None:
        """Pipelined transfer: fetch from the host just before this one in the distribution chain
        (source, then hosts in batch order) while it is still receiving the file, so the group
        gets the file in about the time one host needs. If that upstream does not serve within
        a grace period, any earlier host or complete holder will do; the install step falls back
        to the mirrors."""
        fields = {"group": self.cfg.group, "release": release["id"], "node": self.host, "step": "prefetch"}
        urgent = self._needed_next(release)
        if not urgent:
            artifacts.yield_cpu()
        try:
            manifest = self.sources.verify_committed(state, release)
        except signing.TrustError as exc:
            event(log, "prefetch_refused", level="warning", cause=str(exc)[:500], **fields)
            return
        urls = {m: rec["api_url"] for m, rec in members_of(state, self.cfg).items() if m != self.host}
        chain = [release["source"]] + [h for b in release["batches"] for h in b if h != release["source"]]
        before = chain[:chain.index(self.host)] if self.host in chain else chain
        upstream = [h for h in reversed(before) if h in urls]
        deadline = time.monotonic() + self.cfg.rollout.step_deadline
        grace = time.monotonic() + 10.0
        started = time.monotonic()
        while time.monotonic() < deadline:
            current = self.node.state["release"]
            if not current or current["id"] != release["id"] or current["state"] in fsm.TERMINAL:
                return
            holders = [h for h in current["holders"] if h in urls and h not in upstream]
            candidates = upstream[:1] if time.monotonic() < grace else upstream + holders
            for holder in candidates:
                try:
                    artifacts.fetch_from_peers([(holder, urls[holder])], manifest, self.store, self.sources.secret,
                                               self.cfg.artifacts, deadline=deadline, urgent=urgent,
                                               log=bound(log, host=self.host, version=release["version"], **fields))
                except artifacts.DiskFull as exc:
                    event(log, "prefetch_failed", level="warning", cause=str(exc)[:500], **fields)
                    return
                except (artifacts.ArtifactError, signing.TrustError, OSError):
                    continue
                event(log, "prefetched", source=holder, seconds=round(time.monotonic() - started, 3),
                      size=manifest.size, **fields)
                self._announce_holder(current)
                return
            time.sleep(0.1)

    def _needed_next(self, release: dict[str, Any]) -> bool:
        """This host is in the open batch or the one after it: its fetch is on the critical path
        and must not yield the CPU to the fetches for later batches (which do)."""
        opened = release["batch"] if release["batch"] is not None else -1
        return any(self.host in batch for batch in release["batches"][max(opened, 0):opened + 2])

    def _announce_holder(self, release: dict[str, Any]) -> None:
        """Propose `holder` once: the prefetch thread and the worker loop may both get here while
        the first proposal is still being committed."""
        op_id = f"{release['id']}:{self.host}:holder"
        with self._announce_lock:
            if op_id in self._reported or op_id in self._announcing:
                return
            self._announcing.add(op_id)
        try:
            self.node.propose("holder", op_id=op_id, release=release["id"], host=self.host)
            self._reported.add(op_id)
        except ProposalError:
            pass  # retried on the next pass
        finally:
            with self._announce_lock:
                self._announcing.discard(op_id)

    # -- install -------------------------------------------------------------------------------

    def _install(self, state: dict[str, Any], release: dict[str, Any], fields: dict[str, Any]) -> None:
        version = release["version"]
        try:
            with self.metrics.step("download"):
                manifest, path = self.sources.ensure_artifact(
                    state, release, deadline=time.monotonic() + self.cfg.rollout.step_deadline)
                self.store.verify(path, manifest)
        except (signing.TrustError, artifacts.ArtifactError, OSError) as exc:
            raise StepFailed(failed_step(exc, "download"), str(exc)) from exc
        running = install.current_version(self.root)
        if running == version:
            event(log, "install_skipped", step="install", cause="current already points to this version", **fields)
        else:
            self._remember_previous(release, running)  # before the switch: a crash must not lose it
            try:
                with self.metrics.step("install"):
                    install.install_release(self.root, version, path,
                                            free_space_margin=self.cfg.artifacts.free_space_margin)
                    install.activate(self.root, version)
            except (install.InstallError, OSError) as exc:
                raise StepFailed("install", str(exc)) from exc
            event(log, "activated", step="install", version=version, previous=running, **fields)
        with self.metrics.step("restart"):
            self._restart(version, fields)
        with self.metrics.step("preflight"):
            self._checks(version, fields)
        event(log, "host_updated", step="preflight", version=version, **fields)

    def _step_file(self, release: dict[str, Any]) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in release["id"])
        return Path(self.cfg.data_dir) / "steps" / f"{safe}.json"

    def _remember_previous(self, release: dict[str, Any], running: str | None) -> None:
        path = self._step_file(release)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"previous": running}))
        os.replace(tmp, path)

    def previous_version(self, release: dict[str, Any]) -> str | None:
        """The version this host ran before this release touched it. The step file is written
        before the first switch, so without one the host never switched: `current` is it."""
        try:
            return json.loads(self._step_file(release).read_text())["previous"]
        except (OSError, ValueError, KeyError):
            return install.current_version(self.root)

    # -- revert --------------------------------------------------------------------------------

    def _revert(self, release: dict[str, Any], fields: dict[str, Any]) -> None:
        previous = self.previous_version(release)
        if previous is None:
            # The group ran nothing before this release: stop the service and unlink `current`.
            self._hook("stop", None, fields)
            try:
                (self.root / "current").unlink(missing_ok=True)
            except OSError as exc:
                raise StepFailed("revert", str(exc)) from exc
            event(log, "reverted", step="revert", version=None, **fields)
            return
        if install.current_version(self.root) != previous:
            try:
                install.activate(self.root, previous)
            except (install.InstallError, OSError) as exc:
                raise StepFailed("revert", f"cannot switch back to {previous}: {exc}") from exc
            event(log, "activated", step="revert", version=previous, **fields)
        self._restart(previous, fields)
        self._checks(previous, fields)
        event(log, "reverted", step="revert", version=previous, **fields)

    # -- shared --------------------------------------------------------------------------------

    def _hook(self, name: str, version: str | None, fields: dict[str, Any]) -> None:
        command = getattr(self.cfg.install.hooks, name)
        if not command:
            return
        try:
            install.run_hook(name, command, version=version, root=str(self.root),
                             timeout=self.cfg.install.hooks.timeout)
        except install.InstallError as exc:  # HookFailed, or a version that cannot name a directory
            raise StepFailed(name, str(exc)) from exc

    def _restart(self, version: str, fields: dict[str, Any]) -> None:
        if self.cfg.install.hooks.restart:
            self._hook("restart", version, fields)
        else:
            self._hook("stop", version, fields)
            self._hook("start", version, fields)

    def _checks(self, version: str, fields: dict[str, Any]) -> None:
        result = checks.run_checks(self.cfg.checks, version=version)
        if not result.ok:
            raise StepFailed(f"preflight:{result.name}", result.output)

    def _report(self, release: dict[str, Any], phase: str, op_id: str, ok: bool, step: str,
                reason: str | None, fields: dict[str, Any]) -> None:
        """Commit the report; retry through elections until it is in (the op id makes it idempotent)."""
        deadline = time.monotonic() + max(self.cfg.rollout.step_deadline, 30.0)
        while time.monotonic() < deadline:
            try:
                result = self.node.propose("host_done", op_id=op_id, release=release["id"], host=self.host,
                                           phase=phase, ok=ok, step=step, reason=reason,
                                           previous=self.previous_version(release))
            except ProposalError as exc:
                event(log, "report_retry", level="warning", step=phase, cause=str(exc), **fields)
                time.sleep(0.2)
                continue
            self._reported.add(op_id)
            if result["code"] not in ("accepted", "duplicate"):
                event(log, "report_rejected", level="warning", step=phase, cause=result["reason"], **fields)
            return
        event(log, "report_gave_up", level="error", step=phase, cause="no leader accepted the report", **fields)
