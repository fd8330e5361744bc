#!/usr/bin/env python3
"""A model of a 10,000-host fleet in 1,000 groups, built from step costs measured here.

Nothing here runs agents: it is arithmetic on measured inputs, so that what grows with the
fleet is written down and can be checked against the real runs it comes from
(docs/benchmarks.md: bench/headline.py, bench/raft_scale.py, bench/zones.py, and the
controller's cost of one status poll, `--poll-cpu` / `--poll-wall`, measured with a playbook
looping quorum.rollout.group_info against a real agent).

quorum.rollout, every group at once (`ansible-playbook release.yml -e version=...`):
  start   the controller sends one command per group, `forks` at a time:
          G / forks x poll_wall
  fetch   every group's leader fetches the release once; all leaders share the origin uplink U
          and each zone's downlink D is shared by the groups of that zone:
          S x max(G / U, groups_per_zone / D); members fetch from peers inside the zone meanwhile
  roll    1 / batch_fraction batches, each one host step plus one Raft commit and the batch gap:
          batches x (step + gap)
  report  the controller polls each group until it ends, `forks` groups at a time; groups roll
          by themselves, so a group reached late is already done (one poll):
          controller CPU <= forks x poll_cpu / (poll_wall + poll) cores, bounded by forks.
Ansible `serial: "10%"` over the whole inventory: 10 batches of H / 10 hosts; each host of a batch
downloads S from the origin (H / 10 x S per batch over U, or over each zone's D), then every task
runs on every host of the batch, `forks` hosts at a time (tasks x poll_wall each), then the step.

Usage: .venv/bin/python bench/model.py [--hosts 10000] [--groups 1000] [--zones 100] [--size-gib 1]
       [--uplink-gbit 10] [--downlink-gbit 1] [--step 30] [--forks 5] [--delta 1.0] ...
"""

from __future__ import annotations

import argparse
import math

GIB = 1 << 30


def model(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    size = a.size_gib * GIB * a.delta  # bytes that cross the origin per group (delta releases: a fraction)
    up, down = a.uplink_gbit * 1e9 / 8, a.downlink_gbit * 1e9 / 8
    per_zone = a.groups / a.zones
    batches = math.ceil(1 / a.batch_fraction)
    start = a.groups / a.forks * a.poll_wall
    fetch = size * max(a.groups / up, per_zone / down)
    roll = batches * (a.step + a.gap)
    report = math.ceil(a.groups / a.forks) * a.poll_wall
    qr = {"start_s": start, "fetch_s": fetch, "roll_s": roll, "report_s": report,
          "total_s": start + fetch + roll + report, "origin_gib": a.groups * size / GIB,
          "controller_cores": a.forks * a.poll_cpu / (a.poll_wall + a.poll)}
    batch_hosts = a.hosts * a.batch_fraction
    whole = a.size_gib * GIB
    a_fetch = whole * max(batch_hosts / up, batch_hosts / a.zones / down)
    a_tasks = math.ceil(batch_hosts / a.forks) * a.tasks * a.poll_wall
    a_batch = a_fetch + a_tasks + a.step
    ansible = {"fetch_s": batches * a_fetch, "tasks_s": batches * a_tasks, "total_s": batches * a_batch,
               "origin_gib": a.hosts * whole / GIB, "controller_cores": a.forks * a.poll_cpu / a.poll_wall}
    return {"quorum.rollout": qr, "ansible": ansible}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=1_000)
    ap.add_argument("--zones", type=int, default=100, help="zones; groups are CPU kind x zone")
    ap.add_argument("--size-gib", type=float, default=1.0, help="release size")
    ap.add_argument("--delta", type=float, default=1.0, help="fraction of the release a group fetches (deltas)")
    ap.add_argument("--uplink-gbit", type=float, default=10.0, help="origin uplink")
    ap.add_argument("--downlink-gbit", type=float, default=1.0, help="each zone's downlink")
    ap.add_argument("--batch-fraction", type=float, default=0.1)
    ap.add_argument("--step", type=float, default=30.0, help="one host's update: unpack, restart, checks (service)")
    ap.add_argument("--gap", type=float, default=0.011, help="batch gap, s (measured: coordination bench, N=10)")
    ap.add_argument("--forks", type=int, default=5, help="ansible forks (default 5, Ansible's)")
    ap.add_argument("--poll-wall", type=float, default=0.48, help="controller: one module run, wall s (measured)")
    ap.add_argument("--poll-cpu", type=float, default=0.46, help="controller: one module run, CPU s (measured)")
    ap.add_argument("--poll", type=float, default=2.0, help="release.yml rollout_poll")
    ap.add_argument("--tasks", type=int, default=8, help="tasks per host in the rolling playbook")
    args = ap.parse_args()
    m = model(args)
    q, b = m["quorum.rollout"], m["ansible"]
    print(f"{args.hosts} hosts, {args.groups} groups in {args.zones} zones, {args.size_gib:g} GiB release"
          f"{f' ({args.delta:.0%} of it fetched)' if args.delta != 1 else ''}, origin {args.uplink_gbit:g} Gbit/s, "
          f"zone downlink {args.downlink_gbit:g} Gbit/s, host step {args.step:g} s, forks {args.forks}\n")
    print("| | start | fetch | roll | report / tasks | total | origin egress | controller cores |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| quorum.rollout | {q['start_s']:.0f} s | {q['fetch_s']:.0f} s | {q['roll_s']:.0f} s "
          f"| {q['report_s']:.0f} s "
          f"| {q['total_s'] / 60:.1f} min | {q['origin_gib']:.0f} GiB | {q['controller_cores']:.2f} |")
    print(f"| Ansible serial: \"10%\" | - | {b['fetch_s']:.0f} s | - | {b['tasks_s']:.0f} s "
          f"| {b['total_s'] / 60:.1f} min | {b['origin_gib']:.0f} GiB | {b['controller_cores']:.2f} |")
    print(f"\nRatio: {b['total_s'] / q['total_s']:.1f}x faster, {b['origin_gib'] / q['origin_gib']:.0f}x less origin "
          "egress.")


if __name__ == "__main__":
    main()
