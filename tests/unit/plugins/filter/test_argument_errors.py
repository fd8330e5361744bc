# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The argument_errors filter, loaded by its FQCN, on what ansible.builtin.validate_argument_spec really
returns for the agent role's argument spec."""

from __future__ import annotations

import os

import yaml

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.loader import filter_loader

from ansible_collections.quorum.rollout.plugins.filter import argument_errors as module

SPEC = os.path.join(os.path.dirname(module.__file__), "..", "..", "roles", "agent", "meta", "argument_specs.yml")
with open(SPEC) as handle:
    OPTIONS = yaml.safe_load(handle)["argument_specs"]["main"]["options"]


def host(values, options=None):
    """A host's variables with the registered result of validating them, as the role's first task makes it."""
    options = OPTIONS if options is None else options
    errors = ArgumentSpecValidator(options).validate(values, validate_role_argument_spec=True).error_messages
    return dict(values, result={"argument_errors": errors} if errors else {})


def lines(hosts, options=None, total=None):
    return filter_loader.get("quorum.rollout.argument_errors").j2_function(
        hosts, OPTIONS if options is None else options, "result", total)


def test_a_value_of_the_wrong_type_names_the_variable_the_type_an_example_and_the_hosts():
    bad = host({"quorum_rollout_batch_fraction": "half", "quorum_rollout_canary": "maybe"})
    port = host({"quorum_rollout_api_port": "http"})
    assert lines({"h1": bad, "h2": bad, "h3": port, "h4": host({})}, total=4) == [
        'quorum_rollout_api_port must be an integer, got "http"; for example quorum_rollout_api_port=7200, '
        "the default (on h3).",
        'quorum_rollout_batch_fraction must be a float, got "half"; for example quorum_rollout_batch_fraction=0.1, '
        "the default (on h1, h2).",
        'quorum_rollout_canary must be a boolean (true or false), got "maybe"; for example quorum_rollout_canary=false, '
        "the default (on h1, h2).",
    ]
    assert lines({"h%d" % i: bad for i in range(3)}, total=3)[0].endswith("(on all 3 hosts).")
    assert lines({"h%d" % i: bad for i in range(8)}, total=9)[0].endswith("(on h0, h1, h2, h3, h4 and 3 more).")


def test_values_that_convert_pass():
    good = host({"quorum_rollout_batch_fraction": "0.25", "quorum_rollout_api_port": "7201",
                 "quorum_rollout_canary": "yes", "quorum_rollout_zone": "z1"})
    assert good["result"] == {} and lines({"h1": good}) == []


def test_list_elements_and_choices_keep_the_detail_without_python_class_names():
    options = {"kinds": {"type": "list", "elements": "dict", "description": "x"},
               "mode": {"type": "str", "choices": ["a", "b"]}}
    [kinds, mode] = lines({"h1": host({"kinds": [5], "mode": "c"}, options)}, options)
    assert kinds.startswith("kinds must be a list of dict, got [5] (Elements value for option 'kinds' is of type int")
    assert "<class" not in kinds
    assert mode == 'mode must be a string, one of "a", "b", got "c" (on h1).'
    [long_value] = lines({"h1": host({"mode": "x" * 200}, options)}, options)
    assert 'got "xxxxx' in long_value and len(long_value) < 200
