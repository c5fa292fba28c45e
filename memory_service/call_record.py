"""CallRecord: one request's outcome, measured and logged, and turned into the status it deserves."""
from __future__ import annotations

import logging
import time

import grpc

from core.logs import log
from core.store import StoreError

from . import metrics
from .status import grpc_code

logger = logging.getLogger("engram_memory")
# the client does not retry a request refused for its size (it would be refused again)
NOT_RETRYABLE = "split the batch"


def abort(context, code: str, message: str):
    context.abort(getattr(grpc.StatusCode, code), message)


class _Quiet:
    """At most one log line per (rpc, code) every `every_s`, saying how many were left out."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self._last, self._left = every_s, {}, {}

    def log(self, key: tuple, level: int, msg: str, **fields) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            self._left[key] = self._left.get(key, 0) + 1
            return
        self._last[key] = now
        log(logger, level, msg, **fields, similar_left_out=self._left.pop(key, 0))


_QUIET = _Quiet()


class CallRecord:
    """Times one request and records its metrics; an error becomes (code, message) in `failure`.
    With abort=True (unary calls) a failure aborts the call with that status on exit. Refusals are
    logged (WARNING, rate-limited); `expected` codes (a client's probe, e.g. a segment this server
    cannot reach) are neither logged nor counted as errors."""

    def __init__(self, rpc: str, context, known_tables, abort: bool = True, expected: tuple = ()):
        self.rpc, self.context, self.known, self.abort, self.expected = rpc, context, known_tables, abort, expected
        self.table = "-"
        self.failure: tuple[str, str] | None = None

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def label(self, table: str) -> None:
        self.table = table if table in self.known() else "unknown"  # bounded label values

    def __exit__(self, kind, error, tb):
        if error is None:
            code = "OK"
        elif isinstance(error, StoreError):
            code = grpc_code(error)
            self.failure = (code, str(error))
            if code == "DATA_LOSS":
                metrics.CORRUPT_ROWS.labels(self.table).inc(getattr(error, "corrupt_rows", 0))
                log(logger, logging.ERROR, "corrupt rows refused", rpc=self.rpc, table=self.table, error=str(error))
        elif isinstance(error, Exception) and self.context.code() is None:
            code = "INTERNAL"
            self.failure = (code, f"internal error: {error!r}")
            log(logger, logging.ERROR, "internal error", rpc=self.rpc, table=self.table, error=repr(error))
        else:  # grpc's own abort() unwinding, or the call ending under us
            code = self.context.code().name if self.context.code() is not None else "CANCELLED"
        if code == "OK" and not self.context.is_active():  # answered, but nobody is there to take it
            remaining = self.context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            _QUIET.log((self.rpc, code), logging.WARNING, "call ended before its answer", rpc=self.rpc,
                       table=self.table, code=code, seconds=round(time.perf_counter() - self.t0, 4))
        elif code not in ("OK", "INTERNAL", "DATA_LOSS", *self.expected):
            _QUIET.log((self.rpc, code), logging.WARNING, "request refused", rpc=self.rpc, table=self.table,
                       code=code, error=(self.failure[1] if self.failure else "")[:300])
        metrics.REQUESTS.labels(self.rpc, self.table, code).inc()
        metrics.LATENCY.labels(self.rpc, self.table).observe(time.perf_counter() - self.t0)
        if code != "OK" and code not in self.expected:
            metrics.ERRORS.labels(self.rpc, code).inc()
        if self.failure is not None:
            if self.abort:
                abort(self.context, *self.failure)
            return True  # swallowed: the caller answers with self.failure
        return False
