"""Logging configuration for the connection API's own process (`oura-assets serve`)."""

from __future__ import annotations

import copy
from typing import Any

import uvicorn.config

from oura_assets.redaction import RedactQueryFilter


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging, plus the redaction filter on its access log and on httpx (WARNING+)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact_query": {"()": RedactQueryFilter}}
    config["loggers"]["uvicorn.access"]["filters"] = ["redact_query"]
    config["loggers"]["httpx"] = {"level": "WARNING", "filters": ["redact_query"]}
    # Everything else (our own `oura_assets.*` lines among them) goes to stderr like uvicorn's.
    config["root"] = {"handlers": ["default"], "level": "INFO"}
    return config
