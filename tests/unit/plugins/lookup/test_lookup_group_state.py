# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The quorum.rollout.group_state lookup against a real local HTTP server.

The server (tests/unit/plugins/fake_agent.py) stands in for the agent's HTTP API; the
real agent is exercised by the integration and e2e suites. The last tests template
through ansible-core's Templar, so values arrive as ansible-core 2.19 tagged / lazy
types, as in a playbook.
"""

from __future__ import annotations

import pytest

from ansible.errors import AnsibleError
from ansible.plugins.loader import lookup_loader

from ansible_collections.quorum.rollout.plugins.lookup import group_state
from ansible_collections.quorum.rollout.tests.unit.plugins.fake_agent import FakeAgent


@pytest.fixture
def lookup():
    return lookup_loader.get("quorum.rollout.group_state")


def test_returns_the_group_state(lookup, agent, clean_env):
    [state] = lookup.run([agent.url], api_token=agent.token)
    assert state["group"] == "intel-eu1a"
    assert state["current_version"] == "2.3"
    assert "node" not in state


def test_full_returns_the_whole_status(lookup, agent, clean_env):
    [status] = lookup.run([agent.url], api_token=agent.token, full=True)
    assert status["node"]["id"] == "h1"
    assert status["state"]["group"] == "intel-eu1a"


def test_query_each_url(lookup, clean_env):
    with FakeAgent(group="intel-eu1a") as one, FakeAgent(group="amd-z1", current_version="2.2") as two:
        two.token = one.token
        two.group.start("2.3", False)
        result = lookup.run([[one.url], two.url], api_token=one.token, query="[group, current_version, release.state]")
    assert result == [["intel-eu1a", "2.3", None], ["amd-z1", "2.2", "downloaded_in_leader"]]


def test_query_functions_see_plain_types(lookup, agent, clean_env):
    agent.group.start("2.4", False)
    assert lookup.run([agent.url], api_token=agent.token,
                      query="length(release.members)") == [3]
    assert lookup.run([agent.url], api_token=agent.token,
                      query="release.hosts.*.status | sort(@) | [0]") == ["pending"]


def test_url_and_token_from_options_and_environment(lookup, agent, token_file, clean_env):
    assert lookup.run([], api_url=agent.url, api_token_file=token_file, query="group") == ["intel-eu1a"]
    clean_env.setenv("QUORUM_ROLLOUT_API_URL", agent.url)
    clean_env.setenv("QUORUM_ROLLOUT_API_TOKEN", agent.token)
    assert lookup.run([], query="group") == ["intel-eu1a"]


def test_options_from_variables_and_an_argument_wins(lookup, agent, token_file, clean_env):
    variables = {"quorum_rollout_api_url": agent.url, "quorum_rollout_api_token_file": token_file,
                 "quorum_rollout_api_ca_path": "", "quorum_rollout_api_timeout": 5}
    assert lookup.run([], variables=variables, query="group") == ["intel-eu1a"]
    # An argument wins over a variable; the token passed hides the configured token file.
    with pytest.raises(AnsibleError, match="401 from GET"):
        lookup.run([], variables=variables, api_token="wrong", query="group")
    assert lookup.run([], variables=variables, api_token=agent.token, query="group") == ["intel-eu1a"]
    with pytest.raises(AnsibleError, match="mutually exclusive"):
        lookup.run([], variables=dict(variables, quorum_rollout_api_token=agent.token), query="group")


def test_every_example_query_runs_against_an_agent(lookup, agent, clean_env):
    """Each JMESPath query of EXAMPLES compiles and runs against a group with a release under way."""
    import re

    agent.group.start("2.4", False)
    queries = re.findall(r"query=(?:'([^']*)'|\"([^\"]*)\")", group_state.EXAMPLES)
    queries = [single or double for single, double in queries]
    assert len(queries) >= 8, queries
    results = {}
    for query in queries:
        full = "node." in query or "members[" in query
        [results[query]] = lookup.run([agent.url], api_token=agent.token, query=query, full=full)
    assert results["[release.version, release.batch, length(release.batches)]"][0] == "2.4"
    assert results["{leader: node.leader, quorum: node.has_quorum}"] == {"leader": "h2", "quorum": True}
    assert results["members[?!reachable].id"] == []


def test_invalid_query(lookup, agent, clean_env):
    with pytest.raises(AnsibleError, match="invalid JMESPath query 'release.\\[': "):
        lookup.run([agent.url], api_token=agent.token, query="release.[")
    assert agent.requests == []


def test_missing_jmespath(lookup, agent, clean_env, monkeypatch):
    monkeypatch.setattr(group_state, "jmespath", None)
    with pytest.raises(AnsibleError, match="the query option needs the jmespath Python library"):
        lookup.run([agent.url], api_token=agent.token, query="group")
    assert lookup.run([agent.url], api_token=agent.token)[0]["group"] == "intel-eu1a"


def test_api_errors_become_ansible_errors(lookup, agent, clean_env):
    with pytest.raises(AnsibleError, match="quorum.rollout.group_state: 401 from GET .*check api_token"):
        lookup.run([agent.url], api_token="wrong")
    with pytest.raises(AnsibleError, match="api_url is not set"):
        lookup.run([], api_token="x")


def test_to_plain_strips_tags_and_lazy_containers():
    # pylint: disable=unidiomatic-typecheck  # exact types are the point
    from ansible._internal._datatag._tags import TrustedAsTemplate  # pylint: disable=import-error

    tagged = TrustedAsTemplate().tag("abc")
    assert type(tagged) is not str
    plain = group_state.to_plain({"a": [tagged, 1, 2.5, True, None], tagged: (tagged,)})
    assert plain == {"a": ["abc", 1, 2.5, True, None], "abc": ["abc"]}
    assert type(plain["a"][0]) is str
    assert type(list(plain)[1]) is str


def test_through_the_templar_as_in_a_playbook(agent, clean_env):
    """lookup()/query() from a template: options arrive as 2.19 tagged values."""
    from ansible.template import Templar
    from ansible._internal._datatag._tags import TrustedAsTemplate  # pylint: disable=import-error

    agent.group.start("2.4", False)
    variables = {"agent_urls": [agent.url], "token": agent.token, "q": "release.hosts.*.status"}
    templar = Templar(loader=None, variables=variables)
    template = TrustedAsTemplate().tag(
        "{{ query('quorum.rollout.group_state', agent_urls, api_token=token, query=q) }}")
    assert templar.template(template) == [["pending", "pending", "pending"]]
    template = TrustedAsTemplate().tag(
        "{{ lookup('quorum.rollout.group_state', agent_urls[0], api_token=token, query='length(release.members)') }}")
    assert templar.template(template) == 3
