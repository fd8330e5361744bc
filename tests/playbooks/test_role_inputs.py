"""The agent role's input checks through real `ansible-playbook --check` runs on localhost: bad
input fails the play at once, naming the variable and the fix, and nothing is changed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = base64.b64encode(bytes(range(32))).decode()
GOOD = {"quorum_rollout_zone": "z1", "quorum_rollout_artifact_name": "demo-app",
        "quorum_rollout_mirrors": ["http://127.0.0.1:9"], "quorum_rollout_trusted_keys": [KEY]}


def check_run(tmp_path: Path, inventory: str = "h1,", **variables: Any) -> subprocess.CompletedProcess[str]:
    book = tmp_path / "play.yml"
    book.write_text("- hosts: all\n  gather_facts: false\n  roles:\n    - quorum.rollout.agent\n")
    argv = [sys.executable, "-m", "ansible.cli.playbook", "-i", inventory, "-c", "local", str(book), "--check",
            "-e", json.dumps({**GOOD, "quorum_rollout_controller_dir": str(tmp_path / "controller"), **variables})]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / "collections"), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)


@pytest.mark.parametrize(("variables", "message"), [
    ({"quorum_rollout_batch_fracton": 0.5},
     "quorum_rollout_batch_fracton (did you mean quorum_rollout_batch_fraction?)"),
    ({"quorum_rollout_trusted_keys": [KEY[:40]]}, "quorum_rollout_trusted_keys: every entry must be an Ed25519"),
    ({"quorum_rollout_trusted_keys": [{"public_key": KEY}, 5]}, "not that: 5"),
    ({"quorum_rollout_metrics_token": "short token"}, "quorum_rollout_metrics_token must be at least 16 characters"),
])
def test_bad_role_input_fails_the_check_run_naming_the_variable(tmp_path: Path, variables: dict[str, Any],
                                                                message: str) -> None:
    proc = check_run(tmp_path, **variables)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out, out[-3000:]
    assert "changed=0" in out


def test_a_value_of_the_wrong_type_fails_once_in_a_few_lines_naming_the_variable(tmp_path: Path) -> None:
    """`-e quorum_rollout_batch_fraction=half` used to print the role's whole argument spec (~10 KB) for every
    host; roles/check_inputs fails the play once, before that validation runs."""
    inventory = tmp_path / "hosts.yml"
    hosts = {"h1": {}, "h2": {}, "h3": {"quorum_rollout_api_port": "http"}}
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    proc = check_run(tmp_path, inventory=str(inventory), quorum_rollout_batch_fraction="half")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert out.count("[ERROR]") == 1 and "argument_spec" not in out, out[-3000:]
    assert len(out) < 3000, f"{len(out)} bytes of output:\n{out}"
    assert ('quorum_rollout_batch_fraction must be a float, got "half"; for example quorum_rollout_batch_fraction=0.1,'
            " the default (on all 3 hosts)") in out
    assert ('quorum_rollout_api_port must be an integer, got "http"; for example quorum_rollout_api_port=7200,'
            " the default (on h3)") in out
    assert "changed=0" in out  # stopped at the check, before the role's own tasks
    assert "Check that every quorum_rollout_* variable" not in out
