# Sourced by scripts/test.sh: makes sure the real Redis and PostgreSQL the
# tests use are up on loopback. Starts them where installed but stopped,
# installs them (Debian, as root) where missing, and otherwise says exactly
# what is missing.

REDIS_HOST=127.0.0.1 REDIS_PORT=6379 PG_HOST=127.0.0.1 PG_PORT=5432

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

wait_until() { # wait_until SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

apt_install() { # apt_install PACKAGE...: only as root on Debian, never silently elsewhere
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "${AETHER_CONTROL_NO_INSTALL:-0}" != 1 ]; then
    say "installing $* from Debian's packages"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

redis_up() { redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping | grep -q PONG; }

ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server redis-tools ||
    die "Redis is not installed: install redis-server (Debian: apt-get install redis-server), or point AETHER_CONTROL_TEST_REDIS_URL at a running Redis"
  if redis_up; then return; fi
  say "starting Redis on $REDIS_HOST:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null ||
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  wait_until 20 redis_up || die "Redis did not come up on $REDIS_HOST:$REDIS_PORT"
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

ensure_postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql ||
    die "PostgreSQL is not installed: install postgresql (Debian: apt-get install postgresql), or point AETHER_CONTROL_TEST_PG_URL at a running server"
  if ! pg_up; then
    say "starting PostgreSQL on $PG_HOST:$PG_PORT"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    [ -n "$version" ] || die "no PostgreSQL cluster under /etc/postgresql (create one with pg_createcluster)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || die "pg_ctlcluster could not start PostgreSQL $version"
    wait_until 30 pg_up || die "PostgreSQL did not come up on $PG_HOST:$PG_PORT"
  fi
  # The tests connect as postgres over TCP to database test (trust auth on loopback).
  psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -c 'select 1' >/dev/null 2>&1 ||
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c 'create database test' >/dev/null 2>&1 ||
    die "cannot connect to PostgreSQL as postgres on $PG_HOST:$PG_PORT (the tests expect trust auth on loopback; or set AETHER_CONTROL_TEST_PG_URL)"
}

# Drops what one test run left behind if it was killed mid-test.
cleanup_test_data() { # cleanup_test_data RUN_ID
  local run=$1 db
  for db in $(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -Atc \
      "select datname from pg_database where datname like 'actl_test_${run}_%'" 2>/dev/null); do
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d test -qc "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
  done
  redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --scan --pattern "actl_test_${run}_*" 2>/dev/null |
    xargs -r -n 500 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" del >/dev/null 2>&1 || true
}
