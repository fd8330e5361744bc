"""Structured logging: one JSON object per line and per event.

    log = get_logger(__name__)
    event(log, "batch_opened", group="intel-a", release="r1", term=3, step="rolling", batch=2)

emits `{"ts": "2026-01-01T12:00:00.123Z", "level": "info", "event": "batch_opened", "group": ...}`.
Fields whose name contains `secret`, `token` or `password` are dropped, at any depth, so a
secret can never reach a log line by accident.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

ROOT = "quorum_rollout"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SECRET_WORDS = ("secret", "token", "password")
_RESERVED = ("ts", "level", "event", "logger")


def is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def scrub(value: Any) -> Any:
    """`value` with every mapping entry whose key names a secret removed (recursively)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if not is_secret_name(str(k))}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _iso(timestamp: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp))
    return f"{seconds}.{int(timestamp % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats records as one JSON line; `event()` records carry their fields in `qr_fields`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname.lower()}
        fields = getattr(record, "qr_fields", None)
        if fields is None:
            line["event"] = "log"
            line["logger"] = record.name
            line["message"] = record.getMessage()
        else:
            line["event"] = record.getMessage()
            line.update({k: v for k, v in scrub(fields).items() if k not in _RESERVED})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def get_logger(name: str) -> logging.Logger:
    """A logger under the agent's `quorum_rollout` namespace (so `setup_logging` covers it)."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def event(logger: logging.Logger, event: str, level: str = "info", **fields: Any) -> None:
    """Log one structured event; `exc_info=True` among the fields attaches the traceback."""
    exc_info = fields.pop("exc_info", None)
    logger.log(LEVELS.get(level, logging.INFO), event, exc_info=exc_info, extra={"qr_fields": fields})


class JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """JSON lines with a repeat limit: the same line (same logger, level, message and fields)
    more than `burst` times in `window` seconds is dropped, and the next time it appears after
    the window a `log_suppressed` line says how many were dropped. A library that logs one
    line ten times a second cannot flood the log or hide everything else."""

    def __init__(self, stream: TextIO, *, burst: int = 5, window: float = 60.0,
                 clock: Any = time.monotonic) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
        self.burst, self.window, self._clock = burst, window, clock
        self._seen: dict[str, list[float]] = {}  # key -> [window start, count]

    def _key(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "qr_fields", None)
        extra = json.dumps(fields, sort_keys=True, default=str)[:500] if fields else ""
        return f"{record.name}\0{record.levelno}\0{record.getMessage()[:500]}\0{extra}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key, now = self._key(record), self._clock()
        except Exception:  # a record that cannot even be keyed is emitted as it is
            return super().emit(record)
        with self.lock:  # type: ignore[union-attr]
            seen = self._seen.get(key)
            if seen is None or now - seen[0] >= self.window:
                if seen is not None and seen[1] > self.burst:
                    super().emit(_suppressed(record, int(seen[1] - self.burst), self.window))
                if len(self._seen) >= 1000:
                    self._seen.clear()
                seen = self._seen[key] = [now, 0]
            seen[1] += 1
            if seen[1] > self.burst:
                return
        super().emit(record)


def _suppressed(record: logging.LogRecord, count: int, window: float) -> logging.LogRecord:
    summary = logging.LogRecord(record.name, logging.WARNING, record.pathname, record.lineno,
                                "log_suppressed", None, None)
    summary.qr_fields = {"source": record.name, "repeated": record.getMessage()[:500],  # type: ignore[attr-defined]
                         "suppressed": count, "window_seconds": window}
    return summary


def bound(logger: logging.Logger, **context: Any) -> Any:
    """A log callable (event name, level, fields) that adds `context` (group, node, release, step)
    to every line: for library code that logs on behalf of a step (artifacts' mirror_failed, ...)."""
    def emit(name: str, level: str = "info", **fields: Any) -> None:
        event(logger, name, level=level, **{**context, **fields})
    return emit


class RaftResendFilter(logging.Filter):
    """pysyncobj logs CRITICAL "truncating already-applied log entries ... state machine may have
    diverged" whenever a follower receives entries it already has again (a leader resending after
    a reconnect or a reset of its next index): it deletes from the resent index on and re-adds the
    same entries without comparing them. Applied entries are committed, and by Raft's log
    matching and leader completeness the leader's entries at those indices are the same ones, so
    nothing diverges and nothing is applied twice. The line becomes a warning event saying so;
    docs/operations.md (troubleshooting) explains it and what would be a real divergence."""

    PREFIX = "truncating already-applied log entries"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pysyncobj.syncobj" and str(record.msg).startswith(self.PREFIX):
            detail = record.getMessage()
            record.msg, record.args = "raft_entries_resent", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.qr_fields = {"detail": detail,  # type: ignore[attr-defined]
                                "note": "entries re-sent by the leader replaced the same committed entries"}
        return True


def setup_logging(level: str | int = "info", stream: TextIO | None = None) -> logging.Handler:
    """Every log line of the process as JSON on `stream` (stderr by default): the handler sits on
    the root logger, so libraries (pysyncobj, urllib3) are JSON too; uncaught exceptions in any
    thread and Python warnings become JSON lines as well. Safe to call again."""
    numeric = LEVELS[level] if isinstance(level, str) else level
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "qr_handler", False)]:
        root.removeHandler(old)
    handler = JsonHandler(stream if stream is not None else sys.stderr)
    handler.qr_handler = True  # type: ignore[attr-defined]
    handler.addFilter(RaftResendFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    ours = logging.getLogger(ROOT)
    ours.setLevel(numeric)
    ours.propagate = True
    logging.captureWarnings(True)
    crash = get_logger("quorum_rollout.crash")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        event(crash, "thread_crashed", level="error", thread=getattr(args.thread, "name", None),
              cause=repr(args.exc_value), exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    def process_hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        event(crash, "agent_crashed", level="error", cause=repr(exc), exc_info=(exc_type, exc, tb))

    threading.excepthook = thread_hook
    sys.excepthook = process_hook
    return handler
