"""Who may call what: no or bad credentials are UNAUTHENTICATED, a token
without the scope is PERMISSION_DENIED, Aether admin JWTs (the
AETHER_COMPAT.md section 7 vectors) are checked against the users table."""

import grpc
import pytest

from aether.control.v1 import affinity_pb2, affinity_pb2_grpc, user_pb2, user_pb2_grpc

import support
import world
from support import fails

# shared/AETHER_COMPAT.md section 7, secret aether-compat-jwt-secret-0123456789abcdef.
ACCESS_ADMIN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1Ii"
    "wiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAw"
    "KzAwOjAwIiwiZXhwIjo0MTAyNDQ0ODAwLCJ0eXBlIjoiYWNjZXNzIn0.kyKe_V5IDU1zPofXER8cKDOVUB2oHL6Zc-vnlwJQSkM"
)
EXPIRED_ADMIN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1Ii"
    "wiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsInJvbGUiOiJhZG1pbiIsImNyZWF0ZWRfYXQiOiIyMDI1LTAxLTAxVDAwOjAwOjAw"
    "KzAwOjAwIiwiZXhwIjoxNTc3ODM2ODAwLCJ0eXBlIjoiYWNjZXNzIn0.xZ9HJw1AYUEGxbuD75mC9xFxi3Tuj7gjyGJLMpVdsAk"
)
REFRESH_ADMIN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VyX2lkIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1Ii"
    "wiZW1haWwiOiJhZG1pbkBleGFtcGxlLmNvbSIsImV4cCI6NDEwMjQ0NDgwMCwidHlwZSI6InJlZnJlc2gifQ."
    "6dQTF_kBg0-xnIPox6sUsleolOvISLxYS4VSdmaoWyo"
)

RESOLVE_ALICE = user_pb2.ResolveUserRequest(identifier="alice")


def user_stub(channel, token=None, authorization=None):
    return user_pb2_grpc.UserServiceStub(support.authed(channel, token, authorization=authorization))


def affinity_stub(channel, token=None):
    return affinity_pb2_grpc.AffinityServiceStub(support.authed(channel, token))


@pytest.mark.parametrize(
    "authorization, reason",
    [
        (None, "MISSING_CREDENTIAL"),
        ("Basic YWxpY2U6c2VjcmV0", "MALFORMED_CREDENTIAL"),
        ("Bearer ", "MALFORMED_CREDENTIAL"),
        ("Bearer not-a-known-token", "INVALID_TOKEN"),
        (f"Bearer {EXPIRED_ADMIN}", "INVALID_TOKEN"),
        (f"Bearer {REFRESH_ADMIN}", "INVALID_TOKEN"),
    ],
)
def test_bad_or_missing_credentials_are_unauthenticated(channel, authorization, reason):
    stub = user_stub(channel, authorization=authorization)
    failure = fails(grpc.StatusCode.UNAUTHENTICATED, stub.ResolveUser, RESOLVE_ALICE)
    assert failure.error_info.reason == reason


def test_read_only_token_reads_but_may_not_write_or_clear(server, channel):
    assert user_stub(channel, server.tokens["read"]).ResolveUser(RESOLVE_ALICE).user.id == world.ALICE
    reader = affinity_stub(channel, server.tokens["read"])
    assert reader.ListAffinities(affinity_pb2.ListAffinitiesRequest()).total_size >= 0
    refusals = [
        (reader.ClearAllAffinities, affinity_pb2.ClearAllAffinitiesRequest(confirm=True, dry_run=True)),
        (reader.ClearUserAffinities, affinity_pb2.ClearUserAffinitiesRequest(user_identifier="alice")),
        (reader.GetAffinityConfig, affinity_pb2.GetAffinityConfigRequest()),
        (
            reader.SetAffinity,
            affinity_pb2.SetAffinityRequest(
                affinity_key=world.BOB_KEY,
                api_format="CLAUDE",
                global_model_id=world.MODEL,
                provider_id=world.ALPHA,
                endpoint_id=world.ALPHA_ENDPOINT,
                key_id=world.ALPHA_KEY,
            ),
        ),
    ]
    for call, request in refusals:
        failure = fails(grpc.StatusCode.PERMISSION_DENIED, call, request)
        assert failure.error_info.reason == "MISSING_SCOPE"


def test_refused_clear_deletes_nothing(server, channel, affinities):
    affinities.SetAffinity(
        affinity_pb2.SetAffinityRequest(
            affinity_key=world.BOB_KEY,
            api_format="GEMINI_CLI",
            global_model_id=world.MODEL,
            provider_id=world.ALPHA,
            endpoint_id=world.ALPHA_ENDPOINT,
            key_id=world.ALPHA_KEY,
        )
    )
    reader = affinity_stub(channel, server.tokens["read"])
    fails(
        grpc.StatusCode.PERMISSION_DENIED,
        reader.ClearAllAffinities,
        affinity_pb2.ClearAllAffinitiesRequest(confirm=True),
    )
    listed = affinities.ListAffinities(affinity_pb2.ListAffinitiesRequest(keyword=world.BOB_KEY))
    assert any(d.affinity.api_format == "GEMINI_CLI" for d in listed.affinities)


def test_aether_admin_jwt_is_accepted_for_an_active_admin(channel):
    admin = affinity_stub(channel, ACCESS_ADMIN)
    dry = admin.ClearAllAffinities(affinity_pb2.ClearAllAffinitiesRequest(confirm=True, dry_run=True))
    assert dry.dry_run
    assert user_stub(channel, ACCESS_ADMIN).ResolveUser(RESOLVE_ALICE).user.id == world.ALICE

