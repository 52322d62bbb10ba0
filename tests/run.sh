#!/usr/bin/env bash
# The one test command: install what is missing (as root), build with ASan+UBSan, run every
# test (unit, wire cross-checks, root integration against real kernels, runc and loop
# devices), then check formatting. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
tools/install-deps.sh tools/packages-run.txt tools/packages-test.txt

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/run.sh: the integration tests need root (loop devices, runc, netns)" >&2
  exit 1
fi

# 1. Unit tests under AddressSanitizer + UndefinedBehaviorSanitizer.
cmake -S . -B build-asan -DKBOX_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$(nproc)" >/dev/null
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j2 -E '^(root_|integration_)'

# 2. Everything, including root and integration suites, on the optimised build.
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
ctest --test-dir build --output-on-failure

# 3. Formatting.
files=$(git ls-files '*.c' '*.h')
clang-format --dry-run -Werror $files
echo "tests/run.sh: all passed"
