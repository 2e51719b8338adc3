"""Structured logs: one line per event, as JSON or as ``key=value`` pairs.

Code logs an event name as the message and its fields as ``extra``::

    log.info("peer_connected", extra={"peer": pubkey, "outbound": True})

which :func:`configure_logging` writes as (JSON)::

    {"ts":"2025-01-01T12:00:00.123Z","level":"info","logger":"phalanx.peers",
     "event":"peer_connected","node":"node0","outbound":true,"peer":"ab12..."}

(on one line) or as (``kv``)::

    ts=2025-01-01T12:00:00.123Z level=info logger=phalanx.peers event=peer_connected
    node=node0 outbound=true peer=ab12...

Values that are not plain words are JSON-quoted in ``kv`` lines, so newlines in a traceback
(field ``exc``) never split an event over several lines.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "kv"]

# The attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)
_BARE_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]+")
_installed: list[logging.Handler] = []  # the handler configure_logging added last

CLIP_DEFAULT = 120  # characters of an attacker-controlled string that reach a log line
LOG_FILE_MAX_BYTES = 64 * 1024 * 1024  # a log file is rotated past this size...
LOG_FILE_BACKUPS = 2  # ...keeping this many old files: at most 192 MiB of logs per node
# aiohttp's low-level server logs every unparsable request with a traceback: an 8 KB request
# line flooded 47 MB/s. Those are the client's errors; they stay at debug.
_QUIET_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.internal")


def clip(value: object, limit: int = CLIP_DEFAULT) -> str:
    """``value`` as text cut to ``limit`` characters (the length of the rest noted), with
    control characters escaped: for anything a remote party chose before it enters a log."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}...(+{len(text) - limit} chars)"
    return (
        text.encode("unicode_escape", "backslashreplace").decode("ascii")
        if not text.isprintable()
        else text
    )


class LogThrottle:
    """At most one log line per key per ``interval_s``; the lines suppressed in between are
    counted and reported with the next one that is let through (``suppressed``)."""

    def __init__(
        self,
        interval_s: float = 10.0,
        keys_max: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.keys_max = keys_max
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay silent; else the number of lines suppressed for ``key`` since the last
        one (log it as ``suppressed``)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if last is None and len(self._last) >= self.keys_max:
            self._last.clear()  # bounded memory; the worst effect is one extra line per key
            self._suppressed.clear()
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class StructuredFormatter(logging.Formatter):
    """Formats a record as one JSON object or one ``key=value`` line."""

    def __init__(self, fmt: LogFormat = "json", static: dict[str, Any] | None = None) -> None:
        super().__init__()
        if fmt not in ("json", "kv"):
            raise ValueError(f"log format must be 'json' or 'kv', not {fmt!r}")
        self.fmt = fmt
        self.static = dict(static or {})

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **self.static,
        }
        for key in sorted(record.__dict__.keys() - _STANDARD_ATTRS):
            out[key] = _jsonable(record.__dict__[key])
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return out

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.fmt == "json":
            return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
        return " ".join(f"{key}={_kv_value(value)}" for key, value in fields.items())


def _kv_value(value: Any) -> str:
    if isinstance(value, str) and _BARE_VALUE.fullmatch(value):
        return value
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "json",
    file: Path | None = None,
    node: str | None = None,
    stream: TextIO | None = None,
    max_bytes: int = LOG_FILE_MAX_BYTES,
) -> logging.Handler:
    """Route all logging (the root logger) to one structured handler: ``file`` (appended) if
    given, else ``stream`` (default stderr). ``node`` is added to every line. Replaces handlers
    an earlier call installed; returns the new handler."""
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        # Size-capped: whatever an outsider makes us log, the disk use stays bounded.
        handler = logging.handlers.RotatingFileHandler(
            file, maxBytes=max_bytes, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt, {"node": node} if node else None))
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    _installed.append(handler)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET_LOGGERS:
        # Parser errors of outside requests: debug only, and never with their payload.
        logging.getLogger(name).setLevel(
            max(logging.DEBUG, root.level) if level == "debug" else logging.CRITICAL
        )
    return handler
