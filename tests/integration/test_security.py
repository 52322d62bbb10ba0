"""The security properties of ../shared/brief/security.md, each checked from inside a worker
through POST /execute, plus the limits that start.sh's worker options set."""
import json
import os
import shutil
import tempfile
import textwrap
import time

import pytest

from conftest import LAUNCHER, uid

pytestmark = pytest.mark.skipif(LAUNCHER != "runc", reason="needs the sandboxed launcher")


def run(g, code, user=None, **kw):
    r = g.execute(user or uid(), textwrap.dedent(code), **kw)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["error"] is None, body["error"]
    return body["stdout"]


def run_json(g, code, user=None):
    return json.loads(run(g, code + "\nimport json as _j\nprint(_j.dumps(out))", user))


@pytest.fixture(scope="module")
def sg():
    from conftest import Gateway
    g = Gateway(["--min-idle-workers", "2", "--worker-ram-mb", "512", "--worker-disk-mb", "64",
                 "--worker-pids", "64"]).start()
    yield g
    g.stop()


def test_not_root_and_distinct_uids(sg):
    a = run_json(sg, "import os\nout = [os.getuid(), os.getgid(), os.geteuid(), os.getgroups()]")
    b = run_json(sg, "import os\nout = [os.getuid(), os.getgid(), os.geteuid(), os.getgroups()]")
    for ids in (a, b):
        assert ids[0] != 0 and ids[1] != 0 and ids[2] != 0
        assert 0 not in ids[3]
    assert a[0] != b[0], "two sessions share a uid"


def test_no_capabilities_no_new_privs_seccomp(sg):
    st = run_json(sg, """
        out = {}
        for line in open('/proc/self/status'):
            k, _, v = line.partition(':')
            out[k] = v.strip()
    """)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"


def test_syscall_filter(sg):
    res = run_json(sg, """
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        nr = dict(mount=165, ptrace=101, bpf=321, keyctl=250, add_key=248, kexec_load=246,
                  init_module=175, perf_event_open=298, userfaultfd=323, unshare=272, setns=308,
                  pivot_root=155, swapon=167, reboot=169, open_by_handle_at=304,
                  io_uring_setup=425, clone3=435)
        out = {}
        for name, n in nr.items():
            ctypes.set_errno(0)
            r = libc.syscall(ctypes.c_long(n), ctypes.c_long(0), ctypes.c_long(0),
                             ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
            out[name] = [r, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))]
        # clone(CLONE_NEWUSER | SIGCHLD): must be refused; a child (r == 0) exits at once.
        ctypes.set_errno(0)
        r = libc.syscall(ctypes.c_long(56), ctypes.c_long(0x10000000 | 17), ctypes.c_long(0),
                         ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
        if r == 0:
            os._exit(0)
        out['clone_newuser'] = [r, errno.errorcode.get(ctypes.get_errno(), '')]
        import threading
        box = []
        t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
        out['threads'] = box
        import subprocess
        out['subprocess'] = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout
    """)
    for name in ("mount", "ptrace", "bpf", "keyctl", "add_key", "kexec_load", "init_module",
                 "perf_event_open", "userfaultfd", "unshare", "setns", "pivot_root", "swapon",
                 "reboot", "open_by_handle_at", "clone_newuser"):
        assert res[name] == [-1, "EPERM"], (name, res[name])
    assert res["clone3"] == [-1, "ENOSYS"]
    assert res["io_uring_setup"][0] == -1
    assert res["threads"] == [1]
    assert res["subprocess"] == "hi\n"


def test_own_pid_namespace(sg):
    out = run_json(sg, """
        import os
        pids = [int(p) for p in os.listdir('/proc') if p.isdigit()]
        try:
            open('/proc/1/environ').read(); env = 'readable'
        except OSError as e:
            env = type(e).__name__
        out = [len(pids), 1 in pids, os.getpid(), env]
    """)
    assert out[0] < 10 and out[1] and out[2] != 1
    assert out[3] != "readable"


def test_read_only_root_and_capped_tmp(sg):
    out = run_json(sg, """
        import os
        out = {}
        for p in ('/x', '/usr/x', '/etc/x', '/bin/x'):
            try:
                open(p, 'w'); out[p] = 'written'
            except OSError as e:
                out[p] = e.errno
        open('/tmp/ok', 'w').write('x')
        s = os.statvfs('/tmp')
        out['tmp_bytes'] = s.f_blocks * s.f_frsize
        out['tmp_type'] = [l.split()[-3] for l in open('/proc/self/mountinfo') if l.split()[4] == '/tmp']
    """)
    for p in ("/x", "/usr/x", "/etc/x", "/bin/x"):
        assert out[p] != "written", p
    assert out["tmp_type"] == ["tmpfs"]
    assert 0 < out["tmp_bytes"] <= 1 << 30


def test_own_disk_quota_and_host_space(sg):
    u = uid()
    run(sg, "1", user=u)
    # Let the pool settle: its replacement idle worker makes a disk of its own.
    sg.wait_status(lambda s: s["starting_workers"] == 0 and s["idle_workers"] == 2)
    time.sleep(0.5)
    host_before = os.statvfs(sg.state_dir)
    out = run_json(sg, """
        import os, errno
        mi = [l.split() for l in open('/proc/self/mountinfo')]
        fstype = [l[l.index('-') + 1] for l in mi if l[4] == '/sandbox']
        s = os.statvfs('/sandbox')
        written, err = 0, None
        try:
            with open('/sandbox/fill', 'wb') as f:
                while True:
                    f.write(b'\\0' * (1 << 20)); f.flush(); written += 1
        except OSError as e:
            err = errno.errorcode[e.errno]
        os.unlink('/sandbox/fill')
        out = dict(fstype=fstype, size=s.f_blocks * s.f_frsize, written_mb=written, err=err,
                   owner=os.stat('/sandbox').st_uid == os.getuid())
    """, user=u)
    host_after = os.statvfs(sg.state_dir)
    assert out["fstype"] == ["ext4"]
    assert 40 << 20 < out["size"] <= 64 << 20
    assert out["err"] == "ENOSPC"
    assert 30 <= out["written_mb"] <= 64
    assert out["owner"]
    # The image's blocks were allocated when it was made: filling it moved nothing on the host.
    moved = abs(host_before.f_bfree - host_after.f_bfree) * host_after.f_frsize
    assert moved < 8 << 20, moved


def test_nothing_of_the_host(sg):
    out = run_json(sg, """
        import os
        out = {}
        out['root_home'] = [p for p in ('/root', '/home') if os.path.exists(p) and os.listdir(p)]
        out['mountinfo'] = open('/proc/self/mountinfo').read()
        reveal = {}
        for p in ('/proc/kcore', '/proc/keys', '/proc/sysrq-trigger', '/sys/firmware'):
            try:
                if os.path.isdir(p):
                    reveal[p] = os.listdir(p)
                else:
                    reveal[p] = len(open(p, 'rb').read(4096))
            except OSError as e:
                reveal[p] = 'error'
        out['reveal'] = reveal
        out['dev'] = sorted(os.listdir('/dev'))
        out['token'] = [p for p in ('/var/lib/kbox/token',) if os.path.exists(p)]
    """)
    assert out["root_home"] == []
    assert sg.state_dir not in out["mountinfo"]
    for p, v in out["reveal"].items():
        assert v in ("error", 0, []), (p, v)
    allowed = {"null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
               "fd", "stdin", "stdout", "stderr", "core", "console"}
    devs = set(out["dev"])
    assert devs <= allowed, devs - allowed
    assert {"null", "zero", "urandom"} <= devs
    assert out["token"] == []


def test_no_network(sg):
    out = run_json(sg, f"""
        import socket
        out = {{'ifaces': sorted(n for _, n in socket.if_nameindex())}}
        def tryconn(fam, addr):
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
            try:
                s.connect(addr); return 'connected'
            except OSError as e:
                return type(e).__name__
            finally:
                s.close()
        out['gw4'] = tryconn(socket.AF_INET, ('127.0.0.1', {sg.port}))
        out['gw6'] = tryconn(socket.AF_INET6, ('::1', {sg.port}))
        out['meta'] = tryconn(socket.AF_INET, ('169.254.169.254', 80))
        # Loopback inside the worker is its own and allowed.
        srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)
        out['own_lo'] = tryconn(socket.AF_INET, srv.getsockname())
    """)
    assert out["ifaces"] == ["lo"]
    assert out["gw4"] != "connected" and out["gw6"] != "connected"
    assert out["meta"] != "connected"
    assert out["own_lo"] == "connected"


def test_rlimits(sg):
    out = run_json(sg, """
        import resource
        out = [resource.getrlimit(resource.RLIMIT_CORE), resource.getrlimit(resource.RLIMIT_NOFILE)]
    """)
    assert out[0] == [0, 0]
    assert 0 < out[1][1] <= 65536


def test_fork_bomb_hits_pids_limit_and_kernel_serves(sg):
    u = uid()
    out = run_json(sg, """
        import os, time
        kids, err = [], None
        try:
            for _ in range(1000):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30); os._exit(0)
                kids.append(pid)
        except OSError as e:
            err = e.errno
        for k in kids:
            os.kill(k, 9)
        for k in kids:
            os.waitpid(k, 0)
        out = [len(kids), err]
    """, user=u)
    import errno
    assert out[1] == errno.EAGAIN, out
    assert out[0] < 64
    assert run(sg, "print('alive')", user=u) == "alive\n"


def test_memory_bomb_kills_only_its_worker(sg):
    other = uid()
    assert run(sg, "keep = 42", user=other) == ""
    bomber = uid()
    run(sg, "x = 1", user=bomber)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(sg.execute, bomber, "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))")
        # Meanwhile the other session keeps answering.
        for _ in range(3):
            assert run(sg, "print(keep)", user=other) == "42\n"
        r = fut.result(timeout=120)
    assert r.status_code == 503, r.text
    assert r.json()["session_reset"] is True
    assert run(sg, "print(keep)", user=other) == "42\n"
    assert run(sg, "print('x' in dir())", user=bomber) == "False\n"


def test_file_survives_crash_and_goes_with_release(sg):
    u = uid()
    run(sg, "open('/sandbox/keep.txt', 'w').write('kept')\nv = 1", user=u)
    r = sg.execute(u, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r.status_code == 503
    assert run(sg, "print(open('/sandbox/keep.txt').read(), 'v' in dir())", user=u) == "kept False\n"
    assert sg.release(u).status_code == 200
    assert run(sg, "import os\nprint(os.listdir('/sandbox'))", user=u) == "['lost+found']\n"


def test_worker_cpu_quota(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--worker-cpu", "0.5"]).start()
    out = run_json(g, """
        import subprocess, time, os
        t0 = time.time()
        procs = [subprocess.Popen(['python3', '-c', 'import time\\nt=time.time()\\nwhile time.time()-t<2: pass'])
                 for _ in range(2)]
        for p in procs: p.wait()
        wall = time.time() - t0
        c = os.times()
        out = [wall, c.children_user + c.children_system]
    """)
    wall, cpu = out
    assert cpu <= 0.5 * wall * 1.3 + 0.2, out


def test_worker_ram_limit(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--worker-ram-mb", "256"]).start()
    u = uid()
    assert run(g, "a = bytearray(100 << 20)\nprint('ok')", user=u) == "ok\n"
    r = g.execute(u, "b = bytearray(400 << 20)")
    assert r.status_code == 503, r.text


def test_no_room_for_a_disk_gives_503(make_gateway):
    # A reserve larger than the host's free space: every new disk is refused.
    g = make_gateway(["--min-idle-workers", "0", "--disk-reserve-mb", "1048576"]).start()
    t0 = time.time()
    r = g.execute(uid(), "1")
    assert r.status_code == 503, r.text
    assert "disk" in r.json()["detail"]
    assert time.time() - t0 < 10
    assert r.headers.get("Retry-After")
