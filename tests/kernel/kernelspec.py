"""Installs the repo's kernelspec (kernel-host/kernelspec/kernel.json) for the tests.

The spec names `kbox-kernel-host` (found on PATH when installed); for the tests it is pointed
at the binary under test, KBOX_KERNEL_HOST_BIN (set by ctest), in a private JUPYTER_PATH.
"""
import atexit
import json
import os
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SPEC = os.path.join(REPO, "kernel-host", "kernelspec", "kernel.json")
KERNEL_NAME = "kbox-native"


def kernel_host_bin():
    path = os.environ.get("KBOX_KERNEL_HOST_BIN", "")
    assert path and os.access(path, os.X_OK), "KBOX_KERNEL_HOST_BIN must name kbox-kernel-host"
    return os.path.abspath(path)


def install(name=KERNEL_NAME, argv=None, interrupt_mode=None, env=None):
    """Writes a kernelspec dir under a private JUPYTER_PATH (set in os.environ); returns it."""
    root = os.environ.get("KBOX_TEST_JUPYTER_PATH")
    if not root:
        root = tempfile.mkdtemp(prefix="kbox-kspec-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        os.environ["KBOX_TEST_JUPYTER_PATH"] = root
        os.environ["JUPYTER_PATH"] = root
    with open(SPEC) as f:
        spec = json.load(f)
    spec["argv"] = argv or [kernel_host_bin()] + spec["argv"][1:]
    if interrupt_mode:
        spec["interrupt_mode"] = interrupt_mode
    if env:
        spec["env"].update(env)
    d = os.path.join(root, "kernels", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return root
