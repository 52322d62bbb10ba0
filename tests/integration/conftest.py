"""Fixtures that run the real kbox-gateway (real kernels, real launcher) on loopback.

The gateway binary comes from KBOX_GATEWAY_BIN (set by ctest). The launcher is runc unless
KBOX_TEST_LAUNCHER says otherwise; tests that need root fail (not skip) without it.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

GATEWAY_BIN = os.environ.get("KBOX_GATEWAY_BIN", "")
LAUNCHER = os.environ.get("KBOX_TEST_LAUNCHER", "runc")
KERNEL = os.environ.get("KBOX_TEST_KERNEL", "native")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rss: measures the gateway's memory (deselected under ASan, which inflates it)")


# Every gateway's log, kept until the session ends: a failing run keeps them all for a look.
LOGS = []


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0:
        for path in LOGS:
            try:
                os.unlink(path)
            except OSError:
                pass
    elif LOGS:
        print(f"\ngateway logs kept: {tempfile.gettempdir()}/kbox-gw-<port>.log ({len(LOGS)})")


# What a sanitizer build of the gateway prints when it finds a bug (ASan, LSan, UBSan).
SANITIZER_REPORT = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# Code that swallows every KeyboardInterrupt: only a replaced kernel stops it.
SWALLOW_FOREVER = (
    "import time\n"
    "while True:\n"
    "    try:\n"
    "        time.sleep(0.05)\n"
    "    except KeyboardInterrupt:\n"
    "        pass\n"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A running gateway process and a small client for it."""

    def __init__(self, extra_args=(), env=None, state_dir=None):
        assert GATEWAY_BIN and os.path.exists(GATEWAY_BIN), "KBOX_GATEWAY_BIN must point at kbox-gateway"
        self.port = free_port()
        self.own_state = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="kbox-test-")
        self.token = "test-token-" + "".join(random.choice("abcdef0123456789") for _ in range(24))
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [GATEWAY_BIN, "--port", str(self.port), "--state-dir", self.state_dir,
                     "--launcher", LAUNCHER, "--kernel", KERNEL] + list(extra_args)
        self.env = dict(os.environ, AUTH_TOKEN=self.token)
        self.env.update(env or {})
        self.log_path = os.path.join(tempfile.gettempdir(), f"kbox-gw-{self.port}.log")
        LOGS.append(self.log_path)
        self.proc = None

    def start(self, wait_healthy=True, timeout=60):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            return self._wait_started(wait_healthy, timeout)
        except BaseException:
            # A module fixture that fails here never reaches its stop(): stop it now (SIGTERM,
            # so its workers go too), and report why it did not start rather than how it stopped.
            try:
                self.stop()
            except AssertionError:
                pass
            raise

    def run_refused(self, timeout=30):
        """Start a gateway that must refuse to start: it exits non-zero; returns its log."""
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        assert self.proc.wait(timeout=timeout) != 0, self.read_log()
        return self.read_log()

    def _wait_started(self, wait_healthy, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"gateway exited early:\n{self.read_log()}"
            try:
                r = requests.get(self.url + "/healthz", timeout=1)
                if r.status_code == 200 or (not wait_healthy and r.status_code in (200, 503)):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not healthy in {timeout}s:\n{self.read_log()}")

    def read_log(self, whole=False):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
                return text if whole else text[-20000:]
        except OSError:
            return ""

    def headers(self, **extra):
        h = {"X-Auth-Token": self.token}
        h.update(extra)
        return h

    def execute(self, user, code, timeout_ms=None, http_timeout=180, **kw):
        body = {"user_uuid": user, "code": code}
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        return requests.post(self.url + "/execute", json=body, headers=self.headers(), timeout=http_timeout, **kw)

    def release(self, user):
        return requests.post(self.url + "/release", json={"user_uuid": user}, headers=self.headers(), timeout=60)

    def status(self):
        r = requests.get(self.url + "/status", headers=self.headers(), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, pred, timeout=60):
        deadline = time.time() + timeout
        st = None
        while time.time() < deadline:
            st = self.status()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"status condition not reached: {st}")

    def stop(self, sig=signal.SIGTERM, timeout=25):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("gateway did not stop within %ss" % timeout)
        rc = self.proc.returncode if self.proc else None
        report = [m for m in SANITIZER_REPORT if m in self.read_log(whole=True)]
        if self.own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        assert not report, f"the gateway's sanitizer reported {report}:\n{self.read_log()}"
        return rc


@pytest.fixture(scope="module")
def gw():
    g = Gateway(["--min-idle-workers", "2", "--max-total-workers", "100"]).start()
    yield g
    g.stop()


@pytest.fixture
def make_gateway():
    made = []

    def make(*args, **kw):
        g = Gateway(*args, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def _tag(state_dir):
    import hashlib
    # The gateway names its workers "w" + the first 4 hex of BLAKE2b-128(state_dir).
    return hashlib.blake2b(state_dir.encode(), digest_size=16).hexdigest()[:4]


def leftovers(state_dir):
    """Everything of a gateway's that could outlive it: processes, containers, loop devices,
    mounts, network namespaces, host veths (TCP transport), cgroups (every hierarchy), disk
    images, per-worker run dirs (sockets, connection files) and OCI bundles. Empty lists when
    nothing is left."""
    out = {"processes": [], "containers": [], "loops": [], "mounts": [], "netns": [], "veths": [],
           "cgroups": [], "images": [], "run_dirs": [], "bundles": []}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if state_dir.encode() in cmd and b"kbox-gateway" not in cmd and b"pytest" not in cmd:
            out["processes"].append(int(p))
    runc_root = os.path.join(state_dir, "runc")
    if os.path.isdir(runc_root):
        r = subprocess.run(["runc", "--root", runc_root, "list", "-q"], capture_output=True, text=True)
        out["containers"] = r.stdout.split()
    for dev in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{dev}/loop/backing_file") as f:
                if f.read().startswith(state_dir):
                    out["loops"].append(dev)
        except OSError:
            pass
    with open("/proc/self/mountinfo") as f:
        out["mounts"] = [l.split()[4] for l in f if state_dir in l.split()[4]]
    tag = _tag(state_dir)
    if os.path.isdir("/run/netns"):
        out["netns"] = [n for n in os.listdir("/run/netns") if n.startswith("kbox-w" + tag)]
    # TCP transport: the host ends of the workers' veths ("kbox-h" + the id after its "w").
    out["veths"] = [n for n in os.listdir("/sys/class/net") if n.startswith("kbox-h" + tag)]
    import glob
    out["cgroups"] = sorted(glob.glob(f"/sys/fs/cgroup/kbox-w{tag}") +
                            glob.glob(f"/sys/fs/cgroup/*/kbox-w{tag}"))
    for sub, key in (("disks", "images"), ("run", "run_dirs"), ("bundles", "bundles")):
        d = os.path.join(state_dir, sub)
        if os.path.isdir(d):
            out[key] = sorted(os.listdir(d))
    return out


def live_resources(state_dir):
    """Per-worker resources of a running gateway, counted by kind: with the pool settled each
    should equal the gateway's live workers (images: workers' and sessions' disks). Mounts are
    the workers' disks only (the rootfs and run-dir mounts are the gateway's own); cgroups are
    the workers' in the memory hierarchy (v1) or the unified one (v2)."""
    left = leftovers(state_dir)
    mnt = os.path.join(state_dir, "mnt") + "/"
    tag = _tag(state_dir)
    parent = next((p for p in (f"/sys/fs/cgroup/memory/kbox-w{tag}", f"/sys/fs/cgroup/kbox-w{tag}")
                   if os.path.isdir(p)), None)
    cgroups = [c for c in os.listdir(parent) if os.path.isdir(os.path.join(parent, c))] if parent else []
    live = {"containers": len(left["containers"]), "loops": len(left["loops"]),
            "disk_mounts": len([m for m in left["mounts"] if m.startswith(mnt)]),
            "netns": len(left["netns"]), "images": len(left["images"]),
            "run_dirs": len(left["run_dirs"]), "cgroups": len(cgroups)}
    if os.path.isdir(os.path.join(state_dir, "bundles")):  # runc's, one per live container
        live["bundles"] = len(left["bundles"])
    return live


def no_leftovers(state_dir):
    left = leftovers(state_dir)
    return {k: v for k, v in left.items() if v}


def uid():
    return "u-%016x" % random.getrandbits(64)
