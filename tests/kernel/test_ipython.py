"""IPython semantics and protocol behaviour of the native kernel beyond the conformance
suite: rich output, magics, errors, pager, payloads, streaming, interrupts (signal and
message mode), stop_on_error, restart."""
import os
import re
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Kernel, of_type, stream_text  # noqa: E402


@pytest.fixture(scope="module")
def k():
    kern = Kernel()
    yield kern
    kern.close()


def result(out):
    r = of_type(out, "execute_result")
    assert len(r) == 1, out
    return r[0]["content"]


def test_last_expression_and_count(k):
    reply, out = k.execute("a = 20\na + 22")
    assert reply["status"] == "ok"
    r = result(out)
    assert r["data"]["text/plain"] == "42"
    assert r["execution_count"] == reply["execution_count"]
    inp = of_type(out, "execute_input")[0]["content"]
    assert inp["execution_count"] == reply["execution_count"]
    reply2, _ = k.execute("a")
    assert reply2["execution_count"] == reply["execution_count"] + 1
    # silent: no execute_input, no result, the count does not move
    reply3, out3 = k.execute("a", silent=True)
    assert not of_type(out3, "execute_input") and not of_type(out3, "execute_result")
    reply4, _ = k.execute("a")
    assert reply4["execution_count"] == reply2["execution_count"] + 1
    # `_` is the last displayed value (a silent cell displays nothing)
    reply, out = k.execute("_ + 1")
    assert result(out)["data"]["text/plain"] == "21"


def test_input_output_history_variables(k):
    """IPython's per-cell bookkeeping, as ipykernel shows it (values taken from ipykernel
    6.17 with the same cells): input history _i/_ii/_iii/_iN/In, output history
    Out/_N/_/__, and the shell's last execution result and status."""
    reply, _ = k.execute("v = 6 * 7\nv")
    n = reply["execution_count"]
    k.execute("'second'")
    k.execute("w = 1")
    reply, out = k.execute(
        f"(_i, _ii, _iii, _i{n}, In[{n}], Out[{n}], _{n}, _, __, "
        "get_ipython().last_execution_succeeded, "
        f"get_ipython().last_execution_result.execution_count - {n}, "
        "get_ipython().last_execution_result.result)")
    assert eval(result(out)["data"]["text/plain"]) == (
        "w = 1", "'second'", "v = 6 * 7\nv", "v = 6 * 7\nv", "v = 6 * 7\nv", 42, 42, "second",
        42, True, 2, None)
    k.execute("1/0")
    reply, out = k.execute("ip = get_ipython(); (ip.last_execution_succeeded, "
                           "type(ip.last_execution_result.error_in_exec).__name__, "
                           "ip.history_manager._i)")
    assert eval(result(out)["data"]["text/plain"]) == (False, "ZeroDivisionError", "1/0")
    k.execute("v + 1")
    reply, out = k.execute("get_ipython().last_execution_result.result, _, "
                           "get_ipython().displayhook.exec_result is not None")
    assert eval(result(out)["data"]["text/plain"]) == (43, 43, True)


def test_pandas_html(k):
    reply, out = k.execute("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    assert reply["status"] == "ok"
    data = result(out)["data"]
    assert "<table" in data["text/html"] and "text/plain" in data


def test_matplotlib_png(k):
    code = ("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\n"
            "plt.title('t')\nNone")
    reply, out = k.execute(code, timeout=60)
    assert reply["status"] == "ok", reply
    disp = of_type(out, "display_data")
    assert disp, out
    png = disp[0]["content"]["data"]["image/png"]
    import base64
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_display_update_and_clear(k):
    code = ("from IPython.display import display, update_display, clear_output\n"
            "h = display('first', display_id='d1')\nupdate_display('second', display_id='d1')\n"
            "clear_output(wait=True)")
    reply, out = k.execute(code)
    types = [m["msg_type"] for m in out if m["msg_type"] != "execute_input"]
    assert types == ["display_data", "update_display_data", "clear_output"], types
    assert out[1]["content"]["transient"] == {"display_id": "d1"}
    assert of_type(out, "update_display_data")[0]["content"]["data"]["text/plain"] == "'second'"
    assert of_type(out, "clear_output")[0]["content"]["wait"] is True


def test_magics(k):
    reply, out = k.execute("%timeit -n 10 -r 2 sum(range(100))", timeout=60)
    assert reply["status"] == "ok" and "loops" in stream_text(out)
    reply, out = k.execute("%%time\nx = sum(range(1000))")
    assert reply["status"] == "ok" and "Wall time" in stream_text(out)
    reply, out = k.execute("!echo from-shell; echo to-err >&2")
    assert reply["status"] == "ok" and "from-shell" in stream_text(out)
    reply, out = k.execute("files = !echo a b\nfiles")
    assert "a b" in result(out)["data"]["text/plain"]
    reply, out = k.execute("%who_ls")
    assert reply["status"] == "ok"


def test_error_formatting(k):
    reply, out = k.execute("def g():\n    return 1 / 0\ng()")
    assert reply["status"] == "error"
    assert reply["ename"] == "ZeroDivisionError" and reply["evalue"] == "division by zero"
    err = of_type(out, "error")
    assert len(err) == 1 and err[0]["content"]["traceback"] == reply["traceback"]
    tb = "\n".join(reply["traceback"])
    assert "\x1b[" in tb  # IPython's colours, as ipykernel sends them
    plain = re.sub("\x1b\\[[0-9;]*m", "", tb)
    assert "ZeroDivisionError" in plain and "----> 3 g()" in plain and "return 1 / 0" in plain
    reply, out = k.execute("def (")
    assert reply["status"] == "error" and reply["ename"] == "SyntaxError"


def test_pager_payload(k):
    reply, out = k.execute("zip?")
    assert reply["status"] == "ok"
    payload = reply["payload"]
    assert len(payload) == 1 and payload[0]["source"] == "page"
    assert "text/plain" in payload[0]["data"]
    reply, _ = k.execute("get_ipython().set_next_input('x = 1')")
    assert reply["payload"][0]["source"] == "set_next_input"
    reply, _ = k.execute("1")
    assert reply["payload"] == []


def test_user_expressions(k):
    reply, _ = k.execute("q = 5", user_expressions={"double": "q * 2", "bad": "1/0"})
    ue = reply["user_expressions"]
    assert ue["double"]["status"] == "ok" and ue["double"]["data"]["text/plain"] == "10"
    assert ue["bad"]["status"] == "error" and ue["bad"]["ename"] == "ZeroDivisionError"


def test_shell_identity(k):
    reply, out = k.execute("import sys, IPython\n"
                           "print(get_ipython().__class__.__name__, sys.executable, "
                           "'' in sys.path, IPython.__version__ > '8')")
    assert stream_text(out).split() == ["ZMQInteractiveShell", "/usr/bin/python3", "True", "True"]


def test_streaming_while_running(k):
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)"
    t0 = time.time()
    reply, out = k.execute(code)
    streams = of_type(out, "stream")
    assert stream_text(out) == "0\n1\n2\n"
    assert streams[0]["received"] - t0 < 0.35, "first output only at the end"
    # fd-level output of a child process streams too
    t0 = time.time()
    reply, out = k.execute("import subprocess\n"
                           "subprocess.run('echo one; sleep 0.6; echo two', shell=True)")
    first = [m for m in of_type(out, "stream") if "one" in m["content"]["text"]][0]
    assert first["received"] - t0 < 0.45
    assert "two" in stream_text(out)


def test_output_order(k):
    code = ("import os, sys\nprint('a')\nfrom IPython.display import display\n"
            "display('b')\nos.write(1, b'c\\n')\ndisplay('d')\nprint('e')\n'f'")
    reply, out = k.execute(code)
    seq = []
    for m in out:
        if m["msg_type"] == "stream":
            seq += m["content"]["text"].split()
        elif m["msg_type"] in ("display_data", "execute_result"):
            seq.append(m["content"]["data"]["text/plain"].strip("'"))
    assert seq == ["a", "b", "c", "d", "e", "f"], seq


def test_partial_utf8_at_the_end_stays_in_its_cell(k):
    # A cut-off multi-byte character at a cell's end is shown (as U+FFFD) before that cell's
    # idle; a character split across two writes within a cell stays whole.
    reply, out = k.execute("import os\nos.write(1, b'ab\\xe2\\x82')")
    assert stream_text(out) == "ab\ufffd", out
    reply, out = k.execute("import os\nos.write(1, b'x\\xe2\\x82'); os.write(1, b'\\xac\\n')")
    assert stream_text(out) == "x\u20ac\n", out


def test_interrupt_signal_mode(k):
    t0 = time.time()
    msg_id = k.kc.execute("import time; time.sleep(30)")
    time.sleep(0.5)
    k.km.interrupt_kernel()
    reply, out = k.collect(msg_id, timeout=10)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.time() - t0 < 5
    # a shell command is interrupted too
    msg_id = k.kc.execute("!sleep 30")
    time.sleep(0.8)
    k.km.interrupt_kernel()
    reply, out = k.collect(msg_id, timeout=10)
    assert time.time() - t0 < 15
    # and an interrupt while idle does not leak into the next cell
    k.km.interrupt_kernel()
    time.sleep(0.3)
    reply, out = k.execute("'still fine'")
    assert reply["status"] == "ok"


def test_interrupt_message_mode():
    kern = Kernel("kbox-native-msg", interrupt_mode="message")
    try:
        msg_id = kern.kc.execute("import time; time.sleep(30)")
        time.sleep(0.5)
        t0 = time.time()
        kern.km.interrupt_kernel()  # interrupt_request on control
        reply, out = kern.collect(msg_id, timeout=10)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert time.time() - t0 < 3
        # input() is interruptible too
        msg_id = kern.kc.execute("input('never answered')", allow_stdin=True)
        req = kern.kc.get_stdin_msg(timeout=10)
        assert req["msg_type"] == "input_request"
        kern.km.interrupt_kernel()
        reply, out = kern.collect(msg_id, timeout=10)
        assert reply["ename"] == "KeyboardInterrupt"
    finally:
        kern.close()


def test_stop_on_error_aborts_queued(k):
    ids = [k.kc.execute("import time; time.sleep(0.3); 1/0"), k.kc.execute("print('never')"),
           k.kc.execute("print('never2')", stop_on_error=False)]
    r0, _ = k.collect(ids[0])
    r1, out1 = k.collect(ids[1])
    r2, _ = k.collect(ids[2])
    assert r0["status"] == "error"
    assert r1["status"] == "aborted" and "never" not in stream_text(out1)
    assert r2["status"] == "aborted"
    reply, _ = k.execute("'runs again'")
    assert reply["status"] == "ok"


def test_comm_info_and_kernel_info_on_control(k):
    m = k.control("kernel_info_request")
    assert m["content"]["language_info"]["name"] == "python"
    m = k.control("comm_info_request")
    assert m["content"] == {"status": "ok", "comms": {}}
    msg_id = k.kc.comm_info()
    assert k.kc.get_shell_msg(timeout=5)["content"]["comms"] == {}


def test_exit_keep_kernel(k):
    reply, _ = k.execute("exit(keep_kernel=True)")
    assert reply["payload"] == [{"source": "ask_exit", "keepkernel": True}]
    reply, out = k.execute("print('still here')")
    assert stream_text(out) == "still here\n"


@pytest.mark.parametrize("code", ["exit", "quit()"])
def test_exit_ends_the_kernel(code, tmp_path):
    # As ipykernel: the reply (with the ask_exit payload) and the idle, then the process ends,
    # atexit handlers run; a frontend restarts it.
    mark = tmp_path / "atexit"
    k = Kernel()
    try:
        k.execute(f"import atexit, pathlib\natexit.register(pathlib.Path({str(mark)!r}).write_text, 'ran')")
        msg_id = k.kc.execute(code)
        reply, _ = k.collect(msg_id)
        assert reply["payload"] == [{"source": "ask_exit", "keepkernel": False}]
        assert k.wait_dead(10) == 0
        assert mark.read_text() == "ran"
    finally:
        k.close()


def test_history_in_memory(k):
    k.execute("hist_marker = 1")
    msg_id = k.kc.history(hist_access_type="search", pattern="hist_marker*", output=False,
                          raw=True)
    reply = k.kc.get_shell_msg(timeout=5)
    assert [h[2] for h in reply["content"]["history"]] == ["hist_marker = 1"]
    # range: this session (0 or its number) has it; the one before it (-1) does not exist.
    for session, found in ((0, True), (1, True), (-1, False), (2, False)):
        k.kc.history(hist_access_type="range", session=session, start=1, stop=None,
                     output=False, raw=True)
        rows = k.kc.get_shell_msg(timeout=5)["content"]["history"]
        assert ("hist_marker = 1" in [h[2] for h in rows]) is found, (session, rows)


def test_history_magics_and_api_from_memory():
    """%history -l and -g, and the history manager's get_tail and search, read the in-memory
    history as ipykernel's read its database (they returned nothing before)."""
    kern = Kernel()
    try:
        kern.execute("a = 1")
        kern.execute("b = 2")
        reply, out = kern.execute("%history -l 2")
        assert stream_text(out) == "a = 1\nb = 2\n", out
        reply, out = kern.execute("%history -g a =")
        assert stream_text(out) == "   1: a = 1\n   4: %history -g a =\n", out
        reply, out = kern.execute("hm = get_ipython().history_manager\n"
                                  "print(list(hm.get_tail(2, include_latest=True)))\n"
                                  "print(list(hm.search('b*')))\n"
                                  "print(list(hm.search('a*', n=1, output=True)))")
        lines = stream_text(out).splitlines()
        assert lines[0].startswith("[(") and "'%history -g a ='" in lines[0], lines
        assert "hm = get_ipython()" in lines[0], lines
        assert lines[1].endswith(", 2, 'b = 2')]"), lines
        assert lines[2].endswith(", 1, ('a = 1', None))]"), lines
    finally:
        kern.close()


def test_completer_made_on_first_use():
    """jedi is not imported until something needs the completer; %config then lists it
    (ipykernel shows `IPCompleter(Completer) options`), and completion works as before."""
    kern = Kernel()
    try:
        reply, out = kern.execute("import sys; 'jedi' in sys.modules")
        assert result(out)["data"]["text/plain"] == "False"
        reply, out = kern.execute("%config IPCompleter")
        assert reply["status"] == "ok", reply
        assert "IPCompleter(Completer) options" in stream_text(out), out
        reply, out = kern.execute("%config IPCompleter.greedy")
        assert result(out)["data"]["text/plain"] == "False"
        reply, out = kern.execute("'jedi' in sys.modules")
        assert result(out)["data"]["text/plain"] == "True"
        kern.execute("zebra_long_name = 1")
        msg_id = kern.kc.complete("zebra_lo", 8)
        reply = kern.kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert "zebra_long_name" in reply["content"]["matches"], reply["content"]
    finally:
        kern.close()


def test_restart():
    kern = Kernel()
    try:
        kern.execute("state = 7")
        kern.km.restart_kernel(now=False)
        kern.kc.wait_for_ready(timeout=30)
        reply, out = kern.execute("'state' in dir()")
        assert result(out)["data"]["text/plain"] == "False"
    finally:
        kern.close()


ECHO_TARGET = (
    "def _echo(comm, open_msg):\n"
    "    comm.send({'opened': open_msg['content']['data']})\n"
    "    @comm.on_msg\n"
    "    def _r(msg):\n"
    "        bufs = [bytes(b)[::-1] for b in msg['buffers']]\n"
    "        comm.send({'echo': msg['content']['data']}, buffers=bufs)\n"
    "    @comm.on_close\n"
    "    def _c(msg):\n"
    "        print('closed', msg['content']['data'])\n"
    "get_ipython().kernel.comm_manager.register_target('echo', _echo)\n"
)


def test_comms_with_buffers(k):
    import uuid
    reply, _ = k.execute(ECHO_TARGET)
    assert reply["status"] == "ok"
    cid = uuid.uuid4().hex
    s = k.kc.session
    s.send(k.kc.shell_channel.socket, "comm_open",
           {"comm_id": cid, "target_name": "echo", "data": {"x": 1}})
    m = k.iopub_until(lambda m: m["msg_type"] == "comm_msg")
    assert m["content"] == {"comm_id": cid, "data": {"opened": {"x": 1}}}
    info = k.kc.comm_info()
    assert k.kc.get_shell_msg(timeout=5)["content"]["comms"][cid] == {"target_name": "echo"}
    s.send(k.kc.shell_channel.socket, "comm_msg", {"comm_id": cid, "data": {"k": "v"}},
           buffers=[b"\x00\x01\x02", b"x" * 100000])
    m = k.iopub_until(lambda m: m["msg_type"] == "comm_msg")
    assert m["content"]["data"] == {"echo": {"k": "v"}}
    assert [bytes(b) for b in m["buffers"]] == [b"\x02\x01\x00", b"x" * 100000]
    s.send(k.kc.shell_channel.socket, "comm_close", {"comm_id": cid, "data": {"bye": 1}})
    m = k.iopub_until(lambda m: m["msg_type"] == "stream")
    assert "closed {'bye': 1}" in m["content"]["text"]
    # A kernel-side comm: comm_open from the kernel, with a buffer
    reply, out = k.execute("from kbox_kernel import Comm\n"
                           "c = Comm(target_name='t', data={'a': 1}, buffers=[b'zz'])\n"
                           "c.close()")
    opened = of_type(out, "comm_open")[0]
    assert opened["content"]["target_name"] == "t" and opened["content"]["data"] == {"a": 1}
    assert [bytes(b) for b in opened["buffers"]] == [b"zz"]
    assert of_type(out, "comm_close")
    # Code written for ipykernel's Comm class gets this kernel's.
    reply, out = k.execute("from ipykernel.comm import Comm as IC\n"
                           "IC(target_name='t2', data={}, buffers=[b'\\x00\\xff'])")
    assert reply["status"] == "ok", reply
    opened = of_type(out, "comm_open")[0]
    assert [bytes(b) for b in opened["buffers"]] == [b"\x00\xff"]


def test_pipelined_requests_none_lost(k):
    # Requests sent without waiting, mixed with control traffic and output: every one is
    # answered, in order (the socket owner must never sleep on input it has not seen).
    ids = []
    for i in range(300):
        ids.append(k.kc.execute(f"print({i})" if i % 3 else f"{i}"))
        if i % 50 == 0:
            k.kc.control_channel.send(k.kc.session.msg("kernel_info_request", {}))
    counts = []
    for mid in ids:
        reply, out = k.collect(mid, timeout=60)
        assert reply["status"] == "ok"
        counts.append(reply["execution_count"])
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_await_at_top_level(k):
    reply, out = k.execute("import asyncio\nawait asyncio.sleep(0.01)\n'awaited'")
    assert reply["status"] == "ok"
    assert result(out)["data"]["text/plain"] == "'awaited'"


def test_kernel_magics_as_ipykernel(k, tmp_path):
    """The magics ipykernel adds or changes for a kernel without a terminal (they were
    missing, or %edit failed looking for $EDITOR)."""
    f = tmp_path / "notes.txt"
    f.write_text("some notes\n")
    reply, out = k.execute(f"%edit -n 3 {f}")
    assert reply["status"] == "ok", reply
    assert reply["payload"] == [{"source": "edit_magic", "filename": str(f), "line_number": "3"}]
    k.execute("def edited():\n    return 1")
    reply, out = k.execute("%ed edited")
    assert reply["status"] == "ok" and reply["payload"][0]["source"] == "edit_magic", reply
    assert stream_text(out).startswith("Editing In["), out
    for magic in ("less", "more"):
        reply, out = k.execute(f"%{magic} {f}")
        assert reply["payload"][0]["source"] == "page", reply
        assert reply["payload"][0]["data"]["text/plain"] == "some notes\n"
    reply, out = k.execute("%autosave 30")
    assert stream_text(out) == "Autosaving every 30 seconds\n", out
    js = [m["content"]["data"] for m in out if m["msg_type"] == "display_data"]
    assert js == [{"application/javascript": "IPython.notebook.set_autosave_interval(30000)"}]
    for magic in ("qtconsole", "connect_info"):
        reply, out = k.execute(f"%{magic}")
        assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
        assert "is not available" in reply["evalue"], reply


def test_notebook_detection_idioms(k):
    """What libraries read to tell a notebook kernel from a terminal IPython (tqdm.autonotebook,
    transformers' is_notebook, plotly's renderer choice) answers as under ipykernel."""
    reply, out = k.execute("ip = get_ipython()\n"
                           "('IPKernelApp' in ip.config, type(ip).__name__, "
                           "ip.config.IPKernelApp.connection_file)")
    assert reply["status"] == "ok", reply
    assert result(out)["data"]["text/plain"] == repr(
        (True, "ZMQInteractiveShell", k.km.connection_file))
