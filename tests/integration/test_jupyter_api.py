"""The Jupyter Server kernels API (REST + WebSocket channels) of the real gateway, checked
against what jupyter_server 1.23 and its gateway client, @jupyterlab/services and plain
websocket clients expect: status codes and shapes, auth forms, both WebSocket formats with
binary buffers, several clients per kernel, /execute sessions seen from the channels, bad
input, slow clients, idle release and a full pool.
"""
import concurrent.futures
import datetime
import http.client
import json
import struct
import time
import uuid

import pytest
import requests
import websocket

from conftest import uid
from jupyter_ws import (ECHO_TARGET_CODE, UUID_RE, V1, KernelWS, execute_content, stdout_of,
                        types_of)

MODEL_KEYS = {"id", "name", "last_activity", "execution_state", "connections"}


def api(g, method, path, token=True, **kw):
    headers = kw.pop("headers", {})
    if token is True:
        headers.setdefault("Authorization", f"token {g.token}")
    kw.setdefault("timeout", 60)
    return requests.request(method, g.url + path, headers=headers, **kw)


def raw_get(g, target):
    """GET with the request target exactly as given (requests re-quotes it)."""
    c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=60)
    try:
        c.request("GET", target, headers={"Authorization": f"token {g.token}"})
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def new_kernel(g, **body):
    r = api(g, "POST", "/api/kernels", json=body or {"name": "python3"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def check_model(m):
    assert set(m) == MODEL_KEYS, m
    assert UUID_RE.match(m["id"]), m["id"]
    assert m["name"] == "python3"
    # Exactly what jupyter_server's gateway client parses; anything else breaks its listing.
    datetime.datetime.strptime(m["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(m["last_activity"]) == len("2024-01-02T03:04:05.123456Z")
    assert m["execution_state"] in ("starting", "idle", "busy", "restarting", "dead")
    assert type(m["connections"]) is int


def ws(g, kid, **kw):
    kw.setdefault("token", g.token)
    return KernelWS(g.url, kid, **kw)


# ---- REST --------------------------------------------------------------------------------


def test_api_root_and_kernelspecs(gw):
    r = api(gw, "GET", "/api")
    assert r.status_code == 200 and "version" in r.json()
    # The gateway client adds ?user=...; unknown query parameters are ignored everywhere.
    r = api(gw, "GET", "/api/kernelspecs?user=alice&x=1")
    assert r.status_code == 200, r.text
    specs = r.json()
    assert specs["default"] == "python3"
    spec = specs["kernelspecs"]["python3"]
    assert spec["name"] == "python3"
    for k in ("argv", "display_name", "language", "interrupt_mode", "env", "metadata"):
        assert k in spec["spec"], k
    assert spec["spec"]["language"] == "python"
    assert "resources" in spec
    r = api(gw, "GET", "/api/kernelspecs/python3?user=alice")
    assert r.status_code == 200 and r.json()["name"] == "python3"
    assert api(gw, "GET", "/api/kernelspecs/nope").status_code == 404
    # The gateway client's one-spec form, and a user= it cannot read (a 200 with the list
    # would answer a question that was not asked).
    r = api(gw, "GET", "/api/kernelspecs?user=alice/python3")
    assert r.status_code == 200 and r.json()["name"] == "python3", r.text
    assert api(gw, "GET", "/api/kernelspecs?user=alice/nope").status_code == 404
    r = api(gw, "GET", "/api/kernelspecs?user=" + "a" * 300 + "/python3")
    assert r.status_code == 400 and "255" in r.json()["detail"], r.text
    # Sent as is (requests would quote the stray %).
    status, body = raw_get(gw, "/api/kernelspecs?user=%zz/python3")
    assert status == 400 and "escape" in json.loads(body)["detail"], body


def test_auth_forms(gw):
    ok = [
        {"headers": {"Authorization": f"token {gw.token}"}},
        {"headers": {"Authorization": f"Bearer {gw.token}"}},
        {"params": {"token": gw.token}},
    ]
    for kw in ok:
        r = api(gw, "GET", "/api/kernels", token=False, **kw)
        assert r.status_code == 200, (kw, r.status_code)
    bad = [
        {},
        {"headers": {"Authorization": "token nope"}},
        {"headers": {"Authorization": f"Basic {gw.token}"}},
        {"params": {"token": gw.token + "x"}},
    ]
    for kw in bad:
        r = api(gw, "GET", "/api/kernels", token=False, **kw)
        assert r.status_code in (401, 403), (kw, r.status_code)
        assert "error" in r.json()
    # The channels endpoint is guarded the same way, before any upgrade.
    kid = new_kernel(gw)
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        KernelWS(gw.url, kid, token=None)
    assert e.value.status_code in (401, 403)
    c = ws(gw, kid, header_token=False)  # ?token=
    assert c.execute("1")[0]["content"]["status"] == "ok"
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_kernel_lifecycle_status_codes_and_shapes(gw):
    t0 = time.time()
    r = api(gw, "POST", "/api/kernels?unknown=1", json={"name": "python3"})
    assert r.status_code == 201, r.text
    assert time.time() - t0 < 30
    m = r.json()
    check_model(m)
    kid = m["id"]
    assert r.headers["Location"] == f"/api/kernels/{kid}"
    assert r.headers["Content-Type"].startswith("application/json")

    lst = api(gw, "GET", "/api/kernels?user=x")
    assert lst.status_code == 200
    mine = [k for k in lst.json() if k["id"] == kid]
    assert len(mine) == 1
    for k in lst.json():
        check_model(k)

    r = api(gw, "GET", f"/api/kernels/{kid}")
    assert r.status_code == 200
    check_model(r.json())
    assert r.json()["connections"] == 0

    r = api(gw, "POST", f"/api/kernels/{kid}/interrupt", json={})
    assert r.status_code == 204 and r.content == b""
    r = api(gw, "POST", f"/api/kernels/{kid}/restart", json={})
    assert r.status_code == 200, r.text
    check_model(r.json())
    assert r.json()["id"] == kid

    r = api(gw, "DELETE", f"/api/kernels/{kid}")
    assert r.status_code == 204 and r.content == b""
    assert api(gw, "GET", f"/api/kernels/{kid}").status_code == 404
    assert api(gw, "DELETE", f"/api/kernels/{kid}").status_code == 404
    assert all(k["id"] != kid for k in api(gw, "GET", "/api/kernels").json())


def test_create_without_body_and_optional_fields(gw):
    r = api(gw, "POST", "/api/kernels")  # JupyterLab may send no body: the default kernel
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    r2 = api(gw, "POST", "/api/kernels", json={"name": "python3", "path": "nb/x.ipynb"})
    assert r2.status_code == 201, r2.text
    assert r2.json()["id"] != kid
    for k in (kid, r2.json()["id"]):
        assert api(gw, "DELETE", f"/api/kernels/{k}").status_code == 204


def test_unknown_and_malformed_ids_are_404(gw):
    fake = str(uuid.uuid4())
    for method, path in [
        ("GET", f"/api/kernels/{fake}"),
        ("DELETE", f"/api/kernels/{fake}"),
        ("POST", f"/api/kernels/{fake}/interrupt"),
        ("POST", f"/api/kernels/{fake}/restart"),
        ("GET", f"/api/kernels/{fake}/channels"),
        ("GET", "/api/kernels/not-a-uuid"),
        ("GET", "/api/kernels/" + "a" * 5000),
        ("GET", "/api/kernels/%2e%2e%2fetc"),
        ("GET", "/api/kernels/%00"),
    ]:
        r = api(gw, method, path, json={} if method == "POST" else None)
        assert r.status_code in (404, 414, 431, 400), (method, path[:60], r.status_code)
        if r.status_code == 404:
            assert "error" in r.json()
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        ws(gw, fake)
    assert e.value.status_code == 404
    kid = new_kernel(gw)
    assert api(gw, "GET", f"/api/kernels/{kid}/nope").status_code == 404
    r = api(gw, "GET", f"/api/kernels/{kid}/channels")  # no upgrade headers
    assert r.status_code in (400, 426) and "error" in r.json()
    assert api(gw, "GET", f"/api/kernels/{kid}/interrupt").status_code == 405
    assert api(gw, "DELETE", f"/api/kernels/{kid}").status_code == 204


def test_create_validation(gw):
    assert api(gw, "POST", "/api/kernels", json={"name": "nope"}).status_code == 404
    r = api(gw, "POST", "/api/kernels", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert api(gw, "POST", "/api/kernels", json=[1]).status_code == 400
    assert api(gw, "POST", "/api/kernels", json={"name": "python3", "env": "x"}).status_code == 400
    assert api(gw, "POST", "/api/kernels", json={"name": 3}).status_code == 400
    r = api(gw, "POST", "/api/kernels", data='{"name": "python3", "name": "python3"}',
            headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "duplicate" in r.json()["detail"], r.text


def test_env_allow_list(gw):
    # What jupyter_server's gateway client sends: every KERNEL_* of its environment, paths of
    # its own host, plus whatever env_whitelist adds. None of it may reach or steer the kernel.
    env = {"KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": "/etc", "KERNEL_LAUNCH_TIMEOUT": "40",
           "KERNEL_ID": "should-not-be-used", "LD_PRELOAD": "/tmp/evil.so", "PATH": "/evil",
           "PYTHONPATH": "/evil", "PYTHONSTARTUP": "/evil.py"}
    for i in range(40):
        env[f"KERNEL_EXTRA_{i}"] = "v" * 100
    r = api(gw, "POST", "/api/kernels", json={"name": "python3", "env": env})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    assert kid != "should-not-be-used" and UUID_RE.match(kid)
    c = ws(gw, kid)
    reply, iopub = c.execute(
        "import os, json\n"
        "print(json.dumps({k: os.environ.get(k) for k in "
        "['LD_PRELOAD', 'PYTHONPATH', 'PYTHONSTARTUP', 'KERNEL_WORKING_DIR']} | "
        "{'cwd': os.getcwd(), 'path': os.environ.get('PATH')}))")
    assert reply["content"]["status"] == "ok", reply["content"]
    seen = json.loads(stdout_of(iopub))
    assert seen["LD_PRELOAD"] is None and seen["PYTHONPATH"] is None
    assert seen["PYTHONSTARTUP"] is None and seen["KERNEL_WORKING_DIR"] is None
    assert seen["cwd"] != "/etc"
    assert "/evil" not in (seen["path"] or "")
    c.close()
    # A bounded number of keys and bytes: a huge env is refused, not stored.
    huge = {f"KERNEL_K{i}": "x" for i in range(5000)}
    r = api(gw, "POST", "/api/kernels", json={"name": "python3", "env": huge})
    assert r.status_code in (400, 413), r.status_code
    r = api(gw, "POST", "/api/kernels", json={"name": "python3", "env": {"KERNEL_X": {"a": 1}}})
    assert r.status_code in (201, 400), r.status_code
    if r.status_code == 201:
        api(gw, "DELETE", f"/api/kernels/{r.json()['id']}")
    api(gw, "DELETE", f"/api/kernels/{kid}")


# ---- channels ----------------------------------------------------------------------------


def test_channels_legacy_without_session_id(gw):
    kid = new_kernel(gw)
    c = ws(gw, kid)  # no session_id, no subprotocol: what the gateway client does
    assert c.proto == ""
    info, _ = c.request("shell", "kernel_info_request")
    assert info["content"]["status"] == "ok"
    assert info["content"]["language_info"]["name"] == "python"
    assert float(info["content"]["protocol_version"]) >= 5.3
    reply, iopub = c.execute(
        "print('hi')\n"
        "from IPython.display import display\n"
        "display({'text/plain': 'p', 'text/html': '<i>h</i>'}, raw=True)\n"
        "6 * 7")
    assert reply["channel"] == "shell"
    assert reply["content"]["status"] == "ok"
    assert reply["parent_header"]["session"] == c.session  # the client's header, unchanged
    t = types_of(iopub)
    assert t[0] == "status" and t[-1] == "status"
    assert "execute_input" in t and "display_data" in t and "execute_result" in t
    assert stdout_of(iopub) == "hi\n"
    dd = next(m for m in iopub if m["header"]["msg_type"] == "display_data")
    assert dd["content"]["data"]["text/html"] == "<i>h</i>"
    er = next(m for m in iopub if m["header"]["msg_type"] == "execute_result")
    assert er["content"]["data"]["text/plain"] == "42"
    assert all(not m["_binary"] for m in c.seen)  # no buffers: text frames
    # Control channel and session_id on the URL work too.
    c2 = ws(gw, kid, session_id="my-session")
    rep, _ = c2.request("control", "kernel_info_request")
    assert rep["channel"] == "control" and rep["content"]["status"] == "ok"
    assert rep["parent_header"]["session"] == "my-session"
    c.close()
    c2.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


@pytest.mark.parametrize("subprotocols", [None, [V1], ["bogus.example", V1]])
def test_buffers_round_trip(gw, subprotocols):
    kid = new_kernel(gw)
    c = ws(gw, kid, subprotocols=subprotocols)
    assert c.proto == (V1 if subprotocols else "")
    assert c.execute(ECHO_TARGET_CODE)[0]["content"]["status"] == "ok"
    comm_id = uuid.uuid4().hex
    c.send("shell", "comm_open", {"comm_id": comm_id, "target_name": "kbox_echo", "data": {}})
    big = bytes((i * 7) & 0xFF for i in range(300000))
    bufs = [b"\x00\x01\x02\xff", big, b""]
    c.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"k": "v"}}, buffers=bufs)
    m = c.wait_for(lambda m: m["header"]["msg_type"] == "comm_msg" and
                   m["content"].get("comm_id") == comm_id, what="echoed comm_msg")
    assert m["channel"] == "iopub"
    assert m["_binary"]
    assert m["content"]["data"]["echo"] == {"k": "v"}
    assert m["content"]["data"]["sizes"] == [4, len(big), 0]
    assert [bytes(b) for b in m["buffers"]] == [b[::-1] for b in bufs]
    if c.proto == V1:
        assert all(x["_binary"] for x in c.seen)
    # The kernel is fine afterwards.
    assert stdout_of(c.execute("print(2 + 2)")[1]) == "4\n"
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_two_clients_share_iopub_replies_go_to_the_asker(gw):
    kid = new_kernel(gw)
    a = ws(gw, kid)
    b = ws(gw, kid, subprotocols=[V1])  # one legacy, one v1: each gets its own format
    model = api(gw, "GET", f"/api/kernels/{kid}").json()
    assert model["connections"] == 2
    reply, iopub = a.execute("print('for everyone')")
    assert stdout_of(iopub) == "for everyone\n"
    mid = reply["parent_header"]["msg_id"]
    got = b.wait_for(lambda m: m["header"]["msg_type"] == "stream", what="stream on b")
    assert got["content"]["text"] == "for everyone\n"
    assert got["parent_header"]["msg_id"] == mid
    b.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "idle" and
               m["parent_header"].get("msg_id") == mid, what="idle on b")
    # b never gets a's execute_reply; its own request gets its own reply.
    rb, _ = b.execute("print('b')")
    assert rb["content"]["status"] == "ok"
    assert not any(m["channel"] == "shell" and m["parent_header"].get("msg_id") == mid
                   for m in b.seen)
    a.wait_for(lambda m: m["header"]["msg_type"] == "stream" and m["content"]["text"] == "b\n",
               what="b's output on a")
    a.close()
    b.close()
    deadline = time.time() + 10
    while api(gw, "GET", f"/api/kernels/{kid}").json()["connections"] != 0:
        assert time.time() < deadline, "connections not back to 0"
        time.sleep(0.05)
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_execute_session_visible_over_channels(gw):
    u = uid()
    r = gw.execute(u, "agent_var = 41")
    assert r.status_code == 200, r.text
    kid = r.json()["kernel_id"]
    assert UUID_RE.match(kid)
    listed = [k for k in api(gw, "GET", "/api/kernels").json() if k["id"] == kid]
    assert len(listed) == 1
    check_model(listed[0])
    c = ws(gw, kid)
    reply, iopub = c.execute("agent_var += 1\nprint(agent_var)")
    assert stdout_of(iopub) == "42\n"
    # The agent sees the person's change, and the person watches the agent's output live.
    r = gw.execute(u, "print('agent says', agent_var)")
    assert r.json()["stdout"] == "agent says 42\n"
    m = c.wait_for(lambda m: m["header"]["msg_type"] == "stream" and
                   "agent says" in m["content"]["text"], what="agent output on the WebSocket")
    assert m["content"]["text"] == "agent says 42\n"
    # Same kernel on both sides, no reset.
    assert r.json()["kernel_id"] == kid and r.json()["session_reset"] is False
    c.close()
    assert gw.release(u).status_code == 200
    assert api(gw, "GET", f"/api/kernels/{kid}").status_code == 404


def test_execute_waits_for_a_channels_cell_without_interrupting_it(make_gateway):
    """An /execute sent while a person's cell runs in the same kernel: its timeout counts from
    when its own code starts, and it never interrupts the person's cell."""
    gw = make_gateway(["--min-idle-workers", "1", "--acquire-timeout-ms", "6000"]).start()
    u = uid()
    kid = gw.execute(u, "import time").json()["kernel_id"]
    c = ws(gw, kid)
    c.nudge()
    cell = c.start("time.sleep(4); print('cell done')")
    c.wait_status(cell, "busy", what="the cell's busy")
    # 2.5 s of timeout is shorter than the cell's remaining run: counted from the send, the
    # agent's request would time out and interrupt the person's cell.
    t0 = time.time()
    r = gw.execute(u, "print('agent ran')", timeout_ms=2500)
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "agent ran\n" and r.json()["timed_out"] is False
    assert time.time() - t0 > 2.0  # it did wait for the cell
    reply = c.wait_reply_and_idle(cell, what="the cell's reply")
    assert reply["content"]["status"] == "ok"
    # A cell longer than a request may wait for a worker (--acquire-timeout-ms, 6 s here):
    # the agent gets a 503 and its code never runs; the cell is not interrupted.
    cell = c.start("time.sleep(9); print('cell 2 done')")
    c.wait_status(cell, "busy", what="the second cell's busy")
    r = gw.execute(u, "agent_ran_late = True", timeout_ms=1000)
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "kernel busy" and r.headers.get("Retry-After")
    reply = c.wait_reply_and_idle(cell, what="the second cell's reply")
    assert reply["content"]["status"] == "ok"
    r = gw.execute(u, "print('agent_ran_late' in dir())")
    assert r.json()["stdout"] == "False\n"
    c.close()
    gw.release(u)


def test_interrupt_and_restart_over_the_channels(gw):
    kid = new_kernel(gw)
    c = ws(gw, kid)
    c.execute("kept = 7")
    mid = c.start("import time\nfor _ in range(600): time.sleep(0.1)")
    c.wait_for(lambda m: m["header"]["msg_type"] == "execute_input", what="running")
    time.sleep(0.2)
    t0 = time.time()
    assert api(gw, "POST", f"/api/kernels/{kid}/interrupt").status_code == 204
    # The idle too: ipykernel aborts what arrives before it is idle again after an error.
    rep = c.wait_reply_and_idle(mid, timeout=15, what="interrupted reply and idle")
    assert rep["content"]["status"] == "error"
    assert rep["content"]["ename"] == "KeyboardInterrupt"
    assert time.time() - t0 < 10
    rep, msgs = c.execute_after_error("print(kept)")
    assert stdout_of(msgs) == "7\n", rep

    old_session = c.seen[-1]["header"]["session"]
    r = api(gw, "POST", f"/api/kernels/{kid}/restart")
    assert r.status_code == 200
    # The gateway itself tells the connected client, as Jupyter Server does.
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "restarting", what="restarting status")
    assert api(gw, "GET", f"/api/kernels/{kid}").json()["execution_state"] in ("idle", "starting", "busy")
    # Same WebSocket, fresh kernel.
    reply, iopub = c.execute("print('kept' in globals())")
    assert stdout_of(iopub) == "False\n"
    assert reply["header"]["session"] != old_session
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_kernel_death_auto_restarts_with_status(gw):
    kid = new_kernel(gw)
    c = ws(gw, kid)
    c.execute("x = 1")
    c.start("import os; os._exit(1)")
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "restarting", timeout=30,
               what="restarting after the kernel died")
    reply, iopub = c.execute("print('x' in globals())", timeout=60)
    assert stdout_of(iopub) == "False\n"
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_an_execute_aborted_by_another_clients_error_runs_again(gw):
    # A viewer's cells: the first runs, the second (stop_on_error) fails after a moment. The
    # agent's /execute waits for the first's idle, then reaches the kernel behind the second,
    # and the kernel, stopping on that error, aborts it unrun. The gateway sends it again.
    u = uid()
    r = gw.execute(u, "n = 0")
    assert r.status_code == 200, r.text
    c = ws(gw, r.json()["kernel_id"])
    first = c.start("import time\ntime.sleep(0.5)")
    c.wait_for(lambda m: m["parent_header"].get("msg_id") == first and
               m["header"]["msg_type"] == "execute_input", what="the first cell running")
    second = c.start("import time\ntime.sleep(0.5)\n1 / 0")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(gw.execute, u, "n += 1\nprint(n)")
        rep = c.wait_reply_and_idle(second, what="the failing cell")
        assert rep["content"]["status"] == "error"
        r = fut.result(timeout=60)
    assert r.status_code == 200 and r.json()["error"] is None, r.text
    assert r.json()["stdout"] == "1\n", r.text
    c.close()
    gw.release(u)


def test_exit_restarts_the_kernel(gw):
    # exit() ends the kernel right after its reply and idle; both reach the client (the
    # gateway's side of a kernel that hung up used to drop what it had not read yet), then
    # the kernel comes back by itself, as with Jupyter Server's auto-restart.
    kid = new_kernel(gw)
    c = ws(gw, kid)
    c.execute("x = 1")
    reply, _ = c.execute("exit()")
    assert reply["content"]["payload"] == [{"source": "ask_exit", "keepkernel": False}], reply
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "restarting", timeout=30,
               what="restarting after exit()")
    reply, iopub = c.execute("print('x' in globals())", timeout=60)
    assert stdout_of(iopub) == "False\n"
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_stdin_input_request_round_trip(gw):
    kid = new_kernel(gw)
    c = ws(gw, kid)
    mid = c.send("shell", "execute_request",
                 {"code": "v = input('name? ')\nprint('got', v)", "silent": False,
                  "store_history": True, "user_expressions": {}, "allow_stdin": True,
                  "stop_on_error": True})
    req = c.wait_for(lambda m: m["channel"] == "stdin", what="input_request")
    assert req["header"]["msg_type"] == "input_request"
    assert req["content"]["prompt"] == "name? "
    c.send("stdin", "input_reply", {"value": "kbox"})
    c.wait_for(lambda m: m["header"]["msg_type"] == "execute_reply" and
               m["parent_header"]["msg_id"] == mid, what="reply")
    # The output comes on iopub, which the protocol does not order against the shell reply.
    if not any(m["header"]["msg_type"] == "stream" and m["content"]["text"] == "got kbox\n"
               for m in c.seen):
        c.wait_for(lambda m: m["header"]["msg_type"] == "stream" and
                   m["content"]["text"] == "got kbox\n", what="the output after input_reply")
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_an_abandoned_input_request_is_interrupted(gw):
    # A viewer's cell waits in input() and the viewer goes away without answering, before or
    # after the kernel asked. No other client sees the request, so none can answer it: the
    # kernel is interrupted, and the agent's next /execute runs with its state instead of
    # finding the kernel busy until the session is released.
    u = uid()
    r = gw.execute(u, "kept = 41")
    assert r.status_code == 200, r.text
    kid = r.json()["kernel_id"]
    for expected, asked_first in (("42\n", True), ("43\n", False)):
        c = ws(gw, kid)
        code = "v = input('name? ')" if asked_first else "import time\ntime.sleep(1)\ninput()"
        # stop_on_error off: ipykernel would otherwise abort, unrun, what reaches it in the
        # moment after the interrupted cell (the agent's request), as it does for any error.
        mid = c.send("shell", "execute_request",
                     dict(execute_content(code), allow_stdin=True, stop_on_error=False))
        if asked_first:
            c.wait_for(lambda m: m["channel"] == "stdin", what="input_request")
        else:
            c.wait_for(lambda m: m["parent_header"].get("msg_id") == mid and
                       m["header"]["msg_type"] == "execute_input", what="running")
        c.close()
        t0 = time.time()
        r = gw.execute(u, "kept += 1\nprint(kept)")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == expected and not r.json()["session_reset"], r.text
        assert time.time() - t0 < 15
    gw.release(u)


def test_a_msg_id_in_flight_is_not_taken_by_another_client(gw):
    # Replies are routed by msg_id, which every client sees in iopub: a second client sending
    # the same msg_id would take the first's reply. It is disconnected instead.
    u = uid()
    kid = gw.execute(u, "1").json()["kernel_id"]
    a, b = ws(gw, kid), ws(gw, kid)
    mid = a.start("import time\ntime.sleep(1)\n5")
    a.wait_for(lambda m: m["parent_header"].get("msg_id") == mid and
               m["header"]["msg_type"] == "execute_input", what="running")
    b.send("shell", "kernel_info_request", msg_id=mid)
    assert b.wait_closed(timeout=15) == 1008
    rep = a.wait_reply_and_idle(mid, what="the first client's own reply")
    assert rep["content"]["status"] == "ok"
    # Nor an /execute's, which a watching client sees too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(gw.execute, u, "import time\ntime.sleep(1)\nprint('agent')")
        m = a.wait_for(lambda m: m["header"]["msg_type"] == "execute_input" and
                       "agent" in m["content"]["code"], what="the agent's cell")
        c = ws(gw, kid)
        c.send("shell", "execute_request", execute_content("print('intruder')"),
               msg_id=m["parent_header"]["msg_id"])
        assert c.wait_closed(timeout=15) == 1008
        r = fut.result(timeout=60)
    assert r.status_code == 200 and r.json()["stdout"] == "agent\n", r.text
    a.close()
    gw.release(u)


def test_delete_closes_clients(gw):
    kid = new_kernel(gw)
    c = ws(gw, kid)
    c.execute("1")
    assert api(gw, "DELETE", f"/api/kernels/{kid}").status_code == 204
    code = c.wait_closed(timeout=15)
    assert code in (1000, 1001), code


# ---- bad input ---------------------------------------------------------------------------


BAD_FRAMES = [
    ("not json", False),
    ("[1, 2, 3]", False),
    (json.dumps({"channel": "shell"}), False),  # no header
    (json.dumps({"channel": "nope", "header": {"msg_id": "x", "msg_type": "execute_request"},
                 "parent_header": {}, "metadata": {}, "content": {}}), False),
    (json.dumps({"channel": "shell", "header": {"msg_type": "execute_request"},
                 "parent_header": {}, "metadata": {}, "content": {}}), False),  # no msg_id
    (json.dumps({"channel": "shell", "header": {"msg_id": "x" * 1025, "msg_type": "bogus"},
                 "parent_header": {}, "metadata": {}, "content": {}}), False),  # kept: bounded
    (json.dumps({"channel": "shell", "header": {"msg_id": "x", "msg_type": "execute_request"},
                 "parent_header": {}, "metadata": {}, "content": "code"}), False),
    ("\xff\xfe" + "{}", False),
    (b"\x00", True),
    (struct.pack(">I", 5) + b"\x00" * 8, True),  # offsets past the end
    (struct.pack(">I", 2) + struct.pack(">II", 12, 4) + b"{}", True),  # decreasing offsets
    (struct.pack(">I", 0xFFFFFFFF) + b"\x00" * 64, True),
]


@pytest.mark.parametrize("frame,binary", BAD_FRAMES)
def test_bad_frames_error_without_harming_the_kernel(gw, frame, binary):
    kid = new_kernel(gw)
    watcher = ws(gw, kid)
    watcher.execute("state = 'alive'")
    bad = ws(gw, kid)
    bad.send_raw(frame, binary)
    # The sender gets an error: its connection is closed with "invalid payload".
    assert bad.wait_closed(timeout=10) == 1007
    # Other clients and the kernel's state are untouched.
    assert stdout_of(watcher.execute("print(state)")[1]) == "alive\n"
    again = ws(gw, kid)
    assert stdout_of(again.execute("print(state)")[1]) == "alive\n"
    for c in (watcher, again):
        c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_bad_v1_frames(gw):
    kid = new_kernel(gw)
    garbage = [
        b"\x00" * 7,
        struct.pack("<Q", 6) + b"\x00" * 8,  # count says 6, no room for the offsets
        struct.pack("<Q", 1 << 62) + b"\x00" * 64,
        struct.pack("<Q", 6) + b"".join(struct.pack("<Q", o) for o in (56, 61, 70, 60, 62, 63)) +
        b"shell" + b"{}" * 4,
    ]
    for g_ in garbage:
        c = ws(gw, kid, subprotocols=[V1])
        c.send_raw(g_, True)
        assert c.wait_closed(timeout=10) == 1007
    c = ws(gw, kid, subprotocols=[V1])
    c.send_raw('{"channel": "shell"}', False)  # text frames are not v1
    assert c.wait_closed(timeout=10) == 1007
    c = ws(gw, kid, subprotocols=[V1])
    assert stdout_of(c.execute("print('fine')")[1]) == "fine\n"
    c.close()
    api(gw, "DELETE", f"/api/kernels/{kid}")


def test_oversized_frame_is_refused(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--max-body-bytes", "65536"]).start()
    kid = new_kernel(g)
    c = ws(g, kid)
    c.execute("state = 1")
    big = ws(g, kid)
    msg_code = "x = '" + "a" * 200000 + "'"
    try:
        big.start(msg_code)
        code = big.wait_closed(timeout=10)
    except (BrokenPipeError, ConnectionResetError, websocket.WebSocketConnectionClosedException):
        code = big.close_code
    assert code in (1009, None), code  # "message too big" (None: reset while still sending)
    assert stdout_of(c.execute("print(state, 'x' in globals())")[1]) == "1 False\n"
    c.close()


# ---- resources ---------------------------------------------------------------------------


def gateway_mem_kb(g, field):
    with open(f"/proc/{g.proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.rss
def test_slow_client_cannot_grow_gateway_memory(make_gateway):
    g = make_gateway(["--min-idle-workers", "1"]).start()
    u = uid()
    kid = g.execute(u, "import sys, time").json()["kernel_id"]
    slow = ws(g, kid)
    slow.execute("1")  # connected and flowing; from now on it reads nothing
    base = gateway_mem_kb(g, "VmRSS")
    # 100 MB of output from an agent's /execute, paced (<= 12.5 MB/s) so that the gateway
    # itself keeps up: what could pile up is only what this WebSocket client does not read.
    code = ("chunk = 'z' * (128 << 10)\n"
            "for i in range(800):\n"
            "    sys.stdout.write(chunk); sys.stdout.flush(); time.sleep(0.01)\n"
            "print('done')")
    r = g.execute(u, code, timeout_ms=170000)
    assert r.status_code == 200 and r.json()["error"] is None, r.text[:500]
    peak = gateway_mem_kb(g, "VmHWM")
    # Bounded by the per-client limits (8 MiB of output, 32 MiB in all), not by 100 MB.
    assert peak - base < 60 * 1024, (base, peak)
    # The slow client is still connected, was told about the dropped output, and gets the
    # status that ends the execution, so its frontend does not wait forever.
    assert api(g, "GET", f"/api/kernels/{kid}").json()["connections"] == 1
    notice = slow.wait_for(lambda m: m["header"]["msg_type"] == "stream" and
                           m["content"]["name"] == "stderr" and
                           "dropped" in m["content"]["text"], timeout=120, what="drop notice")
    assert notice["parent_header"]["msg_type"] == "execute_request"
    slow.wait_for(lambda m: m["header"]["msg_type"] == "status" and
                  m["content"]["execution_state"] == "idle" and
                  m["parent_header"].get("msg_id") == notice["parent_header"]["msg_id"],
                  timeout=120, what="idle of the execution")
    received = sum(len(m["content"].get("text", "")) for m in slow.seen
                   if m["header"]["msg_type"] == "stream")
    assert received < 90 << 20
    # Caught up, it gets everything again.
    assert stdout_of(slow.execute("print('caught up')")[1]) == "caught up\n"
    slow.close()


def test_idle_rule_same_for_both_apis(make_gateway):
    g = make_gateway(["--min-idle-workers", "1", "--idle-timeout-s", "2"]).start()
    idle_kid = new_kernel(g)
    watched_kid = new_kernel(g)
    c = ws(g, watched_kid)
    u = uid()
    agent_kid = g.execute(u, "a = 1").json()["kernel_id"]
    watched_agent = ws(g, agent_kid)
    time.sleep(5)
    # No execution and no WebSocket: released. An open WebSocket keeps either kind alive.
    assert api(g, "GET", f"/api/kernels/{idle_kid}").status_code == 404
    assert api(g, "GET", f"/api/kernels/{watched_kid}").status_code == 200
    assert api(g, "GET", f"/api/kernels/{agent_kid}").status_code == 200
    assert stdout_of(watched_agent.execute("print(a)")[1]) == "1\n"
    r = g.execute(u, "print(a)")
    assert r.json()["stdout"] == "1\n" and r.json()["session_reset"] is False
    # Once the last WebSocket closes, the same rule applies.
    c.close()
    watched_agent.close()
    time.sleep(5)
    assert api(g, "GET", f"/api/kernels/{watched_kid}").status_code == 404
    assert api(g, "GET", f"/api/kernels/{agent_kid}").status_code == 404
    r = g.execute(u, "print('a' in globals())")
    assert r.json()["stdout"] == "False\n" and r.json()["session_reset"] is True


def test_pool_full_is_a_clear_503(make_gateway):
    g = make_gateway(["--min-idle-workers", "0", "--max-total-workers", "1",
                      "--acquire-timeout-ms", "4000"]).start()
    kid = new_kernel(g)
    t0 = time.time()
    r = api(g, "POST", "/api/kernels", json={"name": "python3"})
    took = time.time() - t0
    assert r.status_code == 503, r.text
    assert took < 10
    assert r.headers.get("Retry-After")
    assert "error" in r.json()
    ids = [k["id"] for k in api(g, "GET", "/api/kernels").json()]
    assert ids == [kid]  # the refused kernel left nothing behind
    # The freed slot serves the next create (its worker starts once the old one is gone).
    assert api(g, "DELETE", f"/api/kernels/{kid}").status_code == 204
    assert new_kernel(g)


def test_pool_full_answers_well_inside_40s_by_default(make_gateway):
    # jupyter_server's gateway client gives up after 42 s: the default must answer first.
    g = make_gateway(["--min-idle-workers", "0", "--max-total-workers", "1"]).start()
    new_kernel(g)
    t0 = time.time()
    r = api(g, "POST", "/api/kernels", json={"name": "python3"}, timeout=60)
    assert r.status_code == 503
    assert time.time() - t0 < 36  # the default acquire timeout, 30 s, plus slack


def test_dead_status_when_no_worker_can_be_had(make_gateway):
    # One worker in all, and no time for a replacement to appear (the native kernel can
    # start within a few hundred ms, so any wait would race it): when the kernel dies, the
    # client hears "restarting", then "dead" from the gateway.
    g = make_gateway(["--min-idle-workers", "1", "--max-total-workers", "1",
                      "--acquire-timeout-ms", "0"]).start()
    g.wait_status(lambda s: s["idle_workers"] == 1, timeout=60)
    a = new_kernel(g)
    c = ws(g, a)
    c.execute("1")
    c.start("import os; os._exit(1)")
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "restarting", what="restarting")
    c.wait_for(lambda m: m["header"]["msg_type"] == "status" and
               m["content"]["execution_state"] == "dead", timeout=20, what="dead")
    assert api(g, "GET", f"/api/kernels/{a}").json()["execution_state"] == "dead"
    c.close()
