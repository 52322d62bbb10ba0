#!/usr/bin/env bash
# Workload 1b (docs/BENCHMARKS.md, ../shared/brief/performance.md) through the real gateway and
# runc sandboxes, once per kernel, in one run: 25 users x 100 sequential POST /execute, no think
# time, the pool warmed to one idle worker per user. Needs root (runc) and kbox-bench
# (cmake -S bench -B BUILD && cmake --build BUILD).
#
#   tests/kernel/bench_1b.sh GATEWAY_BIN KBOX_BENCH_BIN [KERNELS...]   (default: ipykernel native)
set -euo pipefail
GW=$1
BENCH=$2
shift 2
KERNELS=("${@:-ipykernel native}")
[ $# -gt 0 ] || KERNELS=(ipykernel native)
USERS=${BENCH_USERS:-25}
REQUESTS=${BENCH_REQUESTS:-100}
OUT=$(mktemp -d /tmp/kbox-bench-1b.XXXXXX)
TOKEN=bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
SEED=${BENCH_SEED:-424242}
for k in "${KERNELS[@]}"; do
    port=$("$BENCH" freeport)
    state=$OUT/state-$k
    mkdir -p "$state"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 AUTH_TOKEN="$TOKEN" \
        setsid "$GW" --host 127.0.0.1 --port "$port" --state-dir "$state" --launcher runc \
        --kernel "$k" --min-idle-workers "$USERS" --max-total-workers "$USERS" \
        >"$OUT/gateway-$k.log" 2>&1 &
    gw_pid=$!
    url=http://127.0.0.1:$port
    cg=$("$BENCH" cgname --state-dir "$state")
    "$BENCH" wait --url "$url" --token "$TOKEN" --idle "$USERS" --timeout 300 >/dev/null
    "$BENCH" quiet --busy-pct 15 --timeout 20 >/dev/null 2>&1 || true
    "$BENCH" run --label "1b-$k" --target execute --url "$url" --token "$TOKEN" \
        --users "$USERS" --requests "$REQUESTS" --think-min 0 --think-max 0 \
        --cpu-pid "$gw_pid" --rep 1 --seed "$SEED" --launcher runc --kernels-cgroup "$cg" \
        --workdir "$OUT/k" | tee -a "$OUT/results.jsonl"
    kill -TERM "$gw_pid"
    wait "$gw_pid" || true
done
echo "results: $OUT/results.jsonl" >&2
