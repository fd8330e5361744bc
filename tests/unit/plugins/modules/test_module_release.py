# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""quorum.rollout.release, run in-process against a real local HTTP server.

The server (tests/unit/plugins/fake_agent.py) stands in for the agent's HTTP API, its group
state changed by the agent's own state machine (fsm.apply), one step per status read; the real
agent is exercised by the integration and e2e suites.
"""

from __future__ import annotations

import re

import pytest
import yaml

from ansible_collections.quorum.rollout.plugins.module_utils import contract
from ansible_collections.quorum.rollout.plugins.modules import release


@pytest.fixture
def run(run_module, agent):
    def _run(check_mode=False, **args):
        base = {"api_url": agent.url, "api_token": agent.token, "wait_sleep": 0.01, "wait_timeout": 30}
        base.update(args)
        return run_module(release.main, base, check_mode=check_mode)

    return _run


def test_start_waits_until_current(run, agent):
    result = run(version="2.4")
    assert result["changed"] is True
    assert not result.get("failed")
    assert result["group"] == "intel-eu1a"
    assert result["version"] == "2.4"
    assert result["state"] == "current"
    assert result["current_version"] == "2.4"
    assert result["release"]["hosts"]["h3"]["status"] == "updated"
    assert result["msg"] == "group intel-eu1a: release 2.4 current"
    assert agent.posts() == ["/v1/releases"]


def test_start_is_idempotent(run, agent):
    run(version="2.4")
    again = run(version="2.4")
    assert again["changed"] is False
    assert again["state"] == "current"
    # The group's version is current: nothing is started, nothing is waited for.
    assert agent.group.release["attempt"] == 1


def test_start_of_the_version_in_progress_is_unchanged_and_waits(run, agent):
    run(version="2.4", wait=False)
    result = run(version="2.4")
    assert result["changed"] is False
    assert result["state"] == "current"


def test_start_without_wait_returns_at_once(run, agent):
    result = run(version="2.4", wait=False)
    assert result["changed"] is True
    assert result["state"] == "running_old_release"
    assert result["current_version"] == "2.3"


def test_check_mode_predicts_without_posting(run, agent):
    result = run(version="2.4", check_mode=True)
    assert result["changed"] is True
    assert result["msg"] == "group intel-eu1a: would start release 2.4 (now: no release, current version 2.3)"
    assert agent.posts() == []
    assert agent.group.release is None


def test_check_mode_of_the_current_version_is_unchanged(run, agent):
    result = run(version="2.3", check_mode=True)
    assert result["changed"] is False
    assert result["state"] == "current"
    assert agent.posts() == []


def test_check_mode_predicts_the_conflict(run, agent):
    run(version="2.4", wait=False)
    result = run(version="2.5", check_mode=True)
    assert result["failed"] is True
    assert "cannot start release 2.5: release 2.4 is in progress" in result["msg"]
    assert agent.posts() == ["/v1/releases"]


def test_check_mode_knows_a_pre_release_is_lower_than_its_release(run, agent):
    # The group ran 2.3: the agent refuses 2.3-rc1 (a pre-release of it) as a downgrade.
    result = run(version="2.3-rc1", check_mode=True)
    assert result["failed"] is True
    assert result["msg"] == (
        "group intel-eu1a: cannot start release 2.3-rc1: it is lower than 2.3, the highest version the group ran "
        "(rollback protection). Set allow_downgrade=true to go back on purpose")
    assert run(version="2.4-rc1", check_mode=True)["changed"] is True
    assert agent.posts() == []


def test_check_mode_ignores_build_metadata_in_the_order(run, agent):
    agent.group.highest_version = "2.4+b2"
    assert run(version="2.4", check_mode=True)["changed"] is True  # not lower than 2.4+b2: the same version
    assert run(version="2.4+b1", check_mode=True)["changed"] is True
    assert run(version="2.4-rc1+b3", check_mode=True)["failed"] is True
    assert agent.posts() == []


def test_check_mode_refuses_what_is_not_a_version(run, agent):
    result = run(version="2.4 beta", check_mode=True)
    assert result["failed"] is True
    assert result["msg"] == "group intel-eu1a: cannot start release 2.4 beta: it is not a valid version string"
    assert agent.posts() == []


def _bring(group, target):
    """Drive the fake group's release of 2.4 to `target` with the agent's own commands, then freeze it."""
    if target is None:
        return
    if target in (contract.ROLLING_BACK, contract.ROLLED_BACK):
        group.fail = ("h3", "preflight:health", "down")
    group.start("2.4", False)
    for dummy in range(20):
        state = group.release["state"]
        if state == target:
            break
        if target in (contract.PAUSED, contract.ABORTED) and state == contract.DOWNLOADED:
            group.action(release.ACTION_OF_STATE[target])
        else:
            group.tick()
    assert group.release["state"] == target
    group.frozen = True


def _outcome(result):
    return bool(result.get("changed")), bool(result.get("failed"))


@pytest.mark.parametrize("target", contract.STATES)
@pytest.mark.parametrize("action", ["paused", "resumed", "aborted", "retried"])
def test_check_mode_predicts_what_the_agent_does_with_an_action(run, agent, target, action):
    _bring(agent.group, target)
    predicted = run(state=action, check_mode=True, wait=False)
    assert not [path for path in agent.posts() if path.startswith("/v1/releases/current/")]
    assert _outcome(predicted) == _outcome(run(state=action, wait=False)), predicted["msg"]


@pytest.mark.parametrize("target", [None] + list(contract.STATES))
@pytest.mark.parametrize("version", ["2.4", "2.5", "2.3", "2.2", "2.3-rc1", "2.4-rc1", "2.3+b2", "2.4+b2", "2.4 beta"])
@pytest.mark.parametrize("allow_downgrade", [False, True])
def test_check_mode_predicts_what_the_agent_does_with_a_start(run, agent, target, version, allow_downgrade):
    _bring(agent.group, target)
    predicted = run(version=version, allow_downgrade=allow_downgrade, check_mode=True, wait=False)
    done = run(version=version, allow_downgrade=allow_downgrade, wait=False)
    assert _outcome(predicted) == _outcome(done), (predicted["msg"], done["msg"])


def _states_named(text):
    return re.findall(r"V\(([a-z_]+)\)", text)


def test_documented_states_are_the_agents():
    returned = yaml.safe_load(release.RETURN)["state"]["description"][0]
    assert _states_named(returned) == list(contract.STATES)
    wait = yaml.safe_load(release.DOCUMENTATION)["options"]["wait"]["description"][1]
    assert _states_named(wait.split("terminal state")[1].split(";")[0]) == list(release.ENDED)
    assert set(release.ENDED) == contract.TERMINAL


def test_409_when_another_release_is_in_progress(run, agent):
    run(version="2.4", wait=False)
    result = run(version="2.5")
    assert result["failed"] is True
    assert result["msg"].startswith(
        "group intel-eu1a: cannot start release 2.5: release 2.4 is in progress (state ")
    assert result["msg"].endswith("Wait for it to end, or run state=aborted first")
    assert result["release"]["version"] == "2.4"


def test_401_tells_which_options_to_check(run, agent):
    result = run(version="2.4", api_token="wrong-token-of-some-length")
    assert result["failed"] is True
    assert result["msg"] == "401 from GET %s/v1/status: bad API token (check api_token / api_token_file)" % agent.url
    assert result["status"] == 401


def test_token_from_file_and_url_from_environment(run_module, agent, token_file, monkeypatch):
    monkeypatch.setenv("QUORUM_ROLLOUT_API_URL", agent.url)
    result = run_module(release.main, {"api_token_file": token_file, "version": "2.4", "wait": False})
    assert result["changed"] is True
    assert agent.token not in str(result)


def test_missing_token_is_a_clear_error(run_module, agent):
    result = run_module(release.main, {"api_url": agent.url, "version": "2.4"})
    assert result["failed"] is True
    assert result["msg"].startswith("no API token: set api_token or api_token_file")
    assert agent.requests == []


def test_version_is_required_to_start(run_module, agent):
    result = run_module(release.main, {"api_url": agent.url, "api_token": agent.token})
    assert result["failed"] is True
    assert "state is started but all of the following are missing: version" in result["msg"]


def test_rolled_back_release_fails_with_host_step_and_reason(run, agent):
    agent.group.group = "amd-z1"
    agent.group.fail = ("h2", "preflight:health", "GET http://127.0.0.1:8080/health answered 500")
    result = run(version="2.5")
    assert result["failed"] is True
    assert result["msg"] == (
        "group amd-z1: release 2.5 rolled_back: host h2 failed at preflight:health: "
        "GET http://127.0.0.1:8080/health answered 500. Run state=retried after fixing, or state=aborted"
    )
    assert result["state"] == "rolled_back"
    assert result["release"]["hosts"]["h1"]["status"] == "reverted"
    assert result["current_version"] == "2.3"


def test_retry_after_fixing_reaches_current(run, agent):
    agent.group.fail = ("h3", "preflight:health", "down")
    assert run(version="2.5")["failed"] is True
    agent.group.fail = None
    assert run(version="2.5", state="retried", check_mode=True)["changed"] is True
    started = run(version="2.5", state="retried", wait=False)
    assert started["changed"] is True
    assert started["release"]["attempt"] == 2
    # A retry of a release that is running again changes nothing, in check mode or not.
    assert run(state="retried", wait=False, check_mode=True)["changed"] is False
    result = run(state="retried")
    assert result["changed"] is False
    assert result["state"] == "current"
    assert result["release"]["attempt"] == 2
    # Once current, a retry (or resume) is a no-op, not an error.
    assert run(state="retried")["changed"] is False
    assert run(state="resumed", check_mode=True)["changed"] is False
    assert agent.posts() == ["/v1/releases", "/v1/releases/current/retry"]


def test_downgrade_needs_allow_downgrade(run, agent):
    check = run(version="2.2", check_mode=True)
    assert check["failed"] is True
    assert check["msg"] == (
        "group intel-eu1a: cannot start release 2.2: it is lower than 2.3, the highest version the group ran "
        "(rollback protection). Set allow_downgrade=true to go back on purpose")
    real = run(version="2.2")
    assert real["failed"] is True
    assert real["msg"].startswith("group intel-eu1a: cannot start release 2.2: version 2.2 is lower than 2.3")
    assert run(version="2.2", allow_downgrade=True, check_mode=True)["changed"] is True
    result = run(version="2.2", allow_downgrade=True)
    assert result["changed"] is True
    assert result["state"] == "current"
    assert result["current_version"] == "2.2"


def test_timeout_returns_the_partial_state(run, agent):
    run(version="2.4", wait=False)
    agent.group.frozen = True
    result = run(version="2.4", wait_timeout=1, wait_sleep=0.1)
    assert result["failed"] is True
    assert result["msg"] == (
        "group intel-eu1a: timed out after 1s waiting for release 2.4 to end (current, rolled_back or aborted); "
        "last seen: group intel-eu1a: release 2.4 running_old_release"
    )
    assert result["state"] == "running_old_release"
    assert result["release"]["version"] == "2.4"


def test_waiting_rides_out_503_answers(run, agent, monkeypatch):
    run(version="2.4", wait=False)
    original, reads = agent.group.tick, []

    def tick():
        # On the third status read, the next three requests get 503 (e.g. a leader election).
        reads.append(1)
        if len(reads) == 3:
            agent.group.unavailable = 3
        original()

    monkeypatch.setattr(agent.group, "tick", tick)
    result = run(version="2.4")
    assert result["state"] == "current"
    assert agent.group.unavailable == 0
    assert len(reads) > 3


def test_pause_resume_abort_are_idempotent(run, agent):
    run(version="2.4", wait=False)
    paused = run(state="paused")
    assert paused["changed"] is True
    assert paused["state"] == "paused"
    assert paused["version"] == "2.4"
    assert run(state="paused")["changed"] is False
    assert run(state="paused", check_mode=True)["changed"] is False
    assert run(state="resumed", check_mode=True)["changed"] is True
    resumed = run(state="resumed", wait=False)
    assert resumed["changed"] is True
    assert resumed["state"] != "paused"
    assert run(state="resumed", wait=False)["changed"] is False
    aborted = run(state="aborted")
    assert aborted["changed"] is True
    assert aborted["state"] == "aborted"
    assert run(state="aborted")["changed"] is False
    assert run(state="aborted", check_mode=True)["changed"] is False


def test_resume_waits_until_current(run, agent):
    run(version="2.4", wait=False)
    run(state="paused")
    result = run(state="resumed", version="2.4")
    assert result["changed"] is True
    assert result["state"] == "current"


def test_action_refused_in_this_state(run, agent):
    run(version="2.4")
    result = run(state="paused")
    assert result["failed"] is True
    assert result["msg"] == "group intel-eu1a: cannot pause release 2.4 in state current [agent: cannot pause a " \
                            "release in state current]; it has ended"
    check = run(state="paused", check_mode=True)
    assert check["failed"] is True
    assert check["msg"] == "group intel-eu1a: cannot pause release 2.4 in state current; it has ended"


def test_action_without_release(run, agent):
    result = run(state="aborted")
    assert result["failed"] is True
    assert result["msg"] == "group intel-eu1a has no release to abort"
    assert agent.posts() == []


def test_action_on_another_version_is_refused(run, agent):
    run(version="2.4", wait=False)
    result = run(state="aborted", version="2.5")
    assert result["failed"] is True
    assert result["msg"] == "group intel-eu1a: the current release is 2.4, not 2.5; nothing done"
    assert agent.posts() == ["/v1/releases"]


def test_aborted_while_waiting_fails(run, agent, monkeypatch):
    original, reads = agent.group.tick, []

    def tick():
        # Someone aborts the release while the module waits for it.
        reads.append(1)
        if len(reads) == 3:
            agent.group.action("abort")
        original()

    monkeypatch.setattr(agent.group, "tick", tick)
    result = run(version="2.4")
    assert result["failed"] is True
    assert result["msg"] == (
        "group intel-eu1a: release 2.4 is aborted, not current as asked (group intel-eu1a: release 2.4 aborted)")


def test_agent_unreachable(run_module):
    result = run_module(release.main, {"api_url": "http://127.0.0.1:9", "api_token": "some-token", "version": "2.4",
                                       "timeout": 2})
    assert result["failed"] is True
    assert result["msg"].startswith("cannot reach GET http://127.0.0.1:9/v1/status: ")
