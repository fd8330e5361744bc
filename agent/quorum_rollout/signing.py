"""Ed25519 release keys, manifest signing and verification.

Modelled on python-tuf's ngclient: every check is explicit and every refusal raises its own
`TrustError` subclass whose message says what was wrong and what to do about it.

Wire format of a manifest::

    {"signed": {"name", "version", "file", "sha256", "size", "created", "expires", "targets", "chunks"},
     "signatures": [{"keyid": "<sha256 hex of the raw public key>", "sig": "<base64>"}]}

Signatures are over `canonical_json(signed)`. `created`/`expires` are UTC ISO-8601 strings
("2026-11-26T07:00:00Z"); `targets` lists fnmatch group patterns, absent or ["*"] = every group.
`chunks` (optional, delta releases, chunks.py) is {"index": "<file name>", "sha256", "size"}: the
chunk index published beside the file. Agents that do not know it ignore it and fetch the file.

A channel pointer (`<mirror>/<name>/channels/<channel>.json`, autonomous mode) is the same
envelope around a smaller signed part, verified by the same signature, threshold, revocation
and expiry code (`verify_pointer`)::

    {"signed": {"name", "channel", "version", "created", "expires"}, "signatures": [...]}

A manifest is never a valid pointer nor the other way round: each lacks fields the other requires.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quorum_rollout.fsm import compare_versions, valid_version

Now = Union[datetime, float, int]
CHUNK = 1024 * 1024
DEFAULT_MAX_BYTES = 65536
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # the agent config's identifiers (config._ID_RE)
MAX_POINTER_BYTES = 16384  # a pointer with one signature is ~300 bytes; this allows ~100 signatures


class TrustError(Exception):
    """Base of every refusal; `causes` lists (source, error) when several sources failed."""

    def __init__(self, message: str, *, causes: Iterable[tuple[str, Exception]] = ()) -> None:
        super().__init__(message)
        self.causes: list[tuple[str, Exception]] = list(causes)


class ManifestTooLarge(TrustError):
    pass


class MalformedManifest(TrustError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"malformed manifest: {field_name}: {message}; fix the manifest and re-sign it")
        self.field = field_name


class NoSignatures(TrustError):
    pass


class UnknownKey(TrustError):
    pass


class RevokedKey(TrustError):
    pass


class BadSignature(TrustError):
    pass


class ThresholdNotMet(TrustError):
    pass


class ExpiredManifest(TrustError):
    pass


class WrongArtifact(TrustError):
    pass


class WrongTarget(TrustError):
    pass


class RollbackAttack(TrustError):
    pass


class LengthMismatch(TrustError):
    pass


class HashMismatch(TrustError):
    pass


class PointerTooLarge(TrustError):
    pass


class MalformedPointer(TrustError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"malformed channel pointer: {field_name}: {message}; fix the pointer and re-sign it "
                         "(`quorum-rollout channel publish`)")
        self.field = field_name


class ExpiredPointer(TrustError):
    pass


class WrongChannel(TrustError):
    """The pointer is for another artifact name or another channel than the agent asked for."""


class InvalidKey(TrustError):
    """A public or private key that cannot be used (bad encoding, wrong type, key id mismatch)."""


class InsecureKeyFile(InvalidKey):
    """A private key file readable by group or other."""


class InvalidPolicy(TrustError):
    pass


# ---------------------------------------------------------------------------------------- keys


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw_public(public_b64: str) -> bytes:
    try:
        raw = base64.b64decode(public_b64, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidKey(f"public key {public_b64!r} is not base64 ({exc}); "
                         "use the value printed by `quorum-rollout keygen`") from None
    if len(raw) != 32:
        raise InvalidKey(f"public key {public_b64!r} decodes to {len(raw)} bytes, an Ed25519 key has 32; "
                         "use the value printed by `quorum-rollout keygen`")
    return raw


def key_id(public_b64: str) -> str:
    """Key id = sha256 hex of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(_raw_public(public_b64)).hexdigest()


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def generate_keypair() -> tuple[bytes, str]:
    """A new signing key: (unencrypted PKCS#8 PEM private key, base64 raw public key)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, public_key_b64(key)


def private_key_from_pem(pem: bytes, source: str = "<memory>") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey(f"{source}: not an unencrypted PEM private key ({exc}); "
                         "create one with `quorum-rollout keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"{source}: is a {type(key).__name__}, release keys must be Ed25519; "
                         "create one with `quorum-rollout keygen`")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 private key, refusing a file readable by group or other."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise InvalidKey(f"{p}: cannot read private key ({exc.strerror}); check the path") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(f"{p}: private key is accessible by group/other (mode {stat.S_IMODE(mode):04o}); "
                              f"run `chmod 600 {p}` and consider rotating the key")
    return private_key_from_pem(p.read_bytes(), str(p))


# ------------------------------------------------------------------------------------ time/sha


def to_datetime(now: Now) -> datetime:
    """Aware UTC datetime from an aware datetime or epoch seconds (naive datetimes are refused)."""
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("naive datetime: pass datetime.now(timezone.utc) or epoch seconds")
        return now.astimezone(timezone.utc)
    return datetime.fromtimestamp(float(now), tz=timezone.utc)


def format_time(moment: Now) -> str:
    return to_datetime(moment).strftime(_TIME_FORMAT)


def file_digest(path: str | Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, streamed in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# ------------------------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class ChunksRef:
    """The signed reference to a release's chunk index (`signed.chunks`): its file name beside the
    manifest, sha256 and size."""

    index: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    file: str
    sha256: str
    size: int
    created: datetime
    expires: datetime
    targets: tuple[str, ...]
    chunks: ChunksRef | None = None
    signed_by: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)

    def applies_to(self, group: str) -> bool:
        return any(fnmatch.fnmatchcase(group, pattern) for pattern in self.targets)


@dataclass(frozen=True)
class TrustPolicy:
    keys: Mapping[str, str]  # key id -> base64 raw public key
    threshold: int = 1
    revoked: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for kid, pub in self.keys.items():
            if key_id(pub) != kid:
                raise InvalidKey(f"trusted key {kid}: id does not match its public key (expected {key_id(pub)}); "
                                 "fix the key id or leave it out to have it computed")
        if not self.keys or not 1 <= self.threshold <= len(self.keys):
            raise InvalidPolicy(f"threshold {self.threshold} with {len(self.keys)} trusted key(s): "
                                "the threshold must be between 1 and the number of trusted keys")

    @classmethod
    def from_config(cls, artifacts_cfg: Any) -> TrustPolicy:
        """From a `config.ArtifactsConfig` (trusted_keys, key_threshold, revoked_keys)."""
        return cls(keys={k.id: k.public_key for k in artifacts_cfg.trusted_keys},
                   threshold=artifacts_cfg.key_threshold, revoked=frozenset(artifacts_cfg.revoked_keys))


def _short(value: Any, limit: int = 80) -> str:
    """repr() of attacker-controlled input, cut so it cannot bloat errors, logs and Raft state."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


Malformed = Callable[[str, str], TrustError]  # (field, message) -> the document kind's refusal


def _safe_segment(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedManifest(name, "must be a non-empty string")
    if len(value) > 255:
        raise MalformedManifest(name, f"{_short(value)} is longer than 255 characters")
    if "/" in value or "\\" in value or ".." in value or value == "." or any(ord(c) < 32 for c in value):
        raise MalformedManifest(name, f"{_short(value)} must be a plain file name "
                                "(no '/', '\\', '..' or control chars)")
    return value


def _parse_time(value: Any, name: str, malformed: Malformed = MalformedManifest) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise malformed(name, f"{_short(value)} is not a UTC time like 2026-11-26T07:00:00Z")
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise malformed(name, f"{_short(value)} is not a valid date ({exc})") from None


def _validity(signed: dict[str, Any], malformed: Malformed) -> tuple[datetime, datetime]:
    created = _parse_time(signed["created"], "signed.created", malformed)
    expires = _parse_time(signed["expires"], "signed.expires", malformed)
    if expires <= created:
        raise malformed("signed.expires", "must be later than signed.created")
    return created, expires


def _require(signed: Any, keys: tuple[str, ...], malformed: Malformed) -> dict[str, Any]:
    if not isinstance(signed, dict):
        raise malformed("signed", "must be an object")
    for key in keys:
        if key not in signed:
            raise malformed(f"signed.{key}", "missing")
    return signed


def _parse_signed(signed: Any) -> Manifest:
    _require(signed, ("name", "version", "file", "sha256", "size", "created", "expires"), MalformedManifest)
    name = _safe_segment(signed["name"], "signed.name")
    version = _safe_segment(signed["version"], "signed.version")
    file = _safe_segment(signed["file"], "signed.file")
    sha = signed["sha256"]
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise MalformedManifest("signed.sha256", f"{sha!r} is not 64 lowercase hex digits")
    size = signed["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedManifest("signed.size", f"{size!r} is not a non-negative integer")
    created, expires = _validity(signed, MalformedManifest)
    targets = signed.get("targets", ["*"])
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t for t in targets)):
        raise MalformedManifest("signed.targets", 'must be a non-empty list of group patterns (["*"] = all)')
    chunks = _parse_chunks(signed["chunks"]) if "chunks" in signed else None
    return Manifest(name, version, file, sha, size, created, expires, tuple(targets), chunks)


def _parse_chunks(ref: Any) -> ChunksRef:
    if not isinstance(ref, dict) or set(ref) != {"index", "sha256", "size"}:
        raise MalformedManifest("signed.chunks", 'must be {"index": file name, "sha256": hex, "size": bytes}')
    index = _safe_segment(ref["index"], "signed.chunks.index")
    if not isinstance(ref["sha256"], str) or not _SHA256_RE.match(ref["sha256"]):
        raise MalformedManifest("signed.chunks.sha256", f"{_short(ref['sha256'])} is not 64 lowercase hex digits")
    size = ref["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise MalformedManifest("signed.chunks.size", f"{_short(size)} is not a positive integer")
    return ChunksRef(index, ref["sha256"], size)


def _parse_signatures(sigs: Any, malformed: Malformed = MalformedManifest) -> list[tuple[str, bytes]]:
    if not isinstance(sigs, list):
        raise malformed("signatures", "must be a list")
    out = []
    for i, entry in enumerate(sigs):
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) \
                or not isinstance(entry.get("sig"), str):
            raise malformed(f"signatures[{i}]", 'must be {"keyid": str, "sig": str}')
        try:
            out.append((entry["keyid"], base64.b64decode(entry["sig"], validate=True)))
        except (binascii.Error, ValueError):
            raise malformed(f"signatures[{i}].sig", "is not base64") from None
    return out


@dataclass(frozen=True)
class _Kind:
    """A kind of signed document, for the words and types of its refusals."""

    noun: str              # "manifest" | "channel pointer"
    malformed: Malformed
    too_large: type[TrustError]
    too_large_fix: str
    resign: str            # the command that signs one


_MANIFEST = _Kind("manifest", MalformedManifest, ManifestTooLarge,
                  "raise artifacts.max_manifest_bytes only if the manifest is genuine", "`quorum-rollout sign`")
_POINTER = _Kind("channel pointer", MalformedPointer, PointerTooLarge,
                 "a pointer is a few hundred bytes: the mirror serves something else",
                 "`quorum-rollout channel publish` (or `quorum-rollout sign --channel`)")


def _envelope(raw: bytes, max_bytes: int, kind: _Kind) -> dict[str, Any]:
    """The JSON document {"signed", "signatures"} of at most `max_bytes` (neither part checked yet)."""
    if len(raw) > max_bytes:
        raise kind.too_large(f"{kind.noun} is {len(raw)} bytes, the limit is {max_bytes}: refusing to parse it; "
                             f"{kind.too_large_fix}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise kind.malformed(kind.noun, f"not JSON ({_short(str(exc), 200)})") from None
    if not isinstance(doc, dict):
        raise kind.malformed(kind.noun, "must be a JSON object")
    for key in ("signed", "signatures"):
        if key not in doc:
            raise kind.malformed(key, "missing")
    return doc


def _signed_by(what: str, doc: dict[str, Any], policy: TrustPolicy, kind: _Kind) -> tuple[str, ...]:
    """The trusted keys whose valid signatures over the canonical `signed` part meet the policy."""
    sigs = _parse_signatures(doc["signatures"], kind.malformed)
    try:
        payload = canonical_json(doc["signed"])
    except (ValueError, RecursionError) as exc:  # UnicodeEncodeError (lone surrogates) is a ValueError
        raise kind.malformed("signed", f"cannot be canonicalised ({_short(str(exc), 200)})") from None
    return _check_signatures(what, payload, sigs, policy, kind)


def _check_signatures(what: str, payload: bytes, sigs: list[tuple[str, bytes]], policy: TrustPolicy,
                      kind: _Kind = _MANIFEST) -> tuple[str, ...]:
    if not sigs:
        raise NoSignatures(f"{what}: {kind.noun} has no signatures; sign it with {kind.resign}")
    valid: set[str] = set()
    unknown: list[str] = []
    for kid, sig in sigs:
        if kid in policy.revoked:
            raise RevokedKey(f"{what}: signed by revoked key {kid}; re-sign the {kind.noun} with a current key")
        if kid not in policy.keys:
            unknown.append(kid)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_raw_public(policy.keys[kid])).verify(sig, payload)
        except InvalidSignature:
            raise BadSignature(f"{what}: signature by key {kid} does not verify: the {kind.noun} was altered "
                               "or signed with another key; fetch it again or re-sign it") from None
        valid.add(kid)
    if not valid and unknown:
        raise UnknownKey(f"{what}: signed only by unknown key(s) {', '.join(sorted(set(unknown)))}; "
                         "add the release key to artifacts.trusted_keys or re-sign with a trusted key")
    if len(valid) < policy.threshold:
        raise ThresholdNotMet(f"{what}: {len(valid)} valid signature(s) from distinct trusted keys, "
                              f"{policy.threshold} required; add signatures from more trusted keys")
    return tuple(sorted(valid))


def verify_manifest(raw: bytes, policy: TrustPolicy, *, now: Now, name: str, version: str | None = None,
                    group: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                    highest_version: str | None = None, allow_downgrade: bool = False) -> Manifest:
    """Parse and verify a manifest; return it or raise the `TrustError` subclass of the first refusal."""
    doc = _envelope(raw, max_bytes, _MANIFEST)
    parsed = _parse_signed(doc["signed"])
    what = f"{parsed.name} {parsed.version}"
    signed_by = _signed_by(what, doc, policy, _MANIFEST)
    moment = to_datetime(now)
    if moment >= parsed.expires:
        raise ExpiredManifest(f"{what}: manifest expired at {format_time(parsed.expires)} (now "
                              f"{format_time(moment)}); publish a freshly signed manifest")
    if parsed.name != name or (version is not None and parsed.version != version):
        raise WrongArtifact(f"manifest is for {what}, asked for {name} {version or '(any version)'}; "
                            "the mirror serves the wrong file: fix the mirror layout")
    if group is not None and not parsed.applies_to(group):
        raise WrongTarget(f"{what}: manifest targets {list(parsed.targets)}, not group {group}; "
                          "sign a manifest for this group")
    if highest_version is not None and not allow_downgrade \
            and compare_versions(parsed.version, highest_version) < 0:
        raise RollbackAttack(f"{what}: lower than {highest_version}, the highest version this group ran; "
                             "ask for a rollback explicitly to downgrade")
    return replace(parsed, signed_by=signed_by, raw=bytes(raw))


# ------------------------------------------------------------------------------ channel pointer


@dataclass(frozen=True)
class ChannelPointer:
    """A verified channel pointer: `channel` of artifact `name` currently names `version`."""

    name: str
    channel: str
    version: str
    created: datetime
    expires: datetime
    signed_by: tuple[str, ...] = ()
    raw: bytes = field(default=b"", repr=False, compare=False)


def _parse_pointer(signed: Any) -> ChannelPointer:
    _require(signed, ("name", "channel", "version", "created", "expires"), MalformedPointer)
    for key in ("name", "channel"):
        value = signed[key]
        if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
            raise MalformedPointer(f"signed.{key}", f"{_short(value)} must be 1-64 characters from A-Z a-z 0-9 . _ -")
    version = signed["version"]
    if not valid_version(version):
        raise MalformedPointer("signed.version", f"{_short(version)} is not a version (a letter or digit, then up "
                               "to 63 of letters, digits and . _ + -)")
    created, expires = _validity(signed, MalformedPointer)
    return ChannelPointer(signed["name"], signed["channel"], version, created, expires)


def verify_pointer(raw: bytes, policy: TrustPolicy, *, now: Now, name: str, channel: str,
                   max_bytes: int = MAX_POINTER_BYTES) -> ChannelPointer:
    """Parse and verify a channel pointer with the manifests' trust policy; return it or raise the
    `TrustError` subclass of the first refusal (size, shape, signatures, expiry, name/channel)."""
    doc = _envelope(raw, max_bytes, _POINTER)
    parsed = _parse_pointer(doc["signed"])
    what = f"channel {parsed.channel} of {parsed.name} (-> {parsed.version})"
    signed_by = _signed_by(what, doc, policy, _POINTER)
    moment = to_datetime(now)
    if moment >= parsed.expires:
        raise ExpiredPointer(f"{what}: pointer expired at {format_time(parsed.expires)} (now {format_time(moment)}); "
                             "publish a freshly signed pointer (`quorum-rollout channel publish`)")
    if parsed.name != name or parsed.channel != channel:
        raise WrongChannel(f"pointer is for channel {parsed.channel} of {parsed.name}, asked for channel {channel} of "
                           f"{name}; the mirror serves the wrong file: fix the mirror layout")
    return replace(parsed, signed_by=signed_by, raw=bytes(raw))


def build_pointer(name: str, channel: str, version: str, *, expires_in: timedelta | float = timedelta(days=30),
                  now: Now) -> dict[str, Any]:
    """The `signed` part of a pointer naming `version` as the current one of `channel`."""
    created = to_datetime(now).replace(microsecond=0)
    delta = expires_in if isinstance(expires_in, timedelta) else timedelta(seconds=expires_in)
    signed = {"name": name, "channel": channel, "version": version, "created": format_time(created),
              "expires": format_time(created + delta)}
    _parse_pointer(signed)  # refuse to build what verification would refuse
    return signed


def verify_file(path: str | Path, manifest: Manifest) -> None:
    """Check a file's size and sha256 (streamed) against a verified manifest."""
    size = os.stat(path).st_size
    if size != manifest.size:
        raise LengthMismatch(f"{path}: {size} bytes, manifest of {manifest.name} {manifest.version} "
                             f"says {manifest.size}; delete it and download it again")
    digest, _ = file_digest(path)
    if digest != manifest.sha256:
        raise HashMismatch(f"{path}: sha256 {digest}, manifest of {manifest.name} {manifest.version} "
                           f"says {manifest.sha256}; delete it and download it again")


# ------------------------------------------------------------------------------------- signing


def build_signed(path: str | Path, name: str, version: str, *,
                 expires_in: timedelta | float = timedelta(days=30),
                 targets: Iterable[str] | None = None, now: Now,
                 chunks: ChunksRef | None = None, digest: tuple[str, int] | None = None) -> dict[str, Any]:
    """The `signed` part of a manifest for the file at `path` (hashed, streamed, unless `digest`
    gives its (sha256, size) already); `chunks` names its chunk index (delta releases)."""
    digest, size = digest or file_digest(path)
    created = to_datetime(now).replace(microsecond=0)
    delta = expires_in if isinstance(expires_in, timedelta) else timedelta(seconds=expires_in)
    signed = {"name": name, "version": version, "file": Path(path).name, "sha256": digest, "size": size,
              "created": format_time(created), "expires": format_time(created + delta),
              "targets": list(targets) if targets is not None else ["*"]}
    if chunks is not None:
        signed["chunks"] = {"index": chunks.index, "sha256": chunks.sha256, "size": chunks.size}
    _parse_signed(signed)  # refuse to build what verification would refuse
    return signed


def sign(signed: Mapping[str, Any], private_keys: Iterable[Ed25519PrivateKey]) -> dict[str, Any]:
    """Sign `signed` with every key (one signature per distinct key)."""
    payload = canonical_json(dict(signed))
    sigs: dict[str, str] = {}
    for key in private_keys:
        sigs.setdefault(key_id(public_key_b64(key)), base64.b64encode(key.sign(payload)).decode())
    if not sigs:
        raise InvalidKey("no private key given: pass at least one release key")
    return {"signed": dict(signed), "signatures": [{"keyid": k, "sig": s} for k, s in sigs.items()]}
