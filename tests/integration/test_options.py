"""Gateway options take effect: each test configures one option so that ignoring it (running
with the default instead) would make the test fail, not just checks that it is accepted."""
import os
import json
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import KERNEL, LAUNCHER, SWALLOW_FOREVER, no_leftovers, uid

# Code that never finishes by itself but stops at the first KeyboardInterrupt.
SLEEP_FOREVER = "import time\nwhile True:\n    time.sleep(0.05)\n"


def test_exec_timeout_caps_request_timeout(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--exec-timeout-ms", "1500"]).start()
    u = uid()
    assert g.execute(u, "kept = 7").status_code == 200
    for timeout_ms in (60000, None):  # a longer timeout_ms is capped, and so is none at all
        t0 = time.time()
        r = g.execute(u, SLEEP_FOREVER, timeout_ms=timeout_ms, http_timeout=60)
        took = time.time() - t0
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["timed_out"] is True, body
        assert body["error"]["ename"] == "KeyboardInterrupt"
        assert body["session_reset"] is False
        # Not before 1.5 s, and far from 60 s (or the 120 s default).
        assert 1.4 <= took < 15, took
    # A shorter timeout_ms still wins over the cap.
    t0 = time.time()
    r = g.execute(u, SLEEP_FOREVER, timeout_ms=300, http_timeout=60)
    assert r.json()["timed_out"] is True and time.time() - t0 < 1.4
    assert g.execute(u, "print(kept)").json()["stdout"] == "7\n"


def _raw(g, source="127.0.0.1"):
    return socket.create_connection(("127.0.0.1", g.port), timeout=10,
                                    source_address=(source, 0))


def _read_all(s):
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        data += chunk
    return data


def test_connection_limits_and_client_timeout(make_gateway):
    """--max-connections-per-address: a client holding its share of connections (idle, or
    sending a request slowly) gets a clear 503 for the next, and others are unaffected;
    --client-timeout-s: a request that does not arrive in time loses its connection, which
    frees the slot."""
    g = make_gateway(["--min-idle-workers", "0", "--max-connections-per-address", "2",
                      "--client-timeout-s", "2"]).start()
    time.sleep(0.3)  # the start's health checks have closed their connections
    held = [_raw(g), _raw(g)]
    held[1].sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Le")  # a slow head
    time.sleep(0.2)
    third = _raw(g)
    data = _read_all(third)
    third.close()
    assert data.startswith(b"HTTP/1.1 503 "), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"] == "too_many_connections" and "per client address" in body["detail"]
    other = _raw(g, source="127.0.0.2")  # another address (all of 127/8 is this host's)
    other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = _read_all(other)
    other.close()
    assert data.startswith(b"HTTP/1.1 200 "), data
    # Both held connections are closed by the client timeout (2 s, swept every 0.5 s), not
    # the default 60 s, which frees their slots.
    t0 = time.time()
    for s in held:
        data = _read_all(s)
        assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data
        s.close()
    took = time.time() - t0
    assert took < 8, took
    r = requests.get(g.url + "/healthz", timeout=10)
    assert r.status_code == 200, r.text


def test_max_connections(make_gateway):
    """--max-connections caps the connections of all clients together (here from one address,
    with the per-address limit off)."""
    g = make_gateway(["--min-idle-workers", "0", "--max-connections", "3",
                      "--max-connections-per-address", "0"]).start()
    time.sleep(0.3)  # the start's health checks have closed their connections
    held = [_raw(g) for _ in range(3)]
    fourth = _raw(g)
    data = _read_all(fourth)
    fourth.close()
    assert data.startswith(b"HTTP/1.1 503 "), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body == {"error": "too_many_connections", "detail": "connection limit reached"}
    for s in held:
        s.close()


def test_max_code_bytes(make_gateway):
    n = 1000
    g = make_gateway(["--min-idle-workers", "1", "--max-code-bytes", str(n)]).start()
    u = uid()

    def code_of(nbytes, filler="a"):
        head, tail = "s = '", "'\nprint(len(s.encode()))"
        body = filler * ((nbytes - len(head) - len(tail)) // len(filler.encode()))
        code = head + body + tail
        assert len(code.encode()) == nbytes, len(code.encode())
        return code, len(body.encode())

    code, inner = code_of(n)
    r = g.execute(u, code)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == f"{inner}\n"

    code, _ = code_of(n + 1)
    r = g.execute(u, code)
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] and "max-code-bytes" in body["detail"], body
    # Bytes of UTF-8, not characters: 1001 bytes in fewer than 1000 characters is too large.
    code, _ = code_of(n + 1, filler="\u00e9")
    assert len(code) < n
    r = g.execute(u, code)
    assert r.status_code == 413, r.text
    # The refused requests ran nothing: the session is the one the first call made.
    r = g.execute(u, "print(len(s))")
    assert r.status_code == 200 and r.json()["stdout"] == f"{inner}\n"
    assert r.json()["execution_count"] == 2


def _swallowed_timeout(g, u):
    """Seconds a 500 ms timeout takes to end with the kernel replaced."""
    assert g.execute(u, "kept = 1").status_code == 200
    t0 = time.time()
    r = g.execute(u, SWALLOW_FOREVER, timeout_ms=500, http_timeout=60)
    took = time.time() - t0
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["timed_out"] is True and body["session_reset"] is True, body
    r = g.execute(u, "print('kept' in dir())")
    assert r.json()["stdout"] == "False\n" and r.json()["session_reset"] is True
    return took


def test_interrupt_grace(make_gateway):
    short = make_gateway(["--min-idle-workers", "1", "--interrupt-grace-ms", "200"]).start()
    long = make_gateway(["--min-idle-workers", "1", "--interrupt-grace-ms", "4000"]).start()
    t_short = _swallowed_timeout(short, uid())
    t_long = _swallowed_timeout(long, uid())
    print(f"grace 200 ms: {t_short:.2f} s, grace 4000 ms: {t_long:.2f} s")
    # 0.5 s timeout + the grace. The default grace (2 s) would give >= 2.5 s in both.
    assert 0.65 <= t_short < 2.4, t_short
    assert 4.45 <= t_long < 20, t_long


def test_worker_start_timeout_fails_starts_cleanly(make_gateway):
    # 100 ms is the smallest allowed and below any sandboxed start (disk + netns + runc alone
    # take ~120 ms, the kernel more), so no worker ever becomes ready.
    state = tempfile.mkdtemp(prefix="kbox-opt-")
    try:
        g = make_gateway(["--min-idle-workers", "2", "--worker-start-timeout-ms", "100",
                          "--acquire-timeout-ms", "1500"], state_dir=state).start(wait_healthy=False)
        for _ in range(2):
            t0 = time.time()
            r = g.execute(uid(), "print(1)", http_timeout=60)
            took = time.time() - t0
            assert r.status_code == 503, r.text
            assert r.headers.get("Retry-After")
            assert 1.4 <= took < 10, took
        time.sleep(1.0)  # more failed starts (and their backoff) while we watch
        assert g.proc.poll() is None, g.read_log()
        st = g.status()
        assert st["idle_workers"] == 0 and st["busy_workers"] == 0, st
        assert st["sessions"] == 0, st  # the refused sessions left nothing behind
        assert "start timed out" in g.read_log()
        assert requests.get(g.url + "/healthz", timeout=5).status_code in (200, 503)
        assert g.stop() == 0
        assert no_leftovers(state) == {}
        disks = os.path.join(state, "disks")
        assert not os.path.isdir(disks) or os.listdir(disks) == []
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_max_starting_workers(make_gateway):
    g = make_gateway(["--min-idle-workers", "4", "--max-starting-workers", "1"])
    g.start(wait_healthy=False)
    seen = []
    deadline = time.time() + 120
    while time.time() < deadline:
        st = g.status()
        seen.append((st["starting_workers"], st["idle_workers"]))
        if st["idle_workers"] == 4:
            break
        time.sleep(0.01)
    starting = [s for s, _ in seen]
    assert seen[-1][1] == 4, seen[-20:]
    assert max(starting) == 1, starting  # never more than one at once, and we saw one
    # The default (4) would start them together; one at a time, idle rises one by one.
    idles = [i for _, i in seen]
    assert all(b - a <= 1 for a, b in zip(idles, idles[1:])), idles


@pytest.mark.skipif(LAUNCHER != "runc", reason="worker uids are the sandboxed launcher's")
def test_gateways_on_one_host_never_share_uids(make_gateway):
    """Two gateways on one host with the default --uid-base get ranges no other running gateway
    holds; an explicit range over a running gateway's is refused, naming it; a restart keeps
    the range it chose (its sessions' disks hold files of those uids), even when a lower one
    has become free."""
    probe = "import os\nprint(os.getuid())"
    state_b = tempfile.mkdtemp(prefix="kbox-uids-")
    try:
        a = make_gateway(["--min-idle-workers", "0", "--uid-count", "64"]).start()
        b = make_gateway(["--min-idle-workers", "0", "--uid-count", "64"], state_dir=state_b).start()
        uids = {}
        for g in (a, b):
            r = g.execute(uid(), probe)
            assert r.status_code == 200, r.text
            with open(os.path.join(g.state_dir, "uid-base")) as f:
                base = int(f.read())
            uids[g] = (base, int(r.json()["stdout"]))
            assert base <= uids[g][1] < base + 64, uids[g]
        assert abs(uids[a][0] - uids[b][0]) >= 64, uids

        log = make_gateway(["--min-idle-workers", "0", "--uid-base", str(uids[a][0] + 63),
                            "--uid-count", "1"]).run_refused()
        assert "worker uids overlap those of another running gateway" in log, log
        assert f'"other_pid":{a.proc.pid}' in log, log

        assert a.stop() == 0 and b.stop() == 0
        b2 = make_gateway(["--min-idle-workers", "0", "--uid-count", "64"],
                          state_dir=state_b).start()
        r = b2.execute(uid(), probe)
        assert r.status_code == 200, r.text
        assert uids[b][0] <= int(r.json()["stdout"]) < uids[b][0] + 64, uids
        assert b2.stop() == 0
    finally:
        shutil.rmtree(state_b, ignore_errors=True)


@pytest.mark.skipif(LAUNCHER != "runc", reason="worker uids are the sandboxed launcher's")
def test_uid_base_and_count(make_gateway):
    g = make_gateway(["--min-idle-workers", "0", "--uid-base", "300000", "--uid-count", "2",
                      "--acquire-timeout-ms", "3000"]).start()
    a, b, c = uid(), uid(), uid()
    probe = "import os\nprint(os.getuid(), os.getgid(), os.stat('/sandbox').st_uid)"
    ids = {}
    for u in (a, b):
        r = g.execute(u, probe)
        assert r.status_code == 200, r.text
        uid_, gid, owner = map(int, r.json()["stdout"].split())
        assert 300000 <= uid_ < 300002 and gid == uid_ and owner == uid_, (uid_, gid, owner)
        ids[u] = uid_
    assert ids[a] != ids[b]
    # Two uids, two sessions: a third gets no worker.
    r = g.execute(c, probe, http_timeout=60)
    assert r.status_code == 503, r.text
    assert g.release(a).status_code == 200
    deadline = time.time() + 30
    while True:  # a's uid is free once its worker is gone
        r = g.execute(c, probe, http_timeout=60)
        if r.status_code == 200 or time.time() > deadline:
            break
    assert r.status_code == 200, r.text
    assert int(r.json()["stdout"].split()[0]) == ids[a]


@pytest.mark.skipif(KERNEL != "ipykernel", reason="the native kernel embeds CPython; it runs no interpreter")
@pytest.mark.skipif(LAUNCHER != "runc", reason="checks the path inside the sandbox")
def test_python_interpreter_is_used(make_gateway):
    # The worker's root is the host's /usr, read-only: any interpreter there can be chosen,
    # and no wrapper script can be added to it. python3 is a symlink to python3.11, and
    # sys.executable is the path the kernel was started by.
    g = make_gateway(["--min-idle-workers", "1", "--python", "/usr/bin/python3.11"]).start()
    r = g.execute(uid(), "import sys\nprint(sys.executable)")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "/usr/bin/python3.11\n"
    g2 = make_gateway(["--min-idle-workers", "1"]).start()
    assert g2.execute(uid(), "import sys\nprint(sys.executable)").json()["stdout"] == "/usr/bin/python3\n"
    # Not an interpreter at all: no worker starts.
    g3 = make_gateway(["--min-idle-workers", "0", "--python", "/usr/bin/false",
                       "--acquire-timeout-ms", "3000"]).start()
    r = g3.execute(uid(), "1", http_timeout=60)
    assert r.status_code == 503, r.text


def test_process_launcher_runs_the_kernel(make_gateway):
    # The unsandboxed development launcher, with this suite's kernel (native: the kernel host
    # binary beside the gateway; ipykernel: --python).
    g = make_gateway(["--launcher", "process", "--min-idle-workers", "1"]).start()
    r = g.execute(uid(), "import os\nprint(os.getpid() > 1)\n6 * 7")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "True\n", r.text
    assert r.json()["result_text"].split()[-1] == "42", r.text
    assert g.status()["launcher"] == "process"
