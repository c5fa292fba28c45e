"""StoreError, the one error type of the store and the service: `code` is the gRPC status that fits;
and the check of a table name that arrives in a request."""
from __future__ import annotations

import re

TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class StoreError(Exception):
    """A request the store refuses; `code` is the gRPC status name that fits."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def checked_table_name(name: str, field: str = "table") -> str:
    """A table name from a request: 1-128 characters of [A-Za-z0-9_.-]. The refusal quotes at most
    40 characters, so a huge name cannot turn an error into an oversized reply."""
    if not TABLE_NAME.fullmatch(name):
        shown = f"{name[:40]!r}{'...' if len(name) > 40 else ''} ({len(name)} characters)" if name else "empty"
        raise StoreError("INVALID_ARGUMENT", f"{field} must be 1-128 characters of letters, digits, '_', '.' "
                         f"or '-', e.g. layer1; got {shown}")
    return name
