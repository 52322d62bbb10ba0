#!/bin/sh
# Runs the @jupyterlab/services test against the gateway in KBOX_GATEWAY_BIN (see
# test_services.mjs). node_modules is installed with `npm ci` from the committed lock file
# into a work directory (argument 1, default a temporary one), never into the source tree.
set -eu
src="$(cd "$(dirname "$0")" && pwd)"
work="${1:-}"
if [ -z "$work" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
cp "$src/package.json" "$src/package-lock.json" "$src/test_services.mjs" "$work/"
cd "$work"
# Reuse an install that matches the lock file; otherwise install exactly what it pins.
if ! cmp -s package-lock.json node_modules/.kbox-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.kbox-lock
fi
# --test-force-exit (Node >= 20.14) ends the run when the tests are done instead of waiting
# for @jupyterlab/services' idle poll timers.
force=""
if node --test-force-exit --version >/dev/null 2>&1; then
  force="--test-force-exit"
fi
exec node --test $force --test-reporter=spec test_services.mjs
