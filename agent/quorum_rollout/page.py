"""The read-only HTML status page of a group, served by every agent at `/ui/<page key>`.

One self-contained page: inline CSS, no script at all, nothing loaded from anywhere (a
Content-Security-Policy meta tag forbids it), refreshed by `<meta http-equiv=refresh>`. It shows
the group, this node's view (role, leader, term), the members with their liveness, the latest
release with its progress, batch and failure, and the last events.

Browsers cannot send the API's bearer header, so the page has its own credential in its URL: the
page key, derived from the API token (`page_key`), which opens this page only: it is refused by
every /v1 endpoint and /metrics, so a leaked page URL shows the status and changes nothing.
Rotating the API token rotates it. `quorum-rollout status --page-url` prints the URL. The page
answers `GET /ui` with the bearer header as well (curl, proxies that add the header).

`render(doc, now)` is pure: the status document (api.status_document) in, HTML out.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from html import escape
from typing import Any

PREFIX = "/ui"
REFRESH_SECONDS = 5
EVENTS_SHOWN = 15
_LABEL = b"quorum-rollout status page v1"

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#555} table{border-collapse:collapse;background:#fff} td,th{padding:.25em .7em;border:1px solid #ddd;
text-align:left} th{background:#f0f0f0} .bar{width:24em;height:1em;background:#e5e5e5;border-radius:.3em;
overflow:hidden;display:inline-block;vertical-align:middle} .fill{height:100%;background:#2e7d32}
.back .fill{background:#c62828} .state{font-weight:600;padding:.1em .5em;border-radius:.3em;background:#e3f2fd}
.current{background:#c8e6c9} .rolled_back,.rolling_back,.aborted,.no{background:#ffcdd2} .paused{background:#fff3c4}
.failure{color:#b71c1c;font-weight:600} code{font-size:.95em}
"""


def page_key(token: str) -> str:
    """The status page's credential: HMAC-SHA256 of a fixed label keyed with the API token (128 bits, hex)."""
    return hmac.new(token.encode(), _LABEL, hashlib.sha256).hexdigest()[:32]


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    return f"{stamp} UTC ({_ago(now - ts)} ago)"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rows(rows: list[list[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)


def render(doc: dict[str, Any], now: float) -> str:
    e = escape
    node, state, members = doc["node"], doc["state"], doc["members"]
    release = state.get("release")
    group = e(doc["group"])
    parts = [
        f"<h1>Group {group}</h1>",
        f"<p class=meta>Seen from <b>{e(node['id'])}</b> ({e(node['role'])}, term {node['term']}); leader "
        f"<b>{e(node['leader'] or 'none')}</b>; the group runs <b>{e(state.get('current_version') or '-')}</b>."
        f"{' Not ready: replaying its journal.' if not node.get('ready') else ''}"
        f"{' No quorum.' if not node.get('has_quorum') else ''}</p>",
    ]
    hosts = (release or {}).get("hosts", {})
    rows = []
    for m in members:
        live = "reachable" if m["reachable"] else f"unreachable since {_when(m.get('unreachable_since'), now)}"
        contact = m.get("last_contact_seconds")
        if contact is not None:
            live += f", last contact {contact:g}s ago"
        h = hosts.get(m["id"], {})
        rows.append([f"<b>{e(m['id'])}</b>", e(m["status"]), f"<span class='state {'' if m['reachable'] else 'no'}'>"
                     f"{e(live)}</span>", e(h.get("status") or "-"), e(str(h.get("version") or "-")),
                     e(h.get("detail") or h.get("step") or "")])
    parts.append("<h2>Members</h2><table><tr><th>member</th><th>membership</th><th>liveness</th>"
                 f"<th>release status</th><th>version</th><th>step</th></tr>{_rows(rows)}</table>")
    parts.append("<h2>Release</h2>")
    if not release:
        parts.append("<p>No release yet.</p>")
    else:
        back = release["state"] in ("rolling_back", "rolled_back")
        if back:
            done = sum(1 for x in hosts.values() if x["status"] in ("reverted", "revert_failed"))
            total = done + sum(1 for x in hosts.values() if x["status"] == "revert_pending")
        else:
            done, total = sum(1 for x in hosts.values() if x["status"] == "updated"), len(hosts)
        pct = 100 * done // total if total else 100
        batch = (f"batch {release['batch'] + 1} of {len(release['batches'])}"
                 if release.get("batch") is not None else "no batch open yet")
        parts.append(
            f"<p>Release <b>{e(release['id'])}</b>: {e(str(release.get('previous_version') or '-'))} &rarr; "
            f"<b>{e(release['version'])}</b> <span class='state {e(release['state'])}'>{e(release['state'])}</span> "
            f"{e(batch)}</p>"
            f"<p><span class='bar{' back' if back else ''}'><span class=fill style='width:{pct}%;display:block'>"
            f"</span></span> {done}/{total} hosts {'reverted' if back else 'updated'}</p>"
            f"<p class=meta>Started {_when(release.get('started_at'), now)}; last change "
            f"{_when(release.get('updated_at'), now)}.</p>")
        failure = release.get("failure")
        if failure:
            parts.append(f"<p class=failure>{e(str(failure.get('host')))} failed at {e(str(failure.get('step')))}: "
                         f"{e(str(failure.get('reason')))}</p>")
    events = list(reversed((state.get("history") or [])[-EVENTS_SHOWN:]))
    rows = [[e(_when(ev.get("time"), now)), e(str(ev.get("actor") or "")), e(str(ev.get("op"))),
             e(str(ev.get("to") or "")), e(str(ev.get("detail") or ""))] for ev in events]
    parts.append(f"<h2>Last events</h2><table><tr><th>time</th><th>by</th><th>command</th><th>state</th>"
                 f"<th>detail</th></tr>{_rows(rows)}</table>")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        "<meta name=referrer content=no-referrer>"
        f"<meta http-equiv=refresh content={REFRESH_SECONDS}>"
        f"<title>{group} - quorum-rollout</title><style>{_CSS}</style></head><body>"
        + "".join(parts)
        + f"<p class=meta>Refreshes every {REFRESH_SECONDS}s. Page of {e(node['id'])} at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC.</p></body></html>"
    )
