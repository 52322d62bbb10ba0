"""A small Jupyter kernel WebSocket client for the tests (websocket-client, Debian's
python3-websocket), speaking both formats a Jupyter server offers:

- legacy: a text frame holding one JSON message, or (with buffers) a binary frame of a
  big-endian uint32 count, big-endian uint32 offsets, the JSON message, then the buffers;
- v1.kernel.websocket.jupyter.org: little-endian uint64 offset count, uint64 offsets, then
  channel, header, parent_header, metadata, content and buffers.

The codec here is written from jupyter_server's and @jupyterlab/services' descriptions, not
from the gateway's code, so a shared misunderstanding cannot hide. Every wait is bounded.
"""
import datetime
import json
import re
import struct
import time
import uuid

import websocket

V1 = "v1.kernel.websocket.jupyter.org"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# A kernel-side comm target that echoes a message's data and returns its buffers reversed:
# the way to get binary buffers both to and from a real ipykernel.
ECHO_TARGET_CODE = (
    "def _kbox_echo(comm, open_msg):\n"
    "    @comm.on_msg\n"
    "    def _r(msg):\n"
    "        bufs = [bytes(b)[::-1] for b in msg['buffers']]\n"
    "        comm.send({'echo': msg['content']['data'], 'sizes': [len(b) for b in bufs]},\n"
    "                  buffers=bufs)\n"
    "get_ipython().kernel.comm_manager.register_target('kbox_echo', _kbox_echo)\n"
)


def encode_legacy(msg, buffers=()):
    body = dict(msg)
    body["buffers"] = []
    js = json.dumps(body).encode()
    if not buffers:
        return js.decode(), websocket.ABNF.OPCODE_TEXT
    n = 1 + len(buffers)
    offsets = []
    pos = 4 + 4 * n
    for part in [js, *buffers]:
        offsets.append(pos)
        pos += len(part)
    out = struct.pack(">I", n) + b"".join(struct.pack(">I", o) for o in offsets)
    return out + js + b"".join(bytes(b) for b in buffers), websocket.ABNF.OPCODE_BINARY


def decode_legacy(data, binary):
    if not binary:
        msg = json.loads(data)
        msg["buffers"] = []
        return msg
    (n,) = struct.unpack_from(">I", data, 0)
    offsets = list(struct.unpack_from(">%dI" % n, data, 4)) + [len(data)]
    msg = json.loads(data[offsets[0]:offsets[1]])
    msg["buffers"] = [data[offsets[i]:offsets[i + 1]] for i in range(1, n)]
    return msg


def encode_v1(msg, buffers=()):
    parts = [msg["channel"].encode()] + [json.dumps(msg.get(k, {})).encode() for k in
                                         ("header", "parent_header", "metadata", "content")]
    parts += [bytes(b) for b in buffers]
    n = len(parts) + 1
    offsets = []
    pos = 8 + 8 * n
    for p in parts:
        offsets.append(pos)
        pos += len(p)
    offsets.append(pos)
    head = struct.pack("<Q", n) + b"".join(struct.pack("<Q", o) for o in offsets)
    return head + b"".join(parts), websocket.ABNF.OPCODE_BINARY


def decode_v1(data, binary):
    assert binary, "v1 messages are binary frames"
    (n,) = struct.unpack_from("<Q", data, 0)
    offsets = struct.unpack_from("<%dQ" % n, data, 8)
    chunks = [data[offsets[i]:offsets[i + 1]] for i in range(n - 1)]
    msg = {"channel": chunks[0].decode()}
    for i, k in enumerate(("header", "parent_header", "metadata", "content")):
        msg[k] = json.loads(chunks[1 + i])
    msg["buffers"] = chunks[5:]
    return msg


def new_msg(channel, msg_type, content, session):
    return {
        "channel": channel,
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": "test",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
    }


def execute_content(code):
    return {"code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}


class KernelWS:
    """One WebSocket connection to .../api/kernels/{id}/channels."""

    def __init__(self, base_url, kernel_id, token=None, header_token=True, session_id=None,
                 subprotocols=None, timeout=30):
        url = base_url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        query = []
        if session_id:
            query.append("session_id=" + session_id)
        if token and not header_token:
            query.append("token=" + token)
        if query:
            url += "?" + "&".join(query)
        headers = [f"Authorization: token {token}"] if token and header_token else []
        self.session = session_id or uuid.uuid4().hex
        # websocket-client's UTF-8 check is pure Python (a few MB/s): skip it, json.loads
        # below rejects bad text anyway.
        self.ws = websocket.create_connection(url, header=headers, subprotocols=subprotocols,
                                              timeout=timeout, skip_utf8_validation=True)
        self.proto = self.ws.getsubprotocol() or ""
        self.seen = []  # every message received, in order
        self.close_code = None
        self.close_reason = b""

    # ---- sending --------------------------------------------------------------------------
    def send(self, channel, msg_type, content=None, buffers=(), msg_id=None):
        msg = new_msg(channel, msg_type, content or {}, self.session)
        if msg_id:
            msg["header"]["msg_id"] = msg_id
        data, opcode = (encode_v1 if self.proto == V1 else encode_legacy)(msg, buffers)
        self.ws.send(data, opcode=opcode)
        return msg["header"]["msg_id"]

    def send_raw(self, data, binary):
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY if binary else
                     websocket.ABNF.OPCODE_TEXT)

    # ---- receiving ------------------------------------------------------------------------
    def recv(self, timeout):
        """One message, or None on timeout. Raises ConnectionClosed when the server closed."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return None
            self.ws.settimeout(max(left, 0.01))
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                return None
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                raise ConnectionClosed(self.close_code)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) >= 2:
                    self.close_code = struct.unpack(">H", data[:2])[0]
                    self.close_reason = data[2:]
                raise ConnectionClosed(self.close_code)
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                continue
            binary = opcode == websocket.ABNF.OPCODE_BINARY
            msg = (decode_v1 if self.proto == V1 else decode_legacy)(data, binary)
            msg["_binary"] = binary
            self.seen.append(msg)
            return msg

    def wait_for(self, pred, timeout=30, what="message"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = self.recv(deadline - time.time())
            if m is not None and pred(m):
                return m
        raise AssertionError(f"timed out waiting for {what}; seen: "
                             f"{[(m['channel'], m['header']['msg_type']) for m in self.seen[-20:]]}")

    def wait_closed(self, timeout=30):
        """The close code once the server closes (None if it dropped without a close frame)."""
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                self.recv(deadline - time.time())
        except ConnectionClosed as e:
            return e.code
        raise AssertionError("the server did not close the connection")

    def request(self, channel, msg_type, content=None, buffers=(), timeout=30):
        """Send a request; return (reply, iopub messages parented to it up to idle)."""
        mid = self.send(channel, msg_type, content, buffers)
        reply, iopub, idle = None, [], False
        deadline = time.time() + timeout
        while reply is None or not idle:
            left = deadline - time.time()
            assert left > 0, f"no complete answer to {msg_type} in {timeout}s: reply={reply} " \
                             f"iopub={[m['header']['msg_type'] for m in iopub]}"
            m = self.recv(left)
            if m is None or m["parent_header"].get("msg_id") != mid:
                continue
            if m["channel"] == "iopub":
                iopub.append(m)
                if m["header"]["msg_type"] == "status" and \
                        m["content"]["execution_state"] == "idle":
                    idle = True
            elif m["header"]["msg_type"].endswith("_reply"):
                reply = m
        return reply, iopub

    def start(self, code):
        """Send an execute_request without waiting; its msg_id."""
        return self.send("shell", "execute_request", execute_content(code))

    def wait_status(self, mid, state, timeout=30, what="status"):
        return self.wait_for(lambda m: m["parent_header"].get("msg_id") == mid and
                             m["header"]["msg_type"] == "status" and
                             m["content"]["execution_state"] == state, timeout=timeout, what=what)

    def wait_reply_and_idle(self, mid, timeout=30, what="reply and idle"):
        """The reply (shell) and the idle (iopub) of request mid, in either order: the
        protocol does not order the two sockets. Returns the reply."""
        got = {}

        def reply_or_idle(m):
            if m["parent_header"].get("msg_id") != mid:
                return False
            if m["header"]["msg_type"].endswith("_reply"):
                got["reply"] = m
            elif m["header"]["msg_type"] == "status" and \
                    m["content"]["execution_state"] == "idle":
                got["idle"] = m
            return len(got) == 2

        self.wait_for(reply_or_idle, timeout=timeout, what=what)
        return got["reply"]

    def execute(self, code, timeout=30):
        return self.request("shell", "execute_request", execute_content(code), timeout=timeout)

    def execute_after_error(self, code, tries=5, timeout=30):
        """execute() right after a cell that ended in an error (an interrupt): ipykernel aborts
        (status "aborted", nothing run) requests that reach it within its stop-on-error window,
        even after the failed cell's idle, as any frontend would see; ask again then."""
        for _ in range(tries):
            reply, iopub = self.execute(code, timeout=timeout)
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.2)
        return reply, iopub

    def nudge(self, timeout=30):
        """kernel_info_request until one is answered (a fresh connection through a proxy may
        drop the first messages: Jupyter Server does the same nudging). A new request goes out
        every second, and a reply to any of them counts: on a loaded machine a reply can take
        longer than a second, and waiting only for the latest request would never see one."""
        deadline = time.time() + timeout
        sent = set()
        while time.time() < deadline:
            sent.add(self.send("shell", "kernel_info_request"))
            end = min(deadline, time.time() + 1.0)
            while time.time() < end:
                m = self.recv(end - time.time())
                if m and m["parent_header"].get("msg_id") in sent and \
                        m["header"]["msg_type"] == "kernel_info_reply":
                    return m
        raise AssertionError(f"kernel_info_request never answered in {timeout}s")

    def close(self):
        try:
            self.ws.close(timeout=2)
        except Exception:
            pass


class ConnectionClosed(Exception):
    def __init__(self, code):
        super().__init__(f"connection closed (code {code})")
        self.code = code


def stdout_of(iopub):
    return "".join(m["content"]["text"] for m in iopub
                   if m["header"]["msg_type"] == "stream" and m["content"]["name"] == "stdout")


def types_of(iopub):
    return [m["header"]["msg_type"] for m in iopub]
