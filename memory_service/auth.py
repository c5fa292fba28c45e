"""Who may call: TLS credentials for the listening ports, and a bearer-token check on every call.

Tokens travel as `authorization: Bearer <token>` metadata (over TLS outside a trusted network).
MemoryService calls need the read token when one is set (the admin token is accepted too);
AdminService calls need the admin token when one is set. Health checks and reflection stay open,
so orchestrators can probe a server without secrets. A refused call gets UNAUTHENTICATED (no or a
wrong token) or PERMISSION_DENIED (the read token on an admin call), and nothing else happens.
"""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN = "/engram_memory.v1.AdminService/"


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


def server_credentials(cert: str, key: str, client_ca: str = ""):
    """TLS for a port; with client_ca, clients must present a certificate it signed."""
    def read(path, what):
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{what} {path}: {e.strerror}") from None
    root = read(client_ca, "--tls-client-ca") if client_ca else None
    return grpc.ssl_server_credentials([(read(key, "--tls-key"), read(cert, "--tls-cert"))],
                                       root_certificates=root, require_client_auth=root is not None)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, read_token: str = "", admin_token: str = ""):
        self.read_token, self.admin_token = read_token, admin_token

    def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(OPEN):
            return continuation(details)
        sent = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and value.startswith("Bearer "):
                sent = value[len("Bearer "):]
        if method.startswith(ADMIN):
            if self.admin_token and not hmac.compare_digest(sent, self.admin_token):
                code = grpc.StatusCode.PERMISSION_DENIED if self.read_token and hmac.compare_digest(
                    sent, self.read_token) else grpc.StatusCode.UNAUTHENTICATED
                return _refuse(continuation(details), code, f"{method} needs the admin token")
            if not self.admin_token and self.read_token and not hmac.compare_digest(sent, self.read_token):
                return _refuse(continuation(details), grpc.StatusCode.UNAUTHENTICATED, f"{method} needs a token")
            return continuation(details)
        allowed = [t for t in (self.read_token, self.admin_token) if t]
        if self.read_token and not any(hmac.compare_digest(sent, t) for t in allowed):
            return _refuse(continuation(details), grpc.StatusCode.UNAUTHENTICATED,
                           f"{method} needs `authorization: Bearer <token>` with this server's token")
        return continuation(details)


def _refuse(handler, code, message: str):
    """A handler of the same shape as `handler` that aborts every call with `code`."""
    def abort(_request, context):
        context.abort(code, message)
    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(lambda it, ctx: iter([abort(None, ctx)]))
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(lambda req, ctx: iter([abort(req, ctx)]))
    return grpc.unary_unary_rpc_method_handler(abort)


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
