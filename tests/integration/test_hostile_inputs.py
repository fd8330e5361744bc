"""Hostile inputs against ONE real group of three agents: every case is refused, the group rolls
back, and no host runs anything but the version it ran before.

The group starts once for the whole module (real agent processes on 127.a.b.x, real Raft, a real
HTTP mirror process, releases signed with the real `quorum-rollout sign` CLI). Its trust policy is
k-of-n: three trusted release keys, one of them revoked, threshold 2. Before the cases it completes
2.4 and then goes back to 2.3 on purpose (allow_downgrade), so every case starts from
"the group runs 2.3, the highest version it ever completed is 2.4". Every case publishes its own
hostile release 3.0.<n>, starts it with POST /v1/releases and checks:

* a hostile or broken manifest is refused by POST /v1/releases itself (409, or 503 when no mirror
  served a usable manifest), before anything is committed: the node receiving the request fetches
  and verifies the manifest first ("a release starts only where it can finish"); no release starts;
* otherwise the release ends `rolled_back`, and its failure names the step (verify / download /
  install) and a reason a user would recognise;
* no host's `current` changed, every demo service still answers 2.3, no host logged an
  `activated` event for that version, no release directory or temporary directory was left;
* refused by the leader before rolling: no batch was ever opened, every host is `skipped`, and
  nothing new landed in any host's verified artifact store;
* refused at install (unsafe archives, signed correctly): the first batch's host failed at
  `install` naming the rule, reverted, and nothing escaped the release directory.

Cases marked `bug=` document agent defects found by this suite (strict xfail: they flip to a
failure once fixed, so the marker gets removed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from quorum_rollout import signing
from tests.support.fleet import CLI, DEMO_FILES, Fleet, Host, wait_for

NAME = "demo-app"
BASELINE, HIGHEST = "2.3", "2.4"
TERMINAL = ("current", "rolled_back", "aborted")
KEYS = ("a", "b", "revoked", "attacker")  # a, b, revoked are trusted; revoked is revoked; attacker is unknown


# ------------------------------------------------------------------------------------ the group


class Group:
    """The module's fleet, its release keys, and helpers to publish (hostile) releases."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.keys: dict[str, Path] = {"a": fleet.key_prefix.with_suffix(".key")}
        self.public: dict[str, str] = {"a": fleet.public_key}
        for name in KEYS[1:]:
            prefix = fleet.base / "keys" / name
            out = subprocess.run([*CLI, "keygen", "--out", str(prefix)], check=True, capture_output=True,
                                 text=True, env=fleet.env)
            self.keys[name] = prefix.with_suffix(".key")
            self.public[name] = json.loads(out.stdout)["public_key"]
        self.revoked_id = signing.key_id(self.public["revoked"])
        fleet.extra = {"artifacts": {
            "trusted_keys": [{"public_key": self.public[k]} for k in ("a", "b", "revoked")],
            "key_threshold": 2,
            "revoked_keys": [self.revoked_id],
        }}

    @property
    def hosts(self) -> list[Host]:
        return self.fleet.hosts

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        for host in self.hosts:
            try:
                return host.status()["state"]
            except requests.RequestException:  # try the next member
                continue
        raise AssertionError("no agent answers")

    def release(self) -> dict[str, Any] | None:
        return self.state()["release"]

    def start(self, version: str, allow_downgrade: bool = False) -> dict[str, Any]:
        resp = self.hosts[0].post("/v1/releases", {"version": version, "allow_downgrade": allow_downgrade})
        assert resp.status_code == 201, resp.text
        return resp.json()["release"]

    def wait_done(self, version: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            release = self.release()
            return release if release and release["version"] == version and release["state"] in TERMINAL else None
        return wait_for(done, timeout, f"release {version} to end", interval=0.1)

    def abort_if_stuck(self, version: str) -> None:
        release = self.release()
        if release and release["version"] == version and release["state"] not in TERMINAL:
            self.hosts[0].post("/v1/releases/current/abort", {})
            self.wait_done(version, 20)

    def store_files(self) -> dict[str, set[str]]:
        out = {}
        for host in self.hosts:
            d = host.data / "store" / "sha256"
            out[host.id] = set(os.listdir(d)) if d.is_dir() else set()
        return out

    # -- publishing ---------------------------------------------------------------------------

    def build(self, version: str) -> Path:
        """A genuine demo-app archive for `version` (not published)."""
        return self.fleet.build_release(version, publish=False)

    def cli_sign(self, archive: Path, version: str, keys: tuple[str, ...] = ("a", "b"),
                 targets: tuple[str, ...] = (), name: str = NAME) -> dict[str, Any]:
        """A manifest made by the real `quorum-rollout sign` CLI."""
        out = self.fleet.base / "build" / f"manifest-{name}-{version}-{'-'.join(keys)}.json"
        cmd = [*CLI, "sign", str(archive), "--name", name, "--version", version, "-o", str(out)]
        for key in keys:
            cmd += ["--key", str(self.keys[key])]
        for target in targets:
            cmd += ["--target", target]
        subprocess.run(cmd, check=True, capture_output=True, env=self.fleet.env)
        return json.loads(out.read_text())

    def sign(self, signed: dict[str, Any], keys: tuple[str, ...] = ("a", "b")) -> dict[str, Any]:
        """Sign a hand-made `signed` part in-process (for fields the CLI refuses to produce)."""
        return signing.sign(signed, [signing.load_private_key(self.keys[k]) for k in keys])

    def signed_part(self, archive: Path, version: str, **kw: Any) -> dict[str, Any]:
        return signing.build_signed(archive, NAME, version, now=kw.pop("now", time.time()), **kw)

    def vdir(self, version: str) -> Path:
        d = self.fleet.mirror_dir / NAME / version
        d.mkdir(parents=True, exist_ok=True)
        return d

    def place(self, version: str, manifest: dict[str, Any] | list[Any] | bytes, artifact: Path | None = None,
              artifact_name: str | None = None) -> Path:
        """Put a manifest (and an artifact) on the mirror under `version`'s path."""
        d = self.vdir(version)
        data = manifest if isinstance(manifest, bytes) else (json.dumps(manifest, indent=2) + "\n").encode()
        (d / "manifest.json").write_bytes(data)
        if artifact is not None:
            (d / (artifact_name or artifact.name)).write_bytes(artifact.read_bytes())
        return d

    def publish(self, version: str, archive: Path | None = None, **kw: Any) -> Path:
        """A genuinely signed release (CLI, keys a+b) on the mirror; returns the mirror copy of the artifact."""
        archive = archive or self.build(version)
        self.place(version, self.cli_sign(archive, version, **kw), archive)
        return self.vdir(version) / archive.name

    def publish_chunked(self, version: str) -> tuple[dict[str, Any], Path]:
        """A genuinely signed delta release (`quorum-rollout sign --chunks`, keys a+b) of 600 kB of random
        bytes (refused before install, so no archive is needed): (the index, its path on the mirror)."""
        payload = self.fleet.base / "build" / f"demo-app-{version}.tar"
        payload.write_bytes(os.urandom(600_000))
        cmd = [*CLI, "sign", str(payload), "--name", NAME, "--version", version, "--chunks",
               "--mirror-dir", str(self.fleet.mirror_dir), "--key", str(self.keys["a"]), "--key", str(self.keys["b"])]
        subprocess.run(cmd, check=True, capture_output=True, env=self.fleet.env)
        index = self.vdir(version) / json.loads((self.vdir(version) / "manifest.json").read_text())["signed"][
            "chunks"]["index"]
        return json.loads(index.read_text()), index

    def sign_index(self, version: str, index: dict[str, Any]) -> None:
        """Put a hand-made chunk index on the mirror and sign (a+b) a manifest naming it: only the agent's
        index validator can refuse it."""
        path = self.vdir(version) / f"demo-app-{version}.tar.chunks.json"
        raw = json.dumps(index, separators=(",", ":")).encode()
        path.write_bytes(raw)
        self.edit_manifest(version, lambda m: m["signed"].update(
            chunks={"index": path.name, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}))
        self.edit_manifest(version, lambda m: m.update(signatures=self.sign(m["signed"])["signatures"]))

    def edit_manifest(self, version: str, change: Callable[[dict[str, Any]], Any]) -> None:
        path = self.vdir(version) / "manifest.json"
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    fleet = Fleet(tmp_path_factory.mktemp("hostile"), 3, step_deadline=20)
    try:
        g = Group(fleet)
        fleet.start_mirror()
        fleet.preinstall(BASELINE)
        g.publish(BASELINE, fleet.base / "build" / f"demo-app-{BASELINE}.tar.gz")  # re-signed 2-of-n
        g.publish(HIGHEST)
        fleet.start()
        # A genuine release completes (so the trust setup accepts what it should), then the group
        # goes back to 2.3 on purpose: it runs 2.3 while 2.4 is the highest it ever completed.
        g.start(HIGHEST)
        assert g.wait_done(HIGHEST, 120)["state"] == "current", g.release()
        g.start(BASELINE, allow_downgrade=True)
        assert g.wait_done(BASELINE, 120)["state"] == "current", g.release()
        state = g.state()
        assert (state["current_version"], state["highest_version"]) == (BASELINE, HIGHEST)
        yield g
    finally:
        fleet.close()


# ------------------------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Group, str], Any]
    step: str                 # the failure step the release must name
    words: tuple[str, ...]    # all must appear in the failure reason (lowercase; "{version}" is filled in)
    where: str = "leader"     # precheck: POST refuses the manifest | leader: refused before rolling |
    #                           install: refused on the first host | api: POST refuses the request
    version: str | None = None
    timeout: float = 30.0
    bug: str | None = None    # known agent defect: strict xfail
    bounded: bool = True      # the failure reason stays short (no attacker-sized echo)


CASES: list[Case] = []


def case(step: str, *words: str, where: str = "leader", version: str | None = None, timeout: float = 30.0,
         bug: str | None = None, bounded: bool = True
         ) -> Callable[[Callable[[Group, str], Any]], Callable[[Group, str], Any]]:
    def register(fn: Callable[[Group, str], Any]) -> Callable[[Group, str], Any]:
        CASES.append(Case(fn.__name__, fn, step, words, where, version, timeout, bug, bounded))
        return fn
    return register


# -- TUF-style trust attacks (refused by the leader at verify) ------------------------------------


@case("verify", "does not verify", where="precheck")
def bad_signature(g: Group, version: str) -> None:
    """A mirror extends the expiry of a genuine manifest after signing."""
    g.publish(version)
    g.edit_manifest(version, lambda m: m["signed"].update(expires="2099-01-01T00:00:00Z"))


@case("verify", "does not verify", where="precheck")
def signature_transplanted(g: Group, version: str) -> None:
    """Valid signatures by trusted keys, but over another release's manifest."""
    g.publish(version)
    other = g.cli_sign(g.build(version + ".1"), version + ".1")
    g.edit_manifest(version, lambda m: m.update(signatures=other["signatures"]))


@case("verify", "unknown key", "trusted_keys", where="precheck")
def unknown_key(g: Group, version: str) -> None:
    g.publish(version, keys=("attacker",))


@case("verify", "revoked key", where="precheck")
def revoked_key(g: Group, version: str) -> None:
    """Threshold met by a and b, but a revoked key also signed: refused anyway."""
    g.publish(version, keys=("a", "b", "revoked"))


@case("verify", "1 valid signature", "2 required", where="precheck")
def below_threshold(g: Group, version: str) -> None:
    g.publish(version, keys=("a",))


@case("verify", "1 valid signature", "distinct trusted keys", "2 required", where="precheck")
def duplicate_signature_one_key(g: Group, version: str) -> None:
    """One key's signature listed twice does not count as two keys."""
    g.publish(version, keys=("a",))
    g.edit_manifest(version, lambda m: m.update(signatures=m["signatures"] * 2))


@case("verify", "1 valid signature", "2 required", where="precheck")
def trusted_plus_unknown_key(g: Group, version: str) -> None:
    g.publish(version, keys=("a", "attacker"))


@case("verify", "no signatures", where="precheck")
def no_signatures(g: Group, version: str) -> None:
    g.publish(version)
    g.edit_manifest(version, lambda m: m.update(signatures=[]))


@case("verify", "expired", where="precheck")
def expired_manifest(g: Group, version: str) -> None:
    """Created 10 days ago, expired yesterday (the CLI cannot sign that: built in-process)."""
    archive = g.build(version)
    signed = g.signed_part(archive, version, now=time.time() - 10 * 86400, expires_in=9 * 86400)
    g.place(version, g.sign(signed), archive)


@case("verify", "amd-*", "not group intel-z1", where="precheck")
def manifest_for_another_group(g: Group, version: str) -> None:
    g.publish(version, targets=("amd-*",))


@case("verify", "manifest is for demo-app {version}.1", "asked for demo-app {version}", where="precheck")
def mix_and_match_version(g: Group, version: str) -> None:
    """A genuine manifest + artifact of another version served under this version's path."""
    archive = g.build(version + ".1")
    g.place(version, g.cli_sign(archive, version + ".1"), archive)


@case("verify", "manifest is for other-app", "asked for demo-app {version}", where="precheck")
def mix_and_match_name(g: Group, version: str) -> None:
    archive = g.build(version)
    g.place(version, g.cli_sign(archive, version, name="other-app"), archive)


@case("verify", "manifest is for demo-app 2.3,", "asked for demo-app {version}", where="precheck")
def replay_old_manifest(g: Group, version: str) -> None:
    """Freeze/replay: the mirror serves the genuine 2.3 release for a newer version."""
    old = g.vdir(BASELINE)
    g.place(version, (old / "manifest.json").read_bytes(), old / f"demo-app-{BASELINE}.tar.gz")


@case("api", "lower than 2.4", "rollback protection", where="api", version="2.3.9")
def version_below_highest(g: Group, version: str) -> None:
    """Genuinely signed 2.3.9: newer than what runs (2.3) but lower than the highest ever run (2.4)."""
    g.publish(version)


# -- artifact attacks ---------------------------------------------------------------------------


@case("verify", "sha256")
def sha256_mismatch_same_size(g: Group, version: str) -> None:
    artifact = g.publish(version)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))


@case("verify", "sha256", "different file")
def artifact_garbage_right_size(g: Group, version: str) -> None:
    artifact = g.publish(version)
    artifact.write_bytes(os.urandom(artifact.stat().st_size))


@case("verify", "announces", "signed size")
def artifact_longer_than_signed(g: Group, version: str) -> None:
    artifact = g.publish(version)
    with open(artifact, "ab") as fh:
        fh.write(os.urandom(1 << 20))


@case("verify", "sent more than", "signed size")
def artifact_endless_data(g: Group, version: str) -> None:
    """The mirror streams the artifact then zeros forever, with no Content-Length."""
    artifact = g.publish(version)
    artifact.with_name(artifact.name + ".endless").write_text(str(256 << 20))


@case("download", "connection closed after")
def artifact_truncated(g: Group, version: str) -> None:
    artifact = g.publish(version)
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2])


@case("download", "http 404")
def artifact_missing(g: Group, version: str) -> None:
    g.publish(version).unlink()


@case("download", "http 500")
def artifact_server_error(g: Group, version: str) -> None:
    artifact = g.publish(version)
    artifact.with_name(artifact.name + ".status").write_text("500\n")


@case("download", "bytes free", "free disk space")
def signed_size_exceeds_disk(g: Group, version: str) -> None:
    """A correctly signed manifest announcing 1 EiB: refused before the first byte."""
    archive = g.build(version)
    signed = g.signed_part(archive, version)
    signed["size"] = 1 << 60
    g.place(version, g.sign(signed), archive)


# -- mirror misbehaviour for the manifest (counts as "unavailable": step download) ---------------


@case("download", "not published on any mirror", "404 from", where="precheck")
def manifest_missing(g: Group, version: str) -> None:
    """Nothing published for this version."""


@case("download", "http 500", where="precheck")
def manifest_server_error(g: Group, version: str) -> None:
    g.publish(version)
    (g.vdir(version) / "manifest.json.status").write_text("500\n")


@case("download", "text/html", "error page", where="precheck")
def manifest_html_error_page(g: Group, version: str) -> None:
    """A captive portal / proxy answers 200 with an HTML page."""
    g.publish(version)
    (g.vdir(version) / "manifest.json.status").write_text(
        "200\nContent-Type: text/html; charset=utf-8\n\n<html><body><h1>Please log in</h1></body></html>\n")


@case("download", "max_manifest_bytes", where="precheck")
def manifest_over_64k(g: Group, version: str) -> None:
    """Correctly signed, but 70 KB: refused before parsing."""
    archive = g.build(version)
    signed = g.signed_part(archive, version)
    signed["notes"] = "x" * 70_000
    g.place(version, g.sign(signed), archive)


@case("download", "max_manifest_bytes", where="precheck")
def manifest_gzip_bomb(g: Group, version: str) -> None:
    """50 MB of spaces sent gzip-encoded (~50 KB on the wire, under the 64 KiB announced limit)."""
    g.publish(version)
    (g.vdir(version) / "manifest.json.status").write_bytes(
        b"200\nContent-Type: application/json\nContent-Encoding: gzip\n\n" + gzip.compress(b" " * (50 << 20)))


@case("verify", "manifest is for demo-app 2.3,", "asked for demo-app {version}", where="precheck")
def manifest_redirect_to_old_release(g: Group, version: str) -> None:
    """The mirror redirects to the genuine 2.3 manifest: following it bypasses nothing."""
    g.publish(version)
    (g.vdir(version) / "manifest.json.status").write_text(
        f"302\nLocation: http://{g.fleet.mirror_ip}:{g.fleet.mirror_port}/{NAME}/{BASELINE}/manifest.json\n")


@case("download", "max_manifest_bytes", where="precheck")
def manifest_endless(g: Group, version: str) -> None:
    """The manifest never ends (no Content-Length): reading stops after the limit."""
    g.publish(version)
    (g.vdir(version) / "manifest.json.endless").write_text(str(64 << 20))


# -- malformed manifests (the parser refuses them before any signature is checked) --------------


def _malformed(change: Callable[[dict[str, Any]], Any], resign: bool = True) -> Callable[[Group, str], None]:
    """A manifest whose `signed` part is altered by `change` and (by default) signed again by a+b,
    so only the parser can refuse it."""
    def prepare(g: Group, version: str) -> None:
        archive = g.build(version)
        signed = g.signed_part(archive, version)
        doc = g.sign(signed)
        change(doc)
        if resign:
            doc["signatures"] = g.sign(doc["signed"])["signatures"]
        g.place(version, doc, archive)
    return prepare


def _register(name: str, prepare: Callable[[Group, str], Any], step: str, *words: str, **kw: Any) -> None:
    prepare.__name__ = name
    case(step, *words, **kw)(prepare)


_register("not_json", lambda g, v: g.place(v, b"this is {not JSON\n", g.build(v)),
          "download", "malformed manifest", "not json", where="precheck")
_register("json_array", lambda g, v: g.place(v, [g.sign(g.signed_part(g.build(v), v))], g.build(v)),
          "download", "malformed manifest", "must be a json object", where="precheck")
_register("missing_sha256", _malformed(lambda d: d["signed"].pop("sha256")),
          "download", "malformed manifest", "signed.sha256", "missing", where="precheck")
_register("size_as_string", _malformed(lambda d: d["signed"].update(size=str(d["signed"]["size"]))),
          "download", "malformed manifest", "signed.size", "non-negative integer", where="precheck")
_register("negative_size", _malformed(lambda d: d["signed"].update(size=-1)),
          "download", "malformed manifest", "signed.size", "non-negative integer", where="precheck")
_register("sha256_not_hex", _malformed(lambda d: d["signed"].update(sha256="g" * 64)),
          "download", "malformed manifest", "signed.sha256", "64 lowercase hex", where="precheck")
_register("file_name_traversal", _malformed(lambda d: d["signed"].update(file="../../../../etc/passwd")),
          "download", "malformed manifest", "signed.file", "plain file name", where="precheck")
_register("targets_not_a_list", _malformed(lambda d: d["signed"].update(targets="intel-z1")),
          "download", "malformed manifest", "signed.targets", where="precheck")
_register("expires_before_created", _malformed(lambda d: d["signed"].update(expires="2000-01-01T00:00:00Z")),
          "download", "malformed manifest", "signed.expires", "later than", where="precheck")
_register("expires_not_a_date", _malformed(lambda d: d["signed"].update(expires="next tuesday")),
          "download", "malformed manifest", "signed.expires", "utc time", where="precheck")


def _giant_created(doc: dict[str, Any]) -> None:
    """A 60 KB `signed.created` (the whole manifest stays under 64 KiB)."""
    doc["signed"]["created"] = "2026-01-01T00:00:00Z" + "0" * 60_000


_register("giant_string_field", _malformed(_giant_created), "download", "malformed manifest", "signed.created",
          bounded=False, where="precheck")
# Was a defect: the 60 KB value was echoed into the replicated failure reason (now cut to 80 chars).
_register("giant_string_not_echoed", _malformed(_giant_created), "download", "malformed manifest", "signed.created",
          where="precheck")
_register("null_signatures", _malformed(lambda d: d.update(signatures=None), resign=False),
          "download", "malformed manifest", "signatures", "must be a list", where="precheck")
_register("signature_not_base64",
          _malformed(lambda d: d["signatures"][0].update(sig="not*base64!"), resign=False),
          "download", "malformed manifest", "signatures[0].sig", "not base64", where="precheck")
_register("signature_entry_not_object", _malformed(lambda d: d.update(signatures=["c2ln"]), resign=False),
          "download", "malformed manifest", "signatures[0]", where="precheck")


def _deeply_nested(g: Group, version: str) -> None:
    """60 000 nested arrays (under 64 KiB, no signature needed to reach the parser)."""
    g.place(version, b"[" * 60_000, g.build(version))


def _lone_surrogate(g: Group, version: str) -> None:
    r"""A string that is not valid Unicode ("\ud800") in the signed part, with a+b's signatures
    of a genuine manifest (the attacker needs no key: it fails before signature checking)."""
    archive = g.build(version)
    signed = g.signed_part(archive, version)
    sigs = g.sign(signed)["signatures"]
    signed["notes"] = "\ud800"
    g.place(version, json.dumps({"signed": signed, "signatures": sigs}).encode(), archive)


# Were defects: RecursionError / UnicodeEncodeError escaped verify_manifest and wedged the leader
# in running_old_release. Now malformed-manifest refusals.
_register("deeply_nested_json", _deeply_nested, "download", "malformed manifest", "not json", timeout=15,
          where="precheck")
_register("lone_surrogate_string", _lone_surrogate, "download", "malformed manifest", timeout=15,
          where="precheck")


# -- delta releases (a signed chunk index; refused by the leader before anything lands) ----------


@case("verify", "chunk index of demo-app {version}", "the manifest signed")
def chunk_index_not_the_signed_one(g: Group, version: str) -> None:
    """The mirror serves another index of the same size than the one the manifest signed."""
    _index, path = g.publish_chunked(version)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"[0,", b"[1,", 1))


def _edit_index(change: Callable[[dict[str, Any]], Any]) -> Callable[[Group, str], None]:
    def prepare(g: Group, version: str) -> None:
        index, _path = g.publish_chunked(version)
        change(index)
        g.sign_index(version, index)
    return prepare


def _shift(n: int) -> Callable[[dict[str, Any]], None]:
    def change(index: dict[str, Any]) -> None:
        index["chunks"][1][0] += n
    return change


def _tiny_chunks(count: int) -> Callable[[dict[str, Any]], None]:
    def change(index: dict[str, Any]) -> None:
        size, digest = index["size"], index["chunks"][0][2]
        step = size // count
        index["chunks"] = [[i * step, step if i < count - 1 else size - i * step, digest] for i in range(count)]
    return change


def _chunk_replaced(body: Callable[[], bytes]) -> Callable[[Group, str], None]:
    def prepare(g: Group, version: str) -> None:
        index, _path = g.publish_chunked(version)
        digest = index["chunks"][1][2]
        (g.fleet.mirror_dir / NAME / "chunks" / digest[:2] / f"{digest}.zst").write_bytes(body())
    return prepare


def _bomb() -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20))  # ~2 kB that inflate to 64 MiB


def _other_chunk() -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(os.urandom(20_000))


_register("chunk_index_overlap", _edit_index(_shift(-1)), "verify", "chunk index", "chunks[1]", "overlaps")
_register("chunk_index_gap", _edit_index(_shift(1)), "verify", "chunk index", "chunks[1]", "leaves a gap")
_register("chunk_index_too_many_chunks", _edit_index(_tiny_chunks(40)), "verify", "chunk index", "40 chunks",
          "more than the 37")
_register("chunk_index_thousands_of_tiny_chunks", _edit_index(_tiny_chunks(20_000)), "verify", "chunk index",
          "signed.chunks.size", "a 600000-byte file can need")
_register("chunk_decompression_bomb", _chunk_replaced(_bomb), "verify", "chunk 1 (offset",
          "decompresses to more than", "bomb")
_register("chunk_wrong_content", _chunk_replaced(_other_chunk), "verify", "chunk 1 (offset", "the index says",
          "different chunk")


# -- unsafe archives (signed correctly: refused at install on the first batch's host) ------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, linkname, len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    return info, data


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> Callable[[Group, str], None]:
    """A release archive: the genuine VERSION + demo_app.py, then the hostile members."""
    def prepare(g: Group, version: str) -> None:
        archive = g.fleet.base / "build" / f"demo-app-{version}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for info, data in (_member("VERSION", data=f"{version}\n".encode()),
                               _member("demo_app.py", data=(DEMO_FILES / "demo_app.py").read_bytes()),
                               *((m(g, version) if callable(m) else m) for m in members)):
                tar.addfile(info, io.BytesIO(data))
        g.publish(version, archive)
    return prepare


def _zip(*entries: tuple[str, bytes, int]) -> Callable[[Group, str], None]:
    def prepare(g: Group, version: str) -> None:
        archive = g.fleet.base / "build" / f"demo-app-{version}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("VERSION", f"{version}\n")
            zf.write(DEMO_FILES / "demo_app.py", "demo_app.py")
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name)
                info.external_attr = mode << 16
                zf.writestr(info, data)
        g.publish(version, archive)
    return prepare


def _not_an_archive(g: Group, version: str) -> None:
    archive = g.fleet.base / "build" / f"demo-app-{version}.tar.gz"
    archive.write_bytes(os.urandom(4096))
    g.publish(version, archive)


INSTALL = {"where": "install", "timeout": 60.0}
_register("tar_absolute_path", _tar(lambda g, v: _member(f"{g.fleet.base}/pwned-{v}", data=b"x")),
          "install", "unsafe archive member", "absolute path", **INSTALL)
_register("tar_parent_traversal", _tar(_member("../../pwned", data=b"x")),
          "install", "unsafe archive member", "'..' in the path", **INSTALL)
_register("tar_symlink_escapes", _tar(_member("evil", tarfile.SYMTYPE, linkname="../../../../pwned")),
          "install", "symlink target", "escapes the release directory", **INSTALL)
_register("tar_symlink_absolute", _tar(_member("evil", tarfile.SYMTYPE, linkname="/etc/passwd")),
          "install", "symlink target", "absolute", **INSTALL)
_register("tar_symlink_chain_escapes", _tar(_member("d", tarfile.DIRTYPE, mode=0o755),
                                            _member("d/up", tarfile.SYMTYPE, linkname=".."),
                                            _member("esc", tarfile.SYMTYPE, linkname="d/up/..")),
          "install", "symlink target", "escapes the release directory", **INSTALL)
_register("tar_write_through_symlink", _tar(_member("lib", tarfile.SYMTYPE, linkname="."),
                                            _member("lib/pwned", data=b"x")),
          "install", "is a symlink, not a directory", **INSTALL)
_register("tar_hardlink_escapes", _tar(_member("hl", tarfile.LNKTYPE, linkname="../../pwned")),
          "install", "hardlink target", "escapes the release directory", **INSTALL)
_register("tar_char_device", _tar(_member("null", tarfile.CHRTYPE)),
          "install", "unsafe archive member 'null'", "device", **INSTALL)
_register("tar_fifo", _tar(_member("pipe", tarfile.FIFOTYPE)),
          "install", "unsafe archive member 'pipe'", "fifo", **INSTALL)
_register("tar_setuid_file", _tar(_member("suid", data=b"#!/bin/sh\n", mode=0o4755)),
          "install", "unsafe archive member 'suid'", "setuid", **INSTALL)
_register("tar_setgid_file", _tar(_member("sgid", data=b"#!/bin/sh\n", mode=0o2755)),
          "install", "unsafe archive member 'sgid'", "setgid", **INSTALL)
_register("tar_reserved_marker", _tar(_member(".quorum-complete", data=b"9.9\n")),
          "install", ".quorum-complete", "reserved", **INSTALL)
_register("tar_decompression_bomb", _tar(_member("zeros.bin", data=bytes(32 << 20))),
          "install", "unsafe archive member", "max_ratio", **INSTALL)
_register("zip_parent_traversal", _zip(("../../pwned", b"x", stat.S_IFREG | 0o644)),
          "install", "unsafe archive member", "'..' in the path", **INSTALL)
_register("zip_symlink_escapes", _zip(("evil", b"../../../pwned", stat.S_IFLNK | 0o777)),
          "install", "symlink target", "escapes the release directory", **INSTALL)
_register("not_an_archive", _not_an_archive, "install", "not a readable tar or zip archive", **INSTALL)


def _params() -> list[Any]:
    params = []
    for n, c in enumerate(CASES, start=1):
        c = c if c.version else replace(c, version=f"3.0.{n}")
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=c.bug)] if c.bug else []
        params.append(pytest.param(c, id=c.id, marks=marks))
    return params


# ------------------------------------------------------------------------------------ the test


def _assert_untouched(g: Group, version: str) -> None:
    """Every host still runs 2.3 and nothing of `version` was activated, left behind or escaped."""
    for host in g.hosts:
        assert host.current() == BASELINE, host.id
        assert host.health()["version"] == BASELINE, host.id
        assert not [e for e in host.events("activated") if e.get("version") == version], host.id
        assert sorted(os.listdir(host.root / "releases")) == [BASELINE, HIGHEST], host.id
    escaped = sorted(str(p) for p in g.fleet.base.rglob("pwned*"))
    assert not escaped, f"an archive member escaped its release directory: {escaped}"
    state = g.state()
    assert (state["current_version"], state["highest_version"]) == (BASELINE, HIGHEST)


@pytest.mark.parametrize("case", _params())
def test_hostile_input_is_refused(group: Group, case: Case) -> None:
    g, version = group, case.version
    assert version is not None
    case.prepare(g, version)
    words = [w.format(version=version).lower() for w in case.words]
    before = g.release()
    stores = g.store_files()

    if case.where in ("api", "precheck"):
        resp = g.hosts[1].post("/v1/releases", {"version": version})
        assert resp.status_code in ((400,) if case.where == "api" else (409, 503)), resp.text
        error = resp.json()["error"].lower()
        assert all(w in error for w in words), error
        if case.bounded:
            assert len(error) < 8192, f"error of {len(error)} characters"
        after = g.release()
        assert after is not None and before is not None and after["id"] == before["id"], "no release started"
        after = g.store_files()
        assert all(after[h] <= stores[h] for h in after), "nothing landed in an artifact store"
        _assert_untouched(g, version)
        return

    g.start(version)
    try:
        done = g.wait_done(version, case.timeout)
    finally:
        g.abort_if_stuck(version)
    failure = done["failure"]
    assert done["state"] == "rolled_back", json.dumps(done, indent=1)[:3000]
    assert failure["step"] == case.step, failure
    reason = failure["reason"].lower()
    assert all(w in reason for w in words), failure
    if case.bounded:
        assert len(failure["reason"]) < 8192, f"failure reason of {len(failure['reason'])} characters"

    if case.where == "leader":
        assert done["batch"] is None, "the release never opened a batch"
        assert {h["status"] for h in done["hosts"].values()} == {"skipped"}, done["hosts"]
        after = g.store_files()
        assert all(after[h] <= stores[h] for h in after), "nothing unverified landed in an artifact store"
    else:
        victim = done["batches"][0][0]
        assert failure["host"] == victim, failure
        assert done["hosts"][victim]["status"] == "reverted", done["hosts"]
        assert [h for h, e in done["hosts"].items() if e["status"] != "skipped"] == [victim]
        host = next(h for h in g.hosts if h.id == victim)
        failed = [e for e in host.events("install_failed") if e.get("release") == done["id"]]
        assert failed and failed[0]["step"] == "install", failed
    if case.id == "artifact_endless_data":
        rel = f"{NAME}/{version}/demo-app-{version}.tar.gz"
        served = wait_for(lambda: g.fleet.mirror_bytes().get(rel), 20, "the endless transfer to end")
        assert served < 64 << 20, f"the leader kept reading an endless artifact ({served} bytes)"
    _assert_untouched(g, version)
