# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """Shared options of every plugin that talks to the quorum.rollout agent API.

    The argument_spec twin of DOCUMENTATION is
    plugins/module_utils/api_client.py:agent_api_argument_spec; change both together.
    """

    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of a quorum.rollout agent's HTTP API, for example V(http://127.0.0.1:7200).
      - Any member of the group will do; its answer describes the whole group.
      - If not set, the value of the E(QUORUM_ROLLOUT_API_URL) environment variable is used.
      - The agent listens on V(http://127.0.0.1:7200) unless its C(api.bind) / C(api.port) say otherwise.
    type: str
  api_token:
    description:
      - Bearer token sent in the C(Authorization) header of every request.
      - Mutually exclusive with O(api_token_file).
      - If neither O(api_token) nor O(api_token_file) is set, the value of the
        E(QUORUM_ROLLOUT_API_TOKEN) environment variable is used.
    type: str
  api_token_file:
    description:
      - Path of a file holding the bearer token, such as the agent's own C(api.token_file).
      - Leading and trailing white space in the file is ignored.
      - The file is read where the plugin runs (the target host for modules, the controller for lookups).
      - Mutually exclusive with O(api_token).
    type: path
  ca_path:
    description:
      - PEM file of the CA certificate(s) that signed the agent's TLS certificate, when O(api_url) is C(https://).
      - The system's trust store is used when not set.
      - Ignored with O(validate_certs=false).
    type: path
  validate_certs:
    description:
      - Whether to verify the agent's TLS certificate (against O(ca_path) or the system's trust store) and
        that it names the host of O(api_url), when O(api_url) is C(https://).
      - Set to V(false) only for a test setup with self-signed certificates. The connection is still
        encrypted, but anyone on the path can then impersonate the agent and read the token.
    type: bool
    default: true
  timeout:
    description:
      - Timeout in seconds of one HTTP request to the agent.
    type: float
    default: 10
"""

    # Controller-side plugins (the lookup) also read the options from the environment, from the
    # [quorum_rollout] section of ansible.cfg and from variables (direct arguments win, then
    # variables, then the environment, then ansible.cfg). The variable names are the ones the agent
    # role and the playbooks use, listed as known in roles/agent/vars/main.yml.
    PLUGINS = r"""
options:
  api_url:
    env:
      - name: QUORUM_ROLLOUT_API_URL
    ini:
      - section: quorum_rollout
        key: api_url
    vars:
      - name: quorum_rollout_api_url
  api_token:
    vars:
      - name: quorum_rollout_api_token
  api_token_file:
    ini:
      - section: quorum_rollout
        key: api_token_file
    vars:
      - name: quorum_rollout_api_token_file
  ca_path:
    ini:
      - section: quorum_rollout
        key: ca_path
    vars:
      - name: quorum_rollout_api_ca_path
  validate_certs:
    env:
      - name: QUORUM_ROLLOUT_VALIDATE_CERTS
    ini:
      - section: quorum_rollout
        key: validate_certs
    vars:
      - name: quorum_rollout_api_validate_certs
  timeout:
    ini:
      - section: quorum_rollout
        key: timeout
    vars:
      - name: quorum_rollout_api_timeout
"""

    ATTRIBUTES = r"""
attributes:
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second run reports no change
        (C(changed=false)) and acts on nothing.
  action_group:
    description: Use C(group/quorum.rollout.agent_api) in C(module_defaults) to set the shared connection options once.
    support: full
    membership:
      - quorum.rollout.agent_api
"""
