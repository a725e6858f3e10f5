"""Health per service, and server reflection (what grpcurl and buf curl use)."""

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = [
    "aether.control.v1.AffinityService",
    "aether.control.v1.ModelMappingService",
    "aether.control.v1.UserService",
]


@pytest.mark.parametrize("service", ["", *SERVICES])
def test_health_serving(anonymous_channel, service):
    health = health_pb2_grpc.HealthStub(anonymous_channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=service))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _reflect(anonymous_channel, request):
    reflection_pb2 = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2")
    reflection_pb2_grpc = pytest.importorskip("grpc_reflection.v1alpha.reflection_pb2_grpc")
    stub = reflection_pb2_grpc.ServerReflectionStub(anonymous_channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)])))
    assert len(replies) == 1
    return replies[0]


def test_reflection_lists_every_service(anonymous_channel):
    reply = _reflect(anonymous_channel, {"list_services": ""})
    names = {service.name for service in reply.list_services_response.service}
    assert set(SERVICES) <= names, names
    assert "grpc.health.v1.Health" in names


def test_reflection_serves_descriptors(anonymous_channel):
    from google.protobuf import descriptor_pb2

    reply = _reflect(anonymous_channel, {"file_containing_symbol": "aether.control.v1.AffinityService"})
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    affinity = next(f for f in files if f.name == "aether/control/v1/affinity.proto")
    methods = {m.name for s in affinity.service for m in s.method}
    assert {"GetAffinity", "SetAffinity", "ClearAllAffinities", "WatchAffinityEvents"} <= methods
