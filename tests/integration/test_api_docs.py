"""docs/api.md's GET /v1/status reference and quorum.rollout.group_info's RETURN samples against a
real agent's answer: every field the agent returns is documented and every documented field is
returned, at each level (top, node, members, state, release, hosts, history entries). A field
added, renamed or dropped on either side fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.support.fleet import wait_for

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


def test_the_status_reference_and_group_info_return_match_a_real_agent(make_fleet: Any) -> None:
    fleet = make_fleet(3)
    fleet.start_mirror()
    fleet.preinstall("2.3")
    fleet.build_release("2.4")
    fleet.start()
    leader = wait_for(fleet.leader, 30, "a leader")
    resp = leader.post("/v1/releases", {"version": "2.4"})
    assert resp.status_code == 201, resp.text
    wait_for(lambda: (r := leader.status()["state"]["release"]) and r["state"] == "current", 120, "2.4 current")
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
