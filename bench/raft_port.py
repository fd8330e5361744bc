#!/usr/bin/env python3
"""Raft port benchmark: commit latency of a real 3-agent group idle and under each attack of
tests/integration/test_raft_port.py, the attacked agent's memory, and the largest legitimate
Raft frame (what transport.MAX_FRAME is chosen from).

Attacks (bench/raft_attacks.py, run in their own process so they never share a GIL with the
commit loop; sources are members' addresses, the hard case):
  stream  one connection to a follower declaring a 2 GiB frame and streaming its body,
          reopened whenever the agent closes it;
  burst   100 connections of 4 MiB each to the leader (half one declared 4 MiB frame, half
          4000-byte frames that do not decrypt), a new burst as soon as one ends;
  flood   500 connections opened and held on the leader, each one the agent closes reopened.
For each: `--commits` no-op commits (POST /v1/releases of the version the group runs) through
the attacked agent idle and as many under attack, in `--blocks` alternating rounds (a change of
the machine's load hits both sides alike), latency measured client-side; the attacked agent's
VmRSS before and at its highest; every member's term and leader, sampled every 0.5 s.

Frames: three GroupNodes in this process (the agent's Raft configuration and transport); the
largest declared frame length the transports accepted while entries of the default (64 KiB) and
the largest allowed (256 KiB) manifest size replicate steadily, concurrently and to a member
that lagged, and while a member catches up by snapshot from a 200 KiB state.

Usage: .venv/bin/python bench/raft_port.py [--commits 1000] [--blocks 10] [--skip-frames] [--skip-attacks]
Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.raft_attacks import CommitLoop, Watch, pct, proc_kib  # noqa: E402
from scripts.localfleet import Fleet, Host  # noqa: E402

VERSION = "2.4"


# -- attacks on a real group -------------------------------------------------------------------------

def start_attack(kind: str, target: Host, sources: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO / "bench" / "raft_attacks.py"), kind,
                             "--target", f"{target.ip}:{target.fleet.raft_port}", "--source", ",".join(sources)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def measure(fleet: Fleet, kind: str, target: Host, sources: list[str], commits: int, blocks: int) -> dict[str, Any]:
    """`blocks` rounds of commits/blocks idle then as many under attack (a fresh attacker each
    round), so a change in the machine's load hits both sides alike."""
    leader = fleet.leader()
    assert leader is not None
    before = {h.id: h.status()["node"] for h in fleet.hosts}
    pid = target.proc.pid
    rss_before = proc_kib(pid)
    watch = Watch(pid, {h.id: (lambda h=h: h.status()["node"]) for h in fleet.hosts})
    watch.start()
    idle, fire = CommitLoop(target.post, VERSION), CommitLoop(target.post, VERSION)
    counters: list[dict[str, Any]] = []
    try:
        for _ in range(blocks):
            idle.run(commits // blocks)
            proc = start_attack(kind, target, sources)
            fleet.pids.add(proc.pid)
            try:
                time.sleep(1.0)
                fire.run(commits // blocks)
            finally:
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=60)
            counters.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
    finally:
        watch.stop()
    after = {h.id: h.status()["node"] for h in fleet.hosts}
    terms = watch.terms() | {d["term"] for d in after.values()}
    total = {k: sum(c[k] for c in counters) for k in counters[0] if k not in ("attack", "error")}
    total["errors"] = [c["error"] for c in counters if c.get("error")]
    return {
        "attack": kind, "target": target.id, "role": before[target.id]["role"],
        "idle": idle.latencies(), "fire": fire.latencies(),
        "failed": sum(1 for s in fire.statuses() + idle.statuses() if s != 200),
        "rss_before_kib": rss_before, "rss_growth_kib": max(watch.rss_kib) - rss_before,
        "unmoved": terms == {before[leader.id]["term"]} and watch.leading() == {leader.id} and not watch.errors,
        "commit_moved": after[target.id]["commit_index"] - before[target.id]["commit_index"],
        "counters": total, "load": os.getloadavg()[0],
    }


def run_attacks(base: Path, commits: int, blocks: int) -> list[dict[str, Any]]:
    fleet = Fleet(base, 3)
    try:
        fleet.start_mirror()
        fleet.preinstall("2.3")
        fleet.build_release(VERSION)
        fleet.start()
        assert fleet.hosts[0].post("/v1/releases", {"version": VERSION}).status_code == 201
        assert fleet.wait_release(("current", "rolled_back", "aborted"))["state"] == "current"
        leader = fleet.leader()
        assert leader is not None
        follower, other = [h for h in fleet.hosts if h is not leader]
        followers = [follower.ip, other.ip]
        rows = []
        for kind, target, sources in (("stream", follower, [other.ip]), ("burst", leader, followers),
                                      ("flood", leader, followers)):
            rows.append(measure(fleet, kind, target, sources, commits, blocks))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("idle", "fire")}), flush=True)
        return rows
    finally:
        fleet.close()


# -- the largest legitimate frame ---------------------------------------------------------------------

def text(nbytes: int) -> str:
    """Manifest-sized text that compresses as little as a manifest can (base64 of random bytes)."""
    return base64.b64encode(os.urandom(nbytes * 3 // 4)).decode()


def measure_frames(base: Path) -> list[tuple[str, int]]:
    from quorum_rollout.group import GroupNode

    subnet = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"
    addresses = [f"{subnet}.{i}:7140" for i in (2, 3, 4)]
    secret = os.urandom(48)
    nodes = [GroupNode(node_id=a, group="frames", address=a, peers=[p for p in addresses if p != a], secret=secret,
                       data_dir=str(base / a), on_change=lambda: None, compaction_entries=20) for a in addresses]
    transports = [n._SyncObj__transport for n in nodes]  # type: ignore[attr-defined]

    def wait(predicate: Callable[[], Any], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit("frames: timed out")
            time.sleep(0.02)

    def propose(leader: GroupNode, size: int) -> None:
        leader.propose("manifest", artifact={"manifest": text(size)} if size else {}, timeout=20)

    def lagging(leader: GroupNode, member: GroupNode, work: Callable[[], None], pause: float = 5.0) -> None:
        member.doTick = lambda _t=0.0: time.sleep(0.05)  # type: ignore[method-assign]  # stops its Raft
        try:
            work()
            time.sleep(pause)  # past connectionTimeout: the link drops, the leader resends on reconnect
        finally:
            del member.doTick
        wait(lambda: member.raft_status()["commit_index"] >= leader.raft_status()["commit_index"])

    results = []
    try:
        wait(lambda: sum(n.is_leader() for n in nodes) == 1)
        leader = next(n for n in nodes if n.is_leader())
        member = next(n for n in nodes if n is not leader)

        def scenario(name: str, run: Callable[[], None]) -> None:
            for t in transports:
                t.largest_frame = 0
            run()
            results.append((name, max(t.largest_frame for t in transports)))
            print(f"frames: {name}: {results[-1][1]} bytes", flush=True)

        def concurrent(size: int) -> None:
            threads = [threading.Thread(target=lambda: [propose(leader, size) for _ in range(5)]) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        snapshot = "snapshot of a 200 KiB state, to a member that lagged 5 s"
        for node in nodes:  # what a snapshot of the largest group state weighs (~200 KiB)
            node.state = {**node.state, "bench_padding": text(200 << 10)}
        scenario(snapshot, lambda: lagging(leader, member, lambda: [propose(leader, 0) for _ in range(60)]))
        for size in (64 << 10, 256 << 10):
            label = f"{size >> 10} KiB entries"
            scenario(f"{label}, one at a time", lambda s=size: [propose(leader, s) for _ in range(10)])
            scenario(f"{label}, 8 proposers at once", lambda s=size: concurrent(s))
            scenario(f"{label} and small ones, to a member that lagged 5 s",
                     lambda s=size: lagging(leader, member, lambda: [propose(leader, s if i % 2 else 0)
                                                                     for i in range(30)]))
        dumps = {n.node_id: (base / n.node_id / "raft.dump").stat().st_size for n in nodes
                 if (base / n.node_id / "raft.dump").exists()}
        print(f"frames: dump files {dumps}", flush=True)
    finally:
        for node in nodes:
            node.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=1000, help="commits per attack idle, and as many under it")
    ap.add_argument("--blocks", type=int, default=10, help="idle/attack rounds the commits are split into")
    ap.add_argument("--skip-frames", action="store_true")
    ap.add_argument("--skip-attacks", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qr-bench-raft-") as tmp:
        frames = [] if args.skip_frames else measure_frames(Path(tmp) / "frames")
        rows = [] if args.skip_attacks else run_attacks(Path(tmp) / "fleet", args.commits, args.blocks)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    if rows:
        print("| attack | attacked agent | commits ok (idle + attack) | idle p50 / p99 | under attack p50 / p99 "
              "| p99 ratio | RSS before | RSS growth (peak) | leader, term unchanged |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ratio = pct(r["fire"], 99) / pct(r["idle"], 99)
            print(f"| {r['attack']} | {r['target']} ({r['role']}) | {len(r['fire']) + len(r['idle']) - r['failed']}"
                  f"/{len(r['fire']) + len(r['idle'])} "
                  f"| {pct(r['idle'], 50) * 1000:.1f} / {pct(r['idle'], 99) * 1000:.1f} ms "
                  f"| {pct(r['fire'], 50) * 1000:.1f} / {pct(r['fire'], 99) * 1000:.1f} ms | {ratio:.2f}x"
                  f"{'' if ratio <= 2 else ' (over 2x)'} | {r['rss_before_kib'] / 1024:.1f} MiB "
                  f"| {r['rss_growth_kib'] / 1024:.1f} MiB | {'yes' if r['unmoved'] else 'NO'} |")
        print("\nattack counters:", json.dumps([r["counters"] for r in rows]))
        print("load average after each:", [round(r["load"], 1) for r in rows])
    if frames:
        print("\n| legitimate traffic | largest frame |\n|---|---|")
        for name, size in frames:
            print(f"| {name} | {size / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
