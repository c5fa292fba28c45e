"""The memory service: Engram tables served over gRPC from an LMDB store (core.store), by several
processes on one port.

    server, service_config      `engram-memory serve`: its config, the parent and its processes
    servicer, admin_servicer    MemoryService (lookups, into shared memory too) and AdminService
    auth, segments              who may call; client memory handed over for rows
    stream_governor, response_budget, call_record, metrics, registry
                                limits, logs and metrics of every call; health and reflection
    loader, checkpoint, remote_store
                                `engram-memory load`, locally or through a running service's AdminService
    info, health, store_check, process
                                `info`/`drop`, `health`, the store's checks at open, a server as a child

Depends on core/ and protos/ only, never on model_client/.
"""
