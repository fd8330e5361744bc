"""Reports a group's release state to the infrastructure registry.

Sinks (`registry.type` in the agent config):
* `none`: reports are dropped.
* `file`: the file holds the group's latest record as JSON, replaced atomically (temporary
  file in the same directory, fsync, `os.replace`), so a reader never sees half a record.
* `http`: the record is PUT as JSON to `url`, with `Authorization: Bearer <token>` when
  `token_file` is set; `retries` attempts with exponential backoff, `timeout` per attempt.
  5xx, 408, 429 and connection errors are retried; other statuses fail at once.

Record fields: group, version, state, release_id, updated_at (ISO 8601 UTC), plus any
other field passed to `report`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import requests

from .config import ConfigError, RegistryConfig, read_token

RECORD_FIELDS = ("group", "version", "state", "release_id", "updated_at")
_RETRY_STATUSES = frozenset({408, 429})


class RegistryError(Exception):
    """A report could not be delivered; the message says where and why."""


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Registry:
    """One sink of reports, built from the agent's `RegistryConfig`."""

    def __init__(self, cfg: RegistryConfig, *, backoff: float = 0.5, max_backoff: float = 10.0) -> None:
        if cfg.type not in ("none", "file", "http"):
            raise RegistryError(f"unknown registry type {cfg.type!r}: expected none, file or http")
        if cfg.type == "file" and not cfg.path:
            raise RegistryError("registry type file needs a path")
        if cfg.type == "http" and not cfg.url:
            raise RegistryError("registry type http needs a url")
        self.cfg, self.backoff, self.max_backoff = cfg, backoff, max_backoff
        self._session: requests.Session | None = None

    def report(self, record: dict[str, Any]) -> dict[str, Any]:
        """Deliver one record (completed with the standard fields); return what was sent."""
        full = {name: None for name in RECORD_FIELDS}
        full.update(record)
        if not full.get("updated_at"):
            full["updated_at"] = utc_now_iso()
        if self.cfg.type == "file":
            self._write_file(full)
        elif self.cfg.type == "http":
            self._put(full)
        return full

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _write_file(self, record: dict[str, Any]) -> None:
        path = Path(self.cfg.path or "")
        try:
            data = json.dumps(record, indent=2, sort_keys=True, default=str).encode() + b"\n"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except (OSError, TypeError, ValueError) as exc:
            raise RegistryError(f"registry file {path}: cannot write the record: {exc}") from exc

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.token_file:
            try:
                headers["Authorization"] = f"Bearer {read_token(self.cfg.token_file)}"
            except ConfigError as exc:
                raise RegistryError(f"registry token: {exc}") from exc
        return headers

    def _put(self, record: dict[str, Any]) -> None:
        if self._session is None:
            self._session = requests.Session()
        try:
            deliver(self._session, "PUT", self.cfg.url or "", json.dumps(record, sort_keys=True, default=str).encode(),
                    self._headers(), attempts=self.cfg.retries, timeout=self.cfg.timeout, backoff=self.backoff,
                    max_backoff=self.max_backoff)
        except DeliveryError as exc:
            raise RegistryError(f"registry {exc}") from None


class DeliveryError(Exception):
    """An HTTP delivery failed for good: `str()` is '<url>: <METHOD> failed after N attempts: <cause>'."""


def deliver(session: requests.Session, method: str, url: str, body: bytes, headers: dict[str, str], *,
            attempts: int, timeout: float, backoff: float, max_backoff: float,
            sleep: Callable[[float], None] = time.sleep) -> int:
    """Send `body` until a 2xx answers (its status is returned): up to `attempts` tries, waiting
    `backoff` doubling to `max_backoff` between them. 5xx, 408, 429 and connection errors are
    retried; any other status fails at once. The one retry loop of the agent's outgoing reports
    (the registry and the webhook notifications)."""
    attempts = max(attempts, 1)
    cause = ""
    for attempt in range(1, attempts + 1):
        try:
            response = session.request(method, url, data=body, headers=headers, timeout=timeout)
            if 200 <= response.status_code < 300:
                return response.status_code
            cause = f"HTTP {response.status_code} {response.text.strip()[:200]!r}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUSES:
                break
        except requests.RequestException as exc:
            cause = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            sleep(min(backoff * 2 ** (attempt - 1), max_backoff))
    raise DeliveryError(f"{url}: {method} failed after {attempt} attempt{'s' if attempt > 1 else ''}: {cause}")
