"""`quorum-rollout watch`: a live view of the releases of one group or of a whole fleet.

Where it looks (any mix, each repeatable): `-c AGENT_CONFIG`, `--url URL` (with `--token-file`), and
`--hosts-file PATH`: the controller's endpoint records that `site.yml` writes
(`<quorum_rollout_controller_dir>/hosts/<host>.json`: group, API URL, token file), given as one
record, the `hosts/` directory or the controller directory. Records name their group, so a fleet
costs one request per group and poll: the next host of the group is asked only when one does not
answer. Plain URLs are each asked (their group is known only from the answer); answers for the same
group are merged, the one with the newest committed state wins.

The pure part (`summarize`, `fleet_summary`) turns status documents into rows; the shell polls,
draws (`rich`: in place on a terminal, one table per change otherwise) and, with `--once`, exits
0 when every group is current, 1 when one is not, 2 when one could not be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .config import ConfigError, load_config, read_token
from .contract import CURRENT, ROLLED_BACK, ROLLING_BACK, TERMINAL

EXIT_CURRENT, EXIT_NOT_CURRENT, EXIT_UNREADABLE = 0, 1, 2
DESCRIPTION = """A live view of the releases of one group or of a whole fleet: a row per group (--hosts: and per
host) with a progress bar, batch k of n, state, elapsed, ETA and the last event. It waits for the
next release when none is running and keeps watching until interrupted (--until-done: until no
release is in progress). Watch the agent of -c, any --url, and the endpoint records site.yml
writes on the controller (--hosts-file inventory/.quorum-rollout): one request per group and poll.
Exit codes of --once and --until-done: 0 every group current, 1 one is not, 2 one could not be read."""
_REVERTED = ("reverted", "revert_failed")


@dataclass(frozen=True)
class Endpoint:
    """One agent API to ask; `group`/`host` when a controller record names them."""

    url: str
    token_file: str
    group: str | None = None
    host: str | None = None


# --------------------------------------------------------------------------------------------
# where to look


def _records(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "hosts").is_dir():
        path = path / "hosts"
    if path.is_dir():
        return sorted(path.glob("*.json"))
    raise SystemExit(f"error: --hosts-file {path}: no such file or directory (give a hosts/<host>.json record, "
                     "the hosts/ directory or the controller directory that site.yml wrote, "
                     "quorum_rollout_controller_dir)")


def endpoints(args: argparse.Namespace) -> list[Endpoint]:
    found: list[Endpoint] = []
    if args.config:
        cfg = load_config(args.config)
        found.append(Endpoint(cfg.api.url.rstrip("/"), args.token_file or cfg.api.token_file, cfg.group, cfg.node_id))
    urls = list(args.url or [])
    if not urls and not args.config and not args.hosts_file and os.environ.get("QUORUM_ROLLOUT_API_URL"):
        urls = [os.environ["QUORUM_ROLLOUT_API_URL"]]
    if urls:
        token_file = args.token_file or os.environ.get("QUORUM_ROLLOUT_API_TOKEN_FILE")
        if not token_file:
            raise SystemExit("error: --url needs --token-file (or $QUORUM_ROLLOUT_API_TOKEN_FILE)")
        found += [Endpoint(u.rstrip("/"), token_file) for u in urls]
    for given in args.hosts_file or []:
        for path in _records(Path(given)):
            try:
                rec = json.loads(path.read_text())
                found.append(Endpoint(rec["api_url"].rstrip("/"), rec["api_token_file"], rec["group"], rec["host"]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SystemExit(f"error: {path}: not an endpoint record written by site.yml "
                                 f"(needs host, group, api_url, api_token_file): {exc!r}") from None
    if not found:
        raise SystemExit("error: nothing to watch: give -c AGENT_CONFIG, --url URL --token-file FILE, or "
                         "--hosts-file DIR (the controller directory site.yml wrote)")
    return found


# --------------------------------------------------------------------------------------------
# polling


class Poller:
    """Asks every group once per poll: records with a known group are tried in turn (the last one
    that answered first); plain URLs are all asked."""

    def __init__(self, found: list[Endpoint], *, timeout: float, verify: Any) -> None:
        self.timeout, self.verify = timeout, verify
        self.by_group: dict[str, list[Endpoint]] = {}
        self.plain = [e for e in found if e.group is None]
        for e in found:
            if e.group is not None:
                self.by_group.setdefault(e.group, []).append(e)
        self._session = requests.Session()
        self._pool = ThreadPoolExecutor(max_workers=min(32, len(self.by_group) + len(self.plain)) or 1)

    def _get(self, e: Endpoint) -> dict[str, Any]:
        try:
            token = read_token(e.token_file)
        except ConfigError as exc:
            raise RuntimeError(str(exc)) from None
        try:
            resp = self._session.get(e.url + "/v1/status", headers={"Authorization": f"Bearer {token}"},
                                     timeout=self.timeout, verify=self.verify)
            doc = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise RuntimeError(f"cannot read {e.url}/v1/status: {exc}") from None
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code} from {e.url}/v1/status: {doc.get('error')}")
        return doc

    def _group(self, group: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        errors = []
        members = self.by_group[group]
        for e in list(members):
            try:
                doc = self._get(e)
            except RuntimeError as exc:
                errors.append({"group": group, "host": e.host, "url": e.url, "error": str(exc)})
                continue
            members.remove(e)
            members.insert(0, e)  # ask it first next time
            return doc, []
        return None, errors

    def _plain(self, e: Endpoint) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        try:
            return self._get(e), []
        except RuntimeError as exc:
            return None, [{"group": None, "host": None, "url": e.url, "error": str(exc)}]

    def poll(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(status documents, one per group answered; errors, for groups or URLs nobody answered for)."""
        jobs = [self._pool.submit(self._group, g) for g in sorted(self.by_group)]
        jobs += [self._pool.submit(self._plain, e) for e in self.plain]
        newest: dict[str, dict[str, Any]] = {}
        errors: list[dict[str, Any]] = []
        for job in jobs:
            doc, errs = job.result()
            errors += errs
            if doc is not None:
                held = newest.get(doc["group"])
                if held is None or doc["state"]["seq"] > held["state"]["seq"]:
                    newest[doc["group"]] = doc
        answered = set(newest)
        errors = [e for e in errors if e["group"] is None or e["group"] not in answered]
        return [newest[g] for g in sorted(newest)], errors

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._session.close()


# --------------------------------------------------------------------------------------------
# rows (pure)


def _last_event(state: dict[str, Any]) -> dict[str, Any] | None:
    history = state.get("history") or []
    if not history:
        return None
    e = history[-1]
    text = e.get("detail") or e.get("op")
    return {"time": e.get("time"), "op": e.get("op"), "text": text, "actor": e.get("actor")}


def summarize(doc: dict[str, Any], now: float) -> dict[str, Any]:
    """One group's row from its GET /v1/status document at wall time `now`."""
    state = doc["state"]
    release = state.get("release")
    members = doc.get("members") or []
    row: dict[str, Any] = {
        "group": doc["group"], "version": state.get("current_version"), "leader": doc["node"].get("leader"),
        "members": len(members), "unreachable": sorted(m["id"] for m in members if not m.get("reachable", True)),
        "state": CURRENT if state.get("current_version") else "no_release",
        "release": None, "previous_version": None, "target_version": None, "batch": None, "batches": None,
        "done": 0, "total": 0,
        "elapsed": None, "eta": None, "failure": None, "last_event": _last_event(state), "hosts": [],
        "current": release is None and bool(state.get("current_version")),
    }
    if not release:
        return row
    hosts = release["hosts"]
    back = release["state"] in (ROLLING_BACK, ROLLED_BACK)
    if back:  # progress of the rollback: hosts returned to the previous version / hosts to return
        done = sum(1 for h in hosts.values() if h["status"] in _REVERTED)
        total = done + sum(1 for h in hosts.values() if h["status"] == "revert_pending")
    else:
        done, total = sum(1 for h in hosts.values() if h["status"] == "updated"), len(hosts)
    started, updated = release.get("started_at"), release.get("updated_at")
    terminal = release["state"] in TERMINAL
    end = updated if terminal and updated is not None else now
    elapsed = max(0.0, end - started) if started is not None else None
    eta = None
    if not terminal and not back and 0 < done < total:
        since = _rolling_since(state, release) or started
        if since is not None:
            eta = max(0.0, (now - since) / done * (total - done))
    row.update(
        state=release["state"], release=release["id"], target_version=release["version"],
        previous_version=release.get("previous_version"),
        batch=release["batch"] + 1 if release.get("batch") is not None else None,
        batches=len(release.get("batches") or []) or None, done=done, total=total,
        elapsed=round(elapsed, 1) if elapsed is not None else None, eta=round(eta, 1) if eta is not None else None,
        failure=release.get("failure"), current=release["state"] == CURRENT,
        hosts=[{"id": h, **{k: e.get(k) for k in ("status", "version", "step", "detail")}}
               for h, e in sorted(hosts.items())],
    )
    return row


def _rolling_since(state: dict[str, Any], release: dict[str, Any]) -> float | None:
    """When the release's first batch opened (ETA counts from there: download and verify are done)."""
    for e in state.get("history") or []:
        if e.get("release") == release["id"] and str(e.get("detail", "")).startswith("batch 1 of"):
            return e.get("time")
    return None


def fleet_summary(docs: list[dict[str, Any]], errors: list[dict[str, Any]], now: float) -> dict[str, Any]:
    groups = [summarize(d, now) for d in docs]
    return {"time": now, "groups": groups, "errors": errors,
            "all_current": bool(groups) and not errors and all(g["current"] for g in groups)}


def exit_code(summary: dict[str, Any]) -> int:
    if summary["errors"] or not summary["groups"]:
        return EXIT_UNREADABLE
    return EXIT_CURRENT if summary["all_current"] else EXIT_NOT_CURRENT


def in_progress(summary: dict[str, Any]) -> bool:
    return any(g["release"] and g["state"] not in TERMINAL for g in summary["groups"])


def _changes(summary: dict[str, Any]) -> str:
    """What a reader would call a change: everything but the clock-driven fields."""
    return json.dumps([{k: v for k, v in g.items() if k not in ("elapsed", "eta")} for g in summary["groups"]]
                      + summary["errors"], sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# drawing


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


_STYLE = {"current": "green", "rolled_back": "red", "rolling_back": "red", "aborted": "red", "paused": "yellow",
          "no_release": "dim"}


def render(summary: dict[str, Any], *, hosts: bool) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(title="quorum-rollout watch", title_justify="left", expand=False)
    for name in ("GROUP", "STATE", "RELEASE", "PROGRESS", "", "BATCH", "ELAPSED", "ETA", "LAST EVENT"):
        table.add_column(name, no_wrap=name != "LAST EVENT")
    now = summary["time"]
    for g in summary["groups"]:
        last = g["last_event"]
        event = f"{last['text']} ({duration(now - last['time'])} ago)" if last and last.get("time") else "-"
        if g["failure"]:
            f = g["failure"]
            event = f"{f.get('host')} failed at {f.get('step')}: {f.get('reason')}"
        if g["unreachable"]:
            event += f"; unreachable: {', '.join(g['unreachable'])}"
        total = g["total"] or 1
        table.add_row(
            g["group"], Text(g["state"], style=_STYLE.get(g["state"], "cyan")),
            f"{g['release']} ({g['previous_version'] or '-'} -> {g['target_version']})" if g["release"]
            else (g["version"] or "-"),
            ProgressBar(total=total, completed=g["done"], width=20,
                        complete_style="red" if g["state"] in (ROLLING_BACK, ROLLED_BACK) else "green"),
            f"{g['done']}/{g['total']}", f"{g['batch']}/{g['batches']}" if g["batch"] else "-",
            duration(g["elapsed"]), duration(g["eta"]), event)
        if hosts:
            for h in g["hosts"]:
                table.add_row(f"  {h['id']}", Text(h["status"], style=_STYLE.get(h["status"], "")),
                              h["version"] or "-", "", "", "", "", "", h["detail"] or h["step"] or "")
    for e in summary["errors"]:
        table.add_row(e["group"] or e["url"], Text("unreadable", style="red"), "-", "", "", "", "", "",
                      e["error"])
    if not summary["groups"] and not summary["errors"]:
        table.add_row("-", "no group answered yet", *[""] * 7)
    return table


# --------------------------------------------------------------------------------------------
# the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="an agent config file: watch that agent's group (its URL and token file)")
    p.add_argument("--url", action="append", help="an agent API URL to watch (repeatable; every URL uses "
                   "--token-file; default $QUORUM_ROLLOUT_API_URL)")
    p.add_argument("--token-file", help="API token file for the --url agents (default "
                   "$QUORUM_ROLLOUT_API_TOKEN_FILE; with -c, overrides the config's)")
    p.add_argument("--hosts-file", action="append", metavar="PATH",
                   help="controller endpoint records written by site.yml: one hosts/<host>.json, the hosts/ "
                        "directory or the controller directory (quorum_rollout_controller_dir); repeatable")
    p.add_argument("--ca-path", help="CA bundle for agent APIs with TLS")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per status request (default 5)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two polls (default 1)")
    p.add_argument("--hosts", action="store_true", help="a row per host under each group, too")
    p.add_argument("--once", action="store_true", help="print the view once and exit: 0 if every group is "
                   "current, 1 if one is not, 2 if one could not be read")
    p.add_argument("--until-done", action="store_true", help="exit when no watched group has a release in "
                   "progress (exit code as with --once); without it, watch waits for the next release until "
                   "interrupted")
    p.add_argument("--max-wait", type=float, default=None, help="give up after this many seconds (exit 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output: one JSON document "
                   "(--once) or one JSON line per change")


def cmd_watch(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    poller = Poller(endpoints(args), timeout=args.timeout, verify=args.ca_path or True)
    console = Console(width=None if sys.stdout.isatty() else 160)
    deadline = None if args.max_wait is None else time.monotonic() + args.max_wait
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not args.json and not args.once \
        else None
    last, summary = None, None
    try:
        if live is not None:
            live.start()
        while True:
            summary = fleet_summary(*poller.poll(), time.time())
            if args.once:
                if args.json:
                    print(json.dumps(summary, default=str))
                else:
                    console.print(render(summary, hosts=args.hosts))
                return exit_code(summary)
            changed = _changes(summary)
            if live is not None:
                live.update(render(summary, hosts=args.hosts), refresh=True)
            elif changed != last:
                if args.json:
                    print(json.dumps(summary, default=str), flush=True)
                else:
                    console.print(render(summary, hosts=args.hosts))
                    sys.stdout.flush()
            last = changed
            if args.until_done and summary["groups"] and not in_progress(summary):
                return exit_code(summary)
            if deadline is not None and time.monotonic() >= deadline:
                print(f"error: still watching after {args.max_wait:g}s (--max-wait)", file=sys.stderr)
                return 3
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return exit_code(summary) if summary else EXIT_UNREADABLE
    finally:
        if live is not None:
            live.stop()
        poller.close()
