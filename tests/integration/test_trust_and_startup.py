"""Untrusted releases are refused before any host installs; an agent with a bad setup refuses
to start and says which field to fix. Real agents, real mirror, real signatures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.fleet import CLI, Fleet


def _tamper_signed(manifest: Path) -> None:
    """A mirror extends the expiry of a genuine manifest: the signature no longer matches."""
    doc = json.loads(manifest.read_text())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    manifest.write_text(json.dumps(doc))


def _other_key_release(fleet: Fleet, version: str) -> None:
    other = fleet.base / "keys" / "attacker"
    subprocess.run([*CLI, "keygen", "--out", str(other)], check=True, capture_output=True, env=fleet.env)
    fleet.build_release(version, key=other.with_suffix(".key"))


def _sha_mismatch_release(fleet: Fleet, version: str) -> None:
    fleet.build_release(version)
    artifact = fleet.mirror_dir / "demo-app" / version / f"demo-app-{version}.tar.gz"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    artifact.write_bytes(bytes(data))


@pytest.mark.parametrize("attack,expect", [
    ("bad_signature", "signature"),
    ("unknown_key", "key"),
    ("sha256_mismatch", "sha256"),
])
def test_untrusted_release_refused_before_any_install(make_fleet, attack, expect):
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    if attack == "bad_signature":
        fleet.build_release("2.4")
        _tamper_signed(fleet.mirror_dir / "demo-app" / "2.4" / "manifest.json")
    elif attack == "unknown_key":
        _other_key_release(fleet, "2.4")
    else:
        _sha_mismatch_release(fleet, "2.4")
    fleet.start()
    resp = fleet.hosts[0].post("/v1/releases", {"version": "2.4"})
    if attack != "sha256_mismatch":  # a refused manifest: refused by the start itself, nothing committed
        assert resp.status_code == 409 and resp.json()["detail"]["reason"] == "untrusted", resp.text
        assert expect in resp.json()["error"].lower()
        assert fleet.release_state() is None
        assert all(host.current() == "2.3" and host.events("activated") == [] for host in fleet.hosts)
        return
    assert resp.status_code == 201, resp.text  # a good manifest, a file that does not match it: the leader refuses
    done = fleet.wait_release(("current", "rolled_back", "aborted"), timeout=60)
    assert done["state"] == "rolled_back"
    failure = done["failure"]
    assert failure["step"] == "verify", failure
    assert expect in failure["reason"].lower(), failure
    assert done["batch"] is None, "no batch was ever opened"
    for host in fleet.hosts:
        assert host.current() == "2.3"
        assert host.events("activated") == []
    status = fleet.hosts[1].status()
    assert status["state"]["current_version"] is None or status["state"]["current_version"] != "2.4"


def _config(fleet: Fleet) -> Path:
    fleet.write_configs()
    return fleet.hosts[0].config_path


def _run_agent(path: Path, fleet: Fleet) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "agent", "-c", str(path)], capture_output=True, text=True, timeout=60,
                          env=fleet.env, check=False)


def test_agent_refuses_to_start_without_the_group_secret(make_fleet):
    fleet = make_fleet(1)
    path = _config(fleet)
    os.unlink(fleet.secret_file)
    proc = _run_agent(path, fleet)
    assert proc.returncode != 0
    assert "secret" in proc.stderr and str(fleet.secret_file) in proc.stderr


def test_agent_refuses_a_secret_readable_by_others(make_fleet):
    fleet = make_fleet(1)
    path = _config(fleet)
    os.chmod(fleet.secret_file, 0o644)
    proc = _run_agent(path, fleet)
    assert proc.returncode != 0 and "chmod 600" in proc.stderr


def test_agent_refuses_an_unreadable_config(make_fleet):
    fleet = make_fleet(1)
    path = _config(fleet)
    path.write_text("node_id: [unclosed\n")
    proc = _run_agent(path, fleet)
    assert proc.returncode != 0 and str(path) in proc.stderr


def test_agent_refuses_a_bad_field_and_names_it(make_fleet):
    fleet = make_fleet(1)
    path = _config(fleet)
    doc = json.loads(path.read_text())
    doc["rollout"]["batch_fraction"] = 1.5
    path.write_text(json.dumps(doc))
    proc = _run_agent(path, fleet)
    assert proc.returncode != 0 and "rollout.batch_fraction" in proc.stderr
    check = subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True, env=fleet.env,
                           check=False)
    assert check.returncode != 0 and "rollout.batch_fraction" in check.stderr
