"""MemoryClient: batched row lookups against the memory service.

`lookup(table, row_ids)` deduplicates the ids, splits the unique ones into requests of at most
`max_rows_per_request`, sends them at once over several channels (one channel is one connection,
which reaches one server process), retries UNAVAILABLE with exponential backoff inside the deadline,
and returns uint8 [N, row_bytes] in request order, duplicates included. Ids are checked against the
table's manifest first, so a bad id is named with its position in the caller's array.
"""
from __future__ import annotations

import random
import time

import grpc
import numpy as np

from memory_service import wire
from memory_service.manifest import TableManifest, table_name
from protos import pb2, pb2_grpc

from .config import EngramConfig
from .malloc import keep_large_buffers
from .row_format import RowFormat

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class MemoryServiceError(RuntimeError):
    """The service refused or could not answer; `code` is the gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code


def deduplicate(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, inverse) with unique[inverse] == ids; 1.5x faster than np.unique here."""
    order = np.argsort(ids)
    ordered = ids[order]
    first = np.empty(len(ids), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(ids), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


class MemoryClient:
    # 32,768 rows (8 MiB of 256 B rows) per request: a 65,536-row lookup then runs as two requests on
    # two channels, measured 4.2e6 vs 2.8e6 rows/s from one client on this 2-core machine.
    def __init__(self, target: str | list[str], channels: int = 4, timeout_s: float = 30.0,
                 max_rows_per_request: int = 32_768, retries: int = 5, backoff_s: float = 0.05,
                 max_message_mb: int = 256):
        if channels < 1:
            raise ValueError(f"channels must be >= 1 (got {channels})")
        if max_rows_per_request < 1:
            raise ValueError(f"max_rows_per_request must be >= 1 (got {max_rows_per_request})")
        targets = [target] if isinstance(target, str) else list(target)
        limit = max_message_mb << 20
        # A local subchannel pool gives every channel its own connection, hence maybe its own process.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", limit),
                   ("grpc.max_send_message_length", limit)]
        self._channels = [grpc.insecure_channel(targets[i % len(targets)], options=options)
                          for i in range(max(channels, len(targets)))]
        self._stubs = [pb2_grpc.MemoryServiceStub(ch) for ch in self._channels]
        # Lookup answers parse without protobuf: rows stay a zero-copy view of the received bytes.
        for stub, channel in zip(self._stubs, self._channels):
            stub.Lookup = channel.unary_unary("/engram_memory.v1.MemoryService/Lookup",
                                              request_serializer=pb2.LookupRequest.SerializeToString,
                                              response_deserializer=wire.parse_lookup_response)
        keep_large_buffers()
        self._next = 0
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_rows_per_request = max_rows_per_request
        self._manifests: dict[tuple[str, int], TableManifest] = {}

    # ---- catalog ------------------------------------------------------------------------------------
    def describe(self, table: str, version: int = 0, refresh: bool = False) -> TableManifest:
        key = (table, version)
        if refresh or key not in self._manifests:
            info = self._call("DescribeTable", pb2.DescribeTableRequest(table=table, version=version))
            self._manifests[key] = TableManifest.from_json(info.manifest_json)
        return self._manifests[key]

    def tables(self) -> list[TableManifest]:
        response = self._call("ListTables", pb2.ListTablesRequest())
        return [TableManifest.from_json(t.manifest_json) for t in response.tables]

    def check(self, config: EngramConfig, tokenizer_sha256: str | None = None,
              compressed_vocab_size: int | None = None) -> dict[int, TableManifest]:
        """Each Engram layer's published table, after checking it was built for this config;
        a mismatch raises ValueError naming the field."""
        out = {}
        for layer in config.layer_ids:
            manifest = self.describe(table_name(layer), refresh=True)
            manifest.check_compatible(config, tokenizer_sha256, compressed_vocab_size)
            out[layer] = manifest
        return out

    def stats(self) -> list:
        return [stub.Stats(pb2.StatsRequest(), timeout=self.timeout_s) for stub in self._stubs]

    # ---- lookups ------------------------------------------------------------------------------------
    def lookup(self, table: str, row_ids, version: int = 0) -> np.ndarray:
        """uint8 [N, row_bytes]: the rows of `row_ids` (any int array) in request order."""
        ids = np.asarray(row_ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"row_ids must be integers; got dtype {ids.dtype}")
        ids = ids.reshape(-1).astype(np.int64, copy=False)
        manifest = self.describe(table, version)
        if ids.size and (ids.min() < 0 or ids.max() >= manifest.num_rows):
            position = int(np.flatnonzero((ids < 0) | (ids >= manifest.num_rows))[0])
            raise ValueError(f"row_ids[{position}] = {int(ids[position])} is outside table {table} "
                             f"v{manifest.version}'s rows [0, {manifest.num_rows})")
        unique, inverse = deduplicate(ids)
        rows = self._fetch(table, unique, version, manifest.row_bytes)
        return np.take(rows, inverse, axis=0)  # always a fresh, writable array the caller owns

    def lookup_values(self, table: str, row_ids, version: int = 0) -> np.ndarray:
        """float32 [N, head_dim]: `lookup` decoded with the table's row format."""
        manifest = self.describe(table, version)
        return RowFormat(manifest.row_dtype, manifest.head_dim).decode(self.lookup(table, row_ids, version))

    def _fetch(self, table: str, unique: np.ndarray, version: int, row_bytes: int) -> np.ndarray:
        if not len(unique):
            return np.empty((0, row_bytes), dtype=np.uint8)
        step = self.max_rows_per_request
        pieces = [unique[i:i + step] for i in range(0, len(unique), step)]
        answers = self._send_all(table, pieces, [version] * len(pieces))
        versions = {a.version for a in answers}
        if len(versions) > 1:  # a publish landed between pieces: refetch the stragglers pinned
            newest = max(versions)
            stale = [i for i, a in enumerate(answers) if a.version != newest]
            for i, a in zip(stale, self._send_all(table, [pieces[i] for i in stale], [newest] * len(stale))):
                answers[i] = a
        if answers[0].version != self._manifests[(table, version)].version:
            self._manifests.pop((table, version))  # a new version is published: re-read its manifest
        parts = []
        for piece, answer in zip(pieces, answers):
            if answer.row_bytes != row_bytes or len(answer.rows) != len(piece) * row_bytes:
                raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"table {table}: response of "
                                         f"{len(answer.rows)} B for {len(piece)} rows of {row_bytes} B")
            parts.append(np.frombuffer(answer.rows, dtype=np.uint8).reshape(-1, row_bytes))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _send_all(self, table: str, pieces, versions) -> list:
        """Send every piece at once (spread over the channels) and wait for all answers."""
        requests = [pb2.LookupRequest(table=table, version=v, row_ids=p.astype("<i8", copy=False).tobytes())
                    for p, v in zip(pieces, versions)]
        calls = [self._start("Lookup", r) for r in requests]
        return [self._finish(call, "Lookup", r) for call, r in zip(calls, requests)]

    # ---- transport ----------------------------------------------------------------------------------
    def _start(self, method: str, request):
        stub = self._stubs[self._next % len(self._stubs)]
        self._next += 1
        return getattr(stub, method).future(request, timeout=self.timeout_s), time.monotonic()

    def _finish(self, call, method: str, request):
        future, started = call
        attempt = 0
        while True:
            try:
                return future.result()
            except grpc.RpcError as e:
                code = e.code()
                waited = time.monotonic() - started
                if code in RETRYABLE and attempt < self.retries and waited < self.timeout_s:
                    delay = self.backoff_s * 2 ** attempt * (0.5 + random.random())
                    time.sleep(min(delay, max(0.0, self.timeout_s - waited)))
                    attempt += 1
                    future, _ = self._start(method, request)
                    continue
                table = getattr(request, "table", "")
                where = f" (table {table})" if table else ""
                raise MemoryServiceError(code, f"{method}{where}: {e.details()}") from None

    def _call(self, method: str, request):
        return self._finish(self._start(method, request), method, request)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
