"""docs/api.md's GET /v1/status reference and quorum.rollout.group_info's RETURN samples against a
real agent's answer: every field the agent returns is documented and every documented field is
returned, at each level (top, node, members, state, release, hosts, history entries). A field
added, renamed or dropped on either side fails here.

On the same fleet, after the same release: GET /metrics (docs/api.md's metric table, the metrics
docs/prometheus/alerts.yml and docs/grafana/quorum-rollout.json use, what the release did) and the
fleet's metrics token, which reads /metrics and nothing else."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import prometheus_files
from tests.support.fleet import CLI, Fleet, Host, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def status_section() -> str:
    text = DOCS.read_text()
    return text.split("## GET /v1/status", 1)[1].split("\n## ", 1)[0]


def table_fields(section: str, heading: str) -> set[str]:
    """The field names of the table that follows the line `heading` (`a`, `b` in one cell = two)."""
    table = section.split(f"\n{heading}\n", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        names |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Host]]:
    """One group of three for the module, released to 2.4 (every process stopped by PID at the end)."""
    base = tmp_path_factory.mktemp("api-docs")
    metrics_token = base / "metrics.token"
    fd = os.open(metrics_token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("fleet-wide-metrics-token-0123\n")
    fleet = Fleet(base / "fleet", 3, extra={"api": {"metrics_token_file": str(metrics_token)}})
    try:
        fleet.start_mirror()
        fleet.preinstall("2.3")
        fleet.build_release("2.4")
        fleet.start()
        leader = wait_for(fleet.leader, 30, "a leader")
        resp = leader.post("/v1/releases", {"version": "2.4"})
        assert resp.status_code == 201, resp.text
        wait_for(lambda: (r := leader.status()["state"]["release"]) and r["state"] == "current", 120, "2.4 current")
        yield fleet, leader
    finally:
        fleet.close()


def test_the_status_reference_and_group_info_return_match_a_real_agent(released: tuple[Fleet, Host]) -> None:
    fleet, leader = released
    real = leader.status()

    section = status_section()
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    assert set(example) == set(real), "top-level fields"
    assert set(example["node"]) == set(real["node"]) == table_fields(section, "`node`:"), "node fields"
    assert set(example["state"]) == set(real["state"]), "state fields of the example"
    assert table_fields(section, "`state` (GROUPSTATE), replicated, the same on every member once committed:") \
        == set(real["state"]), "state fields"
    release = real["state"]["release"]
    assert table_fields(section, "RELEASE:") == set(release), "release fields"
    assert [sorted(m) for m in real["members"]] == [sorted(example["members"][0])] * len(real["members"])
    check_group_info_return(real)
    check_metrics(fleet, leader, real)


def module_return(name: str) -> dict[str, Any]:
    """The RETURN block of a module, read from its source (no import: it needs Ansible's loader)."""
    import ast

    import yaml
    path = DOCS.parents[1] / "plugins" / "modules" / f"{name}.py"
    tree = ast.parse(path.read_text())
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", "") == "RETURN" for t in n.targets)]
    return yaml.safe_load(value)


def check_group_info_return(real: dict[str, Any]) -> None:
    """What quorum.rollout.group_info documents (RETURN: fields and samples) is what an agent answers."""
    doc = module_return("group_info")

    assert set(doc["node"]["contains"]) <= set(real["node"]), "documented node fields the agent does not return"
    assert set(doc["state"]["contains"]) <= set(real["state"])
    assert set(doc["state"]["sample"]) <= set(real["state"])
    release = real["state"]["release"]
    assert set(doc["release"]["sample"]) <= set(release)
    sample_host = next(iter(doc["release"]["sample"]["hosts"].values()))
    assert all(set(h) == set(sample_host) for h in release["hosts"].values()), release["hosts"]
    assert [sorted(m) for m in real["members"]] == [sorted(doc["members"]["sample"][0])] * len(real["members"])
    (event,) = doc["events"]["sample"]
    for entry in real["state"]["history"]:
        assert set(entry) == set(event), (entry, event)
        both = [k for k in entry if entry[k] is not None and event[k] is not None]
        assert [type(entry[k]) for k in both] == [type(event[k]) for k in both], (entry, event)


def scrape(host: Any, token: str | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)], as Prometheus parses the host's GET /metrics."""
    headers = {"Authorization": f"Bearer {token}"} if token else host.fleet.auth
    resp = requests.get(host.api_url + "/metrics", headers=headers, timeout=5)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    (got,) = [v for have, v in samples[name] if all(have.get(k) == x for k, x in labels.items())]
    return got


def check_metrics(fleet: Any, leader: Any, status: dict[str, Any]) -> None:
    """Every host's GET /metrics after release 2.4 went current on all three: what docs/api.md
    lists is what the agent exports, the alerts and the dashboard use only exported names, and
    the numbers say what the release did."""
    metrics = {host.id: scrape(host) for host in fleet.hosts}
    families = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
                for name in metrics[leader.id] if name.startswith("quorum_rollout_")}
    assert families == prometheus_files.documented_metrics(), "docs/api.md's metric table vs the agent"
    for source, names in prometheus_files.referenced_metrics().items():
        assert names - set(metrics[leader.id]) == set(), f"{source} uses metrics the agent does not export"

    release = status["state"]["release"]
    size = release["artifact"]["size"]
    for host in fleet.hosts:
        got = metrics[host.id]
        assert value(got, "quorum_rollout_release_state", state="current", release=release["id"]) == 1
        assert sum(v for _, v in got["quorum_rollout_release_state"]) == 1
        assert value(got, "quorum_rollout_release_progress_ratio") == 1
        assert value(got, "quorum_rollout_release_hosts", status="updated") == 3
        assert value(got, "quorum_rollout_running_version", version="2.4") == 1
        assert value(got, "quorum_rollout_step_duration_seconds_count", step="install") == 1
        assert value(got, "quorum_rollout_step_duration_seconds_count", step="preflight") == 1
        assert value(got, "quorum_rollout_raft_term") == status["node"]["term"]
        ((labels, _),) = got["quorum_rollout_build_info"]
        assert labels["version"] == "0.1.0" and labels["node"] == host.id
        assert got["process_cpu_seconds_total"][0][1] > 0
    # One copy from the mirror per group (the leader's), the rest from peers.
    from_mirror = sum(value(metrics[h.id], "quorum_rollout_downloaded_bytes_total", source="mirror")
                      for h in fleet.hosts)
    from_peers = sum(value(metrics[h.id], "quorum_rollout_downloaded_bytes_total", source="peer") for h in fleet.hosts)
    sent = sum(value(metrics[h.id], "quorum_rollout_peer_sent_bytes_total") for h in fleet.hosts)
    assert from_mirror == size and from_peers == sent == 2 * size
    assert value(metrics[leader.id], "quorum_rollout_release_state_duration_seconds_count",
                 state="running_old_release") == 1

    # The fleet's metrics token: /metrics on every host, nothing else; no token at all: 401.
    token = "fleet-wide-metrics-token-0123"
    for host in fleet.hosts:
        assert "quorum_rollout_is_leader" in scrape(host, token)
        refused = requests.get(host.api_url + "/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert refused.status_code == 403 and refused.json()["error"] == "the metrics token only reads GET /metrics"
        assert requests.get(host.api_url + "/metrics", timeout=5).status_code == 401
    started = requests.post(leader.api_url + "/v1/releases/current/abort", json={},
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert started.status_code == 403 and leader.status()["state"]["release"]["state"] == "current"


class _VisibleText(HTMLParser):
    """The text a reader sees in a DOM dump: everything but the head (title, style)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._hidden += tag in ("head", "style", "script", "title")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("head", "style", "script", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


CHROMIUM = shutil.which("chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "output"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                    ".ci/run installs it): the status page is tested in a real browser or not at all")
def test_the_status_page_in_a_real_browser(released: tuple[Fleet, Host], tmp_path: Path) -> None:
    """Chromium (headless, its own profile, nothing but the agent to talk to) opens the URL that
    `quorum-rollout status --page-url` prints; a screenshot goes to tests/output/status-page.png and
    the text a reader sees names the group, every member with its liveness, and the release."""
    fleet, leader = released
    follower = next(h for h in fleet.hosts if h is not leader)
    url = subprocess.run([*CLI, "status", "--page-url", "-c", str(follower.config_path)], capture_output=True,
                         text=True, check=True, env=fleet.env).stdout.strip()
    assert url.startswith(follower.api_url + "/ui/"), url
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "status-page.png"
    shot.unlink(missing_ok=True)
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                             f"--screenshot={shot}", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    fleet.pids.add(proc.pid)
    try:
        dom, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, (proc.returncode, dom[-500:])
    reader = _VisibleText()
    reader.feed(dom.decode())
    text = " ".join(reader.parts)
    assert f"Group {fleet.group}" in text, text
    assert f"Seen from {follower.id} (follower" in text and f"leader {leader.id}" in text, text
    assert "the group runs 2.4" in text and "Release 2.4#1" in text and "current" in text, text
    assert "3/3 hosts updated" in text and "batch 3 of 3" in text, text
    for host in fleet.hosts:
        assert host.id in text, host.id
    assert text.count("reachable") >= 3 and "unreachable" not in text, text
    assert "all 3 hosts run 2.4" in text, "the last events"
    # The key in the URL opens the page only: not the JSON API.
    key = url.rsplit("/", 1)[1]
    assert requests.get(follower.api_url + "/v1/status", headers={"Authorization": f"Bearer {key}"},
                        timeout=5).status_code == 401
