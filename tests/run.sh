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
# The native kernel's end-to-end suites run in step 2 only: ASan's own SIGSEGV handler changes
# how a crashing kernel exits (the hostile-code tests check exactly that), and an interpreter
# under ASan is too slow for their timing bounds. Its C units stay here. The benchmark's smoke
# run is end-to-end too.
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure -j2 \
  -E '^(root_|integration_|bench_|kernel_(conformance|hostile|ipython|fastpath|backpressure)$)'

# 1b. The gateway's own end-to-end suites against the sanitizer build: requests, the Jupyter
# API, limits, options, faulty kernels, crashes and the TCP transport drive every gateway path,
# and a gateway whose ASan, LSan or UBSan reports anything fails its test (conftest.py reads
# its log at stop). Memory-measuring tests are left out: ASan's quarantine inflates RSS.
(cd tests/integration && ASAN_OPTIONS=detect_leaks=1 KBOX_TEST_KERNEL=native \
  KBOX_GATEWAY_BIN="$here/build-asan/gateway/kbox-gateway" PYTHONDONTWRITEBYTECODE=1 \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider -m "not rss" test_execute.py \
    test_jupyter_api.py test_limits.py test_options.py test_kernel_faults.py test_crash.py \
    test_tcp_transport.py)

# 2. Everything, including root and integration suites, on the optimised build.
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
ctest --test-dir build --output-on-failure

# 3. Every parser under libFuzzer (clang, ASan+UBSan), briefly: a regression net, not a campaign.
CC=clang cmake -S . -B build-fuzz -DKBOX_FUZZ=ON >/dev/null
fuzzers="fuzz_jwire_decode fuzz_jwire_conn fuzz_http fuzz_ws fuzz_wsframe fuzz_zguard"
cmake --build build-fuzz -j"$(nproc)" --target $fuzzers >/dev/null
for f in $fuzzers; do
  bin=$(find build-fuzz -name "$f" -type f -perm -u+x | head -1)
  corpus=$(mktemp -d)
  "$bin" -max_total_time="${KBOX_FUZZ_SECONDS:-15}" -rss_limit_mb=2048 "$corpus" >/dev/null 2>build-fuzz/$f.log ||
    { tail -40 build-fuzz/$f.log; echo "fuzzer $f failed" >&2; exit 1; }
  rm -rf "$corpus"
  echo "fuzz: $f ok ($(grep -o 'Done [0-9]* runs' build-fuzz/$f.log))"
done

# 4. Format and lint.
files=$(git ls-files '*.c' '*.h')
clang-format --dry-run -Werror $files
# One file per clang-tidy process: clang 14's analyzer reports a false "uninitialized va_list"
# in util.c and http.c when they follow other files in the same process, never alone.
if ! tidy=$(git ls-files '*.c' | grep -v -e '^bench/' -e '^tests/fuzz/' |
    xargs -P"$(nproc)" -n1 clang-tidy -p build --quiet 2>/dev/null); then
  echo "$tidy" | grep -E '(error|warning):' >&2
  echo "tests/run.sh: clang-tidy found problems" >&2
  exit 1
fi
echo "tests/run.sh: all passed"
