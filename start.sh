#!/usr/bin/env bash
# Start kbox on this machine: install missing Debian packages (as root), build, prepare the
# worker image, print where to reach it, then run the gateway in the foreground.
#
#   ./start.sh [--host H] [--port P] [--state-dir DIR] [--min-idle-workers N]
#              [--max-total-workers N] [--worker-cpu C] [--worker-ram-mb M]
#              [--worker-disk-mb D] [--exec-timeout-ms MS] [--idle-timeout-s S]
#              [--max-output-bytes B] [--max-queue N] [...]   (./start.sh --help lists all)
#
# Every option can also be given as an environment variable in capitals (MIN_IDLE_WORKERS=3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${KBOX_BUILD_DIR:-$here/build}"

"$here/tools/install-deps.sh" "$here/tools/packages-run.txt"

if [ ! -x "$build/gateway/kbox-gateway" ] || [ -n "$(find "$here" -newer "$build/gateway/kbox-gateway" \
      \( -name '*.c' -o -name '*.h' -o -name 'CMakeLists.txt' -o -name '*.cmake' \) -not -path "$build/*" -print -quit)" ]; then
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target kbox-gateway kbox-kernel-host >/dev/null
fi

for a in "$@"; do
  if [ "$a" = "--help" ] || [ "$a" = "-h" ]; then
    exec "$build/gateway/kbox-gateway" --help
  fi
done

# What to print: the same precedence as the gateway (argument > environment > default).
host="${HOST:-127.0.0.1}"; port="${PORT:-3874}"; state="${STATE_DIR:-/var/lib/kbox}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --host) host="${args[$((i + 1))]:-}";; --host=*) host="${args[$i]#*=}";;
    --port) port="${args[$((i + 1))]:-}";; --port=*) port="${args[$i]#*=}";;
    --state-dir) state="${args[$((i + 1))]:-}";; --state-dir=*) state="${args[$i]#*=}";;
  esac
done

echo "kbox: http://$host:$port  (POST /execute, /api/kernels, GET /status)" >&2
if [ -n "${AUTH_TOKEN:-}" ]; then
  echo "kbox: token: from the AUTH_TOKEN environment variable" >&2
else
  echo "kbox: token: $state/token (created on first start, mode 0600)" >&2
fi
exec "$build/gateway/kbox-gateway" "$@"
