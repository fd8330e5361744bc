# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The argument_errors filter (documented in argument_errors.yml)."""

from __future__ import annotations

import json
import re

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

# Keys of a role's argument_specs option that say nothing about the value (documentation only).
_DOC_KEYS = ("description", "version_added", "short_description", "seealso", "notes")
# ArgumentSpecValidator appends the Python class of the value, which says nothing to a user.
_CLASS_NOISE = re.compile(r":\s*<class '[^']*'>.*$", re.DOTALL)
_ARTICLE = {"int": "an integer", "float": "a float", "bool": "a boolean (true or false)", "str": "a string",
            "path": "a path", "list": "a list", "dict": "a mapping", "raw": "any value"}


def _validation_spec(option):
    """The option without its documentation keys (and those of its suboptions)."""
    spec = dict((k, v) for k, v in option.items() if k not in _DOC_KEYS)
    if isinstance(spec.get("options"), dict):
        spec["options"] = dict((name, _validation_spec(sub)) for name, sub in spec["options"].items())
    return spec


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


def argument_errors(values, options):
    """One short message per variable of `values` whose value does not fit its option in `options` (a role's
    argument_specs entry point options): 'NAME must be EXPECTED, got VALUE (for example NAME=DEFAULT)'.
    Variables `options` does not describe are left alone (the unknown_variables filter names those)."""
    errors = []
    for name in sorted(values):
        option = options.get(name)
        if not isinstance(option, dict):
            continue
        spec = _validation_spec(option)
        spec.pop("required", None)  # only values that are set are checked here
        result = ArgumentSpecValidator({name: spec}).validate({name: values[name]})
        if not result.error_messages:
            continue
        message = "%s must be %s, got %s" % (name, _expected(option), _shown(values[name]))
        # The type and the choices are said above; other details (list elements, suboptions) are kept, short.
        details = [_CLASS_NOISE.sub("", m) for m in result.error_messages
                   if not m.startswith(("argument '%s' is of type" % name, "value of %s must be one of" % name))]
        details = [d if len(d) <= 160 else d[:157] + "..." for d in details]
        if details:
            message += " (%s)" % "; ".join(details)
        default = option.get("default")
        if default not in (None, "", [], {}):
            message += "; for example %s=%s, the default" % (name, _shown(default))
        errors.append(message)
    return errors


class FilterModule:
    def filters(self):
        return {"argument_errors": argument_errors}
