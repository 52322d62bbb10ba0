"""End-to-end sandbox test (ctest: root_sandbox). Runs as root; fails, never skips, without it.

A real ipykernel in a real runc container, started by gateway/launcher_runc through
tests/root/sandbox_driver, and every row of ../shared/brief/security.md that does not need the
gateway is checked from INSIDE the kernel by executing code over jupyter_client. The state dir
is laid out like the gateway's: <state>/rootfs (built by worker-image/build-rootfs.sh on its own
tmpfs), <state>/run (a tmpfs; one dir per worker, bound at /run/kbox), <state>/disks/<id> (a
tmpfs per worker standing in for diskmgr's ext4 disk, bound at /sandbox). After every test no
container, cgroup or mount of ours may be left beyond the shared kernel's.

Environment (set by runc.cmake): KBOX_SANDBOX_DRIVER, KBOX_KERNEL_HOST, KBOX_BUILD_ROOTFS,
KBOX_SECCOMP_PROFILE.
"""
import errno
import glob
import json
import os
import secrets
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from queue import Empty

import pytest
from jupyter_client import BlockingKernelClient

CGROUP_PARENT = "kbox-test"
UID_BASE = 100000
UID_COUNT = 64
MAIN_UID = UID_BASE + 1
RUNC = "/usr/sbin/runc"
ALLOWED_DEV_NODES = {"null", "zero", "full", "random", "urandom", "tty", "ptmx"}

assert os.geteuid() == 0, "root_sandbox must run as root (CI runs it as root); it never skips"


def env_path(name):
    p = os.environ.get(name)
    assert p and os.path.exists(p), f"{name} must name an existing file (set by runc.cmake)"
    return p


class Driver:
    """The sandbox_driver process: one JSON command per line, one JSON reply per line."""

    def __init__(self, state):
        self.proc = subprocess.Popen(
            [env_path("KBOX_SANDBOX_DRIVER"), f"{state}/runc", f"{state}/bundles",
             f"{state}/rootfs", env_path("KBOX_SECCOMP_PROFILE"), CGROUP_PARENT,
             str(UID_BASE), str(UID_COUNT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read(30)
        assert hello["ok"] and hello["kernel_run_dir"] == "/run/kbox", hello

    def _read(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert r, "sandbox_driver did not answer"
        line = self.proc.stdout.readline()
        assert line, "sandbox_driver exited"
        return json.loads(line)

    def cmd(self, timeout=120, **kw):
        self.proc.stdin.write(json.dumps(kw) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


def mounts_of(state):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if state in line.split()[4]]


def runc_ids(state):
    out = subprocess.run([RUNC, "--root", f"{state}/runc", "list", "-q"], check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def cgroup_dirs():
    """Every <hierarchy>/kbox-test/<id> (and the parents themselves, as '<parent>')."""
    found = set()
    for parent in glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}") + \
            glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}"):
        found.add(parent)
        for d in os.listdir(parent):
            if os.path.isdir(os.path.join(parent, d)):
                found.add(os.path.join(parent, d))
    return found


def wait_ready(kc, alive, timeout=60):
    """kernel_info until a reply comes and iopub is connected. jupyter_client's own
    wait_for_ready() is not used: without a KernelManager it judges life by a heartbeat whose
    first ping can land before the kernel has bound its socket, and then reports a healthy
    kernel that is still starting as dead. Death is judged here by alive() (the pidfd)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        try:
            while True:
                msg = kc.get_shell_msg(timeout=0.5)
                if msg["parent_header"].get("msg_id") == msg_id:
                    break
        except Empty:
            assert alive(), "kernel died before replying to kernel_info"
            continue
        try:
            kc.get_iopub_msg(timeout=0.2)  # our kernel_info's status message: iopub is up
        except Empty:
            continue
        while True:  # drain the rest of this round's iopub traffic
            try:
                kc.get_iopub_msg(timeout=0.05)
            except Empty:
                return
    raise AssertionError("kernel did not answer kernel_info in time")


class Kernel:
    def __init__(self, env, uid, ram_mb=512, pids_max=64, cpu=1.0, disk=True):
        self.env, self.uid = env, uid
        self.wid = "w" + secrets.token_hex(8)
        state = env.state
        self.run_dir = f"{state}/run/{self.wid}"
        os.mkdir(self.run_dir, 0o700)
        conn = dict(transport="ipc", ip="/run/kbox/k", shell_port=1, iopub_port=2,
                    stdin_port=3, control_port=4, hb_port=5, key=secrets.token_hex(32),
                    signature_scheme="hmac-sha256", kernel_name="")
        self.conn_file = f"{self.run_dir}/kernel.json"
        with open(self.conn_file, "w") as f:
            json.dump(conn, f)
        conn["ip"] = f"{self.run_dir}/k"  # where the same sockets are on the host
        self.host_conn = f"{state}/client-{self.wid}.json"
        with open(self.host_conn, "w") as f:
            json.dump(conn, f)
        self.disk = None
        if disk:
            self.disk = f"{state}/disks/{self.wid}"
            os.mkdir(self.disk, 0o700)
            subprocess.run(["mount", "-t", "tmpfs", "-o",
                            f"size=64m,mode=0700,uid={uid},gid={uid},nosuid,nodev",
                            "kbox-disk", self.disk], check=True)
        t0 = time.monotonic()
        self.started = env.driver.cmd(cmd="start", worker_id=self.wid, run_dir=self.run_dir,
                                      conn_file=self.conn_file, uid=uid, cpu=cpu,
                                      ram_mb=ram_mb, pids_max=pids_max, disk_mount=self.disk,
                                      netns_path=None)
        assert self.started["ok"], self.started
        self.pid = self.started["pid"]
        self.kc = BlockingKernelClient()
        self.kc.load_connection_file(self.host_conn)
        self.kc.start_channels(hb=False)
        wait_ready(self.kc, lambda: not self.wait_exit(0))
        self.ready_s = time.monotonic() - t0
        self.stopped = False

    def run(self, code, timeout=120, allow_error=False):
        """Executes code; returns (stdout text, list of display/result data dicts, reply)."""
        out, data = [], []

        def hook(msg):
            t, c = msg["msg_type"], msg["content"]
            if t == "stream" and c["name"] == "stdout":
                out.append(c["text"])
            elif t in ("display_data", "execute_result"):
                data.append(c["data"])

        reply = self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        content = reply["content"]
        if not allow_error:
            assert content["status"] == "ok", "\n".join(content.get("traceback", []))
        return "".join(out), data, content

    def json(self, code, timeout=120):
        out, _, _ = self.run(code, timeout)
        return json.loads(out.strip().splitlines()[-1])

    def wait_exit(self, timeout_ms):
        return self.env.driver.cmd(cmd="wait", id=self.wid, timeout_ms=timeout_ms)["exited"]

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        self.kc.stop_channels()
        d = self.env.driver
        assert d.cmd(cmd="kill", id=self.wid)["ok"]
        assert self.wait_exit(10000), "the init's pidfd did not become readable after SIGKILL"
        r = d.cmd(cmd="cleanup", id=self.wid)
        assert r["ok"], r
        if self.disk:
            subprocess.run(["umount", self.disk], check=True)
            os.rmdir(self.disk)
        shutil.rmtree(self.run_dir)
        os.unlink(self.host_conn)
        assert self.wid not in runc_ids(self.env.state)
        assert not [c for c in cgroup_dirs() if c.endswith("/" + self.wid)]


class Env:
    pass


@pytest.fixture(scope="module")
def env():
    e = Env()
    e.state = tempfile.mkdtemp(prefix="kbox-sbx-", dir="/tmp")
    os.chmod(e.state, 0o700)
    e.timings = {}
    e.driver = None
    e.main = None
    build = [env_path("KBOX_BUILD_ROOTFS"), "--init", env_path("KBOX_KERNEL_HOST"),
             "--uid-base", str(UID_BASE), "--uid-count", str(UID_COUNT), f"{e.state}/rootfs"]
    try:
        t0 = time.monotonic()
        subprocess.run(build, check=True)
        e.timings["rootfs_build_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        subprocess.run(build, check=True)
        e.timings["rootfs_rebuild_s"] = time.monotonic() - t0
        for d in ("run", "disks"):
            os.mkdir(f"{e.state}/{d}", 0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=16m,nosuid,nodev",
                        "kbox-run", f"{e.state}/run"], check=True)
        e.driver = Driver(e.state)
        e.main = Kernel(e, MAIN_UID)
        e.keep = {e.main.wid}
        yield e
        e.main.stop()
    finally:
        # Whatever happened above: stop everything; then nothing of ours may remain.
        try:
            if e.driver:
                r = e.driver.cmd(cmd="sweep", keep=[])
                assert r["ok"], r
        finally:
            if e.driver:
                e.driver.close()
            for m in sorted(mounts_of(e.state), key=len, reverse=True):
                if m.startswith(f"{e.state}/disks/"):
                    subprocess.run(["umount", m])
            subprocess.run(["umount", f"{e.state}/run"], stderr=subprocess.DEVNULL)
            subprocess.run([env_path("KBOX_BUILD_ROOTFS"), "--remove", f"{e.state}/rootfs"])
            left = {"containers": runc_ids(e.state) if os.path.isdir(f"{e.state}/runc") else set(),
                    "cgroups": cgroup_dirs(), "mounts": mounts_of(e.state)}
            if not left["mounts"]:  # never rm -r a tree that still has mounts in it
                shutil.rmtree(e.state)
    assert not any(left.values()), f"left behind: {left}"


@pytest.fixture(autouse=True)
def no_leftovers(env):
    """After every test: only the shared kernel's container, cgroups and mounts remain."""
    yield
    assert runc_ids(env.state) == env.keep
    ids = {os.path.basename(c) for c in cgroup_dirs()} - {CGROUP_PARENT}
    assert ids == env.keep, f"cgroups left: {ids - env.keep}"
    allowed = {f"{env.state}/rootfs", f"{env.state}/rootfs/usr", f"{env.state}/rootfs/usr/local",
               f"{env.state}/run"} | {f"{env.state}/disks/{w}" for w in env.keep}
    assert set(mounts_of(env.state)) <= allowed, set(mounts_of(env.state)) - allowed


PROBE = r'''
import ctypes, json, os, resource, socket, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    a = list(a) + [0] * (6 - len(a))
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return [r, ctypes.get_errno()]
def attempt(fn):
    try:
        v = fn()
        return ["ok", v]
    except OSError as e:
        return ["err", e.errno]
R = {}
R["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
R["status"] = {k: st[k].strip() for k in
               ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
# Arguments chosen so that without the filter most calls would fail differently (EFAULT,
# EBADF, EINVAL, EIO) or even succeed; with it every one is EPERM.
calls = {"mount": (165,), "ptrace": (101, 0x7fffffff), "bpf": (321, 0),
         "keyctl": (250, 0, -3, 0), "add_key": (248,), "kexec_load": (246,),
         "init_module": (175,), "perf_event_open": (298,), "userfaultfd": (323, 1),
         "unshare": (272, 0x10000000), "setns": (308, -1, 0), "pivot_root": (155,),
         "swapon": (167,), "reboot": (169,), "open_by_handle_at": (304, -1, 0, 0),
         "io_uring_setup": (425, 1, 0), "io_uring_enter": (426, -1),
         "io_uring_register": (427, -1), "socket_vsock": (41, 40, 1, 0)}
R["denied"] = {k: sc(*v) for k, v in calls.items()}
R["clone3"] = sc(435, 0, 0)
# CLONE_SIGHAND without CLONE_VM is EINVAL in the kernel, after the filter: so EPERM means
# the filter refused the flag, EINVAL means clone itself got through (and nothing is created).
CLONE_SIGHAND, SIGCHLD = 0x800, 17
R["clone_plain"] = sc(56, CLONE_SIGHAND | SIGCHLD)
R["clone_new"] = {hex(f): sc(56, f | CLONE_SIGHAND | SIGCHLD) for f in
                  (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)}
rbuf = ctypes.create_string_buffer(8)
R["getrandom"] = sc(318, ctypes.addressof(rbuf), 8, 0)
done = []
ts = [threading.Thread(target=done.append, args=(i,)) for i in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
R["threads"] = len(done)
R["subprocess"] = subprocess.run(["/bin/sh", "-c", "echo $((6*7)); id -u; ls /"],
                                 capture_output=True, text=True).stdout.split()
R["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
R["pid1"] = open("/proc/1/cmdline", "rb").read().split(b"\0")[0].decode()
R["me"] = [os.getpid(), os.getppid()]
def write(p):
    with open(p, "w") as f:
        f.write("x")
R["writes"] = {p: attempt(lambda p=p: write(p)) for p in
               ("/x", "/usr/x", "/etc/x", "/etc/passwd", "/kbox/x", "/run/x", "/tmp/x",
                "/sandbox/x", "/dev/shm/x")}
sv = os.statvfs("/tmp")
R["tmp_bytes"] = sv.f_blocks * sv.f_frsize
R["mountinfo"] = open("/proc/self/mountinfo").read()
R["exists"] = {p: os.path.exists(p) for p in ("/root", "/home", "/etc/shadow", "/var/lib",
                                             "/opt", "/srv", "/mnt")}
R["usr_local"] = os.listdir("/usr/local")
def readn(p):
    with open(p, "rb") as f:
        return len(f.read(65536))
R["reads"] = {p: attempt(lambda p=p: readn(p)) for p in
              ("/proc/kcore", "/proc/keys", "/proc/sysrq-trigger", "/proc/timer_list",
               "/proc/sched_debug", "/proc/1/environ")}
R["sysrq_write"] = attempt(lambda: write("/proc/sysrq-trigger"))
R["firmware"] = attempt(lambda: os.listdir("/sys/firmware"))
def kind(p):
    import stat
    m = os.lstat(p).st_mode
    return "c" if stat.S_ISCHR(m) else "b" if stat.S_ISBLK(m) else "d" if stat.S_ISDIR(m) \
        else "l" if stat.S_ISLNK(m) else "f"
R["dev"] = {n: kind("/dev/" + n) for n in os.listdir("/dev")}
R["devpts"] = {n: kind("/dev/pts/" + n) for n in os.listdir("/dev/pts")}
R["ifaces"] = [n for _, n in socket.if_nameindex()]
def connect(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
    finally:
        s.close()
R["connect"] = {"v4_metadata": attempt(lambda: connect(socket.AF_INET, ("169.254.169.254", 80))),
                "v4_other": attempt(lambda: connect(socket.AF_INET, ("10.0.0.1", 80))),
                "v6_other": attempt(lambda: connect(socket.AF_INET6, ("2001:db8::1", 80))),
                "v4_lo": attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", 9)))}
R["rlimits"] = {"core": resource.getrlimit(resource.RLIMIT_CORE),
                "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}
R["oom_score_adj"] = int(open("/proc/self/oom_score_adj").read())
R["hostname"] = socket.gethostname()
R["home"], R["cwd"] = os.environ.get("HOME"), os.getcwd()
sb = os.stat("/sandbox")
R["sandbox_owner"] = [sb.st_uid, sb.st_gid]
R["cgroup"] = open("/proc/self/cgroup").read().split()
R["environ_keys"] = sorted(os.environ)
print(json.dumps(R))
'''


@pytest.fixture(scope="module")
def probe(env):
    return env.main.json(PROBE)


# --- one test per row of security.md (in-kernel rows) --------------------------------------

def test_not_root(probe):
    uid, euid, gid, egid, groups = probe["ids"]
    assert uid == euid == MAIN_UID and gid == egid == MAIN_UID
    assert 0 not in groups and all(g == MAIN_UID for g in groups)


def test_no_capabilities(probe):
    for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(probe["status"][k], 16) == 0, (k, probe["status"][k])


def test_no_new_privs(probe):
    assert probe["status"]["NoNewPrivs"] == "1"


def test_seccomp_mode_filter(probe):
    assert probe["status"]["Seccomp"] == "2"


def test_denied_syscalls_eperm(probe):
    bad = {k: v for k, v in probe["denied"].items() if v != [-1, errno.EPERM]}
    assert not bad, f"not EPERM: {bad}"


def test_clone3_enosys(probe):
    assert probe["clone3"] == [-1, errno.ENOSYS]


def test_clone_namespace_flags_filtered(probe):
    assert probe["clone_plain"] == [-1, errno.EINVAL]  # clone itself is allowed
    bad = {k: v for k, v in probe["clone_new"].items() if v != [-1, errno.EPERM]}
    assert not bad, f"CLONE_NEW* not refused by the filter: {bad}"


def test_threads_subprocess_getrandom(probe, env):
    assert probe["threads"] == 8
    assert probe["subprocess"][:2] == ["42", str(MAIN_UID)]
    assert "usr" in probe["subprocess"]
    assert probe["getrandom"] == [8, 0]
    out, _, _ = env.main.run("!echo bang-$((2+3))")
    assert "bang-5" in out


def test_own_pid_namespace(probe):
    assert probe["pid1"] == "/kbox/kernel-host"
    assert probe["me"][1] == 1  # the kernel is the init's child
    assert len(probe["pids"]) <= 4, probe["pids"]  # init, kernel, the probe's own children gone
    assert probe["pids"][0] == 1


def test_read_only_root(probe):
    w = probe["writes"]
    for p in ("/x", "/usr/x", "/etc/x", "/etc/passwd", "/kbox/x", "/run/x"):
        assert w[p][0] == "err" and w[p][1] in (errno.EROFS, errno.EACCES), (p, w[p])
    for p in ("/tmp/x", "/sandbox/x", "/dev/shm/x"):
        assert w[p][0] == "ok", (p, w[p])


def test_tmp_is_capped_tmpfs(probe):
    line = [l for l in probe["mountinfo"].splitlines() if l.split()[4] == "/tmp"]
    assert len(line) == 1 and " - tmpfs " in line[0], line
    assert "nosuid" in line[0] and "nodev" in line[0]
    assert probe["tmp_bytes"] == 128 << 20  # the driver's tmp_mb


def test_nothing_of_the_host(probe, env):
    assert not any(probe["exists"].values()), probe["exists"]
    assert probe["usr_local"] == []
    mi = probe["mountinfo"]
    assert env.state not in mi, "gateway state path visible in /proc/self/mountinfo"
    assert "/tmp/kbox-sbx" not in mi and "/work/" not in mi
    # The root fields of our binds are the roots of their own filesystems.
    for l in mi.splitlines():
        f = l.split()
        if f[4] in ("/", "/sandbox", "/tmp"):
            assert f[3] == "/", l
        if f[4] == "/run/kbox":
            assert f[3] == "/" + env.main.wid, l


def test_proc_and_sys_reveal_nothing(probe):
    r = probe["reads"]
    for p in ("/proc/kcore", "/proc/keys", "/proc/sysrq-trigger", "/proc/timer_list",
              "/proc/sched_debug"):
        assert r[p] == ["ok", 0] or r[p][0] == "err", (p, r[p])
    assert r["/proc/1/environ"] == ["err", errno.EACCES]
    assert probe["sysrq_write"][0] == "err"
    assert probe["firmware"] in (["ok", []], ) or probe["firmware"][0] == "err"


def test_only_allowed_device_nodes(probe):
    dev = probe["dev"]
    nodes = {n for n, k in dev.items() if k in "cbf"}
    assert nodes <= ALLOWED_DEV_NODES, nodes - ALLOWED_DEV_NODES
    assert {"null", "zero", "full", "random", "urandom", "tty"} <= nodes
    assert {n for n, k in dev.items() if k == "d"} <= {"pts", "shm", "mqueue"}
    assert {n for n, k in dev.items() if k == "l"} <= {"fd", "stdin", "stdout", "stderr", "ptmx"}
    assert set(probe["devpts"]) == {"ptmx"}  # a new devpts instance: no host ptys


def test_no_network(probe):
    assert probe["ifaces"] == ["lo"]
    c = probe["connect"]
    for k in ("v4_metadata", "v4_other", "v6_other"):
        assert c[k][0] == "err" and c[k][1] in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                errno.EADDRNOTAVAIL), (k, c[k])
    assert c["v4_lo"] == ["err", errno.ECONNREFUSED]


def test_bounded_rlimits(probe):
    assert probe["rlimits"]["core"] == [0, 0]
    assert probe["rlimits"]["nofile"] == [1024, 1024]
    assert probe["oom_score_adj"] == 1000


def test_host_side_cgroup_limits(env):
    w = env.main.wid
    base = f"/sys/fs/cgroup/memory/{CGROUP_PARENT}/{w}"
    if os.path.isdir(base):  # cgroup v1 (this host's hybrid layout)
        lim = int(open(f"{base}/memory.limit_in_bytes").read())
        assert lim == 512 << 20
        assert int(open(f"{base}/memory.memsw.limit_in_bytes").read()) == lim  # no swap
        assert int(open(f"/sys/fs/cgroup/pids/{CGROUP_PARENT}/{w}/pids.max").read()) == 64
        assert int(open(f"/sys/fs/cgroup/cpu/{CGROUP_PARENT}/{w}/cpu.cfs_quota_us").read()) \
            == 100000
        procs = open(f"{base}/cgroup.procs").read().split()
        assert str(env.main.pid) in procs
    else:  # pure cgroup v2
        base = f"/sys/fs/cgroup/{CGROUP_PARENT}/{w}"
        assert int(open(f"{base}/memory.max").read()) == 512 << 20
        assert open(f"{base}/memory.swap.max").read().strip() == "0"
        assert int(open(f"{base}/pids.max").read()) == 64


def test_environment_and_identity(probe):
    assert probe["hostname"] == "kbox"
    assert probe["home"] == "/sandbox" and probe["cwd"] == "/sandbox"
    assert probe["sandbox_owner"] == [MAIN_UID, MAIN_UID]
    # cgroup namespace: the worker sees itself at the root, not the host's layout.
    assert all(line.endswith(":/") for line in probe["cgroup"]), probe["cgroup"]
    for k in ("PATH", "HOME", "LANG", "MPLBACKEND", "MPLCONFIGDIR"):
        assert k in probe["environ_keys"]


def test_scientific_stack_and_png(env):
    out, data, _ = env.main.run(
        "import numpy as np, pandas as pd, scipy, matplotlib\n"
        "import matplotlib.pyplot as plt\n"
        "df = pd.DataFrame({'x': np.arange(5)})\n"
        "print(int(df.x.sum()), matplotlib.get_backend())\n"
        "fig = plt.figure(); plt.plot([1, 3, 2]); plt.title('kbox'); plt.show()\n", timeout=180)
    assert out.split()[0] == "10"
    assert "matplotlib_inline" in out
    pngs = [d["image/png"] for d in data if "image/png" in d]
    assert pngs, f"no PNG output: {data}"
    import base64
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_interrupt_reaches_kernel(env):
    kc = env.main.kc
    # stop_on_error=False: the KeyboardInterrupt must not abort the next request.
    msg_id = kc.execute("import time; time.sleep(60)", stop_on_error=False)
    time.sleep(1.0)
    assert env.driver.cmd(cmd="interrupt", id=env.main.wid)["ok"]
    t0 = time.monotonic()
    while True:
        reply = kc.get_shell_msg(timeout=20)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 10
    assert env.main.json("print(6 * 7)") == 42


def test_fork_bomb_hits_pids_limit_and_kernel_survives(env):
    res = env.main.json(r'''
import json, subprocess
procs, err = [], None
try:
    for i in range(500):
        procs.append(subprocess.Popen(["/bin/sleep", "60"]))
except OSError as e:
    err = [type(e).__name__, e.errno]
for p in procs:
    p.kill()
    p.wait()
print(json.dumps({"n": len(procs), "err": err}))
''')
    assert res["err"] is not None, "no error at the pids limit"
    assert res["err"][1] == errno.EAGAIN, res
    assert 0 < res["n"] < 64, res
    assert env.main.json("print(1 + 1)") == 2  # still serving


def test_memory_bomb_kills_only_its_worker(env):
    k = Kernel(env, UID_BASE + 2, ram_mb=256, pids_max=32)
    try:
        # Distinct identity: a second worker runs as its own uid.
        assert k.json("import os; print(os.getuid())") == UID_BASE + 2
        assert not k.wait_exit(0)
        k.kc.execute("x = b'\\x01' * (2 << 30)")
        assert k.wait_exit(60000), "memory bomb did not end the worker (pidfd not readable)"
        # The other worker is untouched.
        assert env.main.json("print(3 * 3)") == 9
    finally:
        k.stop()


def test_kill_cleanup_and_sweep(env):
    a = Kernel(env, UID_BASE + 3, disk=False)
    b = Kernel(env, UID_BASE + 4)
    try:
        # /sandbox without a disk is the bundle's own tmpfs, still owned by the worker.
        assert a.json("import os; s = os.stat('/sandbox'); print(s.st_uid)") == UID_BASE + 3
        # b's disk was mounted on the host after the main worker started: it must not have
        # propagated into the main worker's mount namespace.
        mi = env.main.json("import json; print(json.dumps(open('/proc/self/mountinfo').read()))")
        assert b.wid not in mi and a.wid not in mi
        assert sum(1 for l in mi.splitlines() if l.split()[4] == "/sandbox") == 1
        a.stop()  # kill through the pidfd, pidfd readable, cleanup: container + cgroups gone
        assert b.wid in runc_ids(env.state)
        # A gateway restart: everything but the kept kernel goes.
        r = env.driver.cmd(cmd="sweep", keep=sorted(env.keep))
        assert r["ok"] and r["removed"] == 1, r
        assert runc_ids(env.state) == env.keep
        assert env.main.json("print(5)") == 5
    finally:
        b.stopped = True  # swept: only the host-side leftovers remain
        b.kc.stop_channels()
        subprocess.run(["umount", b.disk], check=True)
        os.rmdir(b.disk)
        shutil.rmtree(b.run_dir)
        os.unlink(b.host_conn)
        if not a.stopped:
            a.stop()


def test_failed_start_says_why_and_leaves_nothing(env):
    """A start runc refuses (here: the worker's disk is not there, as when a session's disk
    was removed under its next worker) reports runc's own error and leaves no container,
    bundle or cgroup behind."""
    wid = "w" + secrets.token_hex(8)
    run_dir = f"{env.state}/run/{wid}"
    os.mkdir(run_dir, 0o700)
    with open(f"{run_dir}/kernel.json", "w") as f:
        json.dump(dict(transport="ipc", ip="/run/kbox/k", shell_port=1, iopub_port=2,
                       stdin_port=3, control_port=4, hb_port=5, key=secrets.token_hex(32),
                       signature_scheme="hmac-sha256", kernel_name=""), f)
    before = cgroup_dirs()
    try:
        r = env.driver.cmd(cmd="start", worker_id=wid, run_dir=run_dir,
                           conn_file=f"{run_dir}/kernel.json", uid=UID_BASE + 5, cpu=1.0,
                           ram_mb=256, pids_max=64, disk_mount=f"{env.state}/disks/gone",
                           netns_path=None)
        assert not r["ok"], r
        assert "/sandbox" in r["detail"] and "disks/gone" in r["detail"], r
        assert wid not in runc_ids(env.state)
        assert not os.path.exists(f"{env.state}/bundles/{wid}")
        assert cgroup_dirs() == before
    finally:
        shutil.rmtree(run_dir)


def bare_kernel_start(tmp):
    """Time from spawn to kernel_info_reply for ipykernel with no container at all."""
    conn = dict(transport="ipc", ip=f"{tmp}/k", shell_port=1, iopub_port=2, stdin_port=3,
                control_port=4, hb_port=5, key=secrets.token_hex(32),
                signature_scheme="hmac-sha256", kernel_name="")
    path = f"{tmp}/kernel.json"
    with open(path, "w") as f:
        json.dump(conn, f)
    t0 = time.monotonic()
    p = subprocess.Popen(["/usr/bin/python3", "-m", "ipykernel_launcher", "-f", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
                         env={"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8",
                              "MPLCONFIGDIR": tmp, "IPYTHONDIR": f"{tmp}/ipython",
                              "PYTHONDONTWRITEBYTECODE": "1"})
    kc = BlockingKernelClient()
    kc.load_connection_file(path)
    kc.start_channels(hb=False)
    try:
        wait_ready(kc, lambda: p.poll() is None)
        return time.monotonic() - t0
    finally:
        kc.stop_channels()
        p.kill()
        p.wait()


def test_start_cost(env):
    runs = []
    for i in range(3):
        k = Kernel(env, UID_BASE + 10 + i)
        runs.append((k.started, k.ready_s))
        k.stop()
    bare = []
    for i in range(3):
        # On tmpfs like the container's /tmp, so IPython's profile and history cost the same.
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            bare.append(bare_kernel_start(tmp))
    med = lambda xs: statistics.median(xs)
    rows = [
        ("rootfs build (once per gateway start)", env.timings["rootfs_build_s"] * 1e3),
        ("rootfs rebuild when up to date", env.timings["rootfs_rebuild_s"] * 1e3),
        ("bundle: checks + config.json written", med([s["bundle_us"] for s, _ in runs]) / 1e3),
        ("runc create", med([s["create_us"] for s, _ in runs]) / 1e3),
        ("pidfd + runc start", med([s["start_us"] for s, _ in runs]) / 1e3),
        ("launcher start() total", med([s["total_us"] for s, _ in runs]) / 1e3),
        ("container: start() to kernel_info_reply", med([r for _, r in runs]) * 1e3),
        ("bare ipykernel: spawn to kernel_info_reply", med(bare) * 1e3),
    ]
    print("\n\nstart cost (median of 3, ms):", file=sys.stderr)
    for name, ms in rows:
        print(f"  {name:<45} {ms:8.1f}", file=sys.stderr)
    # Not a benchmark gate, just sanity: the sandbox adds well under a second.
    assert med([s["total_us"] for s, _ in runs]) < 2_000_000
