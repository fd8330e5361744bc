#!/usr/bin/env python3
"""Distribution benchmark: one S-byte release to an N-host group, every transfer capped at B bytes/s.

  A. quorum.rollout: N real agents, each capped at B (download and upload); the mirror capped
     at B too. The leader downloads once; members fetch pipelined from their upstream.
     Measured: release start -> every member holds the verified file; mirror egress; agent
     RSS growth (VmHWM after - VmRSS before) while the file moves through it.
  B. baseline: every host downloads from the mirror itself (what a plain rolling playbook's
     get_url does), all at once, the mirror capped at B.

Usage: .venv/bin/python bench/distribution.py [--size-mb 200] [--rate-mb 12] [--hosts 10]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import platform
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.localfleet import Fleet, Host, wait_for  # noqa: E402


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_agents(base: Path, n: int, size: int, rate: int) -> dict:
    fleet = Fleet(base, n, extra={"artifacts": {"bandwidth_limit": rate}}, step_deadline=600)
    try:
        fleet.start_mirror(rate=rate)
        fleet.preinstall("2.3")
        archive = fleet.build_release("2.4", payload_bytes=size)
        fleet.start()
        rss_before = {h.id: proc_kib(h.proc.pid, "VmRSS") for h in fleet.hosts if h.proc}
        before = sum(fleet.mirror_bytes().values())
        t0 = time.monotonic()
        assert fleet.hosts[0].post("/v1/releases", {"version": "2.4"}).status_code == 201

        def all_hold() -> bool:
            release = fleet.release_state()
            return bool(release) and len(release["holders"]) == n

        wait_for(all_hold, 3600, "every host holds the artifact", interval=0.1)
        distribution = time.monotonic() - t0
        done = fleet.wait_release(("current", "rolled_back"), timeout=3600)
        total = time.monotonic() - t0
        assert done["state"] == "current", done["failure"]
        growth = {h.id: proc_kib(h.proc.pid, "VmHWM") - rss_before[h.id] for h in fleet.hosts if h.proc}
        return {"distribution_s": distribution, "release_s": total,
                "egress": sum(fleet.mirror_bytes().values()) - before, "artifact": archive.stat().st_size,
                "rss_growth_max_mib": max(growth.values()) / 1024}
    finally:
        fleet.close()


def run_baseline(base: Path, n: int, size: int, rate: int) -> dict:
    fleet = Fleet(base, n)
    try:
        fleet.start_mirror(rate=rate)
        archive = fleet.build_release("2.4", payload_bytes=size)
        url = f"http://{fleet.mirror_ip}:{fleet.mirror_port}/demo-app/2.4/{archive.name}"
        expected = hashlib.sha256(archive.read_bytes()).hexdigest()

        def fetch(host: Host) -> float:
            digest = hashlib.sha256()
            dest = host.dir / archive.name
            host.dir.mkdir(parents=True, exist_ok=True)
            with requests.get(url, stream=True, timeout=60) as resp, open(dest, "wb") as fh:
                for chunk in resp.iter_content(65536):
                    digest.update(chunk)
                    fh.write(chunk)
            assert digest.hexdigest() == expected
            return time.monotonic()

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            ends = list(pool.map(fetch, fleet.hosts))
        return {"distribution_s": max(ends) - t0, "egress": sum(fleet.mirror_bytes().values()),
                "artifact": archive.stat().st_size}
    finally:
        fleet.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--rate-mb", type=float, default=12)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    size, rate = int(args.size_mb * 2**20), int(args.rate_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="qr-dist-") as tmp:
        a = run_agents(Path(tmp) / "agents", args.hosts, size, rate)
        print("agents:", a, flush=True)
        b = None if args.skip_baseline else run_baseline(Path(tmp) / "baseline", args.hosts, size, rate)
        print("baseline:", b, flush=True)
    s_over_b = a["artifact"] / rate
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}; S = {a['artifact'] / 2**20:.0f} MiB, "
          f"B = {args.rate_mb:g} MiB/s, S/B = {s_over_b:.1f} s, {args.hosts} hosts\n")
    print("| | every host holds the verified file | x S/B | mirror egress (copies of S) "
          "| whole release to `current` | agent RSS growth (max) |")
    print("|---|---|---|---|---|---|")
    print(f"| quorum.rollout (pipelined peers) | {a['distribution_s']:.1f} s | {a['distribution_s'] / s_over_b:.2f} "
          f"| {a['egress'] / a['artifact']:.2f} | {a['release_s']:.1f} s | {a['rss_growth_max_mib']:.1f} MiB |")
    if b:
        print(f"| every host from the mirror | {b['distribution_s']:.1f} s | {b['distribution_s'] / s_over_b:.2f} "
              f"| {b['egress'] / b['artifact']:.2f} | - | - |")
        print(f"\nratio (baseline / quorum.rollout): {b['distribution_s'] / a['distribution_s']:.1f}x faster, "
              f"{b['egress'] / max(a['egress'], 1):.1f}x less mirror egress")


if __name__ == "__main__":
    main()
