"""ChannelPool: a MemoryClient's gRPC channels, one lookup stream each, and the retry rules.

One channel is one connection, which reaches one server process (the service runs several on one
port), so a client opens several and spreads a batch's requests over them. Every call retries
UNAVAILABLE and RESOURCE_EXHAUSTED (the server is restarting, or busy: no room for a call or a
stream) with exponential backoff and jitter, on another channel, inside the call's deadline; a
request refused for its size (RESOURCE_EXHAUSTED, "split the batch") would be refused again and is
not retried. Other statuses are the caller's error and raise at once.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import TimeoutError as FutureTimeout

import grpc

from core import wire
from core.credentials import TokenMetadata
from protos import pb2, pb2_grpc

from .lookup_stream import LookupStream

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
# a stream the server cancelled (to make room, or a stalled one) carried requests that did not fail
STREAM_RETRYABLE = RETRYABLE + (grpc.StatusCode.CANCELLED,)
NOT_RETRYABLE = "split the batch"  # memory_service.servicer: a request over the size limits


class MemoryServiceError(RuntimeError):
    """The service refused or could not answer; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code


def retryable(error: grpc.RpcError, codes=RETRYABLE) -> bool:
    return error.code() in codes and NOT_RETRYABLE not in (error.details() or "")


def _channel(target: str, options, tls_ca, tls_cert, tls_key, token):
    def read(path):
        with open(path, "rb") as f:
            return f.read()
    if tls_ca:
        credentials = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key) if tls_key else None,
                                                   read(tls_cert) if tls_cert else None)
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, TokenMetadata(token)) if token else channel


class ChannelPool:
    def __init__(self, targets: list[str], channels: int, max_message_mb: int, retries: int, backoff_s: float,
                 tls_ca=None, tls_cert=None, tls_key=None, token=None):
        limit = max_message_mb << 20
        # A local subchannel pool gives every channel its own connection, hence maybe its own process.
        # Keepalive pings every 30 s while calls are open find a dead connection (the server allows
        # pings every 10 s at most).
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit), ("grpc.keepalive_time_ms", 30_000),
                   ("grpc.keepalive_timeout_ms", 10_000)]
        self.channels = [_channel(targets[i % len(targets)], options, tls_ca, tls_cert, tls_key, token)
                         for i in range(max(channels, len(targets)))]
        self.stubs = [pb2_grpc.MemoryServiceStub(ch) for ch in self.channels]
        # Lookup answers parse without protobuf: rows stay a zero-copy view of the received bytes.
        for stub, channel in zip(self.stubs, self.channels):
            stub.Lookup = channel.unary_unary("/engram_memory.v1.MemoryService/Lookup",
                                              request_serializer=pb2.LookupRequest.SerializeToString,
                                              response_deserializer=wire.parse_lookup_response)
        self.streams = [LookupStream(ch) for ch in self.channels]
        self.retries, self.backoff_s = retries, backoff_s
        self._next = 0

    def __len__(self) -> int:
        return len(self.channels)

    def take(self, n: int) -> int:
        """The first of n consecutive channels for the next requests (round robin)."""
        first = self._next
        self._next = (first + n) % len(self.channels)
        return first

    def call(self, method: str, request, timeout_s: float, channel: int | None = None):
        """One RPC, retried on RETRYABLE (another channel each time) with backoff inside timeout_s."""
        if channel is None:
            channel = self.take(1)
        started, attempt = time.monotonic(), 0
        while True:
            stub = self.stubs[(channel + attempt) % len(self.stubs)]
            left = timeout_s - (time.monotonic() - started)
            try:
                return getattr(stub, method)(request, timeout=max(left, 0.001))
            except grpc.RpcError as e:
                left = timeout_s - (time.monotonic() - started)
                if retryable(e) and attempt < self.retries and left > 0:
                    time.sleep(min(self.backoff_s * 2 ** attempt * (0.5 + random.random()), left))
                    attempt += 1
                    continue
                table = getattr(request, "table", "")
                where = f" (table {table})" if table else ""
                raise MemoryServiceError(e.code(), f"{method}{where}: {e.details()}") from None

    def send_all(self, requests: list, first: int, timeout_s: float, retry_request=None) -> list:
        """Send request i on channel first + i's stream (or as a unary call while the server has no
        room for a stream), all at once; wait for every answer. A request whose stream broke, or
        that the server turned away, is sent again as a unary call (retry_request(i, code) builds it:
        e.g. without the shared-memory segment); one request's own error raises for it alone."""
        started = time.monotonic()
        left = lambda: max(0.001, timeout_s - (time.monotonic() - started))  # noqa: E731
        futures = [self.streams[(first + i) % len(self.streams)].submit(r) for i, r in enumerate(requests)]
        answers = []
        for i, (future, request) in enumerate(zip(futures, requests)):
            table = request.table
            try:
                if future is None:
                    raise _NoStream()
                answers.append(future.result(timeout=left()))
            except FutureTimeout:
                raise MemoryServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, f"Lookup (table {table}): no answer "
                                         f"within {timeout_s} s") from None
            except _NoStream:
                answers.append(self.call("Lookup", request, left(), first + i))
            except grpc.RpcError as e:
                if not retryable(e, STREAM_RETRYABLE):
                    raise MemoryServiceError(e.code(), f"Lookup (table {table}): {e.details()}") from None
                again = retry_request(i, e.code()) if retry_request else request
                answers.append(self.call("Lookup", again, left(), first + i + 1))
        return answers

    def close_idle_streams(self, idle_s: float) -> None:
        for stream in self.streams:
            stream.close_if_idle(idle_s)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for channel in self.channels:
            channel.close()


class _NoStream(Exception):
    pass
