"""Scenario 5: mirror and registry faults during a release. A fault on one of two mirrors costs
nothing (the release ends current from the other, the fault is logged with its mirror and cause);
a mirror that goes away mid-download and comes back is retried within the step; a mirror that
only answers 500 ends the release rolled back, naming the step and the cause; a registry that is
down never holds a release."""

from __future__ import annotations

import json
import signal

import pytest

from tests.chaos.common import check_outcome, leader_of, second_mirror, start
from tests.support.fleet import wait_for

ARTIFACT = "demo-app/2.4/demo-app-2.4.tar.gz"


@pytest.mark.parametrize("fault", ["500", pytest.param("truncated", marks=pytest.mark.long),
                                   pytest.param("oversized", marks=pytest.mark.long)])
def test_a_fault_on_one_mirror_is_survived_from_the_other(make_fleet, fault: str) -> None:
    """The faulty mirror is the only one serving the manifest (the good one answers 404 for it),
    so the leader tries the artifact there first: 500 / a body cut at half / the signed bytes
    followed by 1 MiB more."""
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    size = fleet.build_release("2.4", payload_bytes=256 << 10).stat().st_size
    bad_url, bad_root = second_mirror(fleet)
    good_url = f"http://{fleet.mirror_ip}:{fleet.mirror_port}"
    fleet.extra["artifacts"] = {"mirrors": [good_url, bad_url]}
    (fleet.mirror_dir / "demo-app" / "2.4" / "manifest.json.status").write_text("404\n")
    side, content = {"500": (".status", "500\n"), "truncated": (".cut", str(size // 2)),
                     "oversized": (".endless", str(size + (1 << 20)))}[fault]
    (bad_root / (ARTIFACT + side)).write_text(content)
    fleet.start()
    leader = leader_of(fleet)
    release = start(fleet, "2.4", via=leader)
    check_outcome(fleet, release["id"], "current", "2.4", "2.3")
    bad_served = json.loads((fleet.base / "mirror2-stats.json").read_text()).get(ARTIFACT, 0)
    if fault == "500":
        failed = [e for e in leader.events("mirror_failed") if e["mirror"] == bad_url]
        assert failed and "500" in failed[0]["error"], leader.events("mirror_failed")
    elif fault == "truncated":
        assert bad_served >= size // 2, "the faulty mirror never sent its truncated body"
    else:
        failed = [e for e in leader.events("mirror_failed") if e["mirror"] == bad_url]
        assert failed and bad_served > size, (failed, bad_served)
        assert fleet.mirror_bytes().get(ARTIFACT) == size, "the good mirror served the artifact"


@pytest.mark.long
def test_a_mirror_that_goes_away_mid_download_is_retried_within_the_step(make_fleet) -> None:
    """The only mirror is SIGKILLed while the leader downloads (connection refused from then on)
    and started again once the leader logged a retry: the release ends current."""
    fleet = make_fleet(3)
    fleet.start_mirror(rate=256 * 1024)
    fleet.preinstall("2.3")
    fleet.build_release("2.4", payload_bytes=2 << 20)
    fleet.start()
    leader = leader_of(fleet)
    release = start(fleet, "2.4", via=leader)
    wait_for(lambda: (fleet.release_state(leader) or {}).get("artifact"), 20, "the leader downloading")
    fleet.mirror.send_signal(signal.SIGKILL)
    fleet.mirror.wait(timeout=5)
    retry = wait_for(lambda: [e for e in leader.events("step_retry") if e.get("step") == "download"], 30,
                     "the leader retrying its download")
    assert "refused" in retry[-1]["cause"].lower() or "connect" in retry[-1]["cause"].lower(), retry
    fleet.start_mirror()
    check_outcome(fleet, release["id"], "current", "2.4", "2.3")


@pytest.mark.long
def test_a_mirror_that_only_answers_500_rolls_the_release_back_naming_step_and_cause(make_fleet) -> None:
    fleet = make_fleet(3, step_deadline=6)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    archive = fleet.build_release("2.4")
    (fleet.mirror_dir / (ARTIFACT + ".status")).write_text("500\n")
    assert archive.name in ARTIFACT
    fleet.start()
    release = start(fleet, "2.4")
    check_outcome(fleet, release["id"], "rolled_back", "2.4", "2.3")
    failure = fleet.release_state()["failure"]
    assert failure["step"] == "download", failure
    assert "500" in failure["reason"] and "retried until" in failure["reason"], failure


@pytest.mark.long
def test_a_registry_that_is_down_holds_nothing(make_fleet) -> None:
    """The registry sink is an HTTP URL where nothing listens: the release ends current, status
    and the log say the registry failed."""
    fleet = make_fleet(3, extra={"registry": {"type": "http", "path": None, "retries": 1, "timeout": 1}})
    fleet.extra["registry"]["url"] = f"http://{fleet.mirror_ip}:9/registry"
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    leader = leader_of(fleet)
    release = start(fleet, "2.4", via=leader)
    check_outcome(fleet, release["id"], "current", "2.4", "2.3")
    registry = wait_for(lambda: (r := leader.status()["node"]["registry"]) and not r["ok"] and r, 10,
                        "status showing the registry down")
    assert fleet.extra["registry"]["url"] in registry["error"], registry
    assert leader.events("registry_failed"), "no registry_failed event"
