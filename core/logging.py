"""Logging setup shared by every edgecloud process.

``configure_logging()`` is called once per process. Events are snake_case
names with key-value data; the request id is bound with contextvars
(``bind_request_id``) and travels from agent to gateway in the
``x-request-id`` metadata key.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]
REQUEST_ID_KEY = "x-request-id"


def configure_logging(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Route structlog (and stdlib logging) to stderr as JSON or console lines.

    ``auto`` picks console output on a terminal and JSON otherwise (the
    deployed case: systemd journal, Kubernetes log collectors).
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One logger for every event: the stock factory builds a new one per log call.
        logger_factory=_shared_logger(structlog.PrintLogger(file=sys.stderr)),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(name)s %(message)s")


def _shared_logger(logger: structlog.PrintLogger):
    """A logger factory that always answers ``logger``."""

    def factory(*_args: object) -> structlog.PrintLogger:
        return logger

    return factory


_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id: a random per-process prefix and a counter (hex, 16 characters).

    Unique within the process, and across processes but for a 2**-32 chance;
    cheaper than random bytes per request (no system call).
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


def bind_request_id(request_id: str) -> None:
    """Bind the request id to every log event of the current task."""
    structlog.contextvars.bind_contextvars(request_id=request_id)
