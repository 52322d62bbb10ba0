"""A small synchronous harness around jupyter_client for the native kernel's tests: starts
the kernel from the repo's kernelspec (through its init, as a Jupyter client would), runs
cells and collects what comes back."""
import os
import sys
import time
from queue import Empty

from jupyter_client.manager import start_new_kernel
from jupyter_client.utils import run_sync

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernelspec  # noqa: E402


class Kernel:
    def __init__(self, name=kernelspec.KERNEL_NAME, stderr=None, **install_kw):
        """stderr: a file for the kernel's own log (default: the test's stderr)."""
        kernelspec.install(name, **install_kw)
        kw = {"stderr": stderr} if stderr is not None else {}
        self.km, self.kc = start_new_kernel(kernel_name=name, startup_timeout=60, **kw)

    def close(self):
        try:
            self.kc.stop_channels()
        finally:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=True)

    @property
    def process(self):
        return self.km.provisioner.process

    def kernel_pid(self):
        """The kernel process itself (the init's child)."""
        init = self.process.pid
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with open(f"/proc/{init}/task/{init}/children") as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("no kernel process under the init")

    def execute(self, code, timeout=30, **kw):
        """Runs code; returns (reply content, [iopub messages between busy and idle])."""
        msg_id = self.kc.execute(code, **kw)
        return self.collect(msg_id, timeout)

    def collect(self, msg_id, timeout=30):
        deadline = time.time() + timeout
        reply, idle, out = None, False, []
        while reply is None or not idle:
            left = deadline - time.time()
            assert left > 0, f"no reply/idle within {timeout}s (reply={reply is not None})"
            if reply is None:
                try:
                    m = self.kc.get_shell_msg(timeout=min(left, 0.05))
                    if m["parent_header"].get("msg_id") == msg_id:
                        reply = m["content"]
                except Empty:
                    pass
            try:
                m = self.kc.get_iopub_msg(timeout=min(left, 0.05))
            except Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            m["received"] = time.time()
            if m["msg_type"] == "status":
                idle = idle or m["content"]["execution_state"] == "idle"
            else:
                out.append(m)
        return reply, out

    def iopub_until(self, pred, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = self.kc.get_iopub_msg(timeout=0.1)
            except Empty:
                continue
            if pred(m):
                return m
        return None

    def control(self, msg_type, content=None, timeout=5):
        msg = self.kc.session.msg(msg_type, content or {})
        self.kc.control_channel.send(msg)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                m = run_sync(self.kc.control_channel.get_msg)(timeout=0.2)
            except Empty:
                continue
            if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return m
        return None

    def wait_dead(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            rc = self.process.poll()
            if rc is not None:
                return rc
            time.sleep(0.05)
        return None


def stream_text(out, name="stdout"):
    return "".join(m["content"]["text"] for m in out
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def of_type(out, msg_type):
    return [m for m in out if m["msg_type"] == msg_type]
