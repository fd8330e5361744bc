"""docs/api.md's GET /v1/status reference and quorum.rollout.group_info's RETURN samples against a
real agent's answer: every field the agent returns is documented and every documented field is
returned, at each level (top, node, members, state, release, hosts, history entries). A field
added, renamed or dropped on either side fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.fleet import CLI, Fleet, Host, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def status_section() -> str:
    text = DOCS.read_text()
    return text.split("## GET /v1/status", 1)[1].split("\n## ", 1)[0]


def table_fields(section: str, heading: str) -> set[str]:
    """The field names of the table that follows the line `heading` (`a`, `b` in one cell = two)."""
    table = section.split(f"\n{heading}\n", 1)[1].lstrip("\n").split("\n\n", 1)[0]
    names: set[str] = set()
    for line in table.splitlines()[2:]:
        names |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return names


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, Host]]:
    """One group of three for the module, released to 2.4 (every process stopped by PID at the end)."""
    fleet = Fleet(tmp_path_factory.mktemp("api-docs"), 3)
    try:
        fleet.start_mirror()
        fleet.preinstall("2.3")
        fleet.build_release("2.4")
        fleet.start()
        leader = wait_for(fleet.leader, 30, "a leader")
        resp = leader.post("/v1/releases", {"version": "2.4"})
        assert resp.status_code == 201, resp.text
        wait_for(lambda: (r := leader.status()["state"]["release"]) and r["state"] == "current", 120, "2.4 current")
        yield fleet, leader
    finally:
        fleet.close()


def test_the_status_reference_and_group_info_return_match_a_real_agent(released: tuple[Fleet, Host]) -> None:
    _fleet, leader = released
    real = leader.status()

    section = status_section()
    example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    assert set(example) == set(real), "top-level fields"
    assert set(example["node"]) == set(real["node"]) == table_fields(section, "`node`:"), "node fields"
    assert set(example["state"]) == set(real["state"]), "state fields of the example"
    assert table_fields(section, "`state` (GROUPSTATE), replicated, the same on every member once committed:") \
        == set(real["state"]), "state fields"
    release = real["state"]["release"]
    assert table_fields(section, "RELEASE:") == set(release), "release fields"
    assert [sorted(m) for m in real["members"]] == [sorted(example["members"][0])] * len(real["members"])
    check_group_info_return(real)


def module_return(name: str) -> dict[str, Any]:
    """The RETURN block of a module, read from its source (no import: it needs Ansible's loader)."""
    import ast

    import yaml
    path = DOCS.parents[1] / "plugins" / "modules" / f"{name}.py"
    tree = ast.parse(path.read_text())
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
                and any(getattr(t, "id", "") == "RETURN" for t in n.targets)]
    return yaml.safe_load(value)


def check_group_info_return(real: dict[str, Any]) -> None:
    """What quorum.rollout.group_info documents (RETURN: fields and samples) is what an agent answers."""
    doc = module_return("group_info")

    assert set(doc["node"]["contains"]) <= set(real["node"]), "documented node fields the agent does not return"
    assert set(doc["state"]["contains"]) <= set(real["state"])
    assert set(doc["state"]["sample"]) <= set(real["state"])
    release = real["state"]["release"]
    assert set(doc["release"]["sample"]) <= set(release)
    sample_host = next(iter(doc["release"]["sample"]["hosts"].values()))
    assert all(set(h) == set(sample_host) for h in release["hosts"].values()), release["hosts"]
    assert [sorted(m) for m in real["members"]] == [sorted(doc["members"]["sample"][0])] * len(real["members"])
    (event,) = doc["events"]["sample"]
    for entry in real["state"]["history"]:
        assert set(entry) == set(event), (entry, event)
        both = [k for k in entry if entry[k] is not None and event[k] is not None]
        assert [type(entry[k]) for k in both] == [type(event[k]) for k in both], (entry, event)


class _VisibleText(HTMLParser):
    """The text a reader sees in a DOM dump: everything but the head (title, style)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._hidden += tag in ("head", "style", "script", "title")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("head", "style", "script", "title")

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.parts.append(data.strip())


CHROMIUM = shutil.which("chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "output"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; "
                    ".ci/run installs it): the status page is tested in a real browser or not at all")
def test_the_status_page_in_a_real_browser(released: tuple[Fleet, Host], tmp_path: Path) -> None:
    """Chromium (headless, its own profile, nothing but the agent to talk to) opens the URL that
    `quorum-rollout status --page-url` prints; a screenshot goes to tests/output/status-page.png and
    the text a reader sees names the group, every member with its liveness, and the release."""
    fleet, leader = released
    follower = next(h for h in fleet.hosts if h is not leader)
    url = subprocess.run([*CLI, "status", "--page-url", "-c", str(follower.config_path)], capture_output=True,
                         text=True, check=True, env=fleet.env).stdout.strip()
    assert url.startswith(follower.api_url + "/ui/"), url
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "status-page.png"
    shot.unlink(missing_ok=True)
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                             f"--screenshot={shot}", "--dump-dom", url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    fleet.pids.add(proc.pid)
    try:
        dom, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, (proc.returncode, dom[-500:])
    reader = _VisibleText()
    reader.feed(dom.decode())
    text = " ".join(reader.parts)
    assert f"Group {fleet.group}" in text, text
    assert f"Seen from {follower.id} (follower" in text and f"leader {leader.id}" in text, text
    assert "the group runs 2.4" in text and "Release 2.4#1" in text and "current" in text, text
    assert "3/3 hosts updated" in text and "batch 3 of 3" in text, text
    for host in fleet.hosts:
        assert host.id in text, host.id
    assert text.count("reachable") >= 3 and "unreachable" not in text, text
    assert "all 3 hosts run 2.4" in text, "the last events"
    # The key in the URL opens the page only: not the JSON API.
    key = url.rsplit("/", 1)[1]
    assert requests.get(follower.api_url + "/v1/status", headers={"Authorization": f"Bearer {key}"},
                        timeout=5).status_code == 401
