"""UserService end to end: ResolveUser by each kind of identifier, GetUser
through the cache, cache invalidation, and its errors."""

import grpc
import pytest

from aether.control.v1 import user_pb2 as pb

import world
from support import fails


@pytest.mark.parametrize(
    "identifier, kind, api_key_id",
    [
        (world.ALICE, pb.USER_MATCH_KIND_USER_ID, ""),
        ("alice", pb.USER_MATCH_KIND_USERNAME, ""),
        ("alice@example.com", pb.USER_MATCH_KIND_EMAIL, ""),
        (world.ALICE_KEY_1, pb.USER_MATCH_KIND_API_KEY_ID, world.ALICE_KEY_1),
        ("  bob ", pb.USER_MATCH_KIND_USERNAME, ""),
    ],
)
def test_resolve_user_by_each_kind(users, identifier, kind, api_key_id):
    resolved = users.ResolveUser(pb.ResolveUserRequest(identifier=identifier))
    assert resolved.matched_by == kind
    assert resolved.api_key_id == api_key_id
    expected = world.BOB if "bob" in identifier else world.ALICE
    assert resolved.user.id == expected
    assert list(resolved.shadowed_matches) == []


def test_resolve_user_fields_and_inactive_users(users):
    alice = users.ResolveUser(pb.ResolveUserRequest(identifier="alice")).user
    assert (alice.email, alice.username, alice.role, alice.is_active) == (
        "alice@example.com",
        "alice",
        pb.USER_ROLE_USER,
        True,
    )
    assert not alice.HasField("quota_usd"), "NULL quota is unlimited"
    assert alice.used_usd == 0
    assert alice.created_at.seconds > 0, "the column default, parsed"
    assert not alice.HasField("last_login_at")
    carol = users.ResolveUser(pb.ResolveUserRequest(identifier="carol@example.com")).user
    assert (carol.id, carol.is_active) == (world.CAROL, False), "inactive users resolve too"
    admin = users.ResolveUser(pb.ResolveUserRequest(identifier="admin")).user
    assert admin.role == pb.USER_ROLE_ADMIN


def test_resolve_user_is_case_sensitive_and_not_found(users):
    failure = fails(grpc.StatusCode.NOT_FOUND, users.ResolveUser, pb.ResolveUserRequest(identifier="ALICE"))
    assert failure.resource_info.resource_type == "user"
    assert failure.resource_info.resource_name == "ALICE"
    assert failure.error_info.reason == "NOT_FOUND"


@pytest.mark.parametrize("identifier", ["", "   ", "x" * 256])
def test_resolve_user_rejects_bad_identifiers(users, identifier):
    request = pb.ResolveUserRequest(identifier=identifier)
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, users.ResolveUser, request)
    assert [v.field for v in failure.bad_request.field_violations] == ["identifier"]


def test_get_user_reads_through_the_cache(users):
    first = users.GetUser(pb.GetUserRequest(user_id=world.BOB))
    assert (first.user.id, first.user.email, first.from_cache) == (world.BOB, "bob@example.com", False)
    second = users.GetUser(pb.GetUserRequest(user_id=world.BOB))
    assert second.from_cache and second.user == first.user
    by_email = users.GetUser(pb.GetUserRequest(email="bob@example.com"))
    assert by_email.user == first.user

    dropped = users.InvalidateUserCache(pb.InvalidateUserCacheRequest(user_id=world.BOB, email="bob@example.com"))
    assert dropped.deleted_keys == 2
    again = users.GetUser(pb.GetUserRequest(user_id=world.BOB))
    assert not again.from_cache
    assert users.InvalidateUserCache(pb.InvalidateUserCacheRequest(user_id="u-nobody")).deleted_keys == 0


def test_get_user_errors(users):
    failure = fails(grpc.StatusCode.NOT_FOUND, users.GetUser, pb.GetUserRequest(user_id="u-nobody"))
    assert failure.resource_info.resource_type == "user"
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, users.GetUser, pb.GetUserRequest())
    assert failure.bad_request.field_violations[0].field == "lookup"
