#!/usr/bin/env python3
"""Raft by group size: commit latency, idle cost and leader failover of real agent groups.

For each group size N (real agent processes, real Raft over TCP on loopback addresses):
- idle: every agent's CPU (utime + stime from /proc over `--idle` seconds, as % of one core) and
  VmRSS; elections while idle (term changes: should be none);
- commits: `--commits` no-op commits (POST /v1/releases of the version the group runs) one after
  another through the leader, latency client-side, p50 / p99;
- failover: `--kills` times, the leader is SIGKILLed and a surviving member is asked to commit
  (POST through it, retried every 10 ms): kill -> the first commit that succeeds, p50 / p99, and
  the elections it took (term change per kill: 1 is a clean election); the killed agent is
  started again and the group is whole before the next kill.

`--raft` passes Raft timing to every agent (the agent config's raft section), e.g.
`--raft '{"election_timeout_min": 0.3, "election_timeout_max": 0.6}'`, to compare settings in one run:
`--compare` runs every size once with the defaults and once with `--raft`.

Usage: .venv/bin/python bench/raft_scale.py [--sizes 3,5,10,30,51] [--kills 10] [--commits 200] [--idle 20]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.raft_attacks import CommitLoop, pct, proc_kib  # noqa: E402
from scripts.localfleet import Fleet, wait_for  # noqa: E402

VERSION = "2.4"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def terms(fleet: Fleet) -> dict[str, int]:
    out = {}
    for h in fleet.hosts:
        if h.alive():
            try:
                out[h.id] = h.status()["node"]["term"]
            except (requests.RequestException, KeyError, ValueError):
                pass
    return out


def whole(fleet: Fleet) -> bool:
    """Every agent answers, is ready and follows the one leader."""
    leader = fleet.leader()
    if leader is None:
        return False
    return all(h.status()["node"]["leader"] == leader.id for h in fleet.hosts)


def run(base: Path, n: int, args: argparse.Namespace, raft: dict[str, Any]) -> dict[str, Any]:
    fleet = Fleet(base, n, extra={"raft": raft} if raft else None)
    try:
        fleet.start_mirror()
        fleet.preinstall(VERSION)
        fleet.start()
        wait_for(lambda: whole(fleet), 120, "the whole group following one leader", interval=0.2)
        leader = fleet.leader()
        # idle
        t0 = terms(fleet)
        pids = [h.proc.pid for h in fleet.hosts]
        c0, w0 = [cpu_seconds(p) for p in pids], time.monotonic()
        time.sleep(args.idle)
        c1, w1 = [cpu_seconds(p) for p in pids], time.monotonic()
        rss = [proc_kib(p) / 1024 for p in pids]
        cpu = [(b - a) / (w1 - w0) * 100 for a, b in zip(c0, c1)]
        idle_elections = max(terms(fleet).values()) - max(t0.values())
        # commits through the leader
        loop = CommitLoop(leader.post, VERSION)
        # The group's first release of VERSION starts a release (201, after the mirror's manifest
        # check); only the no-op commits after it are timed (it was counted as a failed commit).
        assert loop.one()[1] == 201, loop.samples
        loop.samples.clear()
        loop.run(args.commits)
        lat = [lat * 1000 for _t, lat, status in loop.samples if status == 200]
        failed = sum(1 for *_x, status in loop.samples if status != 200)
        # failover
        kill_to_commit, elections = [], []
        for _ in range(args.kills):
            leader = wait_for(fleet.leader, 60, "a leader")
            survivor = next(h for h in fleet.hosts if h is not leader and h.alive())
            before = max(terms(fleet).values())
            t_kill = time.monotonic()
            leader.kill(signal.SIGKILL)
            while time.monotonic() - t_kill < 60:
                try:
                    if survivor.post("/v1/releases", {"version": VERSION}).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.01)
            kill_to_commit.append(time.monotonic() - t_kill)
            leader.start()
            wait_for(lambda: whole(fleet), 120, "the group whole again", interval=0.2)
            elections.append(max(terms(fleet).values()) - before)
        return {"n": n, "raft": raft, "commit_p50_ms": pct(lat, 50), "commit_p99_ms": pct(lat, 99),
                "commits_failed": failed, "cpu_pct_mean": statistics.mean(cpu), "cpu_pct_max": max(cpu),
                "rss_mib_mean": statistics.mean(rss), "rss_mib_max": max(rss), "idle_elections": idle_elections,
                "failover_s": kill_to_commit, "elections_per_kill": elections, "load": os.getloadavg()[0]}
    finally:
        fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="3,5,10,30,51", help="group sizes (default 3,5,10,30,51)")
    ap.add_argument("--kills", type=int, default=10, help="leader kills per size (default 10)")
    ap.add_argument("--commits", type=int, default=200, help="no-op commits per size (default 200)")
    ap.add_argument("--idle", type=float, default=20, help="idle sampling seconds per size (default 20)")
    ap.add_argument("--raft", default="", help="JSON raft timing for the agents, e.g. '{\"heartbeat\": 0.05}'")
    ap.add_argument("--compare", action="store_true", help="each size with the defaults, then with --raft")
    args = ap.parse_args()
    raft = json.loads(args.raft) if args.raft else {}
    variants = [{}, raft] if args.compare else [raft]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qr-raft-scale-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            for i, variant in enumerate(variants):
                res = run(Path(tmp) / f"n{n}-{i}", n, args, variant)
                rows.append(res)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else
                                      [round(x, 3) for x in v] if isinstance(v, list) else v)
                                  for k, v in res.items()}), flush=True)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}, {args.commits} commits, {args.kills} kills, "
          f"{args.idle:g} s idle per size\n")
    print("| N | raft timing | commit p50 / p99 | idle CPU per agent (mean / max) | RSS per agent | elections idle "
          "| kill -> next commit p50 / p99 (max) | elections per kill |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = r["failover_s"]
        timing = ", ".join(f"{k}={v:g}" for k, v in r["raft"].items()) or "defaults"
        print(f"| {r['n']} | {timing} | {r['commit_p50_ms']:.1f} / {r['commit_p99_ms']:.1f} ms "
              f"| {r['cpu_pct_mean']:.2f} / {r['cpu_pct_max']:.2f} % | {r['rss_mib_mean']:.1f} MiB "
              f"| {r['idle_elections']} | {pct(f, 50):.2f} / {pct(f, 99):.2f} s ({max(f):.2f}) "
              f"| {' '.join(str(e) for e in r['elections_per_kill'])} |")


if __name__ == "__main__":
    main()
