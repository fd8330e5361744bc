"""Disk housekeeping of one host: old releases, leftovers of interrupted installs, the artifact store.

    report = prune_host(root, store, keep_releases=cfg.install.keep_releases,
                        protect_versions={rollback_target}, protect_digests={active_digest})
    event(log, "pruned", **report.fields())

What stays (everything else goes):

* releases: the `keep_releases` newest complete installs (`install.prunable`: the current one
  counts among them when it is one of those), plus always the one `current` points to and those
  in `protect_versions` (the version a rollback would need), however old;
* `sha256/<digest>` store files that a remaining release was installed from
  (`install.release_digest`) or that are in `protect_digests` (the artifact of the group's
  active/latest release, which this host may still serve to peers before installing it);
* `chunks/<digest>.chunks.json` seed indexes (delta releases, chunks.py) of the store files that
  stay: the chunks a later release can reuse are those of the artifacts kept;
* `partial/<digest>.part` files in `protect_digests` (a download that may be resumed), those
  younger than `partial_grace` seconds, and those a download of this process is writing.

Nothing here raises for an entry that vanished meanwhile; an OSError on one entry is recorded in
`PruneReport.errors` and the others are still pruned. Call it from the thread that installs and
activates releases (the member worker), so `current` cannot move while it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quorum_rollout import chunks, install

if TYPE_CHECKING:
    from quorum_rollout.artifacts import Store

DEFAULT_PARTIAL_GRACE = 3600.0


@dataclass
class PruneReport:
    """What one `prune_host` pass removed; `errors` holds "path: reason" for entries it could not."""

    removed_versions: list[str] = field(default_factory=list)
    removed_digests: list[str] = field(default_factory=list)    # sha256/<digest> store files
    removed_partials: list[str] = field(default_factory=list)   # digests of partial/<digest>.part files
    removed_seeds: list[str] = field(default_factory=list)      # digests of chunks/<digest>.chunks.json indexes
    removed_leftovers: list[str] = field(default_factory=list)  # names of interrupted installs' remains
    bytes_freed: int = 0
    errors: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """The report as the keyword fields of one structured log line."""
        return asdict(self)


def prune_host(root: str | os.PathLike[str], store: Store, *, keep_releases: int,
               protect_versions: Collection[str], protect_digests: Collection[str],
               partial_grace: float = DEFAULT_PARTIAL_GRACE, now: Callable[[], float] = time.time) -> PruneReport:
    """Remove old releases, interrupted installs' leftovers and unreferenced store files (see module doc)."""
    if keep_releases < 1:
        raise ValueError(f"keep_releases must be >= 1, got {keep_releases}")
    report, root, started = PruneReport(), Path(root), now()
    try:
        doomed = install.prunable(root, keep_releases, set(protect_versions))
    except (OSError, install.InstallError) as exc:  # e.g. `current` is not a symlink: remove no release
        report.errors.append(f"{root}: {exc}")
        doomed = []
    for version in doomed:
        _remove(report, install.release_dir(root, version), report.removed_versions, version,
                partial(install.remove_release, root, version))
    try:
        stale = install.leftovers(root, now=started)
    except OSError as exc:
        report.errors.append(f"{root}: {exc.strerror or exc}")
        stale = []
    for path in stale:
        _remove(report, path, report.removed_leftovers, path.name)
    referenced = _referenced_digests(root, report)
    for digest, path in _entries(store, store.path, report) if referenced is not None else ():
        if digest not in referenced and digest not in protect_digests:
            _remove(report, path, report.removed_digests, digest)
    for digest, path in _entries(store, store.partial, report):
        if digest not in protect_digests:
            _remove_stale_partial(store, digest, path, started - partial_grace, report)
    for digest, path in _entries(store, partial(chunks.seed_path, store), report):
        if not store.path(digest).exists():
            _remove(report, path, report.removed_seeds, digest)
    return report


def _remove(report: PruneReport, path: Path, into: list[str], name: str,
            remove: Callable[[], int] | None = None) -> None:
    """Remove `path` (with `install.remove_tree` unless `remove` is given), recording the outcome."""
    try:
        report.bytes_freed += remove() if remove is not None else install.remove_tree(path)
    except FileNotFoundError:
        return  # removed concurrently: nothing left to do
    except (OSError, install.InstallError) as exc:
        report.errors.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
        return
    into.append(name)


def _referenced_digests(root: Path, report: PruneReport) -> set[str] | None:
    """Digests the remaining releases came from; None (so no store file is collected) if one is unreadable."""
    try:
        return {d for d in (install.release_digest(root, v) for v in install.list_releases(root)) if d}
    except OSError as exc:
        report.errors.append(f"{root / 'releases'}: {exc.strerror or exc}; store files left alone")
        return None


def _entries(store: Store, where: Callable[[str], Path], report: PruneReport) -> list[tuple[str, Path]]:
    """(digest, path) of the files in the directory of `where` (`store.path` or `store.partial`)
    that are named as `where` names them; other names are not the store's and are left alone."""
    probe = where("0" * 64)
    directory, suffix = probe.parent, probe.name[64:]
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        report.errors.append(f"{directory}: {exc.strerror or exc}")
        return []
    found = []
    for name in names:
        try:
            path = where(name[:len(name) - len(suffix)])
        except ValueError:
            continue
        if path.name == name:
            found.append((name[:64], path))
    return found


def _remove_stale_partial(store: Store, digest: str, path: Path, cutoff: float, report: PruneReport) -> None:
    lock = store.lock(digest)
    if not lock.acquire(blocking=False):
        return  # a download in this process is writing it
    try:
        if path.lstat().st_mtime < cutoff:
            _remove(report, path, report.removed_partials, digest)
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.errors.append(f"{path}: {exc.strerror or exc}")
    finally:
        lock.release()
