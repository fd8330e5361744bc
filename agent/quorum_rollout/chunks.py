"""Delta releases: content-defined chunk indexes, the chunk fetch from mirrors, reassembly.

Publishing (`quorum-rollout sign --chunks`) cuts the artifact into content-defined chunks (FastCDC
2020 with the `CHUNKER` sizes), stores each once per artifact name, zstd-compressed, at
`<mirror>/<name>/chunks/<aa>/<sha256>.zst` (`chunk_url`), and writes the index beside the manifest
(`<mirror>/<name>/<version>/<file>.chunks.json`)::

    {"format": "quorum-rollout-chunks/1", "chunker": {"name": "fastcdc2020", "min", "avg", "max"},
     "compression": "zstd", "size", "sha256", "chunks": [[offset, size, "<sha256>"], ...]}

The manifest signs the index's sha256 and size (`signed.chunks`); the file's own sha256 and size
stay signed as before, so the reassembled file is checked exactly as a downloaded one.

Fetching (`fetch`, called by `artifacts.download_from_mirrors` once per mirror, in its order, with
its deadline, cancel event and bandwidth cap): the index is fetched and checked against the signed
hash and by `parse_index` (a pure validator: contiguous from 0, sizes within the chunker's
bounds, at most `max_chunks`), then the file is written in order into the store's partial file:
chunks that an artifact already in the store holds ("seeds", indexed once into
`<store>/chunks/<digest>.json`, `seed_path`) are copied from there, re-hashed; the others come from
the mirror, each bounded (compressed bytes, then decompressed to at most its declared size) and
hashed on arrival. A partial file is resumed after its last chunk that still verifies, from any
mirror; the file lands under `sha256/<digest>` only once its whole sha256 and size match.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import requests

from quorum_rollout import artifacts
from quorum_rollout.signing import ChunksRef, HashMismatch, Manifest, TrustError

FORMAT = "quorum-rollout-chunks/1"
CHUNKER = {"name": "fastcdc2020", "min": 16 * 1024, "avg": 64 * 1024, "max": 256 * 1024}
COMPRESSION = "zstd"
ZSTD_LEVEL = 3
INDEX_SUFFIX = ".chunks.json"
PARALLEL = 4  # chunk requests in flight: hides the round trip per chunk (a CDN's 20-50 ms)
WINDOW = 16   # chunks fetched ahead of the write position, at most (16 x 256 KiB + their compressed bytes)
_ENTRY_BYTES = 96  # the most one index entry `[offset,size,"<64 hex>"],` takes, with room to spare
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class MalformedIndex(TrustError):
    """A chunk index that is not what the signed manifest describes, or breaks the format's bounds."""

    def __init__(self, what: str, field_name: str, message: str) -> None:
        super().__init__(f"{what}: chunk index: {field_name}: {message}; re-publish the release with "
                         "`quorum-rollout sign --chunks`")
        self.field = field_name


class IndexMismatch(HashMismatch):
    """The index served is not the one the manifest signed."""


class ChunkMismatch(HashMismatch):
    """A chunk that does not decompress, or whose sha256 or size is not the index's."""


class ChunkTooLarge(artifacts.TooLarge):
    """A chunk over its bound: compressed bytes past zstd's bound, or decompressing past its declared
    size (a decompression bomb)."""


@dataclass(frozen=True)
class Index:
    """A validated index: `chunks` are (offset, size, sha256) in file order, contiguous from 0."""

    size: int
    sha256: str
    chunks: tuple[tuple[int, int, str], ...]


def max_chunks(size: int) -> int:
    """The most chunks a file of `size` bytes can have: every chunk but the last is >= CHUNKER["min"]."""
    return size // CHUNKER["min"] + 1


def max_index_bytes(size: int) -> int:
    return 1024 + _ENTRY_BYTES * max_chunks(size)


def compress_bound(size: int) -> int:
    """At least ZSTD_compressBound(size): no honest zstd frame of `size` bytes is longer."""
    return size + (size >> 7) + 1024


# ------------------------------------------------------------------------------ pure: the index


def parse_index(raw: bytes, size: int, sha256: str, what: str = "release") -> Index:
    """The index in `raw`, validated against the signed file `size` and `sha256`, or `MalformedIndex`
    naming the field: format, chunker and compression this agent knows, the signed size and sha256,
    at most `max_chunks(size)` entries, each [offset, size, sha256] with offsets contiguous from 0
    (no gap, no overlap), sizes within the chunker's min (all but the last) and max, summing to `size`."""
    if len(raw) > max_index_bytes(size):
        raise MalformedIndex(what, "index", f"{len(raw)} bytes, over the {max_index_bytes(size)} a {size}-byte "
                                            "file can need")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedIndex(what, "index", f"not JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict):
        raise MalformedIndex(what, "index", "must be a JSON object")
    expected = {"format": FORMAT, "chunker": CHUNKER, "compression": COMPRESSION, "size": size, "sha256": sha256}
    for key, value in expected.items():
        if doc.get(key) != value:
            raise MalformedIndex(what, key, f"is {str(doc.get(key))[:100]!r}, expected {value!r}")
    entries = doc.get("chunks")
    if not isinstance(entries, list):
        raise MalformedIndex(what, "chunks", "must be a list of [offset, size, sha256]")
    if len(entries) > max_chunks(size):
        raise MalformedIndex(what, "chunks", f"{len(entries)} chunks, more than the {max_chunks(size)} a {size}-byte "
                                             f"file cut at >= {CHUNKER['min']} bytes can have")
    chunks, offset, last = [], 0, len(entries) - 1
    for i, entry in enumerate(entries):
        if (not isinstance(entry, list) or len(entry) != 3 or not all(type(v) is int for v in entry[:2])
                or not isinstance(entry[2], str) or not _HEX64.match(entry[2])):
            raise MalformedIndex(what, f"chunks[{i}]", f"{str(entry)[:100]} is not [offset, size, sha256 hex]")
        start, length, digest = entry
        if start != offset:
            kind = "overlaps the one before" if start < offset else "leaves a gap after the one before"
            raise MalformedIndex(what, f"chunks[{i}]", f"offset {start} {kind} (expected {offset})")
        low = 1 if i == last else CHUNKER["min"]
        if not low <= length <= CHUNKER["max"]:
            raise MalformedIndex(what, f"chunks[{i}]", f"size {length} is outside {low}..{CHUNKER['max']}")
        chunks.append((start, length, digest))
        offset += length
    if offset != size:
        raise MalformedIndex(what, "chunks", f"cover {offset} bytes, the signed size is {size}")
    return Index(size, sha256, tuple(chunks))


def index_bytes(index: Index) -> bytes:
    doc = {"format": FORMAT, "chunker": CHUNKER, "compression": COMPRESSION, "size": index.size,
           "sha256": index.sha256, "chunks": [list(c) for c in index.chunks]}
    return json.dumps(doc, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------------ chunking


def cut(f: BinaryIO) -> Iterator[tuple[int, memoryview]]:
    """(offset, data) of each content-defined chunk of `f`, in order; `data` is valid until the next."""
    import pyfastcdc  # here, not at import: agents that never chunk do not load it

    cdc = pyfastcdc.FastCDC(CHUNKER["avg"], min_size=CHUNKER["min"], max_size=CHUNKER["max"])
    for chunk in cdc.cut_stream(f):
        yield chunk.offset, chunk.data


def build_index(path: str | Path, each: Callable[[str, memoryview], Any] | None = None) -> Index:
    """Chunk the file at `path` (one streamed pass, constant memory) into its index; `each(sha256,
    data)` is called for every chunk (the publisher stores it)."""
    whole, chunks = hashlib.sha256(), []
    with open(path, "rb", buffering=0) as f:
        for offset, data in cut(f):
            digest = hashlib.sha256(data).hexdigest()
            whole.update(data)
            chunks.append((offset, len(data), digest))
            if each is not None:
                each(digest, data)
    size = chunks[-1][0] + chunks[-1][1] if chunks else 0
    return Index(size, whole.hexdigest(), tuple(chunks))


def chunk_path(root: str | Path, digest: str) -> Path:
    """Where a chunk lives under `<mirror>/<name>/` (publisher side; `chunk_url` is the agent's)."""
    return Path(root) / "chunks" / digest[:2] / f"{digest}.zst"


def chunk_url(mirror: str, name: str, digest: str) -> str:
    return f"{mirror}/{quote(name)}/chunks/{digest[:2]}/{digest}.zst"


def publish(path: str | Path, name_dir: str | Path, version: str) -> tuple[Index, ChunksRef]:
    """Publisher: chunk `path` into `<name_dir>/chunks/` (a chunk already there is kept: chunks are
    named by content) and write the index to `<name_dir>/<version>/<file>.chunks.json`."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)

    def store(digest: str, data: memoryview) -> None:
        dest = chunk_path(name_dir, digest)
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(dest, cctx.compress(data))

    index = build_index(path, store)
    raw = index_bytes(index)
    dest = Path(name_dir) / version / (Path(path).name + INDEX_SUFFIX)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(dest, raw)
    return index, ChunksRef(dest.name, hashlib.sha256(raw).hexdigest(), len(raw))


def _write_atomic(dest: Path, data: bytes) -> None:
    """Mirrors serve while a release is published: a file appears whole or not at all."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


# --------------------------------------------------------------------------------- agent: seeds


def seed_path(store: artifacts.Store, digest: str) -> Path:
    """The chunk index of the store file `sha256/<digest>` (housekeeping removes it with the file)."""
    return store.root / "chunks" / f"{artifacts._check_digest(digest)}{INDEX_SUFFIX}"


def remember(store: artifacts.Store, index: Index) -> None:
    """Keep `index` as the seed index of its store file, so later releases can reuse its chunks."""
    dest = seed_path(store, index.sha256)
    dest.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    _write_atomic(dest, index_bytes(index))


def _seeds(store: artifacts.Store, skip: str, bounds: artifacts._Bounds, url: str
           ) -> dict[str, tuple[Path, int, int]]:
    """chunk sha256 -> (store file, offset, size) over every artifact in the store but `skip`. An
    artifact without a (valid) seed index is indexed now, once (~1 s per GB)."""
    found: dict[str, tuple[Path, int, int]] = {}
    try:
        names = sorted(os.listdir(store.root / "sha256"))
    except FileNotFoundError:
        return found
    for name in names:
        if name == skip or not _HEX64.match(name):
            continue
        bounds.check(url)
        path = store.path(name)
        try:
            size = path.stat().st_size
            try:
                index = parse_index(seed_path(store, name).read_bytes(), size, name, f"seed {name[:12]}")
            except (OSError, MalformedIndex):
                index = build_index(path)
                if index.sha256 != name:
                    continue  # not the file its name says: leave it to housekeeping, never reuse it
                remember(store, index)
        except OSError:
            continue
        for offset, length, digest in index.chunks:
            found.setdefault(digest, (path, offset, length))
    return found


def _from_seed(seed: tuple[Path, int, int] | None, digest: str, fds: dict[Path, int]) -> bytes | None:
    """The chunk from a store file (its descriptor kept open in `fds`), if it is still there and still
    hashes to `digest`."""
    if seed is None:
        return None
    path, offset, length = seed
    try:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(fds[path], length, offset)
    except OSError:
        return None
    return data if len(data) == length and hashlib.sha256(data).hexdigest() == digest else None


# --------------------------------------------------------------------------------- agent: fetch


@dataclass
class Fetched:
    """What one `fetch` moved: chunks (and bytes) reused locally vs fetched from the mirror."""

    reused: int = 0
    reused_bytes: int = 0
    fetched: int = 0
    fetched_bytes: int = 0  # decompressed
    wire_bytes: int = 0     # compressed, as they came from the mirror, index included
    resumed: int = 0        # chunks of a verified partial file's prefix kept
    resumed_bytes: int = 0


def _decompress(url: str, raw: bytes, digest: str, size: int, what: str) -> bytes:
    import zstandard  # here, not at import: agents that never fetch a delta do not load it

    try:
        with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            data = reader.read(size + 1)
            while len(data) <= size:  # read() may return less than asked before the end
                more = reader.read(size + 1 - len(data))
                if not more:
                    break
                data += more
    except zstandard.ZstdError as exc:
        raise ChunkMismatch(f"{url}: {what} does not decompress ({exc}); the mirror serves a broken chunk") from None
    if len(data) > size:
        raise ChunkTooLarge(f"{url}: {what} decompresses to more than its declared {size} bytes (decompression "
                            "bomb?); refused")
    if len(data) < size or hashlib.sha256(data).hexdigest() != digest:
        raise ChunkMismatch(f"{url}: {what} is {len(data)} bytes with sha256 {hashlib.sha256(data).hexdigest()}, "
                            f"the index says {size} bytes with {digest}; the mirror serves a different chunk")
    return data


def _fetch_chunk(url: str, digest: str, size: int, what: str, sess: Any, bounds: artifacts._Bounds,
                 limiter: artifacts.TokenBucket | None, retries: int = 2) -> tuple[bytes, int]:
    """One chunk from the mirror, verified: (data, bytes on the wire). A broken connection is retried
    `retries` times (a chunk is small: from its start)."""
    wire, cap = 0, compress_bound(size)
    for attempt in range(retries + 1):
        raw = bytearray()
        try:
            with artifacts._get(sess, url, {}, bounds) as resp:
                if resp.status_code != 200:
                    raise artifacts.HttpError(url, resp.status_code, resp.reason or "")
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise ChunkTooLarge(f"{url}: {what} announces {declared} bytes, over the {cap} a {size}-byte "
                                        "chunk can compress to; refused")
                for piece in artifacts._arrivals(url, resp, bounds):
                    raw += piece
                    wire += len(piece)
                    if len(raw) > cap:
                        raise ChunkTooLarge(f"{url}: {what} sent more than the {cap} bytes a {size}-byte chunk can "
                                            "compress to; refused")
                    if limiter is not None:
                        limiter.consume(len(piece), sleep=bounds.pause if bounds.bounded else None)
                if declared.isdigit() and len(raw) < int(declared):
                    raise artifacts.TransferInterrupted(url, f"{what}: connection closed after {len(raw)} of "
                                                             f"{declared} bytes")
        except artifacts.TransferInterrupted:
            if attempt == retries:
                raise
            continue
        return _decompress(url, bytes(raw), digest, size, what), wire
    raise AssertionError("unreachable")


def _chunk_session(sess: Any, base: str) -> requests.Session:
    """A session for one mirror's chunks with the environment's settings for it (proxies, CA bundle,
    netrc) read once: requests reads them again for every request otherwise, a third of the CPU a
    chunk costs."""
    settings = sess.merge_environment_settings(base, {}, None, None, None)
    csess = requests.Session()
    csess.trust_env = False
    csess.proxies.update(settings["proxies"])
    csess.verify, csess.cert = settings["verify"], settings["cert"]
    csess.auth = requests.utils.get_netrc_auth(base) if sess.trust_env else None
    return csess


def _index(mirror: str, cfg: Any, manifest: Manifest, sess: Any, bounds: artifacts._Bounds, stats: Fetched) -> Index:
    ref = manifest.chunks
    assert ref is not None
    what = f"{manifest.name} {manifest.version}"
    url = f"{mirror}/{quote(cfg.name)}/{quote(manifest.version)}/{quote(ref.index)}"
    if ref.size > max_index_bytes(manifest.size):
        raise MalformedIndex(what, "signed.chunks.size", f"{ref.size} bytes, over the {max_index_bytes(manifest.size)} "
                                                         f"a {manifest.size}-byte file can need")
    raw = artifacts._get_document(sess, url, bounds, ref.size, "chunk index", artifacts.TooLarge,
                                  "its signed size")
    stats.wire_bytes += len(raw)
    actual = hashlib.sha256(raw).hexdigest()
    if len(raw) != ref.size or actual != ref.sha256:
        raise IndexMismatch(f"{url}: chunk index of {what} is {len(raw)} bytes with sha256 {actual}, the manifest "
                            f"signed {ref.size} bytes with {ref.sha256}; refused (the mirror serves another index)")
    return parse_index(raw, manifest.size, manifest.sha256, what)


def _resume(part: Path, index: Index, whole: Any) -> int:
    """How many leading chunks of the partial file still verify (hashed into `whole`); the file is cut
    after them."""
    if not part.exists():
        return 0
    done = 0
    with open(part, "r+b") as f:
        have = os.fstat(f.fileno()).st_size
        for offset, length, digest in index.chunks:
            if offset + length > have:
                break
            data = os.pread(f.fileno(), length, offset)
            if hashlib.sha256(data).hexdigest() != digest:
                break
            whole.update(data)
            done += 1
        f.truncate(index.chunks[done][0] if done < len(index.chunks) else index.size)
    return done


def fetch(mirror: str, cfg: Any, store: artifacts.Store, manifest: Manifest, sess: Any,
          bounds: artifacts._Bounds, log: artifacts.Log = None) -> Path:
    """The file of `manifest` (which has `chunks`) in `store`, built from local chunks and the ones
    `mirror` serves (see the module doc). Raises like `artifacts.download`, plus `IndexMismatch`,
    `MalformedIndex`, `ChunkMismatch` and `ChunkTooLarge` naming the chunk and the URL."""
    digest, size, started = manifest.sha256, manifest.size, time.monotonic()
    store.prepare()
    part, lock, stats = store.partial(digest), store.lock(digest), Fetched()
    base = f"{mirror}/{quote(cfg.name)}"
    bounds.acquire(lock, base)
    try:
        if store.has(digest, size):
            return store.path(digest)
        index = _index(mirror, cfg, manifest, sess, bounds, stats)
        seeds = _seeds(store, digest, bounds, base)
        whole = hashlib.sha256()
        start = _resume(part, index, whole)
        stats.resumed_bytes = index.chunks[start][0] if start < len(index.chunks) else size
        stats.resumed = start
        need = size - stats.resumed_bytes
        free = shutil.disk_usage(store.root).free
        if free < need + cfg.free_space_margin:
            raise artifacts.DiskFull(base, f"{free} bytes free under {store.root}, {need + cfg.free_space_margin} "
                                           f"needed ({need} to assemble + {cfg.free_space_margin} "
                                           "artifacts.free_space_margin); free disk space or lower the margin")
        limiter = artifacts.TokenBucket(cfg.bandwidth_limit) if cfg.bandwidth_limit else None
        csess = _chunk_session(sess, base)
        pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="chunks")
        pending: dict[int, Future[tuple[bytes, int]]] = {}
        fds: dict[Path, int] = {}
        ahead = start

        def get(i: int) -> Future[tuple[bytes, int]]:
            offset, length, chunk = index.chunks[i]
            return pool.submit(_fetch_chunk, chunk_url(mirror, cfg.name, chunk), chunk, length,
                               f"chunk {i} (offset {offset}, {length} bytes, sha256 {chunk})", csess, bounds, limiter)

        try:
            with open(part, "ab") as out:
                for i in range(start, len(index.chunks)):
                    while ahead < len(index.chunks) and len(pending) < WINDOW:  # the next missing chunks
                        if index.chunks[ahead][2] not in seeds:
                            pending[ahead] = get(ahead)
                        ahead += 1
                    length, chunk = index.chunks[i][1:]
                    bounds.check(base, stats.fetched_bytes, kept=True)
                    data = None if i in pending else _from_seed(seeds.get(chunk), chunk, fds)
                    if data is not None:
                        stats.reused, stats.reused_bytes = stats.reused + 1, stats.reused_bytes + length
                    else:  # fetched ahead, or a seed that no longer verifies
                        data, wire = (pending.pop(i) if i in pending else get(i)).result()
                        stats.fetched, stats.fetched_bytes = stats.fetched + 1, stats.fetched_bytes + length
                        stats.wire_bytes += wire
                        store.count(artifacts.MIRROR, wire)
                    try:
                        out.write(data)
                    except OSError as exc:
                        raise artifacts.DiskFull(base, f"writing {part} failed: {exc.strerror}") from None
                    whole.update(data)
                out.flush()
                os.fsync(out.fileno())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            csess.close()
            for fd in fds.values():
                os.close(fd)
        actual = whole.hexdigest()
        if actual != digest or part.stat().st_size != size:
            part.unlink(missing_ok=True)
            raise HashMismatch(f"{base}: the chunks of {manifest.name} {manifest.version} reassemble to sha256 "
                               f"{actual}, the manifest says {digest}; partial file deleted (the index does not "
                               "describe the signed file: re-publish it)")
        os.replace(part, store.path(digest))
        artifacts.hashed_here(store.path(digest), digest)
        remember(store, index)
        artifacts._emit(log, "chunks_fetched", mirror=mirror, version=manifest.version, sha256=digest, size=size,
                        chunks=len(index.chunks), seconds=round(time.monotonic() - started, 3), **stats.__dict__)
        return store.path(digest)
    finally:
        lock.release()


# ----------------------------------------------------------------------- agent: member, from peers

RANGE_BYTES = 4 * 1024 * 1024  # one Range request covers at most this many missing bytes (held in memory)
_indexes: dict[tuple[str, str], Index] = {}  # (index sha256, file sha256) -> the last verified index
_indexes_lock = threading.Lock()


def _mirror_index(cfg: Any, manifest: Manifest, sess: Any, bounds: artifacts._Bounds, stats: Fetched) -> Index:
    """The verified index from the mirrors (last measured order, no probe); kept, so the prefetch's
    retries do not fetch it again. Members fetch the small index from the origin, the bytes from peers."""
    ref = manifest.chunks
    assert ref is not None
    key = (ref.sha256, manifest.sha256)
    with _indexes_lock:
        if key in _indexes:
            return _indexes[key]
    mbounds = artifacts._Bounds(cfg.connect_timeout, cfg.read_timeout, bounds.deadline, bounds.cancel)
    failures: list[tuple[str, Exception]] = []
    for mirror in artifacts.known_order(cfg.mirrors):
        try:
            index = _index(mirror, cfg, manifest, sess, mbounds, stats)
        except artifacts._STOP:
            raise
        except (artifacts.ArtifactError, TrustError) as exc:
            failures.append((mirror, exc))
            continue
        with _indexes_lock:
            _indexes.clear()
            _indexes[key] = index
        return index
    raise artifacts.MirrorUnavailable(f"chunk index of {manifest.name} {manifest.version}",
                                      f"no mirror served it: {artifacts._listing(failures, 'no mirrors configured')}",
                                      causes=failures)


def _peer_range(url: str, headers: dict[str, str], run: tuple[tuple[int, int, str], ...], first: int,
                size: int, sess: Any, bounds: artifacts._Bounds) -> list[bytes]:
    """Chunks `run` (numbered from `first`) from one holder in one Range request, each verified."""
    start, end = run[0][0], run[-1][0] + run[-1][1] - 1
    with artifacts._get(sess, url, {**headers, "Range": f"bytes={start}-{end}"}, bounds) as resp:
        if resp.status_code != 206:
            raise artifacts.HttpError(url, resp.status_code, resp.reason or "")
        m = artifacts._CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
        if not m or (int(m.group(1)), int(m.group(2)), m.group(3)) != (start, end, str(size)):
            raise artifacts.ArtifactError(url, f"asked for bytes {start}-{end}/{size}, got Content-Range "
                                               f"{resp.headers.get('Content-Range')!r}")
        buf, out, i, want = bytearray(), [], 0, end - start + 1
        for piece in artifacts._arrivals(url, resp, bounds, expected=want):
            buf += piece
            if sum(map(len, out)) + len(buf) > want:
                raise artifacts.TooLarge(f"{url}: sent more than the {want} bytes of range {start}-{end}; refused")
            while i < len(run) and len(buf) >= run[i][1]:
                offset, length, digest = run[i]
                data = bytes(buf[:length])
                del buf[:length]
                actual = hashlib.sha256(data).hexdigest()
                if actual != digest:
                    raise ChunkMismatch(f"{url}: chunk {first + i} (offset {offset}, {length} bytes, sha256 {digest}) "
                                        f"has sha256 {actual}; the holder serves a different file")
                out.append(data)
                i += 1
        if i < len(run):
            raise artifacts.TransferInterrupted(url, f"range {start}-{end}: connection closed after "
                                                     f"{sum(map(len, out)) + len(buf)} of {want} bytes")
        return out


def fetch_from_peers(holders: Any, manifest: Manifest, store: artifacts.Store, secret: bytes, cfg: Any, sess: Any,
                     bounds: artifacts._Bounds, clock: Callable[[], float], log: artifacts.Log = None
                     ) -> tuple[Path, str] | None:
    """Member: the file of `manifest` (which has `chunks`) built from the chunks its store holds, the
    others read from holders (node id, API URL) with Range requests on the peer endpoint, each chunk
    verified on arrival, the whole file before it lands. None when no local chunk is reusable (the
    caller fetches the file whole). Raises like `artifacts.fetch_from_peers`; the caller then falls
    back to the whole file. The partial file only ever holds verified chunks, in order (it is served
    on to later members while it grows)."""
    digest, size, started = manifest.sha256, manifest.size, time.monotonic()
    what = f"{manifest.name} {manifest.version} sha256 {digest[:12]}"
    store.prepare()
    part, lock, stats = store.partial(digest), store.lock(digest), Fetched()
    bounds.acquire(lock, what)
    try:
        if store.has(digest, size):
            return store.path(digest), "local"
        index = _mirror_index(cfg, manifest, sess, bounds, stats)
        seeds = _seeds(store, digest, bounds, what)
        whole = hashlib.sha256()
        start = _resume(part, index, whole)
        stats.resumed, stats.resumed_bytes = start, index.chunks[start][0] if start < len(index.chunks) else size
        if not any(chunk[2] in seeds for chunk in index.chunks[start:]):
            artifacts._emit(log, "chunks_skipped", version=manifest.version, sha256=digest,
                            cause="no chunk of it is in the local store; fetching the whole file from peers")
            return None
        free = shutil.disk_usage(store.root).free
        if free < size - stats.resumed_bytes + cfg.free_space_margin:
            raise artifacts.DiskFull(what, f"{free} bytes free under {store.root}, "
                                           f"{size - stats.resumed_bytes + cfg.free_space_margin} needed; free disk "
                                           "space or lower artifacts.free_space_margin")
        order, used, fds = list(holders), None, {}
        try:
            with open(part, "ab") as out:
                i = start
                while i < len(index.chunks):
                    bounds.check(what, stats.fetched_bytes, kept=True)
                    length, chunk = index.chunks[i][1:]
                    data = _from_seed(seeds.get(chunk), chunk, fds)
                    if data is not None:
                        datas = [data]
                        stats.reused, stats.reused_bytes = stats.reused + 1, stats.reused_bytes + length
                    else:  # the run of missing chunks from here (a seed that no longer verifies included)
                        j, want = i + 1, length
                        while (j < len(index.chunks) and index.chunks[j][2] not in seeds
                               and want + index.chunks[j][1] <= RANGE_BYTES):
                            want += index.chunks[j][1]
                            j += 1
                        datas, used = _range_from_holders(order, index, i, j, secret, sess, bounds, clock, what)
                        order = [h for h in order if h[0] == used] + [h for h in order if h[0] != used]
                        stats.fetched, stats.fetched_bytes = stats.fetched + len(datas), stats.fetched_bytes + want
                        stats.wire_bytes += want
                        store.count(artifacts.PEER, want)
                    for data in datas:
                        try:
                            out.write(data)
                        except OSError as exc:
                            raise artifacts.DiskFull(what, f"writing {part} failed: {exc.strerror}") from None
                        whole.update(data)
                    i += len(datas)
                out.flush()
                os.fsync(out.fileno())
        finally:
            for fd in fds.values():
                os.close(fd)
        actual = whole.hexdigest()
        if actual != digest or part.stat().st_size != size:
            part.unlink(missing_ok=True)
            raise HashMismatch(f"{what}: the chunks reassemble to sha256 {actual}, the manifest says {digest}; "
                               "partial file deleted (the index does not describe the signed file: re-publish it)")
        os.replace(part, store.path(digest))
        artifacts.hashed_here(store.path(digest), digest)
        remember(store, index)
        artifacts._emit(log, "chunks_fetched", source=used or "local", version=manifest.version, sha256=digest,
                        size=size, chunks=len(index.chunks), seconds=round(time.monotonic() - started, 3),
                        **stats.__dict__)
        return store.path(digest), used or "local"
    finally:
        lock.release()


def _range_from_holders(holders: list[tuple[str, str]], index: Index, i: int, j: int, secret: bytes, sess: Any,
                        bounds: artifacts._Bounds, clock: Callable[[], float], what: str) -> tuple[list[bytes], str]:
    """Chunks i..j-1 from the first holder that serves them verified: (their data, that holder)."""
    tried: list[tuple[str, Exception]] = []
    for node_id, api_url in holders:
        url = api_url.rstrip("/") + artifacts.PEER_PATH.format(digest=index.sha256)
        auth = artifacts.peer_auth_header(secret, "GET", urlsplit(url).path, clock())
        try:
            return _peer_range(url, {"Authorization": auth}, index.chunks[i:j], i, index.size, sess, bounds), node_id
        except artifacts._STOP:
            raise
        except (artifacts.ArtifactError, TrustError) as exc:
            tried.append((f"{node_id} ({url})", exc))
    raise artifacts.PeersUnavailable(what, f"no peer served chunks {i}..{j - 1}: "
                                           f"{artifacts._listing(tried, 'no holders given')}", causes=tried)
