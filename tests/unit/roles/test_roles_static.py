"""Fast checks of the roles without a fleet: documented variables, rendered config and unit.

* every default of a role is documented in its meta/argument_specs.yml and vice versa;
* the agent config template renders configs that `quorum-rollout check-config` accepts (with
  peers, TLS, hooks, checks, registry; and a one-host group);
* the systemd unit renders and `systemd-analyze verify` accepts it without a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
PY = sys.executable
ROLES = ("agent", "demo_app")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_documented(role: str) -> None:
    defaults = set(_load(REPO / "roles" / role / "defaults" / "main.yml"))
    options = set(_load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"])
    assert sorted(defaults - options) == [], "defaults without documentation in meta/argument_specs.yml"
    assert sorted(options - defaults) == [], "documented options without a default in defaults/main.yml"


@pytest.mark.parametrize("role", ROLES)
def test_documented_defaults_match(role: str) -> None:
    defaults = _load(REPO / "roles" / role / "defaults" / "main.yml")
    options = _load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    wrong = {name: (spec.get("default"), defaults[name]) for name, spec in options.items()
             if name in defaults and spec.get("default") != defaults[name]}
    assert wrong == {}, "argument_specs default differs from defaults/main.yml"


def test_internal_and_public_names() -> None:
    """Public names in defaults, internal `_quorum_rollout_*` in vars, registered `__quorum_rollout_*`."""
    assert all(k.startswith("quorum_rollout_") for k in _load(REPO / "roles/agent/defaults/main.yml"))
    assert all(k.startswith("_quorum_rollout_") for k in _load(REPO / "roles/agent/vars/main.yml"))
    for path in (REPO / "roles" / "agent" / "tasks").glob("*.yml"):
        for task in _load_tasks(path):
            if "register" in task:
                assert task["register"].startswith("__quorum_rollout_"), (path.name, task["register"])


def _load_tasks(path: Path) -> list[dict]:
    out = []
    for task in yaml.safe_load(path.read_text()) or []:
        out.append(task)
        out.extend(task.get("block", []))
    return out


def _render(tmp_path: Path, extra: dict, templates: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Render role templates on localhost with the role's defaults + vars and `extra` as extra vars."""
    tasks = [{"name": f"render {src}", "ansible.builtin.template": {"src": str(REPO / "roles/agent/templates" / src),
                                                                     "dest": str(tmp_path / dest), "mode": "0644"}}
             for src, dest in templates.items()]
    play = [{"hosts": "localhost", "gather_facts": False,
             "vars_files": [str(REPO / "roles/agent/defaults/main.yml"), str(REPO / "roles/agent/vars/main.yml")],
             "tasks": tasks}]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(play))
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    return subprocess.run([str(Path(PY).parent / "ansible-playbook"), str(tmp_path / "render.yml"),
                           "-e", f"@{tmp_path / 'extra.json'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)


BASE_VARS = {
    "quorum_rollout_artifact_name": "demo-app",
    "quorum_rollout_mirrors": ["https://cdn.example.com/releases", "http://10.0.0.9:8000/"],
    "quorum_rollout_trusted_keys": ["3q2+7wE7Wh5m0Gk6b1Vf0mY1JQ9m1VQG6m3x5k6cQbE=",
                                   {"public_key": "XzWa29EYb6YFRPJWGgsVc6719s24xRIqkyk7+DYKLSs="}],
    "quorum_rollout_key_threshold": 2,
    "quorum_rollout_restart_command": "systemctl restart 'demo app'",
    "quorum_rollout_preflight_checks": [
        {"name": "health", "type": "http", "url": "http://127.0.0.1:8080/health",
         "expect_body": '"version": "{version}"'},
        {"name": "port", "type": "tcp", "address": "127.0.0.1:8080"},
    ],
    "quorum_rollout_registry": {"type": "file", "path": "/var/lib/quorum-rollout-registry/group.json"},
    "quorum_rollout_notify": {"url": "https://hooks.example.com/quorum",
                              "events": ["group_current", "group_rolled_back"]},
    "quorum_rollout_notify_secret": "webhook-secret-0123456789",
    "quorum_rollout_canary": True,
    "quorum_rollout_channel": "stable",
    "quorum_rollout_channel_interval": 30,
    "inventory_hostname": "web-01",
    "_quorum_rollout_self": {"host": "web-01", "id": "web-01", "group": "intel-eu1a", "address": "10.0.0.1:7100",
                             "api_url": "https://10.0.0.1:7200"},
    "_quorum_rollout_peers": [{"host": "web-02", "id": "web-02", "group": "intel-eu1a", "address": "10.0.0.2:7100",
                               "api_url": "https://10.0.0.2:7200"}],
    "quorum_rollout_api_bind": "10.0.0.1",
    "quorum_rollout_api_tls_cert": "/etc/quorum-rollout/tls/cert.pem",
    "quorum_rollout_api_tls_key": "/etc/quorum-rollout/tls/key.pem",
    "quorum_rollout_metrics_token": "fleet-wide-metrics-token-0123",
}


def test_config_template_passes_check_config(tmp_path: Path) -> None:
    single = {**BASE_VARS, "_quorum_rollout_peers": [], "quorum_rollout_api_tls_cert": "", "quorum_rollout_channel": "",
              "quorum_rollout_metrics_token": "",
              "quorum_rollout_api_tls_key": "", "quorum_rollout_registry": {"type": "none"},
              "quorum_rollout_notify": {}, "quorum_rollout_restart_command": "", "quorum_rollout_preflight_checks": []}
    for name, extra in (("full", BASE_VARS), ("single", single)):
        work = tmp_path / name
        work.mkdir()
        proc = _render(work, {**extra, "quorum_rollout_config_dir": str(work)},
                       {"peers.yml.j2": "peers.yml", "agent.yml.j2": "agent.yml"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        check = subprocess.run([PY, "-m", "quorum_rollout", "check-config", str(work / "agent.yml")],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, (work / "agent.yml").read_text() + check.stderr
        cfg = yaml.safe_load((work / "agent.yml").read_text())
        assert cfg["group"] == "intel-eu1a"
        assert cfg["raft"]["peers_file"] == str(work / "peers.yml") and "peers" not in cfg["raft"]
        peers = yaml.safe_load((work / "peers.yml").read_text())
        if name == "full":
            assert [p["id"] for p in peers] == ["web-02"]
            assert cfg["artifacts"]["trusted_keys"][0]["public_key"].startswith("3q2+")
            assert cfg["install"]["hooks"] == {"restart": "systemctl restart 'demo app'", "timeout": 60.0}
            assert cfg["api"]["tls_cert"] == "/etc/quorum-rollout/tls/cert.pem"
            assert cfg["api"]["metrics_token_file"] == str(work / "metrics.token")
            assert cfg["notify"] == {**BASE_VARS["quorum_rollout_notify"], "secret_file": str(work / "notify.secret")}
            assert cfg["rollout"]["canary"] is True
            assert (cfg["artifacts"]["channel"], cfg["artifacts"]["channel_interval"]) == ("stable", 30.0)
        else:
            assert peers == [] and cfg["checks"] == [] and cfg["install"]["hooks"] == {"timeout": 60.0}
            assert "channel" not in cfg["artifacts"], "autonomous mode is off by default"
            assert "metrics_token_file" not in cfg["api"], "no metrics token by default"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed "
                    "(apt-get install systemd); the unit is then only rendered, not verified")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    cli = venv / "bin" / "quorum-rollout"
    cli.write_text("#!/bin/sh\nexit 0\n")
    cli.chmod(0o755)
    proc = _render(tmp_path, {**BASE_VARS, "quorum_rollout_venv": str(venv)},
                   {"quorum-rollout.service.j2": "quorum-rollout.service"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    unit = (tmp_path / "quorum-rollout.service").read_text()
    assert unit.startswith("#\n# Ansible managed")
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "User=quorum-rollout",
                      "StateDirectory=quorum-rollout", "Restart=always"):
        assert directive in unit.splitlines(), directive
    assert "ReadWritePaths=/opt/demo-app /var/lib/quorum-rollout-registry" in unit
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "quorum-rollout.service")],
                            capture_output=True, text=True, check=False)
    # verify exits 0 on unknown keys and bad values too: any output is a finding.
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), verify.stderr
