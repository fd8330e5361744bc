#!/usr/bin/env python3
"""The seed's scenario: congested zone downlinks and a capped origin.

Z zones (3) x H hosts (10), one group per zone (intel-z1, intel-z2, ...), one release of an
S-byte payload (200 MiB by default, in minutes; `--payload-mb 1024` for the seed's 1 GiB, which
needs ~65 GiB free under /var/tmp: each run holds ~2 GiB per host and is removed before the next). One origin mirror for
all zones, its egress capped at U bytes/s (the origin uplink); every byte from the origin to a
zone also passes that zone's downlink, capped at D bytes/s and shared by the zone's hosts
(mirror.py --zone: a token bucket per zone, fed by every connection into that zone). Traffic
between hosts of one zone stays on the zone's own network and is not capped; nothing crosses
between zones.

  A. quorum.rollout: the three groups released at once (`POST /v1/releases` to each), until
     every group is `current`;
  B. Ansible `serial: "10%"` over the whole inventory (zones in order, as inventory groups
     list them), every host downloading from the origin through its zone's link.

Reported: time until every host runs the release, origin egress, and per zone from the mirror's
timeline (bytes into the zone every 0.25 s): the peak share of the downlink the rollout used
(over 1 s windows), how long it held the link at >= 90 %, and the bandwidth it left to the
services over the rollout (mean of D minus what the rollout used).

Usage: .venv/bin/python bench/zones.py [--zones 3] [--hosts 10] [--payload-mb 200] [--downlink-mb 25]
       [--uplink-mb 50] [--only A,B]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.localfleet import DEMO_FILES, Fleet, wait_for  # noqa: E402

MiB = 1 << 20


def fleets(base: Path, zones: int, hosts: int, payload: int, downlink: int, uplink: int) -> list[Fleet]:
    out: list[Fleet] = []
    try:
        for z in range(1, zones + 1):
            kw = {"mirror_of": out[0]} if out else {}
            out.append(Fleet(base / f"z{z}", hosts, group=f"intel-z{z}", mirror_path=f"/zone/z{z}",
                             step_deadline=600.0, **kw))
        out[0].start_mirror(uplink, zones={f"z{z}": downlink for z in range(1, zones + 1)},
                            timeline=base / "timeline.jsonl")
        for f in out:
            f.preinstall("2.3")
        out[0].build_release("2.4", payload_bytes=payload)
        return out
    except BaseException:
        close(out)
        raise


def close(fs: list[Fleet]) -> None:
    for f in reversed(fs):  # the mirror's owner last
        f.close()


def link_use(base: Path, t0: float, t1: float, zones: int, downlink: int) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (base / "timeline.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if t0 - 0.5 <= r["t"] <= t1 + 0.5]
    out = []
    for z in range(1, zones + 1):
        key = f"z{z}"
        peak, busy = 0.0, 0.0
        for i, r in enumerate(rows):
            j = next((k for k in range(i, len(rows)) if rows[k]["t"] >= r["t"] + 1.0), None)
            if j is None:
                break
            rate = (rows[j][key] - r[key]) / (rows[j]["t"] - r["t"])
            peak = max(peak, rate / downlink)
        for a, b in zip(rows, rows[1:]):
            if (b[key] - a[key]) / max(b["t"] - a["t"], 1e-6) >= 0.9 * downlink:
                busy += b["t"] - a["t"]
        used = (rows[-1][key] - rows[0][key]) if rows else 0
        wall = max(t1 - t0, 1e-6)
        out.append({"peak": peak, "saturated_s": busy, "left": 1 - used / (downlink * wall), "bytes": used})
    return out


def run_agents(base: Path, args: argparse.Namespace) -> dict:
    fs = fleets(base, args.zones, args.hosts, int(args.payload_mb * MiB), int(args.downlink_mb * MiB),
                int(args.uplink_mb * MiB))
    try:
        for f in fs:
            f.start()
        before = sum(fs[0].mirror_bytes().values())
        t0 = time.time()
        for f in fs:
            assert f.hosts[0].post("/v1/releases", {"version": "2.4"}).status_code == 201
        done = {}
        for f in fs:
            done[f.group] = f.wait_release(("current", "rolled_back"), timeout=3600)
        t1 = max(max(e["time"] for e in f.hosts[0].status()["state"]["history"] if e["op"] == "host_done")
                 for f in fs)
        for g, r in done.items():
            assert r["state"] == "current", (g, r["failure"])
        return {"wall_s": t1 - t0, "egress": sum(fs[0].mirror_bytes().values()) - before,
                "zones": link_use(base, t0, t1, args.zones, int(args.downlink_mb * MiB))}
    finally:
        close(fs)


def run_ansible(base: Path, args: argparse.Namespace) -> dict:
    fs = fleets(base, args.zones, args.hosts, int(args.payload_mb * MiB), int(args.downlink_mb * MiB),
                int(args.uplink_mb * MiB))
    try:
        archive = fs[0].base / "build" / "demo-app-2.4.tar.gz"
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        inv = base / "inventory.ini"
        lines = []
        for z, f in enumerate(fs, 1):
            lines.append(f"[zone{z}]")
            lines += [f"z{z}-{h.id} ansible_connection=local ansible_python_interpreter={sys.executable} "
                      f"host_dir={h.dir} root={h.root} ip={h.ip} "
                      f"mirror=http://{f.mirror_ip}:{f.mirror_port}/zone/z{z}" for h in f.hosts]
        lines.append("[fleet:children]")
        lines += [f"zone{z}" for z in range(1, len(fs) + 1)]
        inv.write_text("\n".join(lines) + "\n")
        before = sum(fs[0].mirror_bytes().values())
        t0 = time.time()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv), "-f", "10",
             str(REPO / "bench" / "baseline" / "rolling.yml"),
             "-e", json.dumps({"version": "2.4", "sha256": sha, "serial_size": "10%",
                               "democtl": str(DEMO_FILES / "democtl"), "app_port": fs[0].app_port,
                               "cpu": fs[0].cpu})],
            capture_output=True, text=True, env={**fs[0].env, "ANSIBLE_HOST_KEY_CHECKING": "false"}, check=False)
        t1 = time.time()
        if proc.returncode:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        for f in fs:
            for h in f.hosts:
                wait_for(lambda h=h: h.health()["version"] == "2.4", 10, f"{h.id} on 2.4")
        return {"wall_s": t1 - t0, "egress": sum(fs[0].mirror_bytes().values()) - before,
                "zones": link_use(base, t0, t1, args.zones, int(args.downlink_mb * MiB))}
    finally:
        close(fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zones", type=int, default=3, help="zones, one group each (default 3)")
    ap.add_argument("--hosts", type=int, default=10, help="hosts per zone (default 10)")
    ap.add_argument("--payload-mb", type=float, default=200, help="release payload, MiB (default 200)")
    ap.add_argument("--downlink-mb", type=float, default=25, help="each zone's downlink, MiB/s (default 25)")
    ap.add_argument("--uplink-mb", type=float, default=50, help="the origin's uplink, MiB/s (default 50)")
    ap.add_argument("--only", default="A,B", help="which runs: A (quorum.rollout), B (Ansible) (default A,B)")
    args = ap.parse_args()
    runners = {"A": ("quorum.rollout", run_agents), "B": ('Ansible serial: "10%"', run_ansible)}
    results = {}
    for k in args.only.split(","):
        # One directory per run, removed before the next: at 1 GiB a run holds ~2 GiB per host.
        with tempfile.TemporaryDirectory(prefix=f"qr-zones-{k}-", dir="/var/tmp") as tmp:
            results[k] = runners[k][1](Path(tmp), args)
        print(k, json.dumps(results[k]), flush=True)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}: {args.zones} zones x {args.hosts} hosts, "
          f"{args.payload_mb:g} MiB release, zone downlink {args.downlink_mb:g} MiB/s, origin uplink "
          f"{args.uplink_mb:g} MiB/s\n")
    print("| run | every host on the release | origin egress | zone downlink: peak share | at >= 90 % for "
          "| left to services (mean) |")
    print("|---|---|---|---|---|---|")
    for k, r in results.items():
        z = r["zones"]
        peak = " / ".join(f"{x['peak'] * 100:.0f} %" for x in z)
        busy = " / ".join(f"{x['saturated_s']:.0f} s" for x in z)
        left = " / ".join(f"{x['left'] * 100:.0f} %" for x in z)
        print(f"| {runners[k][0]} | {r['wall_s']:.1f} s | {r['egress'] / MiB:.0f} MiB "
              f"({r['egress'] / (args.payload_mb * MiB):.1f} copies) | {peak} | {busy} | {left} |")
    if "A" in results and "B" in results:
        print(f"\nRatio: {results['B']['wall_s'] / results['A']['wall_s']:.1f}x faster, "
              f"{results['B']['egress'] / max(results['A']['egress'], 1):.1f}x less origin egress.")


if __name__ == "__main__":
    main()
