"""Who may call: TLS credentials for the listening ports, and a bearer-token check on every call.

Tokens travel as `authorization: Bearer <token>` metadata (over TLS outside a trusted network; the
scheme is case-insensitive, RFC 7235). MemoryService calls need the read token when one is set (the
admin token is accepted too). AdminService is closed by default:
- with an admin token (`--admin-token-file`), every admin call must send it, on every address; the
  read token never authorizes one (PERMISSION_DENIED);
- without one, AdminService is served only on the server's local unix socket (`--admin-socket`,
  mode 0600: the file system's permission is the credential), and a TCP port refuses admin calls.
Health checks and reflection stay open, so orchestrators can probe a server without secrets. A
refused call gets UNAUTHENTICATED or PERMISSION_DENIED, and nothing else happens.
"""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN = "/engram_memory.v1.AdminService/"


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


def bearer_token(metadata) -> str:
    """The token of an `authorization: Bearer <token>` header ("" when there is none)."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def _same(sent: str, token: str) -> bool:
    return bool(token) and hmac.compare_digest(sent.encode(), token.encode())


class TokenInterceptor(grpc.ServerInterceptor):
    """admin_here: this address takes admin calls (with the admin token, when one is set);
    admin_open: ... and without any token when none is set (the local unix socket). Refused admin
    calls get PERMISSION_DENIED naming where admin calls go (`admin_where`)."""

    def __init__(self, read_token: str = "", admin_token: str = "", admin_here: bool = True,
                 admin_open: bool = False, admin_where: str = ""):
        self.read_token, self.admin_token = read_token, admin_token
        self.admin_here, self.admin_open, self.admin_where = admin_here, admin_open, admin_where

    def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(OPEN):
            return continuation(details)
        sent = bearer_token(details.invocation_metadata)
        if method.startswith(ADMIN):
            if self.admin_here and self.admin_token:
                if _same(sent, self.admin_token):
                    return continuation(details)
                code = grpc.StatusCode.PERMISSION_DENIED if _same(sent, self.read_token) else \
                    grpc.StatusCode.UNAUTHENTICATED
                return _refuse(continuation(details), code, f"{method} needs the admin token "
                               "(`authorization: Bearer <admin token>`); the read token is not one")
            if self.admin_here and self.admin_open:
                return continuation(details)
            return _refuse(continuation(details), grpc.StatusCode.PERMISSION_DENIED,
                           f"{method}: AdminService is not open on this address; admin calls go to "
                           f"{self.admin_where or 'no address (--admin-socket off)'}, with the admin token "
                           "when the server has one (--admin-token-file)")
        if self.read_token and not (_same(sent, self.read_token) or _same(sent, self.admin_token)):
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
