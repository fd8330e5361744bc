"""Autonomous mode: the group's leader checks the release channel for updates itself.

With `artifacts.channel` set, the leader polls the signed pointer
`<mirror>/<name>/channels/<channel>.json` every `artifacts.channel_interval` seconds (±20 %) and
starts a release of the version it names exactly as `POST /v1/releases` would (the same start
arguments, the state machine's own preview, the same manifest pre-check), marked with the channel.

* `decide` is the whole policy, pure: given the verified pointer's version, the committed group
  state and the leader's running version, start or not, and why.
* `ChannelPoller` is the thin shell the coordinator ticks while it leads. A poll runs in its own
  thread with a deadline (the fetch, the manifest pre-check and the proposal are all bounded), so
  it never delays a release step; it reads committed state only, and the state machine refuses a
  channel start while the channel is paused, for a version that rolled back or was aborted in the
  group, or from a deposed leader's term, whatever a late poll believed.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass
from functools import cmp_to_key
from typing import Any, Callable, Protocol

from . import artifacts, fsm, signing
from .config import AgentConfig
from .group import Node, ProposalError
from .log import event, get_logger

log = get_logger("quorum_rollout.channel")
JITTER = 0.2           # each wait is the interval x (1 +- JITTER), so groups do not poll in step
FETCH_SECONDS = 20.0   # at most this long for one pointer fetch (less when the interval is shorter)
PROPOSE_SECONDS = 5.0

# Decision reasons.
START = "newer"
PAUSED = "paused"
IN_PROGRESS = "in_progress"
FAILED_HERE = "failed_here"
NOT_NEWER = "not_newer"


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str   # one of the reasons above
    detail: str   # a sentence for people


def decide(version: str, state: dict[str, Any], running_version: str | None = None) -> Decision:
    """Whether the leader starts `version`, which the verified channel pointer names, in a group
    whose committed state is `state` (`running_version`: what the leader runs, the baseline of a
    group that never completed a release)."""
    record = fsm.channel_record(state)
    if record["paused"]:
        return Decision(False, PAUSED, "the channel is paused in this group (`quorum-rollout channel resume`)")
    release = state.get("release")
    if release and release["state"] not in fsm.TERMINAL:
        return Decision(False, IN_PROGRESS, f"release {release['id']} is in progress ({release['state']})")
    if version in record["failed"]:
        return Decision(False, FAILED_HERE, f"{version} rolled back or was aborted in this group: waiting for a "
                        "newer version on the channel")
    known = [v for v in (state.get("current_version"), state.get("highest_version")) if v]
    baseline = max(known, key=cmp_to_key(fsm.compare_versions)) if known else running_version
    if baseline is not None and fsm.compare_versions(version, baseline) <= 0:
        return Decision(False, NOT_NEWER, f"{version} is not newer than {baseline}, "
                        f"{'what the group runs or ran' if known else 'what the leader runs'}")
    return Decision(True, START, f"{version} is newer than {baseline or 'nothing installed'}")


class Starter(Protocol):
    """What a poll needs from the agent: the same start arguments and manifest pre-check the API uses."""

    def start_args(self, version: str, *, allow_downgrade: bool, allow_unreachable: bool) -> dict[str, Any]: ...

    def check_manifest(self, version: str, allow_downgrade: bool) -> None: ...

    def running_version(self) -> str | None: ...


class ChannelPoller:
    """Polls the channel while this node leads; at most one poll in flight, in its own thread."""

    def __init__(self, node: Node, cfg: AgentConfig, policy: signing.TrustPolicy, starter: Starter, *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random,
                 fetch: Callable[..., Any] = artifacts.fetch_channel) -> None:
        if not cfg.artifacts.channel:
            raise ValueError("autonomous mode needs artifacts.channel")
        self.node, self.cfg, self.policy, self.starter = node, cfg, policy, starter
        self.channel: str = cfg.artifacts.channel
        self._clock, self._wall, self._rand, self._fetch = clock, wall, rand, fetch
        self._term: int | None = None
        self._next = 0.0
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._logged: dict[str, Any] = {}     # what was last logged per slot (one line per change)
        self._status: dict[str, Any] = {"polls": 0, "last_poll": None, "term": None, "pointer": None,
                                        "decision": None, "error": None}

    # -- coordinator thread --------------------------------------------------------------------

    def tick(self, term: int) -> None:
        """Called by the leader's coordinator on every pass; returns at once. Polls now when this
        node just took the lead in `term`, else once the jittered interval has passed."""
        if self._thread is not None and self._thread.is_alive():
            return
        now = self._clock()
        if term != self._term:
            self._term, self._next = term, now
        if now < self._next:
            return
        interval = self.cfg.artifacts.channel_interval
        self._next = now + interval * (1 + JITTER * (2 * self._rand() - 1))
        self._thread = threading.Thread(target=self._guarded, args=(term,), name="channel-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict[str, Any]:
        """For GET /v1/status: the channel, its interval and this node's last poll (as leader)."""
        return {"name": self.channel, "interval": self.cfg.artifacts.channel_interval, **self._status}

    # -- poll thread ---------------------------------------------------------------------------

    def _guarded(self, term: int) -> None:
        try:
            self.poll(term)
        except Exception as exc:  # a bug must not kill polling: the next tick polls again
            event(log, "channel_error", level="error", cause=repr(exc), exc_info=True, **self._fields(term))

    def poll(self, term: int) -> None:
        """One poll: fetch and verify the pointer, decide on the committed state, start if due."""
        fields = self._fields(term)
        deadline = self._clock() + min(self.cfg.artifacts.channel_interval, FETCH_SECONDS)
        seen: set[tuple[str, str]] = set()

        def refused(name: str, level: str = "warning", **info: Any) -> None:  # once per mirror and kind
            seen.add((info.get("mirror", ""), info.get("kind", "")))
            if (info.get("mirror", ""), info.get("kind", "")) not in self._logged.get("refused", set()):
                event(log, name, level="warning", **{**fields, **info})

        try:
            pointer, mirror = self._fetch(self.cfg.artifacts, self.policy, now=self._wall(), log=refused,
                                          deadline=deadline, cancel=self._cancel)
        except (signing.TrustError, artifacts.ArtifactError) as exc:
            if isinstance(exc, artifacts.Cancelled):
                return
            self._update(term, error=f"{type(exc).__name__}: {exc}"[:2000], pointer=None, decision=None)
            self._note("error", type(exc).__name__, "channel_unavailable", level="warning", cause=str(exc)[:500],
                       kind=type(exc).__name__, **fields)
            return
        finally:
            self._logged["refused"] = seen
        self._logged.pop("error", None)
        state = self.node.state
        decision = decide(pointer.version, state, self.starter.running_version())
        self._update(term, error=None, decision=asdict(decision), pointer={
            "version": pointer.version, "mirror": mirror, "expires": signing.format_time(pointer.expires)})
        if not decision.start:
            self._note("decision", (pointer.version, decision.reason), "channel_checked", version=pointer.version,
                       mirror=mirror, outcome=decision.reason, detail=decision.detail, **fields)
            return
        self._start(pointer.version, mirror, state, term)

    def _start(self, version: str, mirror: str, state: dict[str, Any], term: int) -> None:
        fields = self._fields(term)
        if not self.node.is_leader() or self.node.current_term() != term:
            return  # lost the lead while polling; the new leader polls itself
        args = {**self.starter.start_args(version, allow_downgrade=False, allow_unreachable=False),
                "channel": self.channel}
        preview = self.node.preview("start", **{**args, "term": term})
        if preview.code != "accepted":
            self._note("decision", (version, "refused", preview.reason), "channel_start_refused", level="warning",
                       version=version, cause=preview.reason, **fields)
            return
        try:
            self.starter.check_manifest(version, False)
        except (signing.TrustError, artifacts.ArtifactError) as exc:
            self._note("decision", (version, "manifest", type(exc).__name__), "channel_start_refused",
                       level="warning", version=version, cause=f"manifest pre-check: {exc}"[:500],
                       kind=type(exc).__name__, **fields)
            return
        op_id = f"channel:{self.channel}:{version}:{state['releases_started']}"
        try:
            result = self.node.propose("start", op_id=op_id, term=term, timeout=PROPOSE_SECONDS, **args)
        except ProposalError as exc:  # the next poll proposes the same id again: a late commit is a no-op
            event(log, "proposal_failed", level="warning", cause=str(exc), **fields)
            return
        release = self.node.state["release"]
        started = result["code"] == "accepted"
        self._note("decision", (version, "proposed", result["code"]),
                   "channel_release_started" if started else "channel_start_refused",
                   level="info" if started else "warning", version=version, mirror=mirror, outcome=result["code"],
                   release=release["id"] if release else None,
                   **({"cause": result["reason"]} if result["reason"] else {}), **fields)

    # -- helpers -------------------------------------------------------------------------------

    def _fields(self, term: int) -> dict[str, Any]:
        return {"group": self.cfg.group, "node": self.cfg.node_id, "term": term, "step": "channel",
                "channel": self.channel}

    def _update(self, term: int, **values: Any) -> None:
        self._status = {**self._status, **values, "polls": self._status["polls"] + 1,
                        "last_poll": round(self._wall(), 3), "term": term}

    def _note(self, slot: str, key: Any, name: str, /, level: str = "info", **fields: Any) -> None:
        """Log `name` when `key` differs from the last one logged in `slot`: a pointer that stays
        as it is is not a new line every poll (status always shows the last poll)."""
        if self._logged.get(slot) == key:
            return
        self._logged[slot] = key
        event(log, name, level=level, **fields)
