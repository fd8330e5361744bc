"""Agent configuration: schema (frozen dataclasses), loading and validation.

`load_config(path)` reads a YAML (or JSON) file and returns an `AgentConfig`, or raises a
`ConfigError` whose text names the file, the dotted field, what is wrong and the fix:

    agent.yml: rollout.batch_fraction: must be > 0 and <= 1, got 1.5 (fix: use a fraction such as 0.1 ...)

Secrets are never part of the config: it holds paths, read with `read_secret`/`read_token`.
Every field is documented in docs/config.md.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .windows import DAYS, WINDOWS_LIMIT, shape_error

LOG_LEVELS = ("debug", "info", "warning", "error")
# The check types and the fields only each one uses: the one list (checks.py runs each, docs/config.md
# documents them; tests check both against this).
CHECK_FIELDS = {"command": ("command",), "http": ("url", "expect_status", "expect_body"), "tcp": ("address",)}
CHECK_TYPES = tuple(CHECK_FIELDS)
REGISTRY_TYPES = ("none", "file", "http")
# The webhook notifications the leader sends (notify.py), each once per release.
NOTIFY_EVENTS = ("release_started", "group_current", "group_rolled_back", "release_aborted", "release_stuck")
# The leader commits a release's manifest in one Raft entry, and a replication frame holds up to
# one batch (64 KiB) plus one entry: this keeps the largest frame well under transport.MAX_FRAME.
MAX_MANIFEST_BYTES = 256 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_ID_RE = re.compile(r"[0-9a-f]{64}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")


class ConfigError(Exception):
    """A config problem: `str()` reads `<path>: <field>: <message> (fix: <fix>)`."""

    def __init__(self, field: str, message: str, fix: str = "", *, path: str = "") -> None:
        super().__init__(field, message, fix, path)
        self.field, self.message, self.fix, self.path = field, message, fix, path

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.field) if p]
        text = ": ".join([*parts, self.message])
        return f"{text} (fix: {self.fix})" if self.fix else text


@dataclass(frozen=True)
class Peer:
    id: str
    address: str
    api_url: str


@dataclass(frozen=True)
class RaftConfig:
    address: str
    secret_file: str
    peers: tuple[Peer, ...] = ()
    compaction_entries: int = 200
    peers_file: str | None = None
    heartbeat: float = 0.1
    election_timeout_min: float = 0.4
    election_timeout_max: float = 1.4


@dataclass(frozen=True)
class ApiConfig:
    token_file: str
    bind: str = "127.0.0.1"
    port: int = 7200
    tls_cert: str | None = None
    tls_key: str | None = None
    url: str = ""
    max_connections: int = 64
    metrics_token_file: str | None = None  # a fleet-wide token that reads GET /metrics and nothing else


@dataclass(frozen=True)
class TrustedKey:
    id: str
    public_key: str


@dataclass(frozen=True)
class ArtifactsConfig:
    name: str
    mirrors: tuple[str, ...]
    trusted_keys: tuple[TrustedKey, ...]
    key_threshold: int = 1
    revoked_keys: tuple[str, ...] = ()
    max_manifest_bytes: int = 65536
    bandwidth_limit: int = 0
    min_rate: int = 4096
    min_rate_window: float = 30.0
    free_space_margin: int = 67108864
    max_peer_uploads: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    peer_timeout: float = 5.0
    channel: str | None = None     # autonomous mode: the leader polls <mirror>/<name>/channels/<channel>.json
    channel_interval: float = 60.0


@dataclass(frozen=True)
class Hooks:
    stop: str | None = None
    start: str | None = None
    restart: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class InstallConfig:
    root: str
    hooks: Hooks = field(default_factory=Hooks)
    keep_releases: int = 5


@dataclass(frozen=True)
class Check:
    name: str
    type: str
    command: str | None = None
    url: str | None = None
    address: str | None = None
    expect_status: int = 200
    expect_body: str | None = None
    timeout: float = 5.0
    retries: int = 3
    interval: float = 1.0


@dataclass(frozen=True)
class MaintenanceWindow:
    start: str
    end: str
    days: tuple[str, ...] = DAYS
    timezone: str = "UTC"

    def as_dict(self) -> dict[str, Any]:
        """The window as a release keeps it (windows.py reads this shape)."""
        return {"days": list(self.days), "start": self.start, "end": self.end, "timezone": self.timezone}


@dataclass(frozen=True)
class RolloutConfig:
    batch_fraction: float = 0.1
    canary: bool = False
    step_deadline: float = 300.0
    member_timeout: float = 10.0
    max_failures: int = 0
    bake_time: float = 0.0
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()


@dataclass(frozen=True)
class RegistryConfig:
    type: str = "none"
    path: str | None = None
    url: str | None = None
    token_file: str | None = None
    timeout: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class NotifyConfig:
    url: str | None = None
    secret_file: str | None = None
    events: tuple[str, ...] = NOTIFY_EVENTS
    stuck_after: float = 3600.0
    timeout: float = 5.0
    retries: int = 8


@dataclass(frozen=True)
class AgentConfig:
    node_id: str
    group: str
    data_dir: str
    raft: RaftConfig
    api: ApiConfig
    artifacts: ArtifactsConfig
    install: InstallConfig
    checks: tuple[Check, ...] = ()
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    log_level: str = "info"
    source: str = ""


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port"; raise ValueError saying what is wrong."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError("expected [ipv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("the :port is missing")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, e.g. [::1]:7100")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


_REQUIRED = object()
_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
          list: "a list", dict: "a mapping"}
_KIND_FIX = {str: 'quote the value, e.g. key: "text"', int: "write a whole number without quotes, e.g. 5",
             float: "write a number without quotes, e.g. 2.5", bool: "write true or false without quotes",
             list: "write a YAML list (lines starting with '- ')", dict: "write nested key: value lines"}


def _describe(value: Any) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}
    text = repr(value)
    return f"{names.get(type(value), type(value).__name__)} {text[:60] + '...' if len(text) > 60 else text}"


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


class _Section:
    """One mapping of the config, with typed getters that fail naming the dotted field."""

    def __init__(self, data: Any, where: str, allowed: tuple[str, ...], src: str) -> None:
        self.where, self.src = where, src
        if data is None and where:
            data = {}
        if not isinstance(data, dict):
            self.fail("", f"must be a mapping, got {_describe(data)}", "write key: value lines here")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            self.fail(str(unknown[0]), "unknown key", f"remove it or use one of: {', '.join(allowed)}")
        self.data: dict[str, Any] = data

    def fail(self, key: str | int, message: str, fix: str) -> NoReturn:
        raise ConfigError(_join(self.where, key) if key != "" else self.where, message, fix, path=self.src)

    def get(self, key: str | int, kind: type, default: Any = _REQUIRED, hint: str = "...") -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _REQUIRED and isinstance(key, int):
                self.fail(key, "is empty", "remove the empty entry or fill it in")
            if default is _REQUIRED:
                self.fail(key, "is required", f"add {key}: {hint}" + (f" under {self.where}" if self.where else ""))
            return default
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            self.fail(key, f"must be {_KINDS[kind]}, got {_describe(value)}", _KIND_FIX[kind])
        return value

    def text(self, key: str | int, default: Any = _REQUIRED, hint: str = "...") -> Any:
        value = self.get(key, str, default, hint)
        if value is not None and value is not default and not value.strip():
            self.fail(key, "must not be empty", f"set {key} to a value or remove it")
        return value

    def ident(self, key: str, default: Any = _REQUIRED) -> str:
        value = self.text(key, default, "<name>")
        if value is not None and not _ID_RE.fullmatch(value):
            self.fail(key, f"must be 1-64 characters from A-Z a-z 0-9 . _ -, got {value!r}",
                      "use a short name such as web-01")
        return value

    def abspath(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.text(key, default, "/absolute/path")
        if value is not None and not os.path.isabs(value):
            self.fail(key, f"must be an absolute path, got {value!r}", "write the full path starting with /")
        return value

    def number(self, key: str, kind: type, default: Any, low: float, *, strict: bool = False,
               high: float | None = None, fix: str = "") -> Any:
        value = self.get(key, kind, default)
        too_low = value <= low if strict else value < low
        if too_low or (high is not None and value > high):
            rule = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            self.fail(key, f"must be {rule}, got {value!r}", fix or f"use a value {rule}")
        return value

    def url(self, key: str | int, default: Any = _REQUIRED, *, strip: bool = True) -> Any:
        value = self.text(key, default, "https://host:port")
        if not value:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            self.fail(key, f"is not a valid URL ({exc}): {value!r}", "write it as http(s)://host[:port][/path]")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(key, f"must be an http:// or https:// URL with a host, got {value!r}",
                      "write it as http(s)://host[:port][/path]")
        return value.rstrip("/") if strip else value

    def host_port(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.text(key, default, "host:port")
        if value is not None:
            try:
                parse_host_port(value)
            except ValueError as exc:
                self.fail(key, f"is not host:port ({exc}), got {value!r}", "write it as host:port, e.g. 10.0.0.5:7100")
        return value

    def items(self, key: str, required: bool = False) -> list[Any]:
        value = self.get(key, list, _REQUIRED if required else [], "[...]")
        if required and not value:
            self.fail(key, "must list at least one entry", f"add one or more entries under {key}")
        return value

    def indexed(self, key: str, required: bool = False) -> tuple[_Section, int]:
        """The list at `key` as a section whose keys are the indexes (fields read `key[i]`)."""
        value = self.items(key, required)
        return _Section(dict(enumerate(value)), _join(self.where, key), tuple(range(len(value))), self.src), len(value)

    def sub(self, key: str | int, value: Any, allowed: tuple[str, ...]) -> _Section:
        return _Section(value, _join(self.where, key), allowed, self.src)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> Any:
        value = self.text(key, default, "|".join(choices))
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}", f"use one of: {', '.join(choices)}")
        return value


def _fields(cls: type, *exclude: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


def _raft(top: _Section, node_id: str) -> RaftConfig:
    s = top.sub("raft", top.get("raft", dict, hint="{address: ..., secret_file: ...}"), _fields(RaftConfig))
    address = s.host_port("address")
    peers, ids, addresses = [], {node_id: "node_id"}, {address: "raft.address"}
    peers_file = s.abspath("peers_file", None)
    sections = [(s.indexed("peers"), "raft.peers")]
    if peers_file is not None:  # errors there name the file and `peers[i]`
        extra = _Section({"peers": _read_data(peers_file, "raft.peers_file")}, "", ("peers",), peers_file)
        sections.append((extra.indexed("peers"), f"{peers_file}: peers"))
    for (ps, count), label in sections:
        for i in range(count):
            p = ps.sub(i, ps.data[i], _fields(Peer))
            peer = Peer(id=p.ident("id"), address=p.host_port("address"), api_url=p.url("api_url"))
            where = f"{label}[{i}]"
            if peer.id in ids:
                p.fail("id", f"{peer.id!r} is already used by {ids[peer.id]}", "give every node a unique id")
            if peer.address in addresses:
                p.fail("address", f"{peer.address!r} is already used by {addresses[peer.address]}",
                       "list each peer once and never the node itself")
            ids[peer.id], addresses[peer.address] = where, where
            peers.append(peer)
    return RaftConfig(address=address, secret_file=s.abspath("secret_file"), peers=tuple(peers),
                      compaction_entries=s.number("compaction_entries", int, RaftConfig.compaction_entries, 10,
                                                  fix="use a number of journal entries, 10 or more"),
                      peers_file=peers_file, **_raft_timing(s))


def _raft_timing(s: _Section) -> dict[str, float]:
    """Heartbeat and election timeout (seconds): a follower that hears nothing from the leader for
    a random time between the two bounds starts an election; three heartbeats must fit before it."""
    beat = s.number("heartbeat", float, RaftConfig.heartbeat, 0.01, high=5.0,
                    fix="use seconds between 0.01 and 5 (the leader's append-entries period)")
    low = s.number("election_timeout_min", float, RaftConfig.election_timeout_min, 0.0, strict=True)
    high = s.number("election_timeout_max", float, RaftConfig.election_timeout_max, 0.0, strict=True, high=3.5,
                    fix="use seconds up to 3.5 (pysyncobj drops a link silent for 3.5 s)")
    if low <= 3 * beat:
        s.fail("election_timeout_min", f"must be more than 3 heartbeats ({3 * beat:g} s), got {low:g}",
               "raise raft.election_timeout_min or lower raft.heartbeat")
    if high <= low:
        s.fail("election_timeout_max", f"must be more than raft.election_timeout_min ({low:g}), got {high:g}",
               "make the range at least a few heartbeats wide")
    return {"heartbeat": beat, "election_timeout_min": low, "election_timeout_max": high}


def _api(top: _Section) -> ApiConfig:
    s = top.sub("api", top.get("api", dict, hint="{token_file: ...}"), _fields(ApiConfig))
    bind = s.text("bind", ApiConfig.bind)
    if not _HOSTNAME_RE.fullmatch(bind):
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            s.fail("bind", f"must be an IP address or host name, got {bind!r}", "use e.g. 127.0.0.1 or 10.0.0.5")
    port = s.number("port", int, ApiConfig.port, 1, high=65535)
    cert, key = s.abspath("tls_cert", None), s.abspath("tls_key", None)
    if (cert is None) != (key is None):
        missing, given = ("tls_key", "tls_cert") if key is None else ("tls_cert", "tls_key")
        s.fail(missing, f"is required when api.{given} is set (TLS needs both)",
               "set both tls_cert and tls_key, or neither")
    url = s.url("url", ApiConfig.url)
    if not url:
        if bind in ("0.0.0.0", "::"):
            s.fail("url", f"is required when bind is the wildcard {bind}",
                   "set url to the address peers reach, e.g. http://10.0.0.5:7200")
        host = f"[{bind}]" if ":" in bind else bind
        url = f"{'https' if cert else 'http'}://{host}:{port}"
    return ApiConfig(token_file=s.abspath("token_file"), bind=bind, port=port, tls_cert=cert, tls_key=key, url=url,
                     max_connections=s.number("max_connections", int, ApiConfig.max_connections, 4,
                                              fix="use the number of concurrent API connections, 4 or more"),
                     metrics_token_file=s.abspath("metrics_token_file", None))


def _trusted_key(s: _Section) -> TrustedKey:
    public = s.text("public_key", hint="<base64 Ed25519 public key>")
    try:
        raw = base64.b64decode(public, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        s.fail("public_key", "must be the base64 of a raw 32-byte Ed25519 public key",
               "paste the public key printed by `quorum-rollout keygen`")
    computed = hashlib.sha256(raw).hexdigest()
    given = s.text("id", None)
    if given is not None and given.lower() != computed:
        s.fail("id", f"does not match public_key (its id is {computed})", "remove id, or fix it or the key")
    return TrustedKey(id=computed, public_key=public)


def _artifacts(top: _Section) -> ArtifactsConfig:
    s = top.sub("artifacts", top.get("artifacts", dict, hint="{name: ..., mirrors: ..., trusted_keys: ...}"),
                _fields(ArtifactsConfig))
    name = s.ident("name")
    if name in (".", ".."):
        s.fail("name", f"must not be {name!r}", "use the artifact's name, e.g. demo-app")
    ms, count = s.indexed("mirrors", required=True)
    mirrors = tuple(ms.url(i) for i in range(count))
    ks, count = s.indexed("trusted_keys", required=True)
    keys: list[TrustedKey] = []
    for i in range(count):
        key = _trusted_key(ks.sub(i, ks.data[i], _fields(TrustedKey)))
        if any(k.id == key.id for k in keys):
            ks.fail(i, "repeats a key listed above", "list each trusted key once")
        keys.append(key)
    rs, count = s.indexed("revoked_keys")
    revoked = tuple(rs.text(i).lower() for i in range(count))
    for i, kid in enumerate(revoked):
        if not _KEY_ID_RE.fullmatch(kid):
            rs.fail(i, f"must be a key id (64 hex digits), got {kid!r}",
                    "use the id printed by `quorum-rollout keygen`")
    threshold = s.number("key_threshold", int, ArtifactsConfig.key_threshold, 1, high=len(keys),
                         fix=f"use a number from 1 to {len(keys)} (the number of trusted keys)")
    channel = s.ident("channel", None)
    if channel in (".", ".."):
        s.fail("channel", f"must not be {channel!r}", "use a channel name such as stable, or leave it out")
    usable = sum(1 for k in keys if k.id not in revoked)
    if threshold > usable:
        s.fail("key_threshold", f"needs {threshold} signatures but only {usable} trusted keys are not revoked",
               "add trusted keys or lower key_threshold")
    return ArtifactsConfig(
        name=name, mirrors=mirrors, trusted_keys=tuple(keys), key_threshold=threshold, revoked_keys=revoked,
        max_manifest_bytes=s.number("max_manifest_bytes", int, ArtifactsConfig.max_manifest_bytes, 1,
                                    high=MAX_MANIFEST_BYTES,
                                    fix=f"use at most {MAX_MANIFEST_BYTES}: the leader commits the manifest "
                                        "in one Raft entry, and members refuse Raft frames over 1 MiB"),
        bandwidth_limit=s.number("bandwidth_limit", int, ArtifactsConfig.bandwidth_limit, 0,
                                 fix="use bytes per second, or 0 for unlimited"),
        min_rate=s.number("min_rate", int, ArtifactsConfig.min_rate, 0,
                          fix="use bytes per second, or 0 to turn it off"),
        min_rate_window=s.number("min_rate_window", float, ArtifactsConfig.min_rate_window, 0, strict=True),
        free_space_margin=s.number("free_space_margin", int, ArtifactsConfig.free_space_margin, 0),
        max_peer_uploads=s.number("max_peer_uploads", int, ArtifactsConfig.max_peer_uploads, 1),
        connect_timeout=s.number("connect_timeout", float, ArtifactsConfig.connect_timeout, 0, strict=True),
        read_timeout=s.number("read_timeout", float, ArtifactsConfig.read_timeout, 0, strict=True),
        peer_timeout=s.number("peer_timeout", float, ArtifactsConfig.peer_timeout, 0, strict=True),
        channel=channel,
        channel_interval=s.number("channel_interval", float, ArtifactsConfig.channel_interval, 0, strict=True,
                                  fix="use seconds between two polls of the channel, e.g. 60"),
    )


def _install(top: _Section) -> InstallConfig:
    s = top.sub("install", top.get("install", dict, hint="{root: ...}"), _fields(InstallConfig))
    h = s.sub("hooks", s.get("hooks", dict, {}), _fields(Hooks))
    hooks = Hooks(stop=h.text("stop", None), start=h.text("start", None), restart=h.text("restart", None),
                  timeout=h.number("timeout", float, Hooks.timeout, 0, strict=True))
    return InstallConfig(root=s.abspath("root"), hooks=hooks,
                         keep_releases=s.number("keep_releases", int, InstallConfig.keep_releases, 1))


def _check(s: _Section) -> Check:
    kind = s.choice("type", CHECK_TYPES)
    for other, names in CHECK_FIELDS.items():
        for name in names:
            if other != kind and s.data.get(name) is not None:
                s.fail(name, f"is not used by checks of type {kind}", f"remove it, or set type: {other}")
    return Check(
        name=s.text("name", hint="<check name>"), type=kind,
        command=s.text("command") if kind == "command" else None,
        url=s.url("url", strip=False) if kind == "http" else None,
        address=s.host_port("address") if kind == "tcp" else None,
        expect_status=s.number("expect_status", int, Check.expect_status, 100, high=599),
        expect_body=s.get("expect_body", str, None), timeout=s.number("timeout", float, Check.timeout, 0, strict=True),
        retries=s.number("retries", int, Check.retries, 1, fix="use the number of attempts, 1 or more"),
        interval=s.number("interval", float, Check.interval, 0),
    )


def _windows(r: _Section) -> tuple[MaintenanceWindow, ...]:
    ws, count = r.indexed("maintenance_windows")
    if count > WINDOWS_LIMIT:
        r.fail("maintenance_windows", f"lists {count} windows, at most {WINDOWS_LIMIT}", "merge adjacent windows")
    out = []
    for i in range(count):
        s = ws.sub(i, ws.data[i], _fields(MaintenanceWindow))
        for key in ("start", "end"):
            if isinstance(s.data.get(key), int) and not isinstance(s.data.get(key), bool):
                s.fail(key, f"must be a time HH:MM in quotes, got {s.data[key]!r} (YAML reads an unquoted 12:30 "
                       "as the number 750)", f'write {key}: "02:00"')
            value = s.text(key, hint='"HH:MM"')
            if not re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", value):
                s.fail(key, f"must be a time HH:MM from 00:00 to 23:59, got {value!r}", f'write {key}: "02:00"')
        days = s.get("days", list, list(DAYS))
        if not days or any(d not in DAYS for d in days) or len(set(days)) != len(days):
            s.fail("days", f"must list distinct days from {', '.join(DAYS)}, got {days!r}",
                   "write e.g. days: [mon, tue, wed, thu] (or leave it out for every day)")
        zone = s.text("timezone", MaintenanceWindow.timezone)
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            s.fail("timezone", f"is not a time zone this host knows: {zone!r}",
                   "use an IANA name such as UTC or Europe/Berlin (install tzdata if the host has none)")
        window = MaintenanceWindow(start=s.data["start"], end=s.data["end"], days=tuple(days), timezone=zone)
        if shape_error([window.as_dict()]):  # the state machine's own check must agree
            s.fail("", shape_error([window.as_dict()]) or "", "see docs/config.md, rollout.maintenance_windows")
        out.append(window)
    return tuple(out)


def _registry(top: _Section) -> RegistryConfig:
    s = top.sub("registry", top.get("registry", dict, {}), _fields(RegistryConfig))
    kind = s.choice("type", REGISTRY_TYPES, RegistryConfig.type)
    owner = {"path": "file", "url": "http", "token_file": "http"}
    for name, needs in owner.items():
        if needs != kind and s.data.get(name) is not None:
            s.fail(name, f"is only used with type {needs}", f"set type: {needs}, or remove {name}")
    return RegistryConfig(
        type=kind, path=s.abspath("path") if kind == "file" else None,
        url=s.url("url") if kind == "http" else None, token_file=s.abspath("token_file", None),
        timeout=s.number("timeout", float, RegistryConfig.timeout, 0, strict=True),
        retries=s.number("retries", int, RegistryConfig.retries, 1, fix="use the number of attempts, 1 or more"),
    )


def _notify(top: _Section) -> NotifyConfig:
    s = top.sub("notify", top.get("notify", dict, {}), _fields(NotifyConfig))
    url = s.url("url", None)
    if url is None and any(s.data.get(k) is not None for k in ("secret_file", "events", "stuck_after")):
        s.fail("url", "is required when notifications are configured", "set notify.url to the webhook URL, "
               "or remove the notify section")
    if url is not None and s.data.get("secret_file") is None:
        s.fail("secret_file", "is required with notify.url: every notification is signed (X-Quorum-Signature)",
               "write a random secret the receiver also holds, e.g. openssl rand -hex 32 > FILE (mode 0600), "
               "and set notify.secret_file to its path")
    events, count = s.indexed("events")
    chosen = tuple(events.choice(i, NOTIFY_EVENTS) for i in range(count)) if "events" in s.data \
        else NotifyConfig.events
    return NotifyConfig(
        url=url, secret_file=s.abspath("secret_file", None), events=chosen,
        stuck_after=s.number("stuck_after", float, NotifyConfig.stuck_after, 0, strict=True,
                             fix="use seconds after its start when a release still under way counts as stuck"),
        timeout=s.number("timeout", float, NotifyConfig.timeout, 0, strict=True),
        retries=s.number("retries", int, NotifyConfig.retries, 1, fix="use the number of attempts, 1 or more"),
    )


def parse_config(data: Any, source: str = "<config>") -> AgentConfig:
    """Validate already-parsed config data (a dict) and build the `AgentConfig`."""
    if data is None:
        raise ConfigError("", "the config is empty", "write the agent config (see docs/config.md)", path=source)
    top = _Section(data, "", _fields(AgentConfig, "source"), source)
    node_id, group, data_dir = top.ident("node_id"), top.ident("group"), top.abspath("data_dir")
    raft, api, artifacts, install = _raft(top, node_id), _api(top), _artifacts(top), _install(top)
    checks: list[Check] = []
    cs, count = top.indexed("checks")
    for i in range(count):
        check = _check(cs.sub(i, cs.data[i], _fields(Check)))
        if any(c.name == check.name for c in checks):
            cs.fail(i, f"check name {check.name!r} is used twice", "give every check its own name")
        checks.append(check)
    r = top.sub("rollout", top.get("rollout", dict, {}), _fields(RolloutConfig))
    rollout = RolloutConfig(
        batch_fraction=r.number("batch_fraction", float, RolloutConfig.batch_fraction, 0, strict=True, high=1,
                                fix="use a fraction such as 0.1 for one tenth of the group"),
        canary=r.get("canary", bool, RolloutConfig.canary),
        step_deadline=r.number("step_deadline", float, RolloutConfig.step_deadline, 0, strict=True),
        member_timeout=r.number("member_timeout", float, RolloutConfig.member_timeout, 0, strict=True,
                                fix="use seconds, e.g. 10: how long the leader may not hear from a member "
                                    "before it counts as unreachable"),
        max_failures=r.number("max_failures", int, RolloutConfig.max_failures, 0,
                              fix="use how many failed hosts a release may revert alone and go on, e.g. 0 or 2"),
        bake_time=r.number("bake_time", float, RolloutConfig.bake_time, 0, high=7 * 86400,
                           fix="use seconds to wait after each batch before the next, e.g. 300 (at most a week)"),
        maintenance_windows=_windows(r))
    return AgentConfig(
        node_id=node_id, group=group, data_dir=data_dir, raft=raft, api=api, artifacts=artifacts,
        install=install, checks=tuple(checks), rollout=rollout,
        registry=_registry(top), notify=_notify(top),
        log_level=top.choice("log_level", LOG_LEVELS, AgentConfig.log_level), source=source,
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (YAML would keep the last)."""


def _construct_unique(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique)


def _read_data(path: str, what: str) -> Any:
    """A YAML/JSON file another field points to (raft.peers_file): its data, or a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError("", f"{what} does not exist", f"write it (a YAML list of peers) or remove {what}",
                          path=path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError("", f"cannot read {what}: {exc}", "check the file", path=path) from None


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate the agent config file; raise `ConfigError` naming the file."""
    src = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", "file not found", "check the path, or write the config (see docs/config.md)",
                          path=src) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read the file: {exc}", "check the path, permissions and encoding (UTF-8)",
                          path=src) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"invalid YAML{where}: {problem}", "correct the syntax there", path=src) from None
    return parse_config(data, source=src)


def _read_private(path: str | os.PathLike[str], what: str) -> bytes:
    src = str(path)
    try:
        st = os.stat(src)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("", f"the {what} file is not a regular file", f"point to the {what} file", path=src)
        if st.st_mode & 0o077:
            raise ConfigError("", f"the {what} file is readable or writable by group/other "
                              f"(mode {stat.S_IMODE(st.st_mode):04o})", f"chmod 600 {src}", path=src)
        with open(src, "rb") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        raise ConfigError("", f"the {what} file does not exist", "create it with mode 600 (see docs/config.md)",
                          path=src) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read the {what} file: {exc.strerror}", "check the path and its owner",
                          path=src) from None


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The group's Raft secret: >= 32 bytes, file not accessible by group/other."""
    data = _read_private(path, "secret")
    if len(data) < 32:
        raise ConfigError("", f"the secret is {len(data)} bytes, at least 32 are needed",
                          f"write a long random secret, e.g. openssl rand -base64 48 > {path}", path=str(path))
    return data


def read_token(path: str | os.PathLike[str]) -> str:
    """An API bearer token: >= 16 characters, file not accessible by group/other."""
    try:
        token = _read_private(path, "token").decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", "the token is not UTF-8 text", "write a printable token", path=str(path)) from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError("", f"the token must be at least 16 characters without spaces (it has {len(token)})",
                          f"write a random token, e.g. openssl rand -hex 24 > {path}", path=str(path))
    return token
