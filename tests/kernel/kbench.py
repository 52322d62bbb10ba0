#!/usr/bin/python3
"""Kernel-only figures for the native kernel and ipykernel, side by side in one run.

    /usr/bin/python3 tests/kernel/kbench.py [--bin build/kernel-host/kbox-kernel-host] [-n 2000]
                                            [--reps N] [--jsonl]

For each kernel: start to kernel_info_reply and to the first execute_reply, kernel CPU per
trivial execute (`x += 1; print(x)`, sequential, reply and idle awaited; CPU is the sum of
every thread's on-CPU time from /proc/<pid>/task/*/schedstat, so it includes the protocol,
the I/O thread and libzmq's), and the idle kernel's RSS. The native kernel is started with
--no-init (the kernel process itself; the init adds no CPU per request). Prints one JSON
object per kernel and run ("kind": "kernel", the line bench/run.sh collects) and a table of
the medians (--jsonl: the JSON lines only). --reps N starts each kernel N times, alternating
the kernels, so a change in the machine's speed during the run hits both alike. A benchmark,
not a test: it asserts nothing.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import zmq
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

HERE = os.path.dirname(os.path.abspath(__file__))
TCP = False
SETUP, CODE = "x = 0", "x += 1; print(x)"
DEFAULT_BIN = os.path.join(HERE, "..", "..", "build", "kernel-host", "kbox-kernel-host")


def cpu_ns(pid):
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except OSError:
            pass
    return total


def cpu_by_thread(pid):
    out = {}
    for d in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(d + "/comm") as f:
                name = f.read().strip() + "/" + os.path.basename(d)
            with open(d + "/schedstat") as f:
                out[name] = int(f.read().split()[0])
            with open(d + "/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        k, v = line.split(":")
                        out[name + " " + k] = int(v)
        except OSError:
            pass
    return out


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Client:
    """A minimal synchronous client (pyzmq + jupyter_client's Session)."""

    def __init__(self, info):
        self.session = Session(key=info["key"].encode(), signature_scheme="hmac-sha256")
        self.ctx = zmq.Context()
        if info.get("transport") == "ipc":
            url = lambda port: f"ipc://{info['ip']}-{port}"
        else:
            url = lambda port: f"tcp://{info['ip']}:{port}"
        # Retry connecting every 5 ms: the kernel binds after we connect, and libzmq's default
        # 100 ms would be measured as the kernel's start time.
        self.ctx.setsockopt(zmq.RECONNECT_IVL, 5)
        self.shell = self.ctx.socket(zmq.DEALER)
        self.shell.connect(url(info["shell_port"]))
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(url(info["iopub_port"]))

    def request(self, msg_type, content, timeout=60, idle=True):
        """Sends a request; returns (reply, iopub messages) once the reply and idle came
        (only the reply with idle=False: iopub may not be subscribed yet at start)."""
        msg = self.session.msg(msg_type, content)
        self.session.send(self.shell, msg)
        mid = msg["header"]["msg_id"]
        reply, idle, out = None, not idle, []
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        deadline = time.time() + timeout
        while reply is None or not idle:
            if time.time() > deadline:
                raise TimeoutError(msg_type)
            for sock, _ in poller.poll(1000):
                _, parts = self.session.feed_identities(sock.recv_multipart())
                m = self.session.deserialize(parts)
                if m["parent_header"].get("msg_id") != mid:
                    continue
                if sock is self.shell:
                    reply = m
                elif m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    idle = True
                else:
                    out.append(m)
        return reply, out

    def close(self):
        self.ctx.destroy(linger=0)


def run_kernel(name, argv_for, n, workdir):
    # ipc, as the gateway connects to its kernels (--tcp for loopback TCP).
    ipc = not TCP
    cf, info = write_connection_file(
        fname=os.path.join(workdir, f"{name}.json"), transport="ipc" if ipc else "tcp",
        ip=os.path.join(workdir, name + "-ipc") if ipc else "127.0.0.1",
        key=os.urandom(32).hex().encode())
    t0 = time.time()
    proc = subprocess.Popen(argv_for(cf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=workdir)
    c = Client(info)
    start_info = None
    while start_info is None:
        try:
            c.request("kernel_info_request", {}, timeout=0.05, idle=False)
            start_info = time.time() - t0
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
    reply, _ = c.request("execute_request", {"code": SETUP, "silent": False})
    start_exec = time.time() - t0
    assert reply["content"]["status"] == "ok", reply
    time.sleep(1.0)
    idle_rss = rss_kb(proc.pid)  # a started kernel that ran one cell, as a warm pool holds it
    code = CODE
    for _ in range(200):  # warm up
        c.request("execute_request", {"code": code, "silent": False})
    time.sleep(0.5)
    perf = None
    if os.environ.get("KBENCH_PERFSTAT"):  # counters of the measured loop
        perf = subprocess.Popen(["perf", "stat", "-e",
                                 "task-clock,context-switches,instructions,cycles", "-o",
                                 os.environ["KBENCH_PERFSTAT"] + "." + name, "-p", str(proc.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    elif os.environ.get("KBENCH_STRACE"):  # syscall counts of the measured loop
        perf = subprocess.Popen(["strace", "-c", "-f", "-o",
                                 os.environ["KBENCH_STRACE"] + "." + name, "-p", str(proc.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    elif os.environ.get("KBENCH_PERF"):  # a profile of the measured loop: KBENCH_PERF=out.data
        perf = subprocess.Popen(["perf", "record", "-F", "4000", "--call-graph", os.environ.get("KBENCH_CG", "fp"), "-o",
                                 os.environ["KBENCH_PERF"] + "." + name, "-p", str(proc.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    threads0 = cpu_by_thread(proc.pid)
    cpu0, w0 = cpu_ns(proc.pid), time.time()
    for i in range(n):
        reply, out = c.request("execute_request", {"code": code, "silent": False})
    wall = time.time() - w0
    cpu = cpu_ns(proc.pid) - cpu0
    threads1 = cpu_by_thread(proc.pid)
    if os.environ.get("KBENCH_THREADS"):
        for k, v in sorted(threads1.items()):
            d = (v - threads0.get(k, 0)) / n
            if "ctxt" in k:
                print("   %-48s %.2f /execute" % (k, d), file=sys.stderr)
            else:
                print("   %-48s %.4f ms/execute" % (k, d / 1e6), file=sys.stderr)
    if perf:
        perf.send_signal(2)
        perf.wait()
    assert reply["content"]["status"] == "ok", reply
    text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
    if CODE == "x += 1; print(x)":
        assert text.strip() == str(200 + n), text
    time.sleep(1.0)
    rss_after = rss_kb(proc.pid)
    c.close()
    proc.kill()
    proc.wait()
    return {"kind": "kernel", "kernel": name, "n": n,
            "cpu_ms_per_execute": round(cpu / n / 1e6, 4),
            "wall_ms_per_execute": round(wall / n * 1e3, 3),
            "idle_rss_mb": round(idle_rss / 1024, 1),
            "rss_after_run_mb": round(rss_after / 1024, 1),
            "start_to_kernel_info_s": round(start_info, 3),
            "start_to_first_execute_s": round(start_exec, 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=DEFAULT_BIN)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--only", choices=["native", "ipykernel"])
    ap.add_argument("--tcp", action="store_true", help="loopback TCP instead of ipc")
    ap.add_argument("--setup", default="x = 0", help="first cell")
    ap.add_argument("--code", default="x += 1; print(x)", help="the cell measured")
    ap.add_argument("--reps", type=int, default=1, help="starts of each kernel")
    ap.add_argument("--jsonl", action="store_true", help="JSON lines only, no table")
    args = ap.parse_args()
    global TCP, SETUP, CODE
    TCP, SETUP, CODE = args.tcp, args.setup, args.code
    kernels = {
        "native": lambda cf: [os.path.abspath(args.bin), "--kernel", "native", "--no-init", "-f", cf],
        "ipykernel": lambda cf: ["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", cf],
    }
    names = [k for k in kernels if not args.only or k == args.only]
    results = {k: [] for k in names}
    with tempfile.TemporaryDirectory(prefix="kbench-") as d:
        for _ in range(max(1, args.reps)):
            for name in names:
                r = run_kernel(name, kernels[name], args.n, d)
                print(json.dumps(r), flush=True)
                results[name].append(r)
    if args.jsonl:
        return 0
    keys = ["cpu_ms_per_execute", "wall_ms_per_execute", "idle_rss_mb", "rss_after_run_mb",
            "start_to_kernel_info_s", "start_to_first_execute_s"]
    print("%-28s" % "median" + "".join("%14s" % k for k in names))
    for key in keys:
        print("%-28s" % key + "".join("%14.4g" % statistics.median(r[key] for r in results[k])
                                      for k in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
