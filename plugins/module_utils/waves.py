# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The order in which release.yml starts groups: waves of group-name patterns, and at most N groups at once.

Pure: groups + ``rollout_waves`` + ``rollout_max_parallel_groups`` in, a plan (or a WavePlanError that names
the variable and the fix) out. No I/O; the playbook (through the ``quorum.rollout.rollout_plan`` filter)
does the starting and waiting.

* ``rollout_waves`` is a list of waves, each a list of group-name glob patterns (``fnmatch``, case
  sensitive). A group belongs to the first wave with a pattern that matches it. The pattern ``*`` alone
  means "every group no other pattern matches", wherever it stands. Without ``*`` every group must be
  matched; a pattern that takes no group (it matches none, or only groups of earlier waves) is an error,
  since it is almost always a typo.
* ``rollout_max_parallel_groups`` (N >= 1) splits each wave into steps of at most N groups, in name order.
* The plan is a list of steps run one after the other: a step starts only when every group of the steps
  before it ended ``current``.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

REST = "*"
WAVES_VAR = "rollout_waves"
PARALLEL_VAR = "rollout_max_parallel_groups"
WAVES_EXAMPLE = """-e '%s=[["amd-*"],["*"]]'""" % WAVES_VAR
_NOT_JSON = object()


class WavePlanError(ValueError):
    """A bad rollout_waves / rollout_max_parallel_groups; the message names the variable and the fix."""


def _load_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def parse_waves(value):
    """``rollout_waves`` as given (a list, a JSON string from ``-e key=value``, or empty) -> a list of lists of
    patterns, or None when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text, value = value, _load_json(value)
        if value is _NOT_JSON:
            raise WavePlanError("%s must be a list of lists of group-name patterns in JSON, for example %s (got %r; "
                                "-e key=value ends the value at the first space: write it without spaces, or "
                                "as -e '{\"%s\": [[\"amd-*\"], [\"*\"]]}')" % (WAVES_VAR, WAVES_EXAMPLE, text, WAVES_VAR))
    if not isinstance(value, (list, tuple)) or not value:
        raise WavePlanError("%s must be a non-empty list of waves, each a list of group-name patterns, for example "
                            "%s (got %r)" % (WAVES_VAR, WAVES_EXAMPLE, value))
    waves = []
    for number, wave in enumerate(value, 1):
        if not isinstance(wave, (list, tuple)) or not wave:
            raise WavePlanError("%s: wave %d must be a non-empty list of group-name patterns, for example "
                                "[\"amd-*\"] (got %r); %s" % (WAVES_VAR, number, wave, WAVES_EXAMPLE))
        for pattern in wave:
            if not isinstance(pattern, str) or not pattern.strip():
                raise WavePlanError("%s: wave %d has %r, which is not a group-name pattern (a non-empty string "
                                    "such as \"amd-*\")" % (WAVES_VAR, number, pattern))
        waves.append([pattern.strip() for pattern in wave])
    rest_waves = [number for number, wave in enumerate(waves, 1) if REST in wave]
    if len(rest_waves) > 1 or any(wave.count(REST) > 1 for wave in waves):
        raise WavePlanError("%s: \"*\" (the rest of the groups) may appear once, it appears in waves %s"
                            % (WAVES_VAR, ", ".join(str(n) for n in rest_waves)))
    return waves


def parse_max_parallel(value):
    """``rollout_max_parallel_groups`` as given -> an int >= 1, or None (no limit) when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number < 1:
        raise WavePlanError("%s must be a whole number of groups >= 1 (at most that many groups release at once), "
                            "got %r" % (PARALLEL_VAR, value))
    return number


def assign_waves(groups, waves):
    """Each group's wave: a list of lists of group names, in the order of `waves` (a wave left empty, which
    only a lone ``*`` with nothing left over can be, is dropped)."""
    taken = {}
    for number, wave in enumerate(waves, 1):
        for pattern in wave:
            if pattern == REST:
                continue
            matched = [g for g in groups if fnmatchcase(g, pattern)]
            new = [g for g in matched if g not in taken]
            if not new:
                why = ("only groups of earlier waves (%s)" % ", ".join(matched)) if matched else "no group"
                raise WavePlanError("%s: pattern %r of wave %d matches %s; the groups are: %s. Fix the pattern or "
                                    "leave it out" % (WAVES_VAR, pattern, number, why, ", ".join(groups) or "none"))
            for group in new:
                taken[group] = number
    rest = [g for g in groups if g not in taken]
    rest_wave = next((number for number, wave in enumerate(waves, 1) if REST in wave), None)
    if rest:
        if rest_wave is None:
            raise WavePlanError("%s puts these groups in no wave: %s. Add patterns for them, or \"*\" (the rest of "
                                "the groups) to a wave, for example %s"
                                % (WAVES_VAR, ", ".join(rest), WAVES_EXAMPLE))
        for group in rest:
            taken[group] = rest_wave
    assigned = [[g for g in groups if taken[g] == number] for number in range(1, len(waves) + 1)]
    return [wave for wave in assigned if wave]


def plan(groups, waves=None, max_parallel=None):
    """The release plan for `groups` (names): a dict with

    * ``waves``: the groups of each wave, in order (one wave of every group without `waves`);
    * ``steps``: ``{"wave": k, "groups": [...]}`` to run one after the other (each wave cut into steps of at
      most `max_parallel` groups);
    * ``wave_of``: each group's wave number (1-based).

    `waves` and `max_parallel` are taken as the playbook gets them (see parse_waves, parse_max_parallel)."""
    groups = sorted(set(groups))
    parsed = parse_waves(waves)
    size = parse_max_parallel(max_parallel)
    assigned = assign_waves(groups, parsed) if parsed is not None else ([groups] if groups else [])
    steps = []
    for number, wave in enumerate(assigned, 1):
        chunk = size or len(wave)
        steps.extend({"wave": number, "groups": wave[i:i + chunk]} for i in range(0, len(wave), chunk))
    wave_of = dict((g, number) for number, wave in enumerate(assigned, 1) for g in wave)
    return {"waves": assigned, "steps": steps, "wave_of": wave_of}
