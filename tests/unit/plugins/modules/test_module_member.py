# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""quorum.rollout.member, run in-process against a real local HTTP server whose group state is
changed by the agent's own state machine (tests/unit/plugins/fake_agent.py); the real agents'
membership changes are exercised by tests/integration/test_membership.py and tests/e2e."""

from __future__ import annotations

from ansible_collections.quorum.rollout.plugins.modules import member

NEW = {"id": "h4", "address": "10.0.0.4:7100", "member_api_url": "http://10.0.0.4:7200"}


def args(agent, **kw):
    return dict({"api_url": agent.url, "api_token": agent.token, "wait_sleep": 0.01}, **kw)


def test_adds_a_member_and_waits_until_it_joined(run_module, agent):
    result = run_module(member.main, args(agent, **NEW))
    assert result["changed"] is True and result["member"]["status"] == "active"
    assert result["msg"] == "group intel-eu1a: h4 active"
    assert sorted(m["id"] for m in result["members"]) == ["h1", "h2", "h3", "h4"]
    again = run_module(member.main, args(agent, **NEW))
    assert again["changed"] is False, "the same member again changes nothing"
    assert agent.posts().count("/v1/members") == 1


def test_check_mode_predicts_and_sends_nothing(run_module, agent):
    result = run_module(member.main, args(agent, **NEW), check_mode=True)
    assert result["changed"] is True and result["msg"] == "group intel-eu1a: would add h4"
    assert agent.posts() == []


def test_a_member_with_another_address_is_refused(run_module, agent):
    result = run_module(member.main, args(agent, id="h1", address="10.9.9.9:7100", member_api_url="http://x:1"))
    assert result["failed"] is True and "remove it first" in result["msg"]


def test_removes_a_member_and_waits_until_it_is_gone(run_module, agent):
    result = run_module(member.main, args(agent, id="h3", state="absent"))
    assert result["changed"] is True and result["member"] is None
    assert [m["id"] for m in result["members"]] == ["h1", "h2"]
    assert run_module(member.main, args(agent, id="h3", state="absent"))["changed"] is False


def test_a_change_during_a_release_fails_with_the_agents_reason(run_module, agent):
    agent.group.frozen = True
    agent.group.start("2.4", False)
    result = run_module(member.main, args(agent, **NEW))
    assert result["failed"] is True
    assert "cannot add h4" in result["msg"] and "membership changes wait until it ends" in result["msg"]


def test_state_present_needs_the_address(run_module, agent):
    result = run_module(member.main, args(agent, id="h4"))
    assert result["failed"] is True and "address" in result["msg"]
