#!/usr/bin/env bash
# bench/smoke.sh GATEWAY_BIN BENCH_BIN: the ctest `bench_smoke`, so the benchmark cannot rot.
#
# Runs `bench/run.sh --quick` (both kernels, runc, no fallback to the process launcher) on the
# tree's own kbox-gateway and kbox-bench into a temporary dir, and fails unless run.sh exits 0,
# every row it should produce is there with 100% ok and 100% verified, every probe answered, no
# warning was raised, and nothing of the run is left behind: no process of its gateways or
# kernels, no kbox-* network namespace, veth, loop device, mount or cgroup of its gateways, no
# state dir. It asserts behaviour only, never speed. Needs root (runc), like the integration
# suites. KBOX_BENCH_SMOKE_KEEP=1 keeps the output dir (logs, results) for a post-mortem.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=/usr/bin/python3
[ $# -eq 2 ] || { echo "usage: $0 GATEWAY_BIN BENCH_BIN" >&2; exit 2; }
GW=$1
BENCH=$2

KEEP=${KBOX_BENCH_SMOKE_KEEP:-0}
# The run's configuration is this script's, not whatever the caller's environment says.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(BENCH_|KBOX_BENCH_)' || true)

TMP=$(mktemp -d /tmp/kbox-bench-smoke.XXXXXX)
OUT=$TMP/out
cleanup() {
    if [ "$KEEP" = 1 ]; then
        echo "smoke: output kept in $OUT" >&2
    else
        rm -rf --one-file-system "$TMP"
    fi
}
trap cleanup EXIT

fail=0
bad() {
    echo "smoke: FAIL: $*" >&2
    fail=1
}

# --scenario puts every user on one scenario, and refuses one it does not know. A closed port on
# loopback answers at once: the users' draw is in the result line whether or not they connect.
line=$("$BENCH" run --url http://127.0.0.1:9 --users 5 --requests 1 --scenario numpy 2>/dev/null) ||
    bad "kbox-bench run --scenario numpy exited $?"
$PY -c 'import json, sys; s = json.loads(sys.argv[1])["scenarios"]; sys.exit(s != {"arithmetic": 0, "list": 0, "numpy": 5})' \
    "$line" || bad "--scenario numpy drew: $line"
"$BENCH" run --url http://127.0.0.1:9 --scenario numbers >/dev/null 2>&1 && bad "--scenario numbers accepted"

# handoff: both transports measured, positive figures, and its sockets gone afterwards.
line=$("$BENCH" handoff --n 200 --reps 1 --workdir "$TMP" 2>&1) || bad "kbox-bench handoff exited $?: $line"
$PY -c 'import json, sys; d = json.loads(sys.argv[1]); sys.exit(not all(d[t][k] > 0 for t in ("zmq_ipc", "unix") for k in ("wall_us", "cpu_us")))' \
    "$line" || bad "handoff printed: $line"
[ -z "$(find "$TMP" -name 'handoff-*')" ] || bad "handoff left its sockets in $TMP"

t0=$SECONDS
rc=0
BENCH_NO_FALLBACK=1 "$HERE/run.sh" --quick --kernels ipykernel,native --launcher runc \
    --gateway-bin "$GW" --bench-bin "$BENCH" --out "$OUT" >"$TMP/table.txt" 2>"$TMP/run.log" ||
    rc=$?
echo "smoke: run.sh exited $rc after $((SECONDS - t0)) s" >&2
cat "$TMP/table.txt"
if [ $rc -ne 0 ]; then
    bad "run.sh exited $rc; the end of its log:"
    tail -40 "$TMP/run.log" >&2
fi

# ---- the results ------------------------------------------------------------------------------
if [ -s "$OUT/results.jsonl" ]; then
    $PY - "$OUT/results.jsonl" <<'EOF' || bad "results (above)"
import json, sys

lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
errors = []
kernels = ["ipykernel", "native"]
want = [(w, k) for w in ("1a", "1b", "2-kbox") for k in kernels]
want += [("2-jupyter", "ipykernel"), ("3", "ipykernel"), ("3", "native")]
runs = [j for j in lines if j.get("kind") == "run"]
for w, k in want:
    rs = [j for j in runs if j.get("label") == w and j.get("kernel") == k]
    if not rs:
        errors.append(f"no run of {w} [{k}]")
for j in runs:
    name = f"{j.get('label')} [{j.get('kernel')}]"
    if j.get("success_pct") != 100 or j.get("verified_pct") != 100:
        errors.append(f"{name}: ok {j.get('success_pct')}%, verified {j.get('verified_pct')}%"
                      f" (first failure: {j.get('first_failure')})")
    if j.get("requests") != j.get("users", 0) * j.get("requests_per_user", 0) or not j.get("requests"):
        errors.append(f"{name}: {j.get('requests')} requests answered")
for k in kernels:
    kl = [j for j in lines if j.get("kind") == "kernel" and j.get("kernel") == k]
    if not kl or not all(j.get("n", 0) > 0 and j.get("cpu_ms_per_execute", 0) > 0
                         and j.get("idle_rss_mb", 0) > 0 for j in kl):
        errors.append(f"kernel-only run [{k}]: {kl[-1] if kl else 'missing'}")
    for mode in ("warm", "cold"):
        f = [j for j in lines if j.get("kind") == "first" and j.get("mode") == mode
             and j.get("kernel") == k]
        if not f or f[-1].get("failed") or not f[-1].get("samples"):
            errors.append(f"first result ({mode}) [{k}]: {f[-1] if f else 'missing'}")
    mem = [j for j in lines if j.get("kind") == "mem" and j.get("kernel") == k]
    if len(mem) != 2 or any(m.get("probe_ok") != 10 or not m.get("workers") for m in mem):
        errors.append(f"memory [{k}]: {mem}")
    cap = [j for j in lines if j.get("kind") == "capacity" and j.get("kernel") == k]
    if not cap or cap[-1].get("stopped_by") != "cap":
        errors.append(f"capacity [{k}]: {cap}")
ks = [j for j in lines if j.get("kind") == "kstart"]
if not ks or not ks[-1].get("samples"):
    errors.append(f"kstart: {ks}")
for j in lines:
    if j.get("kind") == "warning":
        errors.append(f"warning: {j.get('text')}")
    if j.get("kind") == "meta" and j.get("key") == "launcher" and j.get("value") != "runc":
        errors.append(f"launcher: {j.get('value')}")
for e in errors:
    print("smoke:", e, file=sys.stderr)
print(f"smoke: {len(runs)} runs, {len(lines)} result lines checked", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
else
    bad "no results in $OUT/results.jsonl"
fi

# ---- nothing left behind ------------------------------------------------------------------------
if [ -s "$OUT/state-dirs.txt" ]; then
    netns=$(ip netns list 2>/dev/null | awk '{print $1}')
    links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}')
    loops=$(losetup -a 2>/dev/null || true)
    while read -r dir prefix; do
        root=$(dirname "$dir")
        [ -e "$dir" ] && bad "state dir $dir is still there"
        [ -e "$root" ] && bad "state root $root is still there"
        pids=$(pgrep -f -- "$root" || true)
        [ -n "$pids" ] && bad "processes of the run still running: $(ps -o pid=,args= -p "${pids//$'\n'/,}")"
        grep -q -- "$root" /proc/self/mountinfo && bad "mounts under $root: $(grep -- "$root" /proc/self/mountinfo)"
        grep -q -- "$dir" <<<"$loops" && bad "loop devices of $dir: $(grep -- "$dir" <<<"$loops")"
        grep -q "^$prefix" <<<"$netns" && bad "network namespaces $prefix*: $(grep "^$prefix" <<<"$netns")"
        grep -q "^kbox-h${prefix#kbox-w}" <<<"$links" && bad "veths kbox-h${prefix#kbox-w}*"
        cg=$(find /sys/fs/cgroup -maxdepth 3 -name "$prefix*" 2>/dev/null || true)
        [ -n "$cg" ] && bad "cgroups left: $cg"
    done <"$OUT/state-dirs.txt"
else
    bad "run.sh recorded no gateway state dirs ($OUT/state-dirs.txt)"
fi

if [ $fail = 0 ]; then
    echo "smoke: OK ($((SECONDS - t0)) s)" >&2
else
    echo "smoke: the end of run.sh's log:" >&2
    tail -15 "$TMP/run.log" >&2
fi
exit $fail
