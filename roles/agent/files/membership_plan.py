"""What site.yml does to each group's membership and agents, worked out once on the controller.

    membership_plan.py < HOSTS_JSON > PLAN_JSON

HOSTS_JSON is a list, one entry per host of the play:

    {"host", "id", "group", "present", "recorded_group", "address", "api_url", "untouchable",
     "restart_needed", "probe": {"running", "group", "members": [ids], "leader"} or null}

`group` is the group the host belongs in now (for an absent host: the one it leaves); `probe` is
what the host's running agent says (its group and the group's committed member ids).

The plan, per group, changes one member at a time and restarts one agent at a time, in waves
(wave k of every group runs at once, so groups proceed in parallel):

* leave: members to remove (hosts set absent, hosts that moved to another group), removed by the
  group's driver (a running member that stays) through the API; then the host stops its agent;
* restart: running members whose config or code changed, restarted one per wave, followers first,
  the leader last (one leadership change per group); all at once in wave 0 when the group's secret
  changed (members with different secrets cannot talk: one at a time would never regain a quorum);
* start: members that are not running (a new group bootstraps: all its hosts start together);
* join: new hosts of a running group, added by the driver one per wave, each started after it is
  added, the next only once it joined.

Standard library only; runs with the controller's Python. Prints the plan as JSON:

    {"hosts": {host: {"leave_wave", "restart_wave", "join_wave": int|null, "start": bool, "mover": bool,
                      "removes": [ids], "adds": [{id, address, api_url}]}},
     "leave_waves", "restart_waves", "join_waves": int, "unknown": {group: [ids]}}
"""

from __future__ import annotations

import json
import sys
from typing import Any


def plan(hosts: list[dict[str, Any]]) -> dict[str, Any]:
    out = {h["host"]: {"leave_wave": None, "restart_wave": None, "join_wave": None, "start": False,
                       "mover": bool(h["present"] and h["recorded_group"] and h["recorded_group"] != h["group"]),
                       "removes": [], "adds": []} for h in hosts}
    by_id = {}
    for h in hosts:
        by_id.setdefault((h["group"], h["id"]), h)
        if h["recorded_group"]:
            by_id.setdefault((h["recorded_group"], h["id"]), h)
    groups = sorted({h["group"] for h in hosts} | {h["recorded_group"] for h in hosts if h["recorded_group"]})
    waves = {"leave_waves": 0, "restart_waves": 0, "join_waves": 0}
    unknown: dict[str, list[str]] = {}
    for group in groups:
        staying = [h for h in hosts if h["present"] and h["group"] == group]
        running = [h for h in staying if (h.get("probe") or {}).get("running") and h["probe"].get("group") == group]
        driver = min(running, key=lambda h: h["id"]) if running else None
        committed = set(driver["probe"].get("members") or []) if driver else set()
        leader = driver["probe"].get("leader") if driver else None

        leavers = sorted((by_id[(group, m)] for m in committed if (group, m) in by_id
                          and by_id[(group, m)] not in staying), key=lambda h: h["id"])
        for k, h in enumerate(leavers):
            out[h["host"]]["leave_wave"] = k
            out[driver["host"]]["removes"].append(h["id"])
        waves["leave_waves"] = max(waves["leave_waves"], len(leavers))
        known = {h["id"] for h in hosts if h["group"] == group or h["recorded_group"] == group}
        if committed - known:
            unknown[group] = sorted(committed - known)

        joiners = sorted((h for h in staying if committed and h["id"] not in committed), key=lambda h: h["id"])
        for k, h in enumerate(joiners):
            out[h["host"]]["join_wave"] = k
            out[driver["host"]]["adds"].append({"id": h["id"], "address": h["address"], "api_url": h["api_url"]})
        waves["join_waves"] = max(waves["join_waves"], len(joiners))

        restarting = sorted((h for h in running if h["restart_needed"]),
                            key=lambda h: (h["id"] == leader, h["id"]))
        together = any(h.get("secret_changed") for h in staying)
        for k, h in enumerate(restarting):
            out[h["host"]]["restart_wave"] = 0 if together else k
        waves["restart_waves"] = max(waves["restart_waves"], min(len(restarting), 1) if together else len(restarting))

        for h in staying:
            if h not in running and h not in joiners:
                out[h["host"]]["start"] = True
    return {"hosts": out, **waves, "unknown": unknown}


def main() -> int:
    print(json.dumps(plan(json.load(sys.stdin)), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
