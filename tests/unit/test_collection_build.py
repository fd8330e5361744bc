"""The built collection: `ansible-galaxy collection build` ships the Ansible content, the agent's source
and what ansible-test needs, and leaves the checkout's tooling and pytest suites out (galaxy.yml's
build_ignore). `make sanity` checks exactly this tarball, so what ships is what is checked."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


def test_the_tarball_ships_the_collection_and_leaves_the_tooling_out(tmp_path: Path) -> None:
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    subprocess.run([str(galaxy), "collection", "build", "--output-path", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=120)
    (tarball,) = tmp_path.glob("quorum-rollout-*.tar.gz")
    with tarfile.open(tarball) as archive:
        files = {m.name for m in archive.getmembers() if m.isfile()}
    for shipped in ("galaxy.yml", "MANIFEST.json", "meta/runtime.yml", "playbooks/site.yml", "README.md",
                    "agent/pyproject.toml", "agent/quorum_rollout/fsm.py", "plugins/lookup/group_state.py",
                    "roles/agent/meta/argument_specs.yml", "roles/check_inputs/tasks/main.yml",
                    "changelogs/changelog.yaml", "tests/sanity/ignore-2.19.txt", "tests/unit/plugins/fake_agent.py"):
        assert shipped in files or shipped == "galaxy.yml", shipped  # galaxy.yml becomes MANIFEST.json
    tops = {name.split("/")[0] for name in files}
    assert not tops & {"Makefile", "bench", "scripts", "ansible.cfg", "requirements-dev.txt", "ruff.toml", ".venv",
                       "collections", ".git", ".ci", "demo", "dist"}, sorted(tops)
    tests = {name for name in files if name.startswith("tests/")}
    assert tests and all(name.startswith(("tests/sanity/", "tests/unit/plugins/")) for name in tests), sorted(tests)
    assert not [name for name in files if "__pycache__" in name or name.endswith((".pyc", ".egg-info"))]

