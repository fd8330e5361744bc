#!/usr/bin/env python3
"""The headline benchmark: one group of N hosts (30), a release with an S-byte payload (20 MiB),
batches of one tenth, the same demo service, restart command and health check, run side by side
on the same machine, interleaved A/B/F, A/B/F, ...:

  A. quorum.rollout: N agent processes (real Raft over TCP), `POST /v1/releases` until `current`;
  B. Ansible: `ansible-playbook bench/baseline/rolling.yml` with `serial: "10%"` (every host
     downloads from the mirror, unpacks, switches `current`, restarts, probes /health);
  F. the floor: the same job with no coordination at all, in one Python process: the archive
     downloaded and hashed once, then batch after batch, its hosts in parallel, each unpacked
     (`install.install_release`), switched, restarted with the same command and probed every
     10 ms until /health answers the new version. Nothing can do the job faster on this machine.

Reported per run: wall time, mirror egress; for A also where a host's step goes (fetch+unpack,
restart+checks, commit of the report), from the agents' own log lines. Ratios come from one run.

Usage: .venv/bin/python bench/headline.py [--hosts 30] [--payload-mb 20] [--rounds 2] [--only A,B,F]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quorum_rollout import install  # noqa: E402
from scripts.localfleet import DEMO_FILES, Fleet, health  # noqa: E402


def ts(value: str | float) -> float:
    """A log line's ISO time or a history entry's epoch seconds, as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def prepared(base: Path, n: int, payload: int, **kw) -> tuple[Fleet, Path]:
    # One CPU scheduling group for all agents: each host's background transfer yields to the
    # others' critical path, as on separate machines (docs/benchmarks.md, headline).
    fleet = Fleet(base, n, batch_fraction=0.1, one_sched_group=True, **kw)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    archive = fleet.build_release("2.4", payload_bytes=payload)
    return fleet, archive


def run_agents(base: Path, n: int, payload: int) -> dict:
    fleet, _archive = prepared(base, n, payload)
    try:
        fleet.start()
        before = sum(fleet.mirror_bytes().values())
        term0 = fleet.hosts[0].status()["node"]["term"]
        t0 = time.monotonic()
        wall0 = time.time()
        assert fleet.hosts[0].post("/v1/releases", {"version": "2.4"}).status_code == 201
        done = fleet.wait_release(("current", "rolled_back"), timeout=600)
        wall = time.monotonic() - t0
        assert done["state"] == "current", done["failure"]
        egress = sum(fleet.mirror_bytes().values()) - before
        elections = max(h.status()["node"]["term"] for h in fleet.hosts) - term0  # under load: should be 0
        history = fleet.hosts[0].status()["state"]["history"]
        reported = {e["detail"].split()[0]: ts(e["time"]) for e in history if e["op"] == "host_done"}
        fetch, restart, commit, batch_walls = [], [], [], []
        starts = {}
        for host in fleet.hosts:
            mine = {name: [e for e in host.events(name) if e.get("release") == done["id"]]
                    for name in ("step_started", "activated", "host_updated")}
            if not mine["step_started"] or not mine["host_updated"]:
                continue
            t_start, t_ok = ts(mine["step_started"][0]["ts"]), ts(mine["host_updated"][0]["ts"])
            t_act = ts(mine["activated"][0]["ts"]) if mine["activated"] else t_start
            starts[host.id] = t_start
            fetch.append(t_act - t_start)
            restart.append(t_ok - t_act)
            if host.id in reported:
                commit.append(reported[host.id] - t_ok)
        for batch in done["batches"]:
            if all(h in starts and h in reported for h in batch):
                batch_walls.append(max(reported[h] for h in batch) - min(starts[h] for h in batch))
        first_start = min(starts.values()) - wall0 if starts else float("nan")
        return {"wall_s": wall, "egress": egress, "fetch_s": median(fetch), "restart_s": median(restart),
                "commit_s": median(commit), "batch_s": batch_walls, "first_step_after_s": first_start,
                "elections": elections}
    finally:
        fleet.close()


def run_ansible(base: Path, n: int, payload: int) -> dict:
    fleet, archive = prepared(base, n, payload)
    try:
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        inv = base / "inventory.ini"
        lines = ["[fleet]"] + [f"{h.id} ansible_connection=local ansible_python_interpreter={sys.executable} "
                               f"host_dir={h.dir} root={h.root} ip={h.ip}" for h in fleet.hosts]
        inv.write_text("\n".join(lines) + "\n")
        mirror = f"http://{fleet.mirror_ip}:{fleet.mirror_port}"
        before = sum(fleet.mirror_bytes().values())
        t0 = time.monotonic()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "-f", "10",
             str(REPO / "bench" / "baseline" / "rolling.yml"),
             "-e", json.dumps({"version": "2.4", "sha256": sha, "mirror": mirror, "serial_size": "10%",
                               "democtl": str(DEMO_FILES / "democtl"), "app_port": fleet.app_port,
                               "cpu": fleet.cpu})],
            capture_output=True, text=True, env={**fleet.env, "ANSIBLE_HOST_KEY_CHECKING": "false"}, check=False)
        wall = time.monotonic() - t0
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        for h in fleet.hosts:
            assert h.current() == "2.4" and h.health()["version"] == "2.4", h.id
        return {"wall_s": wall, "egress": sum(fleet.mirror_bytes().values()) - before}
    finally:
        fleet.close()


def run_floor(base: Path, n: int, payload: int) -> dict:
    """The same job without coordination: download + hash once, then each batch's hosts in
    parallel: unpack, switch, restart, poll /health every 10 ms until it answers the new version."""
    fleet, _archive = prepared(base, n, payload)
    try:
        size = max(1, round(n * 0.1))
        batches = [fleet.hosts[i:i + size] for i in range(0, n, size)]
        url = f"http://{fleet.mirror_ip}:{fleet.mirror_port}/demo-app/2.4/demo-app-2.4.tar.gz"
        local = base / "floor.tar.gz"

        def one(host) -> float:
            t = time.monotonic()
            install.install_release(host.root, "2.4", local)
            install.activate(host.root, "2.4")
            subprocess.run([str(DEMO_FILES / "democtl"), "restart", str(host.root), host.ip, str(fleet.app_port),
                            fleet.cpu], check=True, env=fleet.env)
            while True:
                try:
                    if health(host.ip, fleet.app_port, timeout=1)[1].get("version") == "2.4":
                        break
                except OSError:
                    pass
                time.sleep(0.01)
            return time.monotonic() - t

        before = sum(fleet.mirror_bytes().values())
        t0 = time.monotonic()
        digest = hashlib.sha256()
        with requests.get(url, stream=True, timeout=30) as resp, open(local, "wb") as out:
            resp.raise_for_status()
            for chunk in resp.iter_content(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        download = time.monotonic() - t0
        per_host, batch_walls = [], []
        with concurrent.futures.ThreadPoolExecutor(size) as pool:
            for batch in batches:
                tb = time.monotonic()
                per_host += list(pool.map(one, batch))
                batch_walls.append(time.monotonic() - tb)
        wall = time.monotonic() - t0
        return {"wall_s": wall, "egress": sum(fleet.mirror_bytes().values()) - before, "download_s": download,
                "host_s": median(per_host), "batch_s": batch_walls}
    finally:
        fleet.close()


RUNNERS = {"A": run_agents, "B": run_ansible, "F": run_floor}
NAMES = {"A": "quorum.rollout", "B": 'Ansible serial: "10%"', "F": "floor (no coordination)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=30, help="hosts in the group (default 30)")
    ap.add_argument("--payload-mb", type=float, default=20, help="random payload in the release, MiB (default 20)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of A, B, F (default 2)")
    ap.add_argument("--only", default="A,B,F", help="which runs, e.g. A,F (default A,B,F)")
    args = ap.parse_args()
    payload = int(args.payload_mb * (1 << 20))
    kinds = args.only.split(",")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="qr-headline-") as tmp:
        for r in range(args.rounds):
            for k in kinds:
                res = RUNNERS[k](Path(tmp) / f"{k}{r}", args.hosts, payload)
                results[k].append(res)
                print(f"round {r + 1} {k}: " + json.dumps({key: (round(v, 3) if isinstance(v, float) else
                                                                 [round(x, 2) for x in v] if isinstance(v, list)
                                                                 else v) for key, v in res.items()}), flush=True)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}, {args.hosts} hosts, {args.payload_mb:g} MiB payload, "
          f"batches of one tenth, {args.rounds} rounds, load at start {load0:.1f}\n")
    print("| run | wall (each round) | median | mirror egress (median) | vs floor | Ansible / this |")
    print("|---|---|---|---|---|---|")
    floor = median([r["wall_s"] for r in results.get("F", [])]) if "F" in results else float("nan")
    ansible = median([r["wall_s"] for r in results.get("B", [])]) if "B" in results else float("nan")
    for k in kinds:
        walls = [r["wall_s"] for r in results[k]]
        med = median(walls)
        egress = median([r["egress"] for r in results[k]]) / (1 << 20)
        print(f"| {NAMES[k]} | {' / '.join(f'{w:.1f} s' for w in walls)} | {med:.1f} s | {egress:.1f} MiB "
              f"| {med / floor:.2f}x | {ansible / med:.2f}x |")
    if "A" in results:
        a = results["A"]
        print(f"\nquorum.rollout per host step (medians over rounds): fetch+unpack "
              f"{median([r['fetch_s'] for r in a]):.3f} s, restart+checks {median([r['restart_s'] for r in a]):.3f} s, "
              f"report commit {median([r['commit_s'] for r in a]):.3f} s; first step "
              f"{median([r['first_step_after_s'] for r in a]):.2f} s after the release command; batch walls "
              f"{[round(x, 2) for x in a[0]['batch_s']]}; elections during the releases "
              f"{[r['elections'] for r in a]}")
    if "F" in results:
        f = results["F"]
        print(f"floor: download+hash {median([r['download_s'] for r in f]):.3f} s, host step "
              f"{median([r['host_s'] for r in f]):.3f} s, batch walls {[round(x, 2) for x in f[0]['batch_s']]}")


if __name__ == "__main__":
    main()
