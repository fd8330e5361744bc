#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: member
short_description: Add a server to a group or remove one, without restarting the other members
version_added: 0.2.0
author:
  - quorum.rollout maintainers (@quorum-rollout)
description:
  - Changes a group's membership through the HTTP API of any agent of that group. The group's Raft leader changes
    the Raft cluster one member at a time (pysyncobj dynamic membership); no other agent restarts.
  - With O(state=present) the server joins. Until it runs the group's current version (it installs it from a
    member, verified, before it counts) it is V(joining), and a release opens no batch.
  - With O(state=absent) the server leaves. It does not need to answer, so a dead server can be removed.
  - Membership changes are refused while a release is under way, and go one at a time.
  - The module is idempotent. A member that is already there (same address and API URL), or already gone,
    changes nothing.
options:
  id:
    description: Node id of the member (its agent's C(node_id)).
    type: str
    required: true
  address:
    description:
      - The member's Raft address, V(host:port) (its agent's C(raft.address)).
      - Required with O(state=present).
    type: str
  member_api_url:
    description:
      - The URL of the member's own agent API (its C(api.url)); the other members fetch artifacts from it.
      - Required with O(state=present).
    type: str
  state:
    description:
      - V(present) adds the member; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  wait:
    description:
      - For V(present), wait until the member is V(active) (it joined the Raft cluster and runs the group's
        current version); its agent must be running for that. For V(absent), wait until it is gone from the
        group's membership and Raft cluster.
      - With V(false), return once the change is committed.
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait when O(wait=true).
    type: int
    default: 600
  wait_sleep:
    description: Seconds between two status requests while waiting.
    type: float
    default: 1
extends_documentation_fragment:
  - quorum.rollout.agent_api
  - quorum.rollout.agent_api.attributes
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - The change is predicted from C(GET /v1/status) without sending any command.
  diff_mode:
    support: none
  idempotent:
    support: full
  platform:
    platforms: posix
notes:
  - The agent of a new member should be started after the member is added (O(wait=false)), then the module run
    again with O(wait=true) to wait for it to join; the agent role's C(site.yml) does exactly that.
seealso:
  - module: quorum.rollout.group_info
  - module: quorum.rollout.release
"""

EXAMPLES = r"""
- name: Add web-07 to its group, start its agent, wait until it runs the group's version
  block:
    - name: Add the member
      quorum.rollout.member:
        api_url: http://10.0.0.1:7200
        api_token_file: /etc/quorum-rollout/api.token
        id: web-07
        address: 10.0.0.7:7100
        member_api_url: http://10.0.0.7:7200
        wait: false

    - name: Start its agent
      ansible.builtin.service:
        name: quorum-rollout
        state: started
      delegate_to: web-07

    - name: Wait until it joined
      quorum.rollout.member:
        api_url: http://10.0.0.1:7200
        api_token_file: /etc/quorum-rollout/api.token
        id: web-07
        address: 10.0.0.7:7100
        member_api_url: http://10.0.0.7:7200

- name: Remove a dead server from its group
  quorum.rollout.member:
    api_url: http://10.0.0.1:7200
    api_token_file: /etc/quorum-rollout/api.token
    id: web-03
    state: absent
"""

RETURN = r"""
member:
  description: The member's record after the change (V(null) once removed).
  returned: always
  type: dict
  sample: {id: web-07, address: "10.0.0.7:7100", api_url: "http://10.0.0.7:7200", status: active, reachable: true}
members:
  description: Every member of the group as the agent reported it last (see C(docs/api.md), C(members)).
  returned: always
  type: list
  elements: dict
group:
  description: Name of the group.
  returned: always
  type: str
  sample: intel-eu1a
msg:
  description: One line about the outcome, for people.
  returned: always
  type: str
  sample: "group intel-eu1a: web-07 active"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.quorum.rollout.plugins.module_utils.api_client import (
    AGENT_API_MUTUALLY_EXCLUSIVE,
    AgentApiError,
    AgentApiOptions,
    AgentOptionError,
    agent_api_argument_spec,
    wait_for,
)


def _members(status):
    return {m.get("id"): m for m in (status or {}).get("members") or []}


def _result(status, member_id, changed, msg=None):
    members = (status or {}).get("members") or []
    result = dict(changed=changed, member=_members(status).get(member_id), members=members,
                  group=(status or {}).get("group"))
    if msg is not None:
        result["msg"] = msg
    return result


def run(module, client):
    p = module.params
    member_id, present = p["id"], p["state"] == "present"
    status = client.status()
    group = status.get("group")
    known = _members(status).get(member_id)
    if present:
        if known is not None and (known.get("address"), known.get("api_url")) != (p["address"], p["member_api_url"]):
            module.fail_json(msg="group %s: %s is a member at %s (%s), not %s (%s): remove it first (state=absent)"
                             % (group, member_id, known.get("address"), known.get("api_url"), p["address"],
                                p["member_api_url"]), **_result(status, member_id, False))
        changed = known is None
    else:
        changed = known is not None and known.get("status") != "leaving"
    if changed and not module.check_mode:
        try:
            if present:
                client.add_member(member_id, p["address"], p["member_api_url"])
            else:
                client.remove_member(member_id)
        except AgentApiError as exc:
            if exc.status == 409:
                verb = "add" if present else "remove"
                module.fail_json(msg="group %s: cannot %s %s: %s" % (group, verb, member_id, exc.error),
                                 **_result(status, member_id, False))
            raise
    if module.check_mode or not p["wait"]:
        verb = ("would " if module.check_mode else "") + ("add" if present else "remove")
        return _result(status, member_id, changed, "group %s: %s %s" % (group, verb, member_id) if changed
                       else "group %s: %s already %s" % (group, member_id, "a member" if present else "gone"))

    def done(current):
        record = _members(current).get(member_id)
        return (record is not None and record.get("status") == "active") if present else record is None

    try:
        ok, status = wait_for(client, done, p["wait_timeout"], p["wait_sleep"])
    except AgentApiError as exc:
        module.fail_json(msg="group %s: while waiting for %s: %s" % (group, member_id, exc))
    record = _members(status).get(member_id)
    if not ok:
        module.fail_json(msg="group %s: %s is still %s after %ss%s" % (
            group, member_id, (record or {}).get("status", "a member"), p["wait_timeout"],
            " (is its agent running? it installs the group's version before it counts)" if present else ""),
            **_result(status, member_id, changed))
    done_msg = "group %s: %s %s" % (group, member_id, "active" if present else "removed")
    return _result(status, member_id, changed, done_msg)


def main():
    argument_spec = agent_api_argument_spec()
    argument_spec.update(
        id=dict(type="str", required=True),
        address=dict(type="str"),
        member_api_url=dict(type="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=600),
        wait_sleep=dict(type="float", default=1),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("address", "member_api_url"))],
        mutually_exclusive=AGENT_API_MUTUALLY_EXCLUSIVE,
    )
    try:
        client = AgentApiOptions.from_module(module).client()
    except AgentOptionError as exc:
        module.fail_json(msg=str(exc))
    module.no_log_values.add(client.token)
    try:
        result = run(module, client)
    except AgentApiError as exc:
        module.fail_json(msg=str(exc), status=exc.status, error=exc.error, detail=exc.detail)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
