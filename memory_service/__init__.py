"""The memory service: Engram tables in LMDB, served over gRPC (arrives with the service issue).
For now it holds the `engram-memory` command line."""
