"""The contract (agent/quorum_rollout/contract.py) against the state machine that applies it.

Every release state is built with real `fsm.apply` commands (test_fsm.Group.goto); then each
operator action and a range of starts are applied, and the outcome must be the one the
contract predicts, since the collection predicts check-mode results from the contract alone.
"""

from __future__ import annotations

import pytest
from test_fsm import Group, hosts

from quorum_rollout import contract, fsm

# Every release state; paused from each forward state.
SETUPS = ([(state, None) for state in contract.STATES if state != contract.PAUSED]
          + [(contract.PAUSED, frm) for frm in contract.FORWARD])


def group_in(state: str, paused_from: str | None = None) -> Group:
    g = Group()
    g.goto(paused_from or state)
    if paused_from:
        g.do("pause")
    assert g.release["state"] == state and g.release["paused_from"] == paused_from
    return g


def test_rules_name_only_states_and_no_state_twice():
    assert set(contract.ACTION_RULES) == set(contract.ACTIONS)
    for rules in contract.ACTION_RULES.values():
        assert set(rules) == {contract.ACCEPTED, contract.NOOP}
        assert set(rules[contract.ACCEPTED]) <= set(contract.STATES)
        assert set(rules[contract.NOOP]) <= set(contract.STATES)
        assert not set(rules[contract.ACCEPTED]) & set(rules[contract.NOOP])


def test_fsm_reexports_the_contract():
    for name in ("STATES", "TERMINAL", "FORWARD", "CURRENT", "PAUSED", "compare_versions", "valid_version"):
        assert getattr(fsm, name) is getattr(contract, name)
    assert set(contract.ACTIONS) <= set(fsm.OPS)


@pytest.mark.parametrize("state, paused_from", SETUPS)
@pytest.mark.parametrize("action", contract.ACTIONS)
def test_every_action_rule_holds_in_every_release_state(action, state, paused_from):
    g = group_in(state, paused_from)
    before = g.release["id"]
    outcome = g.do(action, expect=None, release=before)
    assert outcome.code == contract.action_outcome(action, state), outcome
    if outcome.code == "accepted":
        assert g.release["state"] != state or g.release["id"] != before  # a change the module reports
    else:
        assert g.release["state"] == state  # nothing changed


@pytest.mark.parametrize("action", contract.ACTIONS)
def test_actions_without_a_release(action):
    # As the contract's comment says: refused, as invalid except retry (a conflict).
    expected = "conflict" if action == contract.RETRY else "invalid"
    assert Group().do(action, expect=None).code == expected


@pytest.mark.parametrize("state, paused_from", SETUPS)
@pytest.mark.parametrize("allow_downgrade", [False, True])
@pytest.mark.parametrize("version", ["2.4", "2.5", "2.3", "2.2", "2.4-rc1", "2.3+b2", "2.10", "2.3.0"])
def test_start_refusal_holds_in_every_release_state(state, paused_from, version, allow_downgrade):
    """goto() leaves the group on 2.3 (highest 2.3), with the 2.4 release in `state`."""
    g = group_in(state, paused_from)
    predicted = contract.start_refusal(g.state, version, allow_downgrade)
    outcome = g.start(version, hosts(10), expect=None, allow_downgrade=allow_downgrade)
    assert (outcome.code, outcome.reason) == (predicted or ("accepted", ""))


def test_start_refusal_on_a_new_group():
    g = Group()
    assert contract.start_refusal(g.state, "1.0") is None
    g.start("1.0", hosts(3))
