"""`quorum-rollout watch`'s pure part: rows from group states made by the real state machine
(test_fsm.Group drives fsm.apply), the exit code of --once, where it looks (controller records).
The live command against real agents is tests/integration/test_rollout.py's
test_cli_release_watch_status."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from quorum_rollout import fsm, watch
from rich.console import Console

from tests.unit.test_fsm import Group, hosts


def doc(group: Group, unreachable: tuple[str, ...] = ()) -> dict:
    members = [{"id": m, "reachable": m not in unreachable} for m in hosts(10)]
    return {"group": group.state["group"], "node": {"leader": "h00"}, "members": members, "state": group.state}


def test_a_rolling_release_shows_progress_batch_and_an_eta_from_the_first_batch():
    g = Group()
    g.to_rolling("2.4")
    opened = g.state["history"][-1]["time"]
    for _ in range(2):
        g.finish_batch()
    row = watch.summarize(doc(g, unreachable=("h05",)), now=opened + 20)
    assert row["state"] == "rolling" and row["release"] == g.rid and row["target_version"] == "2.4"
    assert row["previous_version"] is None and row["version"] is None  # a group's first release
    assert (row["done"], row["total"], row["batch"], row["batches"]) == (2, 10, 3, 10)
    assert row["eta"] == pytest.approx(20 / 2 * 8, abs=0.1)  # 10 s per host since batch 1 opened
    assert row["elapsed"] == pytest.approx(opened + 20 - g.release["started_at"], abs=0.1)
    assert row["last_event"]["text"] == "batch 3 of 10" and row["unreachable"] == ["h05"]
    assert row["current"] is False


def test_a_rollback_counts_reverted_hosts_and_keeps_the_failure():
    g = Group()
    g.goto("rolling_back")
    row = watch.summarize(doc(g), now=9000.0)
    assert row["state"] == "rolling_back" and row["failure"]["step"] == "preflight"
    assert (row["previous_version"], row["target_version"], row["version"]) == ("2.3", "2.4", "2.3")
    assert row["done"] == 0 and row["total"] >= 1 and row["eta"] is None
    while g.release["state"] == "rolling_back":
        for h in fsm_open(g):
            g.revert(h)
    row = watch.summarize(doc(g), now=9000.0)
    assert row["state"] == "rolled_back" and row["done"] == row["total"] >= 1
    assert row["elapsed"] == pytest.approx(g.release["updated_at"] - g.release["started_at"])  # stops at the end


def fsm_open(g: Group) -> list[str]:
    return fsm.open_batch_hosts(g.state)


def test_once_exits_0_only_when_every_group_is_current():
    done, idle, rolling = Group("a"), Group("b"), Group("c")
    done.release_fully("2.4")
    rolling.to_rolling("2.4")
    summary = watch.fleet_summary([doc(done)], [], now=5000.0)
    assert summary["all_current"] and watch.exit_code(summary) == watch.EXIT_CURRENT
    assert not watch.in_progress(summary)
    for others in ([doc(idle)], [doc(rolling)]):
        summary = watch.fleet_summary([doc(done), *others], [], now=5000.0)
        assert watch.exit_code(summary) == watch.EXIT_NOT_CURRENT
    assert watch.in_progress(watch.fleet_summary([doc(rolling)], [], now=5000.0))
    unread = watch.fleet_summary([doc(done)], [{"group": "d", "host": "d1", "url": "u", "error": "refused"}], 5000.0)
    assert watch.exit_code(unread) == watch.EXIT_UNREADABLE
    assert watch.exit_code(watch.fleet_summary([], [], 5000.0)) == watch.EXIT_UNREADABLE


def test_the_table_names_groups_hosts_and_unreadable_endpoints():
    g = Group("intel-z1")
    g.to_rolling("2.4")
    summary = watch.fleet_summary([doc(g)], [{"group": "amd-z2", "host": "a1", "url": "u", "error": "refused"}],
                                  now=5000.0)
    out = io.StringIO()
    Console(file=out, width=200).print(watch.render(summary, hosts=True))
    text = out.getvalue()
    assert "intel-z1" in text and "rolling" in text and "0/10" in text and "1/10" in text
    assert all(h in text for h in hosts(10)) and "amd-z2" in text and "refused" in text


def args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    watch.add_arguments(p)
    ns = p.parse_args([])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_endpoints_come_from_the_controller_directory_site_yml_writes(tmp_path: Path):
    records = tmp_path / ".quorum-rollout" / "hosts"
    records.mkdir(parents=True)
    for host, group in (("a1", "amd-z1"), ("i1", "intel-z1"), ("i2", "intel-z1")):
        (records / f"{host}.json").write_text(json.dumps({"host": host, "node_id": host, "group": group,
                                                          "api_url": f"http://{host}:7200/",
                                                          "api_token_file": f"/t/{host}.token"}))
    for given in (tmp_path / ".quorum-rollout", records):
        found = watch.endpoints(args(hosts_file=[str(given)]))
        assert [(e.host, e.group, e.url) for e in found] == [
            ("a1", "amd-z1", "http://a1:7200"), ("i1", "intel-z1", "http://i1:7200"),
            ("i2", "intel-z1", "http://i2:7200")]
    poller = watch.Poller(found, timeout=1, verify=True)
    assert sorted(poller.by_group) == ["amd-z1", "intel-z1"] and not poller.plain
    poller.close()


def test_a_bad_record_or_no_endpoint_is_a_clear_error(tmp_path: Path):
    bad = tmp_path / "x.json"
    bad.write_text('{"host": "a1"}')
    with pytest.raises(SystemExit, match=r"x.json: not an endpoint record written by site.yml"):
        watch.endpoints(args(hosts_file=[str(bad)]))
    with pytest.raises(SystemExit, match="no such file or directory"):
        watch.endpoints(args(hosts_file=[str(tmp_path / "missing")]))
    with pytest.raises(SystemExit, match="--url needs --token-file"):
        watch.endpoints(args(url=["http://127.0.0.1:7200"]))


def test_every_option_has_help_text():
    p = argparse.ArgumentParser()
    watch.add_arguments(p)
    assert all(a.help for a in p._actions), [a.dest for a in p._actions if not a.help]
