#!/usr/bin/env python
"""Write plugins/module_utils/contract.py, the collection's copy of agent/quorum_rollout/contract.py.

    scripts/generate_contract.py           # (re)write the copy (`make contract`)
    scripts/generate_contract.py --check   # exit 1 if the copy differs from what it would write

The collection's plugins cannot import the agent package (modules run on hosts where it is not
installed), so they use this copy: a comment header, then the source byte for byte.
tests/unit/plugins/module_utils/test_module_utils_contract.py fails while the two differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "agent/quorum_rollout/contract.py"
COPY = "plugins/module_utils/contract.py"
HEADER = f"""\
# -*- coding: utf-8 -*-
# Copyright (c) 2026, quorum.rollout contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# generated from {SOURCE}; do not edit: change the source, then run `make contract`.

"""


def render() -> bytes:
    return HEADER.encode("utf-8") + (ROOT / SOURCE).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only tell whether the copy is up to date")
    args = parser.parse_args(argv)
    target = ROOT / COPY
    wanted = render()
    current = target.read_bytes() if target.exists() else None
    if current == wanted:
        return 0
    if args.check:
        print(f"{COPY} differs from {SOURCE}: run `make contract` and commit it", file=sys.stderr)
        return 1
    target.write_bytes(wanted)
    print(f"wrote {COPY} from {SOURCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
