# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The collection's copy of the agent's contract against its source and the agent.

plugins/module_utils/contract.py is written by ``make contract`` from
agent/quorum_rollout/contract.py (the plugins cannot import the agent package): a comment
header, then the source byte for byte. The agent's package is importable here (conftest.py).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quorum_rollout import fsm

from ansible_collections.quorum.rollout.plugins.module_utils import contract

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(contract.__file__))))
SOURCE = os.path.join(ROOT, "agent", "quorum_rollout", "contract.py")


def test_the_copy_is_the_source_after_its_header():
    with open(contract.__file__, "rb") as handle:
        copy = handle.read()
    with open(SOURCE, "rb") as handle:
        source = handle.read()
    assert copy.endswith(source), (
        "plugins/module_utils/contract.py differs from agent/quorum_rollout/contract.py: run `make contract`")
    header = copy[:len(copy) - len(source)].decode("utf-8").splitlines()
    assert all(line.startswith("#") or not line for line in header), header
    assert "# generated from agent/quorum_rollout/contract.py; do not edit" in "\n".join(header)
    assert "# SPDX-License-Identifier: GPL-3.0-or-later" in header


# Versions as people write them: main[-pre][+build], parts numeric ("10", "007"), text ("rc",
# "beta") or both ("1a"), pre-release parts separated by "." or "-".
NUMERIC = st.integers(min_value=0, max_value=10 ** 6).map(str) | st.sampled_from(["0", "00", "007", "10"])
TEXT = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,5}", fullmatch=True)
MIXED = st.from_regex(r"[0-9]{1,3}[A-Za-z][A-Za-z0-9]{0,3}", fullmatch=True)
PART = NUMERIC | TEXT | MIXED


@st.composite
def versions(draw):
    main = ".".join(draw(st.lists(PART, min_size=1, max_size=4)))
    if draw(st.booleans()):
        pre = draw(st.lists(PART, min_size=1, max_size=3))
        main += "-" + "".join(part + draw(st.sampled_from([".", "-"])) for part in pre[:-1]) + pre[-1]
    if draw(st.booleans()):
        main += "+" + ".".join(draw(st.lists(PART, min_size=1, max_size=2)))
    return main


# Anything the version syntax allows, such as "1..2", "1-", "2.5-+x" or "a.-b".
ANY_VALID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,20}", fullmatch=True)
VERSION = versions() | ANY_VALID


@settings(max_examples=500)
@given(a=VERSION, b=VERSION)
@example(a="2.5-rc1", b="2.5")
@example(a="2.5+b2", b="2.5")
@example(a="2.5-rc1+b7", b="2.5-rc1")
@example(a="2.5-rc.2", b="2.5-rc-10")
@example(a="1.a", b="1.2")
def test_version_order_is_the_agents(a, b):
    assert contract.compare_versions(a, b) == fsm.compare_versions(a, b)


@given(VERSION)
def test_a_pre_release_sorts_before_its_release_and_build_metadata_is_ignored(version):
    release = version.split("+", 1)[0].split("-", 1)[0]
    for side in (contract, fsm):
        assert side.compare_versions(release + "-rc1", release) == -1
        assert side.compare_versions(release + "+b2", release) == 0


@pytest.mark.parametrize("a, b, expected", [
    ("2.4", "2.10", -1), ("2.10", "2.4", 1), ("2.4", "2.4", 0), ("2.4.1", "2.4", 1), ("10", "9", 1),
    ("2.4-rc1", "2.4-rc2", -1), ("2.4", "2.4-rc1", 1), ("2.5-rc1", "2.5", -1), ("2.5+b2", "2.5", 0),
    ("1.a", "1.2", 1), ("2.5-rc.10", "2.5-rc.9", 1),
])
def test_version_order_examples(a, b, expected):
    assert contract.compare_versions(a, b) == expected == fsm.compare_versions(a, b)


@given(st.text(max_size=70) | ANY_VALID)
@example(".")
@example("..")
def test_valid_version_is_the_agents(text):
    assert contract.valid_version(text) == fsm.valid_version(text)
