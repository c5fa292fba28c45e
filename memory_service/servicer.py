"""MemoryServicer: the gRPC MemoryService (lookups, catalog, segments, stats); AdminService is in
admin_servicer.py.

Every refusal carries the status that fits and a message naming the field, the table and the valid
range; nothing a client sends can stop the process from serving the next request, and one request's
failure never fails another's: on a StreamLookup a failed request gets an error answer in its place
and the stream goes on.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack

import grpc
import numpy as np

from core import wire
from core.manifest import TableManifest
from core.reader import StoreReader
from core.store import StoreError, TableStore, checked_table_name
from protos import pb2, pb2_grpc

from . import metrics
from .call_record import NOT_RETRYABLE, CallRecord, abort
from .response_budget import ResponseBudget
from .segments import SegmentTable
from .status import grpc_code
from .stream_governor import StreamGovernor


class MemoryServicer(pb2_grpc.MemoryServiceServicer):
    def __init__(self, store: TableStore, reader: StoreReader, max_request_rows: int, max_message_bytes: int,
                 shared_memory: bool = True, max_streams: int = 48, budget: ResponseBudget | None = None):
        self.store, self.reader = store, reader
        # answers not yet sent: by default one of the largest per connection, two per process
        # (gRPC holds a second copy of an answer while it sends it: RSS can reach twice this)
        self.budget = budget or ResponseBudget(2 * max_message_bytes, max_message_bytes)
        self.segments = SegmentTable(enabled=shared_memory)
        self.streams = StreamGovernor(max_streams, on_event=lambda r: metrics.STREAMS_EVICTED.labels(r).inc())
        self.max_request_rows, self.max_message_bytes = max_request_rows, max_message_bytes
        self.started = time.time()
        self.counts = {"requests": 0, "rows": 0, "bytes": 0, "errors": 0}
        self._tables: set[str] = set()
        self._tables_at = 0.0

    def known_tables(self) -> set[str]:
        """Table names for metric labels, re-read at most every 5 s."""
        if time.monotonic() - self._tables_at > 5:
            self.reader.check_file()
            self._tables = {m.table for m in self.store.manifests()}
            self._tables_at = time.monotonic()
        return self._tables

    # ---- lookups ------------------------------------------------------------------------------------
    def _rows(self, request, peer: str, call: CallRecord, hold) -> bytes:
        """A serialized LookupResponse (see wire.py; registry.py sends it as it is); StoreError if refused.
        hold(release): what to do with the budget reservation of an answer carrying rows."""
        checked_table_name(request.table)
        call.label(request.table)
        size = len(request.row_ids)
        if size % 8:
            raise StoreError("bad_request", f"row_ids of table {request.table} has {size} bytes, "
                             "not a multiple of 8 (row ids are little-endian int64)")
        n = size // 8
        if n > self.max_request_rows:
            raise StoreError("too_large", f"request for table {request.table} has {n} row ids; the "
                             f"limit is {self.max_request_rows} per request: {NOT_RETRYABLE}")
        ids = np.frombuffer(request.row_ids, dtype="<i8")
        with ExitStack() as held:  # snapshots stay open until the rows are copied out
            snap = held.enter_context(self.reader.snapshot())
            try:
                view = snap.view(request.table, request.version)
            except StoreError as e:
                # a version another server process already serves may be newer than this
                # process's snapshot: look again before refusing
                if e.reason != "not_found" or not request.version:
                    raise
                view = held.enter_context(self.reader.snapshot(fresh=True)).view(request.table, request.version)
            m = view.manifest
            if n * m.row_bytes > self.max_message_bytes:
                raise StoreError("too_large", f"{n} rows of table {m.table} are {n * m.row_bytes} B; "
                                 f"responses are limited to {self.max_message_bytes} B = "
                                 f"{self.max_message_bytes // m.row_bytes} rows of this table: {NOT_RETRYABLE}")
            if request.segment:  # same host: the rows go straight into the client's own segment
                view.gather_into(ids, self.segments.rows(request.segment, peer, request.segment_offset, n,
                                                         m.row_bytes))
                data = wire.lookup_response(m.table, m.version, m.row_bytes, n, None, request.request_id,
                                            rows_in_shm=True)
            else:
                hold(self.budget.reserve(peer, n * m.row_bytes))
                data = wire.lookup_response(m.table, m.version, m.row_bytes, n,
                                            lambda out: view.gather_into(ids, out), request.request_id)
        metrics.ROWS.labels(call.rpc, call.table).inc(n)
        metrics.BYTES.labels(call.rpc, call.table).inc(n * m.row_bytes)
        self.counts["rows"] += n
        self.counts["bytes"] += n * m.row_bytes
        return data

    def Lookup(self, request, context):
        self.counts["requests"] += 1
        try:
            with CallRecord("Lookup", context, self.known_tables) as call:
                # the reservation goes back when the call ends (its answer sent, or the call failed);
                # at once if it has ended already (add_callback then refuses the callback)
                return self._rows(request, context.peer(), call, lambda release: context.add_callback(release) or release())
        except BaseException:
            self.counts["errors"] += 1
            raise

    def StreamLookup(self, request_iterator, context):
        try:
            stream = self.streams.admit(context.peer(), context)
        except StoreError as e:
            abort(context, grpc_code(e), str(e))
        peer, held = context.peer(), []
        try:
            while True:
                stream.waiting()
                try:
                    request = next(request_iterator)
                except StopIteration:
                    return
                stream.working()
                self.counts["requests"] += 1
                with CallRecord("StreamLookup", context, self.known_tables, abort=False) as call:
                    data = self._rows(request, peer, call, held.append)
                if call.failure is not None:  # this request alone fails; the stream goes on
                    self.counts["errors"] += 1
                    code, message = call.failure
                    data = pb2.LookupResponse(table=request.table[:128], request_id=request.request_id,
                                              error_code=getattr(grpc.StatusCode, code).value[0],
                                              error_message=message).SerializeToString()
                stream.sending()
                yield data  # returns once gRPC has sent it: its reservation goes back
                while held:
                    held.pop()()
        finally:
            while held:
                held.pop()()
            self.streams.release(stream)

    def RegisterSegment(self, request, context):
        # FAILED_PRECONDITION: this server cannot reach the client's segment (or may not): the client's
        # probe for a faster path, answered as expected, not an error
        with CallRecord("RegisterSegment", context, self.known_tables, expected=("FAILED_PRECONDITION",)):
            segment, size = self.segments.register(request.socket, request.secret, context.peer())
            return pb2.RegisterSegmentResponse(segment=segment, size=size, pid=os.getpid())

    # ---- catalog ------------------------------------------------------------------------------------
    def _info(self, manifest: TableManifest) -> pb2.TableInfo:
        versions = [m.version for m in self.store.manifests(manifest.table)]
        return pb2.TableInfo(table=manifest.table, version=manifest.version, status=manifest.status,
                             num_rows=manifest.num_rows, row_bytes=manifest.row_bytes,
                             row_dtype=manifest.row_dtype, manifest_json=manifest.to_json(), versions=versions)

    def ListTables(self, request, context):
        with CallRecord("ListTables", context, self.known_tables):
            self.reader.check_file()
            tables = sorted({m.table for m in self.store.manifests()})
            infos = []
            for table in tables:
                if self.store.current_version(table):
                    infos.append(self._info(self.store.manifest(table)))
            return pb2.ListTablesResponse(tables=infos)

    def DescribeTable(self, request, context):
        with CallRecord("DescribeTable", context, self.known_tables) as call:
            call.label(checked_table_name(request.table))
            self.reader.check_file()
            return self._info(self.store.manifest(request.table, request.version))

    def Stats(self, request, context):
        return pb2.StatsResponse(pid=os.getpid(), uptime_s=time.time() - self.started, **self.counts)

    def close(self) -> None:
        self.segments.close()
        self.streams.close()
