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
from pathlib import Path

from core.huge_pages import memory_bytes
from core.logs import log, setup

from .service_config import ServiceConfig  # noqa: F401 (the CLI finds ServiceConfig here)

logger = logging.getLogger("engram_memory")


def _bind_admin_socket(server, path: str) -> None:
    """AdminService on a unix socket only this account can connect to (created with umask 0177).
    A stale socket of an earlier run is replaced; anything else at the path is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not __import__("stat").S_ISSOCK(st.st_mode):
        raise RuntimeError(f"--admin-socket {path} exists and is not a socket: remove it or pick another path")
    if st is not None:  # another server's live socket (replicas sharing a store) is not taken over
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(0.5)
        try:
            probe.connect(path)
            raise FileExistsError(path)
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
            pass  # a stale socket of an earlier run: replaced below
        finally:
            probe.close()
    old = os.umask(0o177)
    try:
        if not server.add_insecure_port(f"unix:{path}"):
            raise RuntimeError(f"cannot listen on --admin-socket {path}")
    finally:
        os.umask(old)
    os.chmod(path, 0o600, follow_symlinks=False)


@contextmanager
def _reserve_port(host: str, port: int, flag: str = "--port"):
    """Hold the port with SO_REUSEPORT so the workers can all bind it (grpc's multiprocessing example)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR: connections of a server that just stopped linger in TIME_WAIT and must not block a
    # restart on its port; on Linux it never lets a second socket bind beside one that is listening.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # first without SO_REUSEPORT: another server holding the port with it must not be joined
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.close()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror}: another server "
                           f"there?); pick another {flag}, or 0 for a free one") from None
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _worker_main(cfg: ServiceConfig, port: int, ready, admin_port: int = -1, index: int = 0) -> None:
    """One server process: its own LMDB environment, servicers, health and reflection."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from core.credentials import read_secret
    from core.malloc import keep_large_buffers, trim
    from core.reader import StoreReader
    from core.store import StoreError, TableStore
    from protos import pb2

    from .admin_servicer import AdminServicer
    from .auth import TokenInterceptor, server_credentials
    from .registry import add_to_server, enable_reflection
    from .servicer import MemoryServicer

    setup(cfg.log_level)
    keep_large_buffers()  # 16 MiB responses reuse heap memory instead of faulting in fresh pages
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    store = TableStore(cfg.db)
    memory = memory_bytes()  # or the container's limit
    reader = StoreReader(store, refresh_s=cfg.refresh_ms / 1000, huge_pages=cfg.huge_pages,
                         verify_rows=cfg.verify_rows, read_mode=cfg.read_mode, read_depth=cfg.read_depth,
                         read_bytes=cfg.read_bytes,
                         read_above=memory // 2 if cfg.read_above_mb < 0 else cfg.read_above_mb << 20)
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
        try:
            _bind_admin_socket(local_server, socket_path)
            local_server.start()
        except FileExistsError:
            local_server = None
            log(logger, logging.WARNING, "admin socket in use by another server on this store; this one "
                "serves none (give it --admin-socket PATH)", admin_socket=socket_path)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [pb2.DESCRIPTOR.services_by_name[s].full_name for s in ("MemoryService", "AdminService")]
    enable_reflection([*names, health.SERVICE_NAME], server)
    for name in ("", *names):  # nothing is SERVING before update_health() has looked
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
    for srv, address in ((server, f"{cfg.host}:{port}"), (admin_server, f"{cfg.admin_host}:{admin_port}")):
        if srv is not None:
            srv.add_secure_port(address, credentials) if credentials else srv.add_insecure_port(address)
            srv.start()
    serving_error = [""]

    def update_health() -> None:
        """SERVING once a table is published and the store is readable; AdminService SERVING where
        this port takes admin calls (with the admin token). A store that lost pages is not read
        again (that would kill this process): NOT_SERVING."""
        try:
            reader.check_file()
            serving = any(store.current_version(t) for t in {m.table for m in store.manifests()})
        except StoreError as e:
            if serving_error[0] != str(e):
                log(logger, logging.ERROR, "store damaged; not serving", error=str(e))
            serving, serving_error[0] = False, str(e)
        up, down = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", names[0]):
            health_servicer.set(name, up if serving else down)
        health_servicer.set(names[1], up if on_main and not serving_error[0] else down)
    update_health()  # before the first call: HealthServicer starts "" as SERVING otherwise
    ready.put(os.getpid())
    log(logger, logging.INFO, "worker serving", port=port, db=cfg.db)
    trimmed = time.monotonic()
    while not stop.wait(0.5):
        if cfg.trim_s and time.monotonic() - trimmed >= cfg.trim_s:
            trim()
            trimmed = time.monotonic()
        update_health()
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
        from core.store import TableStore
        TableStore(cfg.db).close()
    from core.credentials import read_secret
    from core.store import StoreError

    from .store_check import check_store
    read, admin = read_secret(cfg.token_file, "--token-file"), read_secret(cfg.admin_token_file, "--admin-token-file")
    if read and read == admin:
        raise ValueError("--token-file and --admin-token-file hold the same token: every reader could then "
                         "administer the tables. Give the admin token its own secret")
    for warning in check_store(cfg.db):  # a damaged store raises here, before any worker starts
        log(logger, logging.WARNING, "version not served", reason=warning)
    if cfg.cluster:  # a store holding another shard would serve rows nobody asked it for
        from core.cluster import ClusterConfig
        from core.store import TableStore
        store = TableStore(cfg.db, readonly=True)
        try:
            ClusterConfig.load(cfg.cluster).check_store(store.manifests(), cfg.shard)
        finally:
            store.close()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir = tempfile.mkdtemp(prefix="engram-metrics-")
    from . import metrics
    ctx = mp.get_context("spawn")  # fresh interpreters: no grpc or LMDB state crosses a fork
    ready = ctx.Queue()
    stopping, damaged = threading.Event(), ""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with _reserve_port(cfg.host, cfg.port) as port, ExitStack() as held:
        admin_port = held.enter_context(_reserve_port(cfg.admin_host, cfg.admin_port, "--admin-port")) \
            if cfg.admin_port >= 0 else -1
        procs: list = []
        if cfg.metrics_port:  # before the workers: a busy port is an error before anything started
            try:
                metrics.serve_metrics(cfg.metrics_port, cfg.host, cfg.db,
                                      lambda: [p.pid for p in procs if p.is_alive()])
            except OSError as e:
                raise RuntimeError(f"--metrics-port {cfg.metrics_port}: cannot listen on {cfg.host}:"
                                   f"{cfg.metrics_port} ({e.strerror}: another server there?); pick another "
                                   "--metrics-port, or 0 for none") from None
        procs[:] = [ctx.Process(target=_worker_main, args=(cfg, port, ready, admin_port, i), daemon=True)
                    for i in range(cfg.num_workers)]
        for p in procs:
            p.start()
        _wait_ready(procs, ready)
        log(logger, logging.INFO, "serving", host=cfg.host, port=port, workers=len(procs),
            metrics_port=cfg.metrics_port, db=str(Path(cfg.db).resolve()), admin_port=admin_port,
            admin_socket=cfg.admin_socket_path, admin_token=bool(cfg.admin_token_file),
            tls=bool(cfg.tls_cert), mutual_tls=bool(cfg.tls_client_ca), tokens=bool(cfg.token_file or cfg.admin_token_file))
        while not stopping.wait(0.5):
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping.is_set():
                    log(logger, logging.ERROR, "worker died; restarting", pid=p.pid, exitcode=p.exitcode)
                    metrics.worker_exited(p.pid)
                    try:  # a store damaged under the workers (truncated) would kill every restart too
                        check_store(cfg.db)
                    except StoreError as e:
                        log(logger, logging.ERROR, "store damaged; stopping", error=str(e))
                        damaged = str(e)
                        stopping.set()
                        break
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
    if damaged:
        raise StoreError("damaged", damaged)
    return 0
