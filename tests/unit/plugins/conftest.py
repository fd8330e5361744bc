# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures of the plugins' unit tests.

Run from the repository root, either with ansible-test (scripts/ansible-test.sh) or with
plain pytest once collections/ansible_collections/quorum/rollout links to the root::

    mkdir -p collections/ansible_collections/quorum
    ln -sfn ../../.. collections/ansible_collections/quorum/rollout
    PYTHONPATH=collections .venv/bin/pytest tests/unit/plugins
"""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _install_collection_finder():
    """Let ansible's loaders resolve quorum.rollout.* under plain pytest (ansible-test does this itself)."""
    from ansible.utils.collection_loader import AnsibleCollectionConfig
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    if AnsibleCollectionConfig.collection_finder is not None:
        return
    paths = [os.path.join(ROOT, "collections")]
    paths += [os.path.abspath(p) for p in sys.path if os.path.basename(p) == "collections"]
    if not any(os.path.isdir(os.path.join(p, "ansible_collections", "quorum", "rollout")) for p in paths):
        raise pytest.UsageError(
            "quorum.rollout is not importable: run `mkdir -p collections/ansible_collections/quorum && "
            "ln -sfn ../../.. collections/ansible_collections/quorum/rollout` at the repository root"
        )
    _AnsibleCollectionFinder(paths=paths)._install()  # pylint: disable=protected-access


def _agent_importable():
    """Put this checkout's agent package (agent/quorum_rollout) first on sys.path.

    The fake agent runs the agent's own state machine, and the contract tests compare the
    collection's copy with its source. Both need only its pure, stdlib-only modules (fsm,
    contract), which are found here also under ansible-test, which does not install the agent.
    """
    agent = os.path.join(ROOT, "agent")
    if not os.path.isfile(os.path.join(agent, "quorum_rollout", "fsm.py")):
        raise pytest.UsageError("the agent's source is missing: %s" % agent)
    if agent not in sys.path:
        sys.path.insert(0, agent)


_install_collection_finder()
_agent_importable()

# pylint: disable=wrong-import-position
from ansible.module_utils.testing import patch_module_args  # noqa: E402

from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent  # noqa: E402


@pytest.fixture
def agent():
    """A FakeAgent serving on 127.0.0.1 for the duration of one test."""
    with FakeAgent() as fake:
        yield fake


@pytest.fixture
def token_file(tmp_path, agent):
    path = tmp_path / "api.token"
    path.write_text("  %s\n" % agent.token)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("QUORUM_ROLLOUT_API_URL", raising=False)
    monkeypatch.delenv("QUORUM_ROLLOUT_API_TOKEN", raising=False)
    monkeypatch.delenv("QUORUM_ROLLOUT_VALIDATE_CERTS", raising=False)
    return monkeypatch


@pytest.fixture
def run_module(capsys, clean_env):
    """Run a module's main() in-process with the given args; return its JSON result.

    The module prints its result and exits exactly as under Ansible, so the
    result includes no_log masking and ``failed``.
    """

    def run(main, args, check_mode=False):
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        capsys.readouterr()
        with patch_module_args(args):
            with pytest.raises(SystemExit):
                main()
        out = capsys.readouterr().out
        return json.loads(out)

    return run
