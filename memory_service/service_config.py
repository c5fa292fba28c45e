"""ServiceConfig: every setting of `engram-memory serve` (its flags are derived from the fields),
validated before any process starts, with errors that name the flag."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServiceConfig:
    SETTINGS_FILE = "config"  # `serve --config FILE`: these fields as JSON; flags typed override them
    config: str = field(default="", metadata={
        "metavar": "FILE", "help": "JSON file of these settings, keys as the flags without dashes (e.g. "
                                   '{"db": "data/tables", "port": 50051, "token_file": "read.token"}); '
                                   "flags given on the command line override it"})
    db: str = field(default="", metadata={"help": "LMDB table store directory (from `engram-memory load`); required"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on; 0.0.0.0 to accept workers from other hosts (needs --token-file, "
                "--tls-client-ca or --insecure)"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0: pick a free one and log it)"})
    workers: int = field(default=0, metadata={
        "help": "server processes sharing the port (0: one per CPU core, at most 8)"})
    threads: int = field(default=64, metadata={
        "help": "request threads per server process; each open lookup stream holds one"})
    # 0: threads - threads // 4 (48 of 64), so a quarter of the threads always answer unary calls,
    # health checks and segment registrations however many streams clients open
    max_streams: int = field(default=0, metadata={
        "help": "open lookup streams per server process (0: three quarters of --threads); beyond it a new "
                "stream replaces one idle for 1 s or more, or is refused (stream_governor.py)"})
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus /metrics port (0: off)"})
    max_request_rows: int = field(default=1 << 20, metadata={
        "help": "row ids per Lookup request; more is RESOURCE_EXHAUSTED (clients chunk below it)"})
    # 256 MiB carries 1,048,576 rows of 256 B; gRPC's default 4 MiB would cap a response at 16,384.
    max_message_mb: int = field(default=256, metadata={"help": "largest request or response, MiB"})
    refresh_ms: int = field(default=50, metadata={
        "help": "how often readers look for newly published versions, milliseconds"})
    huge_pages: str = field(default="auto", metadata={
        "help": "map table pages 2 MiB at a time (one TLB entry per 2 MiB of rows): auto = when the "
                "store's used bytes fit in half of the memory; on; off (core/huge_pages.py)"})
    # issue 19, BENCHMARKS.md "Rows not in memory": a 36 GiB table (1.5x RAM), every row a disk read,
    # 4 server processes, 8,192-row requests: page faults 15.7k rows/s (queue depth 2.3); threads of
    # preads 47.9k (depth 29, the GIL on 2 cores); advise 62.9k at depth 225, the block layer's own
    # limit (nr_requests 256), 1.07x fio's io_uring O_DIRECT IOPS at that depth.
    read_mode: str = field(default="advise", metadata={
        "help": "how rows not in the page cache are read, for tables above --read-above-mb: advise (the "
                "kernel queues every page of a request at once, POSIX_FADV_WILLNEED, up to the disk "
                "queue's nr_requests), threads (--read-depth threads of preads per process), or off "
                "(each row faults in through the memory map, one read at a time per process)"})
    read_depth: int = field(default=32, metadata={
        "help": "reads in flight per server process with --read-mode threads (advise needs none)"})
    read_bytes: int = field(default=4096, metadata={
        "help": "the most one such read covers, bytes (a multiple of 4096): runs of adjacent pages up to it"})
    read_above_mb: int = field(default=-1, metadata={
        "help": "read ahead only for tables of more than this many MiB (-1: half of this machine's memory, "
                "below which a table's pages stay cached once read)"})
    trim_s: float = field(default=60.0, metadata={
        "help": "seconds between giving freed heap memory back to the kernel (malloc_trim; 0: never): "
                "responses keep up to 256 MiB of freed buffers for reuse in between"})
    grace_s: float = field(default=5.0, metadata={"help": "seconds in-flight calls get to finish on SIGTERM"})
    create: bool = field(default=False, metadata={
        "help": "create an empty store if --db does not exist (tables then come through AdminService)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS (with --tls-key)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(default="", metadata={
        "help": "PEM CA: clients must present a certificate it signed (mutual TLS)"})
    token_file: str = field(default="", metadata={
        "help": "file holding the token every MemoryService call must send as `authorization: Bearer ...`"})
    admin_token_file: str = field(default="", metadata={
        "help": "file holding the token every AdminService call must send (the read token is refused "
                "there); without it AdminService is served only on --admin-socket"})
    admin_socket: str = field(default="", metadata={
        "help": "unix socket serving AdminService to local users of this account (mode 0600; '': "
                "DB/admin.sock; 'off': none). Needs the admin token too when one is set"})
    admin_port: int = field(default=-1, metadata={
        "help": "with --admin-token-file: serve AdminService on its own TCP port of --admin-host instead of "
                "the main port (-1: the main port; 0: a free one)"})
    admin_host: str = field(default="127.0.0.1", metadata={"help": "address of the admin port"})
    cluster: str = field(default="", metadata={
        "help": "cluster config (JSON shard map, see core/cluster.py); with --shard, the "
                "server refuses a store holding another shard"})
    shard: int = field(default=-1, metadata={"help": "this server's shard in --cluster"})
    shared_memory: bool = field(default=True, metadata={
        "help": "let clients on this host hand over a sealed memory segment of their own (a memfd) to "
                "receive rows in instead of the gRPC transport; a segment serves only the connection "
                "that registered it (memory_service/segments.py)"})
    # measured: BENCHMARKS.md (checksum cost); off only to measure that cost
    verify_rows: bool = field(default=True, metadata={
        "help": "check every row read against the checksum stored with it; a row that fails is answered "
                "DATA_LOSS, never served (row_check.py)"})
    insecure: bool = field(default=False, metadata={
        "help": "allow a non-loopback --host without --token-file or --tls-client-ca: anyone who reaches "
                "the port can then read every table"})

    def __post_init__(self):
        def check(name, ok, why):
            if not ok:
                raise ValueError(f"ServiceConfig.{name}: {why} (got {getattr(self, name)!r})")
        check("port", 0 <= self.port < 65536, "must be a TCP port in [0, 65535]")
        check("metrics_port", 0 <= self.metrics_port < 65536, "must be a TCP port in [0, 65535] (0: off)")
        check("workers", 0 <= self.workers <= 64, "must be in [0, 64]")
        check("threads", 1 <= self.threads <= 256, "must be in [1, 256]")
        check("max_request_rows", self.max_request_rows >= 1, "must be >= 1")
        check("max_message_mb", 4 <= self.max_message_mb <= 2047, "must be in [4, 2047] MiB")
        check("refresh_ms", self.refresh_ms >= 1, "must be >= 1")
        check("grace_s", self.grace_s >= 0, "must be >= 0")
        check("trim_s", self.trim_s >= 0, "must be >= 0 (0: never)")
        check("read_depth", 1 <= self.read_depth <= 256, "must be in [1, 256]")
        check("read_mode", self.read_mode in ("advise", "threads", "off"), "must be advise, threads or off")
        check("read_bytes", self.read_bytes >= 4096 and self.read_bytes % 4096 == 0 and self.read_bytes <= 1 << 20,
              "must be a multiple of 4096 in [4096, 1048576]")
        check("read_above_mb", self.read_above_mb >= -1, "must be >= 0 MiB, or -1 for half the memory")
        check("huge_pages", self.huge_pages in ("auto", "on", "off"), "must be auto, on or off")
        check("log_level", self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"), "must be a log level")
        check("db", bool(self.db), "name the table store: --db DIR (or \"db\" in --config FILE)")
        check("db", self.create or (Path(self.db) / "data.mdb").is_file(),
              "no table store there: create one with `engram-memory load --db DIR ...` or pass --create")
        check("shard", (self.shard >= 0) == bool(self.cluster), "--cluster and --shard go together")
        check("tls_key", bool(self.tls_cert) == bool(self.tls_key), "--tls-cert and --tls-key go together")
        check("tls_client_ca", not self.tls_client_ca or self.tls_cert, "mutual TLS needs --tls-cert too")
        check("admin_port", -1 <= self.admin_port < 65536, "must be -1 (main port), 0 (free) or a TCP port")
        check("admin_port", self.admin_port < 0 or self.admin_token_file,
              "--admin-port needs --admin-token-file: without an admin token AdminService is served only "
              "on the local --admin-socket")
        check("max_streams", 0 <= self.max_streams < self.threads, "must be in [0, --threads)")
        check("admin_socket", len(self.admin_socket_path) < 108,
              "unix socket paths are limited to 107 bytes: pass a shorter --admin-socket")
        check("host", is_loopback(self.host) or self.token_file or self.tls_client_ca or self.insecure,
              f"--host {self.host} is not a loopback address: anyone who reaches the port could read every "
              "table. Give --token-file (or --tls-client-ca), or --insecure to serve it open anyway")

    @property
    def num_workers(self) -> int:
        return self.workers or min(8, os.cpu_count() or 1)

    @property
    def stream_limit(self) -> int:
        return self.max_streams or self.threads - self.threads // 4

    @property
    def admin_socket_path(self) -> str:
        if self.admin_socket == "off":
            return ""
        return os.path.abspath(self.admin_socket or os.path.join(self.db, "admin.sock"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
