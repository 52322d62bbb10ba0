"""Hostile code against the native kernel: it keeps serving, or it dies in a way its
client (the gateway: the init's pidfd; Jupyter: the process) sees at once, never hangs.

Each test that kills the kernel gets a kernel of its own."""
import os
import signal
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


@pytest.fixture
def fresh():
    kern = Kernel()
    yield kern
    kern.close()


def alive(k):
    reply, out = k.execute("1 + 1", timeout=10)
    return reply["status"] == "ok" and of_type(out, "execute_result")[0]["content"]["data"][
        "text/plain"] == "2"


def test_close_stdout_and_stderr(k):
    reply, _ = k.execute("import os; os.close(1); os.close(2)")
    assert reply["status"] == "ok"
    # The pipes are put back before the next cell: output works again, at the fd level too.
    reply, out = k.execute("import os, sys; print('back'); os.write(2, b'raw err\\n')")
    assert reply["status"] == "ok"
    assert "back" in stream_text(out)
    assert "raw err" in stream_text(out, "stderr")
    assert alive(k)


def test_replace_sys_stdout(k):
    reply, out = k.execute("import io, sys; sys.stdout = io.StringIO(); print('hidden')")
    assert reply["status"] == "ok" and "hidden" not in stream_text(out)
    assert alive(k)
    reply, out = k.execute("sys.stdout = None; print('nowhere'); 3")
    assert reply["status"] == "ok"
    reply, out = k.execute("sys.stdout = sys.__stdout__; print('restored')")
    assert "restored" in stream_text(out)


def test_fork(k):
    code = ("import os\npid = os.fork()\nif pid == 0:\n    print('in child', flush=True)\n"
            "else:\n    os.waitpid(pid, 0)\n    print('in parent')\npid")
    reply, out = k.execute(code)
    assert reply["status"] == "ok"
    text = stream_text(out)
    assert "in child" in text and "in parent" in text
    # Only the parent publishes (the child's display hook has no kernel behind it).
    assert len(of_type(out, "execute_result")) == 1
    # The child left the cell and exited: no process of ours but the kernel is left.
    time.sleep(0.5)
    reply, out = k.execute("import os; print(sorted(os.listdir('/proc/self/task')) != [] , "
                           "os.waitpid(-1, os.WNOHANG) if False else 'ok')")
    assert alive(k)


def test_pid_after_fork_and_spawn(k):
    # The kernel answers getpid() from memory (common/pidcache.c): a fork's child must see its
    # own pid, and a vfork-style spawn (subprocess) must leave the parent's intact.
    code = ("import os, subprocess\n"
            "def real(): return int(os.readlink('/proc/self'))\n"
            "r, w = os.pipe()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.write(w, b'%d %d' % (os.getpid(), real()))\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "child_saw, child_real = map(int, os.read(r, 100).split())\n"
            "sh = int(subprocess.run(['sh', '-c', 'echo $$ $PPID'], capture_output=True,"
            " text=True).stdout.split()[1])\n"
            "print(child_saw == child_real == pid, os.getpid() == real() == sh)")
    reply, out = k.execute(code)
    assert reply["status"] == "ok", reply
    assert stream_text(out).strip() == "True True"


def test_bad_messages_then_a_good_one(k):
    # Messages signed with another key are dropped, and a request queued behind them is still
    # served. The kernel is stopped while they arrive, so it finds them all at once: more of
    # them than it skips per receive, so its look again after that bound is needed too.
    from jupyter_client.session import Session
    forger = Session(key=b"not the kernel's key", signature_scheme="hmac-sha256")
    pid = k.kernel_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(100):
            forger.send(k.kc.shell_channel.socket, "execute_request",
                        {"code": "print('forged')", "silent": False})
        msg_id = k.kc.execute("40 + 2")
    finally:
        os.kill(pid, signal.SIGCONT)
    reply, out = k.collect(msg_id, timeout=10)
    assert reply["status"] == "ok"
    assert of_type(out, "execute_result")[0]["content"]["data"]["text/plain"] == "42"
    assert "forged" not in stream_text(out)


def test_fork_child_that_keeps_running(k):
    code = ("import os, time\nif os.fork() == 0:\n    time.sleep(0.3)\n    print('late child')\n"
            "    os._exit(0)\n'parent done'")
    reply, out = k.execute(code)
    assert reply["status"] == "ok"
    # The child's output arrives after idle, under the same parent.
    m = k.iopub_until(lambda m: m["msg_type"] == "stream" and "late child" in m["content"]["text"])
    assert m is not None
    assert alive(k)


def test_fork_in_a_task_between_cells(k):
    """os.fork() in an asyncio task while the kernel is idle: the child finishes the pass of
    the loop it is in and ends at once (it has no kernel to serve; left running, it would sleep
    on the loop's epoll instance, which it shares with the parent), and the parent's loop keeps
    serving. A task of the parent's reaps it, so a cell sees whether it ended before any
    request."""
    reply, _ = k.execute(
        "import asyncio, os, time\n"
        "pids, ended = [], []\n"
        "async def forker():\n"
        "    await asyncio.sleep(0.1)\n"
        "    pid = os.fork()\n"
        "    if pid:\n"
        "        pids.append(pid)\n"
        "async def reaper():\n"  # also keeps the parent's loop running between cells
        "    while True:\n"
        "        await asyncio.sleep(0.02)\n"
        "        if pids and not ended and os.waitpid(pids[0], os.WNOHANG)[0]:\n"
        "            ended.append(time.monotonic())\n"
        "t1, t2 = asyncio.ensure_future(forker()), asyncio.ensure_future(reaper())")
    assert reply["status"] == "ok"
    time.sleep(1)
    for _ in range(3):
        reply, out = k.execute("t = time.monotonic()\nprint(len(pids), len(ended), ended[0] < t)",
                               timeout=10)
        assert reply["status"] == "ok", reply
        assert stream_text(out) == "1 1 True\n"
    k.execute("t2.cancel()")
    assert alive(k)


def test_interrupt_storm_between_requests(tmp_path):
    """SIGINT lands anywhere between requests, also outside the poll() it usually
    interrupts: while the Python thread reads its sockets or runs a pass of the asyncio loop
    (a task keeps it busy). Each is discarded there, without the kernel taking it for a broken
    message or a failed loop, and the loop keeps running after the storm (its task's output
    still arrives with no request to wake the kernel)."""
    log_path = tmp_path / "kernel.log"
    with open(log_path, "w") as log:
        kern = Kernel(stderr=log)
    try:
        pid = kern.kernel_pid()
        reply, _ = kern.execute("import asyncio\nasync def tick():\n    n = 0\n"
                                "    while True:\n        n += 1\n"
                                "        if n % 50 == 0:\n            print('tick', flush=True)\n"
                                "        await asyncio.sleep(0.002)\n"
                                "t = asyncio.create_task(tick())")
        assert reply["status"] == "ok"
        time.sleep(0.3)
        for _ in range(2000):
            os.kill(pid, signal.SIGINT)
            time.sleep(0.0005)
        calm = time.time() + 0.1
        m = kern.iopub_until(lambda m: m["msg_type"] == "stream"  # sent after the storm
                             and m["header"]["date"].timestamp() > calm, timeout=20)
        assert m is not None and m["content"]["text"] == "tick\n", m
        reply, out = kern.execute("t.done()")
        assert of_type(out, "execute_result")[0]["content"]["data"]["text/plain"] == "False"
    finally:
        kern.close()
    text = log_path.read_text()
    assert "asyncio loop" not in text and "rejected message" not in text, text


def test_recursion_bomb(k):
    reply, out = k.execute("def f(): return f()\nf()")
    assert reply["status"] == "error" and reply["ename"] == "RecursionError"
    assert alive(k)


def test_deep_c_recursion_dies_visibly(fresh):
    # Past the interpreter's guard the C stack overflows (repr of a deeply nested list
    # recurses in C): the kernel dies, and says so.
    code = ("import sys\nsys.setrecursionlimit(10**8)\nl = []\nfor i in range(10**7):\n"
            "    l = [l]\nrepr(l)")
    fresh.kc.execute(code)
    rc = fresh.wait_dead(60)
    assert rc is not None, "kernel neither survived nor died"
    assert rc == 128 + signal.SIGSEGV


def test_os_exit(fresh):
    fresh.kc.execute("import os; os._exit(3)")
    assert fresh.wait_dead(10) == 3


def test_segfault(fresh):
    fresh.kc.execute("import ctypes; ctypes.string_at(0)")
    assert fresh.wait_dead(10) == 128 + signal.SIGSEGV


def test_closing_every_fd_dies_visibly(fresh):
    # The kernel's own sockets, eventfds and pipes go too: it cannot serve any more, so it
    # must end (libzmq aborts on its lost mailbox) rather than hang with its client waiting.
    t0 = time.time()
    fresh.kc.execute("import os\nfor fd in range(3, 4096):\n    try:\n        os.close(fd)\n"
                     "    except OSError:\n        pass")
    assert fresh.wait_dead(10) is not None
    assert time.time() - t0 < 10


def test_sys_exit_is_caught(k):
    reply, out = k.execute("import sys; sys.exit(4)")
    assert reply["status"] == "error" and reply["ename"] == "SystemExit"
    assert alive(k)


def test_endless_loop_that_eats_interrupts(fresh):
    code = ("import time\nwhile True:\n    try:\n        time.sleep(0.01)\n"
            "    except KeyboardInterrupt:\n        pass")
    msg_id = fresh.kc.execute(code)
    time.sleep(0.5)
    fresh.km.interrupt_kernel()
    time.sleep(0.5)
    # Still busy, but heartbeat and control are served (neither needs the GIL).
    assert fresh.kc.hb_channel.is_beating()
    m = fresh.control("kernel_info_request")
    assert m is not None and m["content"]["status"] == "ok"
    m = fresh.control("interrupt_request")
    assert m is not None and m["msg_type"] == "interrupt_reply"
    # A shutdown request ends it within the grace period, without a kill.
    t = time.time()
    m = fresh.control("shutdown_request", {"restart": False})
    assert m is not None and m["msg_type"] == "shutdown_reply"
    assert fresh.wait_dead(10) == 0
    assert time.time() - t < 5


def test_output_flood_is_bounded(k):
    pid = k.process.pid
    reply, out = k.execute("for i in range(200000):\n    print('x' * 99)", timeout=120)
    assert reply["status"] == "ok"
    got = len(stream_text(out))
    assert got == 200000 * 100
    assert alive(k)


@pytest.mark.parametrize("handler", ["SIG_IGN", "SIG_DFL"])
def test_sigint_handler_of_a_previous_cell_is_replaced(fresh, handler):
    # As ipykernel: Python's handler is back before each cell, so an interrupt is a
    # KeyboardInterrupt (SIG_IGN made every later cell uninterruptible; SIG_DFL let an
    # interrupt kill the kernel).
    fresh.execute(f"import signal; signal.signal(signal.SIGINT, signal.{handler})")
    t0 = time.time()
    msg_id = fresh.kc.execute("import time; time.sleep(30)")
    time.sleep(0.5)
    fresh.km.interrupt_kernel()
    reply, out = fresh.collect(msg_id, timeout=10)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    assert time.time() - t0 < 5
    assert alive(fresh)
    # Set inside the running cell, SIG_IGN holds for that cell: control still ends it.
    fresh.kc.execute("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                     "time.sleep(60)")
    time.sleep(0.3)
    fresh.km.interrupt_kernel()
    assert fresh.kc.hb_channel.is_beating()
    m = fresh.control("shutdown_request", {"restart": False})
    assert m is not None
    assert fresh.wait_dead(10) == 0


def test_partial_lines_flow_while_the_cell_runs(k):
    """Output without a newline reaches iopub while the cell runs (flushed every 0.2 s, as
    ipykernel does), not at the cell's end."""
    code = ("import sys, time\nfor i in range(3):\n    print(i, end=' ')\n    time.sleep(0.6)\n"
            "sys.stderr.write('E')\ntime.sleep(0.6)")
    t0 = time.time()
    reply, out = k.execute(code)
    end = time.time() - t0
    streams = [(m["received"] - t0, m["content"]["name"], m["content"]["text"])
               for m in out if m["msg_type"] == "stream"]
    assert "".join(x for _, n, x in streams if n == "stdout") == "0 1 2 ", streams
    assert "".join(x for _, n, x in streams if n == "stderr") == "E", streams
    first = next(t for t, n, x in streams if "0" in x)
    err = next(t for t, n, x in streams if n == "stderr")
    assert first < 1.0 and end > 2.2, (first, end, streams)
    assert err < end - 0.2, (err, end, streams)


def test_partial_line_of_a_thread_after_idle(k):
    code = ("import threading, time\ndef late():\n    time.sleep(0.5)\n"
            "    print('late-nonl', end='')\nthreading.Thread(target=late).start()")
    msg_id = k.kc.execute(code)
    k.collect(msg_id)
    m = k.iopub_until(lambda m: m["msg_type"] == "stream" and "late-nonl" in m["content"]["text"],
                      timeout=5)
    assert m is not None, "a thread's partial line waited for the next cell"
    assert m["parent_header"]["msg_id"] == msg_id


def test_many_threads_printing_after_idle(k):
    code = ("import threading, time\n"
            "def w(i):\n    time.sleep(0.2)\n    print('thread', i)\n"
            "for i in range(8):\n    threading.Thread(target=w, args=(i,)).start()")
    reply, out = k.execute(code)
    assert reply["status"] == "ok"
    seen = set()
    deadline = time.time() + 10
    while len(seen) < 8 and time.time() < deadline:
        m = k.iopub_until(lambda m: m["msg_type"] == "stream", timeout=1)
        if m:
            for line in m["content"]["text"].splitlines():
                if line.startswith("thread "):
                    seen.add(line)
    assert len(seen) == 8


def test_interrupt_during_start():
    # The kernel answers kernel_info before IPython is imported; an interrupt that comes
    # while it still starts must neither kill it nor leak into the first cell.
    kern = Kernel()
    try:
        kern.km.interrupt_kernel()
        time.sleep(0.05)
        kern.km.interrupt_kernel()
        reply, out = kern.execute("'started'", timeout=60)
        assert reply["status"] == "ok"
        assert alive(kern)
    finally:
        kern.close()


def _smaps_kb(pid, field):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def test_big_heap_comes_back(fresh):
    """Python's small objects live on the kernel's huge-page arenas (karena.c): user code that
    fills and frees a large heap gets its memory back to the system, and the heap is mapped by
    huge pages where the host has them."""
    pid = fresh.kernel_pid()
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp = "[never]" not in f.read()
    if thp:
        assert _smaps_kb(pid, "AnonHugePages") >= 2048
    reply, _ = fresh.execute("import gc; gc.collect()")
    base = _smaps_kb(pid, "Rss")
    reply, _ = fresh.execute("xs = [(i, str(i)) for i in range(2_000_000)]", timeout=60)
    assert reply["status"] == "ok"
    grown = _smaps_kb(pid, "Rss")
    assert grown > base + 150 * 1024, (base, grown)
    reply, _ = fresh.execute("del xs; gc.collect()")
    assert reply["status"] == "ok"
    back = _smaps_kb(pid, "Rss")
    assert back < base + 20 * 1024, (base, grown, back)
    assert alive(fresh)


def test_address_space_limit_leaves_the_kernel_working(fresh):
    """Code that caps its own address space (RLIMIT_AS, as test suites and careful scripts do)
    keeps a working kernel: the heap's arenas map address space as they need it, not ahead."""
    code = ("import resource\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, hard))\n"
            "b = bytearray(100 << 20)\n"
            "xs = [str(i) for i in range(500_000)]\n"
            "print(len(b), len(xs))\n"
            "del b, xs\n"
            "resource.setrlimit(resource.RLIMIT_AS, (soft, hard))\n")
    reply, out = fresh.execute(code, timeout=60)
    assert reply["status"] == "ok", reply
    assert stream_text(out) == "104857600 500000\n"
    assert alive(fresh)
