# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The argument_errors filter, loaded by its FQCN, against the agent role's real argument spec."""

from __future__ import annotations

import os

import yaml

from ansible.plugins.loader import filter_loader

from ansible_collections.quorum.rollout.plugins.filter import argument_errors as module

SPEC = os.path.join(os.path.dirname(module.__file__), "..", "..", "roles", "agent", "meta", "argument_specs.yml")
with open(SPEC) as handle:
    OPTIONS = yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def errors(values, options=None):
    return filter_loader.get("quorum.rollout.argument_errors").j2_function(values, OPTIONS if options is None else options)


def test_a_value_of_the_wrong_type_names_the_variable_the_type_and_an_example():
    assert errors({"quorum_rollout_batch_fraction": "half", "quorum_rollout_canary": "maybe"}) == [
        'quorum_rollout_batch_fraction must be a float, got "half"; for example quorum_rollout_batch_fraction=0.1, '
        "the default",
        'quorum_rollout_canary must be a boolean (true or false), got "maybe"; for example quorum_rollout_canary=false, '
        "the default",
    ]


def test_values_that_convert_and_unknown_names_pass():
    assert errors({"quorum_rollout_batch_fraction": "0.25", "quorum_rollout_api_port": "7201",
                   "quorum_rollout_canary": "yes", "quorum_rollout_zone": "z1", "quorum_rollout_nonsense": 1}) == []


def test_list_elements_and_choices_keep_the_detail_without_python_class_names():
    options = {"kinds": {"type": "list", "elements": "dict", "description": "x"},
               "mode": {"type": "str", "choices": ["a", "b"]}}
    [kinds, mode] = errors({"kinds": [5], "mode": "c"}, options)
    assert kinds.startswith("kinds must be a list of dict, got [5] (Elements value for option 'kinds' is of type int")
    assert "<class" not in kinds
    assert mode == 'mode must be a string, one of "a", "b", got "c"'
    long_value = errors({"mode": "x" * 200}, options)[0]
    assert 'got "xxxxx' in long_value and len(long_value) < 300
