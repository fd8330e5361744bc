#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: release
short_description: Start, pause, resume, abort or retry a rolling release in a server group
version_added: 0.1.0
author:
  - quorum.rollout maintainers (@quorum-rollout)
description:
  - Drives the release state machine of one group of servers through the HTTP API of any agent of that group.
    The group's Raft leader does the work. It downloads the release once, verifies its signature, rolls it
    to one batch of servers at a time with pre-flight checks, and rolls the group back if a step fails.
  - With O(state=started) the module asks the group to roll out O(version); with the other states it acts on
    the group's current release.
  - With O(wait=true) (the default) the module then waits until the release reaches the state asked for, and
    fails with the failed host, step and reason if the group rolled back.
  - The module is idempotent. Starting a version that is already being rolled out, or that the group already
    runs, changes nothing; so does pausing a paused release, aborting an aborted one, and so on.
  - In check mode the module reads the group's status and predicts the change without sending any command.
options:
  version:
    description:
      - Version to roll out, for example V(2.4). It must be published on the agents' mirrors with a signed manifest.
      - Required with O(state=started).
      - With the other states it is optional; when given, the module fails if the group's current release is of
        another version, so that a playbook never acts on a release it did not mean.
    type: str
  state:
    description:
      - V(started) starts the release of O(version) (no change when that version is already in progress or current).
      - V(paused) pauses the current release after the step under way; no new batch starts.
      - V(resumed) continues a paused release.
      - V(aborted) stops the current release for good; servers already updated keep their version.
      - V(retried) starts a new attempt of a release that rolled back, after the cause was fixed.
    type: str
    choices: [started, paused, resumed, aborted, retried]
    default: started
  allow_downgrade:
    description:
      - Allow O(version) to be lower than the highest version the group ever ran. The agents refuse a downgrade
        otherwise, which protects against replaying an old signed release.
      - Only used with O(state=started).
    type: bool
    default: false
  allow_unreachable:
    description:
      - Start the release even though the group's leader has not heard from some members lately (their agent is
        down or cut off). The release then goes to the reachable members only; the others keep their version.
      - By default such a start is refused with the names of the missing members, because the release would wait
        for them and roll the group back.
      - Only used with O(state=started).
    type: bool
    default: false
  wait:
    description:
      - Wait until the release reaches the state asked for.
      - For V(started), V(resumed) and V(retried) that is a terminal state (V(current), V(rolled_back) or
        V(aborted)); for V(paused), V(paused); for V(aborted), V(aborted).
      - Connection errors and HTTP 503 answers while waiting (an agent restarting, a leader election) are retried
        until O(wait_timeout).
    type: bool
    default: true
  wait_timeout:
    description:
      - How many seconds to wait when O(wait=true). On timeout the module fails and returns the last state it saw.
    type: int
    default: 1800
  wait_sleep:
    description:
      - Seconds between two status requests while waiting.
    type: float
    default: 2
extends_documentation_fragment:
  - quorum.rollout.agent_api
  - quorum.rollout.agent_api.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The change is predicted from C(GET /v1/status) without sending any command. The prediction uses the agent's
        own rules (its state machine's contract, which the collection shares) for which action is allowed in which
        release state, which version counts as lower (a pre-release such as V(2.5-rc1) is lower than V(2.5);
        build metadata such as V(+b2) is ignored) and when a start changes nothing.
      - It does not foresee the other refusals of a start, such as a version not published on the mirrors or members
        the group's leader has not heard from (see O(allow_unreachable)).
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    platforms: posix
notes:
  - The module talks to the agent over HTTP from the host it runs on. The agent API listens on 127.0.0.1 by default,
    so either run the task on a member of the group (with O(api_token_file) pointing at the agent's token file) or
    use C(delegate_to) with an O(api_url) the controller can reach.
  - Run the task once per group (for example with C(run_once) per group, or on one host of each group). Running it
    on every member is harmless but needless; the first call starts the release and the others report no change.
seealso:
  - module: quorum.rollout.group_info
  - plugin: quorum.rollout.group_state
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Roll version 2.4 out to the group of this host and wait until every member runs it
  quorum.rollout.release:
    api_url: http://127.0.0.1:7200
    api_token_file: /etc/quorum-rollout/api.token
    version: "2.4"

- name: Start the release without waiting, then poll it yourself
  quorum.rollout.release:
    api_url: "{{ agent_url }}"
    api_token: "{{ vault_quorum_rollout_token }}"
    version: "2.4"
    wait: false
  delegate_to: localhost
  run_once: true

- name: Set the connection options once for every module of the collection
  module_defaults:
    group/quorum.rollout.agent_api:
      api_url: http://127.0.0.1:7200
      api_token_file: /etc/quorum-rollout/api.token
  block:
    - name: Pause the release under way
      quorum.rollout.release:
        state: paused

    - name: Resume it and wait for the end
      quorum.rollout.release:
        state: resumed
        wait_timeout: 3600

- name: After fixing what made the group roll back, try the same release again
  quorum.rollout.release:
    version: "2.5"
    state: retried

- name: Go back to a lower version on purpose
  quorum.rollout.release:
    version: "2.3"
    allow_downgrade: true

- name: Give up on the release under way
  quorum.rollout.release:
    state: aborted
"""

RETURN = r"""
group:
  description: Name of the group the agent belongs to.
  returned: always
  type: str
  sample: intel-eu1a
version:
  description:
    - Version of the release the module acted on (for V(started), the requested version).
  returned: always
  type: str
  sample: "2.4"
state:
  description:
    - State of that release when the module returned, one of V(running_old_release), V(downloaded_in_leader),
      V(verified), V(rolling), V(current), V(rolling_back), V(rolled_back), V(paused), V(aborted).
    - V(current) also when the group already ran O(version) and had no release record for it.
    - V(null) when the group has no release at all.
  returned: always
  type: str
  sample: current
current_version:
  description: Version every member of the group runs, V(null) for a group that never ran a release.
  returned: always
  type: str
  sample: "2.4"
release:
  description:
    - The group's release record as the agent returned it last (V(null) when there is none).
    - In check mode, the record before any change.
  returned: always
  type: dict
  sample:
    id: "2.4#1"
    version: "2.4"
    previous_version: "2.3"
    attempt: 1
    state: current
    paused_from: null
    batch: null
    batches: [["h1", "h2"], ["h3"]]
    members: ["h1", "h2", "h3"]
    hosts:
      h1: {status: updated, version: "2.4", step: done, detail: null}
    artifact: {sha256: "9f86d0...", size: 10485760, file: "app-2.4.tar.gz"}
    holders: ["h1", "h2", "h3"]
    failure: null
    started_at: 1764140000.5
    updated_at: 1764140321.2
    term: 3
msg:
  description: One line about the outcome, for people.
  returned: always
  type: str
  sample: "group intel-eu1a: release 2.4 current"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.rollout.plugins.module_utils.api_client import (
    AGENT_API_MUTUALLY_EXCLUSIVE,
    AgentApiError,
    AgentApiOptions,
    AgentOptionError,
    agent_api_argument_spec,
    describe_release,
    wait_for,
)

# The agent's state machine rules, shared with the agent (generated from its contract.py).
from ansible_collections.quorum.rollout.plugins.module_utils.contract import (
    ABORT,
    ABORTED,
    ACCEPTED,
    CONFLICT,
    CURRENT,
    FORWARD,
    NOOP,
    PAUSE,
    PAUSED,
    RESUME,
    RETRY,
    ROLLED_BACK,
    STATES,
    TERMINAL,
    action_outcome,
    start_refusal,
    valid_version,
)

# module state -> agent action
ACTION_OF_STATE = {"paused": PAUSE, "resumed": RESUME, "aborted": ABORT, "retried": RETRY}

# Release states in which a release is under way (the agent refuses to start another one).
IN_PROGRESS = tuple(state for state in STATES if state not in TERMINAL)
# ... and those that end it, in order, for messages: "current, rolled_back or aborted".
ENDED = tuple(state for state in STATES if state in TERMINAL)

# The module treats these as done without asking the agent: what resuming or retrying
# is for (the release running again, or current) has already happened.
SATISFIED_WITHOUT_ACTION = {
    RESUME: (CURRENT,),
    RETRY: FORWARD + (CURRENT,),
}

# What the module waits for after each state (besides any terminal state).
WAIT_FOR_STATE = {"paused": PAUSED, "aborted": ABORTED}


class ReleaseFailed(Exception):
    """The group refused the command or the release ended badly; the message says what to do."""

    def __init__(self, msg, status=None):
        super(ReleaseFailed, self).__init__(msg)
        self.status = status


def _group_state(status):
    return (status or {}).get("state") or {}


def _group(status):
    status = status or {}
    return status.get("group") or _group_state(status).get("group") or "?"


def _release(status):
    return _group_state(status).get("release")


class ReleaseTask(object):
    """One run of the module: read the group status, act (unless check mode), wait, report."""

    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.state = module.params["state"]
        self.status = None

    # -- decide and act -----------------------------------------------------------
    def run(self):
        self.status = self.client.status()
        if self.state == "started":
            changed, release = self._start()
        else:
            changed, release = self._act(ACTION_OF_STATE[self.state])
        version = self.params["version"] or (release or {}).get("version")
        if self.module.check_mode or not self.params["wait"]:
            return self._result(changed, self.status, release, version)
        return self._wait(changed, version)

    def _start(self):
        version = self.params["version"]
        group = _group(self.status)
        state = _group_state(self.status)
        release = state.get("release")
        allow_downgrade = self.params["allow_downgrade"]
        if self.module.check_mode:
            # The agent's rules, in its order (start_refusal; the members it has not heard from aside).
            if not valid_version(version):
                raise ReleaseFailed("group %s: cannot start release %s: it is not a valid version string" % (
                    group, version))
            refusal = start_refusal(state, version, allow_downgrade)
            if refusal is None:
                return True, release
            if refusal[0] == NOOP:  # that version is in progress, or the group runs it
                return False, release
            if refusal[0] == CONFLICT:
                raise ReleaseFailed(self._conflict_msg(group, version, release.get("version"), release.get("state")))
            raise ReleaseFailed(  # INVALID: lower than the highest version the group ran
                "group %s: cannot start release %s: it is lower than %s, the highest version the group ran "
                "(rollback protection). Set allow_downgrade=true to go back on purpose"
                % (group, version, state.get("highest_version"))
            )
        try:
            answer = self.client.start_release(version, allow_downgrade, self.params["allow_unreachable"])
        except AgentApiError as exc:
            if exc.status == 409 and exc.detail.get("state") in IN_PROGRESS:
                raise ReleaseFailed(
                    self._conflict_msg(group, version, exc.detail.get("version"), exc.detail.get("state"), exc)
                )
            if exc.status in (400, 409) or exc.detail.get("reason") == "mirrors_unavailable":
                # not published, untrusted manifest, members unreachable, rollback protection, ...
                raise ReleaseFailed("group %s: cannot start release %s: %s" % (group, version, exc.error))
            raise
        return bool(answer.get("changed")), answer.get("release")

    @staticmethod
    def _conflict_msg(group, version, other, other_state, exc=None):
        msg = "group %s: cannot start release %s: release %s is in progress (state %s)" % (
            group, version, other or "?", other_state or "?")
        if exc is not None and exc.error:
            msg += " [agent: %s]" % exc.error
        return msg + ". Wait for it to end, or run state=aborted first"

    def _act(self, action):
        group = _group(self.status)
        release = _release(self.status)
        wanted = self.params["version"]
        if not release:
            raise ReleaseFailed("group %s has no release to %s" % (group, action), self.status)
        if wanted and release.get("version") != wanted:
            raise ReleaseFailed(
                "group %s: the current release is %s, not %s; nothing done" % (group, release.get("version"), wanted),
                self.status,
            )
        if release.get("state") in SATISFIED_WITHOUT_ACTION.get(action, ()):
            return False, release
        if self.module.check_mode:
            outcome = action_outcome(action, release.get("state"))
            if outcome == CONFLICT:
                raise ReleaseFailed(
                    self._action_refused_msg(group, action, release.get("version"), release.get("state")), self.status)
            return outcome == ACCEPTED, release
        try:
            answer = self.client.action(action, release.get("id"))
        except AgentApiError as exc:
            if exc.status == 409:
                raise ReleaseFailed(
                    self._action_refused_msg(group, action, release.get("version"),
                                             exc.detail.get("state") or release.get("state"), exc),
                    self.status,
                )
            if exc.status == 404:
                raise ReleaseFailed("group %s has no release to %s (%s)" % (group, action, exc), self.status)
            raise
        return bool(answer.get("changed")), answer.get("release")

    @staticmethod
    def _action_refused_msg(group, action, version, state, exc=None):
        msg = "group %s: cannot %s release %s in state %s" % (group, action, version, state)
        if exc is not None and exc.error:
            msg += " [agent: %s]" % exc.error
        if state == ROLLED_BACK:
            msg += ". Run state=retried after fixing the cause, or state=aborted"
        elif state == PAUSED:
            msg += ". Run state=resumed or state=aborted"
        elif state in TERMINAL:
            msg += "; it has ended"
        return msg

    # -- wait ---------------------------------------------------------------------
    def _done(self, version):
        wanted = WAIT_FOR_STATE.get(self.state)

        def predicate(status):
            release = _release(status)
            if not release or release.get("version") != version:
                return True  # nothing left to wait for; _outcome() says why
            return release.get("state") in TERMINAL or release.get("state") == wanted

        return predicate

    def _waiting_for(self, version):
        if self.state in WAIT_FOR_STATE:
            return "release %s to be %s" % (version, WAIT_FOR_STATE[self.state])
        return "release %s to end (%s or %s)" % (version, ", ".join(ENDED[:-1]), ENDED[-1])

    def _wait(self, changed, version):
        timeout = self.params["wait_timeout"]
        try:
            ok, status = wait_for(self.client, self._done(version), timeout, self.params["wait_sleep"])
        except AgentApiError as exc:
            raise ReleaseFailed(
                "group %s: while waiting for %s: %s" % (_group(self.status), self._waiting_for(version), exc),
                self.status,
            )
        group = _group(status)
        if not ok:
            raise ReleaseFailed(
                "group %s: timed out after %ss waiting for %s; last seen: %s" % (
                    group, timeout, self._waiting_for(version), describe_release(group, _release(status))),
                status,
            )
        release = _release(status)
        result = self._result(changed, status, release, version)
        self._check_outcome(group, version, status, release)
        return result

    def _check_outcome(self, group, version, status, release):
        current = _group_state(status).get("current_version")
        if not release or release.get("version") != version:
            if self.state == "started" and current == version:
                return
            raise ReleaseFailed(
                "group %s: release %s is no longer the group's release (now: %s, current version %s)"
                % (group, version, describe_release(group, release), current),
                status,
            )
        state = release.get("state")
        wanted = WAIT_FOR_STATE.get(self.state, CURRENT)
        if state == wanted:
            return
        if state == ROLLED_BACK:
            failure = release.get("failure") or {}
            raise ReleaseFailed(
                "group %s: release %s rolled_back: host %s failed at %s: %s. Run state=retried after fixing, "
                "or state=aborted" % (group, version, failure.get("host", "?"), failure.get("step", "?"),
                                      failure.get("reason", "no reason recorded")),
                status,
            )
        raise ReleaseFailed(
            "group %s: release %s is %s, not %s as asked (%s)" % (
                group, version, state, wanted, describe_release(group, release)),
            status,
        )

    # -- report -------------------------------------------------------------------
    def _result(self, changed, status, release, version):
        group = _group(status)
        current = _group_state(status).get("current_version")
        if release and release.get("version") == version:
            state = release.get("state")
            msg = describe_release(group, release)
        elif version and current == version:
            state = CURRENT
            msg = "group %s: release %s current" % (group, version)
        else:
            state = (release or {}).get("state")
            msg = describe_release(group, release)
        if self.module.check_mode and changed:
            msg = "group %s: would %s (now: %s, current version %s)" % (
                group, self._verb(version), state or "no release", current)
        return dict(changed=changed, group=group, version=version, state=state, current_version=current,
                    release=release, msg=msg)

    def _verb(self, version):
        verb = "start" if self.state == "started" else ACTION_OF_STATE[self.state]
        return "%s release %s" % (verb, version)


def main():
    argument_spec = agent_api_argument_spec()
    argument_spec.update(
        version=dict(type="str"),
        state=dict(type="str", default="started", choices=["started"] + list(ACTION_OF_STATE)),
        allow_downgrade=dict(type="bool", default=False),
        allow_unreachable=dict(type="bool", default=False),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=1800),
        wait_sleep=dict(type="float", default=2),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "started", ("version",))],
        mutually_exclusive=AGENT_API_MUTUALLY_EXCLUSIVE,
    )
    try:
        options = AgentApiOptions.from_module(module)
        client = options.client()
    except AgentOptionError as exc:
        module.fail_json(msg=str(exc))
    module.no_log_values.add(client.token)

    task = ReleaseTask(module, client)
    try:
        result = task.run()
    except ReleaseFailed as exc:
        status = exc.status or task.status
        release = _release(status)
        module.fail_json(msg=str(exc), group=_group(status), release=release,
                         state=(release or {}).get("state"), version=module.params["version"] or
                         (release or {}).get("version"), current_version=_group_state(status).get("current_version"))
    except AgentApiError as exc:
        module.fail_json(msg=str(exc), status=exc.status, error=exc.error, detail=exc.detail)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
