"""`engram-memory health`: exit 0 when the memory service answers SERVING (for container healthchecks)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class HealthConfig:
    target: str = field(default="127.0.0.1:50051", metadata={"help": "memory service address host:port"})
    service: str = field(default="", metadata={"help": "service name to ask about ('' = the whole server)"})
    timeout_s: float = field(default=3.0, metadata={"help": "deadline of each check"})
    wait_s: float = field(default=0.0, metadata={
        "help": "keep asking for this many seconds until the answer is SERVING (a service just started)"})


def run_health(cfg: HealthConfig) -> int:
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    deadline = time.monotonic() + cfg.wait_s
    try:
        with grpc.insecure_channel(cfg.target) as channel:
            while True:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=cfg.service), timeout=cfg.timeout_s).status
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    except grpc.RpcError as e:
        details = e.details() or ""
        if e.code() == grpc.StatusCode.NOT_FOUND and not details:
            details = (f"the health service knows no service {cfg.service!r} (it knows '' for the whole "
                       "server, engram_memory.v1.MemoryService and engram_memory.v1.AdminService)")
        print(f"{cfg.target}: {e.code().name}: {details}", file=sys.stderr)
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{cfg.target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1
