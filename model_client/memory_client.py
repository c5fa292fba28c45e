"""MemoryClient: batched row lookups against the memory service.

`lookup(table, row_ids)` deduplicates the ids, splits the unique ones into requests of about
`request_bytes` of rows (at most `max_rows_per_request`), sends them at once over several channels
(one channel is one connection, which reaches one server process; channel_pool.py retries
UNAVAILABLE and RESOURCE_EXHAUSTED with backoff inside the deadline), and returns uint8
[N, row_bytes] in request order, duplicates included. Ids are checked against the table's manifest
first, so a bad id is named with its position in the caller's array. One client may be shared by
threads: each has its own shared-memory segment and deadline, and one's failed request fails no
other's.
"""
from __future__ import annotations

import threading

import grpc
import numpy as np

from core import segment_protocol
from core.config import EngramConfig
from core.malloc import keep_large_buffers
from core.manifest import TableManifest
from core.row_format import RowFormat
from core.row_ids import checked_row_ids, checked_tables, deduplicate
from protos import pb2

from .channel_pool import ChannelPool, MemoryServiceError
from .shared_arena import SharedArena

__all__ = ["MemoryClient", "MemoryServiceError", "checked_row_ids", "checked_tables", "deduplicate"]


def _is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if not target.startswith("unix:") else "unix"
    return host in ("127.0.0.1", "localhost", "::1", "unix") or host.startswith("127.")


class MemoryClient:
    # Requests of about 4 MiB of rows: a 65,536-row lookup of 256 B rows runs as 4 requests on 4
    # channels at once. Measured from one client on this 2-core machine (256 B / 160 B rows):
    # 4.2e6 / 6.4e6 rows/s as one request, 4.8e6 / 7.8e6 at 8 MiB, 5.5e6 / 7.6e6 at 4 MiB.
    def __init__(self, target: str | list[str], channels: int = 4, timeout_s: float = 30.0,
                 max_rows_per_request: int = 1 << 20, request_bytes: int = 4 << 20, retries: int = 5,
                 backoff_s: float = 0.05, max_message_mb: int = 256, stream_idle_s: float = 5.0,
                 shared_memory: bool | None = None, tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, token: str | None = None):
        """tls_ca: PEM CA to verify the server (TLS on); tls_cert/tls_key: this client's certificate
        for mutual TLS; token: sent as `authorization: Bearer <token>` on every call."""
        if channels < 1:
            raise ValueError(f"channels must be >= 1 (got {channels})")
        if max_rows_per_request < 1:
            raise ValueError(f"max_rows_per_request must be >= 1 (got {max_rows_per_request})")
        targets = [target] if isinstance(target, str) else list(target)
        self._pool = ChannelPool(targets, channels, max_message_mb, retries, backoff_s, tls_ca, tls_cert,
                                 tls_key, token)
        keep_large_buffers()
        self._closed = threading.Event()
        threading.Thread(target=self._close_idle_streams, args=(stream_idle_s,), daemon=True,
                         name="memory-client-janitor").start()
        self.timeout_s = timeout_s
        self.max_rows_per_request, self.request_bytes = max_rows_per_request, request_bytes
        self._manifests: dict[tuple[str, int], TableManifest] = {}
        self._local = threading.local()  # per thread: the call's deadline, a segment to retire
        # Same host: rows come back through a segment of this client's own memory instead of the
        # transport (shared_memory=None: when every target is a loopback address). A server that
        # cannot or may not reach it answers FAILED_PRECONDITION and the client stops asking.
        self._arena, self._retired_arenas = None, []
        if shared_memory or (shared_memory is None and all(_is_loopback(t) for t in targets)):
            self._arena = SharedArena()

    @property
    def _streams(self):
        return self._pool.streams

    # ---- catalog ------------------------------------------------------------------------------------
    def describe(self, table: str, version: int = 0, refresh: bool = False,
                 timeout_s: float | None = None) -> TableManifest:
        key = (table, version)
        if refresh or key not in self._manifests:
            info = self._pool.call("DescribeTable", pb2.DescribeTableRequest(table=table, version=version),
                                   timeout_s or self._timeout)
            self._manifests[key] = TableManifest.from_json(info.manifest_json)
        return self._manifests[key]

    def forget_manifest(self, table: str, version: int = 0) -> None:
        """Drop the cached manifest: the next describe asks the service."""
        self._manifests.pop((table, version), None)

    def tables(self) -> list[TableManifest]:
        response = self._pool.call("ListTables", pb2.ListTablesRequest(), self._timeout)
        return [TableManifest.from_json(t.manifest_json) for t in response.tables]

    def check(self, config: EngramConfig, tokenizer_sha256: str | None = None,
              compressed_vocab_size: int | None = None) -> dict[int, TableManifest]:
        """Each Engram layer's published table, after checking it was built for this config;
        a mismatch raises ValueError naming the field."""
        return checked_tables(self, config, tokenizer_sha256, compressed_vocab_size)

    def stats(self) -> list:
        return [self._pool.call("Stats", pb2.StatsRequest(), self._timeout, i) for i in range(len(self._pool))]

    # ---- lookups ------------------------------------------------------------------------------------
    def lookup(self, table: str, row_ids, version: int = 0, out: np.ndarray | None = None,
               timeout_s: float | None = None) -> np.ndarray:
        """uint8 [N, row_bytes]: the rows of `row_ids` (any int array) in request order, written into
        `out` when given (the caller's buffer, e.g. a pinned host tier). timeout_s: this call's
        deadline instead of the client's (a cluster client's per-replica try)."""
        self._local.timeout = timeout_s
        try:
            return self._lookup(table, row_ids, version, out)
        finally:
            self._local.timeout = None
            if getattr(self._local, "retire", False):  # a failed attempt may still write: not here
                self._local.retire = False
                self._rotate()

    @property
    def _timeout(self) -> float:
        return getattr(self._local, "timeout", None) or self.timeout_s

    def _lookup(self, table: str, row_ids, version: int, out: np.ndarray | None) -> np.ndarray:
        manifest = self.describe(table, version, timeout_s=self._timeout)
        ids = checked_row_ids(row_ids, manifest)
        shape = (len(ids), manifest.row_bytes)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {list(shape)}; "
                             f"got {out.dtype} {list(out.shape)}")
        increasing = bool(np.all(ids[1:] > ids[:-1]))  # sorted and unique (a prefetcher's batch)
        unique, inverse = (ids, None) if increasing else deduplicate(ids)
        parts = self._fetch(table, unique, version, manifest.row_bytes)
        if inverse is None:  # copy the answers straight into place
            start = 0
            for part in parts:
                out[start:start + len(part)] = part
                start += len(part)
        else:
            rows = parts[0] if len(parts) == 1 else np.concatenate(parts)
            np.take(rows, inverse, axis=0, out=out)
        return out

    def _rotate(self) -> None:
        """A fresh segment for this thread; with no memory for one, the transport from now on."""
        arena = self._arena
        if arena is None:
            return
        try:
            arena.rotate()
        except OSError:
            self._stop_shared_memory()

    def _stop_shared_memory(self) -> None:
        """The transport from now on. Other threads may be reading their segments right now: the
        arena closes with the client, not here."""
        if self._arena is not None:
            self._retired_arenas.append(self._arena)
            self._arena = None

    def lookup_values(self, table: str, row_ids, version: int = 0) -> np.ndarray:
        """float32 [N, head_dim]: `lookup` decoded with the table's row format."""
        manifest = self.describe(table, version)
        return RowFormat(manifest.row_dtype, manifest.head_dim).decode(self.lookup(table, row_ids, version))

    def _segment_for(self, nbytes: int, channels: list[int]):
        """This thread's segment, registered on every channel the requests go to; None: no shared
        memory (not asked for, no memory to reserve, or the server cannot or may not use it)."""
        arena = self._arena
        if arena is None:
            return None
        try:
            segment = arena.segment(nbytes)
            for channel in channels:
                segment.register(channel, lambda name, secret, t, c=channel: self._pool.stubs[c].RegisterSegment.future(
                    pb2.RegisterSegmentRequest(socket=name, secret=secret), timeout=t), min(5.0, self._timeout))
            return segment
        except OSError:  # no memory for the segment: the transport from now on
            self._stop_shared_memory()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and (
                    segment_protocol.DISABLED in e.details() or segment_protocol.UNREACHABLE in e.details()):
                self._stop_shared_memory()  # another host or namespace, or --no-shared-memory
            elif e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # refused: a fresh segment next time
                self._local.retire = True
            # busy (every registration slot taken): this lookup over the transport, same segment
        except Exception:  # noqa: BLE001 a registration that did not finish (deadline)
            self._local.retire = True
        return None

    def _fetch(self, table: str, unique: np.ndarray, version: int, row_bytes: int, again: bool = True) -> list:
        """Rows of sorted unique ids as read-only views of the answers, one per request."""
        if not len(unique):
            return [np.empty((0, row_bytes), dtype=np.uint8)]
        step = max(1, min(self.max_rows_per_request, self.request_bytes // row_bytes))
        pieces = [unique[i:i + step] for i in range(0, len(unique), step)]
        first = self._pool.take(len(pieces))
        channels = [(first + i) % len(self._pool) for i in range(len(pieces))]
        segment = self._segment_for(len(unique) * row_bytes, sorted(set(channels)))
        offsets = [i * step * row_bytes for i in range(len(pieces))]
        try:
            answers = self._send(table, pieces, [version] * len(pieces), first, segment, offsets)
            versions = {a.version for a in answers}
            if len(versions) > 1:  # a publish landed between pieces: refetch the stragglers pinned
                newest = max(versions)
                stale = [i for i, a in enumerate(answers) if a.version != newest]
                for i, a in zip(stale, self._send(table, [pieces[i] for i in stale], [newest] * len(stale),
                                                  first, None, None)):
                    answers[i] = a
        except MemoryServiceError as e:
            if segment is not None:
                self._local.retire = True  # an abandoned request may still write its rows
                if again and e.code == grpc.StatusCode.FAILED_PRECONDITION and segment_protocol.UNKNOWN in str(e):
                    # a reconnect, a restarted server process or an evicted registration: register a
                    # fresh segment and try once more
                    self._local.retire = False
                    self._rotate()
                    return self._fetch(table, unique, version, row_bytes, again=False)
            raise
        known = self._manifests.get((table, version))
        if known is not None and answers[0].version != known.version:
            self._manifests.pop((table, version), None)  # a new version is published: re-read its manifest
        parts = []
        for piece, answer, offset in zip(pieces, answers, offsets):
            if answer.num_rows != len(piece) or answer.row_bytes != row_bytes:
                raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"table {table}: the server answered "
                                         f"{answer.num_rows} rows of {answer.row_bytes} B for {len(piece)} rows")
            if answer.rows_in_shm:
                if segment is None:
                    raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"table {table}: the server says the rows "
                                             "are in a segment this lookup did not send")
                parts.append(segment.array[offset:offset + len(piece) * row_bytes].reshape(-1, row_bytes))
                continue
            if len(answer.rows) != len(piece) * row_bytes:
                raise MemoryServiceError(grpc.StatusCode.DATA_LOSS, f"table {table}: response of "
                                         f"{len(answer.rows)} B for {len(piece)} rows of {row_bytes} B")
            parts.append(np.frombuffer(answer.rows, dtype=np.uint8).reshape(-1, row_bytes))
        return parts

    def _send(self, table: str, pieces, versions, first: int, segment, offsets) -> list:
        """Every piece at once, piece i on channel first + i; with a segment, piece i's rows go to it
        at offsets[i]. A piece sent again after a failure comes back in the response instead."""
        def request(i: int, shared: bool = True):
            r = pb2.LookupRequest(table=table, version=versions[i], row_ids=pieces[i].astype("<i8", copy=False).tobytes())
            if shared and segment is not None:
                r.segment = segment.ids[(first + i) % len(self._pool)]
                r.segment_offset = offsets[i]
            return r

        def retry_without_segment(i: int, code: grpc.StatusCode):
            # A stream the server refused (RESOURCE_EXHAUSTED) never ran the request, and one it
            # cancelled was idle or stalled sending: its rows were written already. A broken
            # connection may leave a gather running: that segment must not be read again.
            if segment is not None and code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED):
                self._local.retire = True
            return request(i, shared=False)
        return self._pool.send_all([request(i) for i in range(len(pieces))], first, self._timeout,
                                   retry_without_segment)

    def _close_idle_streams(self, idle_s: float) -> None:
        while not self._closed.wait(min(1.0, idle_s)):
            self._pool.close_idle_streams(idle_s)

    def close(self) -> None:
        self._closed.set()
        for arena in [self._arena, *self._retired_arenas]:
            if arena is not None:
                arena.close()
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
