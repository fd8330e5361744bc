"""Delta releases (chunks.py): the index validator (pure), `quorum-rollout sign --chunks`, and the
leader's chunk fetch against real local HTTP mirrors (conftest.make_mirror)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from quorum_rollout import artifacts, chunks, cli, housekeeping, signing
from quorum_rollout.artifacts import Store
from quorum_rollout.chunks import CHUNKER, ChunkMismatch, ChunkTooLarge, Index, IndexMismatch, MalformedIndex
from quorum_rollout.config import ArtifactsConfig, TrustedKey

if TYPE_CHECKING:
    from conftest import MirrorServer

    MakeMirror = Callable[..., MirrorServer]

KEY = Ed25519PrivateKey.from_private_bytes(b"\5" * 32)
PUBLIC = signing.public_key_b64(KEY)
NAME = "demo-app"
SIZE = 3 * 1024 * 1024 + 4321


def make_cfg(*mirrors: str, **overrides: Any) -> ArtifactsConfig:
    cfg = ArtifactsConfig(name=NAME, mirrors=tuple(mirrors), trusted_keys=(TrustedKey(signing.key_id(PUBLIC), PUBLIC),),
                          free_space_margin=0, connect_timeout=2.0, read_timeout=5.0)
    return dataclasses.replace(cfg, **overrides)


POLICY = signing.TrustPolicy.from_config(make_cfg("http://127.0.0.1:9"))


def payload(seed: int = 1, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def changed(data: bytes, regions: int = 3, length: int = 20000, seed: int = 2) -> bytes:
    """`data` with `regions` clustered runs of `length` bytes rewritten."""
    rnd, out = random.Random(seed), bytearray(data)
    for i in range(regions):
        at = (i + 1) * len(data) // (regions + 1)
        out[at:at + length] = rnd.randbytes(length)
    return bytes(out)


@pytest.fixture
def keyfile(tmp_path: Path) -> str:
    path = tmp_path / "release.key"
    path.write_bytes(KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return str(path)


def sign(mirror: MirrorServer, version: str, data: bytes, keyfile: str, *extra: str) -> Path:
    """`quorum-rollout sign --chunks` of a plain tar-like file into the mirror's document root."""
    src = mirror.root.parent / f"{NAME}-{version}.tar"
    src.write_bytes(data)
    assert cli.main(["sign", str(src), "--name", NAME, "--version", version, "--key", keyfile,
                     "--mirror-dir", str(mirror.root), "--chunks", *extra]) == 0
    return mirror.root / NAME / version


def manifest_of(mirror: MirrorServer, version: str) -> signing.Manifest:
    raw = (mirror.root / NAME / version / "manifest.json").read_bytes()
    return signing.verify_manifest(raw, POLICY, now=time.time(), name=NAME, version=version)


def get(store: Store, *mirrors: MirrorServer, version: str, log: Any = None) -> Path:
    cfg = make_cfg(*(m.url for m in mirrors))
    path, _used = artifacts.download_from_mirrors(cfg, store, manifest_of(mirrors[0], version),
                                                  prefer=mirrors[0].url, log=log)
    return path


def served(mirror: MirrorServer) -> int:
    return mirror.bytes_served


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


# ------------------------------------------------------------------------------ index validator


def index_doc(chunk_list: list[list[Any]], total: int | None = None, **fields: Any) -> bytes:
    total = sum(c[1] for c in chunk_list) if total is None else total
    doc = {"format": chunks.FORMAT, "chunker": CHUNKER, "compression": "zstd", "size": total, "sha256": "a" * 64,
           "chunks": chunk_list, **fields}
    return json.dumps(doc).encode()


MIN, MAX = CHUNKER["min"], CHUNKER["max"]
H = "b" * 64


def test_a_valid_index_parses() -> None:
    index = chunks.parse_index(index_doc([[0, MIN, H], [MIN, MAX, H], [MIN + MAX, 1, H]]), MIN + MAX + 1, "a" * 64)
    assert index.chunks == ((0, MIN, H), (MIN, MAX, H), (MIN + MAX, 1, H))


@pytest.mark.parametrize(("entries", "size", "field", "words"), [
    ([[0, MIN, H], [MIN - 1, MIN, H]], 2 * MIN - 1, "chunks[1]", "overlaps"),
    ([[0, MIN, H], [MIN + 1, MIN, H]], 2 * MIN + 1, "chunks[1]", "gap"),
    ([[1, MIN, H]], MIN + 1, "chunks[0]", "gap"),
    ([[0, MIN - 1, H], [MIN - 1, MIN, H]], 2 * MIN - 1, "chunks[0]", "outside"),  # tiny chunk, not the last
    ([[0, MAX + 1, H]], MAX + 1, "chunks[0]", "outside"),
    ([[0, MIN, H]], MIN + 5, "chunks", "cover"),
    ([[0, MIN, "B" * 64]], MIN, "chunks[0]", "sha256"),
    ([[0, MIN]], MIN, "chunks[0]", "sha256"),
    ([[0, True, H]], 1, "chunks[0]", "not [offset"),
])
def test_index_refusals_name_the_chunk(entries: list[list[Any]], size: int, field: str, words: str) -> None:
    with pytest.raises(MalformedIndex) as err:
        chunks.parse_index(index_doc(entries, size), size, "a" * 64)
    assert err.value.field == field and words in str(err.value) and "re-publish" in str(err.value)


def test_an_index_with_too_many_chunks_is_refused_before_its_entries_are_read() -> None:
    size = 10 * MIN
    many = [[i, 1, H] for i in range(size // MIN + 2)]
    with pytest.raises(MalformedIndex, match=r"chunks: 12 chunks, more than the 11"):
        chunks.parse_index(index_doc(many, size), size, "a" * 64)
    millions = index_doc([[i, 1, H] for i in range(200_000)], size)  # a tiny file, a huge index
    with pytest.raises(MalformedIndex, match="over the"):
        chunks.parse_index(millions, size, "a" * 64)


@pytest.mark.parametrize(("field", "value"), [("format", "casync"), ("compression", "gzip"), ("size", 7),
                                              ("sha256", "c" * 64), ("chunker", {**CHUNKER, "avg": 8192})])
def test_an_index_for_another_file_or_chunker_is_refused(field: str, value: Any) -> None:
    raw = index_doc([[0, MIN, H]], MIN, **{field: value})
    with pytest.raises(MalformedIndex) as err:
        chunks.parse_index(raw, MIN, "a" * 64)
    assert err.value.field == field


def test_build_index_cuts_contiguous_bounded_content_defined_chunks(tmp_path: Path) -> None:
    data = payload()
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data[:1000000] + b"inserted" + data[1000000:])
    a, b = chunks.build_index(tmp_path / "a"), chunks.build_index(tmp_path / "b")
    assert (a.size, a.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert chunks.parse_index(chunks.index_bytes(a), a.size, a.sha256) == a  # what we cut, we accept
    common = {h for *_, h in a.chunks} & {h for *_, h in b.chunks}
    assert len(common) >= len(a.chunks) - 2  # an insertion changes the chunk it lands in, not the rest


# --------------------------------------------------------------------------------------- publish


def test_sign_chunks_publishes_an_index_the_manifest_signs(make_mirror: MakeMirror, keyfile: str) -> None:
    mirror = make_mirror()
    data = payload()
    where = sign(mirror, "2.4", data, keyfile)
    manifest = manifest_of(mirror, "2.4")
    assert manifest.chunks is not None and (manifest.sha256, manifest.size) == (hashlib.sha256(data).hexdigest(),
                                                                              len(data))
    raw = (where / manifest.chunks.index).read_bytes()
    assert (hashlib.sha256(raw).hexdigest(), len(raw)) == (manifest.chunks.sha256, manifest.chunks.size)
    index = chunks.parse_index(raw, manifest.size, manifest.sha256)
    rebuilt = b"".join(zstandard.ZstdDecompressor().decompress(chunks.chunk_path(mirror.root / NAME, h).read_bytes())
                       for *_, h in index.chunks)
    assert rebuilt == data
    assert (where / f"{NAME}-2.4.tar").read_bytes() == data  # the whole file too, for agents without deltas


def test_sign_chunks_warns_about_a_compressed_artifact(make_mirror: MakeMirror, keyfile: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sign(make_mirror(), "2.4", b"\x1f\x8b" + payload(size=100000), keyfile)
    assert "is compressed" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- fetch


def test_a_delta_release_moves_only_the_changed_chunks(make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror, events = make_mirror(), []
    v1 = payload()
    sign(mirror, "2.4", v1, keyfile)
    first = get(store, mirror, version="2.4")
    assert first.read_bytes() == v1 and served(mirror) < len(v1) * 1.01  # no seed: every chunk, compressed

    v2 = changed(v1)
    sign(mirror, "2.5", v2, keyfile)
    before = served(mirror)
    path = get(store, mirror, version="2.5", log=lambda name, **f: events.append((name, f)))
    assert path.read_bytes() == v2
    moved = served(mirror) - before
    assert moved < len(v2) * 0.15, moved  # 3 regions of 20 kB: a few 64 kB chunks and the index
    fetched = next(f for name, f in events if name == "chunks_fetched")
    assert fetched["reused"] > fetched["fetched"] > 0 and fetched["wire_bytes"] == moved

    sign(mirror, "2.6", v2, keyfile)  # an identical rebuild: the store holds that sha256 already
    before = served(mirror)
    assert get(store, mirror, version="2.6").read_bytes() == v2
    assert served(mirror) == before


def test_a_seed_without_an_index_is_indexed_once(make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror = make_mirror()
    v1 = payload()
    store.prepare()
    store.path(hashlib.sha256(v1).hexdigest()).write_bytes(v1)  # e.g. fetched whole from a peer
    sign(mirror, "2.5", changed(v1), keyfile)
    get(store, mirror, version="2.5")
    assert served(mirror) < len(v1) * 0.15
    assert chunks.seed_path(store, hashlib.sha256(v1).hexdigest()).exists()


def test_a_corrupted_seed_is_not_reused(make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror = make_mirror()
    v1 = payload()
    sign(mirror, "2.4", v1, keyfile)
    seed = get(store, mirror, version="2.4")
    seed.write_bytes(b"\0" * len(v1))  # disk corruption after it landed
    v2 = changed(v1)
    sign(mirror, "2.5", v2, keyfile)
    assert get(store, mirror, version="2.5").read_bytes() == v2


def test_a_partial_reassembly_resumes_after_its_last_good_chunk(make_mirror: MakeMirror, keyfile: str,
                                                                store: Store) -> None:
    mirror = make_mirror()
    v1 = payload()
    sign(mirror, "2.4", v1, keyfile)
    store.prepare()
    store.partial(hashlib.sha256(v1).hexdigest()).write_bytes(v1[:2_000_000] + b"garbage")
    assert get(store, mirror, version="2.4").read_bytes() == v1
    assert served(mirror) < (len(v1) - 2_000_000) * 1.01 + 200_000


# ------------------------------------------------------------------------------ hostile mirrors


def test_an_index_that_is_not_the_signed_one_is_refused(make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror = make_mirror()
    sign(mirror, "2.4", payload(), keyfile)
    manifest = manifest_of(mirror, "2.4")
    index_file = mirror.root / NAME / "2.4" / manifest.chunks.index
    raw = index_file.read_bytes()
    index_file.write_bytes(raw.replace(b"[0,", b"[1,", 1))  # same size, another index
    with pytest.raises(IndexMismatch, match=r"chunk index of demo-app 2.4 .* the manifest signed") as err:
        get(store, mirror, version="2.4")
    assert mirror.url in str(err.value)
    index_file.write_bytes(raw + b" ")  # longer than signed: not even read
    with pytest.raises(artifacts.TooLarge, match="chunk index announces"):
        get(store, mirror, version="2.4")
    assert not store.has(manifest.sha256, manifest.size)


def corrupt_chunk(mirror: MirrorServer, version: str, number: int, data: bytes) -> str:
    manifest = manifest_of(mirror, version)
    index = chunks.parse_index((mirror.root / NAME / version / manifest.chunks.index).read_bytes(), manifest.size,
                               manifest.sha256)
    digest = index.chunks[number][2]
    chunks.chunk_path(mirror.root / NAME, digest).write_bytes(data)
    return digest


def test_a_wrong_chunk_names_chunk_and_mirror_and_the_next_mirror_is_used(make_mirror: MakeMirror, keyfile: str,
                                                                           store: Store) -> None:
    bad, good = make_mirror(), make_mirror()
    data = payload()
    sign(bad, "2.4", data, keyfile)
    os.rename(bad.root.parent / f"{NAME}-2.4.tar", bad.root.parent / "keep")
    sign(good, "2.4", data, keyfile)
    good_manifest = bad.root / NAME / "2.4" / "manifest.json"
    good_manifest.write_bytes((good.root / NAME / "2.4" / "manifest.json").read_bytes())  # one signed manifest
    digest = corrupt_chunk(bad, "2.4", 5, zstandard.ZstdCompressor().compress(b"x" * 1000))
    events: list[Any] = []
    assert get(store, bad, good, version="2.4", log=lambda name, **f: events.append((name, f))).read_bytes() == data
    failed = next(f for name, f in events if name == "mirror_failed")
    assert failed["mirror"] == bad.url and "chunk 5 " in failed["error"] and digest in failed["error"]
    assert failed["kind"] == "ChunkMismatch"


@pytest.mark.parametrize("attack", ["bomb", "oversized", "not_zstd"])
def test_hostile_chunks_are_refused_and_nothing_lands(attack: str, make_mirror: MakeMirror, keyfile: str,
                                                      store: Store) -> None:
    mirror = make_mirror()
    data = payload()
    sign(mirror, "2.4", data, keyfile)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 * 1024 * 1024))  # ~2 kB, 64 MiB inflated
    body = {"bomb": bomb, "oversized": os.urandom(MAX * 2), "not_zstd": b"hello"}[attack]
    corrupt_chunk(mirror, "2.4", 3, body)
    expected = {"bomb": ChunkTooLarge, "oversized": ChunkTooLarge, "not_zstd": ChunkMismatch}[attack]
    with pytest.raises(expected, match=r"chunk 3 \(offset"):
        get(store, mirror, version="2.4")
    manifest = manifest_of(mirror, "2.4")
    assert not store.has(manifest.sha256, manifest.size)


def test_an_index_that_does_not_rebuild_the_signed_file_is_refused(make_mirror: MakeMirror, keyfile: str,
                                                                   store: Store, tmp_path: Path) -> None:
    """A trusted publisher's bug: an index of another file, signed. The chunks verify, the file not."""
    mirror = make_mirror()
    data = payload()
    sign(mirror, "2.4", data, keyfile)
    other = chunks.build_index(_write(tmp_path / "other", changed(data)), None)
    chunks.publish(tmp_path / "other", mirror.root / NAME, "x")  # its chunks on the mirror
    forged = Index(len(data), hashlib.sha256(data).hexdigest(), other.chunks)
    raw = chunks.index_bytes(forged)
    manifest = manifest_of(mirror, "2.4")
    (mirror.root / NAME / "2.4" / manifest.chunks.index).write_bytes(raw)
    signed = json.loads(manifest.raw)["signed"]
    signed["chunks"] = {"index": manifest.chunks.index, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    (mirror.root / NAME / "2.4" / "manifest.json").write_bytes(signing.canonical_json(signing.sign(signed, [KEY])))
    with pytest.raises(signing.HashMismatch, match="reassemble to sha256"):
        get(store, mirror, version="2.4")
    assert not store.has(manifest.sha256, manifest.size) and not store.partial(manifest.sha256).exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -------------------------------------------------------------------------------- housekeeping


def test_seed_indexes_go_with_their_store_files(make_mirror: MakeMirror, keyfile: str, store: Store,
                                                tmp_path: Path) -> None:
    mirror = make_mirror()
    sign(mirror, "2.4", payload(), keyfile)
    kept = get(store, mirror, version="2.4").name
    stale = "d" * 64
    chunks.seed_path(store, stale).write_bytes(b"{}")  # its store file is gone
    root = tmp_path / "root"
    root.mkdir()
    report = housekeeping.prune_host(root, store, keep_releases=1, protect_versions=(), protect_digests={kept})
    assert chunks.seed_path(store, kept).exists() and not chunks.seed_path(store, stale).exists()
    assert stale in report.removed_seeds


# ------------------------------------------------------------------------ member: ranges from peers

SECRET = b"group-secret-for-peer-ranges"


def holder_of(make_mirror: MakeMirror, data: bytes, *, corrupt_ranges: int = 0) -> MirrorServer:
    """A stand-in holder: the agent's own serve side (`artifacts.open_range`) behind the peer MAC
    check at the peer endpoint's path; the first `corrupt_ranges` Range answers have one bit flipped."""
    left = [corrupt_ranges]

    def serve(path: Path, header: str | None) -> tuple[int, dict[str, str], Any, int]:
        status, headers, f, length = artifacts.open_range(path, header)
        if header and left[0] > 0:
            left[0] -= 1
            with f:
                body = bytearray(f.read(length))
            body[length // 2] ^= 1
            return status, headers, io.BytesIO(bytes(body)), length
        return status, headers, f, length

    holder = make_mirror(serve_range=serve, authorize=lambda seen: artifacts.check_peer_auth(
        SECRET, seen.headers.get("Authorization"), "GET", seen.path, time.time()))
    holder.put(artifacts.PEER_PATH.format(digest=hashlib.sha256(data).hexdigest()), data)
    return holder


def member_with_previous_release(make_mirror: MakeMirror, keyfile: str, store: Store
                                 ) -> tuple[MirrorServer, bytes, bytes]:
    """An origin with 2.4 and a 5 %-changed 2.5 (chunked); the member's store holds 2.4, which it got
    whole from a peer (no seed index yet)."""
    mirror, v1 = make_mirror(), payload()
    v2 = changed(v1, regions=3, length=len(v1) // 60)  # 3 clustered regions, 5 % of the bytes
    sign(mirror, "2.4", v1, keyfile)
    sign(mirror, "2.5", v2, keyfile)
    store.prepare()
    _write(store.path(hashlib.sha256(v1).hexdigest()), v1)
    return mirror, v1, v2


def test_a_member_fetches_only_the_missing_ranges_from_a_peer(make_mirror: MakeMirror, keyfile: str,
                                                              store: Store) -> None:
    mirror, _v1, v2 = member_with_previous_release(make_mirror, keyfile, store)
    holder, events = holder_of(make_mirror, v2), []
    before = served(mirror)
    path, source = artifacts.fetch_from_peers([("m1", holder.url)], manifest_of(mirror, "2.5"), store, SECRET,
                                              make_cfg(mirror.url), log=lambda name, **f: events.append((name, f)))
    assert path.read_bytes() == v2 and source == "m1"
    index_size = manifest_of(mirror, "2.5").chunks.size  # type: ignore[union-attr]
    assert served(mirror) - before == index_size  # the origin: the index only
    fetched = next(f for name, f in events if name == "chunks_fetched")
    assert fetched["source"] == "m1" and holder.bytes_served == fetched["fetched_bytes"]
    # the changed bytes and the rest of the chunks around each region (about 18 % of this small file)
    assert 3 * (len(v2) // 60) <= holder.bytes_served < len(v2) * 0.25, holder.bytes_served
    assert fetched["reused_bytes"] + fetched["fetched_bytes"] == len(v2)
    assert all(seen.headers.get("Range") for seen in holder.requests)
    assert store.received[artifacts.PEER] == holder.bytes_served
    assert chunks.seed_path(store, fetched["sha256"]).exists()  # 2.6 can reuse 2.5's chunks


def test_a_corrupted_range_from_a_peer_is_refused_and_the_whole_file_is_fetched(
        make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror, _v1, v2 = member_with_previous_release(make_mirror, keyfile, store)
    holder, events = holder_of(make_mirror, v2, corrupt_ranges=1), []
    path, source = artifacts.fetch_from_peers([("m1", holder.url)], manifest_of(mirror, "2.5"), store, SECRET,
                                              make_cfg(mirror.url), log=lambda name, **f: events.append((name, f)))
    assert path.read_bytes() == v2 and source == "m1"
    fallback = next(f for name, f in events if name == "chunks_fallback")
    assert fallback["kind"] == "PeersUnavailable" and "ChunkMismatch" in fallback["cause"]
    assert "m1" in fallback["cause"] and "chunk " in fallback["cause"] and "offset" in fallback["cause"]
    assert not any(name == "chunks_fetched" for name, _ in events)
    # then the whole file, resumed after the verified chunks already written (never after unverified bytes)
    last = holder.requests[-1].headers.get("Range", "bytes=0-")
    assert last.startswith("bytes=") and last.endswith("-")


def test_a_holder_with_nothing_yet_is_left_for_the_next_try_without_a_whole_file_request(
        make_mirror: MakeMirror, keyfile: str, store: Store) -> None:
    mirror, _v1, _v2 = member_with_previous_release(make_mirror, keyfile, store)
    empty, events = holder_of(make_mirror, b"another file"), []  # 404 for 2.5's digest
    with pytest.raises(artifacts.PeersUnavailable, match="404"):
        artifacts.fetch_from_peers([("m1", empty.url)], manifest_of(mirror, "2.5"), store, SECRET,
                                   make_cfg(mirror.url), log=lambda name, **f: events.append((name, f)))
    assert len(empty.requests) == 1 and empty.requests[0].headers.get("Range")  # one range, no whole-file retry
    assert not any(name == "chunks_fallback" for name, _ in events)
