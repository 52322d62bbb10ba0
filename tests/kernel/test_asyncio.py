"""asyncio in cells, as ipykernel gives it: one event loop for the kernel's life, running
between cells (background tasks and timers keep going while the kernel is idle), seen as
running by synchronous cells, shared by `await` cells. Every test runs against the native
kernel and against ipykernel, the reference, so the expectations are ipykernel's own."""
import os
import sys
import time

import pytest
from jupyter_client.manager import start_new_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Kernel, of_type, stream_text  # noqa: E402


class Ipykernel(Kernel):
    def __init__(self):  # noqa: super().__init__ installs the native kernel's spec
        self.km, self.kc = start_new_kernel(kernel_name="python3", startup_timeout=60)


@pytest.fixture(scope="module", params=["native", "ipykernel"])
def k(request):
    kern = Kernel() if request.param == "native" else Ipykernel()
    kern.name = request.param
    yield kern
    kern.close()


def value(k, code):
    reply, out = k.execute(code)
    assert reply["status"] == "ok", (reply, out)
    r = of_type(out, "execute_result")
    assert len(r) == 1, out
    return r[0]["content"]["data"]["text/plain"]


def test_task_keeps_running_between_cells(k):
    """A task made in a synchronous cell runs while the kernel is idle, and in `await`
    cells, on the same loop."""
    k.execute("import asyncio, time\n"
              "ticks = []\n"
              "async def ticker():\n"
              "    while True:\n"
              "        ticks.append(1)\n"
              "        await asyncio.sleep(0.02)\n"
              "task = asyncio.create_task(ticker())")
    time.sleep(0.5)  # idle: no request reaches the kernel meanwhile
    idle_ticks = int(value(k, "len(ticks)"))
    assert idle_ticks >= 5, idle_ticks
    # a synchronous cell blocks the loop, as it does in ipykernel
    assert value(k, "n0 = len(ticks); time.sleep(0.3); len(ticks) - n0") == "0"
    more = int(value(k, "n1 = len(ticks)\nawait asyncio.sleep(0.3)\nlen(ticks) - n1"))
    assert more >= 3, more
    assert value(k, "task.cancel()") == "True"
    time.sleep(0.2)
    assert value(k, "n2 = len(ticks); task.cancelled(), len(ticks) - n2") == "(True, 0)"


def test_synchronous_cell_sees_a_running_loop(k):
    assert value(k, "import asyncio\n"
                 "loop = asyncio.get_event_loop()\n"
                 "loop.is_running(), asyncio.get_running_loop() is loop") == "(True, True)"
    assert value(k, "async def where():\n"
                 "    return asyncio.get_running_loop()\n"
                 "(await where()) is loop") == "True"
    # ...so code that would start a loop of its own is told so, in ipykernel's words
    reply, out = k.execute("async def five():\n    return 5\nasyncio.run(five())")
    assert reply["status"] == "error"
    assert reply["evalue"] == "asyncio.run() cannot be called from a running event loop"
    reply, out = k.execute("loop.run_until_complete(five())")
    assert reply["status"] == "error" and "already running" in reply["evalue"], reply
    reply, out = k.execute("loop.close()")
    assert reply["status"] == "error" and "running event loop" in reply["evalue"], reply
    assert value(k, "await five()") == "5"
    # the usual workaround for libraries that call asyncio.run() works as in ipykernel
    assert value(k, "import nest_asyncio\nnest_asyncio.apply()\nasyncio.run(five())") == "5"


def test_timer_output_arrives_while_idle(k):
    reply, out = k.execute("import asyncio\n"
                           "asyncio.get_event_loop().call_later(0.3, print, 'later')\n"
                           "print('now')")
    assert stream_text(out) == "now\n"
    m = k.iopub_until(lambda m: m["msg_type"] == "stream", timeout=10)
    assert m is not None, "the timer's print never arrived"
    assert m["content"]["text"] == "later\n"


def test_a_thread_wakes_the_idle_loop(k):
    """call_soon_threadsafe from a thread reaches the loop with no request to wake it."""
    k.execute("import asyncio, threading, time\n"
              "loop = asyncio.get_event_loop()\n"
              "async def hello():\n"
              "    print('from the loop')\n"
              "def later():\n"
              "    time.sleep(0.3)\n"
              "    asyncio.run_coroutine_threadsafe(hello(), loop)\n"
              "threading.Thread(target=later).start()")
    m = k.iopub_until(lambda m: m["msg_type"] == "stream", timeout=10)
    assert m is not None, "the coroutine never ran"
    assert m["content"]["text"] == "from the loop\n"


def test_interrupt_while_idle_spares_a_busy_task(k):
    """An interrupt outside a request does nothing, even while a task holds the loop (it
    may be late for the cell it was meant for); control requests are served meanwhile."""
    k.execute("import asyncio, time\n"
              "done = []\n"
              "async def busy():\n"
              "    time.sleep(1.5)\n"
              "    done.append('finished')\n"
              "t = asyncio.ensure_future(busy())")
    time.sleep(0.3)
    info = k.control("kernel_info_request")
    assert info is not None and info["content"]["status"] == "ok"
    k.km.interrupt_kernel()
    deadline = time.time() + 10
    while value(k, "done") != "['finished']":
        assert time.time() < deadline
        time.sleep(0.1)
    assert value(k, "t.done() and t.exception() is None") == "True"


def test_task_exception_is_reported(k):
    """An exception no one retrieves is logged by asyncio on the kernel's stderr, which
    reaches the frontend as it does with ipykernel."""
    k.execute("import asyncio, gc\n"
              "async def fails():\n"
              "    raise ValueError('in a task')\n"
              "t = asyncio.ensure_future(fails())")
    time.sleep(0.3)
    reply, out = k.execute("del t; gc.collect()")
    err = stream_text(out, "stderr")
    assert "Task exception was never retrieved" in err and "ValueError: in a task" in err, out


def test_far_timer_does_not_disturb(k):
    """A timer further away than poll() can wait (a C int of milliseconds) leaves the loop
    working: a thread's call_soon_threadsafe still wakes it."""
    k.execute("import asyncio, threading, time\n"
              "loop = asyncio.get_event_loop()\n"
              "far = loop.call_later(1e9, print, 'never')\n"
              "def later():\n"
              "    time.sleep(0.3)\n"
              "    loop.call_soon_threadsafe(print, 'woken')\n"
              "threading.Thread(target=later).start()")
    m = k.iopub_until(lambda m: m["msg_type"] == "stream", timeout=10)
    assert m is not None and m["content"]["text"] == "woken\n"
    assert value(k, "far.cancel(); 1 + 1") == "2"
