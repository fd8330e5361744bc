"""Releases on disk: `<root>/releases/<version>/` plus the atomic `<root>/current` symlink.

* `install_release` unpacks a tar (plain/gz/bz2/xz) or zip archive into a fresh temporary
  directory, refusing anything unsafe (`UnsafeArchive` names the member and the rule), writes
  the `.quorum-complete` marker there and renames the directory into place, so a release
  directory either is complete or does not exist. Installing again is a no-op. The marker holds
  the version and, when the archive came from the artifact store (its file name is a sha256
  digest), `sha256=<digest>`: `release_digest` reads it back so the store can be pruned.
* Free space is checked before anything is unpacked (`InsufficientSpace`), and a disk that fills
  up anyway fails the same way: the temporary directory is removed, nothing else is touched.
* `activate` points `current` at a complete release by renaming a new symlink over it
  (`os.replace`): `current` is never missing, and it is the truth of what the host runs.
* `run_hook` runs the configured stop/start/restart commands, each in its own process group.
  A hook that starts a background process must redirect that process's output (e.g.
  `nohup app >>app.log 2>&1 &`): the hook's own output goes to a temporary file.
"""

from __future__ import annotations

import errno
import lzma
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

COMPLETE_MARKER = ".quorum-complete"
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_MAX_RATIO = 200
DEFAULT_FREE_SPACE_MARGIN = 64 * 1024**2
OUTPUT_TAIL = 4096
STALE_SECONDS = 3600.0
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_CHUNK = 1 << 20


class InstallError(Exception):
    """Installing, activating or hooking a release failed."""


class UnsafeArchive(InstallError):
    """The archive holds a member that must not be unpacked."""

    def __init__(self, member: str, rule: str) -> None:
        super().__init__(f"unsafe archive member {member!r}: {rule}")
        self.member, self.rule = member, rule


class InsufficientSpace(InstallError):
    """The releases directory's filesystem has (or had, mid-unpack) too little free space."""

    def __init__(self, directory: Path, needed: int, free: int, *, during_write: bool = False) -> None:
        what = "ran out of space while unpacking" if during_write else "has too little free space to unpack"
        super().__init__(f"{directory} {what} a release: {needed} bytes needed (content rounded to blocks + "
                         f"margin), {free} bytes free; nothing was changed: free space there or lower "
                         "install.keep_releases")
        self.directory, self.needed, self.free = directory, needed, free


class HookFailed(InstallError):
    """A hook exited non-zero (`rc`) or timed out (`rc` is None, `timeout` set)."""

    def __init__(self, name: str, rc: int | None, output_tail: str, *, timeout: float | None = None) -> None:
        what = f"timed out after {timeout:g}s and was killed" if rc is None else f"exited with status {rc}"
        shown = output_tail.strip()[-1000:] or "(no output)"
        super().__init__(f"hook {name!r} {what}; output: {shown}")
        self.name, self.rc, self.output_tail, self.timeout = name, rc, output_tail, timeout


def check_version(version: str) -> str:
    """Return `version` if it is safe as a directory name, else raise `InstallError`."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise InstallError(f"invalid version {version!r}: use 1-64 characters from A-Z a-z 0-9 . _ + -, "
                           "starting with a letter or digit")
    return version


def release_dir(root: str | os.PathLike[str], version: str) -> Path:
    return Path(root) / "releases" / check_version(version)


def is_complete(root: str | os.PathLike[str], version: str) -> bool:
    return (release_dir(root, version) / COMPLETE_MARKER).is_file()


def release_digest(root: str | os.PathLike[str], version: str) -> str | None:
    """The sha256 of the store artifact `version` was installed from, from its marker; None when the
    release is not installed or its marker names none (installed from elsewhere, or by an older agent)."""
    try:
        lines = (release_dir(root, version) / COMPLETE_MARKER).read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    found = [line[7:] for line in lines[1:] if line.startswith("sha256=")]
    return found[0] if found and _DIGEST_RE.fullmatch(found[0]) else None


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- archives

@dataclass
class _Member:
    name: str           # normalised relative path ("" for the archive's root entry)
    kind: str           # file | dir | symlink | hardlink
    size: int           # declared size of a file
    mode: int           # permission bits from the archive
    target: str = ""    # link target
    opener: Callable[[], IO[bytes]] | None = None


def _normalise(name: str, what: str = "path") -> str:
    if name.startswith("/"):
        raise UnsafeArchive(name, f"absolute {what} is not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(name, f"'..' in the {what} is not allowed")
    return "/".join(parts)


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for m in tf:
        if m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeArchive(m.name, "device and fifo files are not allowed")
        kinds = {"file": m.isreg(), "dir": m.isdir(), "symlink": m.issym(), "hardlink": m.islnk()}
        kind = next((k for k, yes in kinds.items() if yes), None)
        if kind is None:
            raise UnsafeArchive(m.name, f"unsupported member type {m.type!r}")
        opener = (lambda m=m: tf.extractfile(m)) if kind == "file" else None
        yield _Member(m.name, kind, m.size if kind == "file" else 0, m.mode, m.linkname, opener)  # type: ignore[arg-type]


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        name, full = info.filename, info.external_attr >> 16
        if "\\" in name:
            raise UnsafeArchive(name, "backslashes in zip member names are not allowed")
        if info.flag_bits & 0x1:
            raise UnsafeArchive(name, "encrypted members are not supported")
        ftype = stat.S_IFMT(full)
        if ftype in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise UnsafeArchive(name, "device, fifo and socket files are not allowed")
        if info.is_dir() or ftype == stat.S_IFDIR:
            yield _Member(name, "dir", 0, (full & 0o7777) or 0o755)
        elif ftype == stat.S_IFLNK:
            if info.file_size > 4096:
                raise UnsafeArchive(name, "symlink target longer than 4096 bytes")
            yield _Member(name, "symlink", 0, 0o777, zf.read(info).decode("utf-8", "surrogateescape"))
        else:
            yield _Member(name, "file", info.file_size, (full & 0o7777) or 0o644, "", lambda i=info: zf.open(i))


class _Limit:
    """Counts unpacked bytes against max_bytes and max_ratio x the archive size."""

    def __init__(self, archive_size: int, max_bytes: int, max_ratio: float) -> None:
        by_ratio = int(max_ratio * max(archive_size, 1))
        self.limit, self.rule = min(
            (max_bytes, f"unpacks to more than the {max_bytes}-byte limit (max_bytes)"),
            (by_ratio, f"unpacks to more than {max_ratio:g}x the archive size of {archive_size} bytes (max_ratio)"))
        self.total = 0

    def add(self, member: str, count: int) -> None:
        self.total += count
        if self.total > self.limit:
            raise UnsafeArchive(member, f"archive {self.rule}")


def _validate(members: list[_Member], limit: _Limit) -> list[_Member]:
    kinds: dict[str, str] = {}
    result = []
    for m in members:
        original = m.name
        m.name = _normalise(m.name)
        if not m.name:
            continue
        if m.name == COMPLETE_MARKER:
            raise UnsafeArchive(original, f"{COMPLETE_MARKER} is reserved for the installer")
        if m.mode & (stat.S_ISUID | stat.S_ISGID):
            raise UnsafeArchive(original, "setuid/setgid bits are not allowed")
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if kinds.setdefault(parent, "dir") != "dir":
                raise UnsafeArchive(original, f"its parent {parent!r} is a {kinds[parent]}, not a directory")
        if m.name in kinds and not (kinds[m.name] == "dir" and m.kind == "dir"):
            raise UnsafeArchive(original, f"the path is already used by a {kinds[m.name]} in the archive")
        if m.kind == "symlink":
            if not m.target or m.target.startswith("/"):
                raise UnsafeArchive(original, f"symlink target {m.target!r} is absolute or empty")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(m.name), m.target))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchive(original, f"symlink target {m.target!r} escapes the release directory")
        elif m.kind == "hardlink":
            if m.target.startswith("/") or ".." in m.target.split("/"):
                raise UnsafeArchive(original, f"hardlink target {m.target!r} escapes the release directory")
            m.target = _normalise(m.target, "hardlink target")
            if kinds.get(m.target) not in ("file", "hardlink"):
                raise UnsafeArchive(original, f"hardlink target {m.target!r} is not a file earlier in the archive")
        limit.add(original, m.size)
        kinds[m.name] = m.kind
        result.append(m)
    return result


def _write_file(m: _Member, dest: Path, limit: _Limit) -> None:
    assert m.opener is not None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    written = 0
    with os.fdopen(fd, "wb") as out, m.opener() as src:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > m.size:
                raise UnsafeArchive(m.name, f"holds more bytes than its declared size of {m.size}")
            limit.add(m.name, len(chunk))
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dest, m.mode & 0o777)


def _space_needed(members: list[_Member], directory: Path, margin: int) -> int:
    """Bytes the release takes on `directory`'s filesystem: each file's declared size rounded up to
    the block size, a block per directory and symlink and one for the marker, plus `margin`.
    Raises `InsufficientSpace` when that is more than is free."""
    block = max(os.statvfs(directory).f_frsize, 1)
    content = block + sum(-(-m.size // block) * block if m.kind == "file" else block * (m.kind != "hardlink")
                          for m in members)
    free = shutil.disk_usage(directory).free
    if content + margin > free:
        raise InsufficientSpace(directory, content + margin, free)
    return content + margin


def _disk_full(directory: Path, needed: int) -> InsufficientSpace:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        free = 0
    return InsufficientSpace(directory, needed, free, during_write=True)


def _unpack(archive: Path, target: Path, max_bytes: int, max_ratio: float, margin: int) -> int:
    """Unpack `archive` into `target`; return the bytes `_space_needed` counted."""
    needed = 0
    with open(archive, "rb") as fh:
        is_zip = fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    try:
        opened: tarfile.TarFile | zipfile.ZipFile = zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InstallError(f"{archive}: not a readable tar or zip archive ({exc})") from None
    with opened as arc:
        try:
            members = list(_zip_members(arc) if is_zip else _tar_members(arc))  # type: ignore[arg-type]
            declared = _Limit(archive.stat().st_size, max_bytes, max_ratio)
            members = _validate(members, declared)
            needed = _space_needed(members, target.parent, margin)
            written = _Limit(archive.stat().st_size, max_bytes, max_ratio)
            dir_modes: list[tuple[Path, int]] = []
            for m in sorted(members, key=lambda m: ("dir", "file", "hardlink", "symlink").index(m.kind)):
                dest = target / m.name
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if m.kind == "dir":
                    dest.mkdir(exist_ok=True, mode=0o700)
                    dir_modes.append((dest, m.mode))
                elif m.kind == "file":
                    _write_file(m, dest, written)
                elif m.kind == "hardlink":
                    os.link(target / m.target, dest, follow_symlinks=False)
                else:
                    os.symlink(m.target, dest)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, UnicodeError, zlib.error, lzma.LZMAError) as exc:
            raise InstallError(f"{archive}: corrupt archive ({exc})") from None
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise _disk_full(target.parent, needed) from None
            raise InstallError(f"{archive}: cannot unpack into {target}: {exc}") from None
    real_root = os.path.realpath(target)
    for m in members:
        if m.kind == "symlink":
            real = os.path.realpath(target / m.name)
            if real != real_root and not real.startswith(real_root + os.sep):
                raise UnsafeArchive(m.name, f"symlink target {m.target!r} escapes the release directory")
    for path, mode in reversed(dir_modes):
        os.chmod(path, (mode & 0o777) | 0o700)
    return needed


def install_release(root: str | os.PathLike[str], version: str, archive: str | os.PathLike[str], *,
                    max_bytes: int = DEFAULT_MAX_BYTES, max_ratio: float = DEFAULT_MAX_RATIO,
                    free_space_margin: int = DEFAULT_FREE_SPACE_MARGIN) -> Path:
    """Unpack `archive` as `<root>/releases/<version>/` (idempotent) and return that directory.

    Refuses with `InsufficientSpace` when the unpacked size plus `free_space_margin` bytes is more
    than the free space of `<root>/releases`, or when the disk fills up while unpacking anyway;
    either way `current` and the other releases are untouched and no temporary directory is left.
    """
    dest = release_dir(root, version)
    if (dest / COMPLETE_MARKER).is_file():
        return dest
    archive = Path(archive)
    if not archive.is_file():
        raise InstallError(f"archive {archive} does not exist")
    digest = archive.name if _DIGEST_RE.fullmatch(archive.name) else None  # a store path: sha256/<digest>
    releases, needed = dest.parent, 0
    tmp: Path | None = None
    try:
        releases.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=releases))
        needed = _unpack(archive, tmp, max_bytes, max_ratio, free_space_margin)
        with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as fh:
            fh.write(f"{version}\n" + (f"sha256={digest}\n" if digest else ""))
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if dest.exists() or dest.is_symlink():
            _discard_incomplete(root, version, dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if (dest / COMPLETE_MARKER).is_file():  # installed concurrently
                return dest
            raise
        _fsync_dir(releases)
        return dest
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise _disk_full(releases, needed) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _discard_incomplete(root: str | os.PathLike[str], version: str, dest: Path) -> None:
    if (dest / COMPLETE_MARKER).is_file():
        return
    if current_version(root) == version:
        raise InstallError(f"{dest} is active but has no {COMPLETE_MARKER} marker; "
                           "activate another release before reinstalling this one")
    doomed = dest.parent / f".del-{version}-{secrets.token_hex(4)}"
    os.rename(dest, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ----------------------------------------------------------------------------- current

def current_version(root: str | os.PathLike[str]) -> str | None:
    """The version `<root>/current` points at, or None when there is no `current` yet."""
    link = Path(root) / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"{link} is not a symlink ({exc.strerror}); move it away") from None
    target_path = Path(target) if os.path.isabs(target) else Path(root) / target
    if os.path.normpath(target_path.parent) != os.path.normpath(Path(root) / "releases"):
        raise InstallError(f"{link} points to {target}, outside {Path(root) / 'releases'}")
    return target_path.name


def activate(root: str | os.PathLike[str], version: str) -> str | None:
    """Point `current` at `releases/<version>` atomically; return the previous version (or None)."""
    if not is_complete(root, version):
        raise InstallError(f"release {version} is not completely installed in {release_dir(root, version)}; "
                           "install it first")
    previous = current_version(root)
    if previous == version:
        return previous
    link = Path(root) / "current"
    tmp = Path(root) / f"current.tmp-{secrets.token_hex(6)}"
    os.symlink(f"releases/{version}", tmp)
    try:
        os.replace(tmp, link)
    except OSError as exc:
        tmp.unlink()
        raise InstallError(f"cannot replace {link}: {exc.strerror}") from None
    _fsync_dir(root)
    return previous


def list_releases(root: str | os.PathLike[str]) -> list[str]:
    """Complete releases, newest install first."""
    releases = Path(root) / "releases"
    if not releases.is_dir():
        return []
    found = []
    for entry in releases.iterdir():
        if not _VERSION_RE.fullmatch(entry.name):
            continue
        try:
            marker = os.stat(entry / COMPLETE_MARKER)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not complete, or removed meanwhile
        if stat.S_ISREG(marker.st_mode):
            found.append((marker.st_mtime, entry.name))
    return [name for _, name in sorted(found, reverse=True)]


def prunable(root: str | os.PathLike[str], keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The complete releases beyond the `keep` newest installs (the current release counts among
    them when it is one of those), except the current one and those in `protect`."""
    spared = set(protect) | {v for v in [current_version(root)] if v}
    return [v for v in list_releases(root)[max(keep, 0):] if v not in spared]


def leftovers(root: str | os.PathLike[str], *, now: float | None = None) -> list[Path]:
    """Remains of interrupted installs, removals and activations: every `releases/.del-*`, and
    `releases/.tmp-*` / `current.tmp-*` older than STALE_SECONDS (a younger one may be in use)."""
    now = time.time() if now is None else now
    releases, found = Path(root) / "releases", []
    for path in [*releases.glob(".tmp-*"), *releases.glob(".del-*"), *Path(root).glob("current.tmp-*")]:
        try:
            if path.name.startswith(".del-") or now - path.lstat().st_mtime > STALE_SECONDS:
                found.append(path)
        except FileNotFoundError:
            pass
    return found


def remove_release(root: str | os.PathLike[str], version: str) -> int:
    """Delete `releases/<version>` (never the one `current` points to); return the bytes freed.

    It is renamed to `.del-*` first, so it stops being a release at once; if deleting fails half-way,
    the rest is one of the `leftovers`. Call it from the thread that activates releases."""
    path = release_dir(root, version)
    if current_version(root) == version:
        raise InstallError(f"{path} is the current release; activate another one before removing it")
    doomed = path.parent / f".del-{version}-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    try:
        return remove_tree(doomed)
    except FileNotFoundError:  # another pruner took it as a leftover meanwhile
        return 0


def remove_tree(path: str | os.PathLike[str]) -> int:
    """Delete a file, symlink or directory tree; return the disk bytes it held (each inode once).

    Raises FileNotFoundError when `path` does not exist; entries under it that vanish meanwhile are
    skipped; the first other OSError is raised once the rest is gone."""
    freed, seen, failures = 0, set(), []

    def record(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            failures.append(exc)

    def remove(name: str, is_dir: bool) -> None:
        nonlocal freed
        try:
            st = os.lstat(name)
            os.rmdir(name) if is_dir else os.unlink(name)
        except OSError as exc:
            return record(exc)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            freed += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size

    top = os.fspath(path)
    is_dir = stat.S_ISDIR(os.lstat(top).st_mode)  # FileNotFoundError: it was gone already
    for dirpath, dirnames, filenames in os.walk(top, topdown=False, onerror=record) if is_dir else ():
        for name in filenames:
            remove(os.path.join(dirpath, name), False)
        for name in dirnames:
            remove(os.path.join(dirpath, name), not os.path.islink(os.path.join(dirpath, name)))
    remove(top, is_dir)
    if failures:
        raise failures[0]
    return freed


def prune(root: str | os.PathLike[str], keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Remove the `prunable` releases and, best effort, the `leftovers`; return the removed versions.

    `housekeeping.prune_host` does the same entry by entry, with the artifact store, and reports."""
    removed = []
    for version in prunable(root, keep, protect):
        remove_release(root, version)
        removed.append(version)
    for path in leftovers(root):
        try:
            remove_tree(path)
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------- hooks

@dataclass(frozen=True)
class ShellResult:
    rc: int | None      # None: timed out and killed
    output: str         # last OUTPUT_TAIL bytes of stdout+stderr, decoded
    duration: float


def run_shell(command: str, *, env: dict[str, str] | None = None, timeout: float,
              cwd: str | os.PathLike[str] | None = None) -> ShellResult:
    """Run `/bin/sh -c command` in its own process group; on timeout kill the whole group."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        # umask 022 like a service manager's default: the agent itself runs with 077 (its data
        # dir holds pickles and secrets), the application it starts should not inherit that.
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True,
                                umask=0o022)
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc = None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_TAIL))
        tail = out.read()
    return ShellResult(rc, tail.decode("utf-8", "replace"), time.monotonic() - started)


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 1.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace if sig == signal.SIGTERM else None)
        except subprocess.TimeoutExpired:
            continue


def run_hook(name: str, command: str, *, version: str | None, root: str | os.PathLike[str], timeout: float) -> str:
    """Run a hook with QR_VERSION, QR_RELEASE_DIR, QR_ROOT (and QR_HOOK) set; return its output tail.

    `version` None (stopping a host that ran nothing before the release) sets QR_VERSION and
    QR_RELEASE_DIR to empty strings."""
    root_abs = os.path.abspath(root)
    env = {"QR_VERSION": version or "", "QR_RELEASE_DIR": str(release_dir(root_abs, version)) if version else "",
           "QR_ROOT": root_abs, "QR_HOOK": name}
    try:
        result = run_shell(command, env=env, timeout=timeout, cwd=root_abs if os.path.isdir(root_abs) else None)
    except OSError as exc:
        raise HookFailed(name, 127, f"cannot start /bin/sh: {exc}") from None
    if result.rc is None:
        raise HookFailed(name, None, result.output, timeout=timeout)
    if result.rc != 0:
        raise HookFailed(name, result.rc, result.output)
    return result.output
