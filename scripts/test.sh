#!/usr/bin/env bash
# The whole test suite, as CI runs it: starts the real Redis and PostgreSQL
# if needed, then format check, clippy, proto lint, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup: https://rustup.rs)"

ensure_redis
ensure_postgres

# Every test names its PostgreSQL database and Redis keys after this run, so
# concurrent runs never collide and a killed run is cleaned up here.
export AETHER_CONTROL_TEST_RUN_ID
AETHER_CONTROL_TEST_RUN_ID=$(printf '%x' "$(( $$ ^ $(date +%s) ))")
trap 'cleanup_test_data "$AETHER_CONTROL_TEST_RUN_ID"' EXIT
# The service's own variables must not leak into tests from the caller.
unset REDIS_URL DATABASE_URL JWT_SECRET_KEY ENCRYPTION_KEY ENVIRONMENT
unset $(env | grep -o '^AETHER_CONTROL_[A-Z_]*' | grep -v -e '^AETHER_CONTROL_TEST_' -e '^AETHER_CONTROL_PY_' -e '^AETHER_CONTROL_ST_' || true)

say "cargo fmt --check"
cargo fmt --all -- --check

say "buf lint (proto contract, STANDARD rules) and buf breaking (against the released contract)"
scripts/buf.sh lint
scripts/buf.sh breaking --against api/aether-control-v1.binpb

say "deploy/ manifests (YAML/JSON, Kubernetes schemas, promtool, Dockerfile checks)"
scripts/validate-deploy.sh

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

say "cargo test"
cargo test --workspace 2>&1

say "REST shim against its own OpenAPI document (schemathesis, bounded)"
scripts/schemathesis.sh

say "Python client (generated grpcio stubs against the real binary)"
scripts/python-client-tests.sh
