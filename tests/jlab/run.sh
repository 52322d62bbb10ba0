#!/bin/sh
# Runs the @jupyterlab/services test against the gateway in KBOX_GATEWAY_BIN (see
# test_services.mjs). node_modules is installed with `npm ci` from the committed lock file
# into a work directory (argument 1, default a temporary one), never into the source tree.
# Registered in ctest as integration_jlab_services. Nothing is skipped: without node and npm
# (Debian: tools/install-deps.sh tools/packages-test.txt) this fails.
set -eu
src="$(cd "$(dirname "$0")" && pwd)"
work="${1:-}"
if [ -z "$work" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
fail() {
  echo "tests/jlab/run.sh: $*" >&2
  exit 1
}
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "$tool not found (install the packages in tools/packages-test.txt: tools/install-deps.sh tools/packages-test.txt)"
done
# node --test and its spec reporter need Node >= 18 (Debian 12's nodejs is 18).
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 18 ] || fail "node $(node --version) is too old: Node >= 18 is needed"
# The test starts the gateway from inside the work directory: make its path absolute.
if [ -n "${KBOX_GATEWAY_BIN:-}" ]; then
  case "$KBOX_GATEWAY_BIN" in
    /*) ;;
    *) KBOX_GATEWAY_BIN="$(pwd)/$KBOX_GATEWAY_BIN" ;;
  esac
  [ -x "$KBOX_GATEWAY_BIN" ] || fail "KBOX_GATEWAY_BIN=$KBOX_GATEWAY_BIN is not an executable"
  export KBOX_GATEWAY_BIN
fi
# After stopping the gateway it started, the test checks for leftovers with the Python
# suites' own check (tests/integration/conftest.py).
KBOX_INTEGRATION_DIR="$(cd "$src/../integration" && pwd)"
export KBOX_INTEGRATION_DIR
mkdir -p "$work"
cp "$src/package.json" "$src/package-lock.json" "$src/test_services.mjs" "$work/"
cd "$work"
# Reuse an install that matches the lock file; otherwise install exactly what it pins.
if ! cmp -s package-lock.json node_modules/.kbox-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --no-update-notifier --loglevel=error
  cp package-lock.json node_modules/.kbox-lock
fi
# --test-force-exit (Node >= 20.14) ends the run when the tests are done instead of waiting
# for @jupyterlab/services' idle poll timers.
force=""
if node --test-force-exit --version >/dev/null 2>&1; then
  force="--test-force-exit"
fi
exec node --test $force --test-reporter=spec test_services.mjs
