# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rollout_plan filter (documented in rollout_plan.yml): release.yml's waves, planned by module_utils/waves.py."""

from __future__ import annotations

from ansible_collections.quorum.rollout.plugins.module_utils.waves import WavePlanError, plan


def rollout_plan(groups, waves=None, max_parallel=None):
    """The plan with ``error: null``, or only ``error`` (the message) for bad input: the playbook fails with that
    one line in an assert, not with a filter traceback-like chain of template errors."""
    try:
        return dict(plan(groups, waves, max_parallel), error=None)
    except WavePlanError as exc:
        return {"error": str(exc)}


class FilterModule:
    def filters(self):
        return {"rollout_plan": rollout_plan}
