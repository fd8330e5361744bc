# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""quorum.rollout.group_info, run in-process against a real local HTTP server.

The server (tests/unit/plugins/fake_agent.py) stands in for the agent's HTTP API; the
real agent is exercised by the integration and e2e suites.
"""

from __future__ import annotations

import re

import yaml

from ansible_collections.quorum.rollout.plugins.module_utils import contract
from ansible_collections.quorum.rollout.plugins.modules import group_info


def test_returns_node_and_group_state(run_module, agent):
    agent.group.start("2.4", False)
    result = run_module(group_info.main, {"api_url": agent.url, "api_token": agent.token})
    assert result["changed"] is False
    assert result["group"] == "intel-eu1a"
    assert result["node"]["role"] == "follower"
    assert result["node"]["leader"] == "h2"
    assert result["state"]["current_version"] == "2.3"
    assert result["release"]["version"] == "2.4"
    assert "events" not in result
    assert agent.posts() == []


def test_check_mode_reads_the_same(run_module, agent):
    result = run_module(group_info.main, {"api_url": agent.url, "api_token": agent.token}, check_mode=True)
    assert result["changed"] is False
    assert result["state"]["release"] is None
    assert result["release"] is None


def test_events(run_module, agent):
    agent.group.start("2.4", False)
    result = run_module(group_info.main, {"api_url": agent.url, "api_token": agent.token, "events": True})
    assert [e["op"] for e in result["events"]][:2] == ["lead", "start"]


def test_401(run_module, agent):
    result = run_module(group_info.main, {"api_url": agent.url, "api_token": "not-the-token-at-all"})
    assert result["failed"] is True
    assert result["msg"].endswith("/v1/status: bad API token (check api_token / api_token_file)")


def test_token_file_and_token_are_exclusive(run_module, agent, token_file):
    result = run_module(group_info.main, {"api_url": agent.url, "api_token": agent.token,
                                          "api_token_file": token_file})
    assert result["failed"] is True
    assert "mutually exclusive" in result["msg"]


def test_documented_release_states_are_the_agents():
    text = yaml.safe_load(group_info.RETURN)["release"]["description"][1].split(";")[0]
    assert re.findall(r"V\(([a-z_]+)\)", text) == list(contract.STATES)
