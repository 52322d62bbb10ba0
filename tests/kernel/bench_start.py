#!/usr/bin/python3
"""Worker start through the real gateway (runc sandbox, disk, network namespace), one at a
time, for each kernel: the gateway's own "worker ready" log line (start_ms: from the worker's
creation to its kernel_info reply with iopub flowing, and the container step alone).

    /usr/bin/python3 tests/kernel/bench_start.py GATEWAY_BIN [-n 10] [--kernels native]
        [--gateway-arg=--worker-transport --gateway-arg=tcp]   (as root)

Prints, per kernel, the medians of the whole start and of its steps (disk, network namespace
with its firewall, container up to the kernel's sockets).
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(gw_bin, kernel, n, extra=()):
    state = tempfile.mkdtemp(prefix=f"kbox-start-{kernel}-")
    port, token = free_port(), uuid.uuid4().hex
    log = open(os.path.join(state, "gateway.log"), "w+")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "AUTH_TOKEN": token}
    gw = subprocess.Popen([gw_bin, "--host", "127.0.0.1", "--port", str(port), "--state-dir",
                           state, "--launcher", "runc", "--kernel", kernel,
                           "--min-idle-workers", "1", "--max-total-workers", "4"] + list(extra),
                          env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    h = {"X-Auth-Token": token}
    try:
        for _ in range(n):
            # Wait for the one idle worker, let the machine settle, then take it: the pool
            # starts the next one alone.
            deadline = time.time() + 60
            while time.time() < deadline:
                try:
                    st = requests.get(url + "/status", headers=h, timeout=2).json()
                    if st.get("idle_workers", st.get("workers", {}).get("idle", 0)) >= 1:
                        break
                except (requests.ConnectionError, ValueError):
                    pass
                time.sleep(0.1)
            time.sleep(1.0)
            user = "u-" + uuid.uuid4().hex[:16]
            r = requests.post(url + "/execute", json={"user_uuid": user, "code": "1"},
                              headers=h, timeout=60)
            assert r.status_code == 200, r.text
            requests.post(url + "/release", json={"user_uuid": user}, headers=h, timeout=60)
        time.sleep(2)
    finally:
        gw.terminate()
        gw.wait(timeout=60)
    steps = {k: [] for k in ("start_ms", "disk_ms", "netns_ms", "container_ms")}
    log.seek(0)
    for line in log:
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("msg") == "worker ready":
            for k, v in steps.items():
                v.append(j.get(k, 0))
    steps = {k: sorted(v[1:]) for k, v in steps.items()}  # the first: at boot, with the others
    out = {"kernel": kernel, "args": " ".join(extra), "n": len(steps["start_ms"]),
           "start_ms_max": round(steps["start_ms"][-1])}
    for k, v in steps.items():
        out[k.replace("_ms", "_ms_p50")] = round(v[len(v) // 2], 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gateway")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--kernels", default="ipykernel,native")
    ap.add_argument("--gateway-arg", action="append", default=[],
                    help="passed to the gateway (repeat: --gateway-arg=--worker-transport "
                         "--gateway-arg=tcp)")
    args = ap.parse_args()
    for k in args.kernels.split(","):
        print(json.dumps(run(args.gateway, k, args.n, args.gateway_arg)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
