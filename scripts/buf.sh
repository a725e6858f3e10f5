#!/usr/bin/env bash
# Runs the pinned buf (from the npm registry, installed into .tools/).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
buf=.tools/node_modules/.bin/buf
if [ ! -x "$buf" ] || [ "$("$buf" --version 2>/dev/null)" != "$BUF_VERSION" ]; then
  command -v npm >/dev/null || { echo "error: buf needs npm (Debian: apt-get install npm) to install @bufbuild/buf@$BUF_VERSION" >&2; exit 1; }
  mkdir -p .tools
  npm install --prefix .tools --silent --no-audit --no-fund "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
exec "$buf" "$@"
