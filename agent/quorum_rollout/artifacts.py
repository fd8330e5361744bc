"""Release artifacts: content-addressed store, mirrors, streaming downloads, peer transfer.

Downloads stream to `<store>/partial/<digest>.part` as bytes arrive (reads of at most 64 KiB that
return as soon as some bytes are there), hashing on the fly (one pass, constant memory), resume
with HTTP Range, stop at the signed size, and land under
`<store>/sha256/<digest>` only by an atomic rename once the sha256 matched. The leader talks
to mirrors in two steps (`fetch_manifest`, then `download_from_mirrors`); members fetch from
holders over the group-authenticated peer endpoint (`fetch_from_peers`, `peer_auth_header`,
`check_peer_auth`, `open_range`).

Every network call takes an optional `deadline` (a `time.monotonic()` value) and `cancel` event,
checked between reads, before each source is tried and during every wait: no socket timeout,
backoff or bandwidth-cap wait outlasts the time left, so a trickling or silent source ends the
call at the deadline (`DeadlineExceeded`) rather than when it pleases.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import logging
import math
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, Union
from urllib.parse import quote, urlsplit

import requests
import urllib3

from quorum_rollout.log import event as log_event
from quorum_rollout.signing import (
    MAX_POINTER_BYTES,
    ChannelPointer,
    HashMismatch,
    LengthMismatch,
    MalformedManifest,
    Manifest,
    ManifestTooLarge,
    MalformedPointer,
    PointerTooLarge,
    TrustError,
    TrustPolicy,
    to_datetime,
    verify_file,
    verify_manifest,
    verify_pointer,
)

CHUNK = 64 * 1024
ORDER_TTL = 300.0
PEER_PATH = "/v1/peer/artifacts/sha256/{digest}"
_PEER_CONTEXT = b"quorum-rollout peer v1\0"
_AUTH_RE = re.compile(r"^QR-Peer ts=(\d{1,12}),mac=([0-9a-f]{64})$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NET_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
_SLACK = 0.05  # a wait that the deadline cut short may end this much before it
_KEPT = "; partial file kept for a Range resume"

# A logging.Logger (events go through quorum_rollout.log.event) or a callable(event, **fields).
Log = Union[logging.Logger, Callable[..., None], None]
_T = TypeVar("_T")
Causes = Iterable[tuple[str, Exception]]


class ArtifactError(Exception):
    """A download/mirror/peer failure; the message names where (`url`) and the cause.
    `causes`: (source, error) of each source tried; `error`: the network exception, if any."""

    def __init__(self, url: str, cause: str = "", *, causes: Causes = (), error: BaseException | None = None) -> None:
        super().__init__(f"{url}: {cause}" if cause else url)
        self.url, self.cause, self.causes, self.error = url, cause, list(causes), error


class HttpError(ArtifactError):
    def __init__(self, url: str, status: int, reason: str = "") -> None:
        super().__init__(url, f"HTTP {status} {reason}".rstrip())
        self.status = status


class DiskFull(ArtifactError):
    """Not enough free space for the download plus artifacts.free_space_margin."""


class TransferInterrupted(ArtifactError):
    """The connection broke mid-body; the partial file is kept for a Range resume."""


class TransferTooSlow(ArtifactError):
    """Slow-retrieval guard: the average rate over artifacts.min_rate_window fell below min_rate."""


class MirrorUnavailable(ArtifactError):
    """No mirror served the release; `causes` holds (mirror, error) for each."""


class NotPublished(MirrorUnavailable):
    """Every mirror answered 404 for the manifest: this version is not published (yet)."""

    def __init__(self, name: str, version: str, causes: Causes) -> None:
        super().__init__(f"{name} {version}", causes=causes)
        mirrors = ", ".join(m for m, _ in self.causes)
        self.cause = (f"is not published on any mirror (404 from: {mirrors}); publish it, or check the version "
                      "and artifacts.mirrors")
        self.args = (f"{name} {version} {self.cause}",)
        self.name, self.version = name, version


class ChannelNotPublished(MirrorUnavailable):
    """Every mirror answered 404 for the channel pointer: nothing is published on that channel."""

    def __init__(self, name: str, channel: str, causes: Causes) -> None:
        super().__init__(f"channel {channel} of {name}", causes=causes)
        mirrors = ", ".join(m for m, _ in self.causes)
        self.cause = (f"is not published on any mirror (404 from: {mirrors}); publish it (`publish.yml -e "
                      f"channel={channel}`, `quorum-rollout channel publish`) or check artifacts.channel")
        self.args = (f"channel {channel} of {name} {self.cause}",)


class PeersUnavailable(ArtifactError):
    """No holder served the artifact; `causes` holds (holder, error) for each."""


class TooLarge(LengthMismatch):
    """The server sent (or announced) more bytes than the signed size: endless-data attack."""


def _progress(received: int, expected: int | None) -> str:
    return f"{received} of {expected}" if expected is not None else str(received)


class DeadlineExceeded(ArtifactError):
    """The caller's `deadline` (a `time.monotonic()` value) passed first. Raised at once (no other
    source is tried); a partial download is kept for a later Range resume."""

    def __init__(self, url: str, received: int, deadline: float, *, expected: int | None = None,
                 kept: bool = False) -> None:
        late = max(time.monotonic() - deadline, 0.0)
        super().__init__(url, f"deadline passed after {_progress(received, expected)} bytes received (deadline: "
                              f"monotonic {deadline:.3f}, {late:.2f} s ago){_KEPT if kept else ''}")
        self.received, self.deadline = received, deadline


class Cancelled(ArtifactError):
    """The caller set its `cancel` event. Raised at once; a partial download is kept."""

    def __init__(self, url: str, received: int, *, expected: int | None = None, kept: bool = False) -> None:
        super().__init__(url, f"cancelled after {_progress(received, expected)} bytes received"
                              f"{_KEPT if kept else ''}")
        self.received = received


_STOP = (DeadlineExceeded, Cancelled)


_RETRY_STATUS = frozenset({408, 425, 429})  # and every 5xx
_NETWORK_DOWN = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.ProtocolError,
                 urllib3.exceptions.TimeoutError, ConnectionError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """True if trying again later (with backoff, within the step deadline) may succeed: the source
    was unreachable, timed out, broke off, was too slow, or answered 5xx/408/425/429.

    False for what a retry cannot fix: trust refusals (`TrustError`: signature, hash, size, expiry,
    downgrade), `DiskFull`, other 4xx (404, 403, ...), TLS errors, a version `NotPublished`, and the
    caller's own `DeadlineExceeded` and `Cancelled`. An error listing several sources
    (`MirrorUnavailable`, `PeersUnavailable`) is transient only if every source's error is.
    """
    if isinstance(exc, (DeadlineExceeded, Cancelled, DiskFull, NotPublished, TrustError)):
        return False
    if isinstance(exc, HttpError):
        return exc.status >= 500 or exc.status in _RETRY_STATUS
    if isinstance(exc, (TransferInterrupted, TransferTooSlow)):
        return True
    if isinstance(exc, ArtifactError):
        if exc.causes:
            return all(is_transient(error) for _, error in exc.causes)
        return exc.error is not None and is_transient(exc.error)
    if isinstance(exc, requests.exceptions.SSLError | urllib3.exceptions.SSLError):
        return False  # a certificate or TLS setup problem
    return isinstance(exc, _NETWORK_DOWN)


MIRROR, PEER = "mirror", "peer"  # where a download comes from (Store.received)


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ValueError(f"{digest!r} is not a sha256 hex digest (64 lowercase hex digits)")
    return digest


class Store:
    """Content-addressed files: `root/sha256/<digest>`, partial downloads in `root/partial/`.

    `received` counts the bytes written into this store since it was made, by source kind
    (`mirror`, `peer`): what GET /metrics reports as quorum_rollout_downloaded_bytes_total."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.received: dict[str, int] = {MIRROR: 0, PEER: 0}
        self._received_lock = threading.Lock()

    def count(self, source: str, n: int) -> None:
        with self._received_lock:
            self.received[source] = self.received.get(source, 0) + n

    def path(self, digest: str) -> Path:
        return self.root / "sha256" / _check_digest(digest)

    def partial(self, digest: str) -> Path:
        return self.root / "partial" / f"{_check_digest(digest)}.part"

    def has(self, digest: str, size: int) -> bool:
        try:
            return self.path(digest).stat().st_size == size
        except OSError:
            return False

    def prepare(self) -> None:
        for sub in ("sha256", "partial"):
            (self.root / sub).mkdir(mode=0o750, parents=True, exist_ok=True)

    def lock(self, digest: str) -> threading.Lock:
        """The process-wide lock of one digest's partial file (one writer at a time)."""
        with _locks_guard:
            return _locks.setdefault(str(self.partial(digest).resolve()), threading.Lock())

    def verify(self, path: str | Path, manifest: Manifest) -> None:
        """`signing.verify_file`, without hashing again a store file this process hashed as it
        arrived (or verified before) and that is unchanged since: same device, inode, size and
        modification time. Every host used to hash the artifact twice, once more in the step
        itself (about 2 s per GiB on the critical path of each host's update); a file that was
        replaced, rewritten or touched, or a restarted agent, is hashed in full."""
        key = str(Path(path).resolve())
        try:
            if _hashed.get(key) == (manifest.sha256, _identity(path)):
                return
        except OSError:
            pass
        verify_file(path, manifest)
        hashed_here(Path(path), manifest.sha256)


def hashed_here(path: Path, digest: str) -> None:
    """Record that this process computed `digest` for the store file at `path` (Store.verify)."""
    _hashed[str(path.resolve())] = (digest, _identity(path))


def _identity(path: str | Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()

# Niceness of a thread moving an artifact between members ahead of need (a prefetch and the
# upload serving it): on hosts that also run the service and the open batch's install, transfers
# for later batches yield the CPU. Not lower: a thread that holds the GIL while the scheduler
# starves it stalls the agent's Raft thread too (19 cost an election in a headline run; 10, none).
BACKGROUND_NICE = 10
# Request header of a peer fetch on the critical path (the open batch or the next): the holder
# serves it at normal priority. Only members can send it (the MAC is checked first).
URGENT_HEADER = "X-Quorum-Urgent"


def yield_cpu() -> None:
    """Lower the calling thread's CPU priority to BACKGROUND_NICE (Linux: per thread; elsewhere
    it would renice the whole process, so nothing is done). Not undone: call it in a thread that
    ends with the transfer."""
    if not hasattr(threading, "get_native_id") or not os.path.isdir("/proc/self/task"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:  # not permitted
        pass


# Store files whose sha256 this process computed: resolved path -> (digest, _identity at the time).
_hashed: dict[str, tuple[str, tuple[int, int, int, int]]] = {}


class TokenBucket:
    """Bandwidth cap: `rate` bytes/s, bursts up to `burst` bytes (default one second's worth).

    `reserve(n)` books n bytes and returns the wait before sending them; `consume(n)` waits it.
    Thread-safe, so one bucket can cap several transfers together.
    """

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 bytes/s")
        self.rate, self.burst = float(rate), float(burst if burst is not None else rate)
        self._clock, self._sleep, self._lock = clock, sleep, threading.Lock()
        self._tokens, self._last = self.burst, clock()

    def reserve(self, n: int) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
            self._last = now
            return max(0.0, -self._tokens / self.rate)

    def consume(self, n: int, *, sleep: Callable[[float], None] | None = None) -> float:
        """Wait until n bytes may be sent (with `sleep`, default the bucket's); return the wait."""
        wait = self.reserve(n)
        if wait > 0:
            (sleep or self._sleep)(wait)
        return wait


class RateGuard:
    """Slow-retrieval guard: `update(n)` returns the average rate of a finished `window`-second
    window when it was below `min_rate` bytes/s, else None. `exclude(s)` leaves out time we
    spent waiting on purpose (the bandwidth cap), so a cap never looks like a slow mirror."""

    def __init__(self, min_rate: float, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_rate, self.window, self._clock = min_rate, window, clock
        self._start, self._bytes = clock(), 0

    def exclude(self, seconds: float) -> None:
        self._start += seconds

    def update(self, n: int) -> float | None:
        self._bytes += n
        elapsed = self._clock() - self._start
        if elapsed < self.window:
            return None
        rate = self._bytes / elapsed
        self._start, self._bytes = self._clock(), 0
        return rate if rate < self.min_rate else None


@dataclass(frozen=True)
class _Bounds:
    """The limits of one call: socket timeouts per request (`connect`, `read`), the caller's
    `deadline` (time.monotonic()) and `cancel` event. No wait is longer than the time left."""

    connect: float
    read: float
    deadline: float | None = None
    cancel: threading.Event | None = None

    def check(self, url: str, received: int = 0, *, expected: int | None = None, kept: bool = False,
              slack: float = 0.0) -> None:
        """Raise `Cancelled` or `DeadlineExceeded` if it is time to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(url, received, expected=expected, kept=kept)
        if self.deadline is not None and time.monotonic() >= self.deadline - slack:
            raise DeadlineExceeded(url, received, self.deadline, expected=expected, kept=kept)

    def left(self) -> float:
        """Seconds before the deadline (inf without one; at least 1 ms, as a socket timeout)."""
        return math.inf if self.deadline is None else max(self.deadline - time.monotonic(), 0.001)

    def timeout(self) -> tuple[float, float] | urllib3.Timeout:
        """The `timeout` for requests: (connect, read), each capped to the time left."""
        return (self.connect, self.read) if self.deadline is None else _DeadlineTimeout(self)

    def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, never past the deadline; wake as soon as cancel is set."""
        seconds = min(seconds, self.left())
        if seconds <= 0:
            return
        if self.cancel is not None:
            self.cancel.wait(seconds)
        else:
            time.sleep(seconds)

    @property
    def bounded(self) -> bool:
        return self.deadline is not None or self.cancel is not None

    def acquire(self, lock: threading.Lock, url: str) -> None:
        """Take `lock`; while another transfer holds it, keep checking cancel and the deadline."""
        if not self.bounded:
            lock.acquire()
            return
        while not lock.acquire(timeout=min(0.1, self.left())):
            self.check(url)


class _DeadlineTimeout(urllib3.Timeout):
    """urllib3 clones the Timeout for every request it sends (each redirect too): every clone
    gets the configured timeouts capped to the time then left before the deadline."""

    def __init__(self, bounds: _Bounds) -> None:
        self._bounds = bounds
        left = bounds.left()
        super().__init__(connect=min(bounds.connect, left), read=min(bounds.read, left), total=left)

    def clone(self) -> urllib3.Timeout:
        return _DeadlineTimeout(self._bounds)


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _emit(log: Log, name: str, level: str = "info", **fields: Any) -> None:
    if isinstance(log, logging.Logger):
        log_event(log, name, level=level, **fields)
    elif log is not None:
        log(name, level=level, **fields)


def _get(sess: requests.Session, url: str, headers: dict[str, str], bounds: _Bounds) -> requests.Response:
    bounds.check(url)
    try:
        return sess.get(url, headers={"Accept-Encoding": "identity", **headers}, stream=True,
                        timeout=bounds.timeout())
    except requests.RequestException as exc:
        bounds.check(url, slack=_SLACK)  # a timeout the deadline imposed
        raise ArtifactError(url, f"request failed: {_why(exc)}", error=exc) from None


def _arrivals(url: str, resp: requests.Response, bounds: _Bounds, *, expected: int | None = None,
              kept: bool = False) -> Iterator[bytes]:
    """The raw body of `resp` as it arrives. Each read returns as soon as some bytes are there
    (urllib3 `read1`; `read(amt)` would wait for all `amt`), and waits at most the read timeout
    and the time left; `bounds` are checked before every read. A TransferInterrupted if it breaks."""
    got = 0
    while True:
        bounds.check(url, got, expected=expected, kept=kept)
        conn = resp.raw.connection  # None once the whole body is read
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(min(bounds.read, bounds.left()))
        try:
            chunk = resp.raw.read1(CHUNK, decode_content=False)
        except _NET_ERRORS as exc:
            bounds.check(url, got, expected=expected, kept=kept, slack=_SLACK)
            raise TransferInterrupted(url, f"broken after {_progress(got, expected)} bytes ({_why(exc)})",
                                      error=exc) from None
        if not chunk:
            return
        got += len(chunk)
        yield chunk


def _copy_body(url: str, resp: requests.Response, out: BinaryIO, hasher: Any, expected: int, cfg: Any,
               limiter: TokenBucket | None, bounds: _Bounds, tally: Callable[[int], None]) -> int:
    guard = RateGuard(cfg.min_rate, cfg.min_rate_window) if cfg.min_rate else None
    got = 0
    for chunk in _arrivals(url, resp, bounds, expected=expected, kept=True):
        if got + len(chunk) > expected:
            raise TooLarge(f"{url}: server sent more than the {expected} bytes expected (signed size); refused "
                           "the rest and deleted the partial file: the source is broken or hostile")
        try:
            out.write(chunk)
        except OSError as exc:
            cls = DiskFull if exc.errno == errno.ENOSPC else ArtifactError
            raise cls(url, f"writing {out.name} failed: {exc.strerror}") from None
        hasher.update(chunk)
        got += len(chunk)
        tally(len(chunk))
        pause = bounds.pause if bounds.bounded else None  # the next read's check raises if it is time
        waited = limiter.consume(len(chunk), sleep=pause) if limiter is not None else 0.0
        if guard is not None:
            guard.exclude(waited)
        rate = guard.update(len(chunk)) if guard is not None else None
        if rate is not None:
            raise TransferTooSlow(url, f"{rate:.0f} B/s over {cfg.min_rate_window:g} s, below {cfg.min_rate} B/s "
                                       "(artifacts.min_rate): slow-retrieval guard; partial file kept")
    return got


def _transfer(url: str, store: Store, digest: str, size: int, cfg: Any, headers: dict[str, str],
              sess: requests.Session, limiter: TokenBucket | None, bounds: _Bounds, source: str) -> Path:
    part = store.partial(digest)
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    free = shutil.disk_usage(store.root).free
    if free < size - offset + cfg.free_space_margin:
        raise DiskFull(url, f"{free} bytes free under {store.root}, {size - offset + cfg.free_space_margin} needed "
                            f"({size - offset} to download + {cfg.free_space_margin} artifacts.free_space_margin); "
                            "free disk space or lower the margin")
    hasher = hashlib.sha256()
    if offset:  # re-hash what we have so the final hash stays one pass over the whole file
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                bounds.check(url, kept=True)
                hasher.update(block)
    if offset < size or not part.exists():
        with _get(sess, url, {**headers, "Range": f"bytes={offset}-"} if offset else headers, bounds) as resp:
            status, mode = resp.status_code, "wb"
            if offset and status == 206 and _content_range_ok(resp, offset, size):
                mode = "ab"
            elif offset and status in (206, 416):  # wrong Content-Range or unsatisfiable: start over
                part.unlink()
                return _transfer(url, store, digest, size, cfg, headers, sess, limiter, bounds, source)
            elif status != 200:
                raise HttpError(url, status, resp.reason or "")
            elif offset:  # the server ignored Range and sends the whole file: restart from 0
                hasher, offset = hashlib.sha256(), 0
            expected, declared = size - offset, resp.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > expected:
                part.unlink(missing_ok=True)
                raise TooLarge(f"{url}: announces {declared} bytes where the signed size leaves {expected}; refused")
            try:
                with open(part, mode) as out:
                    got = _copy_body(url, resp, out, hasher, expected, cfg, limiter, bounds,
                                     lambda n: store.count(source, n))
                    out.flush()
                    os.fsync(out.fileno())
            except TooLarge:
                part.unlink(missing_ok=True)
                raise
        if got < expected:
            raise TransferInterrupted(url, f"connection closed after {got} of {expected} bytes; partial file kept")
    actual = hasher.hexdigest()
    if actual != digest:
        part.unlink(missing_ok=True)
        raise HashMismatch(f"{url}: sha256 is {actual}, the manifest says {digest}; partial file deleted "
                           "(the source serves a different file)")
    final = store.path(digest)
    os.replace(part, final)
    hashed_here(final, digest)
    return final


def _content_range_ok(resp: requests.Response, offset: int, size: int) -> bool:
    m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
    return bool(m) and int(m.group(1)) == offset and int(m.group(2)) == size - 1 and m.group(3) in ("*", str(size))


def download(url: str, store: Store, sha256: str, size: int, *, cfg: Any, headers: dict[str, str] | None = None,
             session: requests.Session | None = None, limiter: TokenBucket | None = None,
             retries: int = 2, deadline: float | None = None, cancel: threading.Event | None = None,
             source: str = MIRROR) -> Path:
    """Stream `url` into `store` and return the verified final path (`cfg`: an ArtifactsConfig).

    A transfer that breaks after some progress is resumed with Range up to `retries` times; a
    resumed file whose hash fails is fetched once more from byte 0 (the partial may have come
    from another source). Without `limiter`, cfg.bandwidth_limit caps this transfer alone.
    Past `deadline` (time.monotonic()) it raises `DeadlineExceeded`, once `cancel` is set
    `Cancelled`; the partial file stays for a later resume.
    """
    bounds = _Bounds(cfg.connect_timeout, cfg.read_timeout, deadline, cancel)
    return _download(url, store, sha256, size, cfg, headers, session, limiter, retries, bounds, source)


def _download(url: str, store: Store, sha256: str, size: int, cfg: Any, headers: dict[str, str] | None,
              session: requests.Session | None, limiter: TokenBucket | None, retries: int, bounds: _Bounds,
              source: str) -> Path:
    digest = _check_digest(sha256)
    if store.has(digest, size):
        return store.path(digest)
    store.prepare()
    if limiter is None and cfg.bandwidth_limit:
        limiter = TokenBucket(cfg.bandwidth_limit)
    part, sess, lock = store.partial(digest), session or requests.Session(), store.lock(digest)
    attempt, restarted = 0, False
    try:
        bounds.acquire(lock, url)
        try:
            while not store.has(digest, size):  # another thread may have finished it meanwhile
                before = part.stat().st_size if part.exists() else 0
                try:
                    return _transfer(url, store, digest, size, cfg, dict(headers or {}), sess, limiter, bounds,
                                     source)
                except TransferInterrupted:
                    if attempt >= retries or (part.stat().st_size if part.exists() else 0) <= before:
                        raise
                    attempt += 1
                except HashMismatch:
                    if restarted or before == 0:
                        raise
                    restarted = True
            return store.path(digest)
        finally:
            lock.release()
    finally:
        if session is None:
            sess.close()


# ------------------------------------------------------------------------------------- mirrors

_order_cache: dict[tuple[str, ...], tuple[float, list[str]]] = {}
_order_lock = threading.Lock()


def order_mirrors(mirrors: Sequence[str], *, timeout: float, session: requests.Session | None = None,
                  clock: Callable[[], float] = time.monotonic, deadline: float | None = None,
                  cancel: threading.Event | None = None) -> list[str]:
    """Mirrors by measured latency (HEAD of the base URL; any HTTP answer counts), unreachable
    ones last in their given order. Cached for ORDER_TTL seconds; `invalidate` drops the cache.
    No HEAD outlasts `deadline`; past it or once `cancel` is set, measuring stops (nothing cached)."""
    key = tuple(dict.fromkeys(mirrors))
    with _order_lock:
        hit = _order_cache.get(key)
        if hit is not None and clock() - hit[0] < ORDER_TTL:
            return list(hit[1])
    bounds = _Bounds(timeout, timeout, deadline, cancel)
    sess, latency, complete = session or requests.Session(), {}, True
    try:
        for mirror in key:
            try:
                bounds.check(mirror)
            except _STOP:
                complete = False
                break
            start = time.monotonic()
            try:
                sess.head(mirror + "/", timeout=bounds.timeout(), allow_redirects=False).close()
            except requests.RequestException:
                continue
            latency[mirror] = time.monotonic() - start
    finally:
        if session is None:
            sess.close()
    ordered = sorted(latency, key=latency.__getitem__) + [m for m in key if m not in latency]
    if complete:
        with _order_lock:
            _order_cache[key] = (clock(), ordered)
    return list(ordered)


def known_order(mirrors: Sequence[str]) -> list[str]:
    """The last measured mirror order (for status), or the configured order if none is cached."""
    key = tuple(dict.fromkeys(mirrors))
    with _order_lock:
        hit = _order_cache.get(key)
    return list(hit[1]) if hit else list(key)


def invalidate(mirrors: Sequence[str] | None = None) -> None:
    with _order_lock:
        if mirrors is None:
            _order_cache.clear()
        else:
            _order_cache.pop(tuple(dict.fromkeys(mirrors)), None)


def _get_manifest(sess: requests.Session, url: str, cfg: Any, bounds: _Bounds) -> bytes:
    return _get_document(sess, url, bounds, cfg.max_manifest_bytes, "manifest", ManifestTooLarge,
                         "artifacts.max_manifest_bytes")


def _get_document(sess: requests.Session, url: str, bounds: _Bounds, limit: int, noun: str,
                  too_large: type[TrustError], limit_name: str) -> bytes:
    """A small signed document (manifest, channel pointer): at most `limit` bytes read, decoded."""
    with _get(sess, url, {}, bounds) as resp:
        if resp.status_code != 200:
            raise HttpError(url, resp.status_code, resp.reason or "")
        ctype = resp.headers.get("Content-Type", "")
        if "html" in ctype.lower():
            raise ArtifactError(url, f"answered {ctype!r}, not a {noun} (error page or captive portal?)")
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(f"{url}: {noun} announces {declared} bytes, over {limit_name} ({limit}); refused")
        raw = bytearray()
        for chunk in _arrivals(url, resp, bounds, expected=int(declared) if declared.isdigit() else None):
            raw += chunk
            if len(raw) > limit:
                break
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    body = bytes(raw) if len(raw) > limit else _decoded(url, bytes(raw), encoding, limit, noun)
    if len(body) > limit:
        raise too_large(f"{url}: {noun} is over {limit_name} ({limit}); refused")
    return body


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decoded(url: str, raw: bytes, encoding: str, limit: int, noun: str = "manifest") -> bytes:
    """A document without its Content-Encoding, at most `limit` + 1 bytes (a compression bomb stops
    there). Read raw, since urllib3's decoding read1 may wait on several reads in one call."""
    if encoding in ("", "identity"):
        return raw
    if encoding not in _WBITS:
        raise ArtifactError(url, f"{noun} sent with Content-Encoding {encoding!r}; only gzip and deflate are "
                                 "decoded (the agent asks for identity)")
    try:
        return zlib.decompressobj(_WBITS[encoding]).decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ArtifactError(url, f"{noun} Content-Encoding {encoding} does not decode: {exc}") from None


def _is_trust_failure(exc: Exception) -> bool:
    """Signature/expiry/rollback/hash refusals, as opposed to a mirror that is down or broken."""
    return isinstance(exc, TrustError) and not isinstance(
        exc, (MalformedManifest, ManifestTooLarge, MalformedPointer, PointerTooLarge))


def _listing(failures: list[tuple[str, Exception]], empty: str = "") -> str:
    listing = "; ".join(f"{who}: {type(e).__name__}: {e}" for who, e in failures) or empty
    return listing if len(listing) <= 2000 else listing[:2000] + "..."


def _add_earlier(exc: ArtifactError, failures: list[tuple[str, Exception]]) -> None:
    """Name the sources that failed before `exc` (a deadline or cancel) stopped the call."""
    if failures:
        exc.causes = [*failures, *exc.causes]
        exc.args = (f"{exc.args[0]} [failed before: {_listing(failures)}]",)


def _raise_all_failed(what: str, failures: list[tuple[str, Exception]]) -> None:
    """The first trust refusal with every source's cause appended, else `MirrorUnavailable`."""
    listing = _listing(failures, "no mirrors configured")
    trust = [e for _, e in failures if _is_trust_failure(e)]
    if trust:
        first = trust[0]
        first.args = (f"{first.args[0]} [all mirrors failed: {listing}]",)
        first.causes = failures
        raise first
    raise MirrorUnavailable(what, f"no mirror could serve it: {listing}", causes=failures)


def _first_mirror(cfg: Any, what: str, attempt: Callable[[int, str, requests.Session, _Bounds], _T],
                  refused: Callable[[str, Exception], None], not_published: Callable[[list], Exception], *,
                  session: requests.Session | None, deadline: float | None,
                  cancel: threading.Event | None) -> tuple[_T, str]:
    """`attempt(i, mirror, session, bounds)` on each mirror in latency order until one returns; each
    ArtifactError/TrustError goes to `refused(mirror, exc)` and the next mirror is tried. When none
    succeeds: `not_published(failures)` if all answered 404, else the first trust refusal or
    `MirrorUnavailable` (`what` names the document), every source's cause attached.
    `DeadlineExceeded` and `Cancelled` end the call at once, naming the mirrors that failed before."""
    bounds = _Bounds(cfg.connect_timeout, cfg.read_timeout, deadline, cancel)
    failures: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        ordered = order_mirrors(cfg.mirrors, timeout=cfg.connect_timeout, session=sess, deadline=deadline,
                                cancel=cancel)
        for i, mirror in enumerate(ordered):
            try:
                return attempt(i, mirror, sess, bounds), mirror
            except _STOP as exc:
                _add_earlier(exc, failures)
                raise
            except (ArtifactError, TrustError) as exc:
                failures.append((mirror, exc))
                refused(mirror, exc)
    finally:
        if failures:
            invalidate(cfg.mirrors)
        if session is None:
            sess.close()
    if failures and all(isinstance(e, HttpError) and e.status == 404 for _, e in failures):
        raise not_published(failures)
    _raise_all_failed(what, failures)
    raise AssertionError("unreachable")


def fetch_manifest(cfg: Any, version: str, policy: TrustPolicy, *, now: Any, group: str | None,
                   highest_version: str | None, allow_downgrade: bool, log: Log = None,
                   session: requests.Session | None = None, sleep: Callable[[float], None] | None = None,
                   backoff: float = 0.5, deadline: float | None = None,
                   cancel: threading.Event | None = None) -> tuple[Manifest, str]:
    """The verified manifest from the first mirror (latency order) serving a valid one.

    A failing mirror is logged ("mirror_failed") and the next tried after `backoff * 2**(i-1)` s
    (max 10 s): a hostile mirror must not block a good one. A missing/garbage/oversized manifest
    counts as unavailable; trust refusals are raised (first one) when no mirror succeeds.
    `DeadlineExceeded` (past `deadline`, a time.monotonic() value) and `Cancelled` (`cancel` set)
    end the call at once; the backoff waits on `cancel` (`sleep`, for tests, replaces that wait).
    """
    def attempt(i: int, mirror: str, sess: requests.Session, bounds: _Bounds) -> Manifest:
        if i:
            (sleep or bounds.pause)(min(backoff * 2 ** (i - 1), 10.0, bounds.left()))
        url = f"{mirror}/{quote(cfg.name)}/{quote(version)}/manifest.json"
        return verify_manifest(
            _get_manifest(sess, url, cfg, bounds), policy, now=now, name=cfg.name, version=version,
            group=group, max_bytes=cfg.max_manifest_bytes, highest_version=highest_version,
            allow_downgrade=allow_downgrade)

    def refused(mirror: str, exc: Exception) -> None:
        _emit(log, "mirror_failed", "warning", mirror=mirror, version=version, error=str(exc)[:500],
              kind=type(exc).__name__)

    return _first_mirror(cfg, f"{cfg.name} {version}", attempt, refused,
                         lambda failures: NotPublished(cfg.name, version, failures),
                         session=session, deadline=deadline, cancel=cancel)


def channel_url(mirror: str, name: str, channel: str) -> str:
    return f"{mirror}/{quote(name)}/channels/{quote(channel)}.json"


def fetch_channel(cfg: Any, policy: TrustPolicy, *, now: Any, log: Log = None,
                  session: requests.Session | None = None, deadline: float | None = None,
                  cancel: threading.Event | None = None) -> tuple[ChannelPointer, str]:
    """The verified pointer of channel `cfg.channel` from the first mirror (latency order) serving
    a valid one, and that mirror. Each mirror that does not is reported to `log` as one
    `channel_refused` event (mirror, channel, cause, kind) and the next is tried at once (the
    caller polls again later). Refusals as in `fetch_manifest`: the first trust refusal when no
    mirror serves a valid pointer, `ChannelNotPublished` when all answer 404, else
    `MirrorUnavailable`; `DeadlineExceeded`/`Cancelled` end the call at once."""
    channel = cfg.channel

    def attempt(_i: int, mirror: str, sess: requests.Session, bounds: _Bounds) -> ChannelPointer:
        raw = _get_document(sess, channel_url(mirror, cfg.name, channel), bounds, MAX_POINTER_BYTES,
                            "channel pointer", PointerTooLarge, "the channel pointer limit")
        return verify_pointer(raw, policy, now=now, name=cfg.name, channel=channel)

    def refused(mirror: str, exc: Exception) -> None:
        _emit(log, "channel_refused", "warning", mirror=mirror, channel=channel, cause=str(exc)[:500],
              kind=type(exc).__name__)

    return _first_mirror(cfg, f"channel {channel} of {cfg.name}", attempt, refused,
                         lambda failures: ChannelNotPublished(cfg.name, channel, failures),
                         session=session, deadline=deadline, cancel=cancel)


def download_from_mirrors(cfg: Any, store: Store, manifest: Manifest, *, prefer: str | None = None,
                          log: Log = None, session: requests.Session | None = None, deadline: float | None = None,
                          cancel: threading.Event | None = None) -> tuple[Path, str]:
    """The artifact of a verified manifest: from `prefer` (the mirror that served the manifest)
    first, then the others in latency order. `DiskFull` is local and raised at once, and so are
    `DeadlineExceeded` and `Cancelled` (see `download`)."""
    if store.has(manifest.sha256, manifest.size):
        return store.path(manifest.sha256), "local"
    bounds = _Bounds(cfg.connect_timeout, cfg.read_timeout, deadline, cancel)
    failures: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        ordered = order_mirrors(cfg.mirrors, timeout=cfg.connect_timeout, session=sess, deadline=deadline,
                                cancel=cancel)
        for mirror in ([prefer] if prefer else []) + [m for m in ordered if m != prefer]:
            url = f"{mirror}/{quote(cfg.name)}/{quote(manifest.version)}/{quote(manifest.file)}"
            try:
                if manifest.chunks is None:
                    path = _download(url, store, manifest.sha256, manifest.size, cfg, None, sess, None, 2, bounds,
                                     MIRROR)
                else:  # a delta release: only the chunks no local artifact holds
                    from quorum_rollout import chunks

                    path = chunks.fetch(mirror, cfg, store, manifest, sess, bounds, log)
            except DiskFull:
                raise
            except _STOP as exc:
                _add_earlier(exc, failures)
                raise
            except (ArtifactError, TrustError) as exc:
                failures.append((mirror, exc))
                _emit(log, "mirror_failed", "warning", mirror=mirror, version=manifest.version,
                      error=str(exc)[:500], kind=type(exc).__name__)
                continue
            _emit(log, "mirror_used", mirror=mirror, version=manifest.version, sha256=manifest.sha256,
                  size=manifest.size)
            return path, mirror
    finally:
        if failures:
            invalidate(cfg.mirrors)
        if session is None:
            sess.close()
    _raise_all_failed(f"{manifest.name} {manifest.version}", failures)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------- peers


def _epoch(now: datetime | float) -> float:
    return to_datetime(now).timestamp() if isinstance(now, datetime) else float(now)


def _peer_mac(secret: bytes, method: str, path: str, ts: int) -> str:
    key = hashlib.sha256(_PEER_CONTEXT + secret).digest()
    return hmac.new(key, f"{method.upper()}\n{path}\n{ts}".encode(), hashlib.sha256).hexdigest()


def peer_auth_header(secret: bytes, method: str, path: str, now: datetime | float) -> str:
    """`Authorization` value for the peer endpoint: "QR-Peer ts=<int>,mac=<hex>" (path: no query)."""
    ts = int(_epoch(now))
    return f"QR-Peer ts={ts},mac={_peer_mac(secret, method, path, ts)}"


def check_peer_auth(secret: bytes, header: str | None, method: str, path: str, now: datetime | float,
                    skew: float = 300) -> bool:
    """True if `header` is a well-formed, fresh (|now - ts| <= skew) MAC of method + path.

    A valid header can be replayed within `skew`; the endpoint only serves content-addressed,
    already-verified files, so a replay reveals nothing the original request did not.
    """
    m = _AUTH_RE.match(header.strip()) if isinstance(header, str) else None
    if m is None or abs(_epoch(now) - int(m.group(1))) > skew:
        return False
    return hmac.compare_digest(m.group(2), _peer_mac(secret, method, path, int(m.group(1))))


def fetch_from_peers(holders: Sequence[tuple[str, str]], manifest: Manifest, store: Store, secret: bytes,
                     cfg: Any, *, session: requests.Session | None = None,
                     clock: Callable[[], float] = time.time, deadline: float | None = None,
                     cancel: threading.Event | None = None, log: Log = None, urgent: bool = True
                     ) -> tuple[Path, str]:
    """Member path: the file from the first holder (node_id, api_url) that serves it, verified.
    A delta release (the manifest has `chunks`) is first built from the chunks the store holds and
    the missing ranges from holders (`chunks.fetch_from_peers`); if that fails (logged), whole.

    Returns (path, node_id), or (path, "local") when the store already holds it. `DiskFull`,
    `DeadlineExceeded` and `Cancelled` are raised at once (see `download`). cfg.peer_timeout is
    the connect and read timeout of each request: a frozen holder is left after that long.
    `urgent` (the fetch is on the critical path) asks holders not to yield the CPU while serving it.
    """
    if store.has(manifest.sha256, manifest.size):
        return store.path(manifest.sha256), "local"
    bounds = _Bounds(cfg.peer_timeout, cfg.peer_timeout, deadline, cancel)
    tried: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        if manifest.chunks is not None and holders:
            from quorum_rollout import chunks

            try:
                got = chunks.fetch_from_peers(holders, manifest, store, secret, cfg, sess, bounds, clock, log)
                if got is not None:
                    return got
            except DiskFull:
                raise
            except _STOP:
                raise
            except PeersUnavailable as exc:
                if exc.causes and all(isinstance(e, HttpError) and e.status in (404, 503) for _, e in exc.causes):
                    raise  # no holder has any of it yet, or all are busy: the whole file gets the same answer
                _emit(log, "chunks_fallback", "warning", version=manifest.version, sha256=manifest.sha256,
                      cause=str(exc)[:500], kind=type(exc).__name__)
            except (ArtifactError, TrustError) as exc:
                _emit(log, "chunks_fallback", "warning", version=manifest.version, sha256=manifest.sha256,
                      cause=str(exc)[:500], kind=type(exc).__name__)
        for node_id, api_url in holders:
            url = api_url.rstrip("/") + PEER_PATH.format(digest=manifest.sha256)
            headers = {"Authorization": peer_auth_header(secret, "GET", urlsplit(url).path, clock()),
                       **({URGENT_HEADER: "1"} if urgent else {})}
            try:
                return _download(url, store, manifest.sha256, manifest.size, cfg, headers, sess,
                                 None, 2, bounds, PEER), node_id
            except DiskFull:
                raise
            except _STOP as exc:
                _add_earlier(exc, tried)
                raise
            except (ArtifactError, TrustError) as exc:
                tried.append((f"{node_id} ({url})", exc))
    finally:
        if session is None:
            sess.close()
    listing = _listing(tried, "no holders given")
    raise PeersUnavailable(f"{manifest.name} {manifest.version} sha256 {manifest.sha256[:12]}",
                           f"no peer could serve it: {listing}", causes=tried)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) of one valid byte range, (-1, -1) if unsatisfiable, None to ignore the header."""
    m = _RANGE_RE.match(header.strip()) if header else None
    if m is None or not (m.group(1) or m.group(2)):
        return None
    first, last = m.groups()
    if not first:  # suffix range: the last N bytes
        return (max(0, size - int(last)), size - 1) if int(last) > 0 and size > 0 else (-1, -1)
    start = int(first)
    if last and int(last) < start:
        return None
    return (-1, -1) if start >= size else (start, min(int(last), size - 1) if last else size - 1)


def open_range(path: str | Path, range_header: str | None) -> tuple[int, dict[str, str], BinaryIO, int]:
    """Serve side of the peer endpoint: (status, headers, file positioned at the start, length).

    200 for the whole file, 206 for one `bytes=N-`, `bytes=N-M` or `bytes=-N`, 416 (with an empty
    file object) if unsatisfiable; an unparsable or multi-range header is ignored (RFC 9110).
    The caller sends exactly `length` bytes and closes the file object.
    """
    size = os.stat(path).st_size
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    span = _parse_range(range_header, size)
    if span == (-1, -1):
        return 416, {**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"}, io.BytesIO(), 0
    f = open(path, "rb")  # handed to the caller, who closes it
    if span is None:
        return 200, {**headers, "Content-Length": str(size)}, f, size
    start, end = span
    f.seek(start)
    return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}",
                 "Content-Length": str(end - start + 1)}, f, end - start + 1


def open_growing(store: Store, digest: str, size: int, range_header: str | None
                 ) -> tuple[int, dict[str, str], BinaryIO, int] | None:
    """Like `open_range`, but also for a file still being downloaded (the `.part`), so a member
    can pass chunks on before it holds the whole file (pipelined transfer). The headers promise
    the signed size; `copy_growing` then waits for the bytes. None when neither file exists."""
    final, part = store.path(digest), store.partial(digest)
    if final.exists():
        return open_range(final, range_header)
    try:
        f = open(part, "rb")  # an open file survives the rename to the final name
    except FileNotFoundError:
        return None
    span = _parse_range(range_header, size)
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    if span == (-1, -1):
        f.close()
        return 416, {**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"}, io.BytesIO(), 0
    if span is None:
        return 200, {**headers, "Content-Length": str(size)}, f, size
    start, end = span
    f.seek(start)
    return 206, {**headers, "Content-Range": f"bytes {start}-{end}/{size}",
                 "Content-Length": str(end - start + 1)}, f, end - start + 1


def copy_growing(f: BinaryIO, length: int, write: Callable[[bytes], Any], *, limiter: TokenBucket | None = None,
                 idle_timeout: float = 30.0, poll: float = 0.02) -> int:
    """Send `length` bytes from `f`, waiting for a growing file; give up after `idle_timeout`
    seconds without new bytes (the reader resumes with Range elsewhere). Returns bytes sent."""
    sent, idle_since = 0, time.monotonic()
    while sent < length:
        chunk = f.read(min(CHUNK, length - sent))
        if not chunk:
            if time.monotonic() - idle_since > idle_timeout:
                break
            time.sleep(poll)
            continue
        idle_since = time.monotonic()
        if limiter is not None:
            limiter.consume(len(chunk))
        write(chunk)
        sent += len(chunk)
    return sent
