"""200 workers created and destroyed: only the live workers' resources exist, and after
SIGTERM nothing of ours is left on the host."""
import concurrent.futures
import shutil
import signal
import tempfile
import threading
import time

import requests

from conftest import live_resources, no_leftovers, uid


def settled_then_nothing_left(g, state, idle):
    """Before SIGTERM (whose own sweep would hide a leak): with the pool settled, exactly the
    idle workers' resources exist; after it, nothing of the gateway's."""
    g.wait_status(lambda st: st["sessions"] == 0 and st["starting_workers"] == 0 and
                  st["stopping_workers"] == 0 and st["idle_workers"] == idle)
    live = live_resources(state)
    assert live == dict.fromkeys(live, idle), live
    assert g.stop(signal.SIGTERM) == 0
    assert no_leftovers(state) == {}


def test_200_workers_leave_nothing(make_gateway):
    state = tempfile.mkdtemp(prefix="kbox-churn-")
    try:
        g = make_gateway(["--min-idle-workers", "4", "--max-total-workers", "16",
                          "--worker-disk-mb", "16", "--acquire-timeout-ms", "120000"],
                         state_dir=state).start()

        def one(_):
            u = uid()
            r = g.execute(u, "import os\nopen('/sandbox/x', 'w').write('1')\nprint(os.getuid())")
            if r.status_code != 200:
                return (r.status_code, r.text[:200])
            r = g.release(u)
            return "ok" if r.status_code == 200 else ("release", r.status_code)

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(one, range(200)))
        assert [r for r in results if r != "ok"] == []
        import requests
        from prometheus_client.parser import text_string_to_metric_families
        m = requests.get(g.url + "/metrics", headers=g.headers()).text
        started = [s.value for f in text_string_to_metric_families(m) for s in f.samples
                   if s.name == "kbox_workers_started_total"]
        assert started and started[0] >= 200, started
        # The 200 released workers left nothing.
        settled_then_nothing_left(g, state, idle=4)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_release_during_a_restart_leaves_nothing(make_gateway):
    """A session released while the replacement a restart asked for is still starting (with
    the session's disk): the replacement goes with it, removes the disk once its launcher is
    done, and no start fails. Before, the disk was removed under the launching worker, whose
    start failed and left its OCI bundle behind."""
    state = tempfile.mkdtemp(prefix="kbox-churn-")
    try:
        g = make_gateway(["--min-idle-workers", "1", "--worker-disk-mb", "16"],
                         state_dir=state).start()
        for delay in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6):
            u = uid()
            kid = g.execute(u, "1").json()["kernel_id"]
            restart = threading.Thread(target=requests.post, kwargs=dict(
                url=g.url + f"/api/kernels/{kid}/restart", headers=g.headers(), timeout=60))
            restart.start()
            time.sleep(delay)
            assert g.release(u).status_code == 200
            restart.join()
        settled_then_nothing_left(g, state, idle=1)
        with open(g.log_path) as f:
            failed = [line for line in f if "worker start failed" in line]
        assert failed == []
    finally:
        shutil.rmtree(state, ignore_errors=True)
