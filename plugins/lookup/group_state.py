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
  - The connection options can be set once instead of in every call, in the C([quorum_rollout]) section of
    C(ansible.cfg), in the environment, or as variables (in the inventory, C(group_vars), a play's C(vars)).
    An argument given to the lookup wins over a variable, a variable over the environment, the environment
    over C(ansible.cfg). A variable set to an empty string counts as not set, as in the agent role.
  - O(api_token) and O(api_token_file) are mutually exclusive. When one of them is passed to the lookup,
    the other one is not read from variables, the environment or C(ansible.cfg).
seealso:
  - module: quorum.rollout.group_info
  - module: quorum.rollout.release
"""

EXAMPLES = r"""
# Connection options set once, in ansible.cfg next to the playbooks:
#   [quorum_rollout]
#   api_token_file = ~/.quorum-rollout/api.token
#   ca_path = /etc/pki/quorum-rollout-ca.pem
# or as variables (group_vars/all.yml):
#   quorum_rollout_api_token: "{{ vault_quorum_rollout_token }}"
#   quorum_rollout_api_ca_path: /etc/pki/quorum-rollout-ca.pem

- name: Show the state of the group behind one agent
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200', api_token_file='secrets/api.token') }}"

- name: Current version of every group, one URL per group
  ansible.builtin.debug:
    msg: "{{ query('quorum.rollout.group_state', agent_urls, query='current_version') }}"
  vars:
    agent_urls: [http://10.0.0.5:7200, http://10.0.1.5:7200]

- name: State of the release under way (null when the group has had none)
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200', query='release.state') }}"

- name: Progress of the release, batch k of n
  ansible.builtin.debug:
    msg: >-
      {{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200',
                query='[release.version, release.batch, length(release.batches)]') }}

- name: Status of each host in the release under way
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200', query='release.hosts.*.status') }}"

- name: Hosts not updated yet in the release under way
  ansible.builtin.debug:
    msg: >-
      {{ lookup('quorum.rollout.group_state', 'http://10.0.0.5:7200', query='release.hosts') | dict2items
         | rejectattr('value.status', '==', 'updated') | map(attribute='key') }}

# URL and token from QUORUM_ROLLOUT_API_URL / QUORUM_ROLLOUT_API_TOKEN in the controller's environment
- name: Host, step and reason that made the group roll back
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', query='release.failure') }}"

- name: Which node leads the group, and does it have a quorum
  ansible.builtin.set_fact:
    __quorum_rollout_leader: >-
      {{ lookup('quorum.rollout.group_state', full=true, query='{leader: node.leader, quorum: node.has_quorum}',
                api_url='http://127.0.0.1:7200', api_token_file='/etc/quorum-rollout/api.token') }}

- name: Members the node cannot reach
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', full=true, query='members[?!reachable].id') }}"

- name: The group's last five transitions
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', query='history[-5:]') }}"

- name: Wait until the group runs 2.4
  ansible.builtin.assert:
    that: lookup('quorum.rollout.group_state', query='current_version') == '2.4'
  register: __quorum_rollout_current
  until: __quorum_rollout_current is success
  retries: 60
  delay: 10

- name: An agent with a self-signed certificate, in a test setup only
  ansible.builtin.debug:
    msg: "{{ lookup('quorum.rollout.group_state', 'https://127.0.0.1:7200', validate_certs=false) }}"
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


# api_token and api_token_file: one passed to the lookup hides the other one's configured value.
_EXCLUSIVE = {"api_token": "api_token_file", "api_token_file": "api_token"}


class _OptionVariables(Mapping):
    """The play's variables as the options see them: a variable is templated when an option reads it
    (lookups get them untemplated, e.g. ``quorum_rollout_api_ca_path: "{{ ca_dir }}/ca.pem"``), and one
    that is an empty string reads as not set (the agent role's convention: its defaults are "" for
    "not set"), so that ca_path="" does not become the current directory."""

    def __init__(self, variables, templar):
        self._variables = variables
        self._templar = templar

    def __getitem__(self, name):
        value = self._variables[name]
        if self._templar is not None:
            value = self._templar.template(value)
        if value is None or (isinstance(value, str) and not value):
            raise KeyError(name)
        return value

    def __iter__(self):
        return iter(self._variables)

    def __len__(self):
        return len(self._variables)


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=_OptionVariables(variables or {}, self._templar), direct=kwargs)
        hidden = set(_EXCLUSIVE[name] for name in _EXCLUSIVE
                     if kwargs.get(name) is not None and kwargs.get(_EXCLUSIVE[name]) is None)
        options = AgentApiOptions(lambda name: None if name in hidden else self.get_option(name))
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
