"""Manifest signing and verification: one test (at least) per refusal, as python-tuf does per attack."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quorum_rollout import signing
from quorum_rollout.signing import (
    BadSignature,
    ExpiredManifest,
    HashMismatch,
    InsecureKeyFile,
    InvalidKey,
    InvalidPolicy,
    LengthMismatch,
    MalformedManifest,
    ManifestTooLarge,
    NoSignatures,
    RevokedKey,
    RollbackAttack,
    ThresholdNotMet,
    TrustError,
    TrustPolicy,
    UnknownKey,
    WrongArtifact,
    WrongTarget,
)

NOW = datetime.fromisoformat("2026-11-26T07:00:00+00:00")
PAYLOAD = b"demo-app release 2.4\n" * 100


class Signer:
    """A release key: private key object + base64 public key + key id."""

    def __init__(self) -> None:
        pem, self.public = signing.generate_keypair()
        self.private = signing.private_key_from_pem(pem)
        self.id = signing.key_id(self.public)


@pytest.fixture(scope="module")
def signers() -> list[Signer]:
    return [Signer() for _ in range(4)]


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "demo-app-2.4.tar.gz"
    path.write_bytes(PAYLOAD)
    return path


def policy(signers: list[Signer], n: int = 1, threshold: int = 1, revoked: tuple[str, ...] = ()) -> TrustPolicy:
    return TrustPolicy({s.id: s.public for s in signers[:n]}, threshold, frozenset(revoked))


def signed_part(artifact: Path, **changes: Any) -> dict[str, Any]:
    signed = signing.build_signed(artifact, "demo-app", "2.4", now=NOW)
    for key, value in changes.items():
        if value is _DROP:
            del signed[key]
        else:
            signed[key] = value
    return signed


_DROP = object()


def wire(signed: dict[str, Any], *keys: Signer) -> bytes:
    return signing.canonical_json(signing.sign(signed, [k.private for k in keys]))


def verify(raw: bytes, pol: TrustPolicy, **kwargs: Any) -> signing.Manifest:
    kwargs.setdefault("now", NOW + timedelta(hours=1))
    kwargs.setdefault("name", "demo-app")
    return signing.verify_manifest(raw, pol, **kwargs)


# ------------------------------------------------------------------------------ keys and format


def test_key_id_is_sha256_of_raw_public_key(signers: list[Signer]) -> None:
    raw = base64.b64decode(signers[0].public)
    assert len(raw) == 32
    assert signers[0].id == hashlib.sha256(raw).hexdigest()
    assert signing.public_key_b64(signers[0].private) == signers[0].public


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_key_id_refuses_bad_public_keys(bad: str) -> None:
    with pytest.raises(InvalidKey, match="keygen"):
        signing.key_id(bad)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert signing.canonical_json({"b": 1, "a": "é", "c": [1, {"y": 2, "x": 1}]}) == \
        '{"a":"é","b":1,"c":[1,{"x":1,"y":2}]}'.encode()


def test_policy_refuses_wrong_key_id_and_threshold(signers: list[Signer]) -> None:
    with pytest.raises(InvalidKey, match="does not match"):
        TrustPolicy({signers[1].id: signers[0].public}, 1)
    with pytest.raises(InvalidPolicy, match="between 1 and"):
        TrustPolicy({signers[0].id: signers[0].public}, 2)
    with pytest.raises(InvalidPolicy):
        TrustPolicy({}, 1)


def test_policy_from_config(signers: list[Signer]) -> None:
    from quorum_rollout.config import ArtifactsConfig, TrustedKey

    cfg = ArtifactsConfig(name="demo-app", mirrors=("http://127.0.0.1:1",),
                          trusted_keys=tuple(TrustedKey(s.id, s.public) for s in signers[:2]),
                          key_threshold=2, revoked_keys=(signers[3].id,))
    pol = TrustPolicy.from_config(cfg)
    assert pol.threshold == 2 and set(pol.keys) == {signers[0].id, signers[1].id}
    assert pol.revoked == frozenset({signers[3].id})


def test_load_private_key_requires_private_file(tmp_path: Path, signers: list[Signer]) -> None:
    pem, public = signing.generate_keypair()
    path = tmp_path / "release.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    assert signing.public_key_b64(signing.load_private_key(path)) == public
    path.chmod(0o640)
    with pytest.raises(InsecureKeyFile, match=r"chmod 600 .*release\.key"):
        signing.load_private_key(path)


def test_load_private_key_refuses_missing_garbage_and_other_key_types(tmp_path: Path) -> None:
    with pytest.raises(InvalidKey, match="cannot read"):
        signing.load_private_key(tmp_path / "absent.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(InvalidKey, match="not an unencrypted PEM"):
        signing.load_private_key(garbage)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ec_key.chmod(0o600)
    with pytest.raises(InvalidKey, match="must be Ed25519"):
        signing.load_private_key(ec_key)


def test_build_signed_describes_the_file(artifact: Path) -> None:
    signed = signing.build_signed(artifact, "demo-app", "2.4", now=NOW, targets=["intel-*"],
                                  expires_in=timedelta(days=2))
    assert signed == {"name": "demo-app", "version": "2.4", "file": "demo-app-2.4.tar.gz",
                      "sha256": hashlib.sha256(PAYLOAD).hexdigest(), "size": len(PAYLOAD),
                      "created": "2026-11-26T07:00:00Z", "expires": "2026-11-28T07:00:00Z",
                      "targets": ["intel-*"]}
    assert signing.build_signed(artifact, "demo-app", "2.4", now=NOW.timestamp())["targets"] == ["*"]
    with pytest.raises(MalformedManifest, match=r"signed.version"):
        signing.build_signed(artifact, "demo-app", "../2.4", now=NOW)


def test_sign_one_signature_per_distinct_key(artifact: Path, signers: list[Signer]) -> None:
    doc = signing.sign(signed_part(artifact), [signers[0].private, signers[0].private, signers[1].private])
    assert [s["keyid"] for s in doc["signatures"]] == [signers[0].id, signers[1].id]
    with pytest.raises(InvalidKey):
        signing.sign(signed_part(artifact), [])


def test_every_refusal_is_a_trust_error() -> None:
    for cls in (ManifestTooLarge, MalformedManifest, NoSignatures, UnknownKey, RevokedKey, BadSignature,
                ThresholdNotMet, ExpiredManifest, WrongArtifact, WrongTarget, RollbackAttack, LengthMismatch,
                HashMismatch, InvalidKey, InsecureKeyFile, InvalidPolicy):
        assert issubclass(cls, TrustError)


# ------------------------------------------------------------------------------------ acceptance


def test_good_manifest_verifies(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact, targets=["intel-*", "amd-eu1"]), signers[0])
    m = verify(raw, policy(signers), version="2.4", group="intel-eu1", highest_version="2.3")
    assert (m.name, m.version, m.file, m.size) == ("demo-app", "2.4", "demo-app-2.4.tar.gz", len(PAYLOAD))
    assert m.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert m.created == NOW and m.expires == NOW + timedelta(days=30)
    assert m.targets == ("intel-*", "amd-eu1") and m.signed_by == (signers[0].id,)
    assert m.raw == raw
    signing.verify_file(artifact, m)


def test_now_may_be_epoch_seconds_but_not_a_naive_datetime(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0])
    assert verify(raw, policy(signers), now=NOW.timestamp() + 60).version == "2.4"
    with pytest.raises(ValueError, match="naive"):
        verify(raw, policy(signers), now=datetime(2026, 11, 26, 8))


def test_threshold_of_distinct_keys_met(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0], signers[1], signers[3])  # signers[3] unknown: ignored
    assert verify(raw, policy(signers, n=3, threshold=2)).signed_by == tuple(sorted([signers[0].id, signers[1].id]))


# -------------------------------------------------------------------------------------- refusals


def test_too_large_is_refused_before_parsing(signers: list[Signer]) -> None:
    with pytest.raises(ManifestTooLarge, match="max_manifest_bytes"):
        verify(b"x" * 101, policy(signers), max_bytes=100)
    with pytest.raises(ManifestTooLarge):
        verify(b" " * 70000, policy(signers))  # default limit 65536


@pytest.mark.parametrize(("raw", "field"), [
    (b"<html>502 Bad Gateway</html>", "manifest"),
    (b"\xff\xfe", "manifest"),
    (b"[1, 2]", "manifest"),
    (b'{"signatures": []}', "signed"),
    (b'{"signed": {}}', "signatures"),
    (b'{"signed": [], "signatures": []}', "signed"),
])
def test_malformed_documents(raw: bytes, field: str, signers: list[Signer]) -> None:
    with pytest.raises(MalformedManifest) as info:
        verify(raw, policy(signers))
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(("changes", "field"), [
    *[({key: _DROP}, f"signed.{key}")
      for key in ("name", "version", "file", "sha256", "size", "created", "expires")],
    ({"name": "demo/app"}, "signed.name"),
    ({"name": ".."}, "signed.name"),
    ({"name": 7}, "signed.name"),
    ({"name": ""}, "signed.name"),
    ({"version": "2.4/../../etc"}, "signed.version"),
    ({"file": "../etc/passwd"}, "signed.file"),
    ({"file": "sub/file.tar.gz"}, "signed.file"),
    ({"file": "a\\b"}, "signed.file"),
    ({"size": -1}, "signed.size"),
    ({"size": "12"}, "signed.size"),
    ({"size": True}, "signed.size"),
    ({"size": 1.5}, "signed.size"),
    ({"sha256": "abc"}, "signed.sha256"),
    ({"sha256": "g" * 64}, "signed.sha256"),
    ({"sha256": "A" * 64}, "signed.sha256"),
    ({"created": "yesterday"}, "signed.created"),
    ({"created": 1764140400}, "signed.created"),
    ({"expires": "2026-02-30T00:00:00Z"}, "signed.expires"),
    ({"expires": "2026-12-26T07:00:00+01:00"}, "signed.expires"),
    ({"expires": "2026-11-25T07:00:00Z"}, "signed.expires"),  # before created
    ({"targets": []}, "signed.targets"),
    ({"targets": "intel-*"}, "signed.targets"),
    ({"targets": ["intel-*", 3]}, "signed.targets"),
])
def test_malformed_fields_name_the_field(changes: dict[str, Any], field: str, artifact: Path,
                                         signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact, **changes), signers[0])
    with pytest.raises(MalformedManifest) as info:
        verify(raw, policy(signers))
    assert info.value.field == field
    assert field in str(info.value) and "re-sign" in str(info.value)


@pytest.mark.parametrize(("signatures", "field"), [
    ({"keyid": "x"}, "signatures"),
    ([{"keyid": "x"}], "signatures[0]"),
    ([{"keyid": 1, "sig": "AA=="}], "signatures[0]"),
    (["sig"], "signatures[0]"),
    ([{"keyid": "x", "sig": "***"}], "signatures[0].sig"),
])
def test_malformed_signature_lists(signatures: Any, field: str, artifact: Path, signers: list[Signer]) -> None:
    raw = json.dumps({"signed": signed_part(artifact), "signatures": signatures}).encode()
    with pytest.raises(MalformedManifest) as info:
        verify(raw, policy(signers))
    assert info.value.field == field


def test_no_signatures(artifact: Path, signers: list[Signer]) -> None:
    raw = json.dumps({"signed": signed_part(artifact), "signatures": []}).encode()
    with pytest.raises(NoSignatures, match="quorum-rollout sign"):
        verify(raw, policy(signers))


def test_unknown_key_only(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[3])
    with pytest.raises(UnknownKey, match=f"{signers[3].id}.*trusted_keys"):
        verify(raw, policy(signers, n=2))


def test_revoked_key_is_refused_outright(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0], signers[1])  # threshold met by signers[0] alone
    with pytest.raises(RevokedKey, match=signers[1].id):
        verify(raw, policy(signers, n=2, revoked=(signers[1].id,)))
    raw = wire(signed_part(artifact), signers[3])  # revoked and no longer listed as trusted
    with pytest.raises(RevokedKey):
        verify(raw, policy(signers, n=1, revoked=(signers[3].id,)))


def test_altered_signed_part_fails_signature(artifact: Path, signers: list[Signer]) -> None:
    doc = json.loads(wire(signed_part(artifact), signers[0]))
    doc["signed"]["size"] += 1
    with pytest.raises(BadSignature, match=f"{signers[0].id} does not verify"):
        verify(json.dumps(doc).encode(), policy(signers))


def test_signature_from_another_key_under_a_trusted_id(artifact: Path, signers: list[Signer]) -> None:
    doc = json.loads(wire(signed_part(artifact), signers[3]))
    doc["signatures"][0]["keyid"] = signers[0].id
    with pytest.raises(BadSignature):
        verify(json.dumps(doc).encode(), policy(signers))
    doc["signatures"][0]["sig"] = base64.b64encode(b"\0" * 10).decode()  # wrong length
    with pytest.raises(BadSignature):
        verify(json.dumps(doc).encode(), policy(signers))


def test_threshold_not_met(artifact: Path, signers: list[Signer]) -> None:
    with pytest.raises(ThresholdNotMet, match=r"1 valid signature.*2 required"):
        verify(wire(signed_part(artifact), signers[0], signers[3]), policy(signers, n=2, threshold=2))


def test_duplicate_signatures_by_one_key_count_once(artifact: Path, signers: list[Signer]) -> None:
    doc = json.loads(wire(signed_part(artifact), signers[0]))
    doc["signatures"] = doc["signatures"] * 3
    with pytest.raises(ThresholdNotMet):
        verify(json.dumps(doc).encode(), policy(signers, n=2, threshold=2))


def test_expired(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0])
    with pytest.raises(ExpiredManifest, match=r"expired at 2026-12-26T07:00:00Z.*freshly signed"):
        verify(raw, policy(signers), now=NOW + timedelta(days=31))
    with pytest.raises(ExpiredManifest):
        verify(raw, policy(signers), now=NOW + timedelta(days=30))  # expiry instant itself


def test_wrong_artifact(artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0])
    with pytest.raises(WrongArtifact, match="asked for other-app"):
        verify(raw, policy(signers), name="other-app")
    with pytest.raises(WrongArtifact, match=r"asked for demo-app 2.5"):
        verify(raw, policy(signers), version="2.5")
    assert verify(raw, policy(signers), version=None).version == "2.4"


@pytest.mark.parametrize(("targets", "group", "ok"), [
    (["intel-*", "amd-eu1"], "intel-us2", True),
    (["intel-*", "amd-eu1"], "amd-eu1", True),
    (["intel-*", "amd-eu1"], "amd-us1", False),
    (["intel-*"], "INTEL-eu1", False),  # case-sensitive match
    (["*"], "arm64-ap1", True),
    (_DROP, "arm64-ap1", True),
])
def test_targets_prevent_mix_and_match(targets: Any, group: str, ok: bool, artifact: Path,
                                       signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact, targets=targets), signers[0])
    if ok:
        assert verify(raw, policy(signers), group=group).version == "2.4"
    else:
        with pytest.raises(WrongTarget, match=group):
            verify(raw, policy(signers), group=group)
    assert verify(raw, policy(signers), group=None).version == "2.4"  # no group: not checked


@pytest.mark.parametrize(("highest", "allow", "ok"), [
    ("2.10", False, False), ("2.10", True, True), ("2.4", False, True), ("2.3", False, True), (None, False, True),
])
def test_rollback(highest: str | None, allow: bool, ok: bool, artifact: Path, signers: list[Signer]) -> None:
    raw = wire(signed_part(artifact), signers[0])
    if ok:
        verify(raw, policy(signers), highest_version=highest, allow_downgrade=allow)
    else:
        with pytest.raises(RollbackAttack, match=r"lower than 2.10.*rollback"):
            verify(raw, policy(signers), highest_version=highest, allow_downgrade=allow)


# ------------------------------------------------------------------------------------- the file


def test_verify_file_length_and_hash(artifact: Path, signers: list[Signer]) -> None:
    m = verify(wire(signed_part(artifact), signers[0]), policy(signers))
    with artifact.open("ab") as f:
        f.write(b"!")
    with pytest.raises(LengthMismatch, match=f"{len(PAYLOAD) + 1} bytes.*says {len(PAYLOAD)}"):
        signing.verify_file(artifact, m)
    artifact.write_bytes(b"X" + PAYLOAD[1:])
    with pytest.raises(HashMismatch, match=m.sha256):
        signing.verify_file(artifact, m)


def test_verify_file_streams_large_files(tmp_path: Path, signers: list[Signer]) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * signing.CHUNK + 17))
    m = verify(wire(signing.build_signed(big, "demo-app", "2.4", now=NOW), signers[0]), policy(signers))
    signing.verify_file(big, m)


# -------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_corruption_is_refused_with_a_trust_error(data: st.DataObject, artifact: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(b"\1" * 32)
    public = signing.public_key_b64(key)
    pol = TrustPolicy({signing.key_id(public): public}, 1)
    raw = bytearray(signing.canonical_json(signing.sign(signed_part(artifact), [key])))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[index]))
    try:
        m = verify(bytes(raw), pol)
    except TrustError:
        return
    # a flip may only pass if it does not change what was signed (e.g. JSON-equivalent text)
    assert signing.canonical_json(json.loads(bytes(raw))["signed"]) == signing.canonical_json(signed_part(artifact))
    assert m.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
