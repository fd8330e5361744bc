"""Webhook notifications of a group's releases, sent by the leader beside the registry report.

Events (`config.NOTIFY_EVENTS`, chosen with `notify.events`): `release_started`, `group_current`,
`group_rolled_back`, `release_aborted`, and `release_stuck` (a release still under way
`notify.stuck_after` seconds after it started, by the leader's wall clock against the committed
start time).

Once per event: an event's id is the release id + the event (`2.4#1:group_current`; a retry is a
new release id). What is due is derived from the committed state alone (`due`, pure); the leader
sends what is due and not yet in the replicated `notified` list, then commits `notified` with its
id, so a new leader sends nothing twice. Delivery is at least once: a leader that dies between the
POST and that commit leaves it to the next leader, which sends it again with the same id in
`X-Quorum-Delivery` (receivers deduplicate on it).

Each notification is a JSON POST to `notify.url`, signed with HMAC-SHA256 over the exact body with
the secret in `notify.secret_file`: header `X-Quorum-Signature: sha256=<hex>`; also
`X-Quorum-Event: <event>` and `X-Quorum-Delivery: <id>`. 5xx, 408, 429 and connection errors are
retried (`notify.retries` attempts, backoff 0.5 s doubling to 30 s); a notification that cannot be
delivered is logged (`notify_failed`) and marked as notified, so a receiver that is down does not
keep the leader busy forever.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from typing import Any

import requests

from . import __version__
from .config import ConfigError, NotifyConfig, read_token
from .contract import ABORTED, CURRENT, ROLLED_BACK, TERMINAL
from .group import ProposalError
from .log import event, get_logger
from .registry import DeliveryError, deliver, utc_now_iso

log = get_logger("quorum_rollout.notify")
SIGNATURE_HEADER = "X-Quorum-Signature"
_ENDED = {CURRENT: "group_current", ROLLED_BACK: "group_rolled_back", ABORTED: "release_aborted"}


def sign(secret: bytes, body: bytes) -> str:
    """The X-Quorum-Signature value of `body`: `sha256=` + hex HMAC-SHA256 keyed with the secret."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver checks (constant time): the header is the signature of the exact body."""
    return hmac.compare_digest(sign(secret, body), header or "")


def due(state: dict[str, Any], now: float, cfg: NotifyConfig) -> list[dict[str, Any]]:
    """The notifications the committed `state` asks for at wall time `now`, not yet notified, in order."""
    release = state.get("release")
    if not release:
        return []
    names = ["release_started"]
    if release["state"] in _ENDED:
        names.append(_ENDED[release["state"]])
    elif release["state"] not in TERMINAL and release.get("started_at") is not None \
            and now - release["started_at"] > cfg.stuck_after:
        names.append("release_stuck")
    sent = set(state.get("notified", []))
    failure = release.get("failure")
    out = []
    for name in names:
        ident = f"{release['id']}:{name}"
        if name not in cfg.events or ident in sent:
            continue
        out.append({
            "id": ident, "event": name, "group": state["group"], "release": release["id"],
            "version": release["version"], "previous_version": release.get("previous_version"),
            "state": release["state"], "group_version": state.get("current_version"),
            "batch": release["batch"] + 1 if release.get("batch") is not None else None,
            "batches": len(release.get("batches") or []), "started_at": release.get("started_at"),
            "failure": failure, "failed_host": (failure or {}).get("host"),
        })
    return out


def committer(node: Any, group: str, node_id: str) -> Callable[[str], bool]:
    """The Notifier's `propose` for a group node: commit `notified` (True once committed or known)."""
    def propose(ident: str) -> bool:
        try:
            result = node.propose("notified", op_id=f"notified:{ident}", event=ident)
        except ProposalError as exc:
            event(log, "proposal_failed", level="warning", group=group, node=node_id, step="notified",
                  cause=str(exc))
            return False
        return result["code"] in ("accepted", "noop", "duplicate")
    return propose


class Notifier:
    """Sends due notifications from its own thread, one at a time in order, and commits each as
    notified through `propose(event_id) -> bool` (True once committed). Never blocks the caller."""

    def __init__(self, cfg: NotifyConfig, group: str, node_id: str, propose: Callable[[str], bool], *,
                 backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        if cfg.url is None:
            raise ValueError("notifications are off (notify.url is not set)")
        self.cfg, self.group, self.node_id, self._propose = cfg, group, node_id, propose
        self.backoff, self.max_backoff = backoff, max_backoff
        self._queue: list[dict[str, Any]] = []
        self._known: set[str] = set()        # queued, in flight, or sent and not committed yet
        self._uncommitted: list[str] = []    # sent (or given up), the `notified` commit still to make
        self._cond = threading.Condition()
        self._stop = False
        self._session = requests.Session()
        self.status: dict[str, Any] = {"ok": True, "error": None, "last": None}
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def offer(self, state: dict[str, Any], now: float) -> None:
        """Queue what `state` makes due (called by the leader on every pass; cheap when nothing is)."""
        found = due(state, now, self.cfg)
        with self._cond:
            todo = [n for n in found if n["id"] not in self._known]
            if todo or self._uncommitted:
                for n in todo:
                    self._known.add(n["id"])
                    self._queue.append(n)
                self._cond.notify()

    def reset(self) -> None:
        """This node stopped leading: forget what is queued (the next leader derives it again)."""
        with self._cond:
            dropped = {n["id"] for n in self._queue}
            self._queue.clear()
            self._known -= dropped

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)
        self._session.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._uncommitted and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._queue.pop(0) if not self._uncommitted else None
            if item is not None:
                self._send(item)
                with self._cond:
                    self._uncommitted.append(item["id"])
            self._commit()

    def _commit(self) -> None:
        with self._cond:
            pending = list(self._uncommitted)
        for ident in pending:
            if not self._propose(ident):
                with self._cond:  # not leading any more, or no quorum: the next offer() tries again
                    self._cond.wait(timeout=1.0)
                return
            with self._cond:
                self._uncommitted.remove(ident)
                self._known.discard(ident)

    def _send(self, item: dict[str, Any]) -> None:
        body = json.dumps({**item, "sent_by": self.node_id, "sent_at": utc_now_iso()}, sort_keys=True).encode()
        fields = {"group": self.group, "release": item["release"], "node": self.node_id, "step": "notify",
                  "notification": item["event"]}
        try:
            secret = read_token(self.cfg.secret_file or "").encode()
            headers = {"Content-Type": "application/json", "User-Agent": f"quorum-rollout/{__version__}",
                       SIGNATURE_HEADER: sign(secret, body), "X-Quorum-Event": item["event"],
                       "X-Quorum-Delivery": item["id"]}
            status = deliver(self._session, "POST", self.cfg.url or "", body, headers, attempts=self.cfg.retries,
                             timeout=self.cfg.timeout, backoff=self.backoff, max_backoff=self.max_backoff)
        except (ConfigError, DeliveryError) as exc:
            self.status = {"ok": False, "error": f"notify {exc}", "last": item["id"]}
            event(log, "notify_failed", level="error", cause=f"notify {exc}", **fields)
            return
        self.status = {"ok": True, "error": None, "last": item["id"]}
        event(log, "notified", http_status=status, **fields)
