"""Structured logging: one line per event, JSON or key=value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.logging_setup import LogThrottle, clip, configure_logging


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_json_lines_carry_the_event_and_its_fields() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", node="node0", stream=stream)
    log = logging.getLogger("phalanx.test")
    log.info("peer_connected", extra={"peer": "ab" * 32, "outbound": True, "n": 3})
    log.debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "peer_connected" and event["level"] == "info"
    assert event["logger"] == "phalanx.test" and event["node"] == "node0"
    assert event["peer"] == "ab" * 32 and event["outbound"] is True and event["n"] == 3
    assert event["ts"].endswith("Z")


def test_kv_lines_quote_what_needs_it_and_keep_tracebacks_on_one_line() -> None:
    stream = io.StringIO()
    configure_logging("debug", "kv", stream=stream)
    log = logging.getLogger("phalanx.test")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("handler_failed", extra={"detail": "two words", "peer": "ab12"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert " level=error " in line and " event=handler_failed " in line
    assert ' detail="two words" ' in line and " peer=ab12" in line
    assert ' exc="Traceback' in line and "ValueError: bad\\nthing" in line


def test_file_output_and_reconfiguration_replace_the_handler(tmp_path: Path) -> None:
    first = io.StringIO()
    configure_logging("info", "json", stream=first)
    path = tmp_path / "logs" / "node.log"
    configure_logging("warning", "json", file=path)
    log = logging.getLogger("phalanx.test")
    log.info("quiet")
    log.warning("loud", extra={"x": [1, 2]})
    assert first.getvalue() == ""
    logging.getLogger().handlers[-1].flush()
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["x"]) for e in events] == [("loud", [1, 2])]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("info", "xml", stream=io.StringIO())  # type: ignore[arg-type]


def test_clip_cuts_and_escapes_what_a_remote_party_chose() -> None:
    assert clip("short") == "short"
    long = clip("x" * 10_000)
    assert long.startswith("x" * 120) and long.endswith("(+9880 chars)") and len(long) < 150
    assert "\n" not in clip("line\nbreak\x1b[31m")
    assert clip(b"\xff" * 3) == repr(b"\xff" * 3)


def test_throttle_lets_one_line_per_key_and_interval_through_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = LogThrottle(interval_s=10.0, clock=lambda: now[0])
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(5)] == [None] * 5
    assert throttle.allow("b") == 0
    now[0] = 10.0
    assert throttle.allow("a") == 5  # the suppressed lines are reported with the next one


def test_the_log_file_is_capped_by_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "node.log"
    configure_logging(file=log_file, max_bytes=10_000)
    try:
        logger = logging.getLogger("phalanx.test")
        for i in range(2_000):
            logger.warning("flood", extra={"i": i, "pad": "p" * 100})
    finally:
        configure_logging(stream=io.StringIO())
    files = sorted(tmp_path.glob("node.log*"))
    assert [f.name for f in files] == ["node.log", "node.log.1", "node.log.2"]
    assert sum(f.stat().st_size for f in files) <= 3 * 10_000 + 1_000


def test_aiohttp_parser_complaints_stay_out_of_the_log() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=ValueError("x"))
    assert stream.getvalue() == ""
    configure_logging(level="debug", stream=stream)
    logging.getLogger("aiohttp.server").debug("parser detail")
    assert "parser detail" in stream.getvalue()
    configure_logging(stream=io.StringIO())
