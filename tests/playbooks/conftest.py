"""Playbook tests: the collection's plugins through real `ansible-playbook` runs on localhost, against
the stand-in agent of tests/unit/plugins/fake_agent.py or the real `quorum-rollout` CLI; no fleet.

Run by `make playbooks` (part of `make test`), not by `make unit`: each test starts whole Ansible
runs (seconds each), where the unit suite's tests take milliseconds. FQCNs resolve through
collections/ansible_collections/quorum/rollout -> the checkout (what `make collection` makes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "collections"
if not (COLLECTIONS / "ansible_collections" / "quorum" / "rollout").is_dir():
    raise pytest.UsageError("quorum.rollout is not importable from this checkout: run `make collection`")
if AnsibleCollectionConfig.collection_finder is None:  # the same finder tests/unit/plugins installs
    _AnsibleCollectionFinder(paths=[str(COLLECTIONS)])._install()

from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent  # noqa: E402


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    """A FakeAgent serving on 127.0.0.1 for the duration of one test."""
    with FakeAgent() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path: Path, agent: FakeAgent) -> str:
    path = tmp_path / "api.token"
    path.write_text(f"  {agent.token}\n")
    path.chmod(0o600)
    return str(path)
