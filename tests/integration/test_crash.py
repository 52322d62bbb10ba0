"""Crash safety: a kill -9 of the gateway loses no session, and a restart sweeps the rest."""
import os
import shutil
import signal
import tempfile

import pytest

from conftest import LAUNCHER, no_leftovers, uid

pytestmark = pytest.mark.skipif(LAUNCHER != "runc", reason="reattach needs the sandboxed launcher")


def test_kill9_gateway_keeps_sessions(make_gateway):
    state = tempfile.mkdtemp(prefix="kbox-crash-")
    try:
        g = make_gateway(["--min-idle-workers", "1"], state_dir=state).start()
        u = uid()
        r = g.execute(u, "v = 'survives'\nopen('/sandbox/f', 'w').write('on disk')")
        assert r.status_code == 200, r.text
        kid = r.json()["kernel_id"]
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()

        g2 = make_gateway(["--min-idle-workers", "1"], state_dir=state).start()
        r = g2.execute(u, "print(v, open('/sandbox/f').read())")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["stdout"] == "survives on disk\n"
        assert body["kernel_id"] == kid
        assert body["session_reset"] is False
        assert g2.stop() == 0
        assert no_leftovers(state) == {}
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
        assert g2.stop() == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)
