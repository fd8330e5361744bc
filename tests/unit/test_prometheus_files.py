"""docs/prometheus/ (scrape config, alert rules) and docs/grafana/ (dashboard): their shape, checked
always, and Prometheus' own checks with `promtool` (Debian's `prometheus` package, installed by
.ci/run): `check config`, `check rules`, and `test rules` on tests/prometheus/alerts_test.yml,
where each alert must fire on the series an agent exports in its situation and only then.
tests/integration/test_api_docs.py checks the metric names against a real agent's answer."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import prometheus_files as pf

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
# What an operator of a fleet needs to be woken for (issue #12), by alert name.
REQUIRED_ALERTS = {"QuorumRolloutGroupRolledBack", "QuorumRolloutReleaseStuck", "QuorumRolloutMemberUnreachable",
                   "QuorumRolloutNoLeader"}
_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


# ------------------------------------------------------------------------------------- alert rules


def test_every_alert_rule_has_what_prometheus_and_alertmanager_need() -> None:
    rules = pf.alert_rules()
    names = [r.get("alert") for r in rules]
    assert len(names) == len(set(names)), names
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"QuorumRollout[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert _DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.([a-z_]+)", text):  # only labels the expression keeps
                assert label in rule["expr"] or label in ("instance", "node", "group"), (rule["alert"], label)


def test_every_metric_the_alerts_and_the_dashboard_use_is_documented() -> None:
    documented = pf.documented_metrics() | {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    histograms = {n for n in documented if n.endswith("_seconds") and "duration" in n}
    known = documented | {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "count", "sum")}
    for source, names in pf.referenced_metrics().items():
        assert names, source
        assert names - known == set(), f"{source} uses metrics docs/api.md does not list"


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = promtool("check", "rules", str(pf.ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(pf.alert_rules())} rules found" in result.stdout


def expected_annotations(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, text in rule["annotations"].items():
        for name, value in labels.items():
            text = text.replace("{{ $labels." + name + " }}", str(value))
        assert "{{" not in text, (rule["alert"], key, text)
        out[key] = text
    return out


@needs_promtool
def test_each_alert_fires_on_its_situation_and_only_then(tmp_path: Path) -> None:
    """promtool test rules on tests/prometheus/alerts_test.yml, with each expected alert's
    annotations filled in from the rule (so the templates are checked too)."""
    rules = {r["alert"]: r for r in pf.alert_rules()}
    doc = yaml.safe_load(pf.ALERT_TESTS.read_text())
    fired = set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                alert.setdefault("exp_annotations", expected_annotations(rules[check["alertname"]],
                                                                         alert["exp_labels"]))
                fired.add(check["alertname"])
    assert REQUIRED_ALERTS <= fired
    doc["rule_files"] = [str(pf.ALERTS)]
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_checks_the_scrape_config(tmp_path: Path) -> None:
    """The example as it is, with its /etc/prometheus files made under tmp_path."""
    text = pf.SCRAPE.read_text().replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "quorum-rollout-metrics.token").write_text("fleet-wide-metrics-token-0123\n")
    (tmp_path / "quorum-rollout-targets.json").write_text('[{"targets": ["10.0.0.1:7200"]}]\n')
    shutil.copy(pf.ALERTS, tmp_path / "quorum-rollout-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(text)
    result = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


# --------------------------------------------------------------------------------------- dashboard


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    doc = pf.dashboard()
    assert doc["uid"] == "quorum-rollout" and doc["schemaVersion"] >= 36
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in doc["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip(), panel["title"]
            if "quorum_rollout_" in target["expr"] and "build_info" not in target["expr"]:
                assert 'group=~"$group"' in target["expr"], (panel["title"], target["expr"])
