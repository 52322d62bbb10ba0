"""Crash safety: a kill -9 of the gateway loses no session, and a restart sweeps the rest."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import LAUNCHER, live_resources, no_leftovers, uid

pytestmark = pytest.mark.skipif(LAUNCHER != "runc", reason="reattach needs the sandboxed launcher")


def kill9_keeps_session(make_gateway, args, state):
    """A session's variables and files survive a kill -9 of the gateway and its restart on
    the same state dir; the restart reattaches (one set of resources per live worker: the
    session's and one idle, args must ask for --min-idle-workers 1), and SIGTERM then leaves
    nothing. Shared with the TCP transport's test."""
    g = make_gateway(args, state_dir=state).start()
    u = uid()
    r = g.execute(u, "v = 'survives'\nopen('/sandbox/f', 'w').write('on disk')")
    assert r.status_code == 200, r.text
    kid = r.json()["kernel_id"]
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait()

    g2 = make_gateway(args, state_dir=state).start()
    r = g2.execute(u, "print(v, open('/sandbox/f').read())")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stdout"] == "survives on disk\n"
    assert body["kernel_id"] == kid
    assert body["session_reset"] is False
    st = g2.wait_status(lambda st: st["starting_workers"] == 0 and st["stopping_workers"] == 0
                        and st["idle_workers"] == 1)
    live = live_resources(state)
    assert st["total_workers"] == 2 and live == dict.fromkeys(live, 2), (st, live)
    # The reattached worker is the session's: when its kernel dies, the disk stays with the
    # session and its replacement gets it (not deleted with the dead worker).
    r = g2.execute(u, "import os\nos._exit(1)")
    assert r.status_code == 503, r.text
    r = g2.execute(u, "print(open('/sandbox/f').read())")
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "on disk\n" and r.json()["session_reset"] is True, r.text
    assert g2.stop() == 0
    assert no_leftovers(state) == {}


def test_kill9_gateway_keeps_sessions(make_gateway):
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        kill9_keeps_session(make_gateway, ["--min-idle-workers", "1"], state)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_restart_without_journal_sweeps_everything(make_gateway):
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        g = make_gateway(["--min-idle-workers", "2"], state_dir=state).start()
        g.execute(uid(), "x = 1")
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()
        left = no_leftovers(state)
        assert left.get("containers") and left.get("loops"), left  # a crash does leave them
        os.unlink(os.path.join(state, "journal.json"))
        g2 = make_gateway(["--min-idle-workers", "0"], state_dir=state).start()
        st = g2.status()
        assert st["sessions"] == 0 and st["total_workers"] == 0
        # Swept at start-up, not by the SIGTERM below: nothing of a worker's is left now.
        live = live_resources(state)
        assert live == dict.fromkeys(live, 0), live
        assert g2.stop() == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_fifo_for_a_connection_file_does_not_block_the_restart(make_gateway):
    """A kernel can write its run dir: one that puts a FIFO where its connection file was hung
    the next gateway start for everyone (the open blocked until someone wrote into it). The
    restart goes on; that worker cannot be reattached, and its session is reset."""
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        g = make_gateway(["--min-idle-workers", "0"], state_dir=state).start()
        u = uid()
        r = g.execute(u, "import os\nos.rename('/run/kbox/kernel.json', '/run/kbox/k.bak')\n"
                         "os.mkfifo('/run/kbox/kernel.json', 0o600)")
        assert r.status_code == 200, r.text
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()
        g2 = make_gateway(["--min-idle-workers", "0"], state_dir=state).start()
        r = g2.execute(u, "print('back')")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "back\n" and r.json()["session_reset"] is True, r.text
        assert g2.stop() == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_dead_worker_in_journal_is_swept_and_its_session_reset(make_gateway):
    """The journal lists a worker that died while the gateway was down: the restart sweeps its
    container, namespace, cgroup and run dir, and its session comes back reset with its
    files."""
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        g = make_gateway(["--min-idle-workers", "0"], state_dir=state).start()
        u = uid()
        r = g.execute(u, "v = 1\nopen('/sandbox/f', 'w').write('kept')")
        assert r.status_code == 200, r.text
        kid = r.json()["kernel_id"]
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()
        import json
        with open(os.path.join(state, "journal.json")) as f:
            (worker,) = json.load(f)["workers"]
        os.kill(worker["pid"], signal.SIGKILL)  # the container's init: the worker dies
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{worker['pid']}") and time.time() < deadline:
            time.sleep(0.05)

        g2 = make_gateway(["--min-idle-workers", "0"], state_dir=state).start()
        # Nothing of the dead worker's is left but the session's disk image (not mounted).
        live = live_resources(state)
        assert live == dict(dict.fromkeys(live, 0), images=1), live
        r = g2.execute(u, "print(open('/sandbox/f').read()); print('v' in globals())")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["kernel_id"] == kid and body["session_reset"] is True, body
        assert body["stdout"] == "kept\nFalse\n", body
        assert g2.stop() == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_second_gateway_on_a_state_dir_in_use_refuses(make_gateway):
    """Started twice on one state dir (start.sh run again, say), the second gateway must not
    touch the first one's workers: it would reattach them from the journal (two gateways
    handing out the same kernels) or sweep them as a crashed run's leftovers. It refuses
    before touching anything, and the first keeps its session, its disk and its pool."""
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        g = make_gateway(["--min-idle-workers", "1"], state_dir=state).start()
        u = uid()
        r = g.execute(u, "v = 'still here'\nopen('/sandbox/f', 'w').write('on disk')")
        assert r.status_code == 200, r.text
        before = g.wait_status(lambda st: st["starting_workers"] == 0 and st["idle_workers"] == 1)
        live = live_resources(state)

        g2 = make_gateway(["--min-idle-workers", "1"], state_dir=state)
        g2.log = open(g2.log_path, "wb")
        g2.proc = subprocess.Popen(g2.args, env=g2.env, stdout=g2.log, stderr=subprocess.STDOUT)
        try:
            rc = g2.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None  # it started (and swept): what that did to the first is checked first

        r = g.execute(u, "print(v, open('/sandbox/f').read())")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "still here on disk\n" and r.json()["session_reset"] is False
        after = g.status()
        assert after["total_workers"] == before["total_workers"], (before, after)
        assert live_resources(state) == live
        assert rc not in (None, 0), g2.read_log()
        assert "another gateway runs on this state dir" in g2.read_log()
        assert str(g.proc.pid) in g2.read_log()
        assert g.stop() == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)
