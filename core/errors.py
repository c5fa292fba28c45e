"""StoreError, the one error type of the store and the service, in the store's own words: `reason` says
what is wrong (the servicer maps it to a gRPC status, memory_service/status.py; the store knows
nothing of gRPC). BadRowIds is the one error for a row id outside a table, from every tier. And the
check of a table name that arrives in a request."""
from __future__ import annotations

import re

REASONS = {
    "bad_request": "the request itself is wrong (an id out of range, a bad name or payload)",
    "not_found": "no such table or version (or one still loading)",
    "not_ready": "the table or version is not in a state that allows this",
    "damaged": "the stored bytes are damaged: nothing is served from them",
    "too_large": "over a limit (rows per request, memory for answers, a full disk)",
    "changed": "the destination changed while rows were written into it: retry",
    "forbidden": "the caller may not do this",
    "unavailable": "a service this depends on does not answer",
    "internal": "a failure that is nobody's request's fault",
}
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class StoreError(Exception):
    """A request the store refuses; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"StoreError reason must be one of {', '.join(REASONS)} (got {reason!r})")
        super().__init__(message)
        self.reason = reason


class BadRowIds(StoreError, IndexError):
    """Row ids outside a table (or a shard of it): what every tier raises for a bad id."""

    def __init__(self, message: str):
        super().__init__("bad_request", message)


def checked_table_name(name: str, field: str = "table") -> str:
    """A table name from a request: 1-128 characters of [A-Za-z0-9_.-]. The refusal quotes at most
    40 characters, so a huge name cannot turn an error into an oversized reply."""
    if not TABLE_NAME.fullmatch(name):
        shown = f"{name[:40]!r}{'...' if len(name) > 40 else ''} ({len(name)} characters)" if name else "empty"
        raise StoreError("bad_request", f"{field} must be 1-128 characters of letters, digits, '_', '.' "
                         f"or '-', e.g. layer1; got {shown}")
    return name
