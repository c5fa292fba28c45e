"""RemoteStore: a running memory service's store, written through its AdminService.

`engram-memory load --target HOST:PORT --token-file ADMIN_TOKEN` loads tables into a service that is
already serving (docker-compose's loader does: the memory service owns its volume, the loader holds
the admin token from a compose secret). It offers the few TableStore methods the loader uses, each
one AdminService or MemoryService call: CreateVersion, one WriteRows stream per commit of chunks,
Publish (which verifies and finishes the version), DropVersion, DescribeTable.
"""
from __future__ import annotations

import time

import grpc

from core.credentials import TokenMetadata
from core.manifest import TableManifest
from core.store import COMMIT_BYTES, StoreError
from protos import pb2, pb2_grpc

from .status import reason_of

MAX_MESSAGE = 256 << 20


class RemoteStore:
    def __init__(self, target: str, token: str = "", tls_ca: str = "", wait_s: float = 0.0,
                 commit_bytes: int = COMMIT_BYTES):
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        if tls_ca:
            with open(tls_ca, "rb") as f:
                channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(f.read()), options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        self._channel = grpc.intercept_channel(channel, TokenMetadata(token)) if token else channel
        self.path, self.commit_bytes = target, commit_bytes  # `path`: named in messages, as TableStore's
        self._admin = pb2_grpc.AdminServiceStub(self._channel)
        self._memory = pb2_grpc.MemoryServiceStub(self._channel)
        self._wait_until_reachable(wait_s)

    def _wait_until_reachable(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._memory.ListTables(pb2.ListTablesRequest(), timeout=5)
                return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise StoreError(reason_of(e.code().name), f"memory service {self.path}: {e.code().name}: {e.details()}") from None
                time.sleep(1.0)

    def _call(self, stub_method, request, what: str):
        try:
            return stub_method(request, timeout=600)
        except grpc.RpcError as e:
            raise StoreError(reason_of(e.code().name), f"{what} at {self.path}: {e.code().name}: {e.details()}") from None

    def manifest(self, table: str, version: int = 0) -> TableManifest:
        info = self._call(self._memory.DescribeTable, pb2.DescribeTableRequest(table=table, version=version),
                          f"DescribeTable {table}")
        return TableManifest.from_json(info.manifest_json)

    def current_version(self, table: str) -> int:
        try:
            return self.manifest(table).version
        except StoreError as e:
            if e.reason == "not_found":
                return 0
            raise

    def create_version(self, manifest: TableManifest) -> TableManifest:
        answer = self._call(self._admin.CreateVersion, pb2.CreateVersionRequest(
            table=manifest.table, manifest_json=manifest.to_json()), f"CreateVersion {manifest.table}")
        return self.manifest(manifest.table, answer.version)

    def write_chunks(self, manifest: TableManifest, chunks, progress=None) -> None:
        """One WriteRows stream per ~commit_bytes of whole chunks (the server buffers a chunk at most)."""
        chunks, more = iter(chunks), [True]

        def stream():
            pending = 0
            for index, rows in chunks:  # a plain loop: ending this stream must not close `chunks`
                yield pb2.WriteRowsRequest(table=manifest.table, version=manifest.version,
                                           start_row=index * manifest.chunk_rows, rows=rows)
                if progress is not None:
                    progress(len(rows) // manifest.row_bytes)
                pending += len(rows)
                if pending >= self.commit_bytes:
                    return
            more[0] = False
        while more[0]:
            self._call(self._admin.WriteRows, stream(), f"WriteRows {manifest.table}")

    def finish(self, table: str, version: int) -> TableManifest:
        return self.manifest(table, version)  # Publish finishes (checks and seals) the version itself

    def publish(self, table: str, version: int, expected_checksum: str = "") -> int:
        return self._call(self._admin.Publish, pb2.PublishRequest(table=table, version=version,
                                                                   expected_checksum=expected_checksum),
                          f"Publish {table} v{version}").previous_version

    def drop(self, table: str, version: int, force: bool = False) -> None:
        self._call(self._admin.DropVersion, pb2.DropVersionRequest(table=table, version=version, force=force),
                   f"DropVersion {table} v{version}")

    def close(self) -> None:
        self._channel.close()

