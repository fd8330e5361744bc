# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""release.yml's wave planner (module_utils/waves.py); the rollout_plan filter that calls it is tested in
tests/unit/plugins/filter/test_rollout_plan.py (module_utils tests run without the controller's plugin loader)."""

from __future__ import annotations

import pytest

from ansible_collections.quorum.rollout.plugins.module_utils.waves import WavePlanError, plan

GROUPS = ["intel-eu1b", "amd-eu1a", "intel-eu1a", "amd-eu1b", "arm64-eu1a"]


def steps(result):
    return [(step["wave"], step["groups"]) for step in result["steps"]]


def test_without_waves_every_group_is_one_step_as_before():
    result = plan(GROUPS)
    assert result["waves"] == [sorted(GROUPS)]
    assert steps(result) == [(1, sorted(GROUPS))]
    assert set(result["wave_of"].values()) == {1}
    assert plan(GROUPS, "", "") == result and plan(GROUPS, None, None) == result


def test_a_group_goes_to_the_first_wave_that_matches_it_and_star_takes_the_rest():
    result = plan(GROUPS, [["amd-*"], ["intel-eu1a", "intel-*"], ["*"]])
    assert result["waves"] == [["amd-eu1a", "amd-eu1b"], ["intel-eu1a", "intel-eu1b"], ["arm64-eu1a"]]
    assert result["wave_of"] == {"amd-eu1a": 1, "amd-eu1b": 1, "intel-eu1a": 2, "intel-eu1b": 2, "arm64-eu1a": 3}


def test_star_is_the_rest_wherever_it_stands():
    """`*` first means "every group not named later" first, not "every group" (which would leave later waves empty)."""
    assert plan(GROUPS, [["*"], ["amd-*"]])["waves"] == [
        ["arm64-eu1a", "intel-eu1a", "intel-eu1b"], ["amd-eu1a", "amd-eu1b"]]
    # A star in a wave with patterns joins the rest to that wave.
    assert plan(GROUPS, [["intel-eu1a"], ["amd-*", "*"]])["waves"] == [
        ["intel-eu1a"], ["amd-eu1a", "amd-eu1b", "arm64-eu1a", "intel-eu1b"]]


def test_a_lone_star_with_nothing_left_adds_no_empty_wave():
    result = plan(["amd-eu1a", "intel-eu1a"], [["amd-*"], ["intel-*"], ["*"]])
    assert result["waves"] == [["amd-eu1a"], ["intel-eu1a"]]
    assert steps(result) == [(1, ["amd-eu1a"]), (2, ["intel-eu1a"])]


def test_max_parallel_cuts_each_wave_into_steps_in_name_order():
    result = plan(GROUPS, [["amd-*", "arm64-*"], ["*"]], 2)
    assert steps(result) == [(1, ["amd-eu1a", "amd-eu1b"]), (1, ["arm64-eu1a"]),
                             (2, ["intel-eu1a", "intel-eu1b"])]
    assert steps(plan(GROUPS, None, "1")) == [(1, [g]) for g in sorted(GROUPS)]
    assert steps(plan(GROUPS, None, 99)) == [(1, sorted(GROUPS))]


def test_waves_given_as_json_text_as_minus_e_key_value_passes_them():
    assert plan(GROUPS, '[["amd-*"], ["*"]]') == plan(GROUPS, [["amd-*"], ["*"]])


def test_waves_cut_at_a_space_by_minus_e_key_value_say_how_to_write_them():
    with pytest.raises(WavePlanError) as caught:
        plan(GROUPS, '[["amd-*"],')
    assert "-e key=value ends the value at the first space: write it without spaces, or as -e " \
           "'{\"rollout_waves\": [[\"amd-*\"], [\"*\"]]}'" in str(caught.value)


@pytest.mark.parametrize("waves, message", [
    ('[["amd-*"], ["*"]', "rollout_waves must be a list of lists of group-name patterns in JSON"),
    ("amd-*", "rollout_waves must be a list of lists of group-name patterns in JSON"),
    ({"amd": 1}, "rollout_waves must be a non-empty list of waves"),
    ([], "rollout_waves must be a non-empty list of waves"),
    ("[]", "rollout_waves must be a non-empty list of waves"),
    (["amd-*", "*"], "rollout_waves: wave 1 must be a non-empty list of group-name patterns"),
    ([["amd-*"], []], "rollout_waves: wave 2 must be a non-empty list"),
    ([["amd-*", 3]], "rollout_waves: wave 1 has 3, which is not a group-name pattern"),
    ([["amd-*"], [" "]], "rollout_waves: wave 2 has ' ', which is not a group-name pattern"),
    ([["*"], ["amd-*", "*"]], "\"*\" (the rest of the groups) may appear once, it appears in waves 1, 2"),
])
def test_bad_waves_are_refused_naming_the_variable(waves, message):
    with pytest.raises(WavePlanError) as caught:
        plan(GROUPS, waves)
    assert message in str(caught.value)


def test_a_pattern_that_matches_no_group_is_refused_with_the_groups_listed():
    with pytest.raises(WavePlanError) as caught:
        plan(GROUPS, [["amd-*"], ["armv7-*"], ["*"]])
    assert str(caught.value).startswith(
        "rollout_waves: pattern 'armv7-*' of wave 2 matches no group; the groups are: amd-eu1a, amd-eu1b, arm64-eu1a,")


def test_a_pattern_that_matches_only_groups_of_earlier_waves_is_refused():
    with pytest.raises(WavePlanError, match=r"pattern 'amd-eu1a' of wave 2 matches only groups of earlier waves "
                                            r"\(amd-eu1a\)"):
        plan(GROUPS, [["amd-*"], ["amd-eu1a"], ["*"]])


def test_groups_in_no_wave_without_a_star_are_named():
    with pytest.raises(WavePlanError) as caught:
        plan(GROUPS, [["amd-*"], ["intel-*"]])
    assert "rollout_waves puts these groups in no wave: arm64-eu1a. Add patterns for them, or \"*\"" in str(
        caught.value)


@pytest.mark.parametrize("value", [0, -1, "0", "two", 1.5, True, [2]])
def test_a_bad_max_parallel_is_refused_naming_the_variable(value):
    with pytest.raises(WavePlanError, match=r"^rollout_max_parallel_groups must be a whole number of groups >= 1"):
        plan(GROUPS, None, value)
