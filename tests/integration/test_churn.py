"""200 workers created and destroyed, then SIGTERM: nothing of ours is left on the host."""
import concurrent.futures
import shutil
import signal
import tempfile

from conftest import no_leftovers, uid


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
        assert g.stop(signal.SIGTERM) == 0
        assert no_leftovers(state) == {}
    finally:
        shutil.rmtree(state, ignore_errors=True)
