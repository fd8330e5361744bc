"""The contract of a group's release state machine: what the agent and the collection both rely on.

One definition of

* the release states (`STATES`), those that end a release (`TERMINAL`) and those that go
  forward (`FORWARD`, the states a release can be paused in);
* the operator actions (`ACTIONS`) and what each does to a release in each state
  (`ACTION_RULES`, `action_outcome`);
* what starting a version does in a group's state (`start_refusal`);
* the version syntax (`valid_version`) and order (`compare_versions`).

`fsm.py` applies these rules and `cli.py` reads them. The collection's plugins cannot import the
agent package (modules run on hosts where it is not installed), so they use a copy,
`plugins/module_utils/contract.py`, written by `make contract`; a unit test fails while the copy
differs from this file. Hence this file is pure, imports only the standard library and keeps to
the syntax of the oldest Python that Ansible modules run on (3.8). Edit it here, run
`make contract`, commit both.
"""

from __future__ import annotations

import re

# Release states, in the order a release goes through them.
RUNNING_OLD = "running_old_release"
DOWNLOADED = "downloaded_in_leader"
VERIFIED = "verified"
ROLLING = "rolling"
CURRENT = "current"
ROLLING_BACK = "rolling_back"
ROLLED_BACK = "rolled_back"
PAUSED = "paused"
ABORTED = "aborted"

STATES = (RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING, CURRENT, ROLLING_BACK, ROLLED_BACK, PAUSED, ABORTED)
TERMINAL = frozenset({CURRENT, ROLLED_BACK, ABORTED})
FORWARD = (RUNNING_OLD, DOWNLOADED, VERIFIED, ROLLING)  # states a release can be paused in

# Outcome codes of a command (fsm.Outcome.code) and the HTTP status the API answers each with
# (an accepted action: 200, as nothing is created).
ACCEPTED = "accepted"
NOOP = "noop"
CONFLICT = "conflict"
INVALID = "invalid"
DUPLICATE = "duplicate"  # the operation id was applied before
HTTP_STATUS = {ACCEPTED: 201, NOOP: 200, DUPLICATE: 200, CONFLICT: 409, INVALID: 400}

# Operator actions on the group's latest release (POST /v1/releases/current/<action>).
PAUSE = "pause"
RESUME = "resume"
ABORT = "abort"
RETRY = "retry"
ACTIONS = (PAUSE, RESUME, ABORT, RETRY)

# What each action does to a release, by the release's state: ACCEPTED (the release changes) or
# NOOP (it already is as asked); in every other state the action is refused (CONFLICT). Without
# any release, pause, resume and abort are INVALID and retry a CONFLICT.
ACTION_RULES = {
    PAUSE: {ACCEPTED: FORWARD, NOOP: (PAUSED,)},
    RESUME: {ACCEPTED: (PAUSED,), NOOP: FORWARD},
    ABORT: {ACCEPTED: (*FORWARD, PAUSED, ROLLING_BACK, ROLLED_BACK), NOOP: (ABORTED,)},
    RETRY: {ACCEPTED: (ROLLED_BACK,), NOOP: ()},
}

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def action_outcome(action: str, state: str) -> str:
    """ACCEPTED, NOOP or CONFLICT: what `action` does to a release in `state`."""
    rules = ACTION_RULES[action]
    if state in rules[ACCEPTED]:
        return ACCEPTED
    if state in rules[NOOP]:
        return NOOP
    return CONFLICT


def start_refusal(group: dict, version: str, allow_downgrade: bool = False) -> tuple[str, str] | None:
    """Why a start of `version` would not start a release in the group state `group` (a dict with
    `release`, `current_version` and `highest_version`, as the state machine keeps it and
    GET /v1/status returns it): (NOOP or CONFLICT or INVALID, reason), checked in the state
    machine's order; None when it would start one.

    The state machine checks the command's arguments before, and after this the members the
    leader has not heard from (refused unless allow_unreachable)."""
    release = group.get("release")
    if release and release["state"] not in TERMINAL:
        if release["version"] == version:
            return NOOP, f"release {version} already in progress ({release['state']})"
        return CONFLICT, f"release {release['version']} is in progress ({release['state']})"
    if version == group.get("current_version") and not allow_downgrade:
        return NOOP, f"group already runs {version}"
    highest = group.get("highest_version")
    if highest and compare_versions(version, highest) < 0 and not allow_downgrade:
        return INVALID, (f"version {version} is lower than {highest}, the highest the group ran "
                         "(rollback protection); ask for allow_downgrade to go back on purpose")
    return None


def compare_versions(a: str, b: str) -> int:
    """Compare versions `main[-pre][+build]`: main parts numerically ("2.4" < "2.10"), a
    pre-release before its release ("2.5-rc1" < "2.5"), build metadata ignored."""

    def parts(text: str) -> list[tuple[int, int, str]]:
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.]", text) if p != ""]

    def key(v: str) -> tuple[list[tuple[int, int, str]], int, list[tuple[int, int, str]]]:
        main, pre = v.split("+", 1)[0].partition("-")[::2]  # (before, after) the first "-"
        return parts(main), 0 if pre else 1, parts(pre.replace("-", "."))

    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def valid_version(v: object) -> bool:
    """A version string: a letter or digit, then up to 63 of letters, digits and `._+-`."""
    return isinstance(v, str) and bool(_VERSION_RE.fullmatch(v)) and v not in (".", "..")
