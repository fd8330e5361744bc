#!/usr/bin/env python3
"""Build the quorum-rollout agent wheel on the controller, reproducibly, for the agent role.

    build_wheel.py OUT_DIR (--source SOURCE_DIR | --wheel FILE) [--wheelhouse DIR]

* Builds from a scratch copy of SOURCE_DIR (pyproject.toml + quorum_rollout/), so the checkout
  is never written to and concurrent runs never share a build directory.
* SOURCE_DATE_EPOCH is fixed, so the same sources give a byte-identical wheel: OUT_DIR's copy
  is replaced only when the sources changed, and hosts reinstall only then.
* With --wheelhouse, the dependency wheels in DIR are packed into OUT_DIR/wheelhouse.tar
  (sorted, fixed mtimes and owners: identical input gives an identical file), so each host
  copies one file and installs offline.
* The sources' digest is kept beside the wheel: unchanged sources reuse it without building.
* With --wheel, a wheel built elsewhere is used as is (copied into OUT_DIR).
* OUT_DIR is a build cache on the controller: it is written in check mode too (no host is).

Prints one JSON object: {"changed": bool, "wheel": path, "sha256": hex, "wheelhouse": path|null,
"stamp": hex}. Standard library only (plus pip and setuptools in this Python).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

EPOCH = 315532800  # 1980-01-01, the earliest date a zip file can hold


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_wheel(source: Path, scratch: Path) -> Path:
    src = scratch / "src"
    src.mkdir()
    shutil.copy2(source / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(source / "quorum_rollout", src / "quorum_rollout",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out = scratch / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                           str(src)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: pip wheel {source} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    wheels = sorted(out.glob("quorum_rollout-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"error: expected one quorum_rollout wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def source_digest(source: Path) -> str:
    """sha256 over the files the wheel is built from (names and contents)."""
    digest = hashlib.sha256()
    files = [source / "pyproject.toml", *sorted(p for p in (source / "quorum_rollout").rglob("*")
                                                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")]
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cached_wheel(out: Path, digest: str) -> Path | None:
    """The wheel built earlier from exactly these sources (builds are reproducible), if any."""
    marker = out / "source.sha256"
    try:
        name, recorded = marker.read_text().split()
    except (OSError, ValueError):
        return None
    wheel = out / name
    return wheel if recorded == digest and wheel.is_file() else None


def pack_wheelhouse(wheelhouse: Path, dest: Path) -> None:
    files = sorted(p for p in wheelhouse.iterdir() if p.is_file() and p.name.endswith(".whl")
                   and not p.name.startswith("quorum_rollout-"))
    if not files:
        raise SystemExit(f"error: no .whl files in the wheelhouse {wheelhouse} "
                         f"(fix: pip wheel --wheel-dir {wheelhouse} ./agent)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime, info.mode = path.stat().st_size, EPOCH, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    dest.write_bytes(buf.getvalue())


def publish(built: Path, dest: Path) -> bool:
    """Copy `built` to `dest` unless identical; True when dest changed."""
    if dest.exists() and sha256(dest) == sha256(built):
        return False
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(built, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="the agent's source directory (with pyproject.toml)")
    what.add_argument("--wheel", help="a built quorum_rollout wheel")
    ap.add_argument("--wheelhouse", help="directory of dependency wheels for offline installs")
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="quorum-rollout-build-") as tmp:
        scratch = Path(tmp)
        if args.wheel:
            wheel = Path(args.wheel)
            if not wheel.is_file() or not wheel.name.startswith("quorum_rollout-") or wheel.suffix != ".whl":
                raise SystemExit(f"error: {wheel} is not a quorum_rollout wheel "
                                 "(fix: point quorum_rollout_wheel at quorum_rollout-<version>-py3-none-any.whl)")
        else:
            source = Path(args.source).resolve()
            if not (source / "pyproject.toml").is_file():
                raise SystemExit(f"error: {source} is not the agent's source (no pyproject.toml) "
                                 "(fix: set quorum_rollout_agent_source, or a built wheel in quorum_rollout_wheel)")
            digest = source_digest(source)
            wheel = cached_wheel(out, digest) or build_wheel(source, scratch)
        house = None
        if args.wheelhouse:
            house = scratch / "wheelhouse.tar"
            pack_wheelhouse(Path(args.wheelhouse), house)
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o700)
        changed = False if wheel.parent == out else publish(wheel, out / wheel.name)
        if not args.wheel:
            (out / "source.sha256").write_text(f"{wheel.name} {digest}\n")
        if house:
            changed = publish(house, out / house.name) or changed
        digest = sha256(wheel)
        stamp = hashlib.sha256((digest + (sha256(house) if house else "")).encode()).hexdigest()
        result = {"changed": changed, "wheel": str(out / wheel.name), "wheel_name": wheel.name, "sha256": digest,
                  "wheelhouse": str(out / house.name) if house else None, "stamp": stamp}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
