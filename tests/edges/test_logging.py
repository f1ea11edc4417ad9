"""configure_logging: JSON lines, text lines, level handling (incl. Faust's DEBUG root), secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from stream_app.domain.errors import ConfigError
from stream_app.edges.logging_setup import Redactor, configure_logging, parse_level

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", SECRET)
    return io.StringIO()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_with_fields_and_extras(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream)
    log = logging.getLogger("stream_app.test")
    log.info("settled %d windows", 3, extra={"topic": "video-views", "partition": 2, "ids": ("a", "b")})
    log.warning("second")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["message"] == "settled 3 windows"
    assert first["level"] == "info"
    assert first["logger"] == "stream_app.test"
    assert first["topic"] == "video-views"
    assert first["partition"] == 2
    assert first["ids"] == ["a", "b"]
    assert first["ts"].endswith("+00:00")
    assert len(first["ts"]) == len("2024-01-01T00:00:00.000+00:00")
    assert second == {
        "ts": second["ts"],
        "level": "warning",
        "logger": "stream_app.test",
        "message": "second",
    }


def test_json_exception_is_one_line_with_traceback(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream)
    try:
        raise RuntimeError(f"broker said password={SECRET}")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(stream)
    doc = json.loads(line)
    assert doc["message"] == "failed"
    assert "RuntimeError: broker said password=***" in doc["exc"]
    assert SECRET not in line


def test_text_format(stream: io.StringIO) -> None:
    configure_logging("warn", "text", stream)
    logging.getLogger("faust.worker").warning("rebalance took %.1f s", 2.25)
    (line,) = lines(stream)
    assert line.endswith(" WARNING faust.worker: rebalance took 2.2 s")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_value_never_appears(stream: io.StringIO, fmt: str) -> None:
    configure_logging("debug", fmt, stream)
    log = logging.getLogger("aiokafka.conn")
    log.info("connecting with %s", {"sasl_plain_username": "svc", "sasl_plain_password": SECRET})
    log.info("raw secret %s inside", SECRET)
    log.info("extra field", extra={"settings": {"password": SECRET}, "note": f"pw is {SECRET}"})
    log.info("object repr", extra={"cfg": _Config()})
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count("***") >= 5
    assert "svc" in out  # the username is not a secret


class _Config:
    def __repr__(self) -> str:
        return f"_Config(token={SECRET})"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2 user=bob", "password=*** user=bob"),
        ("PASSWORD = hunter2,next", "PASSWORD = ***,next"),
        ("sasl_plain_password='hunter 2'", "sasl_plain_password='***'"),
        ('{"password": "hun\\"ter2", "user": "bob"}', '{"password": "***", "user": "bob"}'),
        ("sasl.password: abc;x", "sasl.password: ***;x"),
        ("client_secret=xyz)", "client_secret=***)"),
        ("no secrets here: user=bob", "no secrets here: user=bob"),
        ("the passwordless mode", "the passwordless mode"),
    ],
)
def test_redactor_masks_assignments(text: str, expected: str) -> None:
    assert Redactor(()).__call__(text) == expected


def test_redactor_masks_secret_values_longest_first() -> None:
    redact = Redactor(("abc", "abcdef", ""))
    assert redact("x abcdef y abc z") == "x *** y *** z"


def test_no_password_in_environment_masks_only_assignments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    out = io.StringIO()
    configure_logging("info", "text", out)
    logging.getLogger("x").info("plain words, password=p")
    assert out.getvalue().rstrip().endswith("x: plain words, password=***")


def test_warn_level_keeps_root_above_debug_even_if_faust_lowers_it(stream: io.StringIO) -> None:
    configure_logging("warn", "json", stream)
    root = logging.getLogger()
    assert root.level == logging.WARNING
    # What Faust's spinner setup does on a TTY at level >= WARN: root to DEBUG.
    root.setLevel(logging.DEBUG)
    logging.getLogger("aiokafka").debug("fetch")
    logging.getLogger("aiokafka").info("joined group")
    logging.getLogger("aiokafka").warning("slow")
    assert [json.loads(line)["message"] for line in lines(stream)] == ["slow"]


def test_configure_replaces_handlers(stream: io.StringIO) -> None:
    configure_logging("info", "text", io.StringIO())
    handler = configure_logging("info", "json", stream)
    assert logging.getLogger().handlers == [handler]


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", 10), ("INFO", 20), ("warn", 30), ("Warning", 30), ("error", 40), (" critical ", 50)],
)
def test_parse_level(text: str, level: int) -> None:
    assert parse_level(text) == level


def test_bad_level_and_format_are_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL='verbose'"):
        configure_logging("verbose", "text")
    with pytest.raises(ConfigError, match="LOG_FORMAT='xml'"):
        configure_logging("info", "xml")


def test_bad_format_arguments_do_not_raise_and_are_still_redacted(stream: io.StringIO) -> None:
    configure_logging("info", "json", stream)
    logging.getLogger("x").info("expects a number %d", f"password={SECRET}")
    (line,) = lines(stream)
    doc = json.loads(line)
    assert doc["message"] == "expects a number %d (unformattable arguments: ('password=***',))"
    assert SECRET not in line
