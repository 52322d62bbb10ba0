"""A Jupyter kernel that misbehaves on request, to test how the gateway copes with kernels that
are slow, half-hung or lossy. The gateway starts it through its process launcher as if it were
ipykernel (`--launcher process --kernel ipykernel --python <wrapper>`; see
test_kernel_faults.py). It speaks the wire protocol through jupyter_client's Session.

The code of an execute_request is a list of directives, one per line:
  stream N MS     send N stdout lines, MS ms apart, before the reply
  silent-hb       stop answering heartbeat pings, for good
  drop-idle K     send this request's reply but not its idle, nor the idles of the next K
                  kernel_info requests (the gateway's probes)
  hang            stop answering anything, for good (the process stays alive)
Anything else is echoed as one stdout line. Every request gets busy/idle as usual.

`--listen-late MS` (ipc only): the socket files first exist for MS ms bound but not listening,
as a real kernel's do for a moment between bind() and listen().
`--flicker MS` (ipc only): for MS ms the socket files appear and vanish in a tight loop (bound,
never listening, unlinked), so a probe finds a file that is gone when it connects.
`--symlink-to PATH` (ipc only): the socket files are symlinks to PATH, and the fake serves
nothing (a kernel pointing the gateway at another socket of the host).
"""
import argparse
import json
import os
import signal
import socket
import time

import zmq
from jupyter_client.session import Session


class Fake:
    def __init__(self, conn):
        self.session = Session(key=conn["key"].encode(), signature_scheme=conn["signature_scheme"])
        self.ctx = zmq.Context()
        url = f"{conn['transport']}://{conn['ip']}"
        sep = "-" if conn["transport"] == "ipc" else ":"

        def bind(kind, port):
            s = self.ctx.socket(kind)
            s.bind(f"{url}{sep}{port}")
            return s

        self.shell = bind(zmq.ROUTER, conn["shell_port"])
        self.control = bind(zmq.ROUTER, conn["control_port"])
        self.stdin = bind(zmq.ROUTER, conn["stdin_port"])
        self.iopub = bind(zmq.PUB, conn["iopub_port"])
        self.hb = bind(zmq.ROUTER, conn["hb_port"])
        self.count = 0
        self.answer_hb = True
        self.hung = False
        self.drop_probe_idles = 0

    def status(self, state, parent):
        if self.hung:
            return
        if state == "idle" and parent["header"]["msg_type"] == "kernel_info_request" \
                and self.drop_probe_idles > 0:
            self.drop_probe_idles -= 1
            return
        self.session.send(self.iopub, "status", {"execution_state": state}, parent=parent)

    def reply(self, sock, idents, msg_type, content, parent):
        if not self.hung:
            self.session.send(sock, msg_type, content, parent=parent, ident=idents)

    def execute(self, idents, msg):
        self.count += 1
        code = msg["content"].get("code", "")
        drop_idle = False
        self.session.send(self.iopub, "execute_input", {"code": code,
                                                        "execution_count": self.count}, parent=msg)
        for line in code.splitlines():
            words = line.split()
            if words[:1] == ["stream"]:
                for i in range(int(words[1])):
                    self.session.send(self.iopub, "stream", {"name": "stdout", "text": f"{i}\n"},
                                      parent=msg)
                    time.sleep(int(words[2]) / 1000)
            elif words[:1] == ["silent-hb"]:
                self.answer_hb = False
            elif words[:1] == ["drop-idle"]:
                drop_idle = True
                self.drop_probe_idles = int(words[1])
            elif words[:1] == ["hang"]:
                self.hung = True
            elif line.strip():
                self.session.send(self.iopub, "stream", {"name": "stdout", "text": line + "\n"},
                                  parent=msg)
        self.reply(self.shell, idents, "execute_reply",
                   {"status": "ok", "execution_count": self.count, "user_expressions": {},
                    "payload": []}, msg)
        if not drop_idle:
            self.status("idle", msg)

    def kernel_info(self, sock, idents, msg):
        self.reply(sock, idents, "kernel_info_reply",
                   {"status": "ok", "protocol_version": "5.3", "implementation": "fake",
                    "implementation_version": "0", "banner": "fake kernel",
                    "language_info": {"name": "python", "version": "3", "mimetype": "text/x-python",
                                      "file_extension": ".py"}}, msg)

    def serve(self):
        poller = zmq.Poller()
        for s in (self.shell, self.control, self.hb):
            poller.register(s, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                if sock is self.hb:
                    frames = self.hb.recv_multipart()
                    if self.answer_hb and not self.hung:
                        self.hb.send_multipart(frames)
                    continue
                idents, frames = self.session.feed_identities(sock.recv_multipart(copy=True))
                msg = self.session.deserialize(frames)
                kind = msg["header"]["msg_type"]
                self.status("busy", msg)
                if kind == "execute_request":
                    self.execute(idents, msg)
                    continue
                if kind == "kernel_info_request":
                    self.kernel_info(sock, idents, msg)
                elif kind == "interrupt_request":
                    self.reply(sock, idents, "interrupt_reply", {"status": "ok"}, msg)
                elif kind == "shutdown_request":
                    self.reply(sock, idents, "shutdown_reply", msg["content"], msg)
                    self.status("idle", msg)
                    return
                self.status("idle", msg)


def bound_not_listening(conn, ms):
    paths = [f"{conn['ip']}-{conn[c + '_port']}"
             for c in ("shell", "control", "stdin", "iopub", "hb")]
    socks = []
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        socks.append(s)
    time.sleep(ms / 1000)
    for s, path in zip(socks, paths):
        s.close()
        os.unlink(path)


def flicker(conn, ms):
    paths = [f"{conn['ip']}-{conn[c + '_port']}"
             for c in ("shell", "control", "stdin", "iopub", "hb")]
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        for path in paths:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.close()
            os.unlink(path)


def symlinks_only(conn, target):
    for c in ("shell", "control", "stdin", "iopub", "hb"):
        os.symlink(target, f"{conn['ip']}-{conn[c + '_port']}")
    while True:
        time.sleep(60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-f", required=True)
    ap.add_argument("--listen-late", type=int, default=0)
    ap.add_argument("--flicker", type=int, default=0)
    ap.add_argument("--symlink-to")
    args, _ = ap.parse_known_args()  # the launcher also passes ipykernel's own options
    with open(args.f) as f:
        conn = json.load(f)
    if args.listen_late and conn["transport"] == "ipc":
        bound_not_listening(conn, args.listen_late)
    if args.flicker and conn["transport"] == "ipc":
        flicker(conn, args.flicker)
    if args.symlink_to and conn["transport"] == "ipc":
        symlinks_only(conn, args.symlink_to)
    # An interrupt arrives as SIGINT (interrupt_mode signal): a fake has nothing to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Fake(conn).serve()


if __name__ == "__main__":
    main()
