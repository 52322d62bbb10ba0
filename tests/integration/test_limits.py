"""Limits and lifecycle, each on a gateway configured for it."""
import concurrent.futures
import os
import signal
import subprocess
import time

import requests

import shutil

from conftest import uid, LAUNCHER, no_leftovers


def test_output_cap_truncates_text_keeps_images_whole(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--max-output-bytes", "65536"]).start()
    r = g.execute(uid(), "print('y' * 500000)")
    body = r.json()
    assert r.status_code == 200
    assert body["truncated"] is True
    assert "[output truncated]" in body["stdout"]
    assert len(r.content) < 2 * 65536 + 4096
    code = (
        "import matplotlib.pyplot as plt, numpy as np\n"
        "plt.imshow(np.random.rand(400, 400)); plt.show()\n"  # a PNG far above the cap
        "print('text survives')\n"
    )
    body = g.execute(uid(), code).json()
    assert body["truncated"] is True
    assert body["result_base64"] is None  # dropped whole, never cut
    assert "text survives" in body["stdout"]


def test_queue_limit_429(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--max-queue", "2"]).start()
    u = uid()
    g.execute(u, "import time")
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(g.execute, u, "time.sleep(1)") for _ in range(6)]
        codes = sorted(f.result().status_code for f in futs)
    # One runs, two queue, the rest are refused.
    assert codes.count(429) == 3, codes
    assert codes.count(200) == 3, codes


def test_pool_full_503_retry_after(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--max-total-workers", "1",
                      "--acquire-timeout-ms", "1500"]).start()
    g.wait_status(lambda s: s["idle_workers"] == 1)
    a, b = uid(), uid()
    assert g.execute(a, "1").status_code == 200
    t0 = time.time()
    r = g.execute(b, "1")
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After")
    assert 1.0 < time.time() - t0 < 10
    assert g.status()["sessions"] == 1  # the refused session left nothing behind
    g.release(a)
    assert g.execute(b, "print(2)").json()["stdout"] == "2\n"


def test_idle_timeout_releases_and_reports_reset(make_gateway):
    g = make_gateway(["--min-idle-workers", "0", "--idle-timeout-s", "2"]).start()
    u = uid()
    g.execute(u, "v = 1")
    g.wait_status(lambda s: s["sessions"] == 0, timeout=15)
    r = g.execute(u, "print('v' in dir())")
    assert r.json()["stdout"] == "False\n"
    assert r.json()["session_reset"] is True


def test_min_idle_workers_warm(make_gateway):
    g = make_gateway(["--min-idle-workers", "3"]).start()
    st = g.wait_status(lambda s: s["idle_workers"] == 3)
    assert st["total_workers"] == 3
    g.execute(uid(), "1")
    st = g.wait_status(lambda s: s["idle_workers"] == 3 and s["busy_workers"] == 1)
    assert st["total_workers"] == 4


def test_sigterm_clean_shutdown(make_gateway):
    g = make_gateway(["--min-idle-workers", "2"]).start()
    users = [uid() for _ in range(3)]
    for u in users:
        g.execute(u, "x = 1")
    run_dir = os.path.join(g.state_dir, "run")
    assert os.listdir(run_dir)
    g.own_state = False  # keep the state dir to inspect it
    t0 = time.time()
    rc = g.stop(signal.SIGTERM, timeout=20)
    assert rc == 0
    assert time.time() - t0 < 20
    assert no_leftovers(g.state_dir) == {}
    assert not os.path.exists(run_dir) or not os.listdir(run_dir)
    shutil.rmtree(g.state_dir, ignore_errors=True)


def test_bad_options_rejected():
    from conftest import GATEWAY_BIN
    r = subprocess.run([GATEWAY_BIN, "--min-idle-workers", "-3"], capture_output=True, text=True)
    assert r.returncode == 2 and "min-idle-workers" in r.stderr
    r = subprocess.run([GATEWAY_BIN, "--nope"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([GATEWAY_BIN, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--max-total-workers" in r.stdout and "(default 50" in r.stdout
    r = subprocess.run([GATEWAY_BIN], env={"MIN_IDLE_WORKERS": "x"}, capture_output=True, text=True)
    assert r.returncode == 2 and "MIN_IDLE_WORKERS" in r.stderr
