# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The unknown_variables filter (documented in unknown_variables.yml)."""

from __future__ import annotations

import difflib
import os


def unknown_variables(names, known):
    """Each name of `names` that is not in `known`, as "name (did you mean X?)" when one is close.
    Names are compared without the prefix all known names share (quorum_rollout_), which would
    make every name look close to every other."""
    known = sorted(set(known))
    cut = len(os.path.commonprefix(known)) if len(known) > 1 else 0
    by_rest = {k[cut:]: k for k in known}
    found = []
    for name in sorted(set(names) - set(known)):
        close = difflib.get_close_matches(name[cut:], list(by_rest), n=1, cutoff=0.8)
        found.append(f"{name} (did you mean {by_rest[close[0]]}?)" if close else name)
    return found


class FilterModule:
    def filters(self):
        return {"unknown_variables": unknown_variables}
