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


def setup_logging(level: str | int = "info", stream: TextIO | None = None) -> logging.Handler:
    """Send the agent's logs as JSON lines to `stream` (stderr by default); safe to call again."""
    numeric = LEVELS[level] if isinstance(level, str) else level
    logger = logging.getLogger(ROOT)
    for old in [h for h in logger.handlers if getattr(h, "qr_handler", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.qr_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
    return handler
