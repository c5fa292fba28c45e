"""What an operator sees: /metrics before the first request (store, processes, build), reflection
as v1 and v1alpha, health for both services, refusals logged, a probe for shared memory that the
server cannot use not counted as an error."""
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..served import Server, fill_store


def scrape(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()


def test_metrics_reflection_health_and_logs(tmp_path):
    db = tmp_path / "db"
    fill_store(db)
    server = Server(db, "--no-shared-memory", workers=2)
    try:
        server.wait_serving()
        text = scrape(server)                                           # no request yet
        for line in ('engram_tables 4.0', 'engram_table_rows{table="layer1"} 12054.0',
                     'engram_table_published_version{table="layer2"} 1.0', "engram_server_processes 2.0",
                     'engram_store_bytes{kind="file"}', "engram_build_info{", "engram_server_resident_bytes{pid=",
                     "process_resident_memory_bytes"):
            assert line in text, line
        with grpc.insecure_channel(server.target) as channel:
            for package in ("v1", "v1alpha"):
                from grpc_reflection.v1alpha import reflection_pb2
                call = channel.stream_stream(f"/grpc.reflection.{package}.ServerReflection/ServerReflectionInfo",
                                             request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                             response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
                answer = next(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
                names = {s.name for s in answer.list_services_response.service}
                assert {"engram_memory.v1.MemoryService", "engram_memory.v1.AdminService",
                        "grpc.reflection.v1.ServerReflection", "grpc.health.v1.Health"} <= names, (package, names)
            health = health_pb2_grpc.HealthStub(channel)
            status = {name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                      for name in ("", "engram_memory.v1.MemoryService", "engram_memory.v1.AdminService")}
            assert status[""] == status["engram_memory.v1.MemoryService"] == health_pb2.HealthCheckResponse.SERVING
            # no admin token: admin calls are not taken on this port
            assert status["engram_memory.v1.AdminService"] == health_pb2.HealthCheckResponse.NOT_SERVING
            from protos import pb2
            for _ in range(3):
                try:
                    channel.unary_unary("/engram_memory.v1.MemoryService/DescribeTable")(
                        pb2.DescribeTableRequest(table="layer9").SerializeToString(), timeout=5)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.NOT_FOUND
                try:                                                    # a probe: --no-shared-memory
                    channel.unary_unary("/engram_memory.v1.MemoryService/RegisterSegment")(
                        pb2.RegisterSegmentRequest(socket="engram-seg-" + "0" * 32, secret=bytes(32)).SerializeToString(),
                        timeout=5)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
        refused = [e for e in server.logs() if e.get("msg") == "request refused"]
        assert refused and refused[0]["code"] == "NOT_FOUND" and "layer9" in refused[0]["error"]
        assert len(refused) <= 2                                        # rate-limited: one per 10 s per process
        text = scrape(server)
        assert 'engram_errors_total{code="NOT_FOUND",rpc="DescribeTable"} 3.0' in text
        assert 'rpc="RegisterSegment"' not in "\n".join(l for l in text.splitlines() if l.startswith("engram_errors"))
    finally:
        server.stop()
