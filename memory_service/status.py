"""The gRPC status of each StoreError reason (core/errors.py), and back: the service answers a refusal
with the status that fits, and a loader talking to a remote service turns a status into a reason."""
from __future__ import annotations

GRPC_CODE = {
    "bad_request": "INVALID_ARGUMENT",
    "not_found": "NOT_FOUND",
    "not_ready": "FAILED_PRECONDITION",
    "damaged": "DATA_LOSS",
    "too_large": "RESOURCE_EXHAUSTED",
    "changed": "ABORTED",
    "forbidden": "PERMISSION_DENIED",
    "unavailable": "UNAVAILABLE",
    "internal": "INTERNAL",
}
_REASON = {code: reason for reason, code in GRPC_CODE.items()} | {"UNAUTHENTICATED": "forbidden",
                                                                  "DEADLINE_EXCEEDED": "unavailable"}


def grpc_code(error) -> str:
    """The status name for a StoreError."""
    return GRPC_CODE[error.reason]


def reason_of(code_name: str) -> str:
    """The StoreError reason for a gRPC status name (anything unexpected is internal)."""
    return _REASON.get(code_name, "internal")
