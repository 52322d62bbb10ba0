"""How the gateway copes with kernels that are slow, half-hung or lossy, made deterministic by
a fake kernel (fakekernel.py) that misbehaves on request: the gateway runs it through its
process launcher in place of ipykernel. Heartbeat: any message counts as a sign of life, and a
kernel that answers nothing is declared hung within --heartbeat-ms x --heartbeat-misses. Lost
idles: the gateway probes until one arrives, and a timeout after the reply answers 200."""
import os
import re
import socket
import stat
import tempfile
import time

import pytest
import requests

from conftest import uid

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def fake_dir():
    d = tempfile.mkdtemp(prefix="kbox-fake-")
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def fake_python(d, *fake_args):
    # The process launcher runs `<python> -m ipykernel_launcher ... -f <conn>` with a clean
    # environment: a wrapper with absolute paths stands in for the interpreter.
    path = os.path.join(d, "python" + "".join(fake_args).replace("-", "_").replace("/", "_"))
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec /usr/bin/python3 {os.path.join(HERE, "fakekernel.py")} '
                f'{" ".join(fake_args)} "$@"\n')
    os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_gateway(make_gateway, fake_dir):
    def make(*args, fake_args=(), wait_healthy=True):
        return make_gateway(["--launcher", "process", "--kernel", "ipykernel", "--python",
                             fake_python(fake_dir, *fake_args), "--min-idle-workers", "1",
                             "--heartbeat-ms", "200", "--heartbeat-misses", "3"]
                            + list(args)).start(wait_healthy=wait_healthy)
    return make


def test_fake_kernel_answers(fake_gateway):
    g = fake_gateway()
    r = g.execute(uid(), "hello")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "hello\n"


# The kernel's socket files exist for a while before anything listens on them (bind, then
# listen): a start that took the files for a ready kernel failed with "Connection refused".
# A socket file that is gone by the time the probe connects to it (a kernel that unlinks and
# rebinds) is not there yet either: a start that took ENOENT for a failure was lost.
@pytest.mark.parametrize("fake_args", [("--listen-late", "1000"), ("--flicker", "1500")],
                         ids=["bound-before-listening", "files-come-and-go"])
def test_start_waits_for_sockets_that_listen(fake_gateway, fake_args):
    g = fake_gateway(fake_args=fake_args)
    r = g.execute(uid(), "hello")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "hello\n" and r.json()["session_reset"] is False, r.text
    m = requests.get(g.url + "/metrics", headers=g.headers(), timeout=10).text
    assert re.search(r"^kbox_workers_failed_total 0$", m, re.M), m


def test_socket_files_that_are_symlinks_are_never_followed(fake_gateway, fake_dir):
    # A kernel can write its run dir: socket files that point elsewhere (another socket of
    # the host) fail the start, and the gateway (root) never connects to what they point at.
    target = os.path.join(fake_dir, "target.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(target)
    lst.listen(16)
    lst.settimeout(0.5)
    try:
        g = fake_gateway(fake_args=("--symlink-to", target), wait_healthy=False)
        deadline = time.time() + 30
        m = ""
        while time.time() < deadline and not re.search(r"^kbox_workers_failed_total [2-9]", m,
                                                       re.M):
            time.sleep(0.2)
            try:
                m = requests.get(g.url + "/metrics", headers=g.headers(), timeout=5).text
            except requests.ConnectionError:
                pass
        assert re.search(r"^kbox_workers_failed_total [2-9]", m, re.M), m
        assert "Operation not permitted" in g.read_log()
        with pytest.raises(socket.timeout):
            lst.accept()
    finally:
        lst.close()


def test_output_counts_as_life_without_pongs(fake_gateway):
    # No pong for 2.5 s (the window is 3 x 200 ms), but output all along: not hung.
    g = fake_gateway()
    u = uid()
    r = g.execute(u, "silent-hb\nstream 25 100")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "".join(f"{i}\n" for i in range(25))
    assert r.json()["session_reset"] is False


def test_silent_kernel_is_declared_hung(fake_gateway):
    g = fake_gateway()
    u = uid()
    assert g.execute(u, "x").status_code == 200
    t0 = time.time()
    r = g.execute(u, "stream 1 10\nhang\nstream 1 10", timeout_ms=30000)
    # The reply never comes; no pong, no message: hung after ~3 heartbeat periods, not at the
    # 30 s timeout.
    assert r.status_code == 503, r.text
    assert time.time() - t0 < 10, r.text
    # The session gets a new kernel.
    r = g.execute(u, "again")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "again\n" and r.json()["session_reset"] is True, r.text


def test_lost_idles_are_recovered_by_probes(fake_gateway):
    # The reply comes, its idle never does, nor the idles of the first two probes: the gateway
    # keeps probing (once a second) until one is answered.
    g = fake_gateway()
    t0 = time.time()
    r = g.execute(uid(), "drop-idle 2\nthree probes later", timeout_ms=20000)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "three probes later\n"
    assert r.json()["timed_out"] is False
    assert 2 <= time.time() - t0 < 10


def test_timeout_after_the_reply_answers_200(fake_gateway):
    # Every idle lost: the reply is in, so the timeout finishes the execution with what it
    # has rather than interrupting finished code.
    g = fake_gateway()
    u = uid()
    r = g.execute(u, "drop-idle 1000\ndone", timeout_ms=1500)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "done\n" and r.json()["error"] is None, r.text
