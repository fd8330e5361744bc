#!/usr/bin/env python3
"""Where an agent's time goes during the headline release: py-spy (an all-thread sampler,
`pip install py-spy`; it needs ptrace rights, e.g. root) attached to the leader and to one member
for the whole release, wall-clock samples (idle included), summarised per thread and per the
innermost quorum_rollout frames.

Usage: .venv/bin/python bench/profile.py [--hosts 30] [--payload-mb 20] [--rate 100] [--top 12]
Prints, per agent, the samples of each busy thread and its heaviest stacks (10 ms per sample at
the default rate).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.headline import prepared  # noqa: E402


def summarise(raw: Path, top: int) -> list[str]:
    threads: collections.Counter[str] = collections.Counter()
    stacks: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = frames[0].split(": ", 1)[-1] if ": " in frames[0] else frames[0]
        ours = [f.split(" (")[0] for f in frames if "quorum_rollout" in f]
        key = ";".join(ours[-3:]) + " | " + frames[-1].split(" (")[0]
        if "wait" in frames[-1].split(" (")[0].lower() or "select" in frames[-1] or "poll" in frames[-1]:
            key = "(waiting) " + key
        threads[name] += int(count)
        stacks[name][key] += int(count)
    out = []
    for name, total in threads.most_common():
        busy = {k: v for k, v in stacks[name].items() if not k.startswith("(waiting)")}
        if not busy:
            continue
        out.append(f"  {name}: {total} samples, {sum(busy.values())} not waiting")
        out += [f"    {v:6d}  {k[:150]}" for k, v in sorted(busy.items(), key=lambda kv: -kv[1])[:top]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=30)
    ap.add_argument("--payload-mb", type=float, default=20)
    ap.add_argument("--rate", type=int, default=100, help="samples per second (default 100)")
    ap.add_argument("--top", type=int, default=12, help="stacks shown per thread (default 12)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="qr-profile-") as tmp:
        base = Path(tmp)
        fleet, _archive = prepared(base, args.hosts, int(args.payload_mb * (1 << 20)))
        try:
            fleet.start()
            leader = fleet.leader()
            member = next(h for h in fleet.hosts[len(fleet.hosts) // 2:] if h is not leader)
            spies = {}
            for host, role in ((leader, "leader"), (member, "member")):
                out = base / f"{role}.txt"
                spies[role] = (host, out, subprocess.Popen(
                    [spy, "record", "-p", str(host.proc.pid), "--idle", "--threads", "-r", str(args.rate), "-f", "raw",
                     "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                fleet.pids.add(spies[role][2].pid)
            time.sleep(1.0)  # py-spy attaches before the release starts
            t0 = time.monotonic()
            assert fleet.hosts[0].post("/v1/releases", {"version": "2.4"}).status_code == 201
            done = fleet.wait_release(("current", "rolled_back"), timeout=600)
            wall = time.monotonic() - t0
            for _host, _out, proc in spies.values():
                proc.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
                proc.wait(timeout=60)
            print(f"release {done['id']} {done['state']} in {wall:.1f} s ({args.hosts} hosts, {args.payload_mb:g} MiB)")
            for role, (host, out, _proc) in spies.items():
                print(f"\n{role} {host.id}:")
                print("\n".join(summarise(out, args.top)))
        finally:
            fleet.close()


if __name__ == "__main__":
    main()
