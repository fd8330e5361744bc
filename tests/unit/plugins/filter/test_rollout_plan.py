# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rollout_plan filter, loaded by its FQCN: the wave planner's plan, or its error as one line."""

from __future__ import annotations

import json
import os

import yaml

from ansible.plugins.loader import filter_loader

from ansible_collections.quorum.rollout.plugins.module_utils import waves as planner
from ansible_collections.quorum.rollout.plugins.module_utils.waves import plan

GROUPS = ["intel-eu1b", "amd-eu1a", "intel-eu1a", "amd-eu1b", "arm64-eu1a"]


def test_the_filter_plans_the_same_and_returns_the_error_for_bad_input():
    rollout_plan = filter_loader.get("quorum.rollout.rollout_plan").j2_function
    assert rollout_plan(GROUPS, [["amd-*"], ["*"]], 1) == dict(plan(GROUPS, [["amd-*"], ["*"]], 1), error=None)
    bad = rollout_plan(GROUPS, None, 0)
    assert list(bad) == ["error"] and bad["error"].startswith("rollout_max_parallel_groups must be a whole number")


def test_the_documented_example_is_what_the_filter_returns():
    doc_file = os.path.join(os.path.dirname(planner.__file__), "..", "filter", "rollout_plan.yml")
    with open(doc_file) as handle:
        doc = yaml.safe_load(handle)  # also: the sidecar parses (ansible-doc reads it)
    comment, call = doc["EXAMPLES"].strip().rsplit("\n", 1)
    documented = json.loads(" ".join(line.lstrip("# ") for line in comment.splitlines()))
    assert call == "{{ ['amd-eu1a', 'amd-eu1b', 'intel-eu1a'] | quorum.rollout.rollout_plan([['amd-*'], ['*']], 1) }}"
    rollout_plan = filter_loader.get("quorum.rollout.rollout_plan").j2_function
    assert rollout_plan(["amd-eu1a", "amd-eu1b", "intel-eu1a"], [["amd-*"], ["*"]], 1) == documented
