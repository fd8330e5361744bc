#!/usr/bin/env python3
"""Delta releases benchmark: three releases of an S-byte uncompressed tar to a real N-agent group,
published with a chunk index (`quorum-rollout sign --chunks`) and, for comparison, without one
(the whole file), in one run:

  2.4  a new payload (random bytes: nothing to reuse, and nothing for zstd to save)
  2.5  the same with 5 % of its bytes rewritten in 4 clustered regions
  2.6  a rebuild of 2.5: identical content, a new tar (other mtimes, VERSION file)

Measured per release: bytes the mirror served (index and chunks, or the file), time from
POST /v1/releases to `current`, the leader's reassembly rate (the agent's `chunks_fetched` event: size /
seconds, local chunks copied and re-hashed, missing ones fetched), and the leader agent's RSS
growth over the run (VmHWM after - VmRSS before the first release), and the bytes the agents served
each other over the zone link (their `peer_upload` events for the release's file): with deltas,
members build the file from their own chunks and fetch only the missing ranges from peers; whole
files cost N - 1 copies. Also the publisher's chunking rate (`chunks.build_index`, CPU time, so per
core).

Usage: .venv/bin/python bench/delta.py [--size-mib 256] [--hosts 3] [--mirror-rate-mb 0]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from quorum_rollout import chunks  # noqa: E402
from scripts.localfleet import Fleet  # noqa: E402
from scripts.localfleet.agents import CLI  # noqa: E402
from scripts.localfleet.common import DEMO_FILES  # noqa: E402

CHANGED = 0.05
REGIONS = 4


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def payloads(work: Path, size: int) -> tuple[Path, Path]:
    """v1: `size` random bytes; v2: v1 with CHANGED of its bytes rewritten in REGIONS clustered runs."""
    rnd = random.Random(13)
    v1, v2 = work / "payload-v1.bin", work / "payload-v2.bin"
    with open(v1, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(rnd.randbytes(1 << 20))
        fh.write(rnd.randbytes(size % (1 << 20)))
    shutil.copyfile(v1, v2)
    run = int(size * CHANGED) // REGIONS
    with open(v2, "r+b") as fh:
        for i in range(REGIONS):
            fh.seek(rnd.randrange(i * size // REGIONS, (i + 1) * size // REGIONS - run))
            fh.write(rnd.randbytes(run))
    return v1, v2


def tar(work: Path, version: str, payload: Path) -> Path:
    """An uncompressed release tar: VERSION, demo_app.py, payload.bin (written now: new mtimes)."""
    d = work / version
    d.mkdir(parents=True, exist_ok=True)
    (d / "VERSION").write_text(version + "\n")
    archive = work / f"demo-app-{version}.tar"
    with tarfile.open(archive, "w") as t:
        t.add(d / "VERSION", arcname="VERSION")
        t.add(DEMO_FILES / "demo_app.py", arcname="demo_app.py")
        t.add(payload, arcname="payload.bin")
    return archive


def run(base: Path, work: Path, n: int, v1: Path, v2: Path, delta: bool, rate: int) -> list[dict[str, Any]]:
    fleet = Fleet(base, n, step_deadline=900)
    rows = []
    try:
        fleet.start_mirror(rate=rate)
        fleet.preinstall("2.3")
        fleet.start()
        rss0 = {h.id: proc_kib(h.proc.pid, "VmRSS") for h in fleet.hosts if h.proc}
        for version, payload in (("2.4", v1), ("2.5", v2), ("2.6", v2)):
            archive = tar(work, version, payload)
            subprocess.run([*CLI, "sign", str(archive), "--name", "demo-app", "--version", version,
                            "--key", str(fleet.key_prefix.with_suffix(".key")), "--mirror-dir", str(fleet.mirror_dir),
                            *(["--chunks"] if delta else [])], check=True, capture_output=True, env=fleet.env)
            before = sum(fleet.mirror_bytes().values())
            t0 = time.monotonic()
            assert fleet.hosts[0].post("/v1/releases", {"version": version}).status_code == 201
            done = fleet.wait_release(("current", "rolled_back"), timeout=3600)
            seconds = time.monotonic() - t0
            assert done["state"] == "current" and done["version"] == version, done["failure"]
            leader = fleet.leader()
            assert leader is not None and leader.proc is not None
            fetched = [e for e in leader.events("chunks_fetched") if e.get("version") == version]
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()
            peers = sum(e.get("bytes", 0) for h in fleet.hosts for e in h.events("peer_upload")
                        if e.get("sha256") == digest)
            rows.append({"version": version, "size": archive.stat().st_size, "seconds": seconds,
                         "mirror": sum(fleet.mirror_bytes().values()) - before, "peers": peers,
                         "event": fetched[-1] if fetched else None,
                         "rss_growth_mib": (proc_kib(leader.proc.pid, "VmHWM") - rss0[leader.id]) / 1024})
            print(("delta" if delta else "whole"), rows[-1], flush=True)
    finally:
        fleet.close()
    return rows


def reassembly_rates(base: Path, work: Path, v1: Path, v2: Path) -> dict[str, float]:
    """The agent's fetch path (`chunks.fetch`) in this process, against the fleet's mirror process:
    MB of file assembled per CPU second of this process (the agent's side only) for 2.4 with an empty
    store (every chunk fetched and decompressed), 2.5 and 2.6 (reused chunks)."""
    import socket
    import types

    from quorum_rollout import artifacts, signing
    from scripts.localfleet.common import start_mirror

    root = base / "mirror"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_mirror("127.0.0.1", port, root)
    url = f"http://127.0.0.1:{port}"
    cfg = types.SimpleNamespace(name="demo-app", free_space_margin=0, bandwidth_limit=0)
    store, rates = artifacts.Store(base / "store"), {}
    try:
        for version, payload in (("2.4", v1), ("2.5", v2), ("2.6", v2)):
            archive = tar(work, version, payload)
            index, ref = chunks.publish(archive, root / "demo-app", version)
            manifest = signing.Manifest("demo-app", version, archive.name, index.sha256, index.size,
                                        signing.to_datetime(0), signing.to_datetime(1), ("*",), chunks=ref)
            start = time.process_time()
            with requests.Session() as sess:
                chunks.fetch(url, cfg, store, manifest, sess, artifacts._Bounds(5.0, 30.0))
            rates[version] = index.size / (time.process_time() - start) / 1e6
    finally:
        server.terminate()
        server.wait(10)
    return rates


def chunking_rate(path: Path) -> float:
    start = time.process_time()
    index = chunks.build_index(path)
    return index.size / (time.process_time() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--mirror-rate-mb", type=float, default=0, help="cap the mirror's egress (MiB/s; 0: none)")
    args = ap.parse_args()
    cap = int(args.mirror_rate_mb * 2**20)
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="qr-delta-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        v1, v2 = payloads(work, size)
        rate = chunking_rate(v2)
        print(f"chunking (publisher, sha256 per chunk): {rate:.0f} MB/s per core", flush=True)
        rates = reassembly_rates(Path(tmp) / "inproc", work, v1, v2)
        print(f"reassembly in-process, MB/s per core: {rates}", flush=True)
        delta = run(Path(tmp) / "delta", work, args.hosts, v1, v2, True, cap)
        whole = run(Path(tmp) / "whole", work, args.hosts, v1, v2, False, cap)
    print(f"\n{platform.node()} {platform.machine()} python {platform.python_version()}, "
          f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}; S = {args.size_mib} MiB uncompressed tar of random bytes, "
          f"{args.hosts} hosts, mirror egress {f'capped at {args.mirror_rate_mb:g} MiB/s' if cap else 'not capped'}; "
          f"chunking {rate:.0f} MB/s per core\n")
    print("| release | from the mirror, delta | from the mirror, whole file | delta / S | zone link, delta "
          "| zone link, whole | to `current`, delta | to `current`, whole | leader reassembly |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"2.4": "2.4 new payload", "2.5": "2.5 5 % changed", "2.6": "2.6 identical rebuild"}
    for d, w in zip(delta, whole):
        ev = d["event"] or {}
        reassembly = f"{d['size'] / ev['seconds'] / 1e6:.0f} MB/s ({ev['reused']}/{ev['chunks']} chunks local)" \
            if ev.get("seconds") else "-"
        print(f"| {names[d['version']]} | {d['mirror'] / 2**20:.1f} MiB | {w['mirror'] / 2**20:.1f} MiB "
              f"| {d['mirror'] / d['size'] * 100:.2f} % | {d['peers'] / 2**20:.1f} MiB | {w['peers'] / 2**20:.1f} MiB "
              f"| {d['seconds']:.1f} s | {w['seconds']:.1f} s | {reassembly} |")
    print(f"\nreassembly (`chunks.fetch` in one process, CPU time): {rates['2.4']:.0f} MB/s per core with every "
          f"chunk fetched and decompressed (the agent side's CPU only), {rates['2.5']:.0f} MB/s for 2.5, "
          f"{rates['2.6']:.0f} MB/s for 2.6 (local chunks copied and re-hashed)")
    print(f"\nleader agent RSS growth over the run: delta {max(r['rss_growth_mib'] for r in delta):.1f} MiB, "
          f"whole file {max(r['rss_growth_mib'] for r in whole):.1f} MiB")


if __name__ == "__main__":
    main()
