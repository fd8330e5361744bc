"""Local fleets on one machine, for `make demo`, the benchmarks and the integration and e2e tests.

A developer and demo tool, not part of the agent distribution nor of the built collection
(galaxy.yml's build_ignore leaves scripts/localfleet out). Tests import it; it never imports
from the tests.

- `agents.Fleet`: N agents started directly from generated configs, one Raft group
  (tests/integration, bench/);
- `playbooks.LocalFleet`: inventory hosts set up by real `ansible-playbook site.yml` runs
  (scripts/demo.py, tests/e2e);
- `common`: what both use: `wait_for`, `free_subnet`, the mirror process (`mirror.py`), a host's
  `current` symlink and /health, and `stop_processes` (by PID, plus the orphan sweep).

Import it with the repository root on sys.path: `from scripts.localfleet import Fleet, wait_for`.
"""

from .agents import CLI, Fleet, Host
from .common import (
    APP_PORT,
    DEMO_FILES,
    MIRROR_PORT,
    PY,
    REPO,
    current_version,
    free_subnet,
    health,
    is_alive,
    processes_under,
    start_mirror,
    stop_processes,
    wait_for,
)
from .playbooks import PLAYBOOK_ENV, FleetHost, LocalFleet, recap

__all__ = [
    "APP_PORT", "CLI", "DEMO_FILES", "MIRROR_PORT", "PLAYBOOK_ENV", "PY", "REPO", "Fleet", "FleetHost", "Host",
    "LocalFleet", "current_version", "free_subnet", "health", "is_alive", "processes_under", "recap", "start_mirror",
    "stop_processes", "wait_for",
]
