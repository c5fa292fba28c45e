"""`engram-memory health`: exit 0 when the memory service answers SERVING (for container healthchecks)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class HealthConfig:
    target: str = field(default="127.0.0.1:50051", metadata={"help": "memory service address host:port"})
    service: str = field(default="", metadata={"help": "service name to ask about ('' = the whole server)"})
    timeout_s: float = field(default=3.0, metadata={"help": "deadline of the check"})


def run_health(cfg: HealthConfig) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    try:
        with grpc.insecure_channel(cfg.target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=cfg.service), timeout=cfg.timeout_s).status
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
