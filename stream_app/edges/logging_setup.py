"""Root logging for the worker and the CLI: text or one JSON object per line, secrets masked (SPEC §9)."""

# Faust quirk: when stdout is a TTY and the level is WARN or above, Faust's Worker installs a progress-spinner
# handler and sets the *root logger* to DEBUG (faust/worker.py `_setup_spinner_handler`), so every library's
# debug records get built. Our handler carries the level itself, so output stays at the configured level even
# then; the worker should still start Faust with `override_logging=False`, which skips that code path (and
# mode's setup_logging, which would also clear our root handlers).

from __future__ import annotations

import datetime
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, Final, TextIO

from stream_app.domain import jsoncodec
from stream_app.domain.errors import ConfigError

MASK: Final = "***"

# LOG_LEVEL values; "warn" is what operators type, logging calls it WARNING.
LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS: Final = ("text", "json")

# `password=x`, `sasl_plain_password='x'`, `"password": "x"`, `secret: x`: the key is kept (it says what was
# hidden), the value is masked. Quoted values may contain spaces; bare values end at space or separator.
_SECRET_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>[\w.-]*(?:password|passwd|secret)[\w.-]*['"]?\s*[=:]\s*)
    (?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&'")}\]]+)
    """
)

# Attributes every LogRecord has; anything else came in through `extra=` and goes into the JSON object.
_STANDARD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class Redactor:
    """Masks known secret values and `password=...`-style assignments in text."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        # Longest first, so a secret containing another is masked whole.
        self.secrets = tuple(sorted((s for s in secrets if s), key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _SECRET_ASSIGNMENT.sub(_mask_value, text)


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[0] in "'\"" else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


class RedactionFilter(logging.Filter):
    """Handler filter: rewrites message, extra fields and traceback text of each record with secrets masked.

    It sits on the handler, not a logger, because logger filters do not see records propagated from child
    loggers (faust, aiokafka), and those are the ones that print connection settings.
    """

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # A filter's exception is not caught by logging: it would reach the caller's log statement.
            # Keep what was given instead, as logging's own error path would show it.
            message = f"{record.msg!s} (unformattable arguments: {record.args!r})"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _plain(value, self.redact))
        return True


def _plain(value: Any, redact: Callable[[str], str] = str) -> Any:
    """An extra field as JSON-ready data (str, int, float, bool, None, dict, list); strings go via redact."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int):
        # orjson refuses integers beyond 64 bits; a log line must never fail.
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, redact) for v in value]
    # Anything else is logged by its repr, which may embed a secret: that is what gets redacted.
    return redact(repr(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601, ms), level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in doc:
                doc[name] = _plain(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return jsoncodec.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message key=value ...`: extra fields appended, so text carries what JSON does."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = [_key_value(name, value) for name, value in vars(record).items() if name not in _STANDARD_ATTRS]
        return " ".join([line, *extras]) if extras else line


def _key_value(name: str, value: Any) -> str:
    plain = _plain(value)
    # Quote strings with spaces so `key=value` pairs stay splittable.
    return f"{name}={plain!r}" if isinstance(plain, str) and " " in plain else f"{name}={plain}"


def parse_level(level: str) -> int:
    """LOG_LEVEL text to a logging level; ConfigError naming LOG_LEVEL when unknown."""
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        raise ConfigError(f"LOG_LEVEL={level!r}: expected one of {', '.join(LEVELS)}") from None


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one handler at `level` in `fmt` ("text" or "json").

    KAFKA_SASL_PASSWORD is read from the environment now and masked wherever it appears. Returns the handler
    (pass it as Faust's `loghandlers` if Faust is allowed to configure logging).
    """
    numeric = parse_level(level)
    if fmt not in FORMATS:
        raise ConfigError(f"LOG_FORMAT={fmt!r}: expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    # The level on the handler, not only on the root logger, survives Faust forcing the root to DEBUG.
    handler.setLevel(numeric)
    handler.addFilter(RedactionFilter(Redactor((os.environ.get("KAFKA_SASL_PASSWORD", ""),))))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
