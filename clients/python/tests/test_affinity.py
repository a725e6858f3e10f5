"""AffinityService end to end: the data plane (Set/Get/Invalidate), the
operator lists and clears (with dry runs), stats, config, metrics, events."""

import json
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from aether.control.v1 import affinity_pb2 as pb
from aether.control.v1 import user_pb2

import world
from support import fails


@pytest.fixture(autouse=True)
def no_affinities(affinities):
    """Every test starts from an empty affinity store."""
    affinities.ClearAllAffinities(pb.ClearAllAffinitiesRequest(confirm=True))


def pin(affinities, api_key, api_format, provider, endpoint, key, ttl_seconds=None, model=world.MODEL):
    request = pb.SetAffinityRequest(
        affinity_key=api_key,
        api_format=api_format,
        global_model_id=model,
        provider_id=provider,
        endpoint_id=endpoint,
        key_id=key,
    )
    if ttl_seconds is not None:
        request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
    return affinities.SetAffinity(request)


def pin_world(affinities):
    """Four affinities: alice has three (two keys), bob one; alpha serves three."""
    pin(affinities, world.ALICE_KEY_1, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    pin(affinities, world.ALICE_KEY_1, "OPENAI", world.BETA, world.BETA_ENDPOINT, world.BETA_KEY)
    pin(affinities, world.ALICE_KEY_2, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    pin(affinities, world.BOB_KEY, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)


def get(affinities, api_key, api_format, model=world.MODEL):
    request = pb.GetAffinityRequest(affinity_key=api_key, api_format=api_format, global_model_id=model)
    return affinities.GetAffinity(request).affinity


def total(affinities, keyword=""):
    return affinities.ListAffinities(pb.ListAffinitiesRequest(keyword=keyword)).total_size


def test_set_creates_refreshes_and_switches(affinities):
    created = pin(affinities, world.BOB_KEY, "claude", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    assert created.outcome == pb.SET_AFFINITY_OUTCOME_CREATED
    entry = created.affinity
    assert entry.api_format == "CLAUDE", "stored upper case"
    assert (entry.provider_id, entry.endpoint_id, entry.key_id) == (
        world.ALPHA,
        world.ALPHA_ENDPOINT,
        world.ALPHA_KEY,
    )
    assert entry.model_name == world.MODEL, "defaults to the global model id, as Aether writes"
    assert entry.request_count == 1
    now = time.time()
    assert abs(entry.expire_at.seconds - (now + 300)) <= 5, "default TTL is Aether's 300 s"

    refreshed = pin(affinities, world.BOB_KEY, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY, 120)
    assert refreshed.outcome == pb.SET_AFFINITY_OUTCOME_REFRESHED
    assert refreshed.affinity.request_count == 2
    assert refreshed.affinity.created_at == entry.created_at, "created_at kept on refresh"
    assert abs(refreshed.affinity.expire_at.seconds - (time.time() + 120)) <= 5, "the TTL slides"

    switched = pin(affinities, world.BOB_KEY, "CLAUDE", world.BETA, world.BETA_ENDPOINT, world.BETA_KEY)
    assert switched.outcome == pb.SET_AFFINITY_OUTCOME_SWITCHED
    assert switched.affinity.request_count == 1
    assert switched.previous.provider_id == world.ALPHA
    assert switched.previous.request_count == 2

    stored = get(affinities, world.BOB_KEY, "Claude")
    assert stored == switched.affinity


def test_get_missing_is_not_found_with_resource_info(affinities):
    failure = fails(
        grpc.StatusCode.NOT_FOUND,
        affinities.GetAffinity,
        pb.GetAffinityRequest(affinity_key=world.BOB_KEY, api_format="GEMINI", global_model_id=world.MODEL),
    )
    assert failure.error_info.reason == "NOT_FOUND"
    assert failure.resource_info is not None, failure
    assert failure.resource_info.resource_type == "affinity"
    assert failure.resource_info.resource_name.endswith(f"cache_affinity:{world.BOB_KEY}:GEMINI:{world.MODEL}")


@pytest.mark.parametrize(
    "field, change",
    [
        ("api_format", {"api_format": "SMOKE_SIGNALS"}),
        ("affinity_key", {"affinity_key": ""}),
        ("provider_id", {"provider_id": "has:colon"}),
        ("ttl", {"ttl": duration_pb2.Duration(seconds=8 * 24 * 3600)}),
    ],
)
def test_invalid_set_names_the_field_in_bad_request(affinities, field, change):
    fields = dict(
        affinity_key=world.BOB_KEY,
        api_format="CLAUDE",
        global_model_id=world.MODEL,
        provider_id=world.ALPHA,
        endpoint_id=world.ALPHA_ENDPOINT,
        key_id=world.ALPHA_KEY,
    )
    fields.update(change)
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, affinities.SetAffinity, pb.SetAffinityRequest(**fields))
    assert failure.error_info.reason == "INVALID_ARGUMENT"
    assert failure.bad_request is not None, failure
    violations = failure.bad_request.field_violations
    assert [v.field for v in violations] == [field]
    assert violations[0].description
    assert field in failure.message


def test_invalidate_honours_guards(affinities):
    pin(affinities, world.BOB_KEY, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    before = affinities.GetAffinityStats(pb.GetAffinityStatsRequest()).stats
    request = pb.InvalidateAffinityRequest(
        affinity_key=world.BOB_KEY,
        api_format="claude",
        global_model_id=world.MODEL,
        endpoint_id=world.BETA_ENDPOINT,
        reason=pb.INVALIDATION_REASON_UPSTREAM_RATE_LIMIT,
    )
    assert not affinities.InvalidateAffinity(request).deleted, "guard mismatch is not an error"
    assert get(affinities, world.BOB_KEY, "CLAUDE").provider_id == world.ALPHA

    request.endpoint_id = world.ALPHA_ENDPOINT
    request.key_id = world.ALPHA_KEY
    deleted = affinities.InvalidateAffinity(request)
    assert deleted.deleted
    assert deleted.affinity.endpoint_id == world.ALPHA_ENDPOINT
    fails(grpc.StatusCode.NOT_FOUND, get, affinities, world.BOB_KEY, "CLAUDE")
    assert not affinities.InvalidateAffinity(request).deleted, "already gone"

    after = affinities.GetAffinityStats(pb.GetAffinityStatsRequest()).stats
    assert after.invalidations - before.invalidations == 1
    by_reason = "upstream_rate_limit"
    assert after.invalidations_by_reason[by_reason] - before.invalidations_by_reason.get(by_reason, 0) == 1


@pytest.mark.parametrize(
    "identifier, kind",
    [
        (world.ALICE, user_pb2.USER_MATCH_KIND_USER_ID),
        ("alice", user_pb2.USER_MATCH_KIND_USERNAME),
        ("  alice@example.com ", user_pb2.USER_MATCH_KIND_EMAIL),
        (world.ALICE_KEY_2, user_pb2.USER_MATCH_KIND_API_KEY_ID),
    ],
)
def test_list_user_affinities_by_any_identifier(affinities, identifier, kind):
    pin_world(affinities)
    found = affinities.ListUserAffinities(pb.ListUserAffinitiesRequest(user_identifier=identifier))
    assert (found.user.user_id, found.user.matched_by) == (world.ALICE, kind)
    assert found.user.username == "alice" and found.user.email == "alice@example.com"
    assert len(found.affinities) == 3
    assert found.total_endpoints == 2
    expiries = [d.affinity.expire_at.ToNanoseconds() for d in found.affinities]
    assert expiries == sorted(expiries, reverse=True), "newest expiry first"

    openai = next(d for d in found.affinities if d.affinity.api_format == "OPENAI")
    assert (openai.username, openai.email, openai.user_id) == ("alice", "alice@example.com", world.ALICE)
    assert openai.user_api_key_name == "alice laptop"
    assert (openai.provider_name, openai.endpoint_url) == ("Beta AI", world.endpoint_url(world.BETA))
    assert openai.endpoint_api_format == "OPENAI"
    assert (openai.key_name, openai.rate_multiplier) == (f"{world.BETA} key", 1.5)
    assert (openai.global_model_name, openai.model_display_name) == (world.MODEL_NAME, world.MODEL_DISPLAY)
    # The stored "ciphertext" is not Aether's: masked as such, never echoed.
    for shown in (openai.user_api_key_prefix, openai.key_prefix):
        assert world.RAW_SECRET not in shown
        assert shown in ("", "<undecryptable>")


def test_list_user_affinities_unknown_user_and_user_without_any(affinities):
    pin_world(affinities)
    failure = fails(
        grpc.StatusCode.NOT_FOUND,
        affinities.ListUserAffinities,
        pb.ListUserAffinitiesRequest(user_identifier="nobody"),
    )
    assert failure.resource_info.resource_type == "user"
    assert failure.resource_info.resource_name == "nobody"
    carol = affinities.ListUserAffinities(pb.ListUserAffinitiesRequest(user_identifier="carol"))
    assert carol.user.user_id == world.CAROL
    assert list(carol.affinities) == [] and carol.total_endpoints == 0


def test_list_affinities_pages_and_keywords(affinities):
    pin_world(affinities)
    first = affinities.ListAffinities(pb.ListAffinitiesRequest(page_size=3))
    assert (len(first.affinities), first.total_size) == (3, 4)
    assert first.next_page_token
    second = affinities.ListAffinities(pb.ListAffinitiesRequest(page_size=3, page_token=first.next_page_token))
    assert len(second.affinities) == 1 and not second.next_page_token
    seen = {(d.affinity.affinity_key, d.affinity.api_format) for d in [*first.affinities, *second.affinities]}
    assert len(seen) == 4, "every entry exactly once"

    by_key = affinities.ListAffinities(pb.ListAffinitiesRequest(keyword=world.BOB_KEY))
    assert (by_key.total_size, by_key.matched_api_key_id, by_key.matched_user_id) == (1, world.BOB_KEY, world.BOB)
    by_user = affinities.ListAffinities(pb.ListAffinitiesRequest(keyword="alice"))
    assert (by_user.total_size, by_user.matched_user_id) == (3, world.ALICE)
    assert total(affinities, "BETA") == 1, "case-insensitive provider id substring"
    assert total(affinities, "LAPTOP") == 2, "API key name substring"
    assert total(affinities, "*") == 0, "glob characters are plain text"

    failure = fails(
        grpc.StatusCode.INVALID_ARGUMENT, affinities.ListAffinities, pb.ListAffinitiesRequest(page_size=1001)
    )
    assert failure.bad_request.field_violations[0].field == "page_size"
    failure = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        affinities.ListAffinities,
        pb.ListAffinitiesRequest(keyword="alice", page_token=first.next_page_token),
    )
    assert failure.bad_request.field_violations[0].field == "page_token"


def test_clear_user_dry_run_one_key_then_all(affinities):
    pin_world(affinities)
    dry = affinities.ClearUserAffinities(
        pb.ClearUserAffinitiesRequest(user_identifier="alice@example.com", dry_run=True)
    )
    assert (dry.deleted_count, dry.dry_run, dry.user.user_id) == (3, True, world.ALICE)
    assert total(affinities) == 4, "a dry run deletes nothing"

    one_key = affinities.ClearUserAffinities(pb.ClearUserAffinitiesRequest(user_identifier=world.ALICE_KEY_2))
    assert (one_key.deleted_count, one_key.user.api_key_id) == (1, world.ALICE_KEY_2)
    rest = affinities.ClearUserAffinities(pb.ClearUserAffinitiesRequest(user_identifier="alice"))
    assert (rest.deleted_count, rest.dry_run) == (2, False)
    assert total(affinities) == 1
    assert total(affinities, world.BOB_KEY) == 1, "bob's entry is untouched"


def test_delete_one_needs_its_endpoint(affinities):
    pin_world(affinities)
    request = pb.DeleteAffinityRequest(
        affinity_key=world.BOB_KEY,
        endpoint_id=world.BETA_ENDPOINT,
        global_model_id=world.MODEL,
        api_format="claude",
    )
    fails(grpc.StatusCode.NOT_FOUND, affinities.DeleteAffinity, request)
    request.endpoint_id = world.ALPHA_ENDPOINT
    assert affinities.DeleteAffinity(request).affinity.affinity_key == world.BOB_KEY
    fails(grpc.StatusCode.NOT_FOUND, affinities.DeleteAffinity, request)
    assert total(affinities) == 3


def test_clear_provider(affinities):
    pin_world(affinities)
    dry = affinities.ClearProviderAffinities(
        pb.ClearProviderAffinitiesRequest(provider_id=world.ALPHA, dry_run=True)
    )
    assert dry.deleted_count == 3 and total(affinities) == 4
    real = affinities.ClearProviderAffinities(pb.ClearProviderAffinitiesRequest(provider_id=world.ALPHA))
    assert real.deleted_count == 3
    assert total(affinities) == 1 and total(affinities, world.BETA) == 1, "only the entry on beta is left"


def test_clear_all_needs_confirm_and_dry_runs(affinities):
    pin_world(affinities)
    failure = fails(
        grpc.StatusCode.FAILED_PRECONDITION, affinities.ClearAllAffinities, pb.ClearAllAffinitiesRequest()
    )
    assert failure.error_info.reason
    dry = affinities.ClearAllAffinities(pb.ClearAllAffinitiesRequest(confirm=True, dry_run=True))
    assert (dry.deleted_count, dry.dry_run) == (4, True)
    assert total(affinities) == 4
    real = affinities.ClearAllAffinities(pb.ClearAllAffinitiesRequest(confirm=True))
    assert (real.deleted_count, real.dry_run) == (4, False)
    assert total(affinities) == 0


def test_stats_config_and_metrics(server, affinities):
    before = affinities.GetAffinityStats(pb.GetAffinityStatsRequest()).stats
    pin(affinities, world.BOB_KEY, "GEMINI", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    pin(affinities, world.BOB_KEY, "GEMINI", world.BETA, world.BETA_ENDPOINT, world.BETA_KEY)  # provider switch
    get(affinities, world.BOB_KEY, "GEMINI")
    fails(grpc.StatusCode.NOT_FOUND, get, affinities, world.BOB_KEY, "GEMINI_CLI")

    response = affinities.GetAffinityStats(pb.GetAffinityStatsRequest())
    stats = response.stats
    assert stats.storage_type == server.storage_type
    assert stats.total_affinities - before.total_affinities == 1
    assert stats.provider_switches - before.provider_switches == 1
    assert stats.key_switches - before.key_switches == 1
    assert stats.cache_hits - before.cache_hits == 1
    assert stats.cache_misses - before.cache_misses == 1
    assert stats.active_affinities == 1
    assert stats.cache_hit_rate == pytest.approx(stats.cache_hits / (stats.cache_hits + stats.cache_misses))

    config = affinities.GetAffinityConfig(pb.GetAffinityConfigRequest()).config
    assert config.default_ttl.seconds == 300
    assert config.storage_type == server.storage_type
    assert config.provider_priority_mode == "provider", "Aether's default when unset"
    assert response.config == config

    metrics = affinities.ExportMetrics(pb.ExportMetricsRequest())
    assert metrics.content_type.startswith("text/plain")
    text = metrics.text
    assert "# TYPE aether_control_affinity_hits_total counter" in text
    assert f"\naether_control_affinity_hits_total {stats.cache_hits}\n" in text
    counters = [
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.endswith(" counter")
    ]
    assert len(counters) >= 3, counters


def test_watch_events_streams_set_switch_invalidate(affinities):
    request = pb.WatchAffinityEventsRequest(affinity_key=world.BOB_KEY)
    stream = affinities.WatchAffinityEvents(request, timeout=8)
    try:
        time.sleep(0.3)  # the subscription is live
        pin(affinities, world.ALICE_KEY_1, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)  # filtered
        pin(affinities, world.BOB_KEY, "CLAUDE_CLI", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
        pin(affinities, world.BOB_KEY, "CLAUDE_CLI", world.BETA, world.BETA_ENDPOINT, world.BETA_KEY)
        affinities.InvalidateAffinity(
            pb.InvalidateAffinityRequest(
                affinity_key=world.BOB_KEY,
                api_format="CLAUDE_CLI",
                global_model_id=world.MODEL,
                reason=pb.INVALIDATION_REASON_UPSTREAM_AUTH,
            )
        )
        events = [next(stream) for _ in range(3)]
    finally:
        stream.cancel()
    assert [e.type for e in events] == [
        pb.AFFINITY_EVENT_TYPE_CREATED,
        pb.AFFINITY_EVENT_TYPE_SWITCHED,
        pb.AFFINITY_EVENT_TYPE_INVALIDATED,
    ]
    assert all(e.affinity.affinity_key == world.BOB_KEY for e in events)
    assert events[1].previous.provider_id == world.ALPHA
    assert events[2].reason == pb.INVALIDATION_REASON_UPSTREAM_AUTH
    assert all(e.instance_id and e.occurred_at.seconds for e in events)


def test_redis_holds_aethers_key_and_json(server, affinities):
    if not server.redis_url:
        pytest.skip("affinities are in memory (no Redis for this run)")
    import redis

    entry = pin(affinities, world.BOB_KEY, "OPENAI", world.BETA, world.BETA_ENDPOINT, world.BETA_KEY).affinity
    client = redis.Redis.from_url(server.redis_url, socket_timeout=5)
    try:
        key = f"{server.namespace}cache_affinity:{world.BOB_KEY}:OPENAI:{world.MODEL}"
        stored = json.loads(client.get(key))
        ttl = client.ttl(key)
    finally:
        client.close()
    assert stored["provider_id"] == world.BETA
    assert stored["endpoint_id"] == world.BETA_ENDPOINT
    assert stored["key_id"] == world.BETA_KEY
    assert stored["model_name"] == world.MODEL
    assert stored["request_count"] == 1
    assert abs(stored["expire_at"] - entry.expire_at.ToNanoseconds() / 1e9) < 1
    assert 0 < ttl <= 300


def test_record_upstream_usage_measures_the_binding_and_heals_it(affinities):
    pin(affinities, world.BOB_KEY, "CLAUDE", world.ALPHA, world.ALPHA_ENDPOINT, world.ALPHA_KEY)
    before = affinities.GetAffinityStats(pb.GetAffinityStatsRequest()).stats.upstream
    served_by = dict(
        affinity_key=world.BOB_KEY,
        api_format="CLAUDE",
        global_model_id=world.MODEL,
        provider_id=world.ALPHA,
        endpoint_id=world.ALPHA_ENDPOINT,
        key_id=world.ALPHA_KEY,
    )
    success = affinities.RecordUpstreamUsage(
        pb.RecordUpstreamUsageRequest(
            outcome=pb.UPSTREAM_OUTCOME_SUCCESS, input_tokens=1000, cache_read_tokens=900, **served_by
        )
    )
    assert success.binding_matched and not success.invalidated
    assert success.decision_reason == "success_keeps_binding"
    assert success.binding_usage.usage.requests == 1
    assert success.binding_usage.usage.cache_read_ratio == pytest.approx(0.9)
    assert success.binding_usage.last_outcome == pb.UPSTREAM_OUTCOME_SUCCESS
    after = affinities.GetAffinityStats(pb.GetAffinityStatsRequest()).stats.upstream
    assert (after.requests - before.requests, after.cache_read_tokens - before.cache_read_tokens) == (1, 900)

    # Counts a provider reports un-normalised (cache reads beyond the input)
    # are refused with the field named; an outcome is required.
    failure = fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        affinities.RecordUpstreamUsage,
        pb.RecordUpstreamUsageRequest(
            outcome=pb.UPSTREAM_OUTCOME_SUCCESS, input_tokens=10, cache_read_tokens=900, **served_by
        ),
    )
    assert [v.field for v in failure.bad_request.field_violations] == ["input_tokens"]
    failure = fails(grpc.StatusCode.INVALID_ARGUMENT, affinities.RecordUpstreamUsage, pb.RecordUpstreamUsageRequest(**served_by))
    assert [v.field for v in failure.bad_request.field_violations] == ["outcome"]

    # A rate limit of the pinned target drops the binding, as Aether does.
    dropped = affinities.RecordUpstreamUsage(
        pb.RecordUpstreamUsageRequest(outcome=pb.UPSTREAM_OUTCOME_RATE_LIMITED, **served_by)
    )
    assert dropped.invalidated and dropped.decision_reason == "upstream_rate_limit"
    assert dropped.invalidated_affinity.endpoint_id == world.ALPHA_ENDPOINT
    fails(
        grpc.StatusCode.NOT_FOUND,
        affinities.GetAffinity,
        pb.GetAffinityRequest(affinity_key=world.BOB_KEY, api_format="CLAUDE", global_model_id=world.MODEL),
    )
