"""A fleet set up by Ansible, for scripts/demo.py and the e2e tests: N inventory hosts on one machine.

Every host is `ansible_connection=local` with its own loopback address (127.a.b.2, .3, ...) and its
own path prefix (`<base>/hosts/<name>/`), runs the `process` service manager and the demo service.
The hosts share one virtualenv for the agent (installing it 12 times on one machine is wasted time;
the role serialises the install with flock). A real HTTP mirror (mirror.py) serves releases signed
with a controller key.

Every process started for the fleet (mirror, agents, demo services) is found again by PID (the
mirror's PID, the agents' and demo services' pidfiles) and stopped by `stop()`, which checks that
each PID still runs one of this fleet's programs before signalling it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import (
    APP_PORT,
    HERE,
    MIRROR_PORT,
    PY,
    REPO,
    current_version,
    free_subnet,
    health,
    is_alive,
    runs_one_of,
    start_mirror,
    stop_processes,
)

PLAYBOOK_ENV = {
    "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
    "ANSIBLE_FORKS": "16",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_RETRY_FILES_ENABLED": "0",
    "ANSIBLE_PIPELINING": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "0",
    "ANSIBLE_LOCALHOST_WARNING": "0",
    "PYTHONUNBUFFERED": "1",
    "ANSIBLE_CALLBACK_PLUGINS": str(HERE / "callback_plugins"),
    "ANSIBLE_CALLBACKS_ENABLED": "task_timer",
}


@dataclass
class FleetHost:
    name: str
    ip: str
    cpu: str
    zone: str
    prefix: Path

    @property
    def group(self) -> str:
        return f"{self.cpu}-{self.zone}"

    @property
    def app_root(self) -> Path:
        return self.prefix / "opt" / "demo-app"

    @property
    def data_dir(self) -> Path:
        return self.prefix / "var" / "lib" / "quorum-rollout"

    @property
    def config_file(self) -> Path:
        return self.prefix / "etc" / "quorum-rollout" / "agent.yml"

    def current(self) -> str | None:
        return current_version(self.app_root)

    def health(self) -> tuple[int, dict[str, Any]]:
        return health(self.ip, APP_PORT)


class LocalFleet:
    """`cpus` x `zones` x `per_group` hosts under `base`, with a mirror and a release key."""

    def __init__(self, base: Path, *, cpus: tuple[str, ...] = ("intel", "amd"),
                 zones: tuple[str, ...] = ("eu1a", "eu1b"), per_group: int = 3, subnet: str | None = None,
                 python: str = PY, wheelhouse: Path | None = None, step_deadline: float = 60.0,
                 agent_source: Path | None = None) -> None:
        self.base = Path(base).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.subnet = subnet or free_subnet()
        self.python = python
        self.wheelhouse = wheelhouse
        self.step_deadline = step_deadline
        self.agent_source = agent_source
        self.mirror_dir = self.base / "mirror"
        self.key_prefix = self.base / "keys" / "release"
        self.inventory = self.base / "inventory.yml"
        self.controller_dir = self.base / ".quorum-rollout"  # the role's default: next to the inventory
        self.state_file = self.base / "fleet.json"
        self.log_dir = self.base / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.mirror_pid: int | None = None
        # The fleet's Prometheus credential (quorum_rollout_metrics_token; reads GET /metrics only),
        # kept with the fleet so that a later LocalFleet.load() writes the same inventory.
        token_file = self.base / "metrics.token"
        if not token_file.exists():
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(16))
        self.metrics_token = token_file.read_text().strip()
        self.hosts: list[FleetHost] = []
        n = 2
        for cpu in cpus:
            for zone in zones:
                for i in range(1, per_group + 1):
                    name = f"{cpu}-{zone}-{i}"
                    self.hosts.append(FleetHost(name, f"{self.subnet}.{n}", cpu, zone, self.base / "hosts" / name))
                    n += 1

    @property
    def mirror_url(self) -> str:
        return f"http://{self.subnet}.1:{MIRROR_PORT}"

    @property
    def groups(self) -> dict[str, list[FleetHost]]:
        out: dict[str, list[FleetHost]] = {}
        for host in self.hosts:
            out.setdefault(host.group, []).append(host)
        return out

    # -- material --------------------------------------------------------------------------------

    def public_key(self) -> str:
        return (self.key_prefix.with_suffix(".pub")).read_text().strip()

    def write_inventory(self, only: list[str] | None = None, absent: tuple[str, ...] = (),
                        **extra: Any) -> Path:
        """The inventory: every value a site would set; all the rest are the roles' defaults.
        `only` lists the hosts to include (default all), `absent` those set quorum_rollout_state=absent,
        `extra` more variables for every host."""
        common: dict[str, Any] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": self.python,
            "quorum_rollout_service_manager": "process",
            "quorum_rollout_prefix": str(self.base / "hosts") + "/{{ inventory_hostname }}",
            # One virtualenv for all the hosts of this machine (the role serialises its install).
            "quorum_rollout_venv": str(self.base / "venv"),
            "quorum_rollout_python": self.python,
            "quorum_rollout_artifact_name": "demo-app",
            "quorum_rollout_mirrors": [self.mirror_url],
            "quorum_rollout_trusted_keys": [self.public_key()],
            "quorum_rollout_restart_command": "{{ demo_app_restart_command }}",
            "quorum_rollout_preflight_checks": "{{ demo_app_preflight_checks }}",
            "quorum_rollout_step_deadline": self.step_deadline,
            "quorum_rollout_log_level": "info",
            "quorum_rollout_metrics_token": self.metrics_token,
            "demo_app_python": self.python,
            "demo_app_cpu": "{{ quorum_rollout_cpu }}",
        }
        if self.wheelhouse:
            common["quorum_rollout_wheelhouse"] = str(self.wheelhouse)
        if self.agent_source:
            common["quorum_rollout_agent_source"] = str(self.agent_source)
        common.update(extra)
        listed = [h for h in self.hosts if only is None or h.name in only]
        hosts = {h.name: {"ansible_host": h.ip, "quorum_rollout_cpu": h.cpu, "quorum_rollout_zone": h.zone,
                          **({"quorum_rollout_state": "absent"} if h.name in absent else {})}
                 for h in listed}
        doc = {"all": {"vars": common, "hosts": hosts,
                       "children": {"demo_app": {"hosts": {h.name: None for h in listed}}}}}
        self.inventory.write_text("# generated by scripts/localfleet/playbooks.py\n"
                                  + yaml.safe_dump(doc, sort_keys=False))
        return self.inventory

    # -- running Ansible -------------------------------------------------------------------------

    def playbook(self, playbook: str, *args: str, timeout: float = 600, log: str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **PLAYBOOK_ENV, "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}"}
        cmd = [str(Path(PY).parent / "ansible-playbook"), "-i", str(self.inventory), str(REPO / playbook), *args]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        name = log or Path(playbook).stem
        (self.log_dir / f"{name}.log").write_text(
            f"$ {' '.join(cmd)}\n# rc={proc.returncode} in {time.monotonic() - started:.1f}s\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}")
        return proc

    def publish(self, version: str, broken_on: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        args = ["-e", f"version={version}", "-e", f"mirror_dir={self.mirror_dir}", "-e",
                f"signing_key={self.key_prefix}", "-e", f"build_dir={self.base / 'build'}"]
        if broken_on:
            args += ["-e", f"broken_on={','.join(broken_on)}"]
        return self.playbook("playbooks/publish.yml", *args, log=f"publish-{version}")

    # -- processes -------------------------------------------------------------------------------

    def start_mirror(self) -> None:
        self.mirror_pid = start_mirror(f"{self.subnet}.1", MIRROR_PORT, self.mirror_dir,
                                       log=self.log_dir / "mirror.log").pid
        self.save_state()

    @classmethod
    def load(cls, base: Path, **kw: Any) -> LocalFleet:
        """The fleet recorded in `<base>/fleet.json` (same addresses, mirror PID)."""
        state = json.loads((Path(base) / "fleet.json").read_text())
        fleet = cls(Path(base), subnet=state["subnet"], **kw)
        fleet.mirror_pid = state.get("mirror_pid")
        return fleet

    def save_state(self) -> None:
        self.state_file.write_text(json.dumps({"subnet": self.subnet, "mirror_pid": self.mirror_pid,
                                               "base": str(self.base)}, indent=2))

    def pids(self) -> dict[int, str]:
        """PID -> what it is, for every process of this fleet that is recorded somewhere."""
        found: dict[int, str] = {}
        if self.mirror_pid:
            found[self.mirror_pid] = "mirror"
        for host in self.hosts:
            for pidfile, what in ((host.data_dir / "agent.pid", "agent"), (host.app_root / "demo.pid", "demo")):
                try:
                    found[int(pidfile.read_text().strip())] = f"{what} {host.name}"
                except (OSError, ValueError):
                    pass
        return found

    def is_ours(self, pid: int) -> bool:
        """True when `pid` runs one of this fleet's programs (guards against a recycled PID)."""
        return runs_one_of(pid, (str(self.base), f"{self.subnet}."))

    def stop(self, timeout: float = 15) -> list[str]:
        """Stop every recorded process by PID, and what a restart hook orphaned by a killed agent may
        have started: SIGTERM, then SIGKILL after `timeout`. Returns what it stopped."""
        return stop_processes(self.base, self.pids(), marks=(f"{self.subnet}.",), timeout=timeout)

    is_alive = staticmethod(is_alive)


RECAP_RE = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host."""
    return {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
            for m in RECAP_RE.finditer(output)}
