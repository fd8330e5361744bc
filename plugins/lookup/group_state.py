# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: group_state
short_description: Read the replicated release state of server groups from their agents
version_added: 0.1.0
author:
  - quorum.rollout maintainers (@quorum-rollout)
description:
  - Asks agents for their status (C(GET /v1/status)) from the controller and returns, for each one, its group's
    replicated state (current version, release under way, history), or the whole status with O(full=true).
  - With O(query), a JMESPath expression picks what you need out of each result.
  - Read only; use the M(quorum.rollout.release) module to act on a release.
options:
  _terms:
    description:
      - Base URLs of agent APIs, one per group to read (any member of a group answers for the whole group).
      - When none is given, O(api_url) is used.
      - Lists are flattened, so a list variable can be passed as one term.
      - Every URL is read with the same token.
    type: list
    elements: str
    required: false
  full:
    description:
      - Return the whole status (C(group), C(node), C(state)) instead of the group state (C(state)) alone.
    type: bool
    default: false
  query:
    description:
      - A L(JMESPath,https://jmespath.org/) expression applied to each result, for example V(release.state)
        or V(release.hosts.*.status).
      - Requires the C(jmespath) Python library on the controller.
    type: str
requirements:
  - jmespath (on the controller, only with O(query))
extends_documentation_fragment:
  - quorum.rollout.agent_api
  - quorum.rollout.agent_api.plugins
notes:
  - Like every lookup, this runs on the controller, so O(api_url) and O(api_token_file) must make sense there.
  - Use C(query) (or C(lookup(..., wantlist=true))) to always get a list, one element per URL.
seealso:
  - module: quorum.rollout.group_info
  - module: quorum.rollout.release
"""

EXAMPLES = r"""
- name: Show the state of the group behind one agent
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200', api_token_file='secrets/api.token') }}"

- name: Current version of every group, one URL per group
  ansible.builtin.debug:
    msg: >-
      {{ query('quorum.rollout.group_state', agent_urls, query='current_version',
               api_token=vault_quorum_rollout_token) }}
  vars:
    agent_urls: [http://10.0.0.5:7200, http://10.0.1.5:7200]

# URL and token from QUORUM_ROLLOUT_API_URL / QUORUM_ROLLOUT_API_TOKEN in the controller's environment
- name: Host, step and reason that made the group roll back
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', query='release.failure') }}"

- name: Which node leads the group
  ansible.builtin.set_fact:
    __quorum_rollout_leader: >-
      {{ lookup('quorum.rollout.group_state', full=true, query='node.leader',
                api_url='http://127.0.0.1:7200', api_token_file='/etc/quorum-rollout/api.token') }}
"""

RETURN = r"""
_raw:
  description:
    - One element per URL, the group state (or the whole status with O(full=true)), or what O(query) selected in it.
  type: list
  elements: raw
"""

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.lookup import LookupBase

from ansible_collections.quorum.rollout.plugins.module_utils.api_client import (
    AgentApiError,
    AgentApiOptions,
    AgentOptionError,
)

try:
    import jmespath
except ImportError:
    jmespath = None


def to_plain(value):
    """Return ``value`` as plain dict / list / str / int / float / bool / None.

    ansible-core 2.19 hands plugins lazy containers and tagged scalars (subclasses
    of dict, list, str, ...). JMESPath looks at exact types (``length``, ``type``,
    comparisons), so everything it sees is converted first.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)  # an exact str, without tags
    if isinstance(value, bytes):
        return to_text(value, errors="surrogate_or_strict")
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return dict((to_plain(k), to_plain(v)) for k, v in value.items())
    if isinstance(value, (Sequence, set, frozenset)):
        return [to_plain(v) for v in value]
    return value


def _flatten(terms):
    for term in terms:
        if isinstance(term, (list, tuple)):
            yield from _flatten(term)
        elif term is not None and to_text(term).strip():
            yield to_text(term).strip()


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        options = AgentApiOptions.from_plugin(self)
        full = self.get_option("full")
        expression = self._compile(self.get_option("query"))

        urls = list(_flatten(terms or [])) or [options.url()]
        results = []
        for url in urls:
            try:
                status = options.client(url=url).status()
            except (AgentApiError, AgentOptionError) as exc:
                raise AnsibleError("quorum.rollout.group_state: %s" % exc)
            value = status if full else status.get("state")
            if expression is not None:
                try:
                    value = expression.search(to_plain(value))
                except jmespath.exceptions.JMESPathError as exc:
                    raise AnsibleError("quorum.rollout.group_state: query %r failed on the answer of %s: %s"
                                       % (self.get_option("query"), url, exc))
            results.append(value)
        return results

    @staticmethod
    def _compile(query):
        if not query:
            return None
        if jmespath is None:
            raise AnsibleError(
                "quorum.rollout.group_state: the query option needs the jmespath Python library on the controller "
                "(pip install jmespath, in the Python that runs ansible)"
            )
        try:
            return jmespath.compile(to_plain(query))
        except jmespath.exceptions.JMESPathError as exc:
            raise AnsibleError("quorum.rollout.group_state: invalid JMESPath query %r: %s" % (to_plain(query), exc))
