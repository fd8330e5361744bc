"""install.py: safe unpacking, idempotent installs, atomic `current` swaps, hooks, pruning, disk space."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout import install as I


def make_tar(path: Path, entries: list[tuple[Any, ...]], compression: str = "gz") -> Path:
    """entries: (name, "file", data[, mode]) | (name, "dir") | (name, "symlink"|"hardlink", target)
    | (name, "chr"|"fifo")."""
    with tarfile.open(path, f"w:{compression}" if compression else "w") as tf:
        for name, kind, *rest in entries:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, rest[0]
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    """entries: (name, data, full unix mode incl. file type)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr, info.compress_type = mode << 16, zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


APP = [("bin", "dir"), ("bin/app", "file", b"#!/bin/sh\necho app\n", 0o755), ("README", "file", b"hello\n"),
       ("lib/data.txt", "file", b"data"), ("lib/link", "symlink", "data.txt"), ("bin/readme", "symlink", "../README"),
       ("lib/hard", "hardlink", "lib/data.txt"), ("./share/", "dir")]


def leftovers(root: Path) -> list[str]:
    releases = root / "releases"
    return sorted(p.name for p in releases.iterdir()) if releases.exists() else []


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_install_tar_formats(tmp_path: Path, compression: str) -> None:
    archive = make_tar(tmp_path / "app.tar", APP, compression)
    root = tmp_path / "root"
    dest = I.install_release(root, "2.4", archive)
    assert dest == root / "releases" / "2.4" and (dest / I.COMPLETE_MARKER).is_file()
    assert (dest / "bin/app").read_bytes().startswith(b"#!/bin/sh")
    assert stat.S_IMODE((dest / "bin/app").stat().st_mode) == 0o755
    assert os.readlink(dest / "lib/link") == "data.txt" and (dest / "bin/readme").read_text() == "hello\n"
    assert (dest / "lib/hard").stat().st_ino == (dest / "lib/data.txt").stat().st_ino
    assert (dest / "share").is_dir()
    assert leftovers(root) == ["2.4"]


def test_install_zip(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "app.zip", [
        ("app/", b"", stat.S_IFDIR | 0o755), ("app/run", b"#!/bin/sh\n", stat.S_IFREG | 0o750),
        ("app/link", b"run", stat.S_IFLNK | 0o777), ("plain.txt", b"x", 0)])
    dest = I.install_release(tmp_path / "root", "1.0", archive)
    assert stat.S_IMODE((dest / "app/run").stat().st_mode) == 0o750
    assert os.readlink(dest / "app/link") == "run" and (dest / "plain.txt").read_bytes() == b"x"


def test_install_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dest = I.install_release(root, "1.0", make_tar(tmp_path / "a.tgz", [("v", "file", b"first")]))
    marker_mtime = (dest / I.COMPLETE_MARKER).stat().st_mtime_ns
    other = make_tar(tmp_path / "b.tgz", [("v", "file", b"second")])
    assert I.install_release(root, "1.0", other) == dest
    assert (dest / "v").read_bytes() == b"first"
    assert (dest / I.COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime
    assert leftovers(root) == ["1.0"]


def test_incomplete_release_dir_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "releases" / "1.0").mkdir(parents=True)
    (root / "releases" / "1.0" / "junk").write_text("half")
    dest = I.install_release(root, "1.0", make_tar(tmp_path / "a.tgz", [("v", "file", b"ok")]))
    assert sorted(p.name for p in dest.iterdir()) == [I.COMPLETE_MARKER, "v"]
    assert leftovers(root) == ["1.0"]


UNSAFE_TARS = [
    ("absolute path", [("/etc/evil", "file", b"x")], "/etc/evil", "absolute"),
    ("dotdot", [("a/../../evil", "file", b"x")], "a/../../evil", "'..'"),
    ("escaping symlink", [("lnk", "symlink", "../../outside")], "lnk", "escapes"),
    ("absolute symlink", [("lnk", "symlink", "/etc/passwd")], "lnk", "absolute"),
    ("symlink chain escape", [("x", "symlink", "."), ("y", "symlink", "x/..")], "y", "escapes"),
    ("write through symlink", [("d", "symlink", "sub"), ("d/f", "file", b"x")], "d/f", "symlink"),
    ("escaping hardlink", [("h", "hardlink", "../../outside")], "h", "escapes"),
    ("absolute hardlink", [("h", "hardlink", "/etc/passwd")], "h", "escapes"),
    ("hardlink to missing", [("h", "hardlink", "nothing")], "h", "not a file"),
    ("device file", [("dev", "chr")], "dev", "device"),
    ("fifo", [("pipe", "fifo")], "pipe", "fifo"),
    ("setuid", [("su", "file", b"x", 0o4755)], "su", "setuid"),
    ("setgid dir", [("d", "dir", 0o2755)], "d", "setgid"),
    ("duplicate", [("f", "file", b"x"), ("f", "symlink", "g")], "f", "already used"),
    ("reserved marker", [(I.COMPLETE_MARKER, "file", b"")], I.COMPLETE_MARKER, "reserved"),
]


@pytest.mark.parametrize(("case", "entries", "member", "rule"), UNSAFE_TARS, ids=[u[0] for u in UNSAFE_TARS])
def test_unsafe_tar_is_refused(tmp_path: Path, case: str, entries: list[tuple[Any, ...]], member: str,
                               rule: str) -> None:
    root = tmp_path / "deep" / "root"
    archive = make_tar(tmp_path / "bad.tgz", [("ok.txt", "file", b"fine"), *entries])
    with pytest.raises(I.UnsafeArchive) as info:
        I.install_release(root, "6.6", archive)
    assert info.value.member == member and rule in info.value.rule, str(info.value)
    assert member in str(info.value)
    assert leftovers(root) == [] and not (tmp_path / "outside").exists() and not (tmp_path / "deep/evil").exists()


UNSAFE_ZIPS = [
    ("zip dotdot", [("../evil", b"x", stat.S_IFREG | 0o644)], "../evil", "'..'"),
    ("zip absolute", [("/tmp/evil", b"x", stat.S_IFREG | 0o644)], "/tmp/evil", "absolute"),
    ("zip escaping symlink", [("l", b"../../x", stat.S_IFLNK | 0o777)], "l", "escapes"),
    ("zip setuid", [("s", b"x", stat.S_IFREG | 0o4755)], "s", "setuid"),
    ("zip fifo", [("p", b"", stat.S_IFIFO | 0o644)], "p", "fifo"),
    ("zip backslash", [("..\\evil", b"x", stat.S_IFREG | 0o644)], "..\\evil", "backslash"),
]


@pytest.mark.parametrize(("case", "entries", "member", "rule"), UNSAFE_ZIPS, ids=[u[0] for u in UNSAFE_ZIPS])
def test_unsafe_zip_is_refused(tmp_path: Path, case: str, entries: list[tuple[str, bytes, int]], member: str,
                               rule: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(I.UnsafeArchive) as info:
        I.install_release(root, "6.6", make_zip(tmp_path / "bad.zip", entries))
    assert info.value.member == member and rule in info.value.rule, str(info.value)
    assert leftovers(root) == []


def test_bomb_by_ratio_is_refused_before_writing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bomb.tgz", [("zeros", "file", b"\0" * (8 << 20))])
    assert archive.stat().st_size * 200 < 8 << 20
    root = tmp_path / "root"
    with pytest.raises(I.UnsafeArchive) as info:
        I.install_release(root, "1", archive)
    assert info.value.member == "zeros" and "200x the archive size" in info.value.rule
    assert leftovers(root) == []
    assert I.install_release(root, "1", archive, max_ratio=10_000).is_dir()  # allowed when asked


def test_bomb_by_size_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "big.tar", [("a", "file", b"a" * 600), ("b", "file", b"b" * 600)], "")
    with pytest.raises(I.UnsafeArchive) as info:
        I.install_release(tmp_path / "root", "1", archive, max_bytes=1000)
    assert info.value.member == "b" and "1000-byte limit" in info.value.rule


def test_zip_bomb_by_ratio(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "bomb.zip", [("z", b"\0" * (4 << 20), stat.S_IFREG | 0o644)])
    with pytest.raises(I.UnsafeArchive, match="archive size"):
        I.install_release(tmp_path / "root", "1", archive)


def test_written_bytes_are_counted(tmp_path: Path) -> None:
    """A zip whose central directory under-declares a size: never more than declared is written."""
    archive = make_zip(tmp_path / "lie.zip", [("f", b"x" * 5000, stat.S_IFREG | 0o644)])
    raw = bytearray(archive.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24:central + 28] = (10).to_bytes(4, "little")  # uncompressed size: 10
    archive.write_bytes(bytes(raw))
    root = tmp_path / "root"
    with pytest.raises(I.InstallError):
        I.install_release(root, "1", archive)
    assert leftovers(root) == []


def test_not_an_archive_and_bad_versions(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(I.InstallError, match="not a readable tar or zip"):
        I.install_release(tmp_path / "root", "1", junk)
    with pytest.raises(I.InstallError, match="does not exist"):
        I.install_release(tmp_path / "root", "1", tmp_path / "missing.tgz")
    for bad in (".", "..", "", "a/b", ".hidden", "x" * 65, "v 1"):
        with pytest.raises(I.InstallError, match="invalid version"):
            I.install_release(tmp_path / "root", bad, junk)
    assert I.check_version("2.4.1+build_7-rc.1") == "2.4.1+build_7-rc.1"


# ----------------------------------------------------------------------------- activate

def installed(tmp_path: Path, *versions: str) -> Path:
    root = tmp_path / "root"
    for v in versions:
        I.install_release(root, v, make_tar(tmp_path / f"{v}.tgz", [("VERSION", "file", v.encode())]))
    return root


def test_activate_and_rollback(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "2.0")
    assert I.current_version(root) is None
    assert I.activate(root, "1.0") is None
    assert os.readlink(root / "current") == "releases/1.0"
    assert I.activate(root, "2.0") == "1.0"
    assert (root / "current" / "VERSION").read_text() == "2.0"
    assert I.activate(root, "2.0") == "2.0"  # already current: nothing to do
    assert I.activate(root, "1.0") == "2.0"  # rollback
    assert I.current_version(root) == "1.0"
    assert not list(root.glob("current.tmp-*"))


def test_activate_refuses_incomplete_or_foreign(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0")
    (root / "releases" / "3.0").mkdir()
    with pytest.raises(I.InstallError, match="not completely installed"):
        I.activate(root, "3.0")
    with pytest.raises(I.InstallError, match="not completely installed"):
        I.activate(root, "9.9")
    (root / "current").mkdir()
    with pytest.raises(I.InstallError, match="not a symlink"):
        I.activate(root, "1.0")
    (root / "current").rmdir()
    os.symlink("/elsewhere/9", root / "current")
    with pytest.raises(I.InstallError, match="outside"):
        I.current_version(root)


def test_current_is_never_missing_during_swaps(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "2.0")
    I.activate(root, "1.0")
    stop, failures, reads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                assert os.readlink(root / "current") in ("releases/1.0", "releases/2.0")
                reads[0] += 1
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            I.activate(root, "2.0" if i % 2 == 0 else "1.0")
            assert os.readlink(root / "current") == ("releases/2.0" if i % 2 == 0 else "releases/1.0")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert failures == [] and reads[0] > 0


# ----------------------------------------------------------------------------- hooks

def test_hook_env_and_output(tmp_path: Path) -> None:
    root = installed(tmp_path, "2.4")
    out = I.run_hook("restart", 'echo "$QR_VERSION|$QR_RELEASE_DIR|$QR_ROOT|$QR_HOOK|$(pwd)"; echo err >&2',
                     version="2.4", root=root, timeout=10)
    assert out.splitlines() == [f"2.4|{root / 'releases' / '2.4'}|{root}|restart|{root}", "err"]


def test_hook_output_tail_is_bounded(tmp_path: Path) -> None:
    out = I.run_hook("start", "seq 1 5000", version="1", root=tmp_path, timeout=10)
    assert len(out.encode()) <= I.OUTPUT_TAIL and out.rstrip().endswith("5000")


def test_hook_failure(tmp_path: Path) -> None:
    with pytest.raises(I.HookFailed) as info:
        I.run_hook("stop", "echo stopping; exit 3", version="1", root=tmp_path, timeout=10)
    assert info.value.rc == 3 and info.value.name == "stop" and "stopping" in info.value.output_tail
    assert "exited with status 3" in str(info.value)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie waiting for its reaper
    except FileNotFoundError:
        return True


def test_hook_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(I.HookFailed) as info:
        I.run_hook("start", f"sleep 60 & echo $! > {pidfile}; echo waiting; wait", version="1", root=tmp_path,
                   timeout=0.5)
    assert time.monotonic() - started < 10
    assert info.value.rc is None and info.value.timeout == 0.5 and "timed out after 0.5s" in str(info.value)
    assert "waiting" in info.value.output_tail
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(child), "the hook's background child survived the timeout"


def test_hook_may_leave_a_daemon_running_on_success(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon.pid"
    I.run_hook("start", f"nohup sleep 30 >/dev/null 2>&1 & echo $! > {pidfile}", version="1", root=tmp_path,
               timeout=5)
    pid = int(pidfile.read_text())
    try:
        assert not _gone(pid)
    finally:
        os.kill(pid, 9)


# ----------------------------------------------------------------------------- prune

def test_prune_keeps_newest_protected_and_current(tmp_path: Path) -> None:
    versions = ["1", "2", "3", "4", "5", "6"]
    root = installed(tmp_path, *versions)
    now = time.time()
    for i, v in enumerate(versions):  # install times 1 < 2 < ... < 6
        os.utime(root / "releases" / v / I.COMPLETE_MARKER, (now - 600 + i, now - 600 + i))
    I.activate(root, "2")
    stale = root / "releases" / ".tmp-9-abc"
    stale.mkdir()
    os.utime(stale, (now - 2 * I.STALE_SECONDS, now - 2 * I.STALE_SECONDS))
    fresh = root / "releases" / ".tmp-10-def"
    fresh.mkdir()
    assert I.list_releases(root) == ["6", "5", "4", "3", "2", "1"]
    removed = I.prune(root, keep=2, protect={"3"})
    assert sorted(removed) == ["1", "4"]
    assert I.list_releases(root) == ["6", "5", "3", "2"]
    assert not stale.exists() and fresh.exists()
    assert I.prune(root, keep=2, protect={"3"}) == []


def test_prunable_and_remove_release(tmp_path: Path) -> None:
    root = installed(tmp_path, "1", "2", "3")
    now = time.time()
    for i, v in enumerate(["1", "2", "3"]):
        os.utime(root / "releases" / v / I.COMPLETE_MARKER, (now - 60 + i, now - 60 + i))
    I.activate(root, "1")
    assert I.prunable(root, 1) == ["2"]  # 3 is the newest, 1 is current
    assert I.prunable(root, 1, {"2"}) == []
    with pytest.raises(I.InstallError, match="is the current release"):
        I.remove_release(root, "1")
    freed = I.remove_release(root, "2")
    assert freed > 0 and leftovers(root) == ["1", "3"]
    with pytest.raises(FileNotFoundError):
        I.remove_release(root, "2")  # gone already: the caller decides whether that matters


def test_remove_tree_counts_each_inode_once(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(os.urandom(10_000))
    os.link(tree / "d" / "f", tree / "hard")
    os.symlink("d", tree / "dirlink")
    os.symlink("/etc", tree / "outside")
    outside_before = sorted(os.listdir("/etc"))
    expected = sum(os.lstat(p).st_blocks * 512 for p in [tree, tree / "d", tree / "d" / "f", tree / "dirlink",
                                                         tree / "outside"])
    assert I.remove_tree(tree) == expected and not tree.exists()
    assert sorted(os.listdir("/etc")) == outside_before  # symlinks are removed, never followed
    (tmp_path / "file").write_bytes(b"x" * 5000)
    assert I.remove_tree(tmp_path / "file") >= 5000
    with pytest.raises(FileNotFoundError):
        I.remove_tree(tmp_path / "file")


# ----------------------------------------------------------------------------- artifact digest

def test_marker_records_the_store_digest(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tgz", [("VERSION", "file", b"2.0")])
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    stored = tmp_path / "store" / "sha256" / digest
    stored.parent.mkdir(parents=True)
    os.replace(archive, stored)
    root = tmp_path / "root"
    dest = I.install_release(root, "2.0", stored)
    assert (dest / I.COMPLETE_MARKER).read_text().splitlines() == ["2.0", f"sha256={digest}"]
    assert I.release_digest(root, "2.0") == digest
    I.install_release(root, "3.0", make_tar(tmp_path / "b.tgz", [("VERSION", "file", b"3.0")]))
    assert I.release_digest(root, "3.0") is None  # not a store path: no digest recorded
    assert I.release_digest(root, "9.9") is None  # not installed


def test_markers_of_older_installs_still_read(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0", "1.1")
    (root / "releases" / "1.0" / I.COMPLETE_MARKER).write_text("1.0\n")  # written by an older agent
    (root / "releases" / "1.1" / I.COMPLETE_MARKER).write_text("")  # laid out by hand (roles/demo_app)
    for version in ("1.0", "1.1"):
        assert I.is_complete(root, version) and I.release_digest(root, version) is None
    assert I.activate(root, "1.0") is None and sorted(I.list_releases(root)) == ["1.0", "1.1"]


# ----------------------------------------------------------------------------- disk space

def test_free_space_margin_is_checked_before_unpacking(tmp_path: Path) -> None:
    root = installed(tmp_path, "1.0")
    I.activate(root, "1.0")
    archive = make_tar(tmp_path / "2.tgz", [("VERSION", "file", b"2.0")])
    with pytest.raises(I.InsufficientSpace) as info:
        I.install_release(root, "2.0", archive, free_space_margin=10**18)
    message = str(info.value)
    assert str(root / "releases") in message and f"{info.value.needed} bytes needed" in message
    assert f"{info.value.free} bytes free" in message and "install.keep_releases" in message
    assert info.value.needed > 10**18 > info.value.free
    assert leftovers(root) == ["1.0"] and I.current_version(root) == "1.0"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root); skipped with the reason when mounting fails."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                              check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a 1 MiB tmpfs for the disk-full test: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs for the disk-full test (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=30)


def test_full_disk_is_refused_before_writing(tmp_path: Path, tiny_fs: Path) -> None:
    root = tiny_fs / "root"
    I.install_release(root, "1.0", make_tar(tmp_path / "1.tgz", [("VERSION", "file", b"1.0")]), free_space_margin=0)
    I.activate(root, "1.0")
    used = shutil.disk_usage(tiny_fs).used
    big = make_tar(tmp_path / "big.tgz", [("blob", "file", os.urandom(2 << 20))])  # 2 MiB on a 1 MiB disk
    with pytest.raises(I.InsufficientSpace, match=r"too little free space to unpack a release: \d+ bytes needed"):
        I.install_release(root, "2.0", big, free_space_margin=0)
    # 300 one-byte files declare 300 bytes but take 300 blocks: the check counts blocks
    many = make_tar(tmp_path / "many.tgz", [(f"f{i}", "file", b"x") for i in range(300)])
    with pytest.raises(I.InsufficientSpace) as info:
        I.install_release(root, "3.0", many, free_space_margin=0)
    assert info.value.needed >= 300 * 4096 > info.value.free
    assert shutil.disk_usage(tiny_fs).used == used  # refused before writing anything
    assert leftovers(root) == ["1.0"] and I.current_version(root) == "1.0"


def test_disk_filling_up_during_unpack_loses_nothing(tmp_path: Path, tiny_fs: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tiny_fs / "root"
    I.install_release(root, "1.0", make_tar(tmp_path / "1.tgz", [("VERSION", "file", b"1.0")]), free_space_margin=0)
    I.activate(root, "1.0")
    archive = make_tar(tmp_path / "2.tgz", [("VERSION", "file", b"2.0"), ("blob", "file", os.urandom(600_000))])
    filler = tiny_fs / "filler"
    check = I._space_needed

    def check_then_fill(*args: Any) -> int:  # another writer takes the space between check and write
        needed = check(*args)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        return needed

    monkeypatch.setattr(I, "_space_needed", check_then_fill)
    with pytest.raises(I.InsufficientSpace, match="ran out of space while unpacking") as info:
        I.install_release(root, "2.0", archive, free_space_margin=0)
    assert info.value.directory == root / "releases" and info.value.needed > 600_000
    assert leftovers(root) == ["1.0"]  # no temporary directory left
    assert I.current_version(root) == "1.0" and (root / "current" / "VERSION").read_bytes() == b"1.0"
    monkeypatch.undo()
    filler.unlink()
    assert I.install_release(root, "2.0", archive, free_space_margin=0).is_dir()  # space freed: it installs
