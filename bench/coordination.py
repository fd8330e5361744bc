#!/usr/bin/env python3
"""Coordination benchmark: quorum.rollout vs a plain Ansible `serial` rolling playbook.

For each group size N it releases 2.3 -> 2.4 on a real local fleet twice, side by side on
the same hosts, the same demo service, the same restart command and the same health check:

  A. quorum.rollout: N agent processes (real Raft over TCP), one host per batch;
  B. baseline: `ansible-playbook bench/baseline/rolling.yml` with `serial: 1` (one host per batch),
     each host downloading from the mirror, unpacking, switching `current`, restarting, probing.

Measured:
- per-batch coordination overhead: end of batch k's last step (agent: the report proposed;
  Ansible: the last task of the batch finished) -> first step of batch k+1 started, p50/p99;
- total wall time and mirror egress (bytes served) per run;
- failover: leader SIGKILLed while rolling -> a new leader, and -> the next committed transition.

Usage: .venv/bin/python bench/coordination.py [--sizes 3,10,30] [--skip-baseline]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.localfleet import DEMO_FILES, Fleet, wait_for  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_agents(base: Path, n: int) -> dict:
    fleet = Fleet(base, n, batch_fraction=1 / n)
    try:
        fleet.start_mirror()
        fleet.preinstall("2.3")
        fleet.build_release("2.4")
        fleet.start()
        before = sum(fleet.mirror_bytes().values())
        t0 = time.monotonic()
        assert fleet.hosts[0].post("/v1/releases", {"version": "2.4"}).status_code == 201
        done = fleet.wait_release(("current", "rolled_back"), timeout=600)
        wall = time.monotonic() - t0
        assert done["state"] == "current", done["failure"]
        egress = sum(fleet.mirror_bytes().values()) - before
        history = fleet.hosts[0].status()["state"]["history"]
        reported = {e["detail"].split()[0]: e["time"] for e in history if e["op"] == "host_done"}
        started = {}
        for host in fleet.hosts:
            events = [e for e in host.events("step_started") if e.get("release") == done["id"]]
            if events:
                started[host.id] = ts(events[0]["ts"])
        gaps = []
        for k in range(len(done["batches"]) - 1):
            last_report = max(reported[h] for h in done["batches"][k])
            first_start = min(started[h] for h in done["batches"][k + 1])
            gaps.append((first_start - last_report) * 1000)

        # Failover: a second release, leader SIGKILLed while rolling.
        fleet.build_release("2.5")
        assert fleet.hosts[0].post("/v1/releases", {"version": "2.5"}).status_code == 201
        wait_for(lambda: (r := fleet.release_state()) and r["state"] == "rolling" and r["batch"] >= 1, 120,
                 "rolling 2.5")
        leader = fleet.leader()
        survivor = next(h for h in fleet.hosts if h is not leader)
        t_kill = time.monotonic()
        leader.kill(signal.SIGKILL)
        new_leader_s = None
        while time.monotonic() - t_kill < 60:
            try:
                doc = survivor.status()
            except requests.RequestException:
                continue
            if doc["node"]["role"] == "leader" or (doc["node"]["leader"] not in (None, leader.id)):
                new_leader_s = time.monotonic() - t_kill
                break
            time.sleep(0.01)
        commit_s = None
        while time.monotonic() - t_kill < 60:
            try:
                resp = survivor.post("/v1/releases/current/pause")
            except requests.RequestException:
                continue
            if resp.status_code == 200:
                commit_s = time.monotonic() - t_kill
                break
            time.sleep(0.01)
        return {"wall_s": wall, "gaps_ms": gaps, "egress": egress, "new_leader_s": new_leader_s,
                "commit_after_kill_s": commit_s}
    finally:
        fleet.close()


def run_baseline(base: Path, n: int) -> dict:
    fleet = Fleet(base, n)
    try:
        fleet.start_mirror()
        fleet.preinstall("2.3")
        archive = fleet.build_release("2.4")
        sha = subprocess.run(["sha256sum", str(archive)], capture_output=True, text=True, check=True).stdout.split()[0]
        inv = base / "inventory.ini"
        lines = ["[fleet]"]
        for h in fleet.hosts:
            lines.append(f"{h.id} ansible_connection=local ansible_python_interpreter={sys.executable} "
                         f"host_dir={h.dir} root={h.root} ip={h.ip}")
        inv.write_text("\n".join(lines) + "\n")
        mirror = f"http://{fleet.mirror_ip}:{fleet.mirror_port}"
        before = sum(fleet.mirror_bytes().values())
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "-f", "10",
             str(REPO / "bench" / "baseline" / "rolling.yml"),
             "-e", json.dumps({"version": "2.4", "sha256": sha, "mirror": mirror, "serial_size": 1,
                               "democtl": str(DEMO_FILES / "democtl"), "app_port": fleet.app_port, "cpu": fleet.cpu})],
            capture_output=True, text=True, env={**fleet.env, "ANSIBLE_HOST_KEY_CHECKING": "false"}, check=False)
        wall = time.monotonic() - t0
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        egress = sum(fleet.mirror_bytes().values()) - before
        marks = {}
        for h in fleet.hosts:
            start, end = (float((h.dir / f"bench-{m}").read_text().split()[0]) for m in ("start", "end"))
            marks[h.id] = (start, end)
        order = sorted(marks, key=lambda k: marks[k][0])
        gaps = [(marks[order[i + 1]][0] - marks[order[i]][1]) * 1000 for i in range(len(order) - 1)]
        for h in fleet.hosts:
            assert h.current() == "2.4" and h.health()["version"] == "2.4"
        return {"wall_s": wall, "gaps_ms": gaps, "egress": egress}
    finally:
        fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="3,10,30")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="qr-bench-") as tmp:
        for n in sizes:
            agents = run_agents(Path(tmp) / f"agents-{n}", n)
            base = None if args.skip_baseline else run_baseline(Path(tmp) / f"baseline-{n}", n)
            rows.append((n, agents, base))
            print(f"N={n}: agents {json.dumps({k: v for k, v in agents.items() if k != 'gaps_ms'})}", flush=True)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}, one host per batch\n")
    print("| N | batch gap p50 / p99, quorum.rollout | batch gap p50 / p99, Ansible serial | gap ratio (p50) "
          "| wall, quorum.rollout | wall, Ansible | wall ratio | mirror egress (agent / Ansible) "
          "| kill -> new leader | kill -> next commit |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, a, b in rows:
        ga = f"{pct(a['gaps_ms'], 50):.0f} / {pct(a['gaps_ms'], 99):.0f} ms"
        gb = f"{pct(b['gaps_ms'], 50):.0f} / {pct(b['gaps_ms'], 99):.0f} ms" if b else "-"
        ratio = f"{pct(b['gaps_ms'], 50) / max(pct(a['gaps_ms'], 50), 0.001):.1f}x" if b else "-"
        wall = f"{b['wall_s'] / a['wall_s']:.2f}x" if b else "-"
        egress = f"{a['egress'] / 1024:.0f} KiB" + (f" / {b['egress'] / 1024:.0f} KiB" if b else "")
        print(f"| {n} | {ga} | {gb} | {ratio} | {a['wall_s']:.1f} s | {b['wall_s'] if b else float('nan'):.1f} s "
              f"| {wall} | {egress} | {a['new_leader_s']:.2f} s | {a['commit_after_kill_s']:.2f} s |")
    print("\nmedian gaps (ms):", [(n, round(statistics.median(a["gaps_ms"]), 1)) for n, a, _ in rows])


if __name__ == "__main__":
    main()
