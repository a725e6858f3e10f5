#!/usr/bin/env bash
# Validates everything under deploy/ with what this machine can run, prints
# what it checked with which tool and what it could not, and exits non-zero
# when any file is invalid. The checks themselves are deploy/validate_deploy.py.
#
#   scripts/validate-deploy.sh [--strict-tools] [--no-install] [--no-cargo]
#
#   --strict-tools  a check whose tool is missing counts as a failure
#   --no-install    use only tools already here (also VALIDATE_DEPLOY_NO_INSTALL=1)
#   --no-cargo      skip the `cargo metadata --locked` check of the build context
#
# Tools, brought into .tools/deploy/ (git-ignored) only when missing:
#   - a Python venv with PyYAML, kubernetes-validate (the Kubernetes OpenAPI
#     JSON schemas, 1.25 to 1.37, offline) and check-jsonschema (the
#     compose-spec schema), from PyPI;
#   - promtool, unpacked from Debian's `prometheus` package with
#     `apt-get download` (nothing is installed system-wide; if the download
#     fails and this runs as root, the apt lists are refreshed and it retries).
# Used when present: kubectl (`kubectl kustomize`) or kustomize, and docker
# compose (`docker compose config`, which needs no engine). kubeconform is not
# used: it is not packaged for Debian, PyPI or npm, and kubernetes-validate
# checks the same upstream schemas.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$PWD/.tools/deploy
PY_REQUIREMENTS=(pyyaml==6.0.3 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)

install=1
checker_args=()
for arg in "$@"; do
    case $arg in
        --strict-tools | --no-cargo) checker_args+=("$arg") ;;
        --no-install) install=0 ;;
        -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "validate-deploy: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
[ "${VALIDATE_DEPLOY_NO_INSTALL:-}" = 1 ] && install=0

say() { printf 'validate-deploy: %s\n' "$*" >&2; }
mkdir -p "$TOOLS"

# A Python with PyYAML (required) and the schema validators (optional).
python_tools() {
    local venv=$TOOLS/venv want="${PY_REQUIREMENTS[*]}"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$want" ]; then
        echo "$venv/bin/python"
        return
    fi
    if [ "$install" = 1 ] && command -v python3 >/dev/null; then
        say "installing $want into $venv (once)"
        rm -rf "$venv"
        if python3 -m venv "$venv" >"$TOOLS/pip.log" 2>&1 &&
            "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}" >>"$TOOLS/pip.log" 2>&1; then
            echo "$want" >"$venv/.requirements"
            echo "$venv/bin/python"
            return
        fi
        say "could not install them (see $TOOLS/pip.log); falling back to the system python3"
    elif [ -x "$venv/bin/python" ]; then
        echo "$venv/bin/python"
        return
    fi
    command -v python3 || true
}

# promtool: on PATH, unpacked before, or unpacked now from Debian's package.
find_promtool() {
    local unpacked=$TOOLS/prometheus/usr/bin/promtool tmp
    if command -v promtool >/dev/null; then
        command -v promtool
        return
    fi
    if [ -x "$unpacked" ]; then
        echo "$unpacked"
        return
    fi
    if [ "$install" = 0 ] || ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        return 0
    fi
    tmp=$(mktemp -d)
    say "unpacking promtool from Debian's prometheus package into $TOOLS/prometheus (once)"
    if ! (cd "$tmp" && apt-get download prometheus) >"$TOOLS/apt.log" 2>&1; then
        if [ "$(id -u)" = 0 ] && apt-get update -qq >>"$TOOLS/apt.log" 2>&1 &&
            (cd "$tmp" && apt-get download prometheus) >>"$TOOLS/apt.log" 2>&1; then
            :
        else
            say "could not download it (see $TOOLS/apt.log)"
            rm -rf "$tmp"
            return 0
        fi
    fi
    mkdir -p "$TOOLS/prometheus"
    if dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$TOOLS/prometheus" ./usr/bin/promtool &&
        "$unpacked" --version >/dev/null 2>&1; then
        echo "$unpacked"
    fi
    rm -rf "$tmp"
}

python=$(python_tools)
if [ -z "$python" ] || ! "$python" -c 'import yaml' 2>/dev/null; then
    say "no Python with PyYAML: cannot even parse the manifests (install python3 and PyYAML, or allow the install)"
    exit 2
fi
promtool=$(find_promtool)

say "python: $python"
say "promtool: ${promtool:-not available}"
say "kubectl: $(command -v kubectl || command -v kustomize || echo 'not available')"
if docker compose version >/dev/null 2>&1; then
    say "docker compose: $(docker compose version --short 2>/dev/null)"
else
    say "docker compose: not available"
fi

exec "$python" deploy/validate_deploy.py ${promtool:+--promtool "$promtool"} "${checker_args[@]}"
