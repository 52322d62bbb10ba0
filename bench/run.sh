#!/usr/bin/env bash
# bench/run.sh: builds kbox and the load generator, starts what each workload needs on
# loopback, runs workloads 1a, 1b, 2 (kbox and a stock Jupyter Server), 3 (ZeroMQ, no gateway)
# and the start / memory / capacity probes, stops everything it started, prints one table.
#
# Every gateway gets an explicit --kernel. 1a, 1b, 2-kbox and the first-result probes run once
# per kernel of --kernels (ipykernel,native); 2-jupyter runs with ipykernel only, beside the
# ipykernel gateway, for the like-for-like ratios (same kernel on both sides); 3 with each kernel
# (the kernels started by the bench itself, unsandboxed: the ceiling of 1b). The table
# labels each row with its kernel; every kernel gets the same users and code per repetition.
#
#   bench/run.sh            the full run: ~17 minutes of measuring on a quiet 2-core machine,
#                           ~5 of them for the native rows (--kernels ipykernel: ~12); more on
#                           a busy one
#   bench/run.sh --quick    3 users x 10 requests, one repetition, small probes (1-2 minutes
#                           for both kernels once built)
#   bench/run.sh --help     every option; each is also an environment variable BENCH_<NAME>
#
# Everything goes to bench/out/run-<time>/ (results.jsonl, gateway logs, table.txt). Needs
# root for the runc launcher (the default); if the sandboxed gateway cannot start workers,
# the run says so loudly and falls back to the unsandboxed process launcher
# (BENCH_NO_FALLBACK=1 makes that an error instead).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=/usr/bin/python3

# ---- options ------------------------------------------------------------------------------
LAUNCHER=${BENCH_LAUNCHER:-runc}
KERNELS=${BENCH_KERNELS:-ipykernel,native}
MEM_KERNELS=${BENCH_MEM_KERNELS:-}    # default: ipykernel (the reference); --quick: every kernel
USERS=${BENCH_USERS:-25}
REQUESTS=${BENCH_REQUESTS:-100}
THINK_MIN=${BENCH_THINK_MIN:-0.1}
THINK_MAX=${BENCH_THINK_MAX:-0.5}
POOL_1A=${BENCH_POOL_1A:-5/30}        # min idle / max total for 1a (the seed's configuration)
POOL_1B=${BENCH_POOL_1B:-}            # default: users/users (one warm worker per user)
REPEAT=${BENCH_REPEAT:-3}             # repetitions of 1b, 2 and 3 (medians; ratios per rep)
REPEAT_1A=${BENCH_REPEAT_1A:-1}
FIRST_SAMPLES=${BENCH_FIRST_SAMPLES:-20}
COLD_SAMPLES=${BENCH_COLD_SAMPLES:-5}
KSTART_SAMPLES=${BENCH_KSTART_SAMPLES:-5}
MEM_AT=${BENCH_MEM_AT:-25,200}
CAPACITY_MAX=${BENCH_CAPACITY_MAX:-300}   # the capacity ramp stops here at the latest
MEM_DISK_MB=${BENCH_MEM_DISK_MB:-32}      # worker disk in the memory/capacity phase (see docs)
MEM_RESERVE_MB=${BENCH_MEM_RESERVE_MB:-4096}
SKIP=${BENCH_SKIP:-}                  # comma list of: kernel,1a,1b,2,jupyter,3,first,cold,mem,kstart
SCENARIO=${BENCH_SCENARIO:-}          # every user on this scenario (arithmetic, list, numpy); default: the seed's random mix
KERNEL_N=${BENCH_KERNEL_N:-2000}      # executes per kernel-only run (tests/kernel/kbench.py)
GATEWAY_BIN=${BENCH_GATEWAY_BIN:-}    # use this gateway instead of building one
BENCH_BIN=${BENCH_BENCH_BIN:-}        # use this kbox-bench instead of building one
CLEAN=${BENCH_CLEAN:-0}
PERF=${BENCH_PERF:-0}
MAX_OTHER=${BENCH_MAX_OTHER:-15}      # % of CPU other processes may take during a counted run
NOISY_RETRIES=${BENCH_NOISY_RETRIES:-1}
QUICK=0
OUT=${BENCH_OUT:-}

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    cat <<EOF

options (environment variable in brackets):
  --quick                   smoke run: 3 users x 10 requests, 1 repetition, small probes
  --launcher runc|process   worker launcher (BENCH_LAUNCHER, default runc)
  --kernels LIST            kernels of the gateways, each run in turn (BENCH_KERNELS,
                            default ipykernel,native); 2-jupyter runs with ipykernel only
  --mem-kernels LIST        kernels the memory/capacity ramp runs with (ipykernel; --quick:
                            every kernel of --kernels)
  --users N --requests N    workload size (BENCH_USERS 25, BENCH_REQUESTS 100)
  --think-min S --think-max S   1a think time, seconds (0.1, 0.5)
  --pool-1a MIN/MAX         pool for 1a (5/30); --pool-1b MIN/MAX (users/users)
  --repeat N                repetitions of 1b/2/3 (3); --repeat-1a N (1)
  --first-samples N --cold-samples N --kstart-samples N   (20, 5, 5)
  --mem-at LIST             session counts to measure memory at (25,200)
  --capacity-max N          the capacity ramp stops here (300)
  --mem-disk-mb MB          worker disk during the memory/capacity ramp (32)
  --kernel-n N              executes per kernel-only run (2000)
  --skip LIST               kernel,1a,1b,2,jupyter,3,first,cold,mem,kstart
  --scenario S              every user on scenario S (arithmetic, list, numpy), to see where
                            a request's time goes; the seed's workloads mix them at random
  --gateway-bin PATH        do not build the gateway; use this kbox-gateway (its tree's
                            kernel-host/kbox-kernel-host must be built too, for native)
  --bench-bin PATH          do not build the load generator; use this kbox-bench
  --clean                   build from scratch (a tree edited during a build can leave stale
                            objects behind)
  --perf                    perf record the gateway during the first 1b repetition
  BENCH_MAX_OTHER=15        a 1b/2/3 run during which other processes took more than this % of
  BENCH_NOISY_RETRIES=1     the CPU is kept as "noisy" and repeated (at most this many times)
  --out DIR                 output directory (bench/out/run-<time>)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --launcher) LAUNCHER=$2; shift ;;
    --kernels) KERNELS=$2; shift ;;
    --mem-kernels) MEM_KERNELS=$2; shift ;;
    --users) USERS=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --think-min) THINK_MIN=$2; shift ;;
    --think-max) THINK_MAX=$2; shift ;;
    --pool-1a) POOL_1A=$2; shift ;;
    --pool-1b) POOL_1B=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --repeat-1a) REPEAT_1A=$2; shift ;;
    --first-samples) FIRST_SAMPLES=$2; shift ;;
    --cold-samples) COLD_SAMPLES=$2; shift ;;
    --kstart-samples) KSTART_SAMPLES=$2; shift ;;
    --mem-at) MEM_AT=$2; shift ;;
    --capacity-max) CAPACITY_MAX=$2; shift ;;
    --mem-disk-mb) MEM_DISK_MB=$2; shift ;;
    --skip) SKIP=$2; shift ;;
    --scenario) SCENARIO=$2; shift ;;
    --kernel-n) KERNEL_N=$2; shift ;;
    --gateway-bin) GATEWAY_BIN=$2; shift ;;
    --bench-bin) BENCH_BIN=$2; shift ;;
    --clean) CLEAN=1 ;;
    --perf) PERF=1 ;;
    --out) OUT=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    USERS=${BENCH_USERS:-3}
    REQUESTS=${BENCH_REQUESTS:-10}
    POOL_1A=${BENCH_POOL_1A:-2/6}
    REPEAT=${BENCH_REPEAT:-1}
    FIRST_SAMPLES=${BENCH_FIRST_SAMPLES:-2}
    COLD_SAMPLES=${BENCH_COLD_SAMPLES:-1}
    KSTART_SAMPLES=${BENCH_KSTART_SAMPLES:-1}
    KERNEL_N=${BENCH_KERNEL_N:-100}
    MEM_AT=${BENCH_MEM_AT:-2,4}
    CAPACITY_MAX=${BENCH_CAPACITY_MAX:-4}
    NOISY_RETRIES=${BENCH_NOISY_RETRIES:-0}
    MEM_KERNELS=${MEM_KERNELS:-$KERNELS}
    export KBOX_BENCH_MAX_QUIET_S=${KBOX_BENCH_MAX_QUIET_S:-0.5}
fi
POOL_1B=${POOL_1B:-$USERS/$USERS}
[ "$LAUNCHER" = runc ] || [ "$LAUNCHER" = process ] || { echo "run.sh: --launcher runc|process" >&2; exit 2; }
IFS=, read -r -a KERNEL_LIST <<<"$KERNELS"
[ ${#KERNEL_LIST[@]} -gt 0 ] || { echo "run.sh: --kernels needs at least one kernel" >&2; exit 2; }
for k in "${KERNEL_LIST[@]}"; do
    [ "$k" = ipykernel ] || [ "$k" = native ] ||
        { echo "run.sh: --kernels: ipykernel and/or native, not '$k'" >&2; exit 2; }
done
in_list() { [[ ",$2," == *",$1,"* ]]; } # word list
if [ -z "$MEM_KERNELS" ]; then
    if in_list ipykernel "$KERNELS"; then MEM_KERNELS=ipykernel; else MEM_KERNELS=${KERNEL_LIST[0]}; fi
fi

skip() { [[ ",$SKIP," == *",$1,"* ]]; }
say() { printf '\n[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
loud() {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
    printf '!!! %s\n' "$@" >&2
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
}

OUT=${OUT:-$HERE/out/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
STATE_ROOT=$(mktemp -d /tmp/kbox-bench.XXXXXX)
TOKEN=bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')

# ---- cleanup: only what this script started, by pid ------------------------------------------
GW_PID=
JS_PID=
PERF_PID=
STARTED_GATEWAYS=()

stop_pid_group() { # pid timeout_s: SIGTERM the group, wait, then SIGKILL
    local pid=$1 t=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < t * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "run.sh: pid $pid did not stop in ${t}s: SIGKILL" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    return 1
}

# A gateway that died (crash, SIGKILL) leaves its sandboxes behind; a gateway started on the
# same state dir sweeps them at start-up (containers, namespaces, loop disks), then stops.
sweep_state() { # state-dir kernel
    local state=$1 kernel=${2:-ipykernel} port pid i
    [ "$LAUNCHER" = runc ] || return 0
    port=$("$BENCH" freeport)
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin AUTH_TOKEN="$TOKEN" setsid "$GATEWAY_BIN" \
        --host 127.0.0.1 --port "$port" --state-dir "$state" --launcher runc \
        --kernel "$kernel" --min-idle-workers 0 >>"$OUT/sweep.log" 2>&1 &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid_group "$pid" 60 || true
    wait "$pid" 2>/dev/null || true
}

stop_gateway() {
    [ -n "$GW_PID" ] || return 0
    local pid=$GW_PID
    GW_PID=
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        warn "gateway $GW_NAME died during the run: $(tail -c 300 "$GW_LOG" | tail -1)"
        sweep_state "$GW_STATE" "$GW_KERNEL"
        return 0
    fi
    # The gateway stops its workers (containers, disks, namespaces) on SIGTERM.
    if ! stop_pid_group "$pid" 180; then
        warn "gateway $GW_NAME had to be killed; sweeping its state"
        wait "$pid" 2>/dev/null || true
        sweep_state "$GW_STATE" "$GW_KERNEL"
    fi
    wait "$pid" 2>/dev/null || true
}

stop_jupyter() {
    [ -n "$JS_PID" ] || return 0
    stop_pid_group "$JS_PID" 30 || true
    wait "$JS_PID" 2>/dev/null || true
    JS_PID=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
    stop_gateway
    stop_jupyter
    # Anything of ours still running? Our kernels' connection files and our gateways' state
    # live under STATE_ROOT (sandboxed kernels are the gateway's to stop, and it did).
    local left
    left=$(pgrep -f -- "$STATE_ROOT" 2>/dev/null || true)
    if [ -n "$left" ]; then
        echo "run.sh: processes left behind, killing: $left" >&2
        kill -KILL $left 2>/dev/null || true
    fi
    for d in "$STATE_ROOT"/*/; do
        if grep -q " ${d%/}/" /proc/self/mounts 2>/dev/null; then
            echo "run.sh: mounts left under $d: sweeping" >&2
            sweep_state "${d%/}" "$(state_kernel "${d%/}")"
        fi
        mountpoint -q "${d}run" 2>/dev/null && umount -l "${d}run" 2>/dev/null || true
    done
    rm -rf --one-file-system "$STATE_ROOT" 2>/dev/null ||
        echo "run.sh: could not remove all of $STATE_ROOT" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A gateway's state dir is STATE_ROOT/<phase>-<kernel>-<launcher>.
state_kernel() {
    case "${1##*/}" in
    *-native-*) echo native ;;
    *) echo ipykernel ;;
    esac
}

meta() { printf '{"kind":"meta","key":"%s","value":"%s"}\n' "$1" "$2" >>"$RESULTS"; }
warn() {
    loud "$1"
    printf '{"kind":"warning","text":"%s"}\n' "${1//\"/\'}" >>"$RESULTS"
}

# ---- build ------------------------------------------------------------------------------------
BUILD_MAIN=$HERE/out/build-main
BUILD_BENCH=$HERE/out/build-bench
if [ -z "$BENCH_BIN" ] || [ -z "$GATEWAY_BIN" ]; then
    say "building (main tree -> $BUILD_MAIN, bench -> $BUILD_BENCH)"
fi
if [ "$CLEAN" = 1 ]; then rm -rf "$BUILD_MAIN" "$BUILD_BENCH"; fi
if [ -z "$BENCH_BIN" ]; then
    {
        cmake -S "$HERE" -B "$BUILD_BENCH" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
            cmake --build "$BUILD_BENCH" -j"$(nproc)" >/dev/null
    } || { echo "run.sh: building kbox-bench failed" >&2; exit 1; }
    BENCH_BIN=$BUILD_BENCH/kbox-bench
fi
[ -x "$BENCH_BIN" ] || { echo "run.sh: no kbox-bench at $BENCH_BIN" >&2; exit 1; }
BENCH=$BENCH_BIN
if [ -z "$GATEWAY_BIN" ]; then
    # One target at a time: two parallel builds of the shared static libraries race.
    {
        cmake -S "$ROOT" -B "$BUILD_MAIN" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null &&
            cmake --build "$BUILD_MAIN" -j"$(nproc)" --target kbox-gateway >/dev/null &&
            cmake --build "$BUILD_MAIN" -j"$(nproc)" --target kbox-kernel-host >/dev/null
    } || { echo "run.sh: building the gateway failed (see: cmake --build $BUILD_MAIN)" >&2; exit 1; }
    GATEWAY_BIN=$BUILD_MAIN/gateway/kbox-gateway
fi
[ -x "$GATEWAY_BIN" ] || { echo "run.sh: no gateway at $GATEWAY_BIN" >&2; exit 1; }
# The native kernel, and the runc workers' init, is the kernel-host next to the gateway's dir.
if in_list native "$KERNELS" || [ "$LAUNCHER" = runc ]; then
    KH=$(dirname "$GATEWAY_BIN")/../kernel-host/kbox-kernel-host
    [ -x "$KH" ] || { echo "run.sh: no $KH (build kbox-kernel-host)" >&2; exit 1; }
fi

# ---- what this run is ---------------------------------------------------------------------------
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT+dirty"
MEM_GIB=$(awk '/MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta commit "$COMMIT"
meta machine "$(nproc) cores ($CPU_MODEL), $MEM_GIB GiB, $(uname -r), loadavg at start $(cut -d' ' -f1-3 /proc/loadavg)"
meta workload "$USERS users x $REQUESTS requests; 1a think $THINK_MIN-$THINK_MAX s, pool $POOL_1A (min idle/max total); 1b/2 pool $POOL_1B; $REPEAT repetition(s) of 1b/2/3, $REPEAT_1A of 1a${SCENARIO:+; every user on scenario $SCENARIO}"
meta kernels "$KERNELS: 1a, 1b, 2-kbox, 3 and the first-result probes once per kernel; 2-jupyter and the like-for-like ratios with ipykernel; memory/capacity with $MEM_KERNELS"
meta kernel "ipykernel $($PY -c 'import ipykernel; print(ipykernel.__version__)' 2>/dev/null), jupyter_server $($PY -c 'import jupyter_server; print(jupyter_server.__version__)' 2>/dev/null), $($PY --version 2>&1)"

# ---- gateway ------------------------------------------------------------------------------------
GW_NAME= GW_KERNEL= GW_PORT= GW_URL= GW_STATE= GW_LOG= GW_CGROUP=

# start_gateway NAME KERNEL MIN MAX [extra gateway args...]; 0 when healthy with MIN idle
# workers. NAME is the phase and the kernel (A-native).
start_gateway_once() {
    local name=$1 kernel=$2 min=$3 max=$4
    shift 4
    GW_NAME=$name
    GW_KERNEL=$kernel
    GW_PORT=$("$BENCH" freeport)
    GW_URL=http://127.0.0.1:$GW_PORT
    GW_STATE=$STATE_ROOT/$name-$LAUNCHER
    GW_LOG=$OUT/gateway-$name-$LAUNCHER.log
    mkdir -p "$GW_STATE"
    GW_CGROUP=$("$BENCH" cgname --state-dir "$GW_STATE")
    # What a leftover of this gateway would be named (cgroup parent, netns prefix): for checks.
    echo "$GW_STATE $GW_CGROUP" >>"$OUT/state-dirs.txt"
    # A clean environment: the gateway reads every option from the environment too.
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 AUTH_TOKEN="$TOKEN" \
        setsid "$GATEWAY_BIN" --host 127.0.0.1 --port "$GW_PORT" --state-dir "$GW_STATE" \
        --launcher "$LAUNCHER" --kernel "$kernel" --min-idle-workers "$min" \
        --max-total-workers "$max" "$@" \
        >"$GW_LOG" 2>&1 &
    GW_PID=$!
    STARTED_GATEWAYS+=("$GW_PID")
    local deadline=$((SECONDS + 60 + 3 * min)) ready failed
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "$GW_PID" 2>/dev/null; then
            echo "run.sh: gateway $name exited:" >&2
            tail -5 "$GW_LOG" >&2
            GW_PID=
            return 1
        fi
        if "$BENCH" wait --url "$GW_URL" --token "$TOKEN" --idle "$min" --timeout 1 2>/dev/null; then
            return 0
        fi
        ready=$(grep -c '"worker ready"' "$GW_LOG" || true)
        failed=$(grep -c '"worker start failed"' "$GW_LOG" || true)
        if [ "$ready" -eq 0 ] && [ "$failed" -ge 3 ]; then
            echo "run.sh: gateway $name: workers fail to start:" >&2
            grep '"worker start failed"' "$GW_LOG" | tail -2 >&2
            stop_gateway
            return 1
        fi
        sleep 0.5
    done
    echo "run.sh: gateway $name not ready in time" >&2
    tail -5 "$GW_LOG" >&2
    stop_gateway
    return 1
}

start_gateway() {
    say "starting gateway '$1' (kernel $2, launcher $LAUNCHER, pool $3 idle / $4 max ${*:5})"
    if start_gateway_once "$@"; then return 0; fi
    if [ "$LAUNCHER" = runc ] && [ "${BENCH_NO_FALLBACK:-0}" != 1 ]; then
        warn "the runc launcher did not work here; FALLING BACK TO THE UNSANDBOXED PROCESS LAUNCHER for the rest of this run (figures are not those of the sandboxed product)"
        LAUNCHER=process
        start_gateway_once "$@" && return 0
    fi
    echo "run.sh: cannot start the gateway" >&2
    exit 1
}

settle() { # the pool is back to its minimum, nothing starting or stopping, the CPUs are idle
    kill -0 "$GW_PID" 2>/dev/null || warn "gateway $GW_NAME is not running"
    "$BENCH" wait --url "$GW_URL" --token "$TOKEN" --timeout 180 || true
    "$BENCH" quiet --busy-pct 15 --timeout 10
}

# One workload run, appended to the results. A run during which other processes took more than
# MAX_OTHER % of the machine's CPU is kept as "noisy" (not counted) and repeated, at most
# NOISY_RETRIES times; the last attempt counts whatever it measured.
bench_run() { # label target url token cpu-pid rep seed [extra args]; kernel: $KERNEL
    local label=$1 target=$2 url=$3 tok=$4 pid=$5 rep=$6 seed=$7 tries=0 line other rc
    shift 7
    while :; do
        rc=0
        line=$(timeout --signal=TERM --kill-after=10 "${RUN_TIMEOUT}" \
            "$BENCH" --kernel "$KERNEL" run --label "$label" --target "$target" --url "$url" --token "$tok" \
            --users "$USERS" --requests "$REQUESTS" --cpu-pid "$pid" --rep "$rep" --seed "$seed" \
            --launcher "$LAUNCHER" --workdir "$STATE_ROOT/k" ${SCENARIO:+--scenario "$SCENARIO"} "$@") || rc=$?
        if [ $rc -ne 0 ] || [ -z "$line" ]; then
            warn "workload $label [$KERNEL] (repetition $rep) did not finish (exit $rc)"
            return 0
        fi
        other=$(grep -o '"other_busy_pct":[-0-9.e+]*' <<<"$line" | cut -d: -f2)
        if [ "$label" != 1a ] && [ $tries -lt "$NOISY_RETRIES" ] &&
            awk -v o="${other:-0}" -v m="$MAX_OTHER" 'BEGIN { exit !(o > m) }'; then
            echo "${line/\"kind\":\"run\"/\"kind\":\"noisy\"}" >>"$RESULTS"
            say "other processes took ${other}% of the CPU during $label [$KERNEL]: repeating it"
            tries=$((tries + 1))
            settle
            continue
        fi
        echo "$line" >>"$RESULTS"
        return 0
    done
}

# Generous but bounded: every request could take its full timeout only in a broken run.
RUN_TIMEOUT=$((240 + USERS * REQUESTS / 5))
RUNS_START=$SECONDS
ASKED_LAUNCHER=$LAUNCHER
# Other work on the machine spoils every figure: wait (bounded) for it to calm down.
WAIT_QUIET=${BENCH_WAIT_QUIET:-120}
[ "$QUICK" = 1 ] && WAIT_QUIET=${BENCH_WAIT_QUIET:-5}
say "waiting up to ${WAIT_QUIET}s for the machine to be quiet (load $(cut -d' ' -f1-3 /proc/loadavg))"
"$BENCH" quiet --busy-pct 10 --timeout "$WAIT_QUIET"

# The same users, scenarios and code for every kernel (and every target) of a repetition.
SEEDS_1A=() SEEDS_B=()
for ((rep = 1; rep <= REPEAT_1A; rep++)); do SEEDS_1A[rep]=$RANDOM$RANDOM; done
for ((rep = 1; rep <= REPEAT; rep++)); do SEEDS_B[rep]=$RANDOM$RANDOM; done

# ---- kernel only: each kernel alone over ZeroMQ (ipc), no gateway, no sandbox -------------------
# CPU per trivial execute, idle RSS, start to kernel_info_reply (tests/kernel/kbench.py); the
# kernels alternate, REPEAT starts each, so a change in the machine's speed hits them alike.
if ! skip kernel; then
    say "kernel only: ${KERNELS}, $REPEAT start(s) each, $KERNEL_N executes per start"
    "$BENCH" quiet --busy-pct 10 --timeout 20 || true
    KB_ARGS=()
    [ ${#KERNEL_LIST[@]} -eq 1 ] && KB_ARGS=(--only "${KERNEL_LIST[0]}")
    [ -n "${KH:-}" ] && KB_ARGS+=(--bin "$KH")
    timeout 1200 "$PY" "$ROOT/tests/kernel/kbench.py" --jsonl -n "$KERNEL_N" --reps "$REPEAT" \
        "${KB_ARGS[@]}" >>"$RESULTS" 2>"$OUT/kbench.log" ||
        warn "kernel-only runs did not finish (see $OUT/kbench.log)"
fi

# ---- phase A: 1a with the seed's pool, and the warm-pool first result; per kernel ----------------
IFS=/ read -r A_MIN A_MAX <<<"$POOL_1A"
if ! skip 1a || ! skip first; then
    for KERNEL in "${KERNEL_LIST[@]}"; do
        start_gateway "A-$KERNEL" "$KERNEL" "$A_MIN" "$A_MAX"
        if ! skip first; then
            say "first result for a new user, pool warm, $KERNEL ($FIRST_SAMPLES samples)"
            settle
            timeout 900 "$BENCH" --kernel "$KERNEL" first --url "$GW_URL" --token "$TOKEN" \
                --mode warm --samples "$FIRST_SAMPLES" >>"$RESULTS" ||
                warn "first (warm, $KERNEL) did not finish"
        fi
        if ! skip 1a; then
            for ((rep = 1; rep <= REPEAT_1A; rep++)); do
                say "workload 1a [$KERNEL], repetition $rep: $USERS x $REQUESTS, think $THINK_MIN-$THINK_MAX s, pool $POOL_1A"
                settle
                bench_run 1a execute "$GW_URL" "$TOKEN" "$GW_PID" "$rep" "${SEEDS_1A[rep]}" \
                    --think-min "$THINK_MIN" --think-max "$THINK_MAX" --kernels-cgroup "$GW_CGROUP"
            done
        fi
        "$BENCH" --kernel "$KERNEL" gwlog --file "$GW_LOG" --label "A, pool $POOL_1A" >>"$RESULTS" || true
        stop_gateway
    done
fi

# ---- phase B: 1b and 2-kbox per kernel; with ipykernel also 3 and 2 on Jupyter Server,
# interleaved per repetition (the like-for-like ratios) ---------------------------------------------
IFS=/ read -r B_MIN B_MAX <<<"$POOL_1B"
JS_URL= JS_TOKEN=
in_list ipykernel "$KERNELS" || skip 2 ||
    say "ipykernel is not in --kernels: workload 2 on Jupyter Server is not run"
if ! skip 1b || ! skip 2 || ! skip 3; then
    for KERNEL in "${KERNEL_LIST[@]}"; do
        REF=0 W3=0
        [ "$KERNEL" = ipykernel ] && REF=1
        # 3 with each kernel the bench can start by itself: the ceiling 1b is measured against.
        if ! skip 3 && { [ $REF = 1 ] || [ "$KERNEL" = native ]; }; then W3=1; fi
        if skip 1b && skip 2 && [ $W3 = 0 ]; then continue; fi
        start_gateway "B-$KERNEL" "$KERNEL" "$B_MIN" "$B_MAX"
        if [ $REF = 1 ] && ! skip 2 && ! skip jupyter; then
            JS_PORT=$("$BENCH" freeport)
            JS_URL=http://127.0.0.1:$JS_PORT
            JS_TOKEN=js-$TOKEN
            mkdir -p "$STATE_ROOT/jupyter/home" "$STATE_ROOT/jupyter/root"
            say "starting a stock Jupyter Server on $JS_URL"
            env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$STATE_ROOT/jupyter/home" \
                JUPYTER_RUNTIME_DIR="$STATE_ROOT/jupyter/runtime" \
                setsid $PY -m jupyter_server --ServerApp.token="$JS_TOKEN" --ServerApp.ip=127.0.0.1 \
                --ServerApp.port="$JS_PORT" --ServerApp.port_retries=0 --allow-root \
                --ServerApp.open_browser=False --ServerApp.root_dir="$STATE_ROOT/jupyter/root" \
                >"$OUT/jupyter-server.log" 2>&1 &
            JS_PID=$!
            for ((i = 0; i < 300; i++)); do
                curl -fs -o /dev/null -H "Authorization: token $JS_TOKEN" "$JS_URL/api/status" && break
                kill -0 "$JS_PID" 2>/dev/null || break
                sleep 0.1
            done
            curl -fs -o /dev/null -H "Authorization: token $JS_TOKEN" "$JS_URL/api/status" ||
                { warn "Jupyter Server did not start (see $OUT/jupyter-server.log)"; stop_jupyter; JS_URL=; }
        fi
        for ((rep = 1; rep <= REPEAT; rep++)); do
            seed=${SEEDS_B[rep]}
            if ! skip 1b; then
                say "workload 1b [$KERNEL], repetition $rep/$REPEAT: $USERS x $REQUESTS, no think time, pool $POOL_1B"
                settle
                if [ "$PERF" = 1 ] && [ "$rep" = 1 ] && command -v perf >/dev/null; then
                    perf record -F 999 -g -p "$GW_PID" -o "$OUT/perf-gateway-1b-$KERNEL.data" >/dev/null 2>&1 &
                    PERF_PID=$!
                fi
                bench_run 1b execute "$GW_URL" "$TOKEN" "$GW_PID" "$rep" "$seed" --kernels-cgroup "$GW_CGROUP"
                if [ -n "$PERF_PID" ]; then
                    kill -INT "$PERF_PID" 2>/dev/null || true
                    wait "$PERF_PID" 2>/dev/null || true
                    PERF_PID=
                    perf report -i "$OUT/perf-gateway-1b-$KERNEL.data" --stdio --no-children \
                        --percent-limit 1 >"$OUT/perf-gateway-1b-$KERNEL.txt" 2>/dev/null || true
                fi
            fi
            if [ $W3 = 1 ]; then
                say "workload 3 [$KERNEL], repetition $rep/$REPEAT: the same steps over ZeroMQ to the kernels, no gateway"
                settle
                if [ $REF = 1 ]; then
                    bench_run 3 zmq "" "" 0 "$rep" "$seed" --python "$PY"
                else
                    bench_run 3 zmq "" "" 0 "$rep" "$seed" --kernel-host "$KH"
                fi
            fi
            if ! skip 2; then
                say "workload 2 [$KERNEL], repetition $rep/$REPEAT: kernels API + WebSocket, kbox"
                settle
                bench_run 2-kbox kernels "$GW_URL" "$TOKEN" "$GW_PID" "$rep" "$seed" \
                    --server kbox --kernels-cgroup "$GW_CGROUP"
                if [ -n "$JS_URL" ]; then
                    say "workload 2, repetition $rep/$REPEAT: kernels API + WebSocket, Jupyter Server"
                    settle
                    bench_run 2-jupyter kernels "$JS_URL" "$JS_TOKEN" "$JS_PID" "$rep" "$seed" --server jupyter
                fi
            fi
        done
        stop_jupyter
        JS_URL=
        "$BENCH" --kernel "$KERNEL" gwlog --file "$GW_LOG" --label "B, pool $POOL_1B" >>"$RESULTS" || true
        stop_gateway
    done
fi

# ---- phase C: empty pool (first result) per kernel; memory at N sessions and capacity with
# --mem-kernels ------------------------------------------------------------------------------------
if ! skip cold || ! skip mem; then
    for KERNEL in "${KERNEL_LIST[@]}"; do
        MEM=0
        ! skip mem && in_list "$KERNEL" "$MEM_KERNELS" && MEM=1
        if skip cold && [ $MEM = 0 ]; then continue; fi
        # Worker disks are fallocated: at the default 500 MB, 200 sessions would need 100 GB.
        # The ramp uses small disks and a large disk reserve (so a shared machine never fills
        # up); the disk bound at the default size is computed from the free space instead.
        start_gateway "C-$KERNEL" "$KERNEL" 0 "$((CAPACITY_MAX + 10))" \
            --worker-disk-mb "$MEM_DISK_MB" --disk-reserve-mb 20480
        if ! skip cold; then
            say "first result for a new user, pool empty, $KERNEL ($COLD_SAMPLES samples)"
            settle
            timeout 600 "$BENCH" --kernel "$KERNEL" first --url "$GW_URL" --token "$TOKEN" \
                --mode cold --samples "$COLD_SAMPLES" >>"$RESULTS" ||
                warn "first (cold, $KERNEL) did not finish"
        fi
        if [ $MEM = 1 ]; then
            say "memory at $MEM_AT sessions, then capacity up to $CAPACITY_MAX sessions, $KERNEL"
            settle
            timeout 1500 "$BENCH" --kernel "$KERNEL" mem --url "$GW_URL" --token "$TOKEN" \
                --gw-pid "$GW_PID" --at "$MEM_AT" --max "$CAPACITY_MAX" --batch 8 \
                --reserve-mb "$MEM_RESERVE_MB" --kernels-cgroup "$GW_CGROUP" >>"$RESULTS" ||
                warn "memory/capacity probe ($KERNEL) did not finish"
            DISK_FREE_MB=$(df -Pm "$STATE_ROOT" | awk 'NR==2 {print $4}')
            DISK_META="$DISK_FREE_MB MB free where worker disks live: at the default 500 MB per session that alone bounds the machine to ~$(((DISK_FREE_MB - 1024) / 500)) sessions"
        fi
        "$BENCH" --kernel "$KERNEL" gwlog --file "$GW_LOG" --label "C, empty pool + ramp" >>"$RESULTS" || true
        stop_gateway
    done
    if [ -n "${DISK_META:-}" ]; then meta disk "$DISK_META"; fi
fi

# ---- kernel start, step by step (ipykernel, no gateway) -------------------------------------------
if ! skip kstart; then
    say "kernel start steps ($KSTART_SAMPLES samples)"
    timeout 300 "$BENCH" --kernel ipykernel kstart --python "$PY" --samples "$KSTART_SAMPLES" \
        --workdir "$STATE_ROOT/kstart" >>"$RESULTS" || warn "kstart did not finish"
fi

if [ "$LAUNCHER" = "$ASKED_LAUNCHER" ]; then
    meta launcher "$LAUNCHER"
else
    meta launcher "$LAUNCHER (asked for $ASKED_LAUNCHER, which failed: see the warning)"
fi
meta loadavg "at the end: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
meta duration "$((SECONDS - RUNS_START)) s of measuring (after the build); ulimit -n $(ulimit -n)"
"$BENCH" report --file "$RESULTS" | tee "$OUT/table.txt"
echo "run.sh: results in $OUT" >&2
