#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: group_info
short_description: Read the replicated release state of a server group
version_added: 0.1.0
author:
  - quorum.rollout maintainers (@quorum-rollout)
description:
  - Asks one agent of a group for its status (C(GET /v1/status)) and returns it. That is the node's own view
    (Raft role, leader, term, readiness) and the group's replicated state (current version, release under way,
    history).
  - Never changes anything.
options:
  events:
    description:
      - Also return the group's transition history from C(GET /v1/events) as RV(events).
    type: bool
    default: false
extends_documentation_fragment:
  - quorum.rollout.agent_api
  - quorum.rollout.agent_api.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - This module only reads; check mode changes nothing about what it does.
  diff_mode:
    support: N/A
    details:
      - This module only reads.
  idempotent:
    support: full
  platform:
    platforms: posix
notes:
  - The state is the one committed by the group's Raft log as this node knows it. A follower may lag the leader by
    a few milliseconds; RV(node.leader) names the leader.
seealso:
  - module: quorum.rollout.release
  - plugin: quorum.rollout.group_state
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: Read the group state from the local agent
  quorum.rollout.group_info:
    api_url: http://127.0.0.1:7200
    api_token_file: /etc/quorum-rollout/api.token
  register: __quorum_rollout_group

- name: Show the version and the release under way
  ansible.builtin.debug:
    msg: >-
      {{ __quorum_rollout_group.group }} runs {{ __quorum_rollout_group.state.current_version }},
      release {{ __quorum_rollout_group.release.version | default('none') }}
      {{ __quorum_rollout_group.release.state | default('') }}

- name: Fail when the group has no leader
  ansible.builtin.assert:
    that: __quorum_rollout_group.node.has_quorum
    fail_msg: "group {{ __quorum_rollout_group.group }} has no quorum: check the agents of its members"
"""

RETURN = r"""
group:
  description: Name of the group the agent belongs to.
  returned: success
  type: str
  sample: intel-eu1a
node:
  description: This agent's own view.
  returned: success
  type: dict
  contains:
    id:
      description: Node id of the agent.
      type: str
      returned: success
      sample: h1
    role:
      description: Raft role, V(leader), V(follower) or V(candidate).
      type: str
      returned: success
      sample: follower
    leader:
      description: Node id of the group's leader, V(null) during an election.
      type: str
      returned: success
      sample: h2
    term:
      description: Raft term.
      type: int
      returned: success
      sample: 3
    ready:
      description: Whether the agent has caught up with the group's log and serves commands.
      type: bool
      returned: success
      sample: true
    has_quorum:
      description: Whether the group has a leader backed by a majority.
      type: bool
      returned: success
      sample: true
    registry:
      description: Outcome of the last report to the infrastructure registry (C(ok), C(error)).
      type: dict
      returned: success
      sample: {ok: true, error: null}
members:
  description:
    - Every member of the group with its membership status (V(active), V(joining), V(leaving)) and liveness
      (see C(docs/api.md), C(members)).
  returned: success
  type: list
  elements: dict
  sample:
    - {id: h1, address: "10.0.0.1:7100", api_url: "http://10.0.0.1:7200", status: active, reachable: true,
       unreachable_since: null, last_contact_seconds: null}
state:
  description: The group's replicated state.
  returned: success
  type: dict
  contains:
    group:
      description: Group name.
      type: str
      returned: success
    current_version:
      description: Version every member runs, V(null) before the first release.
      type: str
      returned: success
      sample: "2.3"
    highest_version:
      description: Highest version the group ever ran (the downgrade guard).
      type: str
      returned: success
      sample: "2.3"
    release:
      description: The release under way or the last one, see RV(release).
      type: dict
      returned: success
    history:
      description: Bounded list of transitions, each with C(seq), C(time), C(term), C(actor), C(op), C(from), C(to), C(detail).
      type: list
      elements: dict
      returned: success
    rejected:
      description: Commands the state machine refused recently, with the reason.
      type: list
      elements: dict
      returned: success
  sample:
    group: intel-eu1a
    current_version: "2.3"
    highest_version: "2.3"
    release: null
    history: []
    rejected: []
release:
  description:
    - Shortcut for RV(state.release), V(null) when the group never had a release.
    - C(state) is one of V(running_old_release), V(downloaded_in_leader), V(verified), V(rolling), V(current),
      V(rolling_back), V(rolled_back), V(paused), V(aborted); C(failure) names the host, step and reason after a
      rollback.
    - C(failed_within_budget) lists C({host, step, reason}) of the hosts that failed within the failure budget
      (C(quorum_rollout_max_failures)); each was reverted alone and the release went on, so a release can be
      V(current) with hosts listed here. C(hold) says what the next batch waits for (C(text) such as
      V(baking until ...) or V(waiting for window (opens ...))), else V(null).
  returned: success
  type: dict
  sample:
    id: "2.4#1"
    version: "2.4"
    previous_version: "2.3"
    attempt: 1
    state: rolling
    batch: 0
    batches: [["h1"], ["h2", "h3"]]
    hosts:
      h1: {status: updated, version: "2.4", previous: "2.3", step: done, detail: null}
    failure: null
    failed_within_budget: []
    hold: null
events:
  description: The group's transition history from C(GET /v1/events), oldest first.
  returned: when O(events=true)
  type: list
  elements: dict
  sample:
    - {seq: 7, time: 1764140000.5, term: 3, actor: h2, op: start, release: "2.4#1", from: current,
       to: running_old_release, detail: "start 2.4"}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.rollout.plugins.module_utils.api_client import (
    AGENT_API_MUTUALLY_EXCLUSIVE,
    AgentApiError,
    AgentApiOptions,
    AgentOptionError,
    agent_api_argument_spec,
)


def main():
    argument_spec = agent_api_argument_spec()
    argument_spec.update(events=dict(type="bool", default=False))
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        mutually_exclusive=AGENT_API_MUTUALLY_EXCLUSIVE,
    )
    try:
        client = AgentApiOptions.from_module(module).client()
    except AgentOptionError as exc:
        module.fail_json(msg=str(exc))
    module.no_log_values.add(client.token)

    try:
        status = client.status()
        events = client.events() if module.params["events"] else None
    except AgentApiError as exc:
        module.fail_json(msg=str(exc), status=exc.status, error=exc.error, detail=exc.detail)

    state = status.get("state") or {}
    result = dict(
        changed=False,
        group=status.get("group") or state.get("group"),
        node=status.get("node"),
        members=status.get("members") or [],
        state=state,
        release=state.get("release"),
    )
    if events is not None:
        result["events"] = events
    module.exit_json(**result)


if __name__ == "__main__":
    main()
