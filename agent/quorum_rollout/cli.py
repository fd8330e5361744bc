"""`quorum-rollout` command line: agent, service, status, release, channel, keygen, sign, verify, check-config."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from . import __version__, signing, watch
from .config import AgentConfig, ConfigError, load_config, read_token
from .contract import ACTIONS
from .log import setup_logging

# --------------------------------------------------------------------------------------------
# talking to an agent


def _client(args: argparse.Namespace) -> tuple[str, dict[str, str], Any]:
    """URL, headers and TLS verify setting from -c FILE or --url/--token-file."""
    if args.config:
        cfg = load_config(args.config)
        url = args.url or cfg.api.url
        token = read_token(args.token_file or cfg.api.token_file)
    else:
        url = args.url or os.environ.get("QUORUM_ROLLOUT_API_URL")
        token_file = args.token_file or os.environ.get("QUORUM_ROLLOUT_API_TOKEN_FILE")
        if not url or not token_file:
            raise SystemExit("error: give -c AGENT_CONFIG, or --url and --token-file "
                             "(or QUORUM_ROLLOUT_API_URL / QUORUM_ROLLOUT_API_TOKEN_FILE)")
        token = read_token(token_file)
    return url.rstrip("/"), {"Authorization": f"Bearer {token}"}, args.ca_path or True


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url, headers, verify = _client(args)
    try:
        resp = requests.request(method, url + path, json=body, headers=headers, verify=verify, timeout=args.timeout)
    except requests.RequestException as exc:
        raise SystemExit(f"error: cannot reach the agent at {url}: {exc}") from None
    try:
        doc = resp.json()
    except ValueError:
        raise SystemExit(f"error: {resp.status_code} from {url}{path} is not JSON") from None
    if resp.status_code >= 400:
        detail = json.dumps(doc.get("detail") or {})
        raise SystemExit(f"error: {resp.status_code} {doc.get('error')} {detail}")
    return doc


def _render_status(doc: dict[str, Any]) -> str:
    node, state = doc["node"], doc["state"]
    release = state["release"]
    lines = [
        f"group {doc['group']}  node {node['id']} ({node['role']}, term {node['term']}, "
        f"leader {node['leader'] or '-'})  group runs {state['current_version'] or '-'}",
    ]
    polled, paused = node.get("channel"), (state.get("channel") or {}).get("paused", False)
    if polled or paused:
        name = polled["name"] if polled else "(not configured on this node)"
        last = (polled or {}).get("decision") or {}
        seen = (polled or {}).get("pointer") or {}
        tail = f"; last poll: {seen.get('version')} ({last.get('reason')})" if last else ""
        if polled and polled.get("error"):
            tail = f"; last poll refused: {polled['error'][:200]}"
        lines.append(f"channel {name}: {'paused' if paused else 'active'}{tail}")
    if not release:
        lines.append("no release yet")
        return "\n".join(lines)
    batch = release["batch"]
    progress = f"batch {batch + 1}/{len(release['batches'])}" if batch is not None else "-"
    waiting = f"  ({doc['waiting']})" if doc.get("waiting") else ""
    lines.append(f"release {release['id']}  state {release['state']}  {progress}{waiting}")
    for f in release.get("failed_within_budget") or []:
        lines.append(f"failed within the budget (reverted alone): host {f['host']} at {f['step']}: {f['reason']}")
    if release["failure"]:
        f = release["failure"]
        lines.append(f"failure: host {f['host']} at {f['step']}: {f['reason']}")
    lines.append(f"{'HOST':<20} {'STATUS':<15} {'VERSION':<12} STEP")
    for host, entry in sorted(release["hosts"].items()):
        lines.append(f"{host:<20} {entry['status']:<15} {entry['version'] or '-'!s:<12} {entry['step'] or ''}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    if args.page_url:
        from .page import PREFIX, page_key

        url, headers, _verify = _client(args)
        print(f"{url}{PREFIX}/{page_key(headers['Authorization'].split(' ', 1)[1])}")
        return 0
    doc = _call(args, "GET", "/v1/status")
    print(json.dumps(doc, indent=2) if args.json else _render_status(doc))
    return 0


def _submit(args: argparse.Namespace, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """POST a command with its own operation id; when the agent answers 202 (not committed yet),
    follow GET /v1/operations/<id> until it is committed or rejected (or --timeout passes).
    Returns (answer, outcome) with outcome "committed", "rejected" or "pending"."""
    body = {**body, "operation_id": uuid.uuid4().hex}
    doc = _call(args, "POST", path, body)
    if doc.get("changed") is not None:
        return doc, "committed"
    op_id = doc["operation"]["id"]
    deadline = time.monotonic() + max(args.timeout, 30.0)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        op = _call(args, "GET", f"/v1/operations/{op_id}")
        if op["status"] in ("committed", "rejected"):
            # the agent knows what a late commit came to if it applied it since it started
            answer = {**doc, "operation": op, "changed": op.get("changed"), "reason": op.get("reason", doc["reason"]),
                      "release": _call(args, "GET", "/v1/status")["state"]["release"]}
            return answer, op["status"]
    return doc, "pending"


def _outcome_line(what: str, doc: dict[str, Any], outcome: str) -> str:
    """'started: release 2.4' / 'unchanged: group already runs 2.4' / 'pending: ...' / 'refused: ...'."""
    if outcome == "pending":
        return (f"pending: {what} is not committed yet and may still commit (operation {doc['operation']['id']}); "
                "check with `quorum-rollout status` before sending it again")
    if outcome == "rejected":
        return f"refused: {what}: {doc['operation'].get('reason')}"
    if doc.get("changed") is False:
        return f"unchanged: {doc['reason']}"
    if doc.get("changed") is None:
        return f"committed: {what} (what it changed is not known here: see `quorum-rollout status`)"
    return f"{'started' if what.startswith('release') else 'done'}: {what}"


def cmd_release(args: argparse.Namespace) -> int:
    doc, outcome = _submit(args, "/v1/releases", {"version": args.version, "allow_downgrade": args.allow_downgrade,
                                                  "allow_unreachable": args.allow_unreachable})
    print(json.dumps(doc, indent=2) if args.json else _outcome_line(f"release {args.version}", doc, outcome))
    return {"committed": 0, "rejected": 1}.get(outcome, 3)


def cmd_channel(args: argparse.Namespace) -> int:
    """Pause or resume the group's release channel (autonomous mode)."""
    doc, outcome = _submit(args, f"/v1/channel/{args.action}", {})
    print(json.dumps(doc, indent=2) if args.json else _outcome_line(f"channel {args.action}", doc, outcome))
    return {"committed": 0, "rejected": 1}.get(outcome, 3)


def cmd_action(args: argparse.Namespace) -> int:
    release = _call(args, "GET", "/v1/status")["state"]["release"]
    if release is None:
        raise SystemExit("error: the group has no release yet")
    # Name the release we mean: if another one started since we looked, the agent refuses (409).
    doc, outcome = _submit(args, f"/v1/releases/current/{args.action}", {"release": release["id"]})
    print(json.dumps(doc, indent=2) if args.json else _outcome_line(f"{args.action} {release['id']}", doc, outcome))
    return {"committed": 0, "rejected": 1}.get(outcome, 3)


# --------------------------------------------------------------------------------------------
# agent process


def cmd_agent(args: argparse.Namespace) -> int:
    from .agent import run

    cfg = load_config(args.config)
    setup_logging(cfg.log_level)
    return run(cfg)


def cmd_reform(args: argparse.Namespace) -> int:
    """Re-form a group that lost its majority for good from its survivors (run on every survivor,
    agents stopped, with the same state): the Raft journal is put aside and the agent starts from
    `--state` with the survivors as the whole group."""
    from .agent import REFORM_SEED
    from .fsm import reform

    cfg = load_config(args.config)
    if not args.i_understand:
        raise SystemExit("error: re-forming a group discards the lost members and the Raft journal of this node; "
                         "read docs/operations.md (A group that lost its majority for good), then add --i-understand")
    if _running_pid(cfg):
        raise SystemExit(f"error: the agent of {cfg.node_id} is running; stop it first "
                         f"(quorum-rollout service stop -c {args.config}, or systemctl stop quorum-rollout)")
    doc = json.loads(Path(args.state).read_text())
    state = doc.get("state", doc)  # a whole GET /v1/status answer, or its state
    if state.get("group") != cfg.group:
        raise SystemExit(f"error: {args.state} is the state of group {state.get('group')!r}, this node is in "
                         f"{cfg.group!r}")
    survivors = sorted({s.strip() for s in args.survivors.split(",") if s.strip()})
    if cfg.node_id not in survivors:
        raise SystemExit(f"error: this node ({cfg.node_id}) is not among the survivors {survivors}")
    try:
        seed = reform(state, survivors, time=time.time(), actor=cfg.node_id)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    data = Path(cfg.data_dir)
    raft = data / "raft"
    if raft.exists():
        aside = data / f"raft.before-reform-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        raft.rename(aside)
        print(f"moved {raft} to {aside}")
    fd = os.open(data / REFORM_SEED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(seed, fh)
    print(f"{cfg.node_id}: will start group {cfg.group} as {', '.join(survivors)} "
          f"(version {seed['current_version'] or '-'}); start the agent of every survivor now")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: ok (group {cfg.group}, node {cfg.node_id}, {len(cfg.raft.peers)} peers)")
    return 0


def _pidfile(cfg: AgentConfig) -> Path:
    return Path(cfg.data_dir) / "agent.pid"


def _running_pid(cfg: AgentConfig) -> int | None:
    try:
        pid = int(_pidfile(cfg).read_text().strip())
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"quorum" in cmdline else None


def cmd_service(args: argparse.Namespace) -> int:
    """A minimal service manager for hosts without systemd as PID 1 (containers, tests, demos)."""
    cfg = load_config(args.config)
    pid = _running_pid(cfg)
    if args.action == "status":
        print(f"running (pid {pid})" if pid else "stopped")
        return 0 if pid else 3
    if args.action in ("stop", "restart") and pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.wait
        while _running_pid(cfg) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _running_pid(cfg):
            os.kill(pid, signal.SIGKILL)
        _pidfile(cfg).unlink(missing_ok=True)
        pid = None
        if args.action == "stop":
            print("stopped")
            return 0
    if args.action == "stop":
        print("not running")
        return 0
    if pid:
        print(f"already running (pid {pid})")
        return 0
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    logfile = Path(cfg.data_dir) / "agent.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "quorum_rollout", "agent", "-c", args.config],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _pidfile(cfg).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + args.wait
    token = read_token(cfg.api.token_file)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:]
            raise SystemExit(f"error: agent exited with {proc.returncode}; log {logfile}:\n{tail}")
        try:
            requests.get(cfg.api.url + "/v1/status", headers={"Authorization": f"Bearer {token}"},
                         timeout=1, verify=False)  # noqa: S501
            print(f"started (pid {proc.pid}), log {logfile}")
            return 0
        except requests.RequestException:
            time.sleep(0.1)
    raise SystemExit(f"error: agent (pid {proc.pid}) did not answer on {cfg.api.url} within {args.wait}s; "
                     f"see {logfile}")


# --------------------------------------------------------------------------------------------
# keys and manifests


def cmd_keygen(args: argparse.Namespace) -> int:
    private_pem, public_b64 = signing.generate_keypair()
    key_path, pub_path = Path(args.out + ".key"), Path(args.out + ".pub")
    if key_path.exists() and not args.force:
        raise SystemExit(f"error: {key_path} exists; use --force to overwrite")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    pub_path.write_text(public_b64 + "\n")
    print(json.dumps({"private_key": str(key_path), "public_key": public_b64, "id": signing.key_id(public_b64)}))
    return 0


def _write_pointer(mirror_dir: str, name: str, channel: str, version: str, keys: list[str],
                   expires_days: float) -> Path:
    """Sign `<mirror_dir>/<name>/channels/<channel>.json` naming `version`, replaced atomically (mirrors
    serve it while it changes)."""
    signed = signing.build_pointer(name, channel, version, expires_in=expires_days * 86400, now=time.time())
    doc = signing.sign(signed, [signing.load_private_key(k) for k in keys])
    dest = Path(mirror_dir) / name / "channels" / f"{channel}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def cmd_channel_publish(args: argparse.Namespace) -> int:
    """Point a channel at a version already published in the mirror directory."""
    manifest = Path(args.mirror_dir) / args.name / args.version / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"error: {manifest} does not exist: publish {args.name} {args.version} first "
                         f"(quorum-rollout sign ... --mirror-dir {args.mirror_dir}), then point the channel at it")
    dest = _write_pointer(args.mirror_dir, args.name, args.channel, args.version, args.key, args.expires_days)
    print(f"published {dest}: channel {args.channel} -> {args.name} {args.version}")
    return 0


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")  # gzip bzip2 xz zstd


def cmd_sign(args: argparse.Namespace) -> int:
    if args.channel and not args.mirror_dir:
        raise SystemExit("error: --channel needs --mirror-dir: the pointer goes to "
                         "<mirror-dir>/<name>/channels/<channel>.json, next to the release")
    if args.chunks and not args.mirror_dir:
        raise SystemExit("error: --chunks needs --mirror-dir: the chunks go to <mirror-dir>/<name>/chunks/ and the "
                         "index next to the release")
    artifact = Path(args.artifact)
    ref = digest = None
    if args.chunks:
        from . import chunks

        with open(artifact, "rb") as f:
            head = f.read(6)
        if any(head.startswith(magic) for magic in _COMPRESSED):
            print(f"warning: {artifact} is compressed: chunks of compressed data rarely repeat between releases, "
                  "so a delta saves little; publish the uncompressed .tar (each chunk is stored zstd-compressed)",
                  file=sys.stderr)
        index, ref = chunks.publish(artifact, Path(args.mirror_dir) / args.name, args.version)
        digest = (index.sha256, index.size)
    signed = signing.build_signed(artifact, args.name, args.version, expires_in=args.expires_days * 86400,
                                  targets=args.target or None, now=time.time(), chunks=ref, digest=digest)
    manifest = signing.sign(signed, [signing.load_private_key(k) for k in args.key])
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if args.mirror_dir:
        dest = Path(args.mirror_dir) / args.name / args.version
        dest.mkdir(parents=True, exist_ok=True)
        if artifact.resolve() != (dest / artifact.name).resolve():
            shutil.copyfile(artifact, dest / artifact.name)
        (dest / "manifest.json").write_text(text)
        print(f"published {dest / 'manifest.json'} and {dest / artifact.name}"
              + (f" (chunk index {dest / ref.index})" if ref else ""))
        if args.channel:
            pointer = _write_pointer(args.mirror_dir, args.name, args.channel, args.version, args.key,
                                     args.expires_days)
            print(f"published {pointer}: channel {args.channel} -> {args.name} {args.version}")
    elif args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    keys = {signing.key_id(k): k for k in (Path(p).read_text().strip() for p in args.trusted_key)}
    policy = signing.TrustPolicy(keys, args.threshold, frozenset())
    manifest = signing.verify_manifest(Path(args.manifest).read_bytes(), policy, now=time.time(),
                                       name=args.name, version=args.version, group=args.group)
    if args.artifact:
        signing.verify_file(Path(args.artifact), manifest)
    print(f"ok: {manifest.name} {manifest.version} sha256 {manifest.sha256}")
    return 0


# --------------------------------------------------------------------------------------------


def _channel_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value) or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value!r} is not a channel name (1-64 characters from A-Z a-z 0-9 . _ -)")
    return value


def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="agent config file (gives the URL and token file)")
    p.add_argument("--url", help="agent API URL (default from -c, or $QUORUM_ROLLOUT_API_URL)")
    p.add_argument("--token-file", help="API token file (default from -c)")
    p.add_argument("--ca-path", help="CA bundle for an agent API with TLS")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="quorum-rollout", description=__doc__)
    ap.add_argument("--version", action="version", version=__version__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("agent", help="run the agent in the foreground")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("service", help="start/stop the agent as a background process (no systemd)")
    p.add_argument("action", choices=["start", "stop", "restart", "status"])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for start/stop")
    p.set_defaults(func=cmd_service)

    p = sub.add_parser("reform", help="re-form a group that lost its majority for good, from its survivors "
                                      "(see docs/operations.md)")
    p.add_argument("-c", "--config", required=True, help="this node's agent config")
    p.add_argument("--state", required=True, help="the group state to start from: a saved GET /v1/status answer "
                   "(the same file on every survivor: the one with the highest commit_index)")
    p.add_argument("--survivors", required=True, help="comma-separated node ids of the members that remain")
    p.add_argument("--i-understand", action="store_true", help="confirm: the other members are gone for good")
    p.set_defaults(func=cmd_reform)

    p = sub.add_parser("check-config", help="validate an agent config file")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("status", help="show the group's replicated release state")
    p.add_argument("--page-url", action="store_true", help="print the URL of the agent's read-only HTML status "
                   "page (it carries the page key: share it as a read-only credential) and exit")
    _api_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="live view of the releases of a group or of a whole fleet "
                                     "(waits for the next release; --once / --json for scripts)",
                       description=watch.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    watch.add_arguments(p)
    p.set_defaults(func=watch.cmd_watch)

    p = sub.add_parser("release", help="start a release of VERSION in the group")
    p.add_argument("version")
    p.add_argument("--allow-downgrade", action="store_true", help="go back to a lower version on purpose")
    p.add_argument("--allow-unreachable", action="store_true",
                   help="release to the reachable members only (the leader has not heard from the others)")
    _api_args(p)
    p.set_defaults(func=cmd_release)

    for action in ACTIONS:
        p = sub.add_parser(action, help=f"{action} the group's current release")
        _api_args(p)
        p.set_defaults(func=cmd_action, action=action)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair (OUT.key, OUT.pub)")
    p.add_argument("--out", required=True, help="path prefix")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="write a signed manifest for an artifact")
    p.add_argument("artifact")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--key", action="append", required=True, help="private key (repeat for k-of-n)")
    p.add_argument("--expires-days", type=float, default=30.0)
    p.add_argument("--target", action="append", help="group pattern this release is for (repeatable)")
    p.add_argument("--mirror-dir", help="publish artifact + manifest in mirror layout under this dir")
    p.add_argument("--channel", type=_channel_name,
                   help="also point this channel at the release (<mirror-dir>/<name>/channels/<channel>.json)")
    p.add_argument("--chunks", action="store_true",
                   help="delta release: also publish a signed chunk index and the chunks "
                        "(<mirror-dir>/<name>/chunks/); agents fetch only the chunks they lack (docs/delta.md)")
    p.add_argument("-o", "--output", help="manifest path (default stdout)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("channel", help="autonomous mode: pause/resume a group's channel, or publish a pointer")
    channel_sub = p.add_subparsers(dest="action", required=True)
    for action, text in (("pause", "the leader starts nothing from the channel in this group"),
                         ("resume", "the leader starts what the channel names again")):
        q = channel_sub.add_parser(action, help=text)
        _api_args(q)
        q.set_defaults(func=cmd_channel)
    q = channel_sub.add_parser("publish", help="point a channel at a version published in a mirror directory")
    q.add_argument("--name", required=True)
    q.add_argument("--version", required=True)
    q.add_argument("--channel", required=True, type=_channel_name)
    q.add_argument("--key", action="append", required=True, help="private key (repeat for k-of-n)")
    q.add_argument("--expires-days", type=float, default=30.0)
    q.add_argument("--mirror-dir", required=True, help="the mirror directory the release is published in")
    q.set_defaults(func=cmd_channel_publish)

    p = sub.add_parser("verify", help="verify a manifest (and artifact) against trusted keys")
    p.add_argument("manifest")
    p.add_argument("--artifact")
    p.add_argument("--trusted-key", action="append", required=True, help="public key file (base64)")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--name")
    p.add_argument("--version")
    p.add_argument("--group")
    p.set_defaults(func=cmd_verify)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except signing.TrustError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
