"""The demo service's control script (what every demo, test and benchmark restarts)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

DEMOCTL = Path(__file__).resolve().parents[3] / "roles/demo_app/files/democtl"


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_stop_counts_an_exited_but_unreaped_process_as_stopped(tmp_path: Path) -> None:
    """The service's parent (here: this test, in production the agent or PID 1) reaps it later:
    stop must not wait for the reaper, nor SIGKILL a zombie."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "demo.pid").write_text(f"{child.pid}\n")
        started = time.monotonic()
        done = subprocess.run(["sh", str(DEMOCTL), "stop", str(tmp_path), "127.0.0.1", "1"], timeout=30, check=False)
        took = time.monotonic() - started
        assert done.returncode == 0
        assert state_of(child.pid) == "Z", "stopped by SIGTERM, not reaped yet"
        assert not (tmp_path / "demo.pid").exists()
        assert took < 2.5, f"stop waited {took:.2f}s for a zombie (its give-up time is 5 s)"
    finally:
        child.kill()
        child.wait()


def test_status_of_a_zombie_is_stopped(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while state_of(child.pid) != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        (tmp_path / "demo.pid").write_text(f"{child.pid}\n")
        status = subprocess.run(["sh", str(DEMOCTL), "status", str(tmp_path), "127.0.0.1", "1"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert (status.returncode, status.stdout.strip()) == (3, "stopped")
    finally:
        child.wait()
    assert os.path.exists(tmp_path / "demo.pid")
