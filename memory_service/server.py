"""`engram-memory serve`: the memory service, several reader processes on one port.

The parent reserves the port (SO_REUSEPORT), starts `workers` processes that each open the LMDB
environment themselves (it must not cross a fork) and run a gRPC server on that same port, then
serves Prometheus metrics for all of them. One client connection lands on one process, so clients
open several channels. SIGTERM or Ctrl-C stops the workers gracefully (in-flight calls finish within
`grace_s`); a worker that dies is logged and restarted.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
import time
from concurrent import futures
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .logs import log, setup

logger = logging.getLogger("engram_memory")


@dataclass
class ServiceConfig:
    db: str = field(default="data/tables", metadata={"help": "LMDB table store directory (from `engram-memory load`)"})
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
                "store's used bytes fit in half of the memory; on; off (memory_service/huge_pages.py)"})
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
        "help": "cluster config (JSON shard map, see memory_service/cluster.py); with --shard, the "
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
        check("huge_pages", self.huge_pages in ("auto", "on", "off"), "must be auto, on or off")
        check("log_level", self.log_level in ("DEBUG", "INFO", "WARNING", "ERROR"), "must be a log level")
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
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind_admin_socket(server, path: str) -> None:
    """AdminService on a unix socket only this account can connect to (created with umask 0177).
    A stale socket of an earlier run is replaced; anything else at the path is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not __import__("stat").S_ISSOCK(st.st_mode):
        raise RuntimeError(f"--admin-socket {path} exists and is not a socket: remove it or pick another path")
    old = os.umask(0o177)
    try:
        if not server.add_insecure_port(f"unix:{path}"):
            raise RuntimeError(f"cannot listen on --admin-socket {path}")
    finally:
        os.umask(old)
    os.chmod(path, 0o600, follow_symlinks=False)


@contextmanager
def _reserve_port(host: str, port: int):
    """Hold the port with SO_REUSEPORT so the workers can all bind it (grpc's multiprocessing example)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _worker_main(cfg: ServiceConfig, port: int, ready, admin_port: int = -1, index: int = 0) -> None:
    """One server process: its own LMDB environment, servicers, health and reflection."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from protos import pb2

    from .auth import TokenInterceptor, read_secret, server_credentials
    from .reader import StoreReader
    from .registry import add_to_server
    from .servicer import AdminServicer, MemoryServicer
    from .store import StoreError, TableStore

    from model_client.malloc import keep_large_buffers, trim

    setup(cfg.log_level)
    keep_large_buffers()  # 16 MiB responses reuse heap memory instead of faulting in fresh pages
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    store = TableStore(cfg.db)
    reader = StoreReader(store, refresh_s=cfg.refresh_ms / 1000, huge_pages=cfg.huge_pages,
                         verify_rows=cfg.verify_rows)
    limit = cfg.max_message_mb << 20
    # Calls beyond `threads` wait for a thread, up to 4x threads in flight; beyond that RESOURCE_EXHAUSTED
    # (clients retry). Streams take at most cfg.stream_limit of the threads (stream_governor.py).
    # Keepalive: the server pings idle connections each minute and drops dead ones; clients may ping
    # every 10 s at most (more is a ping flood: the connection is closed).
    options = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", limit),
               ("grpc.max_send_message_length", limit), ("grpc.max_concurrent_streams", 64),
               ("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
               ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000), ("grpc.http2.max_ping_strikes", 2),
               ("grpc.max_connection_idle_ms", 600_000)]
    read_token = read_secret(cfg.token_file, "--token-file")
    admin_token = read_secret(cfg.admin_token_file, "--admin-token-file")
    socket_path = cfg.admin_socket_path if index == 0 else ""  # one process answers the admin socket

    def make(admin_here: bool, admin_open: bool = False):
        tokens = TokenInterceptor(read_token, admin_token, admin_here, admin_open, admin_where=where)
        return grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.threads),
                           maximum_concurrent_rpcs=4 * cfg.threads, options=options, interceptors=[tokens])
    memory = MemoryServicer(store, reader, cfg.max_request_rows, limit, cfg.shared_memory, cfg.stream_limit)
    admin = AdminServicer(store, memory)
    # Admin calls: with an admin token, on the main port (or --admin-port) and the local socket, each
    # call sending the token; without one, only on the local socket. The main port always knows the
    # methods, so a refused caller learns where admin calls go instead of UNIMPLEMENTED.
    on_main = bool(admin_token) and cfg.admin_port < 0
    where = f"{cfg.admin_host}:{admin_port}" if cfg.admin_port >= 0 else f"unix:{cfg.admin_socket_path}"
    server = make(admin_here=on_main)
    add_to_server(memory, admin, server)
    admin_server = make(admin_here=True) if cfg.admin_port >= 0 else None
    if admin_server:
        add_to_server(None, admin, admin_server)
    local_server = None
    if socket_path:
        local_server = make(admin_here=True, admin_open=True)
        add_to_server(memory, admin, local_server)  # reads too (a loader checks what is published)
        _bind_admin_socket(local_server, socket_path)
        local_server.start()
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [pb2.DESCRIPTOR.services_by_name[s].full_name for s in ("MemoryService", "AdminService")]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
    for srv, address in ((server, f"{cfg.host}:{port}"), (admin_server, f"{cfg.admin_host}:{admin_port}")):
        if srv is not None:
            srv.add_secure_port(address, credentials) if credentials else srv.add_insecure_port(address)
            srv.start()
    ready.put(os.getpid())
    log(logger, logging.INFO, "worker serving", port=port, db=cfg.db)
    trimmed, serving_error = time.monotonic(), ""
    while not stop.wait(0.5):  # SERVING once at least one table is published and readable
        if cfg.trim_s and time.monotonic() - trimmed >= cfg.trim_s:
            trim()
            trimmed = time.monotonic()
        try:  # a store that lost pages is not read again (that would kill this process): NOT_SERVING
            reader.check_file()
            serving = any(store.current_version(t) for t in {m.table for m in store.manifests()})
        except StoreError as e:
            if serving_error != str(e):
                log(logger, logging.ERROR, "store damaged; not serving", error=str(e))
            serving, serving_error = False, str(e)
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", names[0]):
            health_servicer.set(name, status)
    health_servicer.enter_graceful_shutdown()
    for other in (admin_server, local_server):
        if other is not None:
            other.stop(cfg.grace_s)
    server.stop(cfg.grace_s).wait()
    memory.close()
    reader.close()
    store.close()
    log(logger, logging.INFO, "worker stopped")


def _wait_ready(procs, ready, timeout_s: float = 120) -> None:
    """Wait until every worker is serving; fail fast if one exits first (bad port, bad store)."""
    import queue
    pending, deadline = len(procs), time.monotonic() + timeout_s
    while pending:
        try:
            ready.get(timeout=0.2)
            pending -= 1
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                why = f"exited with code {dead[0].exitcode}" if dead else f"not ready after {timeout_s:.0f} s"
                raise RuntimeError(f"a server worker {why}; see its log above")


def serve(cfg: ServiceConfig) -> int:
    setup(cfg.log_level)
    if cfg.create:
        from .store import TableStore
        TableStore(cfg.db).close()
    from .store_check import check_store
    for warning in check_store(cfg.db):  # a damaged store raises here, before any worker starts
        log(logger, logging.WARNING, "version not served", reason=warning)
    if cfg.cluster:  # a store holding another shard would serve rows nobody asked it for
        from .cluster import ClusterConfig
        from .store import TableStore
        store = TableStore(cfg.db, readonly=True)
        try:
            ClusterConfig.load(cfg.cluster).check_store(store.manifests(), cfg.shard)
        finally:
            store.close()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir = tempfile.mkdtemp(prefix="engram-metrics-")
    from . import metrics
    ctx = mp.get_context("spawn")  # fresh interpreters: no grpc or LMDB state crosses a fork
    ready = ctx.Queue()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with _reserve_port(cfg.host, cfg.port) as port, ExitStack() as held:
        admin_port = held.enter_context(_reserve_port(cfg.admin_host, cfg.admin_port)) if cfg.admin_port >= 0 else -1
        procs = [ctx.Process(target=_worker_main, args=(cfg, port, ready, admin_port, i), daemon=True)
                 for i in range(cfg.num_workers)]
        for p in procs:
            p.start()
        _wait_ready(procs, ready)
        if cfg.metrics_port:
            metrics.serve_metrics(cfg.metrics_port, cfg.host)
        log(logger, logging.INFO, "serving", host=cfg.host, port=port, workers=len(procs),
            metrics_port=cfg.metrics_port, db=str(Path(cfg.db).resolve()), admin_port=admin_port,
            admin_socket=cfg.admin_socket_path, admin_token=bool(cfg.admin_token_file),
            tls=bool(cfg.tls_cert), mutual_tls=bool(cfg.tls_client_ca), tokens=bool(cfg.token_file or cfg.admin_token_file))
        while not stopping.wait(0.5):
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping.is_set():
                    log(logger, logging.ERROR, "worker died; restarting", pid=p.pid, exitcode=p.exitcode)
                    metrics.worker_exited(p.pid)
                    procs[i] = ctx.Process(target=_worker_main, args=(cfg, port, ready, admin_port, i),
                                           daemon=True)
                    procs[i].start()
        log(logger, logging.INFO, "shutting down", grace_s=cfg.grace_s)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + cfg.grace_s + 5
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
    log(logger, logging.INFO, "stopped")
    import shutil
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
