#!/usr/bin/env python
"""A local 12-host quorum.rollout demo: `make demo` (= scripts/demo.py up), `make demo-stop` (= down).

up:   builds a fleet of 12 inventory hosts on this machine under ./demo/ (2 CPU kinds x 2 zones x
      3 hosts, on 127.0.0.2-13 by default), starts a local mirror on 127.0.0.1:8000, publishes the
      demo service's releases 2.3 and 2.4 signed with a fresh key, runs `ansible-playbook site.yml`
      (agents + demo service 2.3) and `ansible-playbook release.yml -e version=2.4`, then prints
      what every group and every host runs. Running it again reuses the fleet.
down: stops every process of the demo by PID (mirror, 12 agents, 12 demo services), as recorded
      in demo/fleet.json and the agents' and services' pidfiles. `down --purge` also deletes demo/.

Everything is logged to demo/logs/. Options: --subnet 127.0.5 (another /24 if 127.0.0.x is busy),
--broken 2.5 (also publish a 2.5 that fails its health check on AMD hosts, to try a rollback).
The playbook commands it prints run against demo/inventory.yml from the repository root.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.localfleet import APP_PORT, MIRROR_PORT, LocalFleet, recap  # noqa: E402
from scripts.localfleet.common import port_free  # noqa: E402

DEMO = REPO / "demo"


def say(text: str) -> None:
    print(text, flush=True)


def step(fleet: LocalFleet, what: str, playbook: str, *args: str, log: str, may_fail: bool = False) -> str:
    say(f"==> {what}")
    started = time.monotonic()
    proc = fleet.playbook(playbook, *args, log=log, timeout=1800)
    took = time.monotonic() - started
    logfile = fleet.log_dir / f"{log}.log"
    if proc.returncode != 0 and not may_fail:
        say(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"error: `ansible-playbook {playbook} {' '.join(args)}` failed (rc {proc.returncode}) "
                         f"after {took:.0f}s; full log: {logfile}\n"
                         f"Stop what was started with: make demo-stop")
    counts = recap(proc.stdout)
    changed = sum(c["changed"] for c in counts.values())
    say(f"    done in {took:.0f}s ({len(counts)} hosts, {changed} changes, rc {proc.returncode}); log {logfile}")
    return proc.stdout


def group_lines(output: str) -> list[str]:
    """The one-line-per-group list release.yml prints last."""
    marker = '"msg": [\n'
    block = output.rsplit(marker, 1)
    if len(block) < 2:
        return []
    lines = []
    for line in block[1].splitlines():
        line = line.strip()
        if line.startswith("]"):
            break
        lines.append(json.loads(line.rstrip(",")))
    return lines


def check_addresses(subnet: str) -> None:
    wanted = [(f"{subnet}.1", MIRROR_PORT)]
    wanted += [(f"{subnet}.{n}", port) for n in range(2, 14) for port in (7100, 7200, APP_PORT)]
    busy = [f"{ip}:{port}" for ip, port in wanted if not port_free(ip, port)]
    if busy:
        raise SystemExit(f"error: addresses in use: {', '.join(busy[:6])}{' ...' if len(busy) > 6 else ''} "
                         f"(fix: stop what uses them, or pick another /24: scripts/demo.py up --subnet 127.0.5)")


def up(args: argparse.Namespace) -> int:
    if (DEMO / "fleet.json").exists():
        fleet = LocalFleet.load(DEMO)
        say(f"==> reusing the demo fleet in {DEMO} ({fleet.subnet}.0/24)")
    else:
        check_addresses(args.subnet)
        fleet = LocalFleet(DEMO, subnet=args.subnet)
        fleet.save_state()
        say(f"==> demo fleet in {DEMO}: 12 hosts on {fleet.subnet}.2-13, mirror on {fleet.mirror_url}")
    if not (fleet.mirror_pid and fleet.is_alive(fleet.mirror_pid) and fleet.is_ours(fleet.mirror_pid)):
        fleet.start_mirror()
        say(f"    mirror started (pid {fleet.mirror_pid}), serving {fleet.mirror_dir}")

    for version, broken in [("2.3", ()), ("2.4", ())] + ([(args.broken, ("amd",))] if args.broken else []):
        extra = ("-e", f"broken_on={','.join(broken)}") if broken else ()
        step(fleet, f"publish demo-app {version}{' (broken on amd)' if broken else ''} to the mirror",
             "playbooks/publish.yml", "-e", f"version={version}", "-e", f"mirror_dir={fleet.mirror_dir}", "-e",
             f"signing_key={fleet.key_prefix}", "-e", f"build_dir={fleet.base / 'build'}", *extra,
             log=f"publish-{version}")
    fleet.write_inventory()

    step(fleet, "ansible-playbook site.yml  (agents + demo service 2.3 on 12 hosts)", "site.yml", log="site")
    out = step(fleet, "ansible-playbook release.yml -e version=2.4", "release.yml", "-e", "version=2.4",
               "-e", "rollout_poll=1", log="release-2.4", may_fail=True)
    fleet.save_state()

    say("\nPer group (release.yml):")
    for line in group_lines(out) or ["(no result: see the log)"]:
        say(f"    {line}")
    for refused in sorted(set(re.findall(r'"msg": "(group [^:"]+: cannot [^"]+)"', out))):
        say(f"    {refused}")
    say("\nPer host (GET /health of the demo service; `current` symlink):")
    for host in fleet.hosts:
        try:
            status, body = host.health()
            answer = f"{status} {body.get('version')}"
        except OSError as exc:
            answer = f"no answer ({exc})"
        say(f"    {host.name:<14} {host.ip:<15} group {host.group:<11} current {host.current() or '-':<5} "
            f"health {answer}")
    inventory = fleet.inventory.relative_to(REPO)
    cli = (fleet.base / "venv" / "bin" / "quorum-rollout").relative_to(REPO)
    config = fleet.hosts[0].config_file.relative_to(REPO)
    say(f"""
Try (from {REPO}):
    . .venv/bin/activate
    ansible-playbook -i {inventory} -f 12 playbooks/status.yml
    ansible-playbook -i {inventory} -f 12 release.yml -e version=2.4      # again: attaches, changes nothing
    ansible-playbook playbooks/publish.yml -e version=2.5 -e broken_on=amd   # 2.5 fails its health check on AMD
    ansible-playbook -i {inventory} -f 12 release.yml -e version=2.5      # AMD groups roll back, Intel moves on
    {cli} status -c {config}
Logs: {fleet.log_dir.relative_to(REPO)}/ (playbooks), demo/hosts/<host>/var/lib/quorum-rollout/agent.log (agents)

Stop everything (every process of the demo, by PID):  make demo-stop""")
    return 0


def down(args: argparse.Namespace) -> int:
    if not (DEMO / "fleet.json").exists():
        say(f"no demo fleet in {DEMO}: nothing to stop")
        return 0
    fleet = LocalFleet.load(DEMO)
    stopped = fleet.stop()
    say(f"stopped {len(stopped)} processes" + (":\n    " + "\n    ".join(stopped) if stopped else ""))
    left = [f"{what} (pid {pid})" for pid, what in fleet.pids().items() if fleet.is_alive(pid) and fleet.is_ours(pid)]
    if left:
        say("still running: " + ", ".join(left))
        return 1
    if args.purge:
        shutil.rmtree(DEMO)
        say(f"removed {DEMO}")
    else:
        fleet.mirror_pid = None
        fleet.save_state()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="build and start the demo fleet, release 2.4")
    p.add_argument("--subnet", default="127.0.0", help="first three octets of the fleet's /24 (default 127.0.0)")
    p.add_argument("--broken", metavar="VERSION", help="also publish VERSION broken on AMD hosts (e.g. 2.5)")
    p.set_defaults(func=up)
    p = sub.add_parser("down", help="stop every process of the demo by PID")
    p.add_argument("--purge", action="store_true", help="also delete demo/")
    p.set_defaults(func=down)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
