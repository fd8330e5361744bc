"""The agent role's controller-side state, kept in one directory (mode 0700), files 0600:

    groups/<group>.secret   one Raft cluster secret per group (64 random characters)
    tokens/<host>.token     one API bearer token per host (48 random characters)
    hosts/<host>.json       where each host's agent answers: group, API URL, token file
                            (read by playbooks/release.yml and playbooks/status.yml)

    controller_state.py DIR [--check] < {"members": [...], "absent": [...]}

`members` (on stdin) lists the hosts that are members: {host, id, group, api_url, config_file,
install_root}; `absent` the names of hosts removed from their group (quorum_rollout_state=absent),
whose endpoint records are deleted (their token stays, should they come back). Secrets and
tokens that exist are never changed (rotate them by deleting the file and running site.yml);
endpoint records are rewritten when they differ. With --check nothing is written. Prints one
JSON object {"changed": bool, "created": [...], "updated": [...], "removed": [...]} with paths
only, never a secret. Standard library only; runs with the controller's Python.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
from pathlib import Path

ALPHABET = string.ascii_letters + string.digits


def _private_dir(path: Path, check: bool) -> None:
    if check:
        return
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _random(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _i in range(n))


def main() -> int:
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--check"):
        raise SystemExit(__doc__)
    base, check = Path(sys.argv[1]), len(sys.argv) == 3
    given = json.load(sys.stdin)
    members, absent = given["members"], given.get("absent", [])
    created: list[str] = []
    updated: list[str] = []
    removed: list[str] = []
    for sub in ("", "groups", "tokens", "hosts"):
        _private_dir(base / sub, check)

    def ensure_secret(path: Path, length: int) -> None:
        if path.exists():
            if not check and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)
            return
        created.append(str(path))
        if not check:
            _write_private(path, _random(length))

    for group in sorted({m["group"] for m in members}):
        ensure_secret(base / "groups" / f"{group}.secret", 64)
    for member in members:
        token = base / "tokens" / f"{member['host']}.token"
        ensure_secret(token, 48)
        record = {"host": member["host"], "node_id": member["id"], "group": member["group"],
                  "api_url": member["api_url"], "api_token_file": str(token),
                  "config_file": member.get("config_file"), "install_root": member.get("install_root")}
        path = base / "hosts" / f"{member['host']}.json"
        text = json.dumps(record, indent=2, sort_keys=True) + "\n"
        try:
            same = path.read_text() == text
        except OSError:
            same = False
        if not same:
            (updated if path.exists() else created).append(str(path))
            if not check:
                _write_private(path, text)
    for host in absent:
        path = base / "hosts" / f"{host}.json"
        if path.exists():
            removed.append(str(path))
            if not check:
                path.unlink()
    print(json.dumps({"changed": bool(created or updated or removed), "created": created, "updated": updated,
                      "removed": removed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
