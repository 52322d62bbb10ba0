"""iopub under back-pressure: a subscriber that reads slowly (small RCVHWM and receive buffer,
like the gateway's --kernel-queue-msgs) must get every message, in order, ending with the
request's idle; the cell that prints and displays faster than that is slowed to the reader's
pace (its writes block) instead of the kernel buffering or dropping; heartbeat and control
keep answering and an interrupt still stops a cell blocked on output.

The kernel's own client (jupyter_client's iopub channel) is closed first: with a lossless
PUB every subscriber holds the publisher back, and that one is never read here."""
import os
import sys
import time

import pytest
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Kernel  # noqa: E402

RCVHWM = 4
RCVBUF = 64 * 1024


def kernel_pid(k):
    """The kernel process (the init's child), whose memory is measured."""
    return k.kernel_pid()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class SlowSub:
    """A SUB on the kernel's iopub with a small queue; reads only when told to."""

    def __init__(self, k):
        self.k = k
        info = k.km.get_connection_info()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        self.sock.setsockopt(zmq.RCVBUF, RCVBUF)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        if info["transport"] == "ipc":
            self.sock.connect(f"ipc://{info['ip']}-{info['iopub_port']}")
        else:
            self.sock.connect(f"tcp://{info['ip']}:{info['iopub_port']}")
        self.session = k.kc.session
        # Until the subscription has reached the kernel, what it publishes goes to nobody.
        deadline = time.time() + 20
        while time.time() < deadline:
            msg_id = k.kc.execute("pass", silent=True)
            if self.until_idle(msg_id, timeout=0.5, strict=False) is not None:
                return
        raise AssertionError("the SUB never got messages")

    def recv(self, timeout):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        _, frames = self.session.feed_identities(frames)
        return self.session.deserialize(frames)

    def until_idle(self, msg_id, timeout, strict=True, pace=None, quiet=15):
        """Messages of msg_id up to (not including) its idle; None if it did not come (within
        timeout, or nothing at all came for `quiet` seconds: a lost idle)."""
        out = []
        deadline = time.time() + timeout
        last = time.time()
        n = 0
        while time.time() < deadline and time.time() - last < quiet:
            m = self.recv(0.1)
            if m is None:
                continue
            last = time.time()
            n += 1
            if pace:
                pace(n)
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "status":
                if m["content"]["execution_state"] == "idle":
                    return out
                continue
            out.append(m)
        if strict:
            raise AssertionError(f"no idle within {timeout}s, or nothing for {quiet}s "
                                 f"({len(out)} messages)")
        return None

    def close(self):
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def k():
    kern = Kernel()
    kern.kc.iopub_channel.stop()  # never read here: it would hold the kernel back
    yield kern
    kern.close()


def shell_reply(k, msg_id, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            m = k.kc.get_shell_msg(timeout=0.2)
        except Exception:
            continue
        if m["parent_header"].get("msg_id") == msg_id:
            return m["content"]
    return None


N = 12000      # lines printed, ~1 KB each
EVERY = 3      # a display_data after every EVERY-th line, ~8 KB each
PAD_LINE = 1000
PAD_DISPLAY = 8000

FLOOD = f"""
from IPython.display import display
pad, dpad = 'x' * {PAD_LINE}, 'y' * {PAD_DISPLAY}
for i in range({N}):
    print(f'line {{i:06d}} {{pad}}')
    if i % {EVERY} == 0:
        display({{'text/plain': f'd{{i:06d}} {{dpad}}'}}, raw=True)
print('the end')
"""


def test_slow_reader_gets_everything_in_order_and_memory_stays_bounded(k):
    sub = SlowSub(k)
    try:
        pid = kernel_pid(k)
        base = rss_kb(pid)
        msg_id = k.kc.execute(FLOOD)
        # Read a little, then stall: the kernel must hold the cell back, not buffer ~65 MB.
        first = []
        while len(first) < 50:
            m = sub.recv(10)
            assert m is not None, "no output at all"
            first.append(m)
        peak = base
        stall_end = time.time() + 3
        while time.time() < stall_end:
            peak = max(peak, rss_kb(pid))
            time.sleep(0.05)

        def pace(n):  # slow for a while (a gateway relaying to a slow client), then as fast
            if n < 2000 and n % 20 == 0:
                time.sleep(0.002)
            if n % 200 == 0:
                nonlocal peak
                peak = max(peak, rss_kb(pid))

        rest = sub.until_idle(msg_id, timeout=240, pace=pace)
        out = [m for m in first if m["parent_header"].get("msg_id") == msg_id and
               m["msg_type"] != "status"] + rest
        reply = shell_reply(k, msg_id, 30)
        assert reply is not None and reply["status"] == "ok", reply

        # Everything, in order: each display follows exactly the lines printed before it.
        text = []
        displays = 0
        for m in out:
            t = m["msg_type"]
            if t == "stream":
                assert m["content"]["name"] == "stdout"
                text.append(m["content"]["text"])
            elif t == "display_data":
                i = displays * EVERY
                d = m["content"]["data"]["text/plain"]
                assert d.startswith(f"d{i:06d} "), (displays, d[:20])
                joined = "".join(text)
                assert joined.endswith(f"line {i:06d} {'x' * PAD_LINE}\n"), (i, joined[-60:])
                displays += 1
            elif t != "execute_input":
                raise AssertionError(f"unexpected {t}: {m['content']}")
        assert displays == (N + EVERY - 1) // EVERY
        expected = "".join(f"line {i:06d} {'x' * PAD_LINE}\n" for i in range(N)) + "the end\n"
        got = "".join(text)
        assert len(got) == len(expected)
        assert got == expected
        # Bounded: far less than the ~65 MB the cell produced.
        grew_mb = (peak - base) / 1024
        print(f"kernel RSS: base {base / 1024:.1f} MB, peak +{grew_mb:.1f} MB")
        assert grew_mb < 40, f"kernel RSS grew by {grew_mb:.1f} MB"
    finally:
        sub.close()


@pytest.mark.parametrize("how", ["print", "display"])
def test_interrupt_while_blocked_on_output(k, how):
    sub = SlowSub(k)
    try:
        pid = kernel_pid(k)
        body = ("print('z' * 1000)" if how == "print" else
                "display({'text/plain': 'z' * 1000}, raw=True)")
        code = f"from IPython.display import display\nwhile True:\n    {body}\n"
        msg_id = k.kc.execute(code)
        time.sleep(2)  # nobody reads iopub: the cell is now blocked on its output
        base = rss_kb(pid)
        # Heartbeat and control are still served.
        info = k.km.get_connection_info()
        hb = sub.ctx.socket(zmq.REQ)
        hb.setsockopt(zmq.LINGER, 0)
        if info["transport"] == "ipc":
            hb.connect(f"ipc://{info['ip']}-{info['hb_port']}")
        else:
            hb.connect(f"tcp://{info['ip']}:{info['hb_port']}")
        hb.send(b"ping")
        assert hb.poll(2000), "heartbeat did not answer"
        assert hb.recv() == b"ping"
        hb.close(0)
        t0 = time.time()
        assert k.control("kernel_info_request", timeout=2) is not None
        assert k.control("interrupt_request", timeout=2) is not None
        assert time.time() - t0 < 2
        time.sleep(1)
        assert rss_kb(pid) - base < 20 * 1024  # still blocked, not buffering
        # Now read: the cell ended with KeyboardInterrupt, then idle.
        out = sub.until_idle(msg_id, timeout=60)
        errors = [m for m in out if m["msg_type"] == "error"]
        assert errors and errors[-1]["content"]["ename"] == "KeyboardInterrupt", \
            [m["msg_type"] for m in out[-5:]]
        reply = shell_reply(k, msg_id, 10)
        assert reply is not None and reply["status"] == "error"
        # And the kernel is fine.
        msg_id = k.kc.execute("1 + 1")
        out = sub.until_idle(msg_id, timeout=10)
        assert [m["content"]["data"]["text/plain"] for m in out
                if m["msg_type"] == "execute_result"] == ["2"]
    finally:
        sub.close()
