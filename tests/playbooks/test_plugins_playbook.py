# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The plugins through a real ansible-playbook run (FQCNs, module_defaults group, AnsiballZ, templating).

The agent is the stand-in server of tests/unit/plugins/fake_agent.py; the real agent is
exercised by the integration and e2e suites.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from ansible_collections.quorum.rollout.plugins.modules import release

PLAYBOOK = textwrap.dedent("""\
    - hosts: localhost
      gather_facts: false
      module_defaults:
        group/quorum.rollout.agent_api:
          api_url: "{{ agent_url }}"
          api_token_file: "{{ token_file }}"
      tasks:
        - name: Check mode predicts the change
          quorum.rollout.release:
            version: "2.4"
          check_mode: true
          register: __predicted

        - name: Start and wait
          quorum.rollout.release:
            version: "2.4"
            wait_sleep: 0.02
          register: __first

        - name: Again, nothing to do
          quorum.rollout.release:
            version: "2.4"
          register: __second

        - name: Read the group
          quorum.rollout.group_info:
          register: __info

        - name: A failed release fails the task with host, step and reason
          quorum.rollout.release:
            version: "2.5"
            wait_sleep: 0.02
          register: __failed
          ignore_errors: true

        - name: Check everything
          ansible.builtin.assert:
            that:
              - __predicted is changed
              - __first is changed
              - __first.state == 'current'
              - __second is not changed
              - __info.state.current_version == '2.4'
              - __info.node.role == 'follower'
              - __failed is failed
              - "'host h2 failed at preflight:health: HTTP 500' in __failed.msg"
              - __failed.release.state == 'rolled_back'
              - >-
                query('quorum.rollout.group_state', agent_url, api_token_file=token_file,
                      query='release.hosts.*.status | sort(@)') == [['reverted', 'reverted', 'reverted']]
              - lookup('quorum.rollout.group_state', agent_url, api_token_file=token_file,
                       query='length(history)') > 5
""")


def _collections_path():
    """The directory holding ansible_collections/quorum/rollout that this test was imported from."""
    parts = os.path.abspath(release.__file__).split(os.sep)
    return os.sep.join(parts[:parts.index("ansible_collections")])


def test_playbook(agent, token_file, tmp_path):
    # h2 fails its pre-flight check for 2.5, but not for 2.4
    original_start = agent.group.start

    def start(version, allow_downgrade):
        agent.group.fail = ("h2", "preflight:health", "HTTP 500") if version == "2.5" else None
        return original_start(version, allow_downgrade)

    agent.group.start = start
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("ANSIBLE_") or name.startswith("QUORUM_ROLLOUT_"):
            del env[name]
    env.update(
        ANSIBLE_COLLECTIONS_PATH=_collections_path(),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    cmd = [
        sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local",
        "-e", f"ansible_python_interpreter={sys.executable}",
        "-e", f"agent_url={agent.url}", "-e", f"token_file={token_file}",
        str(tmp_path / "play.yml"),
    ]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=180,
                          check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ok=6" in output and "failed=0" in output and "ignored=1" in output, output
    assert agent.token not in output
