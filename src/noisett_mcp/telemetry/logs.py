"""Structured logs with secrets kept out: redaction of every record as it is made, the JSON formatter,
and `configure_logging`."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

from opentelemetry import trace

_REDACTED = "[REDACTED]"
_SECRETS = [
    # Authorization headers and bare JWTs (Entra access tokens).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + _REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), _REDACTED),
    # Connection strings: AccountKey=...; SharedAccessSignature=...; InstrumentationKey=...
    (
        re.compile(
            r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|InstrumentationKey|ClientSecret|Password)"
            r"=[^;\s\"']+"
        ),
        r"\1=" + _REDACTED,
    ),
    # SAS URLs: the signature is the secret part.
    (re.compile(r"(?i)([?&]sig=)[^&\s\"']+"), r"\1" + _REDACTED),
    # key=value and "key": "value" pairs whose names say they are secrets.
    (
        re.compile(
            r"(?i)\b((?:access|refresh|id)_token|client_secret|api[_-]?key|password|hf_token|secret)"
            r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1\2" + _REDACTED,
    ),
    # Hugging Face user access tokens.
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), _REDACTED),
]


def redact(text: str) -> str:
    """`text` with tokens, keys and signatures replaced by [REDACTED]."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _install_redaction() -> None:
    """Redact every log record as it is made, so that no handler (console, Azure Monitor, a library's own)
    ever sees a secret. Records without secrets are left exactly as they were."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_noisett_redacts", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            trace_text = logging.Formatter().formatException(record.exc_info)
            clean_trace = redact(trace_text)
            if clean_trace != trace_text:
                # The exception object itself carries the secret: keep only the cleaned text.
                record.exc_info, record.exc_text = None, clean_trace
        return record

    make_record._noisett_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)


# Standard LogRecord attributes, and uvicorn's ANSI-coloured copy of its message: not `extra=` fields.
_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what Log Analytics (ContainerAppConsoleLogs) and `jq` parse."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        for key, value in vars(record).items():  # `extra=` fields
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", fmt: Literal["text", "json"] = "text", stream: IO[str] | None = None
) -> None:
    """Log to stderr (stdout belongs to MCP on stdio) as text or JSON lines, with secrets redacted."""
    _install_redaction()
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
