"""End to end with a real third-party client: Debian's Jupyter Server (1.23) started with
`--gateway-url` pointing at the gateway, driven only through *its own* REST and WebSocket
API with its own token, as JupyterLab would. Its gateway client creates, lists, interrupts,
restarts and deletes kernels on the gateway and proxies the WebSocket (legacy format only).
"""
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import requests

from conftest import Gateway, free_port
from jupyter_ws import ECHO_TARGET_CODE, UUID_RE, KernelWS, stdout_of, types_of

PYTHON = os.environ.get("KBOX_PYTHON", "/usr/bin/python3")


class JupyterServer:
    """`python3 -m jupyter_server --gateway-url=...` in a private config/data/runtime dir."""

    def __init__(self, gw, extra_env=None):
        self.gw = gw
        self.port = free_port()
        self.token = "js-" + uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="kbox-js-")
        root = os.path.join(self.dir, "root")
        os.makedirs(root)
        self.args = [
            PYTHON, "-m", "jupyter_server",
            f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={root}",
            f"--gateway-url={gw.url}",
            f"--GatewayClient.auth_token={gw.token}",
        ]
        if os.geteuid() == 0:
            self.args.append("--allow-root")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "KERNEL_"))}
        self.env.update({
            "JUPYTER_CONFIG_DIR": os.path.join(self.dir, "config"),
            "JUPYTER_DATA_DIR": os.path.join(self.dir, "data"),
            "JUPYTER_RUNTIME_DIR": os.path.join(self.dir, "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_NO_CONFIG": "1",
            # What its gateway client forwards in POST /api/kernels {env}.
            "KERNEL_USERNAME": "alice",
        })
        self.env.update(extra_env or {})
        self.log_path = os.path.join(self.dir, "jupyter-server.log")
        self.proc = None

    def start(self, timeout=60):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"jupyter server exited:\n{self.read_log()}"
            try:
                if requests.get(self.url + "/api", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"jupyter server not up in {timeout}s:\n{self.read_log()}")

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-20000:]
        except OSError:
            return ""

    def api(self, method, path, **kw):
        headers = kw.pop("headers", {})
        headers.setdefault("Authorization", f"token {self.token}")
        kw.setdefault("timeout", 60)
        return requests.request(method, self.url + path, headers=headers, **kw)

    def ws(self, kid, **kw):
        return KernelWS(self.url, kid, token=self.token, session_id=uuid.uuid4().hex, **kw)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack():
    g = Gateway(["--min-idle-workers", "2", "--max-total-workers", "20"]).start()
    js = JupyterServer(g)
    try:
        js.start()
        yield g, js
    finally:
        js.stop()
        g.stop()


def gw_api(g, method, path, **kw):
    return requests.request(method, g.url + path,
                            headers={"Authorization": f"token {g.token}"}, timeout=60, **kw)


def test_kernelspecs_come_from_the_gateway(stack):
    g, js = stack
    r = js.api("GET", "/api/kernelspecs")
    assert r.status_code == 200, r.text
    specs = r.json()
    assert specs["default"] == "python3"
    assert "sandboxed" in specs["kernelspecs"]["python3"]["spec"]["display_name"]
    r = js.api("GET", "/api/kernelspecs/python3")
    assert r.status_code == 200


def test_kernel_end_to_end_through_jupyter_server(stack):
    g, js = stack
    t0 = time.time()
    r = js.api("POST", "/api/kernels", json={"name": "python3"})
    assert r.status_code == 201, r.text + js.read_log()
    assert time.time() - t0 < 30
    kid = r.json()["id"]
    assert UUID_RE.match(kid)
    # The kernel lives on the gateway, and Jupyter Server's own listing (which parses our
    # last_activity with %Y-%m-%dT%H:%M:%S.%fZ) works.
    assert gw_api(g, "GET", f"/api/kernels/{kid}").status_code == 200
    r = js.api("GET", "/api/kernels")
    assert r.status_code == 200, r.text + js.read_log()
    assert kid in [k["id"] for k in r.json()]
    r = js.api("GET", f"/api/kernels/{kid}")
    assert r.status_code == 200, r.text
    assert r.json()["execution_state"] in ("idle", "starting", "busy")

    c = js.ws(kid)
    c.nudge()  # Jupyter Server 1.23 can drop messages sent before its upstream socket opens
    reply, iopub = c.execute(
        "print('through jupyter server')\n"
        "from IPython.display import display\n"
        "display({'text/plain': 'p', 'text/markdown': '**md**'}, raw=True)\n"
        "kept = 5\n"
        "6 * 7")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert stdout_of(iopub) == "through jupyter server\n"
    t = types_of(iopub)
    assert "display_data" in t and "execute_result" in t
    dd = next(m for m in iopub if m["header"]["msg_type"] == "display_data")
    assert dd["content"]["data"]["text/markdown"] == "**md**"

    # Interrupt through Jupyter Server's REST API.
    mid = c.start("import time\nfor _ in range(600): time.sleep(0.1)")
    c.wait_for(lambda m: m["header"]["msg_type"] == "execute_input" and
               m["parent_header"].get("msg_id") == mid, what="running")
    time.sleep(0.2)
    t0 = time.time()
    r = js.api("POST", f"/api/kernels/{kid}/interrupt")
    assert r.status_code == 204, r.text
    rep = c.wait_reply_and_idle(mid, timeout=15, what="interrupted reply and idle")
    assert rep["content"]["ename"] == "KeyboardInterrupt"
    assert time.time() - t0 < 10
    rep, msgs = c.execute_after_error("print(kept)")
    assert stdout_of(msgs) == "5\n", rep

    # Restart through Jupyter Server's REST API: same id, fresh state, the open WebSocket
    # hears "restarting" and keeps working.
    r = js.api("POST", f"/api/kernels/{kid}/restart")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == kid
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "restarting", what="restarting status")
    reply, iopub = c.execute("print('kept' in globals())")
    assert stdout_of(iopub) == "False\n"

    # A second browser tab on the same kernel sees the first one's output.
    c2 = js.ws(kid)
    c2.nudge()
    c.execute("print('to both tabs')")
    c2.wait_for(lambda m: m["header"]["msg_type"] == "stream" and
                m["content"]["text"] == "to both tabs\n", what="output in the second tab")
    c2.close()

    # Shut down through Jupyter Server: gone on the gateway too.
    r = js.api("DELETE", f"/api/kernels/{kid}")
    assert r.status_code == 204, r.text
    assert gw_api(g, "GET", f"/api/kernels/{kid}").status_code == 404
    assert kid not in [k["id"] for k in js.api("GET", "/api/kernels").json()]
    c.close()


def test_kernel_env_from_the_gateway_client_is_not_applied(stack):
    g, js = stack
    r = js.api("POST", "/api/kernels", json={"name": "python3", "path": "sub/dir"})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    c = js.ws(kid)
    c.nudge()
    reply, iopub = c.execute("import os\nprint(os.environ.get('KERNEL_USERNAME'), os.getcwd() == "
                             + repr(js.dir) + ")")
    assert reply["content"]["status"] == "ok"
    assert stdout_of(iopub) == "None False\n"
    c.close()
    assert js.api("DELETE", f"/api/kernels/{kid}").status_code == 204


def test_sessions_api_notebook_flow(stack):
    # What JupyterLab does when a notebook is opened: POST /api/sessions.
    g, js = stack
    r = js.api("POST", "/api/sessions", json={"path": "nb.ipynb", "name": "nb.ipynb",
                                              "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text + js.read_log()
    sess = r.json()
    kid = sess["kernel"]["id"]
    assert gw_api(g, "GET", f"/api/kernels/{kid}").status_code == 200
    r = js.api("GET", "/api/sessions")
    assert r.status_code == 200 and sess["id"] in [s["id"] for s in r.json()]
    c = js.ws(kid)
    c.nudge()
    assert stdout_of(c.execute("print(1 + 1)")[1]) == "2\n"
    c.close()
    assert js.api("DELETE", f"/api/sessions/{sess['id']}").status_code == 204
    deadline = time.time() + 15
    while gw_api(g, "GET", f"/api/kernels/{kid}").status_code != 404:
        assert time.time() < deadline, "the session's kernel was not shut down on the gateway"
        time.sleep(0.1)


def test_binary_buffers_through_jupyter_server(stack):
    g, js = stack
    kid = js.api("POST", "/api/kernels", json={"name": "python3"}).json()["id"]
    c = js.ws(kid)
    c.nudge()
    # Kernel -> client: arbitrary bytes arrive as a legacy binary frame through the proxy.
    blob = bytes(range(256)) * 400
    reply, iopub = c.execute(
        "from ipykernel.comm import Comm\n"
        "_c = Comm(target_name='kbox_from_kernel', data={'n': 1}, "
        "buffers=[bytes(range(256)) * 400])\n")
    assert reply["content"]["status"] == "ok", reply["content"]
    m = next(m for m in iopub if m["header"]["msg_type"] == "comm_open")
    assert m["_binary"]
    assert [bytes(b) for b in m["buffers"]] == [blob]
    # Client -> kernel: jupyter_server 1.23's proxy forwards a binary message upstream as a
    # *text* frame (tornado write_message(bytes)); the gateway reads that form, so buffers
    # that are valid UTF-8 get through. (Other bytes cannot: a text frame must be UTF-8, and
    # any RFC 6455 server, Kernel Gateway included, drops the connection. Fixed upstream.)
    assert c.execute(ECHO_TARGET_CODE)[0]["content"]["status"] == "ok"
    comm_id = uuid.uuid4().hex
    c.send("shell", "comm_open", {"comm_id": comm_id, "target_name": "kbox_echo", "data": {}})
    bufs = [b"ascii buffer " * 1000, b"{}"]
    c.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"n": 1}}, buffers=bufs)
    m = c.wait_for(lambda m: m["header"]["msg_type"] == "comm_msg" and
                   m["content"].get("comm_id") == comm_id, what="echo through Jupyter Server")
    assert m["_binary"]
    assert [bytes(b) for b in m["buffers"]] == [b[::-1] for b in bufs]
    c.close()
    assert js.api("DELETE", f"/api/kernels/{kid}").status_code == 204


def test_kernel_culled_on_the_gateway_disappears_from_jupyter_server(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--idle-timeout-s", "2"]).start()
    js = JupyterServer(g).start()
    try:
        r = js.api("POST", "/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text + js.read_log()
        kid = r.json()["id"]
        # Idle for 2 s, the gateway culls it at its next idle check (every 0.5 s): wait for
        # that (GETs are not activity) instead of sleeping a fixed time a loaded machine can
        # overrun, within a generous bound.
        deadline = time.time() + 60
        while gw_api(g, "GET", f"/api/kernels/{kid}").status_code != 404:
            assert time.time() < deadline, "the idle kernel was not culled on the gateway\n" + g.read_log()
            time.sleep(0.2)
        r = js.api("GET", "/api/kernels")
        assert r.status_code == 200, r.text
        assert kid not in [k["id"] for k in r.json()]
    finally:
        js.stop()


def test_pool_full_is_an_error_not_a_hang_through_jupyter_server(make_gateway):
    # Default acquire timeout: the gateway must answer before the gateway client's 42 s.
    g = make_gateway(["--min-idle-workers", "0", "--max-total-workers", "1"]).start()
    js = JupyterServer(g).start()
    try:
        assert js.api("POST", "/api/kernels", json={"name": "python3"}).status_code == 201
        t0 = time.time()
        r = js.api("POST", "/api/kernels", json={"name": "python3"}, timeout=90)
        took = time.time() - t0
        assert r.status_code == 503, (r.status_code, r.text[:300])
        assert took < 40, took
    finally:
        js.stop()
