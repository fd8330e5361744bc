# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument_errors filter (documented in argument_errors.yml)."""

from __future__ import annotations

import json
import re

# The variable an error message of ansible.builtin.validate_argument_spec is about.
_NAME = (re.compile(r"^argument '([^']+)'"), re.compile(r"option '([^']+)'"), re.compile(r"^value of (\S+) must be one of"))
# The checks that message repeats, which the line says in its own words (the type, the choices).
_SAID = (re.compile(r"^argument '[^']+' is of type"), re.compile(r"^value of \S+ must be one of"))
# The Python class of the value, which says nothing to a user.
_CLASS_NOISE = re.compile(r":\s*<class '[^']*'>.*$", re.DOTALL)
_ARTICLE = {"int": "an integer", "float": "a float", "bool": "a boolean (true or false)", "str": "a string",
            "path": "a path", "list": "a list", "dict": "a mapping", "raw": "any value"}
_MISSING = object()


def _expected(option):
    kind = option.get("type", "str")
    text = _ARTICLE.get(kind, kind)
    if kind == "list" and option.get("elements"):
        text = "a list of %s" % option["elements"]
    if option.get("choices"):
        text += ", one of %s" % ", ".join(json.dumps(c) for c in option["choices"])
    return text


def _shown(value):
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name_of(error):
    for pattern in _NAME:
        found = pattern.search(error)
        if found:
            return found.group(1)
    return None


def _lines(errors, options, variables):
    """The errors of one host, one line per variable."""
    details = {}
    for error in errors:
        name = _name_of(error)
        details.setdefault(name, [])
        if name is None or not any(p.search(error) for p in _SAID):
            detail = _CLASS_NOISE.sub("", error)
            details[name].append(detail if len(detail) <= 160 else detail[:157] + "...")
    lines = []
    for name in sorted(details, key=lambda n: (n is None, n or "")):
        option = options.get(name) if name is not None else None
        if not isinstance(option, dict):
            lines.extend(details[name])
            continue
        try:
            value = variables[name]
        except (KeyError, TypeError):
            value = _MISSING
        line = "%s must be %s" % (name, _expected(option))
        if value is not _MISSING:
            line += ", got %s" % _shown(value)
        if details[name]:
            line += " (%s)" % "; ".join(details[name])
        default = option.get("default")
        if default not in (None, "", [], {}):
            line += "; for example %s=%s, the default" % (name, _shown(default))
        lines.append(line)
    return lines


def argument_errors(hosts, options, result, total=None):
    """One line per bad variable, naming the hosts it is bad on, from each host's registered result of
    ansible.builtin.validate_argument_spec. `hosts` maps a host name to its variables (hostvars), `result`
    is the name of the registered result, `options` the entry point's options and `total` the number of
    hosts in the play ("on all N hosts")."""
    on = {}
    for host in hosts:
        variables = hosts[host]
        errors = (variables.get(result) or {}).get("argument_errors") or []
        for line in _lines(errors, options, variables):
            on.setdefault(line, []).append(host)
    out = []
    for line in sorted(on):
        names = on[line]
        if total is not None and len(names) == total > 1:
            where = "all %d hosts" % total
        else:
            where = ", ".join(names[:5]) + (" and %d more" % (len(names) - 5) if len(names) > 5 else "")
        out.append("%s (on %s)." % (line, where))
    return out


class FilterModule:
    def filters(self):
        return {"argument_errors": argument_errors}
