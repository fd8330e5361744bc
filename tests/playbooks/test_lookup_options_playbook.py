# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Connection options set once, through a real ansible-playbook run: the group_state lookup reads them
from ansible.cfg's [quorum_rollout] section and from variables, an argument wins over a variable, and
validate_certs (default true) decides whether the modules and the lookup accept an agent's self-signed
certificate. The agent is the stand-in HTTPS server of tests/unit/plugins/fake_agent.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent, self_signed

pytest.importorskip("cryptography")

PLAYBOOK = textwrap.dedent("""\
    - hosts: localhost
      gather_facts: false
      vars:
        quorum_rollout_api_validate_certs: false
      tasks:
        - name: URL, token file and timeout from ansible.cfg, validate_certs from a variable
          ansible.builtin.set_fact:
            __from_config: "{{ lookup('quorum.rollout.group_state', query='group') }}"

        - name: An argument wins over the variable, and the default verifies the certificate
          ansible.builtin.set_fact:
            __verified: "{{ lookup('quorum.rollout.group_state', query='group', validate_certs=true) }}"
          register: __lookup_refused
          ignore_errors: true

        - name: The CA from a variable verifies it
          ansible.builtin.set_fact:
            __with_ca: "{{ lookup('quorum.rollout.group_state', query='current_version', validate_certs=true) }}"
          vars:
            quorum_rollout_api_ca_path: "{{ ca_file }}"

        - name: A module verifies the certificate by default
          quorum.rollout.group_info:
            api_url: "{{ agent_url }}"
            api_token_file: "{{ token_file }}"
          register: __module_refused
          ignore_errors: true

        - name: A module with validate_certs=false accepts it
          quorum.rollout.group_info:
            api_url: "{{ agent_url }}"
            api_token_file: "{{ token_file }}"
            validate_certs: false
          register: __info

        - name: Check everything
          ansible.builtin.assert:
            that:
              - __from_config == 'intel-eu1a'
              - __lookup_refused is failed
              - "'TLS error' in __lookup_refused.msg and 'validate_certs=false skips the check' in __lookup_refused.msg"
              - __with_ca == '2.3'
              - __module_refused is failed
              - "'validate_certs=false skips the check' in __module_refused.msg"
              - __info.state.group == 'intel-eu1a'
""")


def test_lookup_options_from_ansible_cfg_and_variables_and_validate_certs(tmp_path):
    certfile, keyfile = self_signed(str(tmp_path))
    with FakeAgent(tls=(certfile, keyfile)) as agent:
        token_file = tmp_path / "api.token"
        token_file.write_text(agent.token + "\n")
        token_file.chmod(0o600)
        (tmp_path / "play.yml").write_text(PLAYBOOK)
        collections = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "collections"))
        (tmp_path / "ansible.cfg").write_text(textwrap.dedent(f"""\
            [defaults]
            collections_path = {collections}
            [quorum_rollout]
            api_url = {agent.url}
            api_token_file = {token_file}
            timeout = 5
        """))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "QUORUM_ROLLOUT_"))}
        env.update(ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
        cmd = [sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"agent_url={agent.url}",
               "-e", f"token_file={token_file}", "-e", f"ca_file={certfile}", str(tmp_path / "play.yml")]
        proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=180,
                              check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ok=6" in output and "failed=0" in output and "ignored=2" in output, output
    assert agent.token not in output
