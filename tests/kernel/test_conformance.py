"""Debian's jupyter_kernel_test conformance suite against the native kernel.

Every sample of jupyter_kernel_test.KernelTests is filled in (the same samples ipykernel's
own conformance test uses, plus history range), so no test of the suite is skipped. The
suite has no stdin test: StdinTests below is ours. test_broken_kernel_fails checks that the
suite is not vacuous: the same class run against a kernel that answers the protocol but does
not implement the language fails.

Run: KBOX_KERNEL_HOST_BIN=build/kernel-host/kbox-kernel-host /usr/bin/python3 -m pytest -q tests/kernel/test_conformance.py
"""
import os
import subprocess
import sys
import unittest

import jupyter_kernel_test as jkt
from jupyter_client.manager import start_new_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kernelspec  # noqa: E402

KERNEL_NAME = os.environ.get("KBOX_CONFORMANCE_KERNEL", kernelspec.KERNEL_NAME)
if KERNEL_NAME == kernelspec.KERNEL_NAME:
    kernelspec.install()


class NativeKernelConformance(jkt.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "str.startsw", "matches": {"startswith"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "print?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "from IPython.display import HTML; HTML('<b>x</b>')", "mime": "text/html",
         "result": "<b>x</b>"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class StdinTests(unittest.TestCase):
    """input() and getpass() through input_request / input_reply (the suite has no such test)."""

    @classmethod
    def setUpClass(cls):
        cls.km, cls.kc = start_new_kernel(kernel_name=KERNEL_NAME)

    @classmethod
    def tearDownClass(cls):
        cls.kc.stop_channels()
        cls.km.shutdown_kernel()

    def execute(self, code, answers=(), allow_stdin=True):
        kc = self.kc
        msg_id = kc.execute(code, allow_stdin=allow_stdin)
        requests = []
        answers = list(answers)
        while True:
            try:
                req = kc.get_stdin_msg(timeout=0.2)
            except Exception:
                req = None
            if req:
                self.assertEqual(req["msg_type"], "input_request")
                self.assertEqual(req["parent_header"]["msg_id"], msg_id)
                requests.append(req["content"])
                kc.input(answers.pop(0))
                continue
            try:
                reply = kc.get_shell_msg(timeout=0.2)
            except Exception:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        out = []
        while True:
            m = kc.get_iopub_msg(timeout=10)
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
            out.append(m)
        return reply["content"], requests, out

    def test_input(self):
        reply, requests, out = self.execute("name = input('who? ')\nprint('hi', name)",
                                            answers=["kbox"])
        self.assertEqual(reply["status"], "ok")
        self.assertEqual(requests, [{"prompt": "who? ", "password": False}])
        text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
        self.assertIn("hi kbox", text)

    def test_input_twice_and_getpass(self):
        code = ("import getpass\na = input('a')\nb = getpass.getpass('pw: ')\n"
                "print(repr(a), len(b))")
        reply, requests, out = self.execute(code, answers=["x y", "secret"])
        self.assertEqual(reply["status"], "ok")
        self.assertEqual([r["password"] for r in requests], [False, True])
        self.assertEqual(requests[1]["prompt"], "pw: ")
        text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
        self.assertIn("'x y' 6", text)

    def test_eof(self):
        reply, _, _ = self.execute("input()", answers=["\x04"])
        self.assertEqual(reply["status"], "error")
        self.assertEqual(reply["ename"], "EOFError")

    def test_not_allowed(self):
        reply, requests, out = self.execute("input('x')", allow_stdin=False)
        self.assertEqual(requests, [])
        self.assertEqual(reply["status"], "error")
        self.assertEqual(reply["ename"], "StdinNotImplementedError")
        self.assertIn("does not support input requests", reply["evalue"])


BROKEN_KERNEL = r'''
from ipykernel.kernelbase import Kernel
from ipykernel.kernelapp import IPKernelApp

class Broken(Kernel):
    """Speaks the protocol, implements nothing: every execute is ok and silent."""
    implementation = "broken"
    implementation_version = "0"
    language_info = {"name": "python", "file_extension": ".py", "mimetype": "text/x-python"}
    banner = ""

    def do_execute(self, code, silent, store_history=True, user_expressions=None,
                   allow_stdin=False):
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

IPKernelApp.launch_instance(kernel_class=Broken)
'''


@unittest.skipIf(os.environ.get("KBOX_CONFORMANCE_KERNEL"), "only in the main run")
class SuiteIsNotVacuous(unittest.TestCase):
    def test_broken_kernel_fails(self):
        root = kernelspec.install("kbox-broken", argv=[sys.executable, "-c", BROKEN_KERNEL,
                                                       "-f", "{connection_file}"])
        env = dict(os.environ, JUPYTER_PATH=root, KBOX_CONFORMANCE_KERNEL="kbox-broken")
        r = subprocess.run([sys.executable, "-m", "unittest", "-v",
                            "test_conformance.NativeKernelConformance"],
                           cwd=os.path.dirname(os.path.abspath(__file__)), env=env,
                           capture_output=True, text=True, timeout=600)
        self.assertNotEqual(r.returncode, 0, r.stderr[-3000:])
        failed = r.stderr.count("... FAIL") + r.stderr.count("... ERROR")
        self.assertGreaterEqual(failed, 5, r.stderr[-3000:])
