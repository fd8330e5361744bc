"""Leader side effects, driven only by committed group state, bounded in term and in time.

The coordinator runs in its own thread on every node and acts only while this node leads:

* Term: a node that becomes leader first commits `lead` (its term) and acts only once that is
  committed. Every leader command carries the term in which its step started; the state
  machine rejects commands from a term older than the newest announced, so a deposed leader
  (paused, partitioned) that finishes a step late changes nothing.
* Time: each committed step (release id, state, batch, rollback batch) gets a deadline on this
  node's monotonic clock from the moment this leader first saw it (never by comparing hosts'
  wall clocks). Long steps (download, verify) run in a StepRunner thread that the coordinator
  cancels; the deadline is enforced here, independently of the step, so a trickling mirror or a
  frozen holder cannot hold a release past `rollout.step_deadline`.
* Between batches (a release with a bake time or maintenance windows): the leader waits the
  bake time from when it saw the batch's last report (a new leader waits it again: never less),
  commits `recheck` so every updated host runs its pre-flight checks again, and opens the next
  batch (`next_batch`; the first with `open_batch`) only while a window of the release is open,
  evaluated on its wall clock with zoneinfo. What it waits for is committed as `hold` (status:
  "baking until ...", "waiting for window (opens ...)").
* Liveness: the leader watches its Raft links and commits which members it has not heard from
  for `rollout.member_timeout` seconds; the state machine refuses a release while one is missing.

Every proposal carries a deterministic operation id (release id + step), so a retry after an
ambiguous outcome, or the same step redone by a new leader, is a no-op. A new leader needs nothing
but the committed state: the artifact store is content-addressed, so re-downloading is free when
the file is already here.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from . import artifacts, fsm, signing, windows
from .config import AgentConfig
from .group import Node, ProposalError
from .log import bound, event, get_logger
from .registry import Registry, RegistryError
from .sources import Sources, clip, failed_step, members_of

log = get_logger("quorum_rollout.coordinator")
ANNOUNCE_RETRY_SECONDS = 2.0  # between `lead` proposals that committed without taking effect


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
        self._registry.close()

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
        "failed_within_budget": [f["host"] for f in release.get("failed_within_budget") or []],
    }


class StepRunner:
    """At most one long leader step in flight, in its own thread, with a cancel event the step
    checks between reads. Cancelling never waits for the thread: the step sees the event (or its
    own deadline) and ends; its late result, if any, is fenced by the state machine."""

    def __init__(self) -> None:
        self._key: Any = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    def running(self, key: Any) -> bool:
        return self._key == key and self._thread is not None and self._thread.is_alive()

    def start(self, key: Any, name: str, target: Callable[[threading.Event], None]) -> None:
        self.cancel()
        self._key, self._cancel = key, threading.Event()
        self._thread = threading.Thread(target=target, args=(self._cancel,), name=name, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()
        self._key = None


_LONG_STEPS = {fsm.RUNNING_OLD: "download", fsm.DOWNLOADED: "verify"}


class Coordinator:
    def __init__(self, node: Node, cfg: AgentConfig, sources: Sources, reporter: RegistryReporter, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 channel: Any = None, notifier: Any = None) -> None:
        self.node = node
        self.notifier = notifier  # notify.Notifier when notify.url is set: offered the state while leading
        self.channel = channel  # channel.ChannelPoller in autonomous mode: ticked while leading, never waited on
        self.cfg = cfg
        self.sources = sources
        self.reporter = reporter
        self._clock, self._wall = clock, wall
        self._runner = StepRunner()
        self._term: int | None = None             # the term this node leads in, once it noticed
        self._since: tuple[Any, float] | None = None  # (step key, monotonic time this leader first saw it)
        self._contact: dict[str, float] = {}      # member -> monotonic time of the last live Raft link
        self._reported: tuple[Any, ...] | None = None
        self._announce_after = 0.0                # monotonic: no new `lead` before (one that committed, did not take)

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> None:
        """Do what the committed state asks of the leader. Called on every change and every 0.5 s."""
        if not self.node.is_leader():
            if self._term is not None:
                self._runner.cancel()
                if self.notifier is not None:
                    self.notifier.reset()
                self._term, self._since, self._contact, self._reported = None, None, {}, None
            return
        term = self.node.current_term()
        state = self.node.state
        if term != self._term:
            self._runner.cancel()
            self._term, self._since, self._reported, self._announce_after = term, None, None, 0.0
            self._contact = {}
        newest = state.get("leader_term", 0)
        if newest < term:
            if self._clock() >= self._announce_after:
                self._announce(state, term)
            return  # act only on the state after `lead` committed
        if newest > term:
            return  # a newer leader announced itself: this node is about to learn it lost its term
        self._report_registry(state)
        if self.notifier is not None:
            self.notifier.offer(state, self._wall())  # returns at once: delivery runs in its own thread
        self._watch_members(state, term)
        self._reconcile_cluster(state, term)
        if self.channel is not None:
            self.channel.tick(term)  # returns at once: the poll runs in its own thread, with a deadline
        release = state["release"]
        if release:
            self._drive(state, release, term)

    def _announce(self, state: dict[str, Any], term: int) -> None:
        # The first leader of a group seeds the replicated membership from its config.
        seed = {} if state.get("members") else {
            m: {"address": rec["address"], "api_url": rec["api_url"]} for m, rec in members_of(state, self.cfg).items()}
        try:
            result = self.node.propose("lead", op_id=f"lead:{term}:{self.cfg.node_id}", term=term,
                                       **({"members": seed} if seed else {}))
        except ProposalError as exc:
            event(log, "proposal_failed", level="warning", group=self.cfg.group, node=self.cfg.node_id, term=term,
                  step="lead", cause=str(exc))
            return
        event(log, "leader_announced", group=self.cfg.group, node=self.cfg.node_id, term=term,
              outcome=result["code"])
        if self.node.state.get("leader_term", 0) < term:
            # It committed and did not take (a bug, or a state restored from elsewhere): say so and
            # try again in a while, not on every commit.
            self._announce_after = self._clock() + ANNOUNCE_RETRY_SECONDS
            event(log, "leader_announce_ignored", level="error", group=self.cfg.group, node=self.cfg.node_id,
                  term=term, step="lead", outcome=result["code"], cause=result.get("reason"))

    def _report_registry(self, state: dict[str, Any]) -> None:
        release = state["release"]
        key = (state["current_version"], release and release["id"], release and release["state"],
               release and release["batch"])
        if key != self._reported:
            self._reported = key
            self.reporter.submit(registry_record(state))

    def _drive(self, state: dict[str, Any], release: dict[str, Any], term: int) -> None:
        gate = release.get("gate")
        key = (release["id"], release["state"], release["batch"], len(release["rollback"]),
               gate and ("recheck" if gate["recheck"] is not None else "wait"))
        now = self._clock()
        if self._since is None or self._since[0] != key:
            self._since = (key, now)
        deadline = self._since[1] + self.cfg.rollout.step_deadline
        overdue = now > deadline
        # The long step's own reads stop at `deadline` and fail it with the cause; this watchdog
        # fails it a moment later if the step could not (blocked outside a read).
        hard_overdue = now > deadline + min(1.0, 0.05 * self.cfg.rollout.step_deadline)
        current = release["state"]
        long_step = _LONG_STEPS.get(current)
        if long_step is None:
            self._runner.cancel()
        elif hard_overdue:
            self._runner.cancel()
            self._fail(release, term, "deadline", self._overdue(current, long_step))
        elif not self._runner.running((release["id"], current)):
            target = self._download if current == fsm.RUNNING_OLD else self._verify
            self._runner.start((release["id"], current), f"leader-{long_step}",
                               lambda cancel: self._run(target, release["id"], long_step, term, deadline, cancel))
        if current == fsm.VERIFIED:
            if self._window_open(release, term):
                self._propose(release, term, "open_batch", f"{release['id']}:open")
        elif current in (fsm.ROLLING, fsm.ROLLING_BACK):
            waiting = fsm.open_batch_hosts(state)
            if waiting and overdue:
                self._batch_overdue(release, term, waiting)
            elif not waiting and current == fsm.ROLLING and gate:
                self._between_batches(release, term)

    # -- between batches: bake time, re-checks, maintenance windows ----------------------------

    def _between_batches(self, release: dict[str, Any], term: int) -> None:
        gate, rid = release["gate"], release["id"]
        if release.get("bake_time") and gate["recheck"] is None:
            assert self._since is not None
            left = self._since[1] + release["bake_time"] - self._clock()
            if left > 0:
                until = self._wall() + left
                self._hold(release, term, "bake", until, f"baking until {windows.iso(until)}")
            elif self._window_open(release, term):
                event(log, "recheck", hosts=sum(1 for e in release["hosts"].values() if e["status"] == fsm.UPDATED),
                      **self._fields(release, term, "recheck"))
                self._propose(release, term, "recheck", f"{rid}:recheck:{gate['batch']}")
            return
        if self._window_open(release, term):
            self._propose(release, term, "next_batch", f"{rid}:next:{gate['batch']}")

    def _window_open(self, release: dict[str, Any], term: int) -> bool:
        """Whether a batch may open now; if not, commit what it waits for (once)."""
        try:
            opening = windows.next_opening(release.get("windows") or [], self._wall())
        except Exception as exc:  # e.g. a time zone this leader's tzdata does not know
            self._fail(release, term, "window", f"cannot evaluate the release's maintenance windows on "
                       f"{self.cfg.node_id}: {type(exc).__name__}: {exc}")
            return False
        if opening is None:
            return True
        until, text = opening
        self._hold(release, term, "window", until, f"waiting for window (opens {text})")
        return False

    def _hold(self, release: dict[str, Any], term: int, reason: str, until: float, text: str) -> None:
        hold = release.get("hold")
        if hold and hold["reason"] == reason and abs(hold["until"] - until) < 1.0:
            return  # committed already (the bake's end moves by clock jitter only)
        event(log, "batch_held", reason=reason, until=round(until, 3), detail=text,
              **self._fields(release, term, "hold"))
        self._propose(release, term, "hold", f"{release['id']}:hold:{release['batch']}:{reason}:{until:.0f}:{term}",
                      reason=reason, until=round(until, 3), text=text)

    def _overdue(self, current: str, step: str, cause: str = "") -> str:
        return (f"no progress in {current} for {self.cfg.rollout.step_deadline:g}s (rollout.step_deadline) "
                f"during {step}" + (f": {cause}" if cause else ""))

    def _batch_overdue(self, release: dict[str, Any], term: int, waiting: list[str]) -> None:
        limit = f"{self.cfg.rollout.step_deadline:g}s (rollout.step_deadline)"
        if release["state"] == fsm.ROLLING:
            batch = release["batch"]
            self._fail(release, term, "deadline", f"no report from {', '.join(waiting)} within {limit} "
                       f"(batch {batch + 1} of {len(release['batches'])})", host=waiting[0])
            return
        reason = f"no revert report from {', '.join(waiting)} within {limit}"
        event(log, "revert_timeout", level="error", cause=reason, **self._fields(release, term, "rollback"))
        self._propose(release, term, "revert_timeout", f"{release['id']}:revert-timeout:{len(release['rollback'])}",
                      reason=reason)

    # -- membership --------------------------------------------------------------------------

    def _reconcile_cluster(self, state: dict[str, Any], term: int) -> None:
        """Make the Raft cluster follow the replicated membership, one change per pass: add a
        member that joined, take out one that is leaving (handing leadership over first when it
        is this node: a leader cannot remove itself), then commit `member_removed`."""
        members = state.get("members") or {}
        if not members:
            return
        cluster = self.node.cluster()
        fields = {"group": self.cfg.group, "node": self.cfg.node_id, "term": term, "step": "membership"}
        for member, rec in sorted(members.items()):
            leaving = rec["status"] == fsm.LEAVING
            if not leaving and rec["address"] not in cluster:
                change = "add"
            elif leaving and rec["address"] == self.cfg.raft.address:
                event(log, "leadership_handed_over", member=member, sent=self.node.hand_over(), **fields)
                return
            elif leaving and rec["address"] in cluster:
                change = "remove"
            elif leaving:
                self._propose_group("member_removed", f"member-removed:{member}:{state['seq']}", term, member=member)
                return
            else:
                continue
            try:
                self.node.change_cluster(change, rec["address"])
            except ProposalError as exc:
                event(log, "cluster_change_failed", level="warning", member=member, change=change, cause=str(exc),
                      **fields)
                return
            event(log, "cluster_changed", member=member, change=change, address=rec["address"], **fields)
            return

    def _propose_group(self, op: str, op_id: str, term: int, **args: Any) -> None:
        try:
            result = self.node.propose(op, op_id=op_id, term=term, **args)
        except ProposalError as exc:
            event(log, "proposal_failed", level="warning", group=self.cfg.group, node=self.cfg.node_id, term=term,
                  step=op, cause=str(exc))
            return
        if result["code"] not in ("accepted", "noop", "duplicate"):
            event(log, "proposal_rejected", level="warning", group=self.cfg.group, node=self.cfg.node_id, term=term,
                  step=op, cause=result["reason"])

    # -- liveness ----------------------------------------------------------------------------

    def _watch_members(self, state: dict[str, Any], term: int) -> None:
        """Commit the set of members this leader has not heard from for rollout.member_timeout."""
        now, committed = self._clock(), state.get("unreachable", {})
        members = {m: rec for m, rec in members_of(state, self.cfg).items() if m != self.cfg.node_id}
        self._contact = {m: t for m, t in self._contact.items() if m in members}
        for member, rec in members.items():
            if self.node.peer_connected(rec["address"]):
                self._contact[member] = now
            elif member not in self._contact:  # a new leader: members already reported stay unreachable
                self._contact[member] = -math.inf if member in committed else now
        timeout = self.cfg.rollout.member_timeout
        unreachable = {}
        for member, seen in self._contact.items():
            if now - seen > timeout:
                unreachable[member] = committed.get(member) if member in committed or seen == -math.inf \
                    else round(self._wall() - (now - seen), 3)
        if set(unreachable) == set(committed):
            return
        event(log, "members_liveness", level="warning" if unreachable else "info", group=self.cfg.group,
              node=self.cfg.node_id, term=term, unreachable=sorted(unreachable))
        self._propose_group("liveness", f"liveness:{term}:{state['seq']}", term, unreachable=unreachable)

    def contact_ages(self) -> dict[str, float | None]:
        """Seconds since this leader last had a live link to each member (None: never, or not leader)."""
        if self._term is None:
            return {}
        now = self._clock()
        return {m: (round(now - t, 1) if math.isfinite(t) else None) for m, t in self._contact.items()}

    # -- proposals ---------------------------------------------------------------------------

    def _fields(self, release: dict[str, Any], term: int, step: str) -> dict[str, Any]:
        return {"group": self.cfg.group, "release": release["id"], "node": self.cfg.node_id, "term": term,
                "step": step}

    def _propose(self, release: dict[str, Any], term: int, op: str, op_id: str, **args: Any) -> None:
        try:
            result = self.node.propose(op, op_id=op_id, term=term, release=release["id"], **args)
        except ProposalError as exc:
            event(log, "proposal_failed", level="warning", cause=str(exc), **self._fields(release, term, op))
            return
        if result["code"] not in ("accepted", "noop", "duplicate"):
            event(log, "proposal_rejected", level="warning", cause=result["reason"],
                  **self._fields(release, term, op))

    def _fail(self, release: dict[str, Any], term: int, step: str, reason: str, host: str | None = None) -> None:
        reason = clip(reason)
        event(log, "step_failed", level="error", host=host or self.cfg.node_id, cause=reason,
              **self._fields(release, term, step))
        self._propose(release, term, "fail", f"{release['id']}:fail", step=step, host=host or self.cfg.node_id,
                      reason=reason)

    # -- long steps (StepRunner thread) --------------------------------------------------------

    def _run(self, target: Callable[..., None], release_id: str, step: str, term: int, deadline: float,
             cancel: threading.Event) -> None:
        """Run one long step until it succeeds, fails for good, is cancelled or reaches its deadline.
        Transient mirror/peer errors are retried with backoff (0.5 s doubling to 10 s) in the time left."""
        backoff, retried = 0.5, None
        while not cancel.is_set():
            release = self._release(release_id)
            if release is None:
                return
            try:
                target(release, term, deadline, cancel)
                return
            except artifacts.Cancelled:
                return
            except Exception as exc:
                transient = isinstance(exc, artifacts.ArtifactError) and artifacts.is_transient(exc)
                wait = min(backoff, deadline - self._clock())
                if transient and wait > 0 and not cancel.is_set():
                    event(log, "step_retry", level="warning", cause=clip(str(exc), 500), retry_in=round(wait, 2),
                          **self._fields(release, term, step))
                    retried = exc
                    cancel.wait(wait)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if cancel.is_set():
                    return
                self._fail(release, term, *self._failure(release, step, exc, retried))
                return

    def _failure(self, release: dict[str, Any], step: str, exc: Exception,
                 retried: Exception | None) -> tuple[str, str]:
        """(step, reason) of a long step that failed for good: a transient error retried until the
        deadline is reported as itself ("download: HTTP 500 ..., retried until ..."), a deadline
        without one as `deadline`, a trust refusal as `verify`; a bug as what it is."""
        limit = f"{self.cfg.rollout.step_deadline:g}s (rollout.step_deadline)"
        if isinstance(exc, artifacts.DeadlineExceeded) or (retried is not None and artifacts.is_transient(exc)):
            if retried is not None:
                return failed_step(retried, step), f"{clip(str(retried), 1500)} (retried until {limit} passed)"
            return "deadline", self._overdue(release["state"], step, str(exc))
        if not isinstance(exc, (signing.TrustError, artifacts.ArtifactError, OSError)):
            event(log, "step_error", level="error", cause=repr(exc), exc_info=(type(exc), exc, exc.__traceback__),
                  **self._fields(release, self._term or 0, step))
            return step, f"unexpected {type(exc).__name__}: {exc}"
        return failed_step(exc, step), str(exc)

    def _release(self, release_id: str) -> dict[str, Any] | None:
        release = self.node.state["release"]
        return release if release and release["id"] == release_id else None

    def _download(self, release: dict[str, Any], term: int, deadline: float, cancel: threading.Event) -> None:
        """Two commits: the verified manifest first (members start fetching from this node's
        growing file at once), then `downloaded` when the whole file is here and hashed."""
        cfg, state = self.cfg, self.node.state
        mirror = None
        steplog = bound(log, **self._fields(release, term, "download"))
        if release["artifact"] is None:
            event(log, "manifest_fetch", **self._fields(release, term, "download"))
            manifest, mirror = artifacts.fetch_manifest(
                cfg.artifacts, release["version"], self.sources.policy, now=self._wall(), group=cfg.group,
                highest_version=state["highest_version"], allow_downgrade=release["allow_downgrade"], log=steplog,
                deadline=deadline, cancel=cancel)
            artifact = {"sha256": manifest.sha256, "size": manifest.size, "file": manifest.file,
                        "manifest": manifest.raw.decode(), "mirror": mirror}
            self._propose(release, term, "manifest", f"{release['id']}:manifest", artifact=artifact)
            release = self._release(release["id"])
            if release is None or release["artifact"] is None or cancel.is_set():
                return  # not committed (yet): the next pass tries again
        state = self.node.state
        if release.get("source") == cfg.node_id:
            manifest = self.sources.verify_committed(state, release)
            _path, mirror = artifacts.download_from_mirrors(cfg.artifacts, self.sources.store, manifest,
                                                            prefer=release["artifact"]["mirror"], log=steplog,
                                                            deadline=deadline, cancel=cancel)
        else:  # a new leader: the old one (or a member) may already hold it
            manifest, _path = self.sources.ensure_artifact(state, release, deadline=deadline, cancel=cancel)
            mirror = "peer"
        if cancel.is_set():
            return
        event(log, "downloaded", mirror=mirror, sha256=manifest.sha256, size=manifest.size,
              **self._fields(release, term, "download"))
        self._propose(release, term, "downloaded", f"{release['id']}:downloaded")

    def _verify(self, release: dict[str, Any], term: int, deadline: float, cancel: threading.Event) -> None:
        manifest, path = self.sources.ensure_artifact(self.node.state, release, deadline=deadline, cancel=cancel)
        self.sources.store.verify(path, manifest)
        if cancel.is_set():
            return
        event(log, "verified", sha256=manifest.sha256, **self._fields(release, term, "verify"))
        self._propose(release, term, "verified", f"{release['id']}:verified")
