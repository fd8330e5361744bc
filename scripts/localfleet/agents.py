"""A fleet of agents started directly (no Ansible): N agent processes on distinct loopback
addresses forming one Raft group, a real HTTP mirror serving releases signed with
`quorum-rollout sign`, and the demo service on every host. Used by the integration tests and the
benchmarks. Every process it starts is recorded and stopped by PID in `close()`, also when a
test fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import requests

from .common import (
    APP_PORT,
    DEMO_FILES,
    MIRROR_PORT,
    PY,
    current_version,
    free_subnet,
    health,
    start_mirror,
    stop_processes,
    wait_for,
)

CLI = [PY, "-m", "quorum_rollout"]


class Host:
    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.id = f"h{index + 1:02d}"
        self.ip = f"{fleet.subnet}.{index + 2}"
        self.dir = fleet.base / self.id
        self.root = self.dir / "app"
        self.data = self.dir / "data"
        self.config_path = self.dir / "agent.json"
        self.log_path = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.checks: list[dict[str, Any]] = []
        self.api_url = f"http://{self.ip}:{fleet.api_port}"

    # -- agent process --------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.id} already running"
        # Its own session (a Ctrl-C of the test run does not reach it; stopped by PID). Linux gives
        # each session a scheduling group (autogroup) with an equal share of the CPU whatever its
        # threads' nice values: every agent keeps its share under the test suites' load. With
        # Fleet(one_sched_group=True) (bench/headline.py) the agents share the caller's session's
        # group instead, so their background transfers (nice 10) yield to the other hosts' open
        # batch and Raft threads, as they would cost other hosts nothing on separate machines.
        session = {"process_group": 0} if self.fleet.one_sched_group else {"start_new_session": True}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([*CLI, "agent", "-c", str(self.config_path)], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.fleet.env, **session)
        self.fleet.pids.add(self.proc.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- API ------------------------------------------------------------------------------------

    def get(self, path: str = "/v1/status", **kw: Any) -> requests.Response:
        return requests.get(self.api_url + path, headers=self.fleet.auth, timeout=5, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.api_url + path, json=body, headers=self.fleet.auth, timeout=10, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return requests.delete(self.api_url + path, headers=self.fleet.auth, timeout=10, **kw)

    def status(self) -> dict[str, Any]:
        resp = self.get()
        resp.raise_for_status()
        return resp.json()

    # -- the host's truth -------------------------------------------------------------------------

    def current(self) -> str | None:
        return current_version(self.root)

    def health(self) -> dict[str, Any]:
        return health(self.ip, self.fleet.app_port, timeout=2)[1]

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if doc.get("event") == name:
                        out.append(doc)
        return out


class Fleet:
    def __init__(self, base: Path, n: int, *, group: str = "intel-z1", cpu: str = "intel",
                 step_deadline: float = 60.0, batch_fraction: float = 0.1, extra: dict[str, Any] | None = None,
                 mirror_of: Fleet | None = None, mirror_path: str = "", one_sched_group: bool = False) -> None:
        """`mirror_of`: use that fleet's mirror and release key (several groups, one origin);
        `mirror_path`: appended to the mirror URL in the agents' config (e.g. /zone/z1);
        `one_sched_group`: agents share the caller's CPU scheduling group (see Host.start)."""
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.subnet = free_subnet()
        self.group, self.cpu = group, cpu
        self.raft_port, self.api_port, self.app_port, self.mirror_port = 7100, 7200, APP_PORT, MIRROR_PORT
        self.mirror_ip = f"{self.subnet}.1"
        self.mirror_dir = self.base / "mirror"
        self.mirror_stats = self.base / "mirror-stats.json"
        self.registry_file = self.base / "registry" / f"{group}.json"
        self.step_deadline, self.batch_fraction = step_deadline, batch_fraction
        self.extra = extra or {}
        self.one_sched_group = one_sched_group
        self.pids: set[int] = set()
        self.mirror: subprocess.Popen[bytes] | None = None
        self.mirror_path = mirror_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEMO_PYTHON": PY}
        self.hosts = [Host(self, i) for i in range(n)]
        self._secrets(mirror_of)
        if mirror_of is not None:
            self.mirror_ip, self.mirror_port = mirror_of.mirror_ip, mirror_of.mirror_port
            self.mirror_dir, self.mirror_stats = mirror_of.mirror_dir, mirror_of.mirror_stats

    # -- material -------------------------------------------------------------------------------

    def _secrets(self, mirror_of: Fleet | None = None) -> None:
        keys = self.base / "keys"
        keys.mkdir(exist_ok=True)
        self.secret_file = keys / "group.secret"
        self.token_file = keys / "api.token"
        for path, nbytes in ((self.secret_file, 48), (self.token_file, 24)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(nbytes).hex())
        self.auth = {"Authorization": "Bearer " + self.token_file.read_text().strip()}
        if mirror_of is not None:
            self.key_prefix, self.public_key = mirror_of.key_prefix, mirror_of.public_key
            return
        self.key_prefix = keys / "release"
        out = subprocess.run([*CLI, "keygen", "--out", str(self.key_prefix)], check=True, capture_output=True,
                             text=True, env=self.env)
        self.public_key = json.loads(out.stdout)["public_key"]

    def build_release(self, version: str, *, broken_on: tuple[str, ...] = (), key: Path | None = None,
                      publish: bool = True, payload_bytes: int = 0, channel: str | None = None,
                      chunks: bool = False) -> Path:
        """Make demo-app-<version>.tar.gz and publish it with a signed manifest in mirror layout
        (and point `channel` at it, when given). With `chunks`, a delta release: an uncompressed
        demo-app-<version>.tar whose payload is the same for every version (seeded), published with
        `sign --chunks`, so releases differ in a few chunks only."""
        work = self.base / "build" / version
        work.mkdir(parents=True, exist_ok=True)
        (work / "VERSION").write_text(version + "\n")
        if broken_on:
            (work / "BROKEN_ON").write_text("\n".join(broken_on) + "\n")
        if payload_bytes and chunks:
            (work / "payload.bin").write_bytes(random.Random(0).randbytes(payload_bytes))
        elif payload_bytes:
            with open(work / "payload.bin", "wb") as fh:
                for _ in range(payload_bytes // (1 << 20)):
                    fh.write(os.urandom(1 << 20))
                fh.write(os.urandom(payload_bytes % (1 << 20)))
        archive = self.base / "build" / f"demo-app-{version}.tar{'' if chunks else '.gz'}"
        with tarfile.open(archive, "w" if chunks else "w:gz") as tar:
            for f in sorted(work.iterdir()):
                tar.add(f, arcname=f.name)
            tar.add(DEMO_FILES / "demo_app.py", arcname="demo_app.py")
        if publish:
            subprocess.run([*CLI, "sign", str(archive), "--name", "demo-app", "--version", version,
                            "--key", str(key or self.key_prefix.with_suffix(".key")),
                            "--mirror-dir", str(self.mirror_dir), *(["--channel", channel] if channel else []),
                            *(["--chunks"] if chunks else [])],
                           check=True, capture_output=True, env=self.env)
        return archive

    def channel_path(self, channel: str = "stable") -> Path:
        return self.mirror_dir / "demo-app" / "channels" / f"{channel}.json"

    def point_channel(self, version: str, channel: str = "stable", *, key: Path | None = None) -> None:
        """Point `channel` at a version already published on the mirror (a signed pointer)."""
        subprocess.run([*CLI, "channel", "publish", "--name", "demo-app", "--version", version, "--channel", channel,
                        "--key", str(key or self.key_prefix.with_suffix(".key")), "--mirror-dir",
                        str(self.mirror_dir)], check=True, capture_output=True, env=self.env)

    def host_config(self, host: Host) -> dict[str, Any]:
        democtl = f"{DEMO_FILES / 'democtl'} restart {host.root} {host.ip} {self.app_port} {self.cpu}"
        cfg: dict[str, Any] = {
            "node_id": host.id,
            "group": self.group,
            "data_dir": str(host.data),
            "raft": {
                "address": f"{host.ip}:{self.raft_port}",
                "secret_file": str(self.secret_file),
                "peers": [{"id": p.id, "address": f"{p.ip}:{self.raft_port}", "api_url": p.api_url}
                          for p in self.hosts if p is not host],
            },
            "api": {"bind": host.ip, "port": self.api_port, "token_file": str(self.token_file)},
            "artifacts": {
                "name": "demo-app",
                "mirrors": [f"http://{self.mirror_ip}:{self.mirror_port}{self.mirror_path}"],
                "trusted_keys": [{"public_key": self.public_key}],
            },
            "install": {"root": str(host.root), "hooks": {"restart": democtl, "timeout": 30}},
            "checks": [{"name": "health", "type": "http", "url": f"http://{host.ip}:{self.app_port}/health",
                        "expect_status": 200, "expect_body": "{version}", "timeout": 2, "retries": 25,
                        "interval": 0.2}, *host.checks],
            "rollout": {"batch_fraction": self.batch_fraction, "step_deadline": self.step_deadline},
            "registry": {"type": "file", "path": str(self.registry_file)},
        }
        for section, values in self.extra.items():
            cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
        return cfg

    def write_configs(self) -> None:
        for host in self.hosts:
            host.dir.mkdir(parents=True, exist_ok=True)
            host.config_path.write_text(json.dumps(self.host_config(host), indent=2))

    # -- processes ------------------------------------------------------------------------------

    def start_mirror(self, rate: int = 0, **kw: Any) -> None:
        self.mirror = start_mirror(self.mirror_ip, self.mirror_port, self.mirror_dir, stats=self.mirror_stats,
                                   rate=rate, **kw)
        self.pids.add(self.mirror.pid)

    def mirror_bytes(self) -> dict[str, int]:
        return json.loads(self.mirror_stats.read_text()) if self.mirror_stats.exists() else {}

    def preinstall(self, version: str) -> None:
        """Hosts already run `version` before the agents start (what an earlier release left)."""
        archive = self.build_release(version)
        from quorum_rollout import install

        for host in self.hosts:
            install.install_release(host.root, version, archive)
            install.activate(host.root, version)
            subprocess.run([str(DEMO_FILES / "democtl"), "start", str(host.root), host.ip, str(self.app_port),
                            self.cpu], check=True, env=self.env)
            self._demo_pid(host)
        for host in self.hosts:
            wait_for(lambda h=host: h.health()["version"] == version, 20, f"demo app on {host.id}")

    def _demo_pid(self, host: Host) -> None:
        pidfile = host.root / "demo.pid"
        if pidfile.exists():
            self.pids.add(int(pidfile.read_text()))

    def start(self) -> None:
        self.write_configs()
        for host in self.hosts:
            host.start()
        wait_for(self.leader, 60, "a Raft leader with every agent answering")

    def leader(self) -> Host | None:
        leaders = []
        for host in self.hosts:
            if not host.alive():
                continue
            doc = host.status()
            if not doc["node"]["ready"]:
                return None
            if doc["node"]["role"] == "leader":
                leaders.append(host)
        return leaders[0] if len(leaders) == 1 else None

    def release_state(self, via: Host | None = None) -> dict[str, Any] | None:
        host = via or next(h for h in self.hosts if h.alive())
        return host.status()["state"]["release"]

    def wait_release(self, states: tuple[str, ...], timeout: float = 180) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            for host in self.hosts:
                if host.alive():
                    try:
                        release = host.status()["state"]["release"]
                    except requests.RequestException:
                        continue
                    if release and release["state"] in states:
                        return release
            return None
        return wait_for(done, timeout, f"release state in {states}", interval=0.2)

    def close(self) -> None:
        """Stop every process of this fleet: the agents first (so no restart hook starts another
        demo service afterwards), then every recorded PID and every process still running a
        program from this fleet's directory (a hook orphaned by a killed agent may have started one)."""
        for host in self.hosts:
            host.kill(signal.SIGTERM)
        for host in self.hosts:
            self._demo_pid(host)
        stop_processes(self.base, dict.fromkeys(self.pids, "recorded"), marks=(f"{self.subnet}.",), timeout=0)
        if self.mirror:
            self.mirror.wait(timeout=5)
