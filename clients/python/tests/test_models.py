"""ModelMappingService end to end: ResolveModel by a provider's model name
and by a global model name, misses, bad input, GetProviderModel."""

import grpc
from google.protobuf import json_format

from aether.control.v1 import model_mapping_pb2 as pb

import world
from support import fails


def resolve(models, name):
    return models.ResolveModel(pb.ResolveModelRequest(model_name=name))


def test_resolve_provider_model_name(models):
    resolved = resolve(models, world.PROVIDER_MODEL_NAME)
    assert resolved.matched_by == pb.MODEL_MATCH_KIND_PROVIDER_MODEL_NAME
    assert not resolved.from_cache
    model = resolved.global_model
    assert (model.id, model.name, model.display_name, model.is_active) == (
        world.MODEL,
        world.MODEL_NAME,
        world.MODEL_DISPLAY,
        True,
    )
    assert json_format.MessageToDict(model.supported_capabilities) == ["chat", "vision"]
    assert json_format.MessageToDict(model.default_tiered_pricing) == {"tiers": []}
    assert model.default_price_per_request == 0.01
    assert list(resolved.conflicting_global_model_ids) == []

    again = resolve(models, f"  {world.PROVIDER_MODEL_NAME}  ")
    assert again.global_model.id == world.MODEL, "surrounding whitespace is ignored"
    assert again.from_cache or again.matched_by == pb.MODEL_MATCH_KIND_PROVIDER_MODEL_NAME


def test_resolve_global_model_name(models):
    resolved = resolve(models, world.MODEL_NAME)
    assert resolved.global_model.id == world.MODEL
    assert resolved.matched_by in (pb.MODEL_MATCH_KIND_GLOBAL_MODEL_NAME, pb.MODEL_MATCH_KIND_CACHE)
    if not resolved.from_cache:
        assert resolved.matched_by == pb.MODEL_MATCH_KIND_GLOBAL_MODEL_NAME


def test_resolve_unknown_model_is_not_found(models):
    for _ in range(2):  # the second answer comes from the negative cache
        failure = fails(grpc.StatusCode.NOT_FOUND, resolve, models, "no-such-model")
        assert failure.resource_info.resource_type == "model"
        assert failure.resource_info.resource_name == "no-such-model"
    fails(grpc.StatusCode.NOT_FOUND, resolve, models, world.MODEL_NAME.upper())


def test_resolve_rejects_bad_names(models):
    for name in ("", "   ", "m" * 201):
        failure = fails(grpc.StatusCode.INVALID_ARGUMENT, resolve, models, name)
        assert [v.field for v in failure.bad_request.field_violations] == ["model_name"]


def test_get_provider_model(models):
    found = models.GetProviderModel(
        pb.GetProviderModelRequest(provider_id=world.ALPHA, global_model_id=world.MODEL)
    ).model
    assert (found.id, found.provider_id, found.global_model_id, found.provider_model_name) == (
        world.PROVIDER_MODEL,
        world.ALPHA,
        world.MODEL,
        world.PROVIDER_MODEL_NAME,
    )
    assert [(m.name, m.priority) for m in found.provider_model_mappings] == [("sonnet", 1)]
    assert found.is_active and found.is_available
    assert not found.HasField("price_per_request"), "column absent from the baseline: unset"
    failure = fails(
        grpc.StatusCode.NOT_FOUND,
        models.GetProviderModel,
        pb.GetProviderModelRequest(provider_id=world.BETA, global_model_id=world.MODEL),
    )
    assert failure.resource_info.resource_type
