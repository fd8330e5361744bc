"""The Prometheus and Grafana files the project ships (docs/prometheus/, docs/grafana/) and the
metric names they use: read by the unit tests (shape, promtool) and by the integration test that
checks those names against a real agent's GET /metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
SCRAPE = ROOT / "docs" / "prometheus" / "scrape.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "quorum-rollout.json"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
API_DOCS = ROOT / "docs" / "api.md"

_METRIC = re.compile(r"\b((?:quorum_rollout|process)_[a-z_]+)\b")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    doc = dashboard()
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            queries.append(var["query"]["query"])
    return queries


def metric_names(query: str) -> set[str]:
    """The agent's metric names in a query (quorum_rollout_*, process_*; `up` is Prometheus' own)."""
    return set(_METRIC.findall(query))


def referenced_metrics() -> dict[str, set[str]]:
    """Sample names used by the alert rules and by the dashboard."""
    return {"alerts.yml": set().union(*(metric_names(r["expr"]) for r in alert_rules())),
            "quorum-rollout.json": set().union(*(metric_names(q) for q in dashboard_queries()))}


def documented_metrics() -> set[str]:
    """The family names in docs/api.md's GET /metrics table (counters with their `_total`)."""
    section = API_DOCS.read_text().split("## GET /metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(quorum_rollout_[a-z_]+)` \|", section, re.MULTILINE))
