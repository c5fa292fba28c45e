"""Structured logs: one JSON object per line on stderr (time, level, pid, message, fields)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    static: dict = {}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
                 f".{int(record.msecs):03d}Z", "level": record.levelname, "pid": os.getpid(),
                 "logger": record.name, "msg": record.getMessage()}
        entry.update(self.static)
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "INFO", stream=None, **static) -> logging.Logger:
    """JSON lines on `stream` (stderr) for the "engram_memory" logger; `static` fields go on every line
    (a worker's id). Every process of the project logs this one shape."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter()
    formatter.static = dict(static)
    handler.setFormatter(formatter)
    logger = logging.getLogger("engram_memory")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


def log(logger: logging.Logger, level: int, msg: str, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})
