"""A small Aether world, written straight into the service's SQLite file.

Two users with API keys, two providers with an endpoint and a provider key
each, one global model with a provider model, an admin user for the JWT
vectors (shared/AETHER_COMPAT.md section 7), and a read-only and an
inactive user. Ids are text, timestamps take the column defaults.

Encrypted columns hold text that is not a valid Aether ciphertext: the
service must show it masked as undecryptable, never echo it.
"""

import sqlite3

ALICE = "u-alice"
BOB = "u-bob"
CAROL = "u-carol"  # inactive, no keys, no affinities
ADMIN = "11111111-2222-4333-8444-555555555555"  # the JWT vectors' user_id

ALICE_KEY_1 = "ak-alice-1"
ALICE_KEY_2 = "ak-alice-2"
BOB_KEY = "ak-bob-1"

ALPHA = "prov-alpha"
BETA = "prov-beta"
ALPHA_ENDPOINT = "ep-alpha"
BETA_ENDPOINT = "ep-beta"
ALPHA_KEY = "pk-alpha"
BETA_KEY = "pk-beta"

MODEL = "gm-sonnet"
MODEL_NAME = "claude-sonnet-4"
MODEL_DISPLAY = "Claude Sonnet 4"
PROVIDER_MODEL = "m-alpha-sonnet"
PROVIDER_MODEL_NAME = "sonnet-latest"

# Stored in the "encrypted" columns; not decryptable, so never shown.
RAW_SECRET = "sk-raw-not-encrypted-000999"

USERS = [
    # id, username, email, role, is_active
    (ALICE, "alice", "alice@example.com", "user", 1),
    (BOB, "bob", "bob@example.com", "user", 1),
    (CAROL, "carol", "carol@example.com", "user", 0),
    (ADMIN, "admin", "admin@example.com", "admin", 1),
]

API_KEYS = [
    # id, owner, name
    (ALICE_KEY_1, ALICE, "alice laptop"),
    (ALICE_KEY_2, ALICE, "alice ci"),
    (BOB_KEY, BOB, "bob main"),
]

PROVIDERS = [
    # provider, display name, endpoint, api format, provider key
    (ALPHA, "Alpha Cloud", ALPHA_ENDPOINT, "CLAUDE", ALPHA_KEY),
    (BETA, "Beta AI", BETA_ENDPOINT, "OPENAI", BETA_KEY),
]


def endpoint_url(provider):
    return f"https://{provider}.example/v1"


def seed(database_path):
    """Inserts the world; the service has created the tables by then."""
    db = sqlite3.connect(database_path, timeout=10)
    try:
        with db:
            db.executemany(
                "INSERT INTO users (id, username, email, role, is_active, is_deleted) VALUES (?, ?, ?, ?, ?, 0)",
                USERS,
            )
            db.executemany(
                "INSERT INTO api_keys (id, user_id, key_hash, key_encrypted, name, is_standalone, is_active)"
                " VALUES (?, ?, ?, ?, ?, 0, 1)",
                [(key, owner, key.rjust(64, "0"), RAW_SECRET, name) for key, owner, name in API_KEYS],
            )
            for provider, display, endpoint, api_format, key in PROVIDERS:
                db.execute(
                    "INSERT INTO providers (id, name, display_name, is_active, billing_type)"
                    " VALUES (?, ?, ?, 1, 'pay_as_you_go')",
                    (provider, provider, display),
                )
                db.execute(
                    "INSERT INTO provider_endpoints (id, provider_id, api_format, base_url, is_active)"
                    " VALUES (?, ?, ?, ?, 1)",
                    (endpoint, provider, api_format, endpoint_url(provider)),
                )
                db.execute(
                    "INSERT INTO provider_api_keys (id, endpoint_id, api_key, name, rate_multiplier,"
                    " cache_ttl_minutes, is_active) VALUES (?, ?, ?, ?, 1.5, 5, 1)",
                    (key, endpoint, RAW_SECRET, f"{provider} key"),
                )
            db.execute(
                "INSERT INTO global_models (id, name, display_name, is_active, supported_capabilities,"
                " default_tiered_pricing, default_price_per_request) VALUES (?, ?, ?, 1, ?, ?, 0.01)",
                (MODEL, MODEL_NAME, MODEL_DISPLAY, '["chat", "vision"]', '{"tiers": []}'),
            )
            db.execute(
                "INSERT INTO models (id, provider_id, global_model_id, provider_model_name,"
                " provider_model_mappings, is_active, is_available) VALUES (?, ?, ?, ?, ?, 1, 1)",
                (
                    PROVIDER_MODEL,
                    ALPHA,
                    MODEL,
                    PROVIDER_MODEL_NAME,
                    '[{"name": "sonnet", "priority": 1}]',
                ),
            )
    finally:
        db.close()
