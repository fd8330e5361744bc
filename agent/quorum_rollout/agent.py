"""The agent process: Raft node + coordinator + worker + API, stopped cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import api, artifacts, fsm, install, signing
from .channel import ChannelPoller
from .config import AgentConfig, read_secret, read_token
from .coordinator import Coordinator, RegistryReporter
from .group import GroupNode, Node
from .log import bound, event, get_logger
from .metrics import AgentMetrics
from .notify import Notifier, committer
from .operations import Operations
from .registry import Registry
from .sources import Sources, members_of
from .worker import Worker

log = get_logger("quorum_rollout.agent")
# A start is refused unless a mirror serves a valid manifest within this time: below the 10 s
# default timeout of the modules and the CLI, so they hear the refusal rather than time out.
MANIFEST_CHECK_SECONDS = 8.0


REFORM_SEED = "reform.json"


def take_reform_seed(cfg: AgentConfig) -> dict[str, Any] | None:
    """The state `quorum-rollout reform` left for this node, used once: only when the Raft data
    dir is empty (the command moved the old one aside); then renamed `reform.applied.json`."""
    seed_file = Path(cfg.data_dir) / REFORM_SEED
    if not seed_file.exists():
        return None
    raft = Path(cfg.data_dir) / "raft"
    if raft.exists() and any(raft.iterdir()):
        event(log, "reform_seed_ignored", level="warning", group=cfg.group, node=cfg.node_id,
              cause=f"{raft} is not empty: the node keeps its journal; remove {seed_file} or rerun the reform")
        return None
    seed = json.loads(seed_file.read_text())
    os.replace(seed_file, seed_file.with_name("reform.applied.json"))
    event(log, "reform_seed_used", level="warning", group=cfg.group, node=cfg.node_id,
          members=sorted(seed.get("members") or {}))
    return seed


class Agent:
    """Wires a group member's parts together; `start()` runs the API server and the loops.

    `node` replaces the Raft member this agent would make (tests pass an in-process one; its
    change notifications are then the caller's to deliver)."""

    def __init__(self, cfg: AgentConfig, node: Node | None = None) -> None:
        self.cfg = cfg
        # Both raise ConfigError naming the file when missing, too open or too short.
        self.secret = read_secret(cfg.raft.secret_file)
        self.token = read_token(cfg.api.token_file)
        self.metrics_token = read_token(cfg.api.metrics_token_file) if cfg.api.metrics_token_file else None
        if cfg.notify.url:
            read_token(cfg.notify.secret_file or "")  # refuse to start with a missing or readable webhook secret
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        self.store = artifacts.Store(data / "store")
        self.policy = signing.TrustPolicy.from_config(cfg.artifacts)
        self.uploads = threading.BoundedSemaphore(cfg.artifacts.max_peer_uploads)
        # One cap for everything this agent sends to peers (downloads have their own, per transfer).
        limit = cfg.artifacts.bandwidth_limit
        self.upload_limiter = artifacts.TokenBucket(limit) if limit else None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loops: list[threading.Thread] = []
        self.reporter = RegistryReporter(Registry(cfg.registry), cfg.group)
        self._events = [threading.Event(), threading.Event(), threading.Event()]
        self.metrics = AgentMetrics(cfg.group, cfg.node_id)
        self.node: Node = node if node is not None else self._group_node(data)
        self.sources = Sources(cfg, self.store, self.policy, self.secret)
        # Autonomous mode: the leader polls the channel and starts what it names, as the API would.
        self.channel = ChannelPoller(self.node, cfg, self.policy, self) if cfg.artifacts.channel else None
        self.notifier = Notifier(cfg.notify, cfg.group, cfg.node_id, committer(self.node, cfg.group, cfg.node_id)) \
            if cfg.notify.url else None
        self.coordinator = Coordinator(self.node, cfg, self.sources, self.reporter, channel=self.channel,
                                       notifier=self.notifier)
        self.worker = Worker(self.node, cfg, self.sources, metrics=self.metrics)
        self.operations = Operations(self.node, group=cfg.group)
        self.server: api.AgentServer | None = None
        self.metrics.attach(self)

    def _group_node(self, data: Path) -> GroupNode:
        cfg = self.cfg
        seed = take_reform_seed(cfg)
        peers = ([rec["address"] for m, rec in sorted(seed["members"].items()) if m != cfg.node_id]
                 if seed and seed.get("members") else [p.address for p in cfg.raft.peers])
        return GroupNode(node_id=cfg.node_id, group=cfg.group, address=cfg.raft.address,
                         peers=peers, secret=self.secret, data_dir=str(data / "raft"), on_change=self._wake_all,
                         compaction_entries=cfg.raft.compaction_entries, seed=seed,
                         timing=(cfg.raft.heartbeat, cfg.raft.election_timeout_min, cfg.raft.election_timeout_max))

    def start(self) -> None:
        """Serve the API and run the coordinator, worker and operations loops until `stop()`."""
        cfg = self.cfg
        self.operations.start()
        self.server = api.serve(self)
        for name, step, wake in (("coordinator", self.coordinator.step, self._events[0]),
                                 ("worker", self.worker.step, self._events[1]),
                                 ("metrics", self._observe, self._events[2])):
            thread = threading.Thread(target=self._loop, args=(name, step, wake), name=name, daemon=True)
            thread.start()
            self._loops.append(thread)
        event(log, "agent_started", group=cfg.group, node=cfg.node_id, raft=cfg.raft.address,
              api=f"{cfg.api.bind}:{cfg.api.port}", peers=len(cfg.raft.peers), channel=cfg.artifacts.channel)

    def _observe(self) -> None:
        self.metrics.observe(self.node.state, leading=self.node.is_leader())

    def _wake_all(self) -> None:
        # Runs on the Raft thread: only set events, never block.
        for ev in getattr(self, "_events", ()):
            ev.set()

    def _loop(self, name: str, step: Callable[[], None], wake: threading.Event) -> None:
        while not self._stop.is_set():
            wake.wait(timeout=0.5)  # periodic pass for deadlines and retries
            wake.clear()
            if self._stop.is_set():
                return
            if not self.node.is_ready():
                # While the journal is replayed and until this node has caught up with the leader's
                # commit index, node.state is a past state: acting on it would redo old steps.
                continue
            try:
                step()
            except Exception as exc:  # a bug must not kill the loop; it is logged with context
                event(log, f"{name}_error", level="error", group=self.cfg.group, node=self.cfg.node_id,
                      cause=repr(exc), exc_info=True)

    # -- used by the API -----------------------------------------------------------------------

    def members(self) -> list[str]:
        """The members a release started here covers: the group's membership, leaving ones aside."""
        return sorted(m for m, rec in members_of(self.node.state, self.cfg).items() if rec["status"] != fsm.LEAVING)

    def start_args(self, version: str, *, allow_downgrade: bool, allow_unreachable: bool) -> dict[str, Any]:
        """The arguments of a `start` command proposed by this node."""
        rollout = self.cfg.rollout
        return {"version": version, "members": self.members(), "batch_fraction": rollout.batch_fraction,
                "canary": rollout.canary, "allow_downgrade": allow_downgrade,
                "allow_unreachable": allow_unreachable, "running_version": self.running_version(),
                # The release keeps these (replicated): its later leaders apply them, whatever their own config.
                "max_failures": rollout.max_failures, "bake_time": rollout.bake_time,
                "windows": [w.as_dict() for w in rollout.maintenance_windows]}

    def check_manifest(self, version: str, allow_downgrade: bool) -> None:
        """Raise (NotPublished, TrustError, ArtifactError) unless a mirror serves a valid signed
        manifest of `version` for this group: a release that cannot be fetched is never started."""
        artifacts.fetch_manifest(self.cfg.artifacts, version, self.policy, now=time.time(), group=self.cfg.group,
                                 highest_version=self.node.state["highest_version"], allow_downgrade=allow_downgrade,
                                 log=bound(log, group=self.cfg.group, node=self.cfg.node_id, step="check"),
                                 deadline=time.monotonic() + MANIFEST_CHECK_SECONDS)

    def running_version(self) -> str | None:
        return install.current_version(Path(self.cfg.install.root))

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._wake_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for thread in self._loops:
            thread.join(timeout=10)
        if self.channel is not None:
            self.channel.stop()
        self.operations.stop()
        self.node.stop()
        self.reporter.stop()
        if self.notifier is not None:
            self.notifier.stop()
        event(log, "agent_stopped", group=self.cfg.group, node=self.cfg.node_id)


def run(cfg: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        event(log, "signal", signal=signal.Signals(signum).name, group=cfg.group, node=cfg.node_id)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Everything the agent writes is private: the Raft journal, snapshot and meta files are pickles
    # pysyncobj creates with the process umask (PYSYNCOBJ.md rule 2). Hooks run with 022.
    os.umask(0o077)
    agent = Agent(cfg)
    agent.start()
    pidfile = Path(cfg.data_dir) / "agent.pid"  # also written by `quorum-rollout service`: the same pid
    pidfile.write_text(f"{os.getpid()}\n")
    try:
        while not done.wait(1.0):
            pass
    finally:
        agent.stop()
        pidfile.unlink(missing_ok=True)
    return 0
