"""How the servicers meet gRPC: every method takes raw request bytes and parses them itself.

gRPC Python answers a request its deserializer cannot parse with INTERNAL ("Exception
deserializing request!"), which tells a client nothing and looks like a server fault. Here a
request that is not valid protobuf for its method gets INVALID_ARGUMENT naming the message type,
and the server goes on serving (tests/memory_service/test_fuzz.py sends it garbage of every kind).
Lookup and StreamLookup answers are bytes already serialized by wire.py; the others are messages.
"""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from protos import pb2

_MEMORY = {"Lookup": ("unary", pb2.LookupRequest, True), "StreamLookup": ("stream", pb2.LookupRequest, True),
           "ListTables": ("unary", pb2.ListTablesRequest, False),
           "DescribeTable": ("unary", pb2.DescribeTableRequest, False),
           "Stats": ("unary", pb2.StatsRequest, False),
           "RegisterSegment": ("unary", pb2.RegisterSegmentRequest, False)}
_ADMIN = {"CreateVersion": ("unary", pb2.CreateVersionRequest, False),
          "WriteRows": ("client_stream", pb2.WriteRowsRequest, False),
          "Publish": ("unary", pb2.PublishRequest, False),
          "DropVersion": ("unary", pb2.DropVersionRequest, False)}


def _parse(message_type, raw: bytes, context):
    try:
        return message_type.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"request is not a valid {message_type.DESCRIPTOR.full_name} protobuf message: {e}")


def _handler(method, kind: str, message_type, raw_response: bool):
    serialize = bytes if raw_response else (lambda message: message.SerializeToString())
    if kind == "unary":
        return grpc.unary_unary_rpc_method_handler(
            lambda raw, ctx: method(_parse(message_type, raw, ctx), ctx), response_serializer=serialize)

    def requests(iterator, ctx):
        for raw in iterator:
            yield _parse(message_type, raw, ctx)
    if kind == "stream":
        return grpc.stream_stream_rpc_method_handler(
            lambda it, ctx: method(requests(it, ctx), ctx), response_serializer=serialize)
    return grpc.stream_unary_rpc_method_handler(
        lambda it, ctx: method(requests(it, ctx), ctx), response_serializer=serialize)


def add_to_server(memory, admin, server) -> None:
    """Register MemoryService and AdminService (either may be None: not served here)."""
    for servicer, methods, name in ((memory, _MEMORY, "MemoryService"), (admin, _ADMIN, "AdminService")):
        if servicer is None:
            continue
        handlers = {m: _handler(getattr(servicer, m), *spec) for m, spec in methods.items()}
        service = pb2.DESCRIPTOR.services_by_name[name].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def enable_reflection(service_names: list[str], server) -> None:
    """Server reflection as both grpc.reflection.v1alpha (what grpcio-reflection serves) and
    grpc.reflection.v1 (what grpcurl and current tools ask first): the two protocols have the same
    messages under two package names, so v1 calls are answered by the same servicer."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2
    v1 = "grpc.reflection.v1.ServerReflection"
    names = [*service_names, reflection.SERVICE_NAME, v1]
    servicer = reflection.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(v1, {"ServerReflectionInfo": handler}),))
