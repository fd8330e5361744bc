"""GET /metrics of a real `Agent` whose group member is in-process (tests/support/inproc.py: the real
state machine): who may read it (the host token, the fleet's metrics token for this endpoint only),
and what it says, parsed with prometheus_client's own text parser as Prometheus would read it.

The metrics loop of a started agent calls `metrics.observe` on every commit; these agents are not
started, so the tests call it where the loop would. tests/integration/test_api_docs.py checks the
same endpoint on a fleet of agent processes after a real release."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from quorum_rollout import api, artifacts, contract, fsm
from quorum_rollout.agent import Agent

from tests.support.inproc import GROUP, TOKEN, InProcGroup, member_config, private_file

MEMBERS = ["h1", "h2", "h3"]
METRICS_TOKEN = "fleet-wide-metrics-token-0123"
# Every endpoint but GET /metrics, with a body each would accept from the host token.
OTHER_ENDPOINTS = [("GET", "/v1/status"), ("GET", "/v1/events"), ("POST", "/v1/releases"),
                   ("POST", "/v1/releases/current/pause"), ("POST", "/v1/channel/pause"),
                   ("GET", "/v1/operations/op-00000001"), ("POST", "/v1/members"), ("DELETE", "/v1/members/h3"),
                   ("POST", "/metrics"), ("GET", "/v1/nothing")]


class Group:
    def __init__(self, tmp_path: Path, mirror: Any, *, metrics_token: bool = True) -> None:
        self.clock = [1_000_000.0]
        self.group = InProcGroup(GROUP, MEMBERS, wall=lambda: self.clock[0])
        self.term = self.group.elect("h2")
        self.group.nodes["h2"].propose("lead", term=self.term)
        self.agents: dict[str, Agent] = {}
        for member in ("h1", "h2"):
            cfg = member_config(tmp_path, member, MEMBERS, [mirror.url])
            if metrics_token:
                token_file = private_file(tmp_path / member / "metrics.token", METRICS_TOKEN.encode())
                cfg = dataclasses.replace(cfg, api=dataclasses.replace(cfg.api, metrics_token_file=token_file))
            self.agents[member] = Agent(cfg, node=self.group.nodes[member])
        self.observe()

    def call(self, method: str, path: str, token: str | None, member: str = "h1") -> api.Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return api.route(self.agents[member], method, path, headers, io.BytesIO(b""))

    def observe(self) -> None:
        """What each agent's metrics loop does after a commit."""
        for agent in self.agents.values():
            agent.metrics.observe(agent.node.state, leading=agent.node.is_leader())

    def propose(self, op: str, **args: Any) -> None:
        release = self.group.state["release"]
        if release is not None and "release" not in args:
            args["release"] = release["id"]
        result = self.group.nodes["h2"].propose(op, **args)
        assert result["code"] == "accepted", result
        self.observe()

    def samples(self, member: str = "h1") -> dict[str, list[tuple[dict[str, str], float]]]:
        """name -> [(labels, value)] of every sample, as Prometheus parses the answer."""
        reply = self.call("GET", "/metrics", TOKEN, member)
        assert reply.status == 200 and reply.content_type.startswith("text/plain; version=0.0.4")
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(reply.body):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def value(self, name: str, member: str = "h1", **labels: str) -> float:
        (value,) = [v for got, v in self.samples(member)[name] if all(got.get(k) == x for k, x in labels.items())]
        return value


@pytest.fixture
def fleet(tmp_path: Path, mirror: Any) -> Iterator[Group]:
    group = Group(tmp_path, mirror)
    try:
        yield group
    finally:
        for agent in group.agents.values():
            agent.stop()


# ------------------------------------------------------------------------------------------- auth


def test_metrics_without_a_token_is_401(fleet: Group) -> None:
    reply = fleet.call("GET", "/metrics", None)
    assert reply.status == 401 and reply.body["error"] == "missing bearer token"


def test_the_metrics_token_reads_metrics_and_nothing_else(fleet: Group) -> None:
    reply = fleet.call("GET", "/metrics", METRICS_TOKEN)
    assert reply.status == 200 and "quorum_rollout_is_leader{" in reply.body
    for method, path in OTHER_ENDPOINTS:
        refused = fleet.call(method, path, METRICS_TOKEN)
        assert refused.status == 403, (method, path, refused.body)
        assert refused.body["error"] == "the metrics token only reads GET /metrics"
    assert fleet.group.state["release"] is None and fsm.channel_record(fleet.group.state)["paused"] is False


def test_the_host_token_still_reads_metrics_and_everything_else(fleet: Group) -> None:
    assert fleet.call("GET", "/metrics", TOKEN).status == 200
    assert fleet.call("GET", "/v1/status", TOKEN).status == 200


def test_without_a_metrics_token_configured_no_other_token_reads_metrics(tmp_path: Path, mirror: Any) -> None:
    group = Group(tmp_path, mirror, metrics_token=False)
    try:
        reply = group.call("GET", "/metrics", METRICS_TOKEN)
        assert reply.status == 401 and reply.body["error"] == "bad API token"
    finally:
        for agent in group.agents.values():
            agent.stop()


# ------------------------------------------------------------------------------------------ content


def test_each_agent_reports_itself_only(fleet: Group) -> None:
    """Two agents in one process: each its own registry, its own node label (no shared global state)."""
    for member in ("h1", "h2"):
        nodes = {labels["node"] for samples in fleet.samples(member).values() for labels, _ in samples
                 if "node" in labels}
        assert nodes == {member}
    assert fleet.value("quorum_rollout_is_leader", "h2") == 1 and fleet.value("quorum_rollout_is_leader", "h1") == 0


def test_build_info_raft_and_process_metrics(fleet: Group) -> None:
    from quorum_rollout import __version__
    samples = fleet.samples()
    ((labels, value),) = samples["quorum_rollout_build_info"]
    assert labels == {"group": GROUP, "node": "h1", "version": __version__, "python": labels["python"]}
    assert value == 1
    assert fleet.value("quorum_rollout_raft_term") == fleet.term
    assert fleet.value("quorum_rollout_raft_commit_index") == 1  # InProcNode's stand-in index
    assert samples["process_cpu_seconds_total"][0][1] > 0
    assert samples["process_resident_memory_bytes"][0][1] > 0


def test_the_release_state_is_one_hot_over_the_contract_states_and_progress_counts_hosts(fleet: Group) -> None:
    def states() -> dict[str, float]:
        return {labels["state"]: v for labels, v in fleet.samples()["quorum_rollout_release_state"]}

    assert states() == dict.fromkeys(contract.STATES, 0.0)
    reply = api.route(fleet.agents["h1"], "POST", "/v1/releases", {"Authorization": f"Bearer {TOKEN}",
                      "Content-Length": "18"}, io.BytesIO(b'{"version": "2.4"}'))
    assert reply.status == 201, reply.body
    rid = fleet.group.state["release"]["id"]
    assert states() == {**dict.fromkeys(contract.STATES, 0.0), contract.RUNNING_OLD: 1.0}
    assert {labels["release"] for labels, _ in fleet.samples()["quorum_rollout_release_state"]} == {rid}
    artifact = {"sha256": "a" * 64, "size": 1, "file": "f", "manifest": "{}", "mirror": "m"}
    for op, args in (("manifest", {"artifact": artifact}), ("downloaded", {}), ("verified", {}), ("open_batch", {})):
        fleet.propose(op, **args)
    batches = fleet.group.state["release"]["batches"]
    assert fleet.value("quorum_rollout_release_batches", release=rid) == len(batches) == 3
    assert fleet.value("quorum_rollout_release_progress_ratio") == 0
    fleet.propose("host_done", host=batches[0][0], phase="install", ok=True, step="done")
    assert fleet.value("quorum_rollout_release_hosts", status="updated") == 1
    assert fleet.value("quorum_rollout_release_hosts", status="pending") == 2
    assert fleet.value("quorum_rollout_release_progress_ratio") == pytest.approx(1 / 3)
    assert fleet.value("quorum_rollout_release_batch") == 2
    assert fleet.value("quorum_rollout_release_step_started_timestamp_seconds") == fleet.clock[0]


def test_rejected_commands_and_leader_changes_are_counters_of_committed_entries(fleet: Group) -> None:
    assert fleet.value("quorum_rollout_commands_rejected_total") == 0
    for _ in range(2):
        assert fleet.group.nodes["h2"].propose("pause")["code"] == "invalid"  # no release to pause
    fleet.observe()
    fleet.observe()  # counted once per committed entry, however often the loop passes
    assert fleet.value("quorum_rollout_commands_rejected_total") == 2
    assert fleet.value("quorum_rollout_commands_rejected_total", "h2") == 2
    assert fleet.value("quorum_rollout_leader_changes_total") == 0  # the first `lead` predates the agents
    term = fleet.group.elect("h1")
    fleet.group.nodes["h1"].propose("lead", term=term)
    fleet.observe()
    assert fleet.value("quorum_rollout_leader_changes_total") == 1


def test_the_time_in_each_state_is_observed_once_by_the_leader(fleet: Group, mirror: Any) -> None:
    fleet.group.nodes["h2"].propose("start", version="2.4", members=MEMBERS, batch_fraction=0.1, canary=False,
                                    allow_downgrade=False, allow_unreachable=True, running_version=None)
    fleet.observe()
    fleet.clock[0] += 12.5
    artifact = {"sha256": "a" * 64, "size": 1, "file": "f", "manifest": "{}", "mirror": "m"}
    fleet.propose("manifest", artifact=artifact)
    fleet.clock[0] += 30.0
    fleet.propose("downloaded")  # 42.5 s after the start: the end of running_old_release

    def count(member: str, state: str) -> float:
        return fleet.value("quorum_rollout_release_state_duration_seconds_count", member, state=state)

    assert count("h2", contract.RUNNING_OLD) == 1
    assert fleet.value("quorum_rollout_release_state_duration_seconds_sum", "h2",
                       state=contract.RUNNING_OLD) == pytest.approx(42.5)
    assert "quorum_rollout_release_state_duration_seconds_count" not in fleet.samples("h1")  # a follower
    fleet.clock[0] += 2.0
    fleet.propose("verified")
    assert count("h2", contract.DOWNLOADED) == 1 and count("h2", contract.RUNNING_OLD) == 1


def test_bytes_from_the_mirror_are_a_counter_of_what_reached_the_store(fleet: Group) -> None:
    agent = fleet.agents["h1"]
    assert fleet.value("quorum_rollout_downloaded_bytes_total", source="mirror") == 0
    manifest, _mirror = artifacts.fetch_manifest(agent.cfg.artifacts, "2.4", agent.policy, now=time.time(),
                                                 group=GROUP, highest_version=None, allow_downgrade=False)
    agent.sources.ensure(manifest, [])
    assert fleet.value("quorum_rollout_downloaded_bytes_total", source="mirror") == manifest.size > 0
    assert fleet.value("quorum_rollout_downloaded_bytes_total", source="peer") == 0
    agent.sources.ensure(manifest, [])  # already in the store: nothing transferred
    assert fleet.value("quorum_rollout_downloaded_bytes_total", source="mirror") == manifest.size


def test_a_host_step_is_timed_whether_it_succeeds_or_fails(fleet: Group) -> None:
    metrics = fleet.agents["h1"].metrics
    with metrics.step("install"):
        pass
    with pytest.raises(RuntimeError), metrics.step("preflight"):
        raise RuntimeError("check failed")
    assert fleet.value("quorum_rollout_step_duration_seconds_count", step="install") == 1
    assert fleet.value("quorum_rollout_step_duration_seconds_count", step="preflight") == 1
    assert fleet.value("quorum_rollout_step_duration_seconds_count", step="download") == 0


def test_a_stay_that_began_before_the_agent_counted_is_timed_from_the_committed_history(fleet: Group) -> None:
    """An agent (re)started mid-release: its first look at the state is a starting point, and the
    state the release is in was entered at the time the history says, not when this agent looked."""
    from quorum_rollout.metrics import AgentMetrics

    fleet.group.nodes["h2"].propose("start", version="2.4", members=MEMBERS, batch_fraction=0.1, canary=False,
                                    allow_downgrade=False, allow_unreachable=True, running_version=None)
    fleet.clock[0] += 20.0
    late = AgentMetrics(GROUP, "h2")
    late.observe(fleet.group.state, leading=True)  # the starting point, 20 s into running_old_release
    artifact = {"sha256": "a" * 64, "size": 1, "file": "f", "manifest": "{}", "mirror": "m"}
    fleet.propose("manifest", artifact=artifact)
    fleet.propose("downloaded")
    late.observe(fleet.group.state, leading=True)
    samples = {(s.name, s.labels.get("state")): s.value for family in text_string_to_metric_families(late.render())
               for s in family.samples}
    assert samples[("quorum_rollout_release_state_duration_seconds_count", contract.RUNNING_OLD)] == 1
    assert samples[("quorum_rollout_release_state_duration_seconds_sum", contract.RUNNING_OLD)] == pytest.approx(20.0)
