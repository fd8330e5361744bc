"""Channel pointers (autonomous mode): signed and verified by the manifests' own code, one test per
refusal, and a manifest and a pointer can never stand in for each other."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from quorum_rollout import signing
from quorum_rollout.signing import (
    BadSignature,
    ExpiredPointer,
    MalformedManifest,
    MalformedPointer,
    NoSignatures,
    PointerTooLarge,
    RevokedKey,
    ThresholdNotMet,
    TrustError,
    TrustPolicy,
    UnknownKey,
    WrongChannel,
)

NOW = datetime.fromisoformat("2026-11-26T07:00:00+00:00")
_DROP = object()


class Signer:
    def __init__(self) -> None:
        pem, self.public = signing.generate_keypair()
        self.private = signing.private_key_from_pem(pem)
        self.id = signing.key_id(self.public)


@pytest.fixture(scope="module")
def signers() -> list[Signer]:
    return [Signer() for _ in range(4)]


def policy(signers: list[Signer], n: int = 1, threshold: int = 1, revoked: tuple[str, ...] = ()) -> TrustPolicy:
    return TrustPolicy({s.id: s.public for s in signers[:n]}, threshold, frozenset(revoked))


def signed_part(**changes: Any) -> dict[str, Any]:
    signed = signing.build_pointer("demo-app", "stable", "2.4", now=NOW)
    for key, value in changes.items():
        if value is _DROP:
            del signed[key]
        else:
            signed[key] = value
    return signed


def wire(signed: dict[str, Any], *keys: Signer) -> bytes:
    return signing.canonical_json(signing.sign(signed, [k.private for k in keys]))


def verify(raw: bytes, pol: TrustPolicy, **kwargs: Any) -> signing.ChannelPointer:
    kwargs.setdefault("now", NOW + timedelta(hours=1))
    kwargs.setdefault("name", "demo-app")
    kwargs.setdefault("channel", "stable")
    return signing.verify_pointer(raw, pol, **kwargs)


def test_build_pointer_names_the_version_and_its_validity() -> None:
    assert signing.build_pointer("demo-app", "stable", "2.4", now=NOW, expires_in=timedelta(days=2)) == {
        "name": "demo-app", "channel": "stable", "version": "2.4",
        "created": "2026-11-26T07:00:00Z", "expires": "2026-11-28T07:00:00Z"}
    for bad in ({"channel": "st/able"}, {"version": "../2.4"}, {"name": ".."}):
        args = {"name": "demo-app", "channel": "stable", "version": "2.4", **bad}
        with pytest.raises(MalformedPointer):
            signing.build_pointer(args["name"], args["channel"], args["version"], now=NOW)


def test_good_pointer_verifies_with_the_manifest_policy(signers: list[Signer]) -> None:
    raw = wire(signed_part(), signers[0], signers[1], signers[3])  # signers[3] is unknown: ignored
    pointer = verify(raw, policy(signers, n=3, threshold=2))
    assert (pointer.name, pointer.channel, pointer.version) == ("demo-app", "stable", "2.4")
    assert pointer.expires == NOW + timedelta(days=30) and pointer.raw == raw
    assert pointer.signed_by == tuple(sorted([signers[0].id, signers[1].id]))


def test_every_pointer_refusal_is_a_trust_error() -> None:
    for cls in (PointerTooLarge, MalformedPointer, ExpiredPointer, WrongChannel):
        assert issubclass(cls, TrustError)


def test_unsigned(signers: list[Signer]) -> None:
    raw = json.dumps({"signed": signed_part(), "signatures": []}).encode()
    with pytest.raises(NoSignatures, match=r"channel pointer has no signatures.*channel publish"):
        verify(raw, policy(signers))


def test_tampered_version_does_not_verify(signers: list[Signer]) -> None:
    doc = json.loads(wire(signed_part(), signers[0]))
    doc["signed"]["version"] = "9.9"
    with pytest.raises(BadSignature, match="channel pointer was altered"):
        verify(json.dumps(doc).encode(), policy(signers))


def test_unknown_and_revoked_keys(signers: list[Signer]) -> None:
    with pytest.raises(UnknownKey, match="trusted_keys"):
        verify(wire(signed_part(), signers[3]), policy(signers, n=2))
    with pytest.raises(RevokedKey, match="re-sign the channel pointer"):
        verify(wire(signed_part(), signers[0], signers[1]), policy(signers, n=3, revoked=(signers[1].id,)))


def test_below_threshold(signers: list[Signer]) -> None:
    with pytest.raises(ThresholdNotMet, match=r"1 valid signature.*2 required"):
        verify(wire(signed_part(), signers[0]), policy(signers, n=2, threshold=2))


def test_expired(signers: list[Signer]) -> None:
    raw = wire(signed_part(), signers[0])
    with pytest.raises(ExpiredPointer, match=r"expired at 2026-12-26T07:00:00Z.*channel publish"):
        verify(raw, policy(signers), now=NOW + timedelta(days=30))


@pytest.mark.parametrize(("name", "channel"), [("other-app", "stable"), ("demo-app", "beta")])
def test_wrong_name_or_channel(name: str, channel: str, signers: list[Signer]) -> None:
    raw = wire(signed_part(), signers[0])
    with pytest.raises(WrongChannel, match=r"channel stable of demo-app.*mirror layout"):
        verify(raw, policy(signers), name=name, channel=channel)


def test_oversized_is_refused_before_parsing(signers: list[Signer]) -> None:
    with pytest.raises(PointerTooLarge, match="16384"):
        verify(b" " * (signing.MAX_POINTER_BYTES + 1), policy(signers))
    with pytest.raises(PointerTooLarge):
        verify(b"x" * 101, policy(signers), max_bytes=100)


@pytest.mark.parametrize(("raw", "field"), [
    (b"<html>502</html>", "channel pointer"),
    (b"[1]", "channel pointer"),
    (b'{"signatures": []}', "signed"),
    (b'{"signed": {}}', "signatures"),
    (b'{"signed": "x", "signatures": []}', "signed"),
])
def test_malformed_documents(raw: bytes, field: str, signers: list[Signer]) -> None:
    with pytest.raises(MalformedPointer) as info:
        verify(raw, policy(signers))
    assert info.value.field == field and "re-sign" in str(info.value)


@pytest.mark.parametrize(("changes", "field"), [
    *[({key: _DROP}, f"signed.{key}") for key in ("name", "channel", "version", "created", "expires")],
    ({"channel": "a/b"}, "signed.channel"),
    ({"channel": ".."}, "signed.channel"),
    ({"channel": 3}, "signed.channel"),
    ({"name": "x" * 65}, "signed.name"),
    ({"version": "2.4 beta"}, "signed.version"),
    ({"version": 2.4}, "signed.version"),
    ({"created": "now"}, "signed.created"),
    ({"expires": "2026-11-25T07:00:00Z"}, "signed.expires"),
])
def test_malformed_fields_name_the_field(changes: dict[str, Any], field: str, signers: list[Signer]) -> None:
    with pytest.raises(MalformedPointer) as info:
        verify(wire(signed_part(**changes), signers[0]), policy(signers))
    assert info.value.field == field


def test_malformed_signature_list(signers: list[Signer]) -> None:
    raw = json.dumps({"signed": signed_part(), "signatures": [{"keyid": "x", "sig": "***"}]}).encode()
    with pytest.raises(MalformedPointer) as info:
        verify(raw, policy(signers))
    assert info.value.field == "signatures[0].sig"


def test_a_manifest_is_not_a_pointer_and_a_pointer_is_not_a_manifest(tmp_path: Path, signers: list[Signer]) -> None:
    artifact = tmp_path / "demo-app-2.4.tar.gz"
    artifact.write_bytes(b"release")
    manifest = wire(signing.build_signed(artifact, "demo-app", "2.4", now=NOW), signers[0])
    with pytest.raises(MalformedPointer, match=r"signed\.channel: missing"):
        verify(manifest, policy(signers))
    with pytest.raises(MalformedManifest, match=r"signed\.file: missing"):
        signing.verify_manifest(wire(signed_part(), signers[0]), policy(signers), now=NOW, name="demo-app")


# ------------------------------------------------------------------------ publishing (the CLI)


def test_sign_with_a_channel_publishes_the_pointer_next_to_the_release(tmp_path: Path, capsys: Any) -> None:
    from quorum_rollout import cli

    assert cli.main(["keygen", "--out", str(tmp_path / "release")]) == 0
    public = json.loads(capsys.readouterr().out)["public_key"]
    pol = TrustPolicy({signing.key_id(public): public}, 1)
    artifact = tmp_path / "demo-app-2.4.tar.gz"
    artifact.write_bytes(b"release")
    mirror = tmp_path / "mirror"
    key = str(tmp_path / "release.key")
    assert cli.main(["sign", str(artifact), "--name", "demo-app", "--version", "2.4", "--key", key,
                     "--mirror-dir", str(mirror), "--channel", "stable"]) == 0
    path = mirror / "demo-app" / "channels" / "stable.json"
    assert str(path) in capsys.readouterr().out
    now = datetime.now(timezone.utc)
    assert signing.verify_pointer(path.read_bytes(), pol, now=now, name="demo-app", channel="stable").version == "2.4"
    assert (path.stat().st_mode & 0o777) == 0o644 and not list(path.parent.glob(".*.tmp"))
    # Point another channel at the published release, without signing the manifest again.
    before = (mirror / "demo-app" / "2.4" / "manifest.json").read_bytes()
    assert cli.main(["channel", "publish", "--name", "demo-app", "--version", "2.4", "--channel", "beta",
                     "--key", key, "--mirror-dir", str(mirror), "--expires-days", "1"]) == 0
    beta = signing.verify_pointer((path.parent / "beta.json").read_bytes(), pol, now=now, name="demo-app",
                                  channel="beta")
    assert beta.expires - beta.created == timedelta(days=1)
    assert (mirror / "demo-app" / "2.4" / "manifest.json").read_bytes() == before


def test_publishing_a_pointer_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    from quorum_rollout import cli

    with pytest.raises(SystemExit, match=r"publish demo-app 2\.5 first"):
        cli.main(["channel", "publish", "--name", "demo-app", "--version", "2.5", "--channel", "stable",
                  "--key", str(tmp_path / "k.key"), "--mirror-dir", str(tmp_path)])
    artifact = tmp_path / "a.tar.gz"
    artifact.write_bytes(b"x")
    with pytest.raises(SystemExit, match="--channel needs --mirror-dir"):
        cli.main(["sign", str(artifact), "--name", "demo-app", "--version", "2.5", "--key", "k", "--channel", "s"])
    with pytest.raises(SystemExit):  # argparse: not a channel name
        cli.main(["sign", str(artifact), "--name", "demo-app", "--version", "2.5", "--key", "k", "--channel", "a/b"])
