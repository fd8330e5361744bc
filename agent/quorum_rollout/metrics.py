"""GET /metrics: the agent's Prometheus metrics, through prometheus_client.

One `AgentMetrics` per agent, with its own `CollectorRegistry` (never the process-global one:
tests run several agents in one process, and each must report only itself). Three kinds of
series:

* read when scraped (`_StateCollector`): Raft role, term and commit index, the latest release's
  state, batch and host progress, member liveness, drift, bytes written into the store;
* counted as things happen here (`Counter`/`Histogram`): this host's step durations (the
  worker's `step()` timer), bytes served to peers;
* counted from the committed state (`observe`, called by the agent's metrics loop on every
  commit): commands the state machine rejected, leader changes and the time a release spends in
  each state, from the replicated `rejected` window and history, counted once per entry by `seq`
  from the state this node had caught up with when it became ready.

Every quorum_rollout_* series is labelled `group` and `node`; process_* come from
prometheus_client's ProcessCollector. docs/api.md lists them (a test checks the list against a
real agent's answer).
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__, artifacts, contract, fsm

if TYPE_CHECKING:
    from .agent import Agent

# No `*_created` series: every counter and histogram here starts with the process, whose start
# process_start_time_seconds already gives (prometheus_client's switch is process-wide).
disable_created_metrics()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ("group", "node")
# The steps of a host that `quorum_rollout_step_duration_seconds` times (the worker's): fetching
# and verifying the artifact, unpacking and switching, the restart hooks, the pre-flight checks,
# and a whole revert during a rollback.
HOST_STEPS = ("download", "install", "restart", "preflight", "revert")
# Seconds: from a cached artifact and a fast health check (well under a second) to the default
# rollout.step_deadline (300 s) and beyond.
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STATE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class AgentMetrics:
    """The registry of one agent and the series it counts itself."""

    def __init__(self, group: str, node: str) -> None:
        self.group, self.node = group, node
        self.registry = CollectorRegistry()
        reg = self.registry
        self.step_seconds = Histogram(
            "quorum_rollout_step_duration_seconds", "Seconds this host spent in each step of a release "
            "(download, install, restart, preflight, revert), failed attempts included.",
            (*LABELS, "step"), buckets=STEP_BUCKETS, registry=reg)
        self.state_seconds = Histogram(
            "quorum_rollout_release_state_duration_seconds", "Seconds the group's releases stayed in each state "
            "before the next one (terminal states aside; observed on the node leading then).", (*LABELS, "state"),
            buckets=STATE_BUCKETS, registry=reg)
        self.rejected = Counter("quorum_rollout_commands_rejected", "Commands the group's state machine rejected "
                                "(the same count on every member).", LABELS, registry=reg)
        self.leader_changes = Counter("quorum_rollout_leader_changes", "Leaders that announced themselves in the "
                                      "group (one per new term with a leader).", LABELS, registry=reg)
        self.peer_sent = Counter("quorum_rollout_peer_sent_bytes", "Artifact bytes this node served to group "
                                 "members.", LABELS, registry=reg)
        build = Info("quorum_rollout_build", "The agent's version.", LABELS, registry=reg)
        build.labels(group, node).info({"version": __version__, "python": platform.python_version()})
        ProcessCollector(registry=reg)
        for labelled in (self.rejected, self.leader_changes, self.peer_sent):
            labelled.labels(group, node)  # exported as 0 before the first increment
        for step in HOST_STEPS:
            self.step_seconds.labels(group, node, step)
        self._lock = threading.Lock()
        self._seq: int | None = None                     # the last committed `seq` counted
        self._stay: tuple[str, str, float | None] | None = None  # (release id, state, since) being timed

    def attach(self, agent: Agent) -> None:
        """Read `agent`'s state when scraped (once the agent's parts exist)."""
        self.registry.register(_StateCollector(agent))

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one of this host's steps (HOST_STEPS), whether it succeeds or raises."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds.labels(self.group, self.node, name).observe(time.monotonic() - started)

    def observe(self, state: dict[str, Any], *, leading: bool) -> None:
        """Count what the committed `state` holds that was not counted yet: rejected commands,
        `lead` entries, ends of a release's stay in a state (timed on the leader only, so the
        fleet's sum counts each once). The first call only sets the starting point."""
        with self._lock:
            seq = state["seq"]
            if self._seq is None or seq < self._seq:  # first call, or a reformed group restarting its count
                self._seq = seq
                release = state["release"]
                self._stay = (release["id"], release["state"], _entered(state, release)) if release else None
                return
            if seq == self._seq:
                return
            for entry in state["rejected"]:
                if entry["seq"] > self._seq:
                    self.rejected.labels(self.group, self.node).inc()
            for entry in state["history"]:
                if entry["seq"] > self._seq:
                    self._history_entry(entry, leading)
            self._seq = seq

    def _history_entry(self, entry: dict[str, Any], leading: bool) -> None:
        if entry["op"] == "lead":
            self.leader_changes.labels(self.group, self.node).inc()
        release, to, at = entry["release"], entry["to"], entry["time"]
        if release is None or to is None:
            return
        stay = self._stay
        if stay is not None and stay[0] == release and stay[1] == to:
            return  # still in the same state (a batch opened, a host reported)
        if (stay is not None and stay[0] == release and stay[2] is not None and at is not None and leading
                and stay[1] not in contract.TERMINAL):  # a retry leaves rolled_back: not a step's time
            self.state_seconds.labels(self.group, self.node, stay[1]).observe(max(0.0, at - stay[2]))
        self._stay = (release, to, at)


def _entered(state: dict[str, Any], release: dict[str, Any]) -> float | None:
    """When the release entered the state it is in: its last history entry that changed the state."""
    for entry in reversed(state["history"]):
        if entry["release"] == release["id"] and entry["to"] == release["state"] and entry["from"] != entry["to"]:
            return entry["time"]
    return None


def _gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=(*LABELS, *extra))


class _StateCollector(Collector):
    """Series read from the agent when Prometheus scrapes: nothing here is kept between scrapes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        from .api import drift  # api imports this module: import at call time

        agent = self.agent
        cfg, state = agent.cfg, agent.node.state
        raft = agent.node.raft_status()
        base = (cfg.group, cfg.node_id)
        release = state["release"]
        rid = release["id"] if release else ""

        for name, doc, value in (
            ("is_leader", "1 if this node leads its group's Raft cluster.", raft["role"] == "leader"),
            ("raft_term", "Current Raft term seen by this node.", raft["term"]),
            ("raft_commit_index", "Raft commit index of this node.", raft["commit_index"]),
            ("raft_has_quorum", "1 if this node's Raft cluster has a quorum (as pysyncobj sees it).",
             raft["has_quorum"]),
            ("host_drift", "1 if this host's current release disagrees with the group's state.",
             drift(agent) is not None),
            ("channel_paused", "1 if the operator paused the group's release channel.",
             fsm.channel_record(state)["paused"]),
            ("registry_ok", "1 if the last registry report succeeded.", bool(agent.reporter.status["ok"])),
            ("step_deadline_seconds", "rollout.step_deadline: a step without progress for longer fails.",
             cfg.rollout.step_deadline),
        ):
            family = _gauge(f"quorum_rollout_{name}", doc)
            family.add_metric(base, float(value))
            yield family

        running = _gauge("quorum_rollout_running_version", "1, labelled with the version this host runs "
                         "(none: nothing installed).", ("version",))
        running.add_metric((*base, agent.running_version() or "none"), 1.0)
        yield running

        states = _gauge("quorum_rollout_release_state", "1 for the state the group's latest release is in "
                        "(all 0 before the first release).", ("release", "state"))
        for name in contract.STATES:
            states.add_metric((*base, rid, name), float(bool(release) and release["state"] == name))
        yield states

        hosts = _gauge("quorum_rollout_release_hosts", "Hosts of the latest release, by host status.",
                       ("release", "status"))
        batch = _gauge("quorum_rollout_release_batch", "1-based batch being rolled (0 before rolling).",
                       ("release",))
        batches = _gauge("quorum_rollout_release_batches", "Batches of the latest release.", ("release",))
        progress = _gauge("quorum_rollout_release_progress_ratio", "Hosts updated / hosts in the latest "
                          "release (1 when current).", ("release",))
        started = _gauge("quorum_rollout_release_started_timestamp_seconds", "Unix time the latest release "
                         "started.", ("release",))
        step_started = _gauge("quorum_rollout_release_step_started_timestamp_seconds", "Unix time the latest "
                              "release's current step (state or batch) began.", ("release",))
        if release:
            counts: dict[str, int] = {}
            for entry in release["hosts"].values():
                counts[entry["status"]] = counts.get(entry["status"], 0) + 1
            for status in (fsm.PENDING, fsm.UPDATED, fsm.FAILED, fsm.REVERT, fsm.REVERTED, fsm.REVERT_FAILED,
                           fsm.SKIPPED):
                hosts.add_metric((*base, rid, status), float(counts.get(status, 0)))
            total = len(release["hosts"])
            batch.add_metric((*base, rid), float(release["batch"] + 1 if release.get("batch") is not None else 0))
            batches.add_metric((*base, rid), float(len(release["batches"])))
            progress.add_metric((*base, rid), counts.get(fsm.UPDATED, 0) / total if total else 0.0)
            for family, key in ((started, "started_at"), (step_started, "step_started_at")):
                if release.get(key) is not None:
                    family.add_metric((*base, rid), float(release[key]))
        else:
            batch.add_metric((*base, rid), 0.0)
        yield from (hosts, batch, batches, progress, started, step_started)

        reachable = _gauge("quorum_rollout_member_reachable", "1 if the leader heard from the member within "
                           "rollout.member_timeout (committed; the same on every member).", ("member",))
        unreachable = state.get("unreachable", {})
        for member in sorted(state.get("members") or {}):
            reachable.add_metric((*base, member), float(member not in unreachable))
        yield reachable

        received = CounterMetricFamily("quorum_rollout_downloaded_bytes", "Artifact bytes this node downloaded, "
                                       "by source: mirror or peer (group members).", labels=(*LABELS, "source"))
        counts = dict(agent.store.received)
        for source in (artifacts.MIRROR, artifacts.PEER):
            received.add_metric((*base, source), float(counts.get(source, 0)))
        yield received
