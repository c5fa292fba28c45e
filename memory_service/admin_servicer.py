"""AdminServicer: the gRPC AdminService (create a version, write its rows, publish, drop). Who may
call it is decided before it runs (auth.py: an admin token, or the local admin socket)."""
from __future__ import annotations

import logging

from core.logs import log
from core.manifest import TableManifest
from core.store import StoreError, TableStore, checked_table_name
from protos import pb2, pb2_grpc

from .call_record import CallRecord

logger = logging.getLogger("engram_memory")


class AdminServicer(pb2_grpc.AdminServiceServicer):
    def __init__(self, store: TableStore, memory):  # the MemoryServicer: its table-name cache is reset
        self.store, self.memory = store, memory

    def CreateVersion(self, request, context):
        with CallRecord("CreateVersion", context, self.memory.known_tables):
            try:
                manifest = TableManifest.from_json(request.manifest_json)
            except ValueError as e:
                raise StoreError("bad_request", f"manifest_json: {e}") from None
            checked_table_name(manifest.table, "manifest_json's table")
            if request.table and request.table != manifest.table:
                raise StoreError("bad_request", f"table {request.table[:40]!r} differs from the manifest's "
                                 f"table {manifest.table!r}")
            manifest = self.store.create_version(manifest)
            self.memory._tables_at = 0.0
            log(logger, logging.INFO, "version created", table=manifest.table, version=manifest.version)
            return pb2.CreateVersionResponse(version=manifest.version)

    def WriteRows(self, request_iterator, context):
        with CallRecord("WriteRows", context, self.memory.known_tables) as call:
            manifest, buffer, chunk, written = None, bytearray(), 0, 0
            for request in request_iterator:
                if manifest is None:
                    manifest = self.store.manifest(checked_table_name(request.table), request.version)
                    call.label(manifest.table)
                    if request.version == 0 or request.start_row % manifest.chunk_rows:
                        raise StoreError("bad_request", f"a WriteRows stream must name a version and start "
                                         f"at a multiple of chunk_rows={manifest.chunk_rows}; got version "
                                         f"{request.version}, start_row {request.start_row}")
                    chunk = request.start_row // manifest.chunk_rows
                    next_row = request.start_row
                if (request.table, request.version) != (manifest.table, manifest.version):
                    raise StoreError("bad_request", "every message of a WriteRows stream must name the same "
                                     f"table and version ({manifest.table} v{manifest.version})")
                if request.start_row != next_row:
                    raise StoreError("bad_request", f"start_row {request.start_row} does not continue the "
                                     f"stream (expected {next_row}): send rows in order")
                if len(request.rows) % manifest.row_bytes:
                    raise StoreError("bad_request", f"rows has {len(request.rows)} B, not a multiple of "
                                     f"row_bytes={manifest.row_bytes} of table {manifest.table}")
                next_row += len(request.rows) // manifest.row_bytes
                if next_row > manifest.stored_rows:  # local rows: a shard's store starts at 0
                    raise StoreError("bad_request", f"rows up to {next_row} exceed the "
                                     f"{manifest.stored_rows} rows this store holds of table {manifest.table}")
                buffer += request.rows
                chunk_bytes = manifest.chunk_rows * manifest.row_bytes
                while len(buffer) >= chunk_bytes or (buffer and next_row == manifest.stored_rows):
                    piece = bytes(buffer[:chunk_bytes])
                    del buffer[:chunk_bytes]
                    self.store.write_chunks(manifest, [(chunk, piece)])
                    written += len(piece) // manifest.row_bytes
                    chunk += 1
            if manifest is not None and buffer:
                raise StoreError("bad_request", f"stream ended at row {next_row}, inside a chunk: a stream "
                                 f"must end at a multiple of chunk_rows={manifest.chunk_rows} or at num_rows")
            return pb2.WriteRowsResponse(rows_written=written)

    def Publish(self, request, context):
        with CallRecord("Publish", context, self.memory.known_tables) as call:
            call.label(checked_table_name(request.table))
            previous = self.store.publish(request.table, request.version, request.expected_checksum)
            log(logger, logging.INFO, "version published", table=request.table, version=request.version,
                previous=previous)
            return pb2.PublishResponse(previous_version=previous)

    def DropVersion(self, request, context):
        with CallRecord("DropVersion", context, self.memory.known_tables) as call:
            call.label(checked_table_name(request.table))
            if request.version == 0:
                raise StoreError("bad_request", "version is 0: name the version to drop")
            self.store.drop(request.table, request.version, force=request.force)
            self.memory._tables_at = 0.0
            log(logger, logging.INFO, "version dropped", table=request.table, version=request.version)
            return pb2.DropVersionResponse()
