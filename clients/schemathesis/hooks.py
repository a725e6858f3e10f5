"""Schemathesis hooks for scripts/schemathesis.sh.

Adds OpenAPI `examples` (annotations only: no schema constraint changes) to
the request bodies of the two affinity writes, naming rows that
clients/python/tests/world.py seeds. The generated document cannot mark the
fields the services require (they are plain proto3 strings), so generated
bodies almost never carry provider_id + endpoint_id + key_id together; with
these examples the examples phase creates and invalidates real affinities,
and the success responses (Affinity, outcome enum, timestamps, int64
strings) are checked against their schemas too.
"""

import schemathesis

EXAMPLES = {
    ("/v1/affinities/{affinity_key}/{api_format}/{global_model_id}", "put"): {
        "alpha": {"provider_id": "prov-alpha", "endpoint_id": "ep-alpha", "key_id": "pk-alpha", "ttl": "300s"},
        "beta": {
            "provider_id": "prov-beta",
            "endpoint_id": "ep-beta",
            "key_id": "pk-beta",
            "model_name": "claude-sonnet-4",
            "ttl": "60s",
        },
    },
    ("/v1/affinities/{affinity_key}/{api_format}/{global_model_id}:invalidate", "post"): {
        "any": {"reason": "INVALIDATION_REASON_UNSPECIFIED"},
        "alpha": {"provider_id": "prov-alpha", "endpoint_id": "ep-alpha", "key_id": "pk-alpha"},
    },
}


@schemathesis.hook
def before_load_schema(context, raw_schema):
    paths = raw_schema.get("paths", {})
    for (path, method), examples in EXAMPLES.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            # The document changed: say so instead of silently testing less.
            raise RuntimeError(f"hooks.py: {method.upper()} {path} is not in /openapi.json any more")
        media = operation["requestBody"]["content"]["application/json"]
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
