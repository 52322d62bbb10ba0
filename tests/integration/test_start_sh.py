"""./start.sh: options and environment reach the gateway, it prints where to find it, and it
runs the gateway in the foreground (SIGTERM stops it cleanly)."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import requests

from conftest import GATEWAY_BIN, free_port, no_leftovers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.dirname(os.path.dirname(GATEWAY_BIN))


def test_start_sh_runs_the_gateway():
    state = tempfile.mkdtemp(prefix="kbox-start-")
    port = free_port()
    env = dict(os.environ, KBOX_BUILD_DIR=BUILD, AUTH_TOKEN="start-sh-token", MAX_QUEUE="7")
    p = subprocess.Popen([os.path.join(ROOT, "start.sh"), "--port", str(port), "--state-dir", state,
                          "--min-idle-workers", "1", "--max-total-workers", "3"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert p.poll() is None, p.stdout.read().decode()
            time.sleep(0.2)
        h = {"X-Auth-Token": "start-sh-token"}
        st = requests.get(url + "/status", headers=h).json()
        assert st["min_idle_workers"] == 1 and st["max_total_workers"] == 3
        assert st["limits"]["max_queue"] == 7  # from the environment
        r = requests.post(url + "/execute", json={"user_uuid": "s1", "code": "print(6*7)"}, headers=h)
        assert r.json()["stdout"] == "42\n"
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=30)[0].decode()
        assert p.returncode == 0, out
        assert f"http://127.0.0.1:{port}" in out
        assert "AUTH_TOKEN" in out
        assert no_leftovers(state) == {}
    finally:
        if p.poll() is None:
            p.kill()
        shutil.rmtree(state, ignore_errors=True)


def test_start_sh_help_lists_options():
    env = dict(os.environ, KBOX_BUILD_DIR=BUILD)
    r = subprocess.run([os.path.join(ROOT, "start.sh"), "--help"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for opt in ("--host", "--port", "--state-dir", "--min-idle-workers", "--max-total-workers",
                "--worker-cpu", "--worker-ram-mb", "--worker-disk-mb", "--exec-timeout-ms",
                "--idle-timeout-s", "--max-output-bytes", "--max-queue", "--worker-transport",
                "--worker-net4", "--worker-net6"):
        assert opt in r.stdout, opt
