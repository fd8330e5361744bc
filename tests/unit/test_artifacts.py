"""Downloads, mirrors and peer transfer against real local HTTP servers (see conftest.make_mirror)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from quorum_rollout import artifacts, signing
from quorum_rollout.artifacts import (
    ArtifactError,
    Cancelled,
    DeadlineExceeded,
    DiskFull,
    HttpError,
    MirrorUnavailable,
    NotPublished,
    PeersUnavailable,
    RateGuard,
    Store,
    TokenBucket,
    TooLarge,
    TransferInterrupted,
    TransferTooSlow,
)
from quorum_rollout.config import ArtifactsConfig, TrustedKey
from quorum_rollout.signing import HashMismatch, TrustError

if TYPE_CHECKING:
    from conftest import MirrorServer, Seen

    MakeMirror = Callable[..., MirrorServer]

KEY = Ed25519PrivateKey.from_private_bytes(b"\7" * 32)
PUBLIC = signing.public_key_b64(KEY)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
PAYLOAD = os.urandom(1024 * 1024 + 12345)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FILE = "demo-app/2.4/demo-app-2.4.tar.gz"
SECRET = b"s" * 48


def make_cfg(*mirrors: str, **overrides: Any) -> ArtifactsConfig:
    cfg = ArtifactsConfig(name="demo-app", mirrors=tuple(mirrors) or ("http://127.0.0.1:9",),
                          trusted_keys=(TrustedKey(signing.key_id(PUBLIC), PUBLIC),),
                          free_space_margin=0, connect_timeout=2.0, read_timeout=5.0)
    return dataclasses.replace(cfg, **overrides)


POLICY = signing.TrustPolicy.from_config(make_cfg())


def publish(mirror: MirrorServer, version: str = "2.4", payload: bytes = PAYLOAD, *,
            key: Ed25519PrivateKey = KEY, **signed_args: Any) -> dict[str, Any]:
    """Put a release (file + signed manifest) on a mirror, in the documented layout."""
    path = mirror.put(f"demo-app/{version}/demo-app-{version}.tar.gz", payload)
    signed = signing.build_signed(path, "demo-app", version, now=time.time() - 60, **signed_args)
    mirror.put(f"demo-app/{version}/manifest.json", signing.canonical_json(signing.sign(signed, [key])))
    return signed


def fetch(cfg: ArtifactsConfig, store: Store, version: str = "2.4", **kwargs: Any) -> Any:
    """The leader's two steps (as coordinator._download): the verified manifest, then the file,
    preferring the mirror that served the manifest. Returns (manifest, path, mirror used)."""
    kwargs.setdefault("now", time.time())
    kwargs.setdefault("group", "intel-eu1")
    kwargs.setdefault("highest_version", None)
    kwargs.setdefault("allow_downgrade", False)
    kwargs.setdefault("sleep", lambda seconds: None)
    manifest, mirror = artifacts.fetch_manifest(cfg, version, POLICY, **kwargs)
    path, used = artifacts.download_from_mirrors(cfg, store, manifest, prefer=mirror, log=kwargs.get("log"))
    return manifest, path, mirror if used == "local" else used


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"not true within {timeout} s"
        time.sleep(0.01)


def cancel_when(predicate: Callable[[], bool]) -> tuple[threading.Event, list[float]]:
    """An event another thread sets as soon as `predicate` holds; the list gets the set time."""
    cancel, when = threading.Event(), []

    def run() -> None:
        wait_for(predicate)
        when.append(time.monotonic())
        cancel.set()

    threading.Thread(target=run, daemon=True).start()
    return cancel, when


def store_files(store: Store) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def tiny_store(tmp_path: Path) -> Iterator[Store]:
    """A store on a real 1 MiB tmpfs (needs root); skipped with the reason when mounting fails."""
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
        yield Store(mnt / "store")
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=30)


# ------------------------------------------------------------------------------------- download


def test_download_streams_into_the_content_addressed_store(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    path = artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert path == store.root / "sha256" / DIGEST and path.read_bytes() == PAYLOAD
    assert store.has(DIGEST, len(PAYLOAD)) and not store.has(DIGEST, len(PAYLOAD) + 1)
    assert store_files(store) == [f"sha256/{DIGEST}"]
    assert mirror.bytes_served == len(PAYLOAD)
    assert mirror.seen(FILE)[0].headers.get("Accept-Encoding") == "identity"
    assert artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg()) == path
    assert len(mirror.seen(FILE)) == 1  # already in the store: no second request


def test_a_store_file_hashed_on_arrival_is_not_hashed_again_until_it_changes(make_mirror: MakeMirror, store: Store,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = make_mirror()
    publish(mirror)
    manifest, path, _used = fetch(make_cfg(mirror.url), store)
    hashed: list[Path] = []
    full = artifacts.verify_file
    monkeypatch.setattr(artifacts, "verify_file", lambda p, m: (hashed.append(Path(p)), full(p, m))[1])
    store.verify(path, manifest)
    store.verify(path, manifest)
    assert hashed == []  # hashed as it arrived, unchanged since
    tampered = bytearray(path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    fake = path.with_name("fake")
    fake.write_bytes(bytes(tampered))
    os.replace(fake, path)  # the same size under the same name
    with pytest.raises(signing.HashMismatch):
        store.verify(path, manifest)
    assert hashed == [path]
    fake.write_bytes(PAYLOAD)
    os.replace(fake, path)
    store.verify(path, manifest)  # hashed in full again, then trusted while unchanged
    store.verify(path, manifest)
    assert hashed == [path, path]


def test_store_refuses_digests_that_are_not_sha256_hex(store: Store) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(ValueError, match="sha256"):
            store.path(bad)
    assert not store.has("0" * 64, 0)


def test_resume_after_the_connection_is_cut(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    mirror.behave(FILE, cut_after=300_000, times=1)
    url = f"{mirror.url}/{FILE}"
    with pytest.raises(TransferInterrupted, match=url):
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg(), retries=0)
    assert store.partial(DIGEST).stat().st_size == 300_000 and not store.path(DIGEST).exists()
    path = artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    first, second = mirror.seen(FILE)
    assert "Range" not in first.headers and second.headers["Range"] == "bytes=300000-"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DIGEST
    assert mirror.bytes_served == len(PAYLOAD)  # nothing was downloaded twice
    assert store_files(store) == [f"sha256/{DIGEST}"]


def test_a_cut_transfer_is_resumed_within_one_call(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    mirror.behave(FILE, cut_after=200_000, times=2)
    path = artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert [s.headers.get("Range") for s in mirror.seen(FILE)] == [None, "bytes=200000-", "bytes=400000-"]
    assert path.read_bytes() == PAYLOAD


def test_mirror_ignoring_range_restarts_from_zero(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    mirror.behave(FILE, cut_after=100_000, times=1)
    url = f"{mirror.url}/{FILE}"
    with pytest.raises(TransferInterrupted):
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg(), retries=0)
    mirror.behave(FILE, ignore_range=True)
    path = artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert mirror.seen(FILE)[1].headers["Range"] == "bytes=100000-"
    assert path.read_bytes() == PAYLOAD and mirror.bytes_served == 100_000 + len(PAYLOAD)


def test_wrong_content_range_restarts_from_zero(make_mirror: MakeMirror, store: Store) -> None:
    def lying_range(path: Path, header: str | None) -> tuple[int, dict[str, str], Any, int]:
        size = path.stat().st_size  # answers 206 to any Range, but with the whole file
        headers = {"Content-Range": f"bytes 0-{size - 1}/{size}", "Content-Length": str(size)}
        return (206 if header else 200), headers, path.open("rb"), size

    mirror = make_mirror(serve_range=lying_range)
    mirror.put(FILE, PAYLOAD)
    store.prepare()
    store.partial(DIGEST).write_bytes(PAYLOAD[:5000])
    path = artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert [s.headers.get("Range") for s in mirror.seen(FILE)] == ["bytes=5000-", None]
    assert path.read_bytes() == PAYLOAD


def test_poisoned_partial_is_discarded_and_fetched_again(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    store.prepare()
    store.partial(DIGEST).write_bytes(b"\0" * 4096)  # e.g. left by a hostile source
    path = artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert [s.headers.get("Range") for s in mirror.seen(FILE)] == ["bytes=4096-", None]
    assert path.read_bytes() == PAYLOAD


def test_concurrent_downloads_of_one_digest_make_one_transfer(make_mirror: MakeMirror, store: Store) -> None:
    payload = PAYLOAD[:100_000]
    mirror = make_mirror()
    mirror.put(FILE, payload)
    mirror.behave(FILE, trickle=0.002)  # ~0.2 s, so the three calls overlap
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(artifacts.download(f"{mirror.url}/{FILE}", store, hashlib.sha256(payload).hexdigest(),
                                              len(payload), cfg=make_cfg()))
        except (ArtifactError, TrustError, OSError) as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 3 and all(isinstance(r, Path) and r.read_bytes() == payload for r in results)
    assert len(mirror.seen(FILE)) == 1 and mirror.bytes_served == len(payload)


@pytest.mark.parametrize("declare_length", [False, True])
def test_endless_data_is_cut_at_the_signed_size(declare_length: bool, make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    extra = 64 * 1024 * 1024
    mirror.behave(FILE, extra=extra, declare_length=declare_length)
    url = f"{mirror.url}/{FILE}"
    with pytest.raises(TooLarge, match=url) as info:
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert isinstance(info.value, TrustError)
    assert store_files(store) == []  # nothing under sha256/, no partial either
    assert mirror.bytes_served < len(PAYLOAD) + extra  # we stopped reading; the server could not send it all


def test_hash_mismatch_leaves_nothing_in_the_store(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, b"X" + PAYLOAD[1:])  # same size, different content
    url = f"{mirror.url}/{FILE}"
    with pytest.raises(HashMismatch, match=f"{url}: sha256 is .*the manifest says {DIGEST}"):
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert store_files(store) == []


def test_http_error_names_url_and_status(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    url = f"{mirror.url}/{FILE}"
    with pytest.raises(HttpError, match=f"{url}: HTTP 404") as info:
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert info.value.status == 404 and isinstance(info.value, ArtifactError)


def test_unreachable_url_is_an_artifact_error(closed_port_url: str, store: Store) -> None:
    with pytest.raises(ArtifactError, match=f"{closed_port_url}/x: request failed: ConnectionError"):
        artifacts.download(f"{closed_port_url}/x", store, DIGEST, len(PAYLOAD), cfg=make_cfg())


def test_disk_full_on_a_tiny_filesystem(make_mirror: MakeMirror, tiny_store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)  # 1 MiB + 12 KiB: more than the 1 MiB filesystem holds
    with pytest.raises(DiskFull, match=r"\d+ bytes free under .*tiny/store, 1060921 needed") as info:
        artifacts.download(f"{mirror.url}/{FILE}", tiny_store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert mirror.url in str(info.value)
    assert mirror.requests == [] and store_files(tiny_store) == []  # checked before the first byte
    small = mirror.put("small", PAYLOAD[:200_000]).read_bytes()  # fits: lands on the same filesystem
    path = artifacts.download(f"{mirror.url}/small", tiny_store, hashlib.sha256(small).hexdigest(), len(small),
                              cfg=make_cfg())
    assert path.read_bytes() == small and store_files(tiny_store) == [f"sha256/{path.name}"]


def test_free_space_margin_is_required_too(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    with pytest.raises(DiskFull, match=r"free_space_margin"):
        artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD),
                           cfg=make_cfg(free_space_margin=10**18))
    assert mirror.requests == []


def test_slow_retrieval_guard(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    mirror.behave(FILE, trickle=0.01)  # 1 KiB every 10 ms: at most ~100 KB/s
    cfg = make_cfg(min_rate=10_000_000, min_rate_window=0.2)
    with pytest.raises(TransferTooSlow, match=r"B/s over 0.2 s, below 10000000 B/s"):
        artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=cfg)
    assert 0 < store.partial(DIGEST).stat().st_size < len(PAYLOAD)  # kept for a resume elsewhere


def test_slow_retrieval_guard_is_on_by_default(make_mirror: MakeMirror, store: Store) -> None:
    slow, good = make_mirror(), make_mirror()
    publish(slow)
    publish(good)
    slow.behave(FILE, trickle=0.2, trickle_bytes=256)  # ~1.3 KB/s
    good.behave("/", delay=0.3)
    cfg = make_cfg(slow.url, good.url, min_rate_window=1.0)
    assert cfg.min_rate == 4096  # the default (test_config: the parser's default is the same)
    url = f"{slow.url}/{FILE}"
    with pytest.raises(TransferTooSlow, match=rf"^{url}: \d+ B/s over 1 s, below 4096 B/s \(artifacts.min_rate\)"):
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=cfg)
    kept = store.partial(DIGEST).stat().st_size
    assert kept > 0
    events: list[tuple[str, dict[str, Any]]] = []
    _manifest, path, used = fetch(cfg, store, log=lambda e, **f: events.append((e, f)))
    assert used == good.url and path.read_bytes() == PAYLOAD
    assert [(e, f["mirror"], f.get("kind")) for e, f in events] == [("mirror_failed", slow.url, "TransferTooSlow"),
                                                                   ("mirror_used", good.url, None)]
    assert good.seen(FILE)[0].headers["Range"].startswith("bytes=")  # resumed what the slow mirror sent


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 100.0, []  # type: ignore[var-annotated]

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_waits() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    assert bucket.reserve(1000) == 0.0  # the initial burst
    assert bucket.reserve(500) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.reserve(500) == pytest.approx(0.5)  # the debt was paid, this one waits its own time
    clock.now += 60
    assert bucket.reserve(100) == 0.0  # refilled, capped at the burst
    assert bucket.reserve(1900) == pytest.approx(1.0)
    assert bucket.consume(0) == pytest.approx(1.0)
    assert clock.slept == [pytest.approx(1.0)]


def test_bandwidth_cap_applies_to_a_download(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    clock = FakeClock()
    bucket = TokenBucket(256 * 1024, clock=clock, sleep=clock.sleep)
    artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg(), limiter=bucket)
    assert sum(clock.slept) == pytest.approx((len(PAYLOAD) - 256 * 1024) / (256 * 1024))


def test_rate_guard_windows() -> None:
    clock = FakeClock()
    guard = RateGuard(1000, 10, clock=clock)
    assert guard.update(5000) is None
    clock.now += 10
    assert guard.update(6000) is None  # 11000 B in 10 s: fast enough
    clock.now += 10
    assert guard.update(500) == pytest.approx(50.0)
    clock.now += 10
    guard.exclude(9.5)  # e.g. 9.5 s waiting for the bandwidth cap: not the mirror's fault
    assert guard.update(5000) is None  # 5000 B in 0.5 s of real transfer, window not over yet
    clock.now += 9.5
    assert guard.update(5000) is None  # 10000 B over 10 s: not too slow


def test_bandwidth_cap_below_min_rate_is_not_a_slow_mirror(make_mirror: MakeMirror, store: Store) -> None:
    payload = PAYLOAD[:300_000]
    mirror = make_mirror()
    mirror.put(FILE, payload)
    # a real 200 kB/s cap (about 0.5 s of waiting) under a 250 kB/s minimum: the waits are ours, not the mirror's
    cfg = make_cfg(bandwidth_limit=200_000, min_rate=250_000, min_rate_window=0.1)
    path = artifacts.download(f"{mirror.url}/{FILE}", store, hashlib.sha256(payload).hexdigest(), len(payload),
                              cfg=cfg)
    assert path.read_bytes() == payload


# --------------------------------------------------------------------------- deadline and cancel


def test_deadline_ends_a_trickling_download_and_a_later_one_resumes(make_mirror: MakeMirror, store: Store) -> None:
    slow, good = make_mirror(), make_mirror()
    for mirror in (slow, good):
        mirror.put(FILE, PAYLOAD)
    slow.behave(FILE, trickle=0.5, trickle_bytes=1)  # each read gets a byte, so the socket never times out
    url, start = f"{slow.url}/{FILE}", time.monotonic()
    words = (rf"^{url}: deadline passed after \d+ of {len(PAYLOAD)} bytes received "
             r"\(deadline: monotonic [\d.]+, [\d.]+ s ago\); partial file kept for a Range resume$")
    with pytest.raises(DeadlineExceeded, match=words) as info:
        artifacts.download(url, store, DIGEST, len(PAYLOAD), cfg=make_cfg(), deadline=start + 2)
    assert time.monotonic() - start < 3
    assert isinstance(info.value, ArtifactError) and info.value.deadline == start + 2
    partial = store.partial(DIGEST).read_bytes()
    assert 0 < len(partial) == info.value.received and partial == PAYLOAD[:len(partial)]
    path = artifacts.download(f"{good.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg())
    assert [s.headers.get("Range") for s in good.seen(FILE)] == [f"bytes={len(partial)}-"]
    assert path.read_bytes() == PAYLOAD and store_files(store) == [f"sha256/{DIGEST}"]


def test_deadline_caps_the_socket_timeouts(silent_url: str, store: Store) -> None:
    start = time.monotonic()  # read_timeout is 5 s, the deadline 1 s away
    with pytest.raises(DeadlineExceeded, match=f"{silent_url}/x: deadline passed after 0 bytes"):
        artifacts.download(f"{silent_url}/x", store, DIGEST, len(PAYLOAD), cfg=make_cfg(), deadline=start + 1)
    assert time.monotonic() - start < 2


def test_deadline_ends_a_trickling_manifest_and_no_other_mirror_is_tried(make_mirror: MakeMirror) -> None:
    slow, good = make_mirror(), make_mirror()
    publish(slow)
    publish(good)
    slow.behave("demo-app/2.4/manifest.json", trickle=0.5, trickle_bytes=1)
    good.behave("/", delay=0.3)  # measured slower, so the trickling mirror is tried first
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=f"{slow.url}/demo-app/2.4/manifest.json: deadline passed after"):
        artifacts.fetch_manifest(make_cfg(slow.url, good.url), "2.4", POLICY, now=time.time(), group=None,
                                 highest_version=None, allow_downgrade=False, deadline=start + 2)
    assert time.monotonic() - start < 3
    assert good.seen("demo-app/2.4/manifest.json") == []  # the deadline is the caller's: not a mirror failure


def test_deadline_is_not_a_mirror_failure_for_the_artifact_either(make_mirror: MakeMirror, store: Store) -> None:
    slow, good = make_mirror(), make_mirror()
    publish(slow)
    publish(good)
    slow.behave(FILE, trickle=0.2, trickle_bytes=1)
    manifest = artifacts.fetch_manifest(make_cfg(good.url), "2.4", POLICY, now=time.time(), group=None,
                                        highest_version=None, allow_downgrade=False)[0]
    cfg, start = make_cfg(slow.url, good.url), time.monotonic()
    with pytest.raises(DeadlineExceeded):
        artifacts.download_from_mirrors(cfg, store, manifest, prefer=slow.url, deadline=start + 1)
    assert time.monotonic() - start < 2 and good.seen(FILE) == []
    assert artifacts.download_from_mirrors(cfg, store, manifest, prefer=good.url)[1] == good.url


def test_cancel_from_another_thread_ends_a_download(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    mirror.behave(FILE, trickle=0.05, trickle_bytes=1)
    cancel, when = cancel_when(lambda: mirror.bytes_served >= 5)
    with pytest.raises(Cancelled, match=rf"{mirror.url}/{FILE}: cancelled after \d+ of {len(PAYLOAD)} bytes received; "
                                        "partial file kept") as info:
        artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg(), cancel=cancel,
                           deadline=time.monotonic() + 20)  # the deadline only keeps a broken test from hanging
    assert time.monotonic() - when[0] < 1
    partial = store.partial(DIGEST).read_bytes()
    assert len(partial) == info.value.received >= 5 and partial == PAYLOAD[:len(partial)]


def test_backoff_between_mirrors_stops_at_the_deadline_and_wakes_on_cancel(make_mirror: MakeMirror) -> None:
    broken, good = make_mirror(), make_mirror()
    broken.behave("demo-app/2.4/manifest.json", status=500, body=b"oops", content_type="text/plain")
    publish(good)
    good.behave("/", delay=0.3)
    cfg = make_cfg(broken.url, good.url)
    args: dict[str, Any] = dict(now=time.time(), group=None, highest_version=None, allow_downgrade=False, backoff=60)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=rf"failed before: {broken.url}: HttpError: .*HTTP 500") as info:
        artifacts.fetch_manifest(cfg, "2.4", POLICY, deadline=start + 1, **args)
    assert time.monotonic() - start < 2 and good.seen("demo-app/2.4/manifest.json") == []
    assert [m for m, _ in info.value.causes] == [broken.url]
    cancel, when = cancel_when(lambda: len(broken.seen("demo-app/2.4/manifest.json")) == 2)
    with pytest.raises(Cancelled):
        artifacts.fetch_manifest(cfg, "2.4", POLICY, cancel=cancel, deadline=time.monotonic() + 20, **args)
    assert time.monotonic() - when[0] < 1


def test_waits_for_the_bandwidth_cap_and_the_lock_stop_at_the_deadline(make_mirror: MakeMirror,
                                                                       store: Store) -> None:
    mirror = make_mirror()
    mirror.put(FILE, PAYLOAD)
    start = time.monotonic()  # 1 KB/s: the first 64 KiB read alone would wait a minute
    with pytest.raises(DeadlineExceeded, match="partial file kept"):
        artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg(),
                           limiter=TokenBucket(1000), deadline=start + 1)
    assert time.monotonic() - start < 2
    with store.lock(DIGEST):  # another transfer of the same digest is under way
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="after 0 bytes"):
            artifacts.download(f"{mirror.url}/{FILE}", store, DIGEST, len(PAYLOAD), cfg=make_cfg(),
                               deadline=start + 0.5)
        assert time.monotonic() - start < 1.5


def test_compressed_manifest_is_decoded_within_the_size_limit(make_mirror: MakeMirror) -> None:
    def gzipped(path: Path, header: str | None) -> tuple[int, dict[str, str], Any, int]:
        data = gzip.compress(path.read_bytes())
        return 200, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, io.BytesIO(data), len(data)

    mirror = make_mirror(serve_range=gzipped)
    publish(mirror)
    args: dict[str, Any] = dict(now=time.time(), group=None, highest_version=None, allow_downgrade=False)
    manifest, _ = artifacts.fetch_manifest(make_cfg(mirror.url), "2.4", POLICY, **args)
    assert manifest.sha256 == DIGEST
    mirror.put("demo-app/2.4/manifest.json", b"{" + b" " * 200_000 + b"}")  # compresses to a few hundred bytes
    with pytest.raises(MirrorUnavailable, match="ManifestTooLarge"):
        artifacts.fetch_manifest(make_cfg(mirror.url), "2.4", POLICY, **args)


# -------------------------------------------------------------------------------------- mirrors


def test_mirrors_ordered_by_latency_and_cached(make_mirror: MakeMirror, closed_port_url: str) -> None:
    fast, slow = make_mirror(), make_mirror()
    slow.behave("/", delay=0.3)
    clock = FakeClock()
    mirrors = [closed_port_url, slow.url, fast.url]
    assert artifacts.order_mirrors(mirrors, timeout=2, clock=clock) == [fast.url, slow.url, closed_port_url]
    assert [s.method for s in fast.requests] == ["HEAD"]
    clock.now += 299
    assert artifacts.order_mirrors(mirrors, timeout=2, clock=clock)[0] == fast.url
    assert len(fast.requests) == 1  # from the cache
    clock.now += 2
    artifacts.order_mirrors(mirrors, timeout=2, clock=clock)
    assert len(fast.requests) == 2  # expired after 300 s
    artifacts.invalidate(mirrors)
    artifacts.order_mirrors(mirrors, timeout=2, clock=clock)
    assert len(fast.requests) == 3


def test_leader_fetch_from_a_good_mirror(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    publish(mirror, targets=["intel-*"])
    events: list[tuple[str, dict[str, Any]]] = []
    manifest, path, used = fetch(make_cfg(mirror.url), store, log=lambda e, **f: events.append((e, f)))
    assert (manifest.version, manifest.sha256, used) == ("2.4", DIGEST, mirror.url)
    assert path.read_bytes() == PAYLOAD and manifest.raw == (mirror.root / "demo-app/2.4/manifest.json").read_bytes()
    assert events == [("mirror_used", {"level": "info", "mirror": mirror.url, "version": "2.4", "sha256": DIGEST,
                                       "size": len(PAYLOAD)})]
    fetch(make_cfg(mirror.url), store)
    assert len(mirror.seen(FILE)) == 1  # the store already had it: only the manifest was fetched again


def test_leader_fetch_falls_back_through_broken_mirrors(make_mirror: MakeMirror, store: Store,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    m404, m500, html, garbage, good = (make_mirror() for _ in range(5))
    m500.behave("demo-app/2.4/manifest.json", status=500, body=b"oops", content_type="text/plain")
    html.behave("demo-app/2.4/manifest.json", status=200, body=b"<html>login</html>", content_type="text/html")
    garbage.behave("demo-app/2.4/manifest.json", status=200, body=b"\x00garbage", content_type="application/json")
    publish(good)
    good.behave("/", delay=0.3)  # measured slowest, so tried last
    slept: list[float] = []
    logger = logging.getLogger("quorum_rollout.test_artifacts")
    with caplog.at_level(logging.INFO, logger="quorum_rollout.test_artifacts"):
        manifest, _path, used = fetch(make_cfg(m404.url, m500.url, html.url, garbage.url, good.url), store,
                                      log=logger, sleep=slept.append)
    assert used == good.url and manifest.sha256 == DIGEST
    assert slept == [0.5, 1.0, 2.0, 4.0]
    assert [r.getMessage() for r in caplog.records] == ["mirror_failed"] * 4 + ["mirror_used"]
    for bad in (m404, m500, html, garbage):
        assert len(bad.seen("demo-app/2.4/manifest.json")) == 1


def test_leader_fetch_all_mirrors_unavailable(make_mirror: MakeMirror, store: Store, closed_port_url: str) -> None:
    m404, big = make_mirror(), make_mirror()
    big.behave("demo-app/2.4/manifest.json", body=b"{" * 70_000, status=200, content_type="application/json",
               declare_length=False)
    with pytest.raises(MirrorUnavailable) as info:
        fetch(make_cfg(m404.url, big.url, closed_port_url), store)
    text = str(info.value)
    assert text.startswith("demo-app 2.4: no mirror could serve it:")
    assert f"{m404.url}: HttpError" in text and "HTTP 404" in text
    assert f"{big.url}: ManifestTooLarge" in text and f"{closed_port_url}: ArtifactError" in text
    assert len(info.value.causes) == 3


def test_hostile_mirror_does_not_block_a_good_one(make_mirror: MakeMirror, store: Store) -> None:
    hostile, good = make_mirror(), make_mirror()
    publish(hostile, key=OTHER_KEY)  # signed by a key we do not trust
    publish(good)
    good.behave("/", delay=0.3)
    events: list[str] = []
    _manifest, _path, used = fetch(make_cfg(hostile.url, good.url), store, log=lambda e, **f: events.append(e))
    assert used == good.url and events == ["mirror_failed", "mirror_used"]
    assert hostile.seen(FILE) == []  # a refused manifest never leads to a download


def test_trust_failure_is_raised_with_every_cause(make_mirror: MakeMirror, store: Store) -> None:
    hostile, tampered, down = make_mirror(), make_mirror(), make_mirror()
    publish(hostile, key=OTHER_KEY)
    publish(tampered, payload=b"evil" + PAYLOAD[4:])
    tampered.put(FILE, PAYLOAD)  # served file differs from the signed hash
    tampered.behave("/", delay=0.2)
    down.behave("/", delay=0.4)
    # The hostile mirror's manifest is refused; the tampered mirror's manifest is genuine, so the
    # file is then tried from every mirror: the tampered copy fails its hash, the others 404/are down.
    with pytest.raises(TrustError) as info:
        fetch(make_cfg(hostile.url, tampered.url, down.url), store)
    assert type(info.value) is signing.HashMismatch
    text = str(info.value)
    assert "all mirrors failed" in text and f"{tampered.url}: HashMismatch" in text and f"{down.url}: HttpError" in text
    assert [m for m, _ in info.value.causes] == [tampered.url, hostile.url, down.url]
    assert store_files(store) == []


def test_rollback_refused_and_allowed(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    publish(mirror)
    with pytest.raises(signing.RollbackAttack, match=r"lower than 2\.10"):
        fetch(make_cfg(mirror.url), store, highest_version="2.10")
    assert fetch(make_cfg(mirror.url), store, highest_version="2.10", allow_downgrade=True)[0].version == "2.4"


def test_wrong_group_is_refused(make_mirror: MakeMirror, store: Store) -> None:
    mirror = make_mirror()
    publish(mirror, targets=["amd-*"])
    with pytest.raises(signing.WrongTarget, match="intel-eu1"):
        fetch(make_cfg(mirror.url), store, group="intel-eu1")


def test_disk_full_stops_at_once(make_mirror: MakeMirror, store: Store) -> None:
    first, second = make_mirror(), make_mirror()
    publish(first)
    publish(second)
    second.behave("/", delay=0.3)
    with pytest.raises(DiskFull):
        fetch(make_cfg(first.url, second.url, free_space_margin=10**18), store)
    assert second.seen("demo-app/2.4/manifest.json") == []


# ---------------------------------------------------------------------------------------- peers

PEER_FILE_PATH = f"/v1/peer/artifacts/sha256/{DIGEST}"


def test_peer_auth_header_round_trip() -> None:
    now = 1_780_000_000.0
    header = artifacts.peer_auth_header(SECRET, "GET", PEER_FILE_PATH, now)
    assert header.startswith(f"QR-Peer ts={int(now)},mac=")
    assert artifacts.check_peer_auth(SECRET, header, "GET", PEER_FILE_PATH, now + 299)
    assert artifacts.check_peer_auth(SECRET, header, "GET", PEER_FILE_PATH, now - 300)
    from datetime import datetime
    assert artifacts.check_peer_auth(SECRET, header, "GET", PEER_FILE_PATH, datetime.fromtimestamp(now).astimezone())


@pytest.mark.parametrize(("secret", "method", "path", "delta"), [
    (b"t" * 48, "GET", PEER_FILE_PATH, 0),  # wrong secret
    (SECRET, "GET", PEER_FILE_PATH, 301),  # stale
    (SECRET, "GET", PEER_FILE_PATH, -301),  # from the future
    (SECRET, "GET", PEER_FILE_PATH.replace(DIGEST[:4], "ffff"), 0),  # tampered path
    (SECRET, "GET", "/v1/status", 0),
    (SECRET, "POST", PEER_FILE_PATH, 0),  # other method
])
def test_peer_auth_rejects(secret: bytes, method: str, path: str, delta: int) -> None:
    now = 1_780_000_000
    header = artifacts.peer_auth_header(SECRET, "GET", PEER_FILE_PATH, now)
    assert not artifacts.check_peer_auth(secret, header, method, path, now + delta)


@pytest.mark.parametrize("header", [
    None, "", "Bearer abc", "QR-Peer", "QR-Peer ts=,mac=", "QR-Peer ts=abc,mac=" + "0" * 64,
    "QR-Peer ts=1780000000,mac=" + "0" * 63, "QR-Peer mac={mac},ts=1780000000",
    "QR-Peer ts=1780000000,mac={MAC}", "QR-Peer ts=1780000000,mac={mac},x=1", "qr-peer ts=1780000000,mac={mac}",
])
def test_peer_auth_rejects_malformed_headers(header: str | None) -> None:
    good = artifacts.peer_auth_header(SECRET, "GET", PEER_FILE_PATH, 1_780_000_000)
    mac = good.split("mac=")[1]
    if header is not None:
        header = header.replace("{mac}", mac).replace("{MAC}", mac.upper())
    assert not artifacts.check_peer_auth(SECRET, header, "GET", PEER_FILE_PATH, 1_780_000_000)


def peer_server(make_mirror: MakeMirror, secret: bytes = SECRET, payload: bytes = PAYLOAD) -> MirrorServer:
    """A peer: serves its store with `open_range`, only to requests `check_peer_auth` accepts."""
    def authorize(seen: Seen) -> bool:
        return artifacts.check_peer_auth(secret, seen.headers.get("Authorization"), seen.method, seen.path,
                                         time.time())

    server = make_mirror(serve_range=artifacts.open_range, authorize=authorize)
    server.put(f"v1/peer/artifacts/sha256/{hashlib.sha256(payload).hexdigest()}", payload)
    return server


def peer_manifest() -> signing.Manifest:
    m = signing.Manifest("demo-app", "2.4", "demo-app-2.4.tar.gz", DIGEST, len(PAYLOAD),
                         signing.to_datetime(0), signing.to_datetime(1), ("*",))
    return m


def test_fetch_from_peers_tries_holders_in_order(make_mirror: MakeMirror, store: Store,
                                                 closed_port_url: str) -> None:
    stranger = peer_server(make_mirror, secret=b"x" * 48)  # another group's secret: 401
    empty = peer_server(make_mirror, payload=b"other")  # does not hold it: 404
    good = peer_server(make_mirror)
    good.behave(PEER_FILE_PATH, cut_after=500_000, times=1)  # and resumes through open_range
    holders = [("n1", closed_port_url), ("n2", stranger.url), ("n3", empty.url), ("n4", good.url + "/")]
    path, source = artifacts.fetch_from_peers(holders, peer_manifest(), store, SECRET, make_cfg())
    assert source == "n4" and path.read_bytes() == PAYLOAD
    assert [s.headers.get("Range") for s in good.seen(PEER_FILE_PATH)] == [None, "bytes=500000-"]
    assert good.bytes_served == len(PAYLOAD)
    assert artifacts.fetch_from_peers(holders, peer_manifest(), store, SECRET, make_cfg()) == (path, "local")


def test_a_fetch_on_the_critical_path_asks_the_holder_not_to_yield(make_mirror: MakeMirror, store: Store,
                                                                   tmp_path: Path) -> None:
    holder = peer_server(make_mirror)
    artifacts.fetch_from_peers([("n1", holder.url)], peer_manifest(), store, SECRET, make_cfg())
    background = Store(tmp_path / "background")
    artifacts.fetch_from_peers([("n1", holder.url)], peer_manifest(), background, SECRET, make_cfg(), urgent=False)
    assert [s.headers.get(artifacts.URGENT_HEADER) for s in holder.seen(PEER_FILE_PATH)] == ["1", None]


def test_fetch_from_peers_names_every_holder(make_mirror: MakeMirror, store: Store, closed_port_url: str) -> None:
    stranger = peer_server(make_mirror, secret=b"x" * 48)
    liar = make_mirror()  # no auth check, serves other bytes under the digest's name
    liar.put(PEER_FILE_PATH, b"Y" * len(PAYLOAD))
    holders = [("n1", closed_port_url), ("n2", stranger.url), ("n3", liar.url)]
    with pytest.raises(PeersUnavailable) as info:
        artifacts.fetch_from_peers(holders, peer_manifest(), store, SECRET, make_cfg())
    text = str(info.value)
    assert text.startswith(f"demo-app 2.4 sha256 {DIGEST[:12]}: no peer could serve it")
    assert f"n1 ({closed_port_url}{PEER_FILE_PATH}): ArtifactError" in text
    assert f"n2 ({stranger.url}{PEER_FILE_PATH}): HttpError" in text and "HTTP 401" in text
    assert f"n3 ({liar.url}{PEER_FILE_PATH}): HashMismatch" in text
    assert store_files(store) == []
    with pytest.raises(PeersUnavailable, match="no holders given"):
        artifacts.fetch_from_peers([], peer_manifest(), store, SECRET, make_cfg())


def test_a_frozen_holder_is_left_after_peer_timeout(make_mirror: MakeMirror, store: Store, silent_url: str) -> None:
    good = peer_server(make_mirror)
    cfg, start = make_cfg(peer_timeout=1.0, read_timeout=30.0), time.monotonic()
    path, source = artifacts.fetch_from_peers([("frozen", silent_url), ("n2", good.url)], peer_manifest(), store,
                                              SECRET, cfg)
    assert time.monotonic() - start < cfg.peer_timeout + 2
    assert (source, path.read_bytes()) == ("n2", PAYLOAD)
    start = time.monotonic()
    with pytest.raises(PeersUnavailable, match=rf"frozen \({silent_url}{PEER_FILE_PATH}\): ArtifactError: .*timed out"):
        artifacts.fetch_from_peers([("frozen", silent_url)], peer_manifest(), Store(store.root / "x"), SECRET, cfg)
    assert time.monotonic() - start < cfg.peer_timeout + 1


@pytest.mark.parametrize(("header", "status", "content_range", "body"), [
    (None, 200, None, b"0123456789"),
    ("bytes=3-", 206, "bytes 3-9/10", b"3456789"),
    ("bytes=3-5", 206, "bytes 3-5/10", b"345"),
    ("bytes=8-100", 206, "bytes 8-9/10", b"89"),
    ("bytes=-4", 206, "bytes 6-9/10", b"6789"),
    ("bytes=10-", 416, "bytes */10", b""),
    ("bytes=-0", 416, "bytes */10", b""),
    ("bytes=5-2", 200, None, b"0123456789"),  # invalid: ignored
    ("bytes=1-2,4-5", 200, None, b"0123456789"),  # multiple ranges: not supported, ignored
    ("items=1-2", 200, None, b"0123456789"),
])
def test_open_range(header: str | None, status: int, content_range: str | None, body: bytes,
                    tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    got_status, headers, fileobj, length = artifacts.open_range(path, header)
    with fileobj:
        data = fileobj.read(length)
    assert (got_status, headers.get("Content-Range"), data, length) == (status, content_range, body, len(body))
    assert headers["Content-Length"] == str(len(body)) and headers["Accept-Ranges"] == "bytes"


def test_open_range_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert artifacts.open_range(path, "bytes=0-")[0] == 416
    status, _headers, fileobj, length = artifacts.open_range(path, None)
    fileobj.close()
    assert (status, length) == (200, 0)


def raised(call: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    try:
        call(*args, **kwargs)
    except Exception as exc:  # whatever the failure raised
        return exc
    raise AssertionError(f"{call.__name__} did not fail")


def test_is_transient_over_real_failures(make_mirror: MakeMirror, store: Store, closed_port_url: str,
                                         silent_url: str, tmp_path: Path) -> None:
    mirror, hostile = make_mirror(), make_mirror()
    publish(mirror)
    publish(hostile, key=OTHER_KEY)
    for status in (500, 503, 429, 404, 403):
        mirror.behave(f"s{status}", status=status, body=b"no", content_type="text/plain")
    mirror.behave("s500/demo-app/2.4/manifest.json", status=500, body=b"no", content_type="text/plain")
    mirror.put("other", b"X" + PAYLOAD[1:])
    mirror.put("cut", PAYLOAD)
    mirror.behave("cut", cut_after=1000)
    mirror.put("slow", PAYLOAD)
    mirror.behave("slow", trickle=0.01)

    stores = iter(range(100))

    def get(path: str, base: str = mirror.url, call: dict[str, Any] | None = None, **cfg: Any) -> BaseException:
        fresh = Store(tmp_path / f"store{next(stores)}")  # no partial left over from another case
        return raised(artifacts.download, f"{base}/{path}", fresh, DIGEST, len(PAYLOAD), cfg=make_cfg(**cfg),
                      retries=0, **(call or {}))

    def manifest(*mirrors: str) -> BaseException:
        return raised(fetch, make_cfg(*mirrors), store)

    stopped = threading.Event()
    stopped.set()
    cases = {
        "connection refused": get("x", closed_port_url),
        "no answer (read timeout)": get("x", silent_url, read_timeout=0.3),
        "HTTP 500": get("s500"), "HTTP 503": get("s503"), "HTTP 429": get("s429"),
        "HTTP 404": get("s404"), "HTTP 403": get("s403"),
        "connection cut mid-body": get("cut"),
        "too slow": get("slow", min_rate=10_000_000, min_rate_window=0.2),
        "hash mismatch": get("other"),
        "disk full": get("other", free_space_margin=10**18),
        "deadline": get("slow", call={"deadline": time.monotonic() + 0.2}),
        "cancelled": get("slow", call={"cancel": stopped}),
        "untrusted signature": manifest(hostile.url),
        "every mirror down or 5xx": manifest(closed_port_url, f"{mirror.url}/s500"),
        "every mirror 404": manifest(f"{mirror.url}/nothing", f"{mirror.url}/void"),
        "404 and down": manifest(f"{mirror.url}/nothing", closed_port_url),
        "peer refused": raised(artifacts.fetch_from_peers, [("n1", closed_port_url)], peer_manifest(), store,
                               SECRET, make_cfg()),
    }
    assert {name: (type(exc).__name__, artifacts.is_transient(exc)) for name, exc in cases.items()} == {
        "connection refused": ("ArtifactError", True),
        "no answer (read timeout)": ("ArtifactError", True),
        "HTTP 500": ("HttpError", True), "HTTP 503": ("HttpError", True), "HTTP 429": ("HttpError", True),
        "HTTP 404": ("HttpError", False), "HTTP 403": ("HttpError", False),
        "connection cut mid-body": ("TransferInterrupted", True),
        "too slow": ("TransferTooSlow", True),
        "hash mismatch": ("HashMismatch", False),
        "disk full": ("DiskFull", False),
        "deadline": ("DeadlineExceeded", False),
        "cancelled": ("Cancelled", False),
        "untrusted signature": ("UnknownKey", False),
        "every mirror down or 5xx": ("MirrorUnavailable", True),
        "every mirror 404": ("NotPublished", False),
        "404 and down": ("MirrorUnavailable", False),
        "peer refused": ("PeersUnavailable", True),
    }


def test_a_version_no_mirror_has_is_not_published(make_mirror: MakeMirror, store: Store) -> None:
    first, second = make_mirror(), make_mirror()
    publish(first, version="2.3")
    with pytest.raises(NotPublished) as info:
        fetch(make_cfg(first.url, second.url), store)
    assert isinstance(info.value, MirrorUnavailable) and (info.value.name, info.value.version) == ("demo-app", "2.4")
    assert str(info.value).startswith("demo-app 2.4 is not published on any mirror (404 from: ")
    assert first.url in str(info.value) and second.url in str(info.value)
    assert sorted(m for m, _ in info.value.causes) == sorted([first.url, second.url])


def test_error_classes() -> None:
    for cls in (DiskFull, HttpError, TransferInterrupted, TransferTooSlow, MirrorUnavailable, PeersUnavailable):
        assert issubclass(cls, ArtifactError)
    assert issubclass(TooLarge, signing.LengthMismatch) and issubclass(TooLarge, TrustError)
    assert str(ArtifactError("could not fetch")) == "could not fetch"


# ------------------------------------------------------------------------------ channel pointers

POINTER = "demo-app/channels/stable.json"


def point(mirror: MirrorServer, version: str = "2.4", *, key: Ed25519PrivateKey = KEY, tamper: str | None = None,
          now: float | None = None) -> None:
    """Put a signed channel pointer `stable -> version` on a mirror (tampered: version edited after signing)."""
    signed = signing.build_pointer("demo-app", "stable", version, now=time.time() - 60 if now is None else now)
    doc = signing.sign(signed, [key])
    if tamper is not None:
        doc["signed"]["version"] = tamper
    mirror.put(POINTER, signing.canonical_json(doc))


def poll(*mirrors: MirrorServer, **kwargs: Any) -> tuple[signing.ChannelPointer, str]:
    kwargs.setdefault("now", time.time())
    return artifacts.fetch_channel(make_cfg(*(m.url for m in mirrors), channel="stable"), POLICY, **kwargs)


def test_channel_pointer_from_the_closest_mirror_serving_a_valid_one(make_mirror: MakeMirror) -> None:
    empty, bad, good = make_mirror(), make_mirror(), make_mirror()
    point(bad, "2.4", tamper="9.9")
    point(good, "2.4")
    bad.behave("/", delay=0.05)
    good.behave("/", delay=0.15)  # tried last
    events: list[tuple[str, dict[str, Any]]] = []
    pointer, mirror = poll(empty, bad, good, log=lambda name, **fields: events.append((name, fields)))
    assert (pointer.version, pointer.channel, mirror) == ("2.4", "stable", good.url)
    assert [(f["mirror"], f["kind"]) for _, f in events] == [(empty.url, "HttpError"), (bad.url, "BadSignature")]
    assert all(name == "channel_refused" and f["channel"] == "stable" for name, f in events)
    assert "404" in events[0][1]["cause"] and "altered" in events[1][1]["cause"]


def test_channel_nowhere_published_says_how_to_publish(make_mirror: MakeMirror) -> None:
    with pytest.raises(artifacts.ChannelNotPublished, match=r"publish\.yml -e channel=stable"):
        poll(make_mirror(), make_mirror())


def test_channel_trust_refusals_are_raised_when_no_mirror_serves_a_valid_pointer(make_mirror: MakeMirror) -> None:
    old, other_key = make_mirror(), make_mirror()
    point(old, now=time.time() - 40 * 86400)  # signed 40 days ago, valid 30
    point(other_key, key=OTHER_KEY)
    with pytest.raises(TrustError) as info:
        poll(old, other_key)
    assert isinstance(info.value, (signing.ExpiredPointer, signing.UnknownKey))
    assert {m for m, _ in info.value.causes} == {old.url, other_key.url}
    assert {type(e) for _, e in info.value.causes} == {signing.ExpiredPointer, signing.UnknownKey}


@pytest.mark.parametrize("body", [b" " * (signing.MAX_POINTER_BYTES + 1), b"<html>gateway</html>", b"[]"])
def test_channel_garbage_counts_as_a_broken_mirror(body: bytes, make_mirror: MakeMirror) -> None:
    mirror = make_mirror()
    mirror.put(POINTER, body)
    with pytest.raises(MirrorUnavailable, match=r"PointerTooLarge|MalformedPointer"):
        poll(mirror)


def test_channel_poll_ends_at_its_deadline(make_mirror: MakeMirror) -> None:
    slow = make_mirror()
    point(slow)
    slow.behave(POINTER, trickle=0.5, trickle_bytes=1)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"channels/stable\.json: deadline passed"):
        poll(slow, deadline=start + 1)
    assert time.monotonic() - start < 2
