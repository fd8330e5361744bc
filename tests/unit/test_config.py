"""Agent config loading and validation, secret files, and structured logging (log.py)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from quorum_rollout import config as C
from quorum_rollout import log as L


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


KEY1, KEY2 = _public_key(), _public_key()


def base() -> dict[str, Any]:
    return {
        "node_id": "web-01",
        "group": "intel-zone-a",
        "data_dir": "/var/lib/quorum-rollout",
        "raft": {
            "address": "10.0.0.1:7100",
            "secret_file": "/etc/quorum-rollout/raft.secret",
            "peers": [
                {"id": "web-02", "address": "10.0.0.2:7100", "api_url": "http://10.0.0.2:7200/"},
                {"id": "web-03", "address": "10.0.0.3:7100", "api_url": "https://10.0.0.3:7200"},
            ],
        },
        "api": {"token_file": "/etc/quorum-rollout/api.token"},
        "artifacts": {"name": "demo-app", "mirrors": ["https://mirror.example.com/releases/"],
                      "trusted_keys": [{"public_key": KEY1}]},
        "install": {"root": "/opt/demo-app", "hooks": {"restart": "systemctl restart demo-app"}},
        "checks": [{"name": "health", "type": "http", "url": "http://127.0.0.1:8080/health",
                    "expect_body": "{version}"}],
    }


def load(tmp_path: Path, data: Any) -> C.AgentConfig:
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return C.load_config(path)


def error(tmp_path: Path, data: Any) -> C.ConfigError:
    with pytest.raises(C.ConfigError) as info:
        load(tmp_path, data)
    return info.value


def test_valid_config_defaults_and_normalisation(tmp_path: Path) -> None:
    cfg = load(tmp_path, base())
    assert cfg.node_id == "web-01" and cfg.source == str(tmp_path / "agent.yml")
    assert cfg.raft.peers[0] == C.Peer("web-02", "10.0.0.2:7100", "http://10.0.0.2:7200")
    assert cfg.artifacts.mirrors == ("https://mirror.example.com/releases",)
    key_id = hashlib.sha256(base64.b64decode(KEY1)).hexdigest()
    assert cfg.artifacts.trusted_keys == (C.TrustedKey(key_id, KEY1),)
    assert cfg.api == C.ApiConfig(token_file="/etc/quorum-rollout/api.token", url="http://127.0.0.1:7200")
    assert cfg.install.hooks == C.Hooks(restart="systemctl restart demo-app")
    assert cfg.rollout == C.RolloutConfig() and cfg.registry == C.RegistryConfig() and cfg.log_level == "info"
    assert cfg.checks[0].url == "http://127.0.0.1:8080/health" and cfg.checks[0].retries == 3
    assert isinstance(cfg.raft.peers, tuple) and isinstance(cfg.checks, tuple)
    with pytest.raises(AttributeError):
        cfg.node_id = "x"  # type: ignore[misc]


def test_artifacts_defaults(tmp_path: Path) -> None:
    got = load(tmp_path, base()).artifacts
    assert got.peer_timeout == 5.0 and got.read_timeout == 30.0
    assert (got.min_rate, got.min_rate_window) == (4096, 30.0)  # the slow-retrieval guard is on
    assert (got.channel, got.channel_interval) == (None, 60.0)  # autonomous mode is off by default
    # the parser's defaults are the dataclass's (each is written in both places)
    assert got == C.ArtifactsConfig(name=got.name, mirrors=got.mirrors, trusted_keys=got.trusted_keys)


def test_channel_turns_on_autonomous_mode(tmp_path: Path) -> None:
    got = load(tmp_path, mutate("artifacts.channel", "stable")).artifacts
    assert (got.channel, got.channel_interval) == ("stable", 60.0)
    data = mutate("artifacts.channel", "beta-1")
    data["artifacts"]["channel_interval"] = 1
    assert load(tmp_path, data).artifacts.channel_interval == 1.0


def test_json_config_and_tls_url(tmp_path: Path) -> None:
    data = base()
    data["api"].update(tls_cert="/etc/q/cert.pem", tls_key="/etc/q/key.pem", bind="::1", port=7443)
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(data))
    assert C.load_config(path).api.url == "https://[::1]:7443"


def test_error_format_matches_contract(tmp_path: Path) -> None:
    data = base()
    data["rollout"] = {"batch_fraction": 1.5}
    exc = error(tmp_path, data)
    assert str(exc) == (f"{tmp_path / 'agent.yml'}: rollout.batch_fraction: must be > 0 and <= 1, got 1.5 "
                        "(fix: use a fraction such as 0.1 for one tenth of the group)")
    assert exc.field == "rollout.batch_fraction" and "fraction" in exc.fix


def mutate(path: str, value: Any) -> dict[str, Any]:
    """base() with the value at dotted `path` (list indexes as numbers) set, or removed for DELETE."""
    data = copy.deepcopy(base())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = data
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(p, str) else node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()

BAD = [
    # (dotted path to set, value, field named in the error, words in the message)
    ("node_id", DELETE, "node_id", "is required"),
    ("node_id", 12, "node_id", "must be a string, got int 12"),
    ("node_id", "web 01", "node_id", "1-64 characters"),
    ("group", "x" * 65, "group", "1-64 characters"),
    ("data_dir", "relative/dir", "data_dir", "absolute path"),
    ("colour", "blue", "colour", "unknown key"),
    ("raft.port", 1, "raft.port", "unknown key"),
    ("raft", DELETE, "raft", "is required"),
    ("raft.address", "10.0.0.1", "raft.address", "the :port is missing"),
    ("raft.address", "10.0.0.1:70000", "raft.address", "1 to 65535"),
    ("raft.address", "::1:7100", "raft.address", "brackets"),
    ("raft.heartbeat", 0, "raft.heartbeat", "between 0.01 and 5"),
    ("raft.election_timeout_min", 0.25, "raft.election_timeout_min", "more than 3 heartbeats (0.3 s)"),
    ("raft.election_timeout_max", 0.4, "raft.election_timeout_max", "more than raft.election_timeout_min"),
    ("raft.election_timeout_max", 5, "raft.election_timeout_max", "up to 3.5"),
    ("raft.address", "bad_host!:7100", "raft.address", "not a host name"),
    ("raft.address", "10.0.0.2:7100", "raft.peers[0].address", "already used by raft.address"),
    ("raft.peers.1.id", "web-01", "raft.peers[1].id", "already used by node_id"),
    ("raft.peers.1.id", "web-02", "raft.peers[1].id", "already used by raft.peers[0]"),
    ("raft.peers.1.api_url", "ftp://x", "raft.peers[1].api_url", "http:// or https://"),
    ("raft.peers.1.api_url", DELETE, "raft.peers[1].api_url", "is required"),
    ("raft.peers.0", "web-02", "raft.peers[0]", "must be a mapping"),
    ("raft.peers", {"id": "x"}, "raft.peers", "must be a list"),
    ("raft.secret_file", DELETE, "raft.secret_file", "is required"),
    ("api.port", True, "api.port", "must be a whole number, got bool True"),
    ("api.port", 0, "api.port", "must be >= 1 and <= 65535"),
    ("api.port", "7200", "api.port", "must be a whole number"),
    ("api.bind", "0.0.0.0", "api.url", "wildcard"),
    ("api.tls_cert", "/etc/cert.pem", "api.tls_key", "both"),
    ("api.token_file", DELETE, "api.token_file", "is required"),
    ("artifacts.mirrors", [], "artifacts.mirrors", "at least one"),
    ("artifacts.mirrors", ["https://ok", "mirror.example.com"], "artifacts.mirrors[1]", "http:// or https://"),
    ("artifacts.mirrors", ["https://host:99999"], "artifacts.mirrors[0]", "not a valid URL"),
    ("artifacts.trusted_keys", [{"public_key": KEY1}, {"public_key": "bm90IGEga2V5"}],
     "artifacts.trusted_keys[1].public_key", "32-byte"),
    ("artifacts.trusted_keys", [{"public_key": KEY1, "id": "00" * 32}], "artifacts.trusted_keys[0].id",
     "does not match"),
    ("artifacts.trusted_keys", [{"public_key": KEY1}, {"public_key": KEY1}], "artifacts.trusted_keys[1]",
     "repeats"),
    ("artifacts.trusted_keys", [{"key": KEY1}], "artifacts.trusted_keys[0].key", "unknown key"),
    ("artifacts.key_threshold", 2, "artifacts.key_threshold", "from 1 to 1"),
    ("artifacts.key_threshold", 0, "artifacts.key_threshold", ">= 1"),
    ("artifacts.revoked_keys", ["abc"], "artifacts.revoked_keys[0]", "64 hex digits"),
    ("artifacts.revoked_keys", [hashlib.sha256(base64.b64decode(KEY1)).hexdigest()],
     "artifacts.key_threshold", "not revoked"),
    ("artifacts.name", "../x", "artifacts.name", "1-64 characters"),
    ("artifacts.min_rate_window", 0, "artifacts.min_rate_window", "> 0"),
    ("artifacts.bandwidth_limit", -1, "artifacts.bandwidth_limit", ">= 0"),
    ("artifacts.read_timeout", "slow", "artifacts.read_timeout", "must be a number"),
    ("artifacts.peer_timeout", 0, "artifacts.peer_timeout", "must be > 0"),
    ("artifacts.max_manifest_bytes", 256 * 1024 + 1, "artifacts.max_manifest_bytes", "one Raft entry"),
    ("artifacts.peer_timeout", "fast", "artifacts.peer_timeout", "must be a number"),
    ("artifacts.channel", "st/able", "artifacts.channel", "1-64 characters"),
    ("artifacts.channel", "..", "artifacts.channel", "must not be"),
    ("artifacts.channel", "", "artifacts.channel", "must not be empty"),
    ("artifacts.channel", 1, "artifacts.channel", "must be a string"),
    ("artifacts.channel_interval", 0, "artifacts.channel_interval", "must be > 0"),
    ("artifacts.channel_interval", "1m", "artifacts.channel_interval", "must be a number"),
    ("install.hooks.timeout", 0, "install.hooks.timeout", "> 0"),
    ("install.hooks.reload", "x", "install.hooks.reload", "unknown key"),
    ("install.hooks.start", "", "install.hooks.start", "must not be empty"),
    ("install.keep_releases", 0, "install.keep_releases", ">= 1"),
    ("checks.0.type", "ping", "checks[0].type", "must be one of command, http, tcp"),
    ("checks.0.command", "true", "checks[0].command", "not used by checks of type http"),
    ("checks.0.url", DELETE, "checks[0].url", "is required"),
    ("checks.0.expect_status", 700, "checks[0].expect_status", "<= 599"),
    ("checks.0.retries", 0, "checks[0].retries", "number of attempts"),
    ("checks", [{"name": "a", "type": "tcp", "address": "x:1"}, {"name": "a", "type": "command", "command": "true"}],
     "checks[1]", "used twice"),
    ("checks", [{"name": "p", "type": "tcp", "address": "127.0.0.1"}], "checks[0].address", "port is missing"),
    ("rollout.canary", "yes please", "rollout.canary", "true or false"),
    ("rollout.batch_fraction", 0, "rollout.batch_fraction", "> 0 and <= 1"),
    ("rollout.max_failures", -1, "rollout.max_failures", "how many failed hosts"),
    ("rollout.max_failures", 1.5, "rollout.max_failures", "a whole number"),
    ("rollout.bake_time", 8 * 86400, "rollout.bake_time", "at most a week"),
    ("rollout.maintenance_windows", [{"start": 750, "end": "05:00"}], "rollout.maintenance_windows[0].start",
     "YAML reads an unquoted 12:30"),
    ("rollout.maintenance_windows", [{"start": "25:00", "end": "05:00"}], "rollout.maintenance_windows[0].start",
     "00:00 to 23:59"),
    ("rollout.maintenance_windows", [{"end": "05:00"}], "rollout.maintenance_windows[0].start", "is required"),
    ("rollout.maintenance_windows", [{"start": "01:00", "end": "05:00", "days": ["monday"]}],
     "rollout.maintenance_windows[0].days", "mon, tue"),
    ("rollout.maintenance_windows", [{"start": "01:00", "end": "05:00", "timezone": "Mars/Olympus"}],
     "rollout.maintenance_windows[0].timezone", "IANA name"),
    ("rollout.maintenance_windows", [{"start": "01:00", "end": "05:00", "hours": 4}],
     "rollout.maintenance_windows[0].hours", "unknown key"),
    ("registry.type", "s3", "registry.type", "must be one of none, file, http"),
    ("registry", {"type": "file"}, "registry.path", "is required"),
    ("registry", {"type": "http", "url": "http://r", "path": "/x"}, "registry.path", "only used with type file"),
    ("registry", {"url": "http://r"}, "registry.url", "only used with type http"),
    ("registry", {"type": "http", "url": "http://r", "retries": 0}, "registry.retries", ">= 1"),
    ("log_level", "verbose", "log_level", "debug, info, warning, error"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_invalid_configs_name_field_and_fix(tmp_path: Path, path: str, value: Any, field: str, words: str) -> None:
    exc = error(tmp_path, mutate(path, value))
    assert exc.field == field, str(exc)
    assert words in f"{exc.message} (fix: {exc.fix})", str(exc)
    assert exc.fix, str(exc)
    assert str(exc).startswith(f"{tmp_path / 'agent.yml'}: {field}: ")


def test_unknown_key_lists_allowed(tmp_path: Path) -> None:
    exc = error(tmp_path, mutate("rollout.batchfraction", 0.2))
    assert "batch_fraction" in exc.fix and "canary" in exc.fix and "step_deadline" in exc.fix


def test_valid_variants(tmp_path: Path) -> None:
    data = base()
    data["raft"]["peers"] = []
    data["artifacts"]["trusted_keys"].append({"public_key": KEY2, "id": hashlib.sha256(base64.b64decode(KEY2))
                                              .hexdigest().upper()})
    data["artifacts"]["key_threshold"] = 2
    data["checks"] = [{"name": "cmd", "type": "command", "command": "test -d /opt/{version}"},
                      {"name": "port", "type": "tcp", "address": "[::1]:8080", "retries": 1, "interval": 0}]
    data["rollout"] = {"batch_fraction": 1, "canary": True}
    data["registry"] = {"type": "http", "url": "https://registry.example.com/groups/x/", "token_file": "/etc/t"}
    data["log_level"] = "debug"
    cfg = load(tmp_path, data)
    assert cfg.artifacts.key_threshold == 2 and cfg.rollout.batch_fraction == 1.0
    assert isinstance(cfg.rollout.batch_fraction, float)
    assert cfg.registry.url == "https://registry.example.com/groups/x"
    assert cfg.checks[1].address == "[::1]:8080"


def test_failure_budget_bake_time_and_windows(tmp_path: Path) -> None:
    data = base()
    assert load(tmp_path, data).rollout.maintenance_windows == ()
    data["rollout"] = {"max_failures": 2, "bake_time": 30, "maintenance_windows": [
        {"start": "22:00", "end": "02:00", "days": ["sat", "sun"], "timezone": "Europe/Berlin"},
        {"start": "03:00", "end": "04:00"}]}
    r = load(tmp_path, data).rollout
    assert (r.max_failures, r.bake_time) == (2, 30.0) and isinstance(r.bake_time, float)
    assert [w.as_dict() for w in r.maintenance_windows] == [
        {"days": ["sat", "sun"], "start": "22:00", "end": "02:00", "timezone": "Europe/Berlin"},
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "03:00", "end": "04:00",
         "timezone": "UTC"}]


def test_missing_file_yaml_errors_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match=r"nope\.yml: file not found"):
        C.load_config(tmp_path / "nope.yml")
    exc = error(tmp_path, "node_id: [unclosed\n")
    assert "invalid YAML at line" in str(exc) and str(tmp_path / "agent.yml") in str(exc)
    exc = error(tmp_path, "node_id: a\nnode_id: b\n")
    assert "duplicate key 'node_id'" in str(exc)
    assert "the config is empty" in str(error(tmp_path, ""))
    assert "must be a mapping" in str(error(tmp_path, "- a\n- b\n"))


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    data = base()
    del data["checks"]
    text = yaml.safe_dump(data) + (
        "checks:\n"
        "- &base {name: one, type: tcp, address: '127.0.0.1:1', retries: 2}\n"
        "- <<: *base\n"
        "  name: two\n"
    )
    cfg = load(tmp_path, text)
    assert [(c.name, c.retries) for c in cfg.checks] == [("one", 2), ("two", 2)]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcXYZ019._-: /!", min_size=1, max_size=70))
def test_node_id_rule(value: str) -> None:
    data = base()
    data["node_id"] = value
    try:
        cfg = C.parse_config(data, "agent.yml")
    except C.ConfigError as exc:
        assert exc.field in ("node_id", "raft.peers[0].id", "raft.peers[1].id")
        return
    assert cfg.node_id == value and len(value) <= 64 and set(value) <= set("abcXYZ019._-")


def test_parse_host_port() -> None:
    assert C.parse_host_port("node-1.example.com:7100") == ("node-1.example.com", 7100)
    assert C.parse_host_port("[fe80::1]:1") == ("fe80::1", 1)
    for bad in ("host", "host:", "host:0", "[::1]7100", "[zz]:1", "a b:1"):
        with pytest.raises(ValueError):
            C.parse_host_port(bad)


# ----------------------------------------------------------------------------- secret files

def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_read_secret_and_token(tmp_path: Path) -> None:
    secret = write_private(tmp_path / "raft.secret", b"s" * 40 + b"\n")
    assert C.read_secret(secret) == b"s" * 40
    token = write_private(tmp_path / "api.token", b"t0ken-abcdefghijkl\n")
    assert C.read_token(token) == "t0ken-abcdefghijkl"


@pytest.mark.parametrize(("mode", "content", "words"), [
    (0o640, b"s" * 40, "chmod 600"),
    (0o604, b"s" * 40, "chmod 600"),
    (0o600, b"short", "at least 32"),
])
def test_read_secret_refusals(tmp_path: Path, mode: int, content: bytes, words: str) -> None:
    path = write_private(tmp_path / "raft.secret", content, mode)
    with pytest.raises(C.ConfigError) as info:
        C.read_secret(path)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_read_token_refusals(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.read_token(tmp_path / "missing")
    with pytest.raises(C.ConfigError, match="at least 16"):
        C.read_token(write_private(tmp_path / "t1", b"short"))
    with pytest.raises(C.ConfigError, match="chmod 600"):
        C.read_token(write_private(tmp_path / "t2", b"x" * 20, 0o644))
    with pytest.raises(C.ConfigError, match="not a regular file"):
        C.read_token(tmp_path)


def test_peers_file_adds_peers_and_names_itself_in_errors(tmp_path: Path) -> None:
    peers = tmp_path / "peers.yml"
    peers.write_text(yaml.safe_dump([{"id": "web-04", "address": "10.0.0.4:7100", "api_url": "http://10.0.0.4:7200"}]))
    data = base()
    data["raft"]["peers_file"] = str(peers)
    cfg = load(tmp_path, data)
    assert [p.id for p in cfg.raft.peers] == ["web-02", "web-03", "web-04"] and cfg.raft.peers_file == str(peers)
    peers.write_text(yaml.safe_dump([{"id": "web-02", "address": "10.0.0.9:7100", "api_url": "http://10.0.0.9:7200"}]))
    err = error(tmp_path, data)
    assert err.path == str(peers) and "already used by raft.peers[0]" in str(err), str(err)
    peers.write_text(yaml.safe_dump([{"id": "web-05", "adress": "10.0.0.5:7100"}]))
    err = error(tmp_path, data)
    assert err.path == str(peers) and err.field == "peers[0].adress" and "unknown key" in str(err), str(err)
    peers.unlink()
    err = error(tmp_path, data)
    assert "raft.peers_file does not exist" in str(err) and err.path == str(peers)


# ----------------------------------------------------------------------------- log.py

@pytest.fixture()
def log_stream() -> Any:
    stream = io.StringIO()
    hooks, level = (threading.excepthook, sys.excepthook), logging.getLogger().level
    L.setup_logging("debug", stream=stream)
    try:
        yield stream
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "qr_handler", False)]:
            root.removeHandler(handler)
        threading.excepthook, sys.excepthook = hooks
        root.setLevel(level)
        logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_event_is_one_json_line_without_secrets(log_stream: io.StringIO) -> None:
    logger = L.get_logger("worker")
    assert logger.name == "quorum_rollout.worker"
    L.event(logger, "batch_opened", group="g", release="r1", node="n1", term=4, step="rolling",
            token="abc", api_password="p", detail={"secret": "s", "ok": [{"Token": 1, "v": 2}]})
    L.event(logger, "step_failed", level="error", cause="boom\nsecond line")
    (first, second) = lines(log_stream)
    assert first["event"] == "batch_opened" and first["level"] == "info" and first["term"] == 4
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "token" not in first and "api_password" not in first
    assert first["detail"] == {"ok": [{"v": 2}]}
    assert second["level"] == "error" and second["cause"] == "boom\nsecond line"
    assert "abc" not in log_stream.getvalue()


def test_a_mirror_failure_logged_for_a_step_names_group_node_and_step(log_stream: io.StringIO) -> None:
    """Library code (artifacts) logs through a bound callable: its lines carry the step's context."""
    from quorum_rollout import artifacts
    steplog = L.bound(L.get_logger("coordinator"), group="intel-a", node="n1", release="r1", step="download")
    artifacts._emit(steplog, "mirror_failed", level="warning", mirror="http://m", cause="refused")
    (failed,) = lines(log_stream)
    assert failed["event"] == "mirror_failed" and failed["level"] == "warning" and failed["cause"] == "refused"
    assert (failed["group"], failed["node"], failed["release"], failed["step"]) == ("intel-a", "n1", "r1", "download")


def test_pysyncobj_resend_notice_is_a_warning_event(log_stream: io.StringIO) -> None:
    logging.getLogger("pysyncobj.syncobj").critical(
        "truncating already-applied log entries from index %d (last applied: %d) - state machine may have "
        "diverged from other cluster members", 8, 8)
    logging.getLogger("pysyncobj.syncobj").critical("something else")
    resent, other = lines(log_stream)
    assert (resent["level"], resent["event"]) == ("warning", "raft_entries_resent")
    assert "from index 8 (last applied: 8)" in resent["detail"]
    assert (other["level"], other["event"], other["message"]) == ("critical", "log", "something else")


def test_levels_plain_records_and_exceptions(log_stream: io.StringIO) -> None:
    L.setup_logging("warning", stream=log_stream)  # replaces the handler, still one line per event
    logger = L.get_logger("quorum_rollout.api")
    L.event(logger, "ignored", level="info")
    logger.warning("plain %s", "message")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        L.event(logger, "crashed", level="error", exc_info=True, step="x")
    got = lines(log_stream)
    assert [g["event"] for g in got] == ["log", "crashed"]
    assert got[0]["message"] == "plain message" and got[0]["logger"] == "quorum_rollout.api"
    assert "RuntimeError: kaput" in got[1]["exception"]


def test_library_lines_uncaught_thread_errors_and_warnings_are_json(log_stream: io.StringIO) -> None:
    logging.getLogger("pysyncobj.syncobj").warning("Failed to store full dump")

    def boom() -> None:
        raise ValueError("thread bug")

    worker = threading.Thread(target=boom, name="worker-x")
    worker.start()
    worker.join()
    warnings.warn("deprecated knob", DeprecationWarning, stacklevel=1)
    got = lines(log_stream)  # every line parses as JSON
    assert got[0]["logger"] == "pysyncobj.syncobj" and got[0]["message"] == "Failed to store full dump"
    crash = next(g for g in got if g["event"] == "thread_crashed")
    assert crash["thread"] == "worker-x" and "ValueError: thread bug" in crash["exception"]
    assert any(g.get("logger") == "py.warnings" and "deprecated knob" in g["message"] for g in got)


def test_a_line_repeated_in_a_burst_is_suppressed_and_counted() -> None:
    now = [0.0]
    stream = io.StringIO()
    handler = L.JsonHandler(stream, burst=3, window=60.0, clock=lambda: now[0])
    logger = logging.getLogger("pysyncobj.test-repeat")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(600):  # ten a second for a minute, like pysyncobj's compaction failure
            logger.warning("Failed to store full dump")
            now[0] += 0.1
        logger.warning("another line")
        now[0] = 61.0
        logger.warning("Failed to store full dump")
    finally:
        logger.removeHandler(handler)
    got = lines(stream)
    messages = [g.get("message") or g["event"] for g in got]
    dump = "Failed to store full dump"
    assert messages == [dump] * 3 + ["another line", "log_suppressed", dump]
    summary = got[4]
    assert summary["suppressed"] == 597 and summary["repeated"] == "Failed to store full dump"
    assert summary["source"] == "pysyncobj.test-repeat"


# ----------------------------------------------------------------------------- docs/config.md

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_example_is_valid_and_every_field_is_documented() -> None:
    text = DOCS.read_text()
    example = text.split("## Full example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = C.parse_config(yaml.safe_load(example), "docs/config.md")
    assert cfg.group == "intel-zone-a" and len(cfg.checks) == 3
    documented = set(re.findall(r"^\| `([a-z_.\[\]]+)`", text, re.MULTILINE))

    sections = {"raft": C.RaftConfig, "api": C.ApiConfig, "artifacts": C.ArtifactsConfig, "install": C.InstallConfig,
                "rollout": C.RolloutConfig, "registry": C.RegistryConfig, "notify": C.NotifyConfig, "hooks": C.Hooks}
    items = {"peers": C.Peer, "trusted_keys": C.TrustedKey, "checks": C.Check,
             "maintenance_windows": C.MaintenanceWindow}

    def walk(cls: type, prefix: str) -> set[str]:
        names: set[str] = set()
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            if f.name in sections:
                names |= walk(sections[f.name], name + ".")
            elif f.name in items:
                names |= {name} | walk(items[f.name], name + "[].")
            elif f.name != "source":
                names.add(name)
        return names

    assert walk(C.AgentConfig, "") - documented == set()


def test_docs_defaults_are_the_defaults_the_parser_uses() -> None:
    """Each default is written once (the dataclass field; the parser reads it from there): the
    docs' default column must say the same, and "required" / "none" must be true as well."""
    sections = {"raft": C.RaftConfig, "api": C.ApiConfig, "artifacts": C.ArtifactsConfig, "install": C.InstallConfig,
                "hooks": C.Hooks, "rollout": C.RolloutConfig, "registry": C.RegistryConfig, "notify": C.NotifyConfig,
                "peers[]": C.Peer, "trusted_keys[]": C.TrustedKey, "checks[]": C.Check,
                "maintenance_windows[]": C.MaintenanceWindow}
    checked = 0
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) < 4 or not cells[0].startswith("`") or ("." not in cells[0] and "[]" not in cells[0]):
            continue
        path, default = cells[0].strip("`"), cells[2]
        *parents, name = path.split(".")
        owner = sections[parents[-1]] if parents else C.AgentConfig
        fields = {f.name: f for f in dataclasses.fields(owner)}
        if name not in fields:
            continue  # a sub-table's own row (e.g. install.hooks), documented by its fields
        real = fields[name].default
        if default.startswith("required for"):
            continue  # required by the type of the check or sink, None otherwise
        if default.startswith("required"):
            assert real is dataclasses.MISSING, f"{path}: documented as required, has default {real!r}"
        elif default.startswith("none"):
            assert real is None, f"{path}: documented as none, defaults to {real!r}"
        elif re.fullmatch(r"`[^`<]+`", default):
            expected = yaml.safe_load(default.strip("`"))
            assert (list(real) if isinstance(real, tuple) else real) == expected, f"{path}: docs say {default}"
        else:
            continue
        checked += 1
    assert checked >= 50, checked



def test_the_check_types_are_documented_as_the_config_knows_them() -> None:
    (row,) = [line for line in DOCS.read_text().splitlines() if line.startswith("| `checks[].type` |")]
    assert re.findall(r"`([a-z]+)`", row.split("|")[2]) == list(C.CHECK_TYPES)
    for kind, names in C.CHECK_FIELDS.items():
        for name in names:
            assert f"| `checks[].{name}` |" in DOCS.read_text(), f"{kind} field {name} is not documented"
