"""Release artifacts: content-addressed store, mirrors, streaming downloads, peer transfer.

Downloads stream to `<store>/partial/<digest>.part` in 64 KiB chunks, hashing on the fly (one
pass, constant memory), resume with HTTP Range, stop at the signed size, and land under
`<store>/sha256/<digest>` only by an atomic rename once the sha256 matched. The leader talks
to mirrors in two steps (`fetch_manifest`, then `download_from_mirrors`); members fetch from
holders over the group-authenticated peer endpoint (`fetch_from_peers`, `peer_auth_header`,
`check_peer_auth`, `open_range`).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Union
from urllib.parse import quote, urlsplit

import requests
import urllib3

from quorum_rollout.log import event as log_event
from quorum_rollout.signing import (
    HashMismatch,
    LengthMismatch,
    MalformedManifest,
    Manifest,
    ManifestTooLarge,
    TrustError,
    TrustPolicy,
    to_datetime,
    verify_manifest,
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

# A logging.Logger (events go through quorum_rollout.log.event) or a callable(event, **fields).
Log = Union[logging.Logger, Callable[..., None], None]
Causes = Iterable[tuple[str, Exception]]


class ArtifactError(Exception):
    """A download/mirror/peer failure; the message names where (`url`) and the cause."""

    def __init__(self, url: str, cause: str = "", *, causes: Causes = ()) -> None:
        super().__init__(f"{url}: {cause}" if cause else url)
        self.url, self.cause, self.causes = url, cause, list(causes)


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


class PeersUnavailable(ArtifactError):
    """No holder served the artifact; `causes` holds (holder, error) for each."""


class TooLarge(LengthMismatch):
    """The server sent (or announced) more bytes than the signed size: endless-data attack."""


def _check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ValueError(f"{digest!r} is not a sha256 hex digest (64 lowercase hex digits)")
    return digest


class Store:
    """Content-addressed files: `root/sha256/<digest>`, partial downloads in `root/partial/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

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


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


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

    def consume(self, n: int) -> float:
        """Wait until n bytes may be sent; return the seconds waited."""
        wait = self.reserve(n)
        if wait > 0:
            self._sleep(wait)
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


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _emit(log: Log, name: str, level: str = "info", **fields: Any) -> None:
    if isinstance(log, logging.Logger):
        log_event(log, name, level=level, **fields)
    elif log is not None:
        log(name, **fields)


def _get(sess: requests.Session, url: str, headers: dict[str, str], cfg: Any) -> requests.Response:
    try:
        return sess.get(url, headers={"Accept-Encoding": "identity", **headers}, stream=True,
                        timeout=(cfg.connect_timeout, cfg.read_timeout))
    except requests.RequestException as exc:
        raise ArtifactError(url, f"request failed: {_why(exc)}") from None


def _copy_body(url: str, resp: requests.Response, out: BinaryIO, hasher: Any, expected: int, cfg: Any,
               limiter: TokenBucket | None) -> int:
    guard = RateGuard(cfg.min_rate, cfg.min_rate_window) if cfg.min_rate else None
    chunks, got = resp.raw.stream(CHUNK, decode_content=False), 0
    while True:
        try:
            chunk = next(chunks, None)
        except _NET_ERRORS as exc:
            raise TransferInterrupted(url, f"broken after {got} of {expected} bytes ({_why(exc)})") from None
        if chunk is None:
            return got
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
        waited = limiter.consume(len(chunk)) if limiter is not None else 0.0
        if guard is not None:
            guard.exclude(waited)
        rate = guard.update(len(chunk)) if guard is not None else None
        if rate is not None:
            raise TransferTooSlow(url, f"{rate:.0f} B/s over {cfg.min_rate_window:g} s, below {cfg.min_rate} B/s "
                                       "(artifacts.min_rate): slow-retrieval guard; partial file kept")


def _transfer(url: str, store: Store, digest: str, size: int, cfg: Any, headers: dict[str, str],
              sess: requests.Session, limiter: TokenBucket | None) -> Path:
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
                hasher.update(block)
    if offset < size or not part.exists():
        with _get(sess, url, {**headers, "Range": f"bytes={offset}-"} if offset else headers, cfg) as resp:
            status, mode = resp.status_code, "wb"
            if offset and status == 206 and _content_range_ok(resp, offset, size):
                mode = "ab"
            elif offset and status in (206, 416):  # wrong Content-Range or unsatisfiable: start over
                part.unlink()
                return _transfer(url, store, digest, size, cfg, headers, sess, limiter)
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
                    got = _copy_body(url, resp, out, hasher, expected, cfg, limiter)
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
    os.replace(part, store.path(digest))
    return store.path(digest)


def _content_range_ok(resp: requests.Response, offset: int, size: int) -> bool:
    m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
    return bool(m) and int(m.group(1)) == offset and int(m.group(2)) == size - 1 and m.group(3) in ("*", str(size))


def download(url: str, store: Store, sha256: str, size: int, *, cfg: Any, headers: dict[str, str] | None = None,
             session: requests.Session | None = None, limiter: TokenBucket | None = None,
             retries: int = 2) -> Path:
    """Stream `url` into `store` and return the verified final path (`cfg`: an ArtifactsConfig).

    A transfer that breaks after some progress is resumed with Range up to `retries` times; a
    resumed file whose hash fails is fetched once more from byte 0 (the partial may have come
    from another source). Without `limiter`, cfg.bandwidth_limit caps this transfer alone.
    """
    digest = _check_digest(sha256)
    if store.has(digest, size):
        return store.path(digest)
    store.prepare()
    if limiter is None and cfg.bandwidth_limit:
        limiter = TokenBucket(cfg.bandwidth_limit)
    part, sess = store.partial(digest), session or requests.Session()
    attempt, restarted = 0, False
    try:
        with store.lock(digest):
            while not store.has(digest, size):  # another thread may have finished it meanwhile
                before = part.stat().st_size if part.exists() else 0
                try:
                    return _transfer(url, store, digest, size, cfg, dict(headers or {}), sess, limiter)
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
        if session is None:
            sess.close()


# ------------------------------------------------------------------------------------- mirrors

_order_cache: dict[tuple[str, ...], tuple[float, list[str]]] = {}
_order_lock = threading.Lock()


def order_mirrors(mirrors: Sequence[str], *, timeout: float, session: requests.Session | None = None,
                  clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Mirrors by measured latency (HEAD of the base URL; any HTTP answer counts), unreachable
    ones last in their given order. Cached for ORDER_TTL seconds; `invalidate` drops the cache."""
    key = tuple(dict.fromkeys(mirrors))
    with _order_lock:
        hit = _order_cache.get(key)
        if hit is not None and clock() - hit[0] < ORDER_TTL:
            return list(hit[1])
    sess, latency = session or requests.Session(), {}
    try:
        for mirror in key:
            start = time.monotonic()
            try:
                sess.head(mirror + "/", timeout=timeout, allow_redirects=False).close()
            except requests.RequestException:
                continue
            latency[mirror] = time.monotonic() - start
    finally:
        if session is None:
            sess.close()
    ordered = sorted(latency, key=latency.__getitem__) + [m for m in key if m not in latency]
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


def _get_manifest(sess: requests.Session, url: str, cfg: Any) -> bytes:
    limit = cfg.max_manifest_bytes
    with _get(sess, url, {}, cfg) as resp:
        if resp.status_code != 200:
            raise HttpError(url, resp.status_code, resp.reason or "")
        ctype = resp.headers.get("Content-Type", "")
        if "html" in ctype.lower():
            raise ArtifactError(url, f"answered {ctype!r}, not a manifest (error page or captive portal?)")
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ManifestTooLarge(f"{url}: manifest announces {declared} bytes, over artifacts.max_manifest_bytes "
                                   f"({limit}); refused")
        try:
            raw = resp.raw.read(limit + 1, decode_content=True)
        except _NET_ERRORS as exc:
            raise ArtifactError(url, f"reading the manifest failed: {_why(exc)}") from None
    if len(raw) > limit:
        raise ManifestTooLarge(f"{url}: manifest is over artifacts.max_manifest_bytes ({limit}); refused")
    return raw


def _is_trust_failure(exc: Exception) -> bool:
    """Signature/expiry/rollback/hash refusals, as opposed to a mirror that is down or broken."""
    return isinstance(exc, TrustError) and not isinstance(exc, (MalformedManifest, ManifestTooLarge))


def _raise_all_failed(what: str, failures: list[tuple[str, Exception]]) -> None:
    """The first trust refusal with every source's cause appended, else `MirrorUnavailable`."""
    listing = "; ".join(f"{m}: {type(e).__name__}: {e}" for m, e in failures) or "no mirrors configured"
    if len(listing) > 2000:
        listing = listing[:2000] + "..."
    trust = [e for _, e in failures if _is_trust_failure(e)]
    if trust:
        first = trust[0]
        first.args = (f"{first.args[0]} [all mirrors failed: {listing}]",)
        first.causes = failures
        raise first
    raise MirrorUnavailable(what, f"no mirror could serve it: {listing}", causes=failures)


def fetch_manifest(cfg: Any, version: str, policy: TrustPolicy, *, now: Any, group: str | None,
                   highest_version: str | None, allow_downgrade: bool, log: Log = None,
                   session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                   backoff: float = 0.5) -> tuple[Manifest, str]:
    """The verified manifest from the first mirror (latency order) serving a valid one.

    A failing mirror is logged ("mirror_failed") and the next tried after `backoff * 2**(i-1)` s
    (max 10 s): a hostile mirror must not block a good one. A missing/garbage/oversized manifest
    counts as unavailable; trust refusals are raised (first one) when no mirror succeeds.
    """
    failures: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        for i, mirror in enumerate(order_mirrors(cfg.mirrors, timeout=cfg.connect_timeout, session=sess)):
            if i:
                sleep(min(backoff * 2 ** (i - 1), 10.0))
            url = f"{mirror}/{quote(cfg.name)}/{quote(version)}/manifest.json"
            try:
                manifest = verify_manifest(
                    _get_manifest(sess, url, cfg), policy, now=now, name=cfg.name, version=version, group=group,
                    max_bytes=cfg.max_manifest_bytes, highest_version=highest_version,
                    allow_downgrade=allow_downgrade)
            except (ArtifactError, TrustError) as exc:
                failures.append((mirror, exc))
                _emit(log, "mirror_failed", "warning", mirror=mirror, version=version, error=str(exc)[:500],
                      kind=type(exc).__name__)
                continue
            return manifest, mirror
    finally:
        if failures:
            invalidate(cfg.mirrors)
        if session is None:
            sess.close()
    _raise_all_failed(f"{cfg.name} {version}", failures)
    raise AssertionError("unreachable")


def download_from_mirrors(cfg: Any, store: Store, manifest: Manifest, *, prefer: str | None = None,
                          log: Log = None, session: requests.Session | None = None) -> tuple[Path, str]:
    """The artifact of a verified manifest: from `prefer` (the mirror that served the manifest)
    first, then the others in latency order. `DiskFull` is local and raised at once."""
    if store.has(manifest.sha256, manifest.size):
        return store.path(manifest.sha256), "local"
    failures: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        ordered = order_mirrors(cfg.mirrors, timeout=cfg.connect_timeout, session=sess)
        for mirror in ([prefer] if prefer else []) + [m for m in ordered if m != prefer]:
            url = f"{mirror}/{quote(cfg.name)}/{quote(manifest.version)}/{quote(manifest.file)}"
            try:
                path = download(url, store, manifest.sha256, manifest.size, cfg=cfg, session=sess)
            except DiskFull:
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
                     clock: Callable[[], float] = time.time) -> tuple[Path, str]:
    """Member path: the file from the first holder (node_id, api_url) that serves it, verified.

    Returns (path, node_id), or (path, "local") when the store already holds it.
    """
    if store.has(manifest.sha256, manifest.size):
        return store.path(manifest.sha256), "local"
    tried: list[tuple[str, Exception]] = []
    sess = session or requests.Session()
    try:
        for node_id, api_url in holders:
            url = api_url.rstrip("/") + PEER_PATH.format(digest=manifest.sha256)
            auth = peer_auth_header(secret, "GET", urlsplit(url).path, clock())
            try:
                return download(url, store, manifest.sha256, manifest.size, cfg=cfg,
                                headers={"Authorization": auth}, session=sess), node_id
            except DiskFull:
                raise
            except (ArtifactError, TrustError) as exc:
                tried.append((f"{node_id} ({url})", exc))
    finally:
        if session is None:
            sess.close()
    listing = "; ".join(f"{who}: {type(e).__name__}: {e}" for who, e in tried) or "no holders given"
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
