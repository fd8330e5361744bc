"""housekeeping.py: releases, leftovers and the artifact store pruned on real files."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
from quorum_rollout import housekeeping as H
from quorum_rollout import install as I
from quorum_rollout.artifacts import Store

T0 = time.time() - 3600


class Host:
    """One host's install root and artifact store; releases installed from the store as the worker does."""

    def __init__(self, tmp_path: Path) -> None:
        self.root, self.store = tmp_path / "root", Store(tmp_path / "store")
        self.store.prepare()
        self.digests: dict[str, str] = {}

    def artifact(self, version: str) -> str:
        """A real tar.gz for `version` in the store (as a finished download); its digest."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name, data in (("VERSION", version.encode()), ("lib/blob", os.urandom(20_000))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        self.store.path(digest).write_bytes(buf.getvalue())
        self.digests[version] = digest
        return digest

    def install(self, version: str, *, activate: bool = True) -> str:
        digest = self.artifact(version)
        I.install_release(self.root, version, self.store.path(digest))
        stamp = T0 + len(self.digests)  # install order, whatever the clock's resolution
        os.utime(I.release_dir(self.root, version) / I.COMPLETE_MARKER, (stamp, stamp))
        if activate:
            I.activate(self.root, version)
        return digest

    def partial(self, digest: str, age: float) -> Path:
        path = self.store.partial(digest)
        path.write_bytes(b"half a download")
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    def prune(self, keep: int = 2, versions: set[str] = frozenset(), digests: set[str] = frozenset(),
              **kw: object) -> H.PruneReport:
        return H.prune_host(self.root, self.store, keep_releases=keep, protect_versions=versions,
                            protect_digests=digests, **kw)

    def stored(self) -> set[str]:
        return set(os.listdir(self.store.root / "sha256"))


def test_six_releases_with_keep_two_leave_two_releases_and_two_artifacts(tmp_path: Path) -> None:
    host, previous = Host(tmp_path), None
    for n in range(1, 7):
        version = f"{n}.0"
        digest = host.install(version)
        # the worker, after the release ended `current`: keep what a rollback needs, and the active artifact
        report = host.prune(2, {previous} if previous else set(), {digest})
        assert len(I.list_releases(host.root)) <= 2 and len(host.stored()) <= 2
        assert report.errors == []
        previous = version
    assert I.list_releases(host.root) == ["6.0", "5.0"] and I.current_version(host.root) == "6.0"
    assert host.stored() == {host.digests["6.0"], host.digests["5.0"]}
    assert report.removed_versions == ["4.0"] and report.removed_digests == [host.digests["4.0"]]
    assert report.bytes_freed >= 2 * 20_000  # the release's blob and the artifact holding it
    assert sorted(os.listdir(host.root / "releases")) == ["5.0", "6.0"]  # no .del-/.tmp- left
    assert H.prune_host(host.root, host.store, keep_releases=2, protect_versions={"5.0"},
                        protect_digests={host.digests["6.0"]}).fields() == {
        "removed_versions": [], "removed_digests": [], "removed_partials": [], "removed_leftovers": [],
        "removed_seeds": [], "bytes_freed": 0, "errors": []}


def test_current_and_protected_versions_are_kept_even_when_older(tmp_path: Path) -> None:
    host = Host(tmp_path)
    for n in range(1, 6):
        host.install(f"{n}.0")
    I.activate(host.root, "1.0")  # rolled back to the oldest
    report = host.prune(2, {"2.0"})
    assert sorted(report.removed_versions) == ["3.0"]
    assert I.list_releases(host.root) == ["5.0", "4.0", "2.0", "1.0"] and I.current_version(host.root) == "1.0"
    assert host.stored() == {host.digests[v] for v in ("5.0", "4.0", "2.0", "1.0")}
    report = host.prune(1)  # the newest install is kept, and the current one although it is older
    assert sorted(report.removed_versions) == ["2.0", "4.0"]
    assert I.list_releases(host.root) == ["5.0", "1.0"] and host.stored() == {host.digests[v] for v in ("5.0", "1.0")}
    I.activate(host.root, "5.0")
    assert host.prune(1).removed_versions == ["1.0"]  # the current one is the newest: it is the one kept
    assert I.list_releases(host.root) == ["5.0"] and host.stored() == {host.digests["5.0"]}


def test_protected_digests_are_kept(tmp_path: Path) -> None:
    host = Host(tmp_path)
    for n in range(1, 4):
        host.install(f"{n}.0")
    downloaded = host.artifact("4.0")  # fetched (this host may serve it to peers), not installed yet
    stray = host.artifact("0.9")  # fetched once, never installed, nobody needs it
    report = host.prune(1, set(), {downloaded, host.digests["1.0"]})
    assert sorted(report.removed_versions) == ["1.0", "2.0"]
    assert sorted(report.removed_digests) == sorted([host.digests["2.0"], stray])
    assert host.stored() == {host.digests["3.0"], downloaded, host.digests["1.0"]}


def test_partials_stale_removed_fresh_protected_and_in_use_kept(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.install("1.0")
    stale, fresh, resumable, writing = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    paths = {d: host.partial(d, age) for d, age in ((stale, 7200), (fresh, 60), (resumable, 7200), (writing, 7200))}
    foreign = host.store.root / "partial" / "notes.txt"
    foreign.write_text("not the store's")
    os.utime(foreign, (T0 - 7200, T0 - 7200))
    with host.store.lock(writing):  # a download of this process is appending to it
        report = host.prune(1, set(), {resumable})
    assert report.removed_partials == [stale] and report.errors == []
    assert not paths[stale].exists() and all(paths[d].exists() for d in (fresh, resumable, writing))
    assert foreign.exists()
    assert host.prune(1, set(), {resumable}, partial_grace=30).removed_partials == [fresh, writing]
    assert host.prune(1, set(), {resumable}, now=lambda: time.time() + 86400).removed_partials == []  # protected
    assert paths[resumable].exists()


def test_leftovers_of_interrupted_installs_are_removed(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.install("1.0")
    releases = host.root / "releases"
    for name, age in ((".tmp-2.0-old", 7200), (".tmp-3.0-new", 0), (".del-0.9-abcd", 0)):
        (releases / name / "bin").mkdir(parents=True)
        (releases / name / "bin" / "app").write_bytes(b"x" * 10_000)
        os.utime(releases / name, (time.time() - age, time.time() - age))
    report = host.prune(1)
    assert sorted(report.removed_leftovers) == [".del-0.9-abcd", ".tmp-2.0-old"]
    assert sorted(os.listdir(releases)) == [".tmp-3.0-new", "1.0"]  # a young .tmp- may be an install running
    assert report.bytes_freed >= 20_000


def test_a_file_that_vanished_meanwhile_does_not_fail_the_prune(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another remover takes an entry between the listing and its removal: release, store file, partial."""
    host = Host(tmp_path)
    for n in range(1, 5):
        host.install(f"{n}.0")
    for d in ("a" * 64, "b" * 64):
        host.partial(d, 7200)
    real_release, real_tree = I.remove_release, I.remove_tree
    old_digests = {host.store.path(host.digests[v]) for v in ("1.0", "2.0", "3.0")}

    def remove_release(root: Path, version: str) -> int:  # the first removal: 1.0 goes meanwhile
        if version == "3.0":
            real_release(root, "1.0")
        return real_release(root, version)

    def remove_tree(path: Path) -> int:
        if Path(path) in old_digests:  # the first store file: the others go meanwhile
            for other in old_digests - {Path(path)}:
                other.unlink(missing_ok=True)
        if Path(path) == host.store.partial("a" * 64):
            host.store.partial("b" * 64).unlink()
        return real_tree(path)

    monkeypatch.setattr(I, "remove_release", remove_release)
    monkeypatch.setattr(I, "remove_tree", remove_tree)
    report = host.prune(1, set(), {host.digests["4.0"]})
    assert report.errors == []
    assert report.removed_versions == ["3.0", "2.0"] and len(report.removed_digests) == 1
    assert report.removed_partials == ["a" * 64]
    assert I.list_releases(host.root) == ["4.0"] and host.stored() == {host.digests["4.0"]}
    assert os.listdir(host.store.root / "partial") == []


def test_two_pruners_at_once_neither_fails(tmp_path: Path) -> None:
    host = Host(tmp_path)
    for n in range(1, 9):
        host.install(f"{n}.0")
    for n in range(200):
        host.partial(hashlib.sha256(b"%d" % n).hexdigest(), 7200)
    reports: list[H.PruneReport] = []
    threads = [threading.Thread(target=lambda: reports.append(host.prune(1))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(reports) == 2 and [r.errors for r in reports] == [[], []]
    assert sorted(reports[0].removed_versions + reports[1].removed_versions) == [f"{n}.0" for n in range(1, 8)]
    assert len(reports[0].removed_partials) + len(reports[1].removed_partials) == 200
    assert I.list_releases(host.root) == ["8.0"] and host.stored() == {host.digests["8.0"]}


def test_an_error_on_one_entry_is_reported_and_the_rest_still_pruned(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(tmp_path)
    for n in range(1, 5):
        host.install(f"{n}.0")
    stuck = host.store.path(host.digests["1.0"])
    real_tree = I.remove_tree

    def remove_tree(path: Path) -> int:
        if Path(path) == stuck:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_tree(path)

    monkeypatch.setattr(I, "remove_tree", remove_tree)
    report = host.prune(1)
    assert report.errors == [f"{stuck}: Permission denied"]
    assert sorted(report.removed_versions) == ["1.0", "2.0", "3.0"]
    assert sorted(report.removed_digests) == sorted(host.digests[v] for v in ("2.0", "3.0"))
    assert host.stored() == {host.digests["1.0"], host.digests["4.0"]}


def test_a_broken_current_removes_no_release(tmp_path: Path) -> None:
    host = Host(tmp_path)
    for n in range(1, 4):
        host.install(f"{n}.0", activate=False)
    (host.root / "current").mkdir()  # not a symlink: which release runs is unknown
    stray = host.artifact("0.1")
    report = host.prune(1)
    assert report.removed_versions == [] and len(report.errors) == 1 and "not a symlink" in report.errors[0]
    assert len(I.list_releases(host.root)) == 3
    assert report.removed_digests == [stray]  # the store is still collected against what remains


def test_keep_releases_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_releases must be >= 1"):
        Host(tmp_path).prune(0)
