"""Credentials a caller holds: a secret read from a file (tokens are never flags, so they stay out of
`ps`), and the client-side interceptor that sends a bearer token on every call of a channel
(`authorization: Bearer <token>`; the server's check is memory_service/auth.py)."""
from __future__ import annotations

from pathlib import Path

import grpc


def read_secret(path: str, what: str) -> str:
    if not path:
        return ""
    try:
        secret = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"{what} {path}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"{what} {path} is empty")
    return secret


class TokenMetadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor,
                    grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """Client side: adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str):
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self.header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata):
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression = base.wait_for_ready, getattr(base, "compression", None)
        self.metadata = metadata
