#!/usr/bin/python3
"""Worker start through the real gateway (runc sandbox, disk, network namespace), one at a
time, for each kernel: the gateway's own "worker ready" log line (start_ms: from the worker's
creation to its kernel_info reply with iopub flowing, and the container step alone).

    /usr/bin/python3 tests/kernel/bench_start.py GATEWAY_BIN [-n 10]   (as root)
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


def run(gw_bin, kernel, n):
    state = tempfile.mkdtemp(prefix=f"kbox-start-{kernel}-")
    port, token = free_port(), uuid.uuid4().hex
    log = open(os.path.join(state, "gateway.log"), "w+")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "AUTH_TOKEN": token}
    gw = subprocess.Popen([gw_bin, "--host", "127.0.0.1", "--port", str(port), "--state-dir",
                           state, "--launcher", "runc", "--kernel", kernel,
                           "--min-idle-workers", "1", "--max-total-workers", "4"],
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
    starts, containers = [], []
    log.seek(0)
    for line in log:
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("msg") == "worker ready":
            starts.append(j["start_ms"])
            containers.append(j.get("container_ms", 0))
    starts, containers = sorted(starts[1:]), sorted(containers[1:])  # the first: at boot
    return {"kernel": kernel, "n": len(starts), "start_ms_p50": round(starts[len(starts) // 2]),
            "start_ms_max": round(starts[-1]),
            "container_ms_p50": round(containers[len(containers) // 2])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gateway")
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    for k in ("ipykernel", "native"):
        print(json.dumps(run(args.gateway, k, args.n)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
