#!/usr/bin/env bash
# The Python end-to-end client suite: a stock Python gRPC client (stubs
# generated from proto/ by grpcio-tools, right here) drives the real
# aether-control binary over the wire.
#
#   scripts/python-client-tests.sh [pytest args...]     e.g. -k resolve, -x, -v
#
# 1. a venv in .tools/pyvenv from the pinned clients/python/requirements.txt,
#    rebuilt only when that file (or the Python version) changes;
# 2. stubs for proto/aether/control/v1/*.proto and google/api/{annotations,http}.proto
#    into a temp dir;
# 3. cargo build --bin aether-control (dev profile; cheap when up to date);
# 4. pytest: clients/python/tests/conftest.py starts the binary on a free
#    loopback port with a temp SQLite data dir (and a throwaway key namespace
#    on Redis at 127.0.0.1:6379 when it answers), seeds Aether rows, and stops
#    it at the end. The server is also stopped here, on any exit.
#
# Exits with pytest's code; "no tests collected" (5) is a failure too.
#
# Environment: PYTHON (default python3); AETHER_CONTROL_PY_VENV (default
# .tools/pyvenv); AETHER_CONTROL_BIN to test a given binary without building;
# AETHER_CONTROL_PY_REDIS=off for in-memory affinities, or a redis:// URL that
# must answer (default: AETHER_CONTROL_TEST_REDIS_URL or 127.0.0.1:6379 if it
# answers, else in-memory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
# CI can keep the venv outside its fresh clone, as it does the cargo target dir.
VENV=${AETHER_CONTROL_PY_VENV:-$ROOT/.tools/pyvenv}
REQUIREMENTS=clients/python/requirements.txt

# --- Python and the venv -----------------------------------------------------
# shellcheck source=scripts/lib/python-venv.sh
. scripts/lib/python-venv.sh
python_venv "$PYTHON" "$VENV" "$REQUIREMENTS" 9 "the Python client tests"

# --- temp dir, and the server's cleanup on any exit -------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/aether-control-pyclient.XXXXXX")
PIDFILE=$WORK/server.pid
LEFTOVERS=$WORK/redis-leftovers
PYTEST_PID=
cleanup() {
  local pid
  # Interrupted: stop pytest first (its own teardown stops the server)...
  if [ -n "$PYTEST_PID" ] && kill -0 "$PYTEST_PID" 2>/dev/null; then
    kill -TERM "$PYTEST_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PYTEST_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  # ...then make sure the server is gone, whatever happened to pytest.
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  # Only our server: its command line names its data dir, which is under $WORK.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$WORK/"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Redis keys of a run whose pytest died before its own cleanup.
  if [ -f "$LEFTOVERS" ]; then
    "$VENV/bin/python" - "$LEFTOVERS" <<'PY' || true
import sys, redis
url, namespace = open(sys.argv[1]).read().split()
client = redis.Redis.from_url(url, socket_timeout=5)
keys = list(client.scan_iter(match=namespace + "*", count=500))
for start in range(0, len(keys), 500):
    client.delete(*keys[start:start + 500])
PY
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- stubs from proto/ ------------------------------------------------------
STUBS=$WORK/stubs
mkdir -p "$STUBS"
"$VENV/bin/python" -m grpc_tools.protoc -Iproto --python_out="$STUBS" --grpc_python_out="$STUBS" \
  proto/aether/control/v1/affinity.proto \
  proto/aether/control/v1/model_mapping.proto \
  proto/aether/control/v1/user.proto \
  proto/google/api/annotations.proto \
  proto/google/api/http.proto ||
  die "grpc_tools.protoc could not generate the Python stubs"

# --- the binary -------------------------------------------------------------
if [ -n "${AETHER_CONTROL_BIN:-}" ]; then
  [ -x "$AETHER_CONTROL_BIN" ] && [ -f "$AETHER_CONTROL_BIN" ] ||
    die "AETHER_CONTROL_BIN=$AETHER_CONTROL_BIN is not an executable file"
  AETHER_CONTROL_BIN=$(cd "$(dirname "$AETHER_CONTROL_BIN")" && pwd)/$(basename "$AETHER_CONTROL_BIN")
else
  command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup: https://rustup.rs)"
  say "cargo build --bin aether-control"
  cargo build --quiet --bin aether-control
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  AETHER_CONTROL_BIN=$target_dir/debug/aether-control
  [ -x "$AETHER_CONTROL_BIN" ] || die "no binary at $AETHER_CONTROL_BIN after cargo build"
fi

# --- pytest -----------------------------------------------------------------
say "pytest clients/python (server: $AETHER_CONTROL_BIN)"
# In the background and waited for, so a signal to this script is handled at
# once (bash runs traps only between foreground commands).
(
  cd clients/python
  AETHER_CONTROL_BIN=$AETHER_CONTROL_BIN \
    AETHER_CONTROL_PY_STUBS=$STUBS \
    AETHER_CONTROL_PY_PIDFILE=$PIDFILE \
    AETHER_CONTROL_PY_LEFTOVERS=$LEFTOVERS \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=$WORK \
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
) &
PYTEST_PID=$!
status=0
wait "$PYTEST_PID" || status=$?
PYTEST_PID=
case $status in
  0) ;;
  5) printf 'error: pytest collected no tests: that is a failure\n' >&2 ;;
  *) printf 'error: the Python client tests failed (pytest exit code %s)\n' "$status" >&2 ;;
esac
exit "$status"
