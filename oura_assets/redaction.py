"""Keep credentials that travel in URLs out of every log line, in every process of the project.

Two libraries log full URLs at INFO: uvicorn's access log (the callback's `?code=…&state=…`) and httpx
(`HTTP Request: POST …/oauth/revoke?access_token=…`, because Oura's revoke endpoint takes the token in the
query). A filter on those loggers replaces every query string with `?<redacted>` before any handler — ours,
uvicorn's, pytest's — formats the record. Path and status stay, which is what an operator needs. One
mechanism for the API, the OAuth app and the pipeline, so the redaction never depends on which was first.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "<redacted>"
_QUERY = re.compile(r"\?[^\s\"']*")
# Loggers known to print request URLs or redirect headers. A logger's filters do not apply to its children's
# records, so httpcore's are listed one by one.
URL_LOGGERS = (
    "uvicorn.access",
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
)


def redact_query(text: str) -> str:
    return _QUERY.sub("?" + REDACTED, text)


class RedactQueryFilter(logging.Filter):
    """Rewrites the record's message and arguments so no query string survives formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        return True

    @staticmethod
    def _clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact_query(value)
        if value.__class__.__name__ == "URL":  # httpx.URL, formatted with %s
            return redact_query(str(value))
        return value


def install_log_redaction() -> None:
    """Attach the filter to the URL-logging loggers (idempotent)."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
            logger.addFilter(RedactQueryFilter())
