"""The collection as users get it: `ansible-galaxy collection build`, install into a fresh
directory, then `ansible-playbook quorum.rollout.site` / `quorum.rollout.release` from there
(no checkout on the collections path, run from a directory outside the repository) against
one real 3-host group on loopback."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.localfleet import PLAYBOOK_ENV, PY, REPO, LocalFleet, wait_for
from tests.support.webhook import Receiver

pytestmark = pytest.mark.e2e
BIN = Path(PY).parent


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    f = LocalFleet(tmp_path / "fleet", cpus=("intel",), zones=("z1",), per_group=3)
    try:
        yield f
    finally:
        f.stop()


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_installed_collection_runs_site_and_release(fleet: LocalFleet, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({k: v for k, v in PLAYBOOK_ENV.items() if k != "ANSIBLE_CONFIG"})
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    build, installed, work = tmp_path / "build", tmp_path / "collections", tmp_path / "work"
    for d in (build, installed, work):
        d.mkdir()
    _run([str(BIN / "ansible-galaxy"), "collection", "build", str(REPO), "--output-path", str(build)], work, env)
    (tarball,) = build.glob("quorum-rollout-*.tar.gz")
    _run([str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(installed)], work, env)
    root = installed / "ansible_collections" / "quorum" / "rollout"
    assert (root / "playbooks" / "site.yml").is_file() and (root / "agent" / "pyproject.toml").is_file()
    assert not (root / ".venv").exists() and not (root / "tests" / "output").exists()
    # The local fleet library and the dev tools that import it need a checkout: they are not shipped.
    assert not (root / "scripts" / "localfleet").exists() and not (root / "scripts" / "demo.py").exists()
    assert not (root / "bench").exists()
    env["ANSIBLE_COLLECTIONS_PATH"] = str(installed)

    fleet.start_mirror()
    assert fleet.publish("2.3").returncode == 0 and fleet.publish("2.4").returncode == 0
    receiver = Receiver()  # webhook notifications, with the signing secret the role writes on each host
    secret = "e2e-webhook-secret-0123456789"
    inventory = fleet.write_inventory(quorum_rollout_notify={"url": receiver.url, "events": ["group_current"]},
                                      quorum_rollout_notify_secret=secret)
    _run([str(BIN / "ansible-playbook"), "-i", str(inventory), "quorum.rollout.site"], work, env)
    out = _run([str(BIN / "ansible-playbook"), "-i", str(inventory), "quorum.rollout.release", "-e", "version=2.4"],
               work, env).stdout
    assert "intel-z1" in out and "current" in out
    for host in fleet.hosts:
        assert host.current() == "2.4"
        assert wait_for(lambda h=host: h.health()[1].get("version") == "2.4", 30, f"{host.name} serves 2.4")
    try:
        wait_for(receiver.delivered, 30, "the group_current notification")
        [hook] = receiver.delivered()
        assert hook["headers"]["X-Quorum-Event"] == "group_current"
        expected = "sha256=" + hmac.new(secret.encode(), hook["body"], hashlib.sha256).hexdigest()
        assert hook["headers"]["X-Quorum-Signature"] == expected
    finally:
        receiver.close()
    for host in fleet.hosts:
        written = host.config_file.parent / "notify.secret"
        assert written.read_text() == secret + "\n" and written.stat().st_mode & 0o777 == 0o600
